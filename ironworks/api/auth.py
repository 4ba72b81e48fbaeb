"""Authentication: ``noauth`` or HTTP basic against a bcrypt htpasswd file (as Ironic standalone).

bcrypt is slow on purpose (tens to hundreds of milliseconds a check), so a successful check is
remembered for a short while under a SHA-256 of the credentials — never the password itself.
Unknown users are checked against a dummy hash, so the answer takes as long as for a known user
and never says whether the user exists.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from pathlib import Path

import bcrypt

from ironworks.errors import ConfigError, Unauthorized

_DUMMY_HASH = bcrypt.hashpw(b"not-a-password", bcrypt.gensalt(rounds=10))
_BAD_CREDENTIALS = "Incorrect username or password."


class HtpasswdAuth:
    """Checks ``Authorization: Basic`` headers against an htpasswd file of bcrypt hashes."""

    def __init__(self, path: str, *, cache_seconds: float = 300.0) -> None:
        self.path = Path(path)
        self.cache_seconds = cache_seconds
        self._users = self._load()
        self._cache: dict[bytes, float] = {}
        self._lock = threading.Lock()

    def _load(self) -> dict[str, bytes]:
        try:
            text = self.path.read_text()
        except OSError as exc:
            raise ConfigError(f"Cannot read the htpasswd file {self.path}: {exc.strerror}.") from None
        users: dict[str, bytes] = {}
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, hashed = line.partition(":")
            if not sep or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
                raise ConfigError(
                    f"{self.path} line {n} is not 'user:bcrypt-hash'; create entries with `htpasswd -B` "
                    "or `ironworks htpasswd USER`."
                )
            users[user] = hashed.replace("$2y$", "$2b$", 1).encode()
        return users

    def check(self, header: str | None) -> str:
        """The user named by a valid ``Authorization`` header; ``Unauthorized`` otherwise."""
        if not header or not header.lower().startswith("basic "):
            raise Unauthorized("Authentication required: send HTTP basic credentials.")
        try:
            user, sep, password = base64.b64decode(header[6:].strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise Unauthorized(_BAD_CREDENTIALS) from None
        if not sep:
            raise Unauthorized(_BAD_CREDENTIALS)
        key = hashlib.sha256(f"{user}\0{password}".encode()).digest()
        now = time.monotonic()
        with self._lock:
            until = self._cache.get(key)
        if until is not None and until > now:
            return user
        hashed = self._users.get(user)
        ok = bcrypt.checkpw(password.encode(), hashed if hashed is not None else _DUMMY_HASH)
        if not ok or hashed is None:
            raise Unauthorized(_BAD_CREDENTIALS)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = now + self.cache_seconds
        return user


def make_htpasswd_line(user: str, password: str) -> str:
    """An htpasswd line with a bcrypt hash (``user:$2b$...``)."""
    if ":" in user or not user:
        raise ValueError("user names must be non-empty and must not contain ':'")
    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()}"


def constant_time_equal(a: str, b: str) -> bool:
    """Compare secrets without leaking where they differ."""
    return hmac.compare_digest(a.encode(), b.encode())
