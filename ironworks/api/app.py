"""The ASGI application: routes, the version/auth/size middleware and the exception table.

The API validates requests, checks transitions against the state machine, records intents in the
durable action queue in the same transaction as the state change, wakes the conductors and
answers. It never talks to hardware.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
import uuid as uuidlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy import select
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ironworks import __version__, errors
from ironworks.api import errors as api_errors
from ironworks.api import versions
from ironworks.api.auth import HtpasswdAuth
from ironworks.conductor.ring import HashRing
from ironworks.config import Config
from ironworks.db.engine import Database
from ironworks.db.models import Conductor, utcnow
from ironworks.drivers.registry import DriverFactory

LOG = logging.getLogger(__name__)
VERSION_KEY = "ironworks.version"
USER_KEY = "ironworks.user"
PUBLIC_PATHS = frozenset({"/", "/v1", "/v1/"})
AGENT_PATHS = ("/v1/lookup", "/v1/heartbeat/", "/v1/continue_inspection")
#: network boot files ([netboot] http_root): machines fetch them without credentials
BOOT_PREFIX = "/boot/"


@dataclass
class ApiContext:
    """What every route needs: configuration, database, drivers, and a cached conductor ring."""

    config: Config
    db: Database
    drivers: DriverFactory
    _ring: HashRing | None = None
    _ring_at: float = 0.0
    _defaults: dict[tuple[str, str], str | None] = field(default_factory=dict)

    def ring(self) -> HashRing:
        """The live conductors' hash ring, refreshed every few seconds."""
        now = time.monotonic()
        if self._ring is None or now - self._ring_at > 5.0:
            import datetime as dt

            cutoff = utcnow() - dt.timedelta(seconds=self.config.conductor.dead_after)
            with self.db.read() as s:
                hosts = (
                    s.execute(
                        select(Conductor.hostname).where(Conductor.online.is_(True), Conductor.updated_at >= cutoff)
                    )
                    .scalars()
                    .all()
                )
            self._ring, self._ring_at = HashRing(list(hosts)), now
        return self._ring

    def conductor_of(self, node_uuid: str) -> str | None:
        """The conductor that owns a node."""
        return self.ring().owner(node_uuid)

    def default_interface(self, driver: str, field_name: str) -> str | None:
        """A hardware type's default implementation for ``<kind>_interface``."""
        key = (driver, field_name)
        if key not in self._defaults:
            kind = field_name.removesuffix("_interface")
            try:
                supported = self.drivers.hardware_type(driver).supported.get(kind, [])
            except errors.IronworksError:
                supported = []
            self._defaults[key] = supported[0] if supported else None
        return self._defaults[key]


class ApiMiddleware:
    """Microversion negotiation, authentication, body size limit and standard response headers.

    A plain ASGI middleware (not ``BaseHTTPMiddleware``), so it adds no task or stream per request.
    """

    def __init__(self, app: ASGIApp, *, config: Config, auth: HtpasswdAuth | None) -> None:
        self.app = app
        self.config = config
        self.auth = auth
        self.max_body = config.api.max_body_bytes
        self._version_headers = [
            (b"x-openstack-ironic-api-minimum-version", versions.fmt(versions.MIN_VERSION).encode()),
            (b"x-openstack-ironic-api-maximum-version", versions.fmt(versions.MAX_VERSION).encode()),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"req-{uuidlib.uuid4()}"
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        extra = [*self._version_headers, (b"x-openstack-request-id", request_id.encode())]
        path = scope["path"]
        try:
            version = versions.parse(headers.get(versions.HEADER))
            public = path in PUBLIC_PATHS or path.startswith(AGENT_PATHS)
            public = public or (self.config.netboot.serve_http and path.startswith(BOOT_PREFIX))
            if self.auth is not None and not public:
                scope[USER_KEY] = self.auth.check(headers.get("authorization"))
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body:
                raise errors.PayloadTooLarge(
                    f"The request body is {length} bytes; the limit is {self.max_body} bytes ([api] max_body_bytes)."
                )
        except errors.IronworksError as exc:
            resp = api_errors.from_exception(exc)
            resp.raw_headers.extend(extra)
            await resp(scope, receive, send)
            return
        scope[VERSION_KEY] = version
        extra.append((b"x-openstack-ironic-api-version", versions.fmt(version).encode()))
        received = 0
        max_body = self.max_body

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_body:
                    raise errors.PayloadTooLarge(
                        f"The request body exceeds the limit of {max_body} bytes ([api] max_body_bytes)."
                    )
            return message

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except errors.PayloadTooLarge as exc:
            resp = api_errors.from_exception(exc)
            resp.raw_headers.extend(extra)
            await resp(scope, receive, send)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on loopback."""
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen_policy(config: Config) -> None:
    """Refuse to serve beyond loopback without authentication unless told to on purpose."""
    insecure = config.api.auth_strategy == "noauth" and not is_loopback(config.api.host)
    if insecure and not config.api.allow_insecure_noauth:
        raise errors.ConfigError(
            f"Refusing to listen on {config.api.host} without authentication: anyone who can reach it "
            'could power off or erase machines. Set [api] auth_strategy = "http_basic" with an '
            "htpasswd file, or set [api] allow_insecure_noauth = true if this network is trusted."
        )


def base_url(request: Request, config: Config) -> str:
    """Public URL prefix for links and ``Location`` headers."""
    if config.api.public_url:
        return config.api.public_url.rstrip("/")
    return str(request.base_url).rstrip("/")


def create_app(
    config: Config,
    db: Database,
    drivers: DriverFactory,
    *,
    on_startup: Callable[[], None] | None = None,
    on_shutdown: Callable[[], None] | None = None,
) -> FastAPI:
    """Build the API application; ``on_startup``/``on_shutdown`` run in its lifespan.

    ``ironworks serve`` starts and stops its conductor there: uvicorn re-raises SIGTERM once it
    returns, so code after ``uvicorn.run`` would never run on ``systemctl stop``.
    """
    if config.api.auth_strategy not in ("noauth", "http_basic"):
        raise errors.ConfigError(
            f"Unknown [api] auth_strategy {config.api.auth_strategy!r}: use 'noauth' or 'http_basic'."
        )
    auth = None
    if config.api.auth_strategy == "http_basic":
        if not config.api.htpasswd:
            raise errors.ConfigError("[api] auth_strategy = http_basic needs [api] htpasswd = PATH.")
        auth = HtpasswdAuth(config.api.htpasswd)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if on_startup is not None:
            on_startup()
        try:
            yield
        finally:
            if on_shutdown is not None:
                await asyncio.to_thread(on_shutdown)  # lets running work finish without blocking the loop

    app = FastAPI(
        lifespan=lifespan,
        title="Ironworks Bare Metal API",
        version=__version__,
        description="OpenStack Ironic Bare Metal API v1 (the subset Ironworks serves), plus the agent API.",
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.ctx = ApiContext(config=config, db=db, drivers=drivers)

    @app.exception_handler(errors.IronworksError)
    async def _ours(_req: Request, exc: errors.IronworksError) -> Response:
        return api_errors.from_exception(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> Response:
        return api_errors.error_response(api_errors.describe_validation(list(exc.errors())), status=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(req: Request, exc: StarletteHTTPException) -> Response:
        msg = {
            404: f"The resource {req.url.path} could not be found.",
            405: f"Method {req.method} is not allowed on {req.url.path}.",
        }.get(exc.status_code, str(exc.detail))
        return api_errors.error_response(msg, status=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> Response:
        LOG.exception("unexpected error")
        return api_errors.error_response(f"Internal error ({type(exc).__name__}); see the server log.", status=500)

    from ironworks.api import agent as agent_routes
    from ironworks.api import drivers as drivers_routes
    from ironworks.api import node_actions as node_action_routes
    from ironworks.api import node_info as node_info_routes
    from ironworks.api import nodes as nodes_routes
    from ironworks.api import ports as ports_routes
    from ironworks.api import root as root_routes

    app.include_router(root_routes.router)
    app.include_router(nodes_routes.router)
    app.include_router(node_action_routes.router)
    app.include_router(node_info_routes.router)
    app.include_router(ports_routes.router)
    app.include_router(drivers_routes.router)
    app.include_router(agent_routes.router)
    if config.netboot.serve_http:
        add_boot_files(app, config)
    app.add_middleware(ApiMiddleware, config=config, auth=auth)
    return app


def add_boot_files(app: FastAPI, config: Config) -> None:
    """Serve ``[netboot] http_root`` read-only at ``/boot/``: regular files under it only, Range supported."""
    from starlette.responses import FileResponse

    from ironworks.netboot.layout import NetbootLayout

    root = NetbootLayout.from_config(config).http_root

    def not_found(request: Request) -> Response:
        return api_errors.error_response(f"The boot file {request.url.path} does not exist.", status=404)

    @app.api_route("/boot/{name:path}", methods=["GET", "HEAD"], include_in_schema=False)
    def boot_file(request: Request, name: str) -> Response:
        parts = name.split("/")
        # no parent references, no hidden files (files being written are dotfiles), no directories
        if not name or any(p in ("", ".", "..") or p.startswith(".") or "\\" in p for p in parts):
            return not_found(request)
        try:
            base = root.resolve(strict=True)
            path = (base / name).resolve(strict=True)
            path.relative_to(base)  # a symlink may not lead out of the root
        except (OSError, ValueError, RuntimeError):
            return not_found(request)
        if not path.is_file():
            return not_found(request)
        return FileResponse(path, media_type="application/octet-stream")


def ctx_of(request: Request) -> ApiContext:
    """The ``ApiContext`` of the app serving ``request``."""
    ctx: ApiContext = request.app.state.ctx
    return ctx


def version_of(request: Request) -> tuple[int, int]:
    """The negotiated microversion."""
    v: tuple[int, int] = request.scope.get(VERSION_KEY, versions.MIN_VERSION)
    return v


def user_of(request: Request) -> str | None:
    """The authenticated user, if any."""
    u: str | None = request.scope.get(USER_KEY)
    return u


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Serialize with orjson (fast, and handles what the DB returns)."""
    import orjson

    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)
