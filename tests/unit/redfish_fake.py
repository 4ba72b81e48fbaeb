"""A recorded Redfish BMC served to sushy through a requests transport adapter (no network).

``data/redfish`` holds a Dell iDRAC 9 (PowerEdge R650) service in the DMTF mockup layout: the
resource at URL ``/redfish/v1/X`` is ``data/redfish/redfish/v1/X/index.json``. ``FakeBmc`` serves
it and acts like a BMC where it matters to the driver: HTTP basic or session (X-Auth-Token)
authentication, resets that land after a few reads of the system, a boot override, BIOS settings
staged until the next boot, SimpleUpdate with a task monitor that runs through scripted states,
virtual media; ``fail()`` scripts errors and ``requests`` records what was asked. ``FakeTask``
and ``Clock`` stand in for the conductor's task and for time.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from ironworks.bmc.redfish import RedfishClient, RedfishEndpoint, RetryPolicy
from ironworks.drivers.base import NodeView, PortView

DATA = Path(__file__).parent / "data" / "redfish"
ADDRESS = "https://bmc.example.test"
SYSTEM = "/redfish/v1/Systems/System.Embedded.1"
BIOS = SYSTEM + "/Bios"
USER, PASSWORD = "root", "Calvin-Secret-42"
_OPEN = ("/redfish/v1", "/redfish/v1/", "/redfish/v1/SessionService/Sessions")


def load_resources() -> dict[str, dict[str, Any]]:
    """Every recorded resource by URL path."""
    return {"/" + str(p.parent.relative_to(DATA)): json.loads(p.read_text()) for p in sorted(DATA.rglob("index.json"))}


class FakeBmc(BaseAdapter):
    """The recorded BMC as a requests adapter."""

    def __init__(self, *, power_lands_after: int = 2) -> None:
        super().__init__()
        self.resources = load_resources()
        self.requests: list[tuple[str, str, Any]] = []
        self.faults: list[tuple[Callable[[str, str], bool], Any]] = []
        self.power_lands_after = power_lands_after
        self.pending_power: list[Any] = []  # [target, reads left]
        self.task_script: list[tuple[int, dict[str, Any]]] = []
        self.tokens: set[str] = set()

    # ---- test controls -------------------------------------------------------------------
    def fail(self, method: str, path_end: str, outcome: Any, *, times: int = 1) -> None:
        """The next ``times`` matching requests get ``outcome``: an HTTP status, an exception, or raw bytes."""
        for _ in range(times):
            self.faults.append((lambda m, p: m == method and p.endswith(path_end), outcome))

    def count(self, method: str, path_end: str = "") -> int:
        """How many ``method`` requests to a path ending in ``path_end`` were made."""
        return sum(1 for m, p, _ in self.requests if m == method and p.endswith(path_end))

    @property
    def system(self) -> dict[str, Any]:
        """The system resource, as the BMC would answer it now."""
        return self.resources[SYSTEM]

    # ---- the adapter -----------------------------------------------------------------------
    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        path = urlsplit(request.url or "").path.rstrip("/") or "/"
        method = request.method or "GET"
        body = json.loads(request.body) if request.body else None
        self.requests.append((method, path, body))
        for i, (match, outcome) in enumerate(self.faults):
            if match(method, path):
                del self.faults[i]
                if isinstance(outcome, BaseException):
                    raise outcome
                if isinstance(outcome, bytes):  # a body that is not JSON, with 200
                    reply = self._reply(request, 200, None, {"Content-Type": "text/html"})
                    reply._content = outcome
                    return reply
                return self._reply(request, outcome, {"error": {"code": "Base.1.8.GeneralError", "message": "busy"}})
        if path not in _OPEN and not self._authorized(request):
            return self._reply(request, 401, {"error": {"code": "Base.1.8.AccessDenied", "message": "Unauthorized"}})
        handler = getattr(self, f"_{method.lower()}", None)
        status, payload, headers = handler(path, body) if handler else (405, None, {})
        return self._reply(request, status, payload, headers)

    def close(self) -> None:
        """Nothing to release."""

    def _authorized(self, request: requests.PreparedRequest) -> bool:
        if request.headers.get("X-Auth-Token") in self.tokens:
            return True
        basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        return request.headers.get("Authorization") == f"Basic {basic}"

    @staticmethod
    def _reply(
        request: requests.PreparedRequest, status: int, payload: Any, headers: dict[str, str] | None = None
    ) -> requests.Response:
        r = requests.Response()
        r.status_code, r.request, r.url, r.encoding = status, request, request.url or "", "utf-8"
        r._content = json.dumps(payload).encode() if payload is not None else b""
        r.headers = CaseInsensitiveDict({"Content-Type": "application/json", **(headers or {})})
        return r

    # ---- behaviour per method --------------------------------------------------------------
    def _get(self, path: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        if path == SYSTEM and self.pending_power:
            self.pending_power[1] -= 1
            if self.pending_power[1] <= 0:
                self.system["PowerState"] = self.pending_power[0]
                self.pending_power = []
        if path.startswith("/redfish/v1/TaskService/Tasks/") and self.task_script:
            status, task = self.task_script.pop(0) if len(self.task_script) > 1 else self.task_script[0]
            return status, {"@odata.id": path, "@odata.type": "#Task.v1_4_3.Task", "Name": "Task", **task}, {}
        if path in self.resources:
            return 200, copy.deepcopy(self.resources[path]), {}
        return 404, {"error": {"code": "Base.1.8.ResourceMissingAtURI", "message": f"{path} not found"}}, {}

    def _patch(self, path: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        if path == SYSTEM:
            self.system["Boot"].update(body["Boot"])
        elif path == BIOS + "/Settings":
            self.resources[path]["Attributes"].update(body["Attributes"])
        else:
            return 405, None, {}
        return 204, None, {}

    def _delete(self, path: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        return 204, None, {}

    def _post(self, path: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        if path == "/redfish/v1/SessionService/Sessions":
            if body != {"UserName": USER, "Password": PASSWORD}:
                return 401, {"error": {"code": "Base.1.8.NoValidSession", "message": "Login failed"}}, {}
            token = f"token-{len(self.tokens)}"
            self.tokens.add(token)
            return 201, {"Id": token}, {"X-Auth-Token": token, "Location": f"{path}/{token}"}
        if path.endswith("ComputerSystem.Reset"):
            reset = body["ResetType"]
            allowed = self.system["Actions"]["#ComputerSystem.Reset"]["ResetType@Redfish.AllowableValues"]
            if reset not in allowed:
                return 400, {"error": {"code": "Base.1.8.ActionParameterNotSupported", "message": reset}}, {}
            target = "Off" if reset in ("ForceOff", "GracefulShutdown") else "On"
            if reset in ("On", "ForceRestart", "GracefulRestart", "PowerCycle"):
                pending = self.resources[BIOS + "/Settings"]["Attributes"]
                self.resources[BIOS]["Attributes"].update(pending)  # staged BIOS settings apply at boot
                pending.clear()
                if "Restart" in reset:
                    self.system["PowerState"] = "Off"
            self.pending_power = [target, self.power_lands_after]
            return 204, None, {}
        if path.endswith("Bios.ResetBios"):
            self.resources[BIOS + "/Settings"]["Attributes"].update(ProcVirtualization="Enabled", SysProfile="Default")
            return 204, None, {}
        if path.endswith("UpdateService.SimpleUpdate"):
            return 202, None, {"Location": "/redfish/v1/TaskService/Tasks/JID_001"}
        if path.endswith("VirtualMedia.InsertMedia"):
            self.resources[path.rsplit("/Actions", 1)[0]].update(Inserted=True, Image=body["Image"])
            return 204, None, {}
        if path.endswith("VirtualMedia.EjectMedia"):
            self.resources[path.rsplit("/Actions", 1)[0]].update(Inserted=False, Image=None)
            return 204, None, {}
        return 405, None, {}


def endpoint(**override: Any) -> RedfishEndpoint:
    """The recorded BMC's endpoint (basic auth unless told otherwise)."""
    values: dict[str, Any] = {"address": ADDRESS, "username": USER, "password": PASSWORD, "auth_type": "basic"}
    values.update(override)
    return RedfishEndpoint(**values)


def client(bmc: FakeBmc, *, attempts: int = 3, sleeps: list[float] | None = None) -> RedfishClient:
    """A client of ``bmc`` whose retry backoff only records its sleeps."""
    slept = sleeps if sleeps is not None else []
    return RedfishClient(retry=RetryPolicy(attempts=attempts, sleep=slept.append), adapter=bmc)


def driver_info(**override: Any) -> dict[str, Any]:
    """Ironic-style driver_info of the recorded BMC."""
    info: dict[str, Any] = {
        "redfish_address": ADDRESS,
        "redfish_username": USER,
        "redfish_password": PASSWORD,
        "redfish_auth_type": "basic",
    }
    info.update(override)
    return info


def task_body(state: str, status: str = "OK", percent: int = 100, message: str = "") -> dict[str, Any]:
    """A Task body as iDRAC answers it (with one message when given)."""
    task: dict[str, Any] = {"Id": "JID_001", "TaskState": state, "TaskStatus": status, "PercentComplete": percent}
    if message:
        task["Messages"] = [{"MessageId": "IDRAC.2.8.RED007", "Message": message, "Severity": "Critical"}]
    return task


@dataclass
class FakeTask:
    """The ``Task`` protocol without a conductor."""

    node: NodeView
    ports: list[PortView] = field(default_factory=list)
    records: list[tuple[str, str]] = field(default_factory=list)
    progresses: list[tuple[float, float | None, str]] = field(default_factory=list)

    def record(self, message: str, *, severity: str = "INFO", data: dict[str, Any] | None = None) -> None:
        self.records.append((severity, message))

    def progress(self, done: float, total: float | None = None, *, message: str = "") -> None:
        self.progresses.append((done, total, message))


def make_task(**info: Any) -> FakeTask:
    """A manageable node of the recorded BMC (``info`` overrides driver_info keys)."""
    node = NodeView(
        id=1,
        uuid="1be26c0b-03f2-4d2e-ae87-c02d7f33c123",
        name="r650-1",
        driver="redfish",
        driver_info=driver_info(**info),
        driver_internal_info={},
        instance_info={},
        properties={"capabilities": "secure_boot:true"},
        provision_state="manageable",
        power_state=None,
    )
    return FakeTask(node)
