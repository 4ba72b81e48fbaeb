"""Errors to HTTP: one table, and Ironic's error body shape.

Ironic answers ``{"error_message": "<JSON string>"}`` where the inner JSON has ``faultcode``
(``Client`` or ``Server``), ``faultstring`` (the message) and ``debuginfo``. Clients such as
python-ironicclient and openstacksdk parse exactly that, so we produce it for every error,
including the framework's own 404/405/validation errors.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.responses import Response

from ironworks import errors
from ironworks.db.engine import DatabaseUnavailable

LOG = logging.getLogger(__name__)

#: The only place where error classes meet HTTP status codes (most specific class first).
STATUS: list[tuple[type[errors.IronworksError], int]] = [
    (errors.NodeLocked, 409),
    (errors.Conflict, 409),
    (errors.NotFound, 404),
    (errors.NotAcceptable, 406),
    (errors.PayloadTooLarge, 413),
    (errors.Unauthorized, 401),
    (errors.InvalidTransition, 400),
    (errors.InvalidInput, 400),
    (errors.ClientError, 400),
    (DatabaseUnavailable, 503),
    (errors.BmcUnsupported, 400),  # the request asked for something this BMC cannot do
    (errors.BmcError, 502),
    (errors.DriverError, 500),
    (errors.ServerError, 500),
]


def status_of(exc: errors.IronworksError) -> int:
    """The HTTP status for ``exc``."""
    for cls, code in STATUS:
        if isinstance(exc, cls):
            return code
    return 500


def error_body(message: str, *, status: int) -> bytes:
    """Ironic's error body for ``message``."""
    inner = {"faultcode": "Client" if status < 500 else "Server", "faultstring": message, "debuginfo": None}
    return orjson.dumps({"error_message": orjson.dumps(inner).decode()})


def error_response(message: str, *, status: int, headers: dict[str, str] | None = None) -> Response:
    """A complete error response."""
    return Response(
        error_body(message, status=status), status_code=status, media_type="application/json", headers=headers
    )


def from_exception(exc: errors.IronworksError) -> Response:
    """The response for one of our errors."""
    status = status_of(exc)
    headers = {"WWW-Authenticate": 'Basic realm="Baremetal API"'} if status == 401 else None
    if status >= 500:
        LOG.error("request failed: %s (%s)", exc.message, exc.reason)
    return error_response(exc.message, status=status, headers=headers)


def describe_validation(errs: list[dict[str, Any]]) -> str:
    """A readable message for request-body validation errors."""
    parts = []
    for e in errs:
        loc = [str(p) for p in e.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        kind = e.get("type", "")
        if kind == "json_invalid":
            parts.append(f"the request body is not valid JSON ({e.get('ctx', {}).get('error', 'parse error')})")
        elif kind == "extra_forbidden":
            parts.append(f"unknown field {where!r}")
        elif kind == "missing":
            parts.append(f"missing required field {where!r}")
        else:
            parts.append(f"field {where!r}: {e.get('msg', 'invalid value')}")
    return "Invalid request: " + "; ".join(parts) + "."
