"""The agent's error tree, grouped by what the conductor can do about it.

::

    AgentError              reason: a stable machine-readable code
    ├── DeviceNotAllowed    the device is not on the allowlist (outside a ramdisk): fix the request
    ├── ImageError          the image (or config drive) could not be fetched or written: check URL, size
    │   └── ChecksumMismatch    the bytes differ from the published hash: the device was wiped
    ├── FirmwareError       the firmware tarball could not be fetched, or runme.sh failed / timed out
    └── UnsafeArchive       the tarball would write outside its work dir, or is too large: refused

Each error keeps keyword context (``device=...``, ``url=...``) for logs and events.
"""

from __future__ import annotations

from typing import Any


class AgentError(Exception):
    """Base class: ``reason`` is machine-readable, the message says what happened and what to do."""

    reason = "agent_error"

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = context

    def __str__(self) -> str:
        return self.message


class DeviceNotAllowed(AgentError):
    """A destructive operation was asked for a device outside the allowlist."""

    reason = "device_not_allowed"


class ImageError(AgentError):
    """An image or config drive could not be downloaded, converted or written."""

    reason = "image_error"


class ChecksumMismatch(ImageError):
    """The downloaded bytes do not match the published hash."""

    reason = "checksum_mismatch"


class FirmwareError(AgentError):
    """A firmware update could not be fetched, or its runme.sh failed or timed out."""

    reason = "firmware_error"


class UnsafeArchive(AgentError):
    """A firmware tarball was refused before anything in it was written or run."""

    reason = "unsafe_archive"
