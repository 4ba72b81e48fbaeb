"""The boundary to sushy, OpenStack's Redfish client: connections, retries and errors.

Nothing above this module sees sushy or requests. Methods of ``RedfishClient`` take a
``RedfishEndpoint`` and return plain values spelled as Redfish spells them (``"On"``,
``"ForceOff"``, ``"Pxe"``, ``"UEFI"``); the drivers map those to Ironic's words. What each method
does with sushy's resources (and the vendor quirks) lives in ``redfish_resources``. sushy is
imported lazily, so a server without a Redfish node does not pay for it.

Connections: one logged-in sushy root per (address, user, sha256(password), verify, auth type),
reused across calls (a power sync over 1,000 nodes does not log in 1,000 times) and dropped when
the BMC rejects the credentials or stops answering.

Errors, translated in ``_translate`` (one table)::

    sushy / requests                          ironworks.errors     retried
    AccessError (HTTP 401/403)                BmcAuthFailed        no
    ConnectionError caused by a TLS failure   BmcTlsError          no
    ConnectionError (refused, DNS, timeout)   BmcUnreachable       yes
    HTTP 500/502/503/504                      BmcRequestFailed     yes
    HTTP 405/501, missing action or resource  BmcUnsupported       no
    value the BMC does not allow              BmcUnsupported       no
    a body that is not JSON                   BmcRequestFailed     no
    any other HTTP or sushy error             BmcRequestFailed     no

Retries use tenacity with exponential backoff, bounded in attempts and in total time
(``RetryPolicy``); sushy's own connection retry loop is turned off so that there is one policy.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import tenacity

from ironworks.bmc import redfish_resources as res
from ironworks.bmc.redfish_resources import BootSettings, Inventory, TaskStatus
from ironworks.errors import (
    BmcAuthFailed,
    BmcError,
    BmcRequestFailed,
    BmcTlsError,
    BmcUnreachable,
    BmcUnsupported,
)

T = TypeVar("T")
__all__ = [
    "BootSettings",
    "Inventory",
    "RedfishClient",
    "RedfishEndpoint",
    "RetryPolicy",
    "TaskStatus",
    "shared_client",
]


@dataclass(frozen=True, slots=True)
class RedfishEndpoint:
    """Where a BMC is and how to log in; ``system_id`` is a path, or None for the only system."""

    address: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    verify: bool | str = True
    auth_type: str = "auto"
    system_id: str | None = None

    def cache_key(self) -> tuple[str, str, str, bool | str, str]:
        """Connection-cache key; holds a digest of the password, never the password."""
        digest = hashlib.sha256((self.password or "").encode()).hexdigest()
        return (self.address, self.username or "", digest, self.verify, self.auth_type)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try a BMC: ``attempts`` tries, backoff doubling from ``first_wait``, all within ``total``."""

    attempts: int = 3
    first_wait: float = 0.5
    max_wait: float = 5.0
    total: float = 20.0
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    sleep: Callable[[float], None] = time.sleep


class RedfishClient:
    """Redfish operations on BMCs through cached sushy connections.

    ``adapter`` (a requests transport adapter) is mounted for every BMC: tests serve recorded
    responses through it.
    """

    def __init__(self, *, retry: RetryPolicy | None = None, adapter: Any = None, max_connections: int = 4096) -> None:
        self.retry = retry or RetryPolicy()
        self.adapter = adapter
        self.max_connections = max_connections
        self._roots: OrderedDict[tuple[str, str, str, bool | str, str], Any] = OrderedDict()
        #: the only system's path on BMCs whose nodes name none (saves listing the systems each call)
        self._only_system: dict[tuple[str, str, str, bool | str, str], str] = {}
        self._lock = threading.Lock()

    # ---- connections ---------------------------------------------------------------------
    def _connect(self, ep: RedfishEndpoint) -> Any:
        sushy = res.sushy_module()
        auth_class = {"basic": sushy.auth.BasicAuth, "session": sushy.auth.SessionAuth}.get(
            ep.auth_type, sushy.auth.SessionOrBasicAuth
        )
        # server_side_retries=1 turns off sushy's own connection retry loop (and its 2 s sleeps):
        # retries are ours, in one bounded policy. sushy may still repeat a failed GET once, at once.
        conn = sushy.connector.Connector(
            ep.address,
            verify=ep.verify,
            server_side_retries=1,
            server_side_retries_delay=0,
            default_request_timeout=self.retry.read_timeout,
            connect_timeout=self.retry.connect_timeout,
        )
        if self.adapter is not None:
            for prefix in ("http://", "https://"):
                conn._session.mount(prefix, self.adapter)
        return sushy.Sushy(
            ep.address, verify=ep.verify, auth=auth_class(username=ep.username, password=ep.password), connector=conn
        )

    def _root(self, ep: RedfishEndpoint) -> Any:
        key = ep.cache_key()
        with self._lock:
            root = self._roots.get(key)
            if root is not None:
                self._roots.move_to_end(key)
                return root
        root = self._connect(ep)  # network I/O: outside the lock
        evicted = []
        with self._lock:
            self._roots[key] = root
            while len(self._roots) > self.max_connections:
                old_key, old_root = self._roots.popitem(last=False)
                self._only_system.pop(old_key, None)
                evicted.append(old_root)
        del evicted  # outside the lock: sushy logs out of the BMC's session when a root is collected
        return root

    def _system(self, root: Any, ep: RedfishEndpoint) -> Any:
        if ep.system_id:
            return root.get_system(ep.system_id)
        key = ep.cache_key()
        system = root.get_system(self._only_system.get(key))
        self._only_system[key] = system.path
        return system

    def forget(self, ep: RedfishEndpoint, *, log_out: bool = True) -> None:
        """Drop the cached connection to ``ep`` (the next call logs in again).

        ``log_out=False`` skips deleting the BMC session: pointless when the BMC rejected it or does
        not answer, and a BMC that swallows packets would hold the caller for a connect timeout.
        """
        with self._lock:
            root = self._roots.pop(ep.cache_key(), None)
            self._only_system.pop(ep.cache_key(), None)
        if root is not None and not log_out:
            root._auth = None  # what sushy's destructor would use to DELETE the session

    def connections(self) -> int:
        """How many BMC connections are cached."""
        with self._lock:
            return len(self._roots)

    # ---- running an operation ------------------------------------------------------------
    def _run(self, ep: RedfishEndpoint, operation: str, fn: Callable[[Any, Any], T], *, system: bool = True) -> T:
        """``fn(root, system)`` with retries; every third-party error leaves as a ``BmcError``."""
        tries = 0

        def attempt() -> T:
            nonlocal tries
            tries += 1
            try:
                root = self._root(ep)
                return fn(root, self._system(root, ep) if system else None)
            except BmcError:
                raise
            except Exception as exc:
                error = _translate(exc, ep, operation)
                if error is None:
                    raise
                if isinstance(error, BmcAuthFailed | BmcUnreachable):
                    self.forget(ep, log_out=False)
                raise error from exc

        p = self.retry
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(max(1, p.attempts)) | tenacity.stop_after_delay(p.total),
            wait=tenacity.wait_exponential(multiplier=p.first_wait, max=p.max_wait),
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, BmcError) and bool(e.context.get("retryable"))),
            sleep=p.sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except BmcError as exc:
            if exc.context.get("retryable") and tries > 1:
                exc.message = f"{exc.message} (gave up after {tries} attempts)"
                exc.args = (exc.message,)
            raise

    # ---- operations --------------------------------------------------------------------------
    def power_state(self, ep: RedfishEndpoint, *, operation: str = "reading the power state") -> str | None:
        """``On``, ``Off``, ``PoweringOn``, ``PoweringOff``, ``Paused`` or None."""
        return self._run(ep, operation, lambda root, system: res.value(system.power_state))

    def reset(self, ep: RedfishEndpoint, reset_type: str, *, operation: str) -> None:
        """POST ComputerSystem.Reset with ``reset_type`` (``On``, ``ForceOff``, ``ForceRestart`` ...)."""
        sushy = res.sushy_module()
        self._run(ep, operation, lambda root, system: system.reset_system(sushy.ResetType(reset_type)))

    def boot_settings(self, ep: RedfishEndpoint, *, operation: str = "reading the boot settings") -> BootSettings:
        """The boot override target, its frequency, the boot mode and the targets the BMC accepts."""
        return self._run(ep, operation, lambda root, system: res.boot_settings(system))

    def set_boot(
        self,
        ep: RedfishEndpoint,
        *,
        target: str | None = None,
        enabled: str | None = None,
        mode: str | None = None,
        operation: str,
    ) -> None:
        """PATCH the boot override: ``target`` (``Pxe`` ...), ``enabled`` (``Once``/``Continuous``), ``mode``."""
        self._run(ep, operation, lambda root, system: res.set_boot(system, target, enabled, mode))

    def inventory(self, ep: RedfishEndpoint, *, operation: str = "inspecting the hardware") -> Inventory:
        """CPUs, memory, NIC MACs, the largest disk and the boot mode."""
        return self._run(ep, operation, lambda root, system: res.inventory(system))

    def bios_attributes(self, ep: RedfishEndpoint, *, operation: str = "reading the BIOS settings") -> dict[str, Any]:
        """The current BIOS attributes."""
        return self._run(ep, operation, lambda root, system: dict(system.bios.attributes or {}))

    def set_bios_attributes(self, ep: RedfishEndpoint, attributes: dict[str, Any], *, operation: str) -> None:
        """Stage BIOS attributes in the Settings resource (the BIOS applies them at the next boot)."""
        self._run(ep, operation, lambda root, system: system.bios.set_attributes(attributes))

    def reset_bios(self, ep: RedfishEndpoint, *, operation: str) -> None:
        """Ask for the BIOS factory defaults (applied at the next boot)."""
        self._run(ep, operation, lambda root, system: system.bios.reset_bios())

    def firmware_versions(self, ep: RedfishEndpoint, *, operation: str = "reading firmware versions") -> dict[str, str]:
        """Component (``bios``, ``bmc``, else the inventory id) -> version."""
        return self._run(ep, operation, res.firmware_versions)

    def simple_update(self, ep: RedfishEndpoint, url: str, *, component: str, operation: str) -> str:
        """Start UpdateService.SimpleUpdate of ``url``; returns the task monitor URI to poll."""
        return self._run(ep, operation, lambda root, system: res.simple_update(root, system, url, component))

    def task_status(self, ep: RedfishEndpoint, monitor_uri: str, *, operation: str) -> TaskStatus:
        """Poll a task monitor once."""
        return self._run(ep, operation, lambda root, _: res.task_status(root, monitor_uri), system=False)

    def virtual_media_kinds(self, ep: RedfishEndpoint, *, operation: str = "reading the virtual media") -> list[str]:
        """The virtual media devices the BMC offers (``cd``, ``usb``, ``floppy``); [] when it has none."""
        return self._run(ep, operation, lambda root, system: res.virtual_media_kinds(system))

    def insert_media(self, ep: RedfishEndpoint, url: str, *, device: str = "cd", shown_url: str | None = None) -> None:
        """Insert the image at ``url`` into the virtual ``device`` (``cd``, ``usb`` or ``floppy``).

        ``shown_url`` is what error messages name instead of ``url`` (whose file name may be a secret).
        """
        op = f"inserting {shown_url or url} into the virtual {device}"
        self._run(ep, op, lambda root, system: res.insert_media(system, url, device))

    def eject_media(self, ep: RedfishEndpoint, *, device: str = "cd") -> None:
        """Eject whatever the virtual ``device`` holds (nothing to do when it is empty)."""
        self._run(ep, f"ejecting the virtual {device}", lambda root, system: res.eject_media(system, device))


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _why_unreachable(chain: list[BaseException]) -> str:
    text = " ".join(str(e) for e in chain).lower()
    for needle, why in (
        ("refused", "connection refused"),
        ("timed out", "timed out"),
        ("timeout", "timed out"),
        ("name or service not known", "host name not resolved"),
        ("nodename nor servname", "host name not resolved"),
        ("failed to resolve", "host name not resolved"),
        ("no route to host", "no route to host"),
    ):
        if needle in text:
            return why
    return "connection failed"


def _translate(exc: BaseException, ep: RedfishEndpoint, operation: str) -> BmcError | None:
    """The one table from sushy/requests errors to ours (None: not a BMC error, let it through)."""
    import requests

    sx = res.sushy_module().exceptions

    bmc = f"Redfish BMC {ep.address}"
    ctx: dict[str, Any] = {"bmc": ep.address, "operation": operation}
    chain = _chain(exc)
    error: BmcError | None
    if isinstance(exc, sx.AccessError):
        error = BmcAuthFailed(
            f"{bmc} rejected the credentials for user {ep.username or ''!r} while {operation}: "
            "check driver_info redfish_username/redfish_password.",
            **ctx,
        )
    elif isinstance(exc, json.JSONDecodeError | requests.exceptions.JSONDecodeError):
        error = BmcRequestFailed(
            f"{bmc} answered with something other than Redfish JSON while {operation}: check that driver_info "
            "redfish_address is the BMC's Redfish service.",
            **ctx,
        )
    elif isinstance(exc, sx.ConnectionError | requests.RequestException):
        if any(isinstance(e, requests.exceptions.SSLError) for e in chain):
            error = BmcTlsError(
                f"TLS verification of {bmc} failed while {operation}: check driver_info redfish_verify_ca "
                "(true, false, or the path of the CA bundle that signed the BMC's certificate).",
                **ctx,
            )
        else:
            error = BmcUnreachable(
                f"{bmc} is unreachable ({_why_unreachable(chain)}) while {operation}: check driver_info "
                "redfish_address and the network path to the BMC.",
                retryable=True,
                **ctx,
            )
    elif isinstance(exc, sx.HTTPError):
        status, detail = exc.status_code, exc.detail or exc.code or "no details given"
        if status in (405, 501):
            error = BmcUnsupported(f"{bmc} does not support {operation} (HTTP {status}: {detail}).", **ctx)
        elif status == 404 and ep.system_id and "Systems" in str(exc):
            error = BmcRequestFailed(
                f"{bmc} has no system {ep.system_id} (HTTP 404) while {operation}: check driver_info "
                "redfish_system_id.",
                **ctx,
            )
        else:
            error = BmcRequestFailed(
                f"{bmc} answered HTTP {status} while {operation}: {detail}",
                retryable=status in res.TRANSIENT_HTTP,
                **ctx,
            )
    elif isinstance(exc, sx.UnknownDefaultError):
        error = BmcRequestFailed(
            f"{bmc} does not manage exactly one system, found while {operation}: set driver_info "
            "redfish_system_id to the system's path (e.g. /redfish/v1/Systems/1).",
            **ctx,
        )
    elif isinstance(exc, sx.MissingActionError | sx.MissingAttributeError | sx.InvalidParameterValueError):
        error = BmcUnsupported(f"{bmc} does not offer what {operation} needs: {exc}", **ctx)
    elif isinstance(exc, sx.SushyError):
        error = BmcRequestFailed(f"{bmc} failed while {operation}: {exc}", **ctx)
    else:
        return None
    if ep.password and ep.password in error.message:  # a BMC could echo it back; never pass it on
        error.message = error.message.replace(ep.password, "******")
        error.args = (error.message,)
    return error


_SHARED: RedfishClient | None = None
_SHARED_LOCK = threading.Lock()


def shared_client() -> RedfishClient:
    """The process's client: one connection cache for every Redfish interface."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = RedfishClient()
        return _SHARED
