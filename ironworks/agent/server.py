"""The agent's own HTTP API, and the executor that runs one command at a time.

::

    GET  /v1/status               {"started_at", "version"}                      (no token)
    POST /v1/commands/?wait=true  {"name": "<extension>.<command>", "params": {...}} → a result
    GET  /v1/commands/            {"commands": [result, ...]}
    GET  /v1/commands/{id}        one result

A result is ``{"id", "command_name", "command_status": RUNNING|SUCCEEDED|FAILED, "command_error",
"command_result", "progress"}``. Every ``/v1/commands`` request needs the agent token, as the
``agent_token`` query parameter (what Ironic's agent client sends) or the ``X-Agent-Token`` header;
without it the answer is 401. Errors are ``{"faultstring", "faultcode"}`` (400 bad request, 401 token,
404 no such command result, 409 busy). ``wait=true`` answers when the command ends (bounded by
``wait_timeout``; after that it answers RUNNING); quick ("sync") commands are always waited for.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ironworks.agent import AGENT_VERSION
from ironworks.agent.commands import (
    Command,
    CommandRequestError,
    Extension,
    InvalidCommand,
    InvalidCommandParams,
    commands_of,
)
from ironworks.agent.errors import AgentError

LOG = logging.getLogger(__name__)

RUNNING, SUCCEEDED, FAILED = "RUNNING", "SUCCEEDED", "FAILED"
MAX_HISTORY = 100
#: a config drive may be 64 MiB gzipped, more in base64
MAX_BODY = 128 * 1024 * 1024
DEFAULT_WAIT_TIMEOUT = 300.0
TOKEN_HEADER = "X-Agent-Token"


class Unauthorized(CommandRequestError):
    """The agent token is missing or wrong."""

    reason = "unauthorized"
    status = 401


class AgentBusy(CommandRequestError):
    """Another command is running."""

    reason = "agent_busy"
    status = 409


class CommandNotFound(CommandRequestError):
    """No command result with this id."""

    reason = "command_not_found"
    status = 404


@dataclass
class CommandResult:
    """A command's state as ``GET /v1/commands/{id}`` shows it."""

    command_name: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    command_status: str = RUNNING
    command_error: dict[str, Any] | None = None
    command_result: dict[str, Any] | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """The wire shape (IPA's, plus ``progress``)."""
        return {
            "id": self.id,
            "command_name": self.command_name,
            "command_status": self.command_status,
            "command_error": self.command_error,
            "command_result": self.command_result,
            "progress": dict(self.progress),
        }


def error_dict(exc: BaseException) -> dict[str, Any]:
    """``command_error``: the error's type, message and machine-readable details."""
    details: dict[str, Any] = {"reason": getattr(exc, "reason", "unexpected_error")}
    for key, value in getattr(exc, "context", {}).items():
        details[key] = value if isinstance(value, str | int | float | bool | type(None)) else str(value)
    return {"type": getattr(exc, "type", type(exc).__name__), "message": str(exc), "details": details}


class CommandExecutor:
    """Runs one command at a time in a worker thread; keeps the latest results."""

    def __init__(
        self,
        extensions: Iterable[Extension],
        *,
        on_finished: Callable[[CommandResult], None] | None = None,
        max_history: int = MAX_HISTORY,
    ) -> None:
        self.commands: dict[str, Command] = {}
        for ext in extensions:
            self.commands.update(commands_of(ext))
        self._on_finished = on_finished
        self._max_history = max_history
        self._lock = threading.Lock()
        self._results: dict[str, CommandResult] = {}
        self._running: CommandResult | None = None

    def submit(self, name: Any, params: Any) -> tuple[CommandResult, bool]:
        """Check and start a command; returns its result and whether the caller must wait (a sync command)."""
        cmd = self.commands.get(name) if isinstance(name, str) else None
        if cmd is None:
            raise InvalidCommand(
                f"unknown command {name!r}; this agent knows: {', '.join(sorted(self.commands))}", command=str(name)
            )
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise InvalidCommandParams(f"{name}: params must be a JSON object", command=name)
        cmd.check(params)
        with self._lock:
            if self._running is not None:
                busy = self._running
                raise AgentBusy(
                    f"Agent is busy running {busy.command_name} (command {busy.id}); "
                    "try again when it has finished (GET /v1/commands/)",
                    command=busy.command_name,
                )
            result = CommandResult(name)
            self._running = result
            self._results[result.id] = result
            while len(self._results) > self._max_history:
                self._results.pop(next(iter(self._results)))
        threading.Thread(target=self._run, args=(cmd, params, result), name=f"command-{name}", daemon=True).start()
        return result, cmd.sync

    def _run(self, cmd: Command, params: dict[str, Any], result: CommandResult) -> None:
        LOG.info("command %s (%s) started", cmd.name, result.id)
        try:
            value = cmd.func(**params)
        except Exception as exc:
            if not isinstance(exc, AgentError):
                LOG.exception("command %s failed unexpectedly", cmd.name)
            else:
                LOG.error("command %s failed: %s", cmd.name, exc)
            with self._lock:
                result.command_error = error_dict(exc)
                result.command_status = FAILED
        else:
            with self._lock:
                result.command_result = value if isinstance(value, dict) or value is None else {"result": value}
                result.command_status = SUCCEEDED
            LOG.info("command %s (%s) succeeded", cmd.name, result.id)
        finally:
            with self._lock:
                self._running = None
            result.done.set()
        if self._on_finished is not None:
            try:
                self._on_finished(result)
            except Exception:
                LOG.exception("after command %s", cmd.name)

    def report_progress(self, update: dict[str, Any]) -> None:
        """Merge ``update`` into the running command's ``progress``."""
        with self._lock:
            if self._running is not None:
                self._running.progress.update(update)

    def get(self, command_id: str) -> CommandResult:
        """One result by id."""
        try:
            return self._results[command_id]
        except KeyError:
            raise CommandNotFound(f"no command {command_id!r} on this agent", command=command_id) from None

    def snapshot(self, result: CommandResult) -> dict[str, Any]:
        """A consistent copy of one result."""
        with self._lock:
            return result.as_dict()

    def list(self) -> list[dict[str, Any]]:
        """Every kept result, oldest first."""
        with self._lock:
            return [r.as_dict() for r in self._results.values()]

    @property
    def busy(self) -> CommandResult | None:
        """The running command, if any."""
        return self._running


class AgentServer:
    """The HTTP API on a ThreadingHTTPServer (``port`` 0 picks a free port)."""

    def __init__(
        self,
        executor: CommandExecutor,
        *,
        token: str,
        host: str = "0.0.0.0",
        port: int = 9999,
        wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not token:
            raise ValueError("the agent API needs an agent token")
        self.executor = executor
        self.token = token
        self.wait_timeout = wait_timeout
        self.started_at = clock()
        self.httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.httpd.server_address[1])

    def start(self) -> None:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="agent-api", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()

    def check_token(self, given: str | None) -> None:
        """Raise ``Unauthorized`` unless ``given`` is the agent token (constant-time compare)."""
        if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
            raise Unauthorized(
                "agent_token is missing or wrong: send the token lookup issued as ?agent_token= or "
                f"the {TOKEN_HEADER} header"
            )

    def handle(self, method: str, path: str, query: dict[str, list[str]], token: str | None, body: Any) -> Any:
        """Route one request; returns the JSON answer or raises ``CommandRequestError``."""
        parts = [p for p in path.split("/") if p]
        if parts in ([], ["v1"]):
            return {"name": "Ironworks agent", "version": AGENT_VERSION, "versions": [{"id": "v1"}]}
        if parts == ["v1", "status"] and method == "GET":
            return {"started_at": self.started_at, "version": AGENT_VERSION}
        if parts[:2] != ["v1", "commands"] or len(parts) > 3:
            raise CommandNotFound(f"no resource {path}")
        self.check_token(token)
        if method == "GET":
            if len(parts) == 3:
                return self.executor.snapshot(self.executor.get(parts[2]))
            return {"commands": self.executor.list()}
        if method != "POST" or len(parts) != 2:
            raise InvalidCommand(f"{method} {path} is not supported")
        if not isinstance(body, dict):
            raise InvalidCommand('the body must be a JSON object: {"name": "<extension>.<command>", "params": {...}}')
        wait = (query.get("wait") or ["false"])[-1].lower() in ("true", "1", "yes")
        result, sync = self.executor.submit(body.get("name"), body.get("params"))
        if wait or sync:
            result.done.wait(self.wait_timeout)
        return self.executor.snapshot(result)


def _make_handler(server: AgentServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = f"ironworks-agent/{AGENT_VERSION}"

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            token = query.get("agent_token", [""])[-1] or self.headers.get(TOKEN_HEADER)
            try:
                body = self._body() if method == "POST" else None
                answer = server.handle(method, url.path, query, token, body)
                status = 200
            except CommandRequestError as exc:
                status, answer = exc.status, {"faultstring": str(exc), "faultcode": "Client"}
            except Exception:
                LOG.exception("%s %s failed", method, url.path)
                status, answer = (
                    500,
                    {"faultstring": "internal error in the agent (see its log)", "faultcode": "Server"},
                )
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> Any:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                raise InvalidCommand("Content-Length must be a number") from None
            if length > MAX_BODY:
                raise InvalidCommand(f"the body is larger than {MAX_BODY} bytes")
            raw = self.rfile.read(length) if length else b""
            try:
                return json.loads(raw) if raw else None
            except ValueError as exc:
                raise InvalidCommand(f"the body is not JSON: {exc}") from None

        def log_message(self, format: str, *args: Any) -> None:
            # the request line carries the agent token in its query: log the path only
            LOG.debug("%s %s", self.command, urlsplit(self.path).path)

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            LOG.debug("%s %s -> %s", self.command, urlsplit(self.path).path, code)

    return Handler
