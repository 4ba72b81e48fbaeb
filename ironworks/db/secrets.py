"""Secrets at rest and on the wire.

A value is secret when its key names one (``*password*``, ``*token*``, ``*secret*`` ...). Secret
values of ``driver_info``, ``instance_info`` and ``driver_internal_info`` are stored as
``"fernet:<token>"`` strings (cryptography's Fernet: AES-128-CBC + HMAC-SHA256), revealed only for
the drivers, and rendered as ``"******"`` by the API. The key is configuration
(``[database] secret_key``) or ``<state_dir>/secret.key``, created with mode 0600 on first start.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from ironworks.errors import ConfigError

MASK = "******"
_PREFIX = "fernet:"
_SECRET_WORDS = (
    "password",
    "passwd",
    "token",
    "secret",
    "passphrase",
    "private_key",
    "configdrive",
    "credential",
)


def is_secret_key(key: str) -> bool:
    """Whether values under ``key`` are secrets (masked, encrypted)."""
    k = key.lower()
    return any(w in k for w in _SECRET_WORDS)


def mask(data: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of ``data`` with secret values (at any depth) replaced by ``"******"``."""
    if not data:
        return {}
    out: dict[str, Any] = {}
    for k, v in data.items():
        if v is not None and is_secret_key(k):
            out[k] = MASK
        elif isinstance(v, dict):
            out[k] = mask(v)
        else:
            out[k] = v
    return out


def needs_masking(data: dict[str, Any] | None) -> bool:
    """Cheap check used on hot paths: does ``data`` hold anything to mask?"""
    if not data:
        return False
    return any(is_secret_key(k) or isinstance(v, dict) for k, v in data.items())


class SecretBox:
    """Encrypts and decrypts secret values with one Fernet key."""

    def __init__(self, key: str | bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError):
            raise ConfigError(
                "The secret key is not a valid Fernet key (32 url-safe base64-encoded bytes); "
                "generate one with `ironworks db genkey` or remove it to have one created."
            ) from None

    @classmethod
    def generate_key(cls) -> str:
        """A new random key."""
        return Fernet.generate_key().decode()

    def encrypt_text(self, text: str) -> str:
        """Encrypt a string."""
        return self._fernet.encrypt(text.encode()).decode()

    def decrypt_text(self, token: str) -> str:
        """Decrypt a string made by ``encrypt_text``."""
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise ConfigError(
                "A stored secret cannot be decrypted with the configured key: the secret key "
                "changed since it was written. Restore the previous key."
            ) from None

    def seal(self, data: dict[str, Any] | None) -> dict[str, Any]:
        """A copy of ``data`` with secret values encrypted (values already sealed stay as they are)."""
        if not data:
            return {}
        out: dict[str, Any] = {}
        for k, v in data.items():
            if isinstance(v, dict):
                out[k] = self.seal(v)
            elif v is not None and is_secret_key(k) and not (isinstance(v, str) and v.startswith(_PREFIX)):
                out[k] = _PREFIX + self.encrypt_text(json.dumps(v))
            else:
                out[k] = v
        return out

    def reveal(self, data: dict[str, Any] | None) -> dict[str, Any]:
        """A copy of ``data`` with sealed values decrypted (for drivers only, never for output)."""
        if not data:
            return {}
        out: dict[str, Any] = {}
        for k, v in data.items():
            if isinstance(v, dict):
                out[k] = self.reveal(v)
            elif isinstance(v, str) and v.startswith(_PREFIX):
                out[k] = json.loads(self.decrypt_text(v[len(_PREFIX) :]))
            else:
                out[k] = v
        return out


def load_or_create_key(state_dir: Path, configured: str = "") -> str:
    """The configured key, else the one in ``<state_dir>/secret.key`` (created 0600 if absent)."""
    if configured:
        return configured
    path = state_dir / "secret.key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # it holds the key and the database
    key = SecretBox.generate_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key
