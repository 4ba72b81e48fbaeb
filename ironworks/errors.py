"""The Ironworks error tree, grouped by what a caller can do about it.

::

    IronworksError                  reason: a stable machine-readable code
    ├── ClientError                 the request was wrong: fix it and retry
    │   ├── InvalidInput            malformed body, unknown/read-only field, bad patch, bad step args
    │   ├── InvalidTransition       the node's state does not allow the request
    │   ├── NotFound                no such node / port / driver
    │   ├── Conflict                duplicate name, UUID or MAC
    │   ├── NodeLocked              another unit of work holds the node: retry later
    │   ├── NotAcceptable           API microversion outside the supported range
    │   ├── PayloadTooLarge         body over the configured limit
    │   └── Unauthorized            missing or wrong credentials
    └── ServerError                 something outside the request failed
        ├── DriverError             a driver operation failed (BMC, agent, image ...)
        │   └── BmcError            the BMC refused, timed out or could not be reached
        │       ├── BmcAuthFailed       wrong credentials: fix driver_info
        │       ├── BmcUnreachable      no answer / connection refused / DNS: check address, network
        │       ├── BmcTlsError         certificate verification failed: check *_verify_ca
        │       ├── BmcTimeout          the BMC did not reach the requested state in time
        │       ├── BmcUnsupported      the BMC does not offer this operation
        │       └── BmcRequestFailed    the BMC answered with an error (4xx/5xx)
        └── ConfigError             the configuration is invalid

Every error carries keyword context (``node=...``, ``field=...``) that is kept out of the message
when it could hold a secret. The HTTP status of each class is decided in exactly one table, in
``ironworks.api.errors``.
"""

from __future__ import annotations

from typing import Any


class IronworksError(Exception):
    """Base class: ``reason`` is machine-readable, the message says what happened and what to do."""

    reason = "error"

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = context

    def __str__(self) -> str:
        return self.message


class ClientError(IronworksError):
    """The request was wrong; the message says what to fix."""

    reason = "client_error"


class InvalidInput(ClientError):
    """Malformed body, unknown or read-only field, invalid patch, bad step arguments."""

    reason = "invalid_input"


class InvalidTransition(ClientError):
    """The node's provision state does not allow the requested action."""

    reason = "invalid_transition"


class NotFound(ClientError):
    """The named resource does not exist."""

    reason = "not_found"


class Conflict(ClientError):
    """The resource clashes with an existing one (name, UUID, MAC address)."""

    reason = "conflict"


class NodeLocked(Conflict):
    """Another unit of work holds the node's lock."""

    reason = "node_locked"

    def __init__(self, node: str, holder: str | None) -> None:
        super().__init__(
            f"Node {node} is locked by host {holder or 'unknown'}, please retry after the current "
            "operation is completed.",
            node=node,
            holder=holder,
        )


class NotAcceptable(ClientError):
    """The requested API microversion is not supported."""

    reason = "not_acceptable"


class PayloadTooLarge(ClientError):
    """The request body exceeds the configured limit."""

    reason = "payload_too_large"


class Unauthorized(ClientError):
    """Missing or wrong credentials (never says which)."""

    reason = "unauthorized"


class ServerError(IronworksError):
    """Something outside the request failed."""

    reason = "server_error"


class DriverError(ServerError):
    """A driver operation failed."""

    reason = "driver_error"


class BmcError(DriverError):
    """The BMC refused, timed out, or could not be reached."""

    reason = "bmc_error"


class BmcAuthFailed(BmcError):
    """The BMC rejected the credentials."""

    reason = "bmc_auth_failed"


class BmcUnreachable(BmcError):
    """The BMC did not answer (refused, timed out, unknown host)."""

    reason = "bmc_unreachable"


class BmcTlsError(BmcError):
    """TLS to the BMC failed (certificate verification)."""

    reason = "bmc_tls_error"


class BmcTimeout(BmcError):
    """The BMC did not reach the requested state within the timeout."""

    reason = "bmc_timeout"


class BmcUnsupported(BmcError):
    """The BMC does not support the requested operation."""

    reason = "bmc_unsupported"


class BmcRequestFailed(BmcError):
    """The BMC answered a request with an error status."""

    reason = "bmc_request_failed"


class ConfigError(ServerError):
    """The configuration is invalid."""

    reason = "config_error"


def error_class_for(reason: str) -> type[IronworksError]:
    """The error class whose ``reason`` is ``reason`` (``DriverError`` when none is)."""
    todo: list[type[IronworksError]] = [IronworksError]
    while todo:
        cls = todo.pop()
        if cls.reason == reason:
            return cls
        todo.extend(cls.__subclasses__())
    return DriverError
