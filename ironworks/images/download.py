"""Downloading one image over HTTP(S): streamed, retried, resumed, conditional.

``download()`` is the image cache's one HTTP client (``ironworks.images.cache`` owns the files and
the locks): a GET streamed into a file the caller opened and hashed on the way; connection errors
(refused, reset, cut short, a stall longer than the timeout) and 502/503/504 retried up to
``attempts`` times with a growing pause, a cut download resumed with ``Range``/``If-Range`` when the
server offered ``Accept-Ranges: bytes``; ``If-None-Match``/``If-Modified-Since`` from the cached
copy's validators, so an unchanged origin answers 304 and sends nothing. httpx errors are translated
here into ``ImageUnreachable``/``ImageHttpError``; nothing above sees httpx.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import httpx

from ironworks.images.errors import ImageHttpError, ImageUnreachable, display

LOG = logging.getLogger("ironworks.images.cache")

CHUNK = 1 << 20
#: HTTP statuses worth another attempt (a proxy or origin that is briefly overloaded)
RETRY_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True, slots=True)
class DownloadOptions:
    """How hard to try: the stall timeout, attempts, the pause unit between them; the transport (tests)."""

    timeout: float = 60.0
    attempts: int = 3
    retry_delay: float = 1.0
    transport: httpx.BaseTransport | None = None


def download(
    source: str,
    out: BinaryIO,
    hashers: dict[str, Any],
    *,
    options: DownloadOptions,
    admit: Callable[[int | None], None],
    old: dict[str, Any] | None,
) -> dict[str, str] | None:
    """GET ``source`` into ``out``, updating ``hashers``; the validators to keep, or None on 304.

    ``admit(size)`` is called once the first response announced its size (None when it did not),
    before any byte is written: it may raise to refuse the download. ``old`` is the cached copy's
    meta: its ETag / Last-Modified make the request conditional.
    """
    shown = display(source)
    conditional: dict[str, str] = {"Accept-Encoding": "identity"}
    if old is not None:
        if old.get("etag"):
            conditional["If-None-Match"] = str(old["etag"])
        if old.get("last_modified"):
            conditional["If-Modified-Since"] = str(old["last_modified"])
    written, resumable, validator, admitted = 0, False, "", False
    timeout = httpx.Timeout(options.timeout)
    with httpx.Client(timeout=timeout, transport=options.transport, follow_redirects=True) as client:
        for attempt in range(1, options.attempts + 1):
            headers = dict(conditional)
            if written and resumable:
                headers = {"Accept-Encoding": "identity", "Range": f"bytes={written}-"}
                if validator:
                    headers["If-Range"] = validator
            try:
                with client.stream("GET", source, headers=headers) as resp:
                    if resp.status_code == 304 and old is not None and not written:
                        return None
                    if resp.status_code == 206 and written and _range_start(resp) == written:
                        pass  # resumed: append
                    elif resp.status_code == 200:
                        if written:  # the server sent it all again
                            out.seek(0)
                            out.truncate()
                            written = 0
                            for a in list(hashers):
                                hashers[a] = hashlib.new(a)
                    elif resp.status_code in RETRY_STATUSES and attempt < options.attempts:
                        LOG.warning("image cache: %s answered HTTP %d, retrying", shown, resp.status_code)
                        time.sleep(options.retry_delay * attempt)
                        continue
                    else:
                        raise ImageHttpError(
                            f"Downloading the image {shown} failed: the server answered HTTP {resp.status_code}"
                            f"{' ' + resp.reason_phrase if resp.reason_phrase else ''}. Check the URL and that "
                            "the image is published there.",
                            status=resp.status_code,
                        )
                    length = _content_length(resp)
                    if not admitted:
                        admit(length)
                        admitted = True
                    resumable = resp.headers.get("accept-ranges", "").lower() == "bytes"
                    validator = resp.headers.get("etag", "") if not written else validator
                    kept = {
                        k: v
                        for k, v in (
                            ("etag", resp.headers.get("etag")),
                            ("last_modified", resp.headers.get("last-modified")),
                        )
                        if v
                    }
                    for chunk in resp.iter_bytes(CHUNK):
                        out.write(chunk)
                        for h in hashers.values():
                            h.update(chunk)
                        written += len(chunk)
                    out.flush()
                    return kept
            except httpx.TransportError as exc:
                detail = f"{type(exc).__name__}: {exc}".replace(source, shown)
                if attempt >= options.attempts:
                    raise ImageUnreachable(
                        f"Downloading the image {shown} failed after {options.attempts} attempt(s): {detail}. "
                        "Check that the URL is reachable from the conductor ([images] download_attempts and "
                        "download_timeout set how hard it tries).",
                    ) from exc
                LOG.warning("image cache: %s: %s (attempt %d of %d)", shown, detail, attempt, options.attempts)
                time.sleep(options.retry_delay * attempt)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _content_length(resp: httpx.Response) -> int | None:
    value = resp.headers.get("content-length")
    if resp.status_code == 206:
        total = resp.headers.get("content-range", "").rpartition("/")[2]
        value = total if total.isdigit() else None
    return int(value) if value and value.isdigit() else None


def _range_start(resp: httpx.Response) -> int:
    m = re.match(r"bytes (\d+)-", resp.headers.get("content-range", ""))
    return int(m.group(1)) if m else -1
