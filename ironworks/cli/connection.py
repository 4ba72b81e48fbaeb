"""What every operator command shares: the connection options and the client session around its work.

Every command accepts ``--url``, ``--username``, ``--password`` (each also read from the environment)
and ``-f/--format``. Tests replace the HTTP transport, the clock and the sleep by passing a
:class:`Seams` object as the click context object (``CliRunner().invoke(app, args, obj=Seams(...))``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated

import httpx
import typer

from ironworks.cli.client import ClientError, IronicClient
from ironworks.cli.output import OutputFormat, print_error


class CommandFailed(Exception):
    """A command could not do what was asked; the message says what happened and what to do."""


@dataclass(frozen=True, kw_only=True)
class Seams:
    """The parts of the outside world tests replace: HTTP transport, clock, sleep, poll interval."""

    transport: httpx.BaseTransport | None = None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    poll_interval: float = 1.0


def seams_of(ctx: typer.Context) -> Seams:
    """The injected seams, or the real world when none were injected."""
    return ctx.find_object(Seams) or Seams()


UrlOption = Annotated[
    str,
    typer.Option("--url", envvar="IRONWORKS_URL", help="Base URL of the Ironworks (or Ironic) API."),
]
UsernameOption = Annotated[
    str | None,
    typer.Option("--username", envvar="IRONWORKS_USERNAME", help="HTTP basic auth user name."),
]
PasswordOption = Annotated[
    str | None,
    typer.Option("--password", envvar="IRONWORKS_PASSWORD", help="HTTP basic auth password."),
]
FormatOption = Annotated[
    OutputFormat,
    typer.Option("-f", "--format", help="Print a table, or JSON on stdout for scripts."),
]

#: Hints for statuses whose Ironic fault string does not say what to do next.
_STATUS_HINTS = {
    401: "Pass --username and --password (or set IRONWORKS_USERNAME and IRONWORKS_PASSWORD).",
    403: "The user is not allowed to do this; use an account with the needed role.",
    406: "The server does not support API version 1.87; upgrade it or use a matching client.",
}


def describe(error: ClientError) -> str:
    """A one-paragraph message for a failed request: the server's reason, the request, a hint."""
    if error.status is None:
        return error.message
    reason = error.message.strip()
    if not reason.endswith((".", "!", "?")):
        reason += "."
    message = f"{reason} ({error.method} {error.path}: HTTP {error.status})"
    hint = _STATUS_HINTS.get(error.status)
    return f"{message} {hint}" if hint else message


@contextmanager
def connect(ctx: typer.Context, url: str, username: str | None, password: str | None) -> Iterator[IronicClient]:
    """A client for the duration of a command; failures become a message on stderr and exit code 1."""
    client = IronicClient(url, username=username, password=password, transport=seams_of(ctx).transport)
    try:
        yield client
    except ClientError as exc:
        print_error(describe(exc))
        raise typer.Exit(1) from exc
    except CommandFailed as exc:
        print_error(str(exc))
        raise typer.Exit(1) from exc
    except KeyboardInterrupt as exc:
        print_error("Interrupted. Anything already requested continues on the server.")
        raise typer.Exit(130) from exc
    finally:
        client.close()
