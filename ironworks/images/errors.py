"""The image cache's errors, each with a machine-readable ``reason``::

    ImageError                  [image_unavailable]  an image could not be fetched into the cache
    ├── ImageChecksumMismatch   [image_checksum_mismatch]  no master is kept; the next fetch downloads
    ├── ImageUnreachable        [image_unreachable]  connection failed every attempt
    ├── ImageHttpError          [image_http_error]  the origin answered an HTTP error (``status``)
    ├── ImageDiskFull           [image_disk_full]  ENOSPC/EDQUOT/EFBIG; the partial file is removed
    ├── ImageSourceNotAllowed   [image_source_not_allowed]  a local file outside allowed_file_dirs
    └── DiskBudgetExceeded      [disk_budget_exceeded]  the budget cannot fit the request

``ImageError`` is a ``DriverError``; ``ironworks.images.cache`` re-exports them all.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ironworks.errors import DriverError


class ImageError(DriverError):
    """An image could not be fetched into the cache."""

    reason = "image_unavailable"


class ImageChecksumMismatch(ImageError):
    """The fetched image does not have the checksum it was given."""

    reason = "image_checksum_mismatch"


class ImageUnreachable(ImageError):
    """The origin could not be reached (refused, timed out, reset) on any attempt."""

    reason = "image_unreachable"


class ImageHttpError(ImageError):
    """The origin answered with an HTTP error status."""

    reason = "image_http_error"

    def __init__(self, message: str, *, status: int, **context: Any) -> None:
        super().__init__(message, status=status, **context)
        self.status = status


class ImageDiskFull(ImageError):
    """The cache's file system ran out of space (or a file size limit was hit)."""

    reason = "image_disk_full"


class ImageSourceNotAllowed(ImageError):
    """A local file outside ``[images] allowed_file_dirs``."""

    reason = "image_source_not_allowed"


class DiskBudgetExceeded(ImageError):
    """Masters + reservations + the request would exceed ``[images] disk_budget_bytes``."""

    reason = "disk_budget_exceeded"


def display(source: str) -> str:
    """The source without credentials or query (a signed URL's query can be a secret)."""
    parts = urlsplit(source)
    if parts.scheme in ("http", "https"):
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"
    return source
