"""Commands the conductor sends (``<extension>.<command>``): the extensions and the checks of their params.

A command is an extension method marked ``@command``; its signature is its parameter schema
(``dict``, ``list``, ``str``, ``bool``, ``int``, ``float``, ``X | None``, ``Any``), so a request with a
missing, unknown or mistyped parameter is refused before anything runs. The executor runs one
command at a time (``server.CommandExecutor``). Results follow ironic-python-agent's shapes.
"""

from __future__ import annotations

import base64
import inspect
import io
import json
import subprocess
import tarfile
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from ironworks.agent.errors import AgentError
from ironworks.agent.hardware import HardwareContext, Managers

_CMD_ATTR = "_ironworks_agent_command"
F = TypeVar("F", bound=Callable[..., Any])


class CommandRequestError(AgentError):
    """A command request was refused before it ran; ``status`` is the HTTP status to answer."""

    status = 400


class InvalidCommand(CommandRequestError):
    """No such extension or command."""

    reason = "invalid_command"


class InvalidCommandParams(CommandRequestError):
    """Parameters missing, unknown or of the wrong type."""

    reason = "invalid_command_params"


def command(*, sync: bool = False) -> Callable[[F], F]:
    """Mark an extension method as a command; ``sync`` ones are quick and every POST waits for them."""

    def mark(func: F) -> F:
        setattr(func, _CMD_ATTR, sync)
        return func

    return mark


class Extension:
    """A group of commands (``standby``, ``clean`` ...); subclasses set ``name``."""

    name = ""


@dataclass(frozen=True, slots=True)
class Command:
    """One command: its callable, parameter types and required parameters."""

    name: str
    func: Callable[..., Any]
    params: dict[str, Any]
    required: frozenset[str]
    sync: bool

    def check(self, params: dict[str, Any]) -> None:
        """Raise ``InvalidCommandParams`` naming every bad parameter."""
        problems = [f"unknown parameter {p!r}" for p in params if p not in self.params]
        problems += [f"missing parameter {p!r}" for p in sorted(self.required - params.keys())]
        for pname, hint in self.params.items():
            if pname in params and not type_matches(params[pname], hint):
                problems.append(f"parameter {pname!r} must be {_hint_name(hint)}, got {type(params[pname]).__name__}")
        if problems:
            takes = ", ".join(self.params) or "no parameters"
            raise InvalidCommandParams(f"{self.name}: {'; '.join(problems)} (it takes: {takes})", command=self.name)


def type_matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a simple type hint."""
    origin = get_origin(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(type_matches(value, h) for h in get_args(hint))
    if hint is type(None):
        return value is None
    base = origin or hint
    if base is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, base) if isinstance(base, type) else True


def _hint_name(hint: Any) -> str:
    return str(hint).replace("typing.", "") if get_origin(hint) else getattr(hint, "__name__", str(hint))


def commands_of(ext: Extension) -> dict[str, Command]:
    """The commands an extension instance offers, keyed ``<extension>.<command>``."""
    found = {}
    for attr in dir(type(ext)):
        func = getattr(ext, attr)
        if not callable(func) or not hasattr(func, _CMD_ATTR):
            continue
        hints = get_type_hints(func)
        sig = inspect.signature(func)
        params = {p: hints.get(p, Any) for p in sig.parameters}
        required = frozenset(p for p, v in sig.parameters.items() if v.default is inspect.Parameter.empty)
        name = f"{ext.name}.{attr}"
        found[name] = Command(name, func, params, required, getattr(func, _CMD_ATTR))
    return found


# --- the extensions -------------------------------------------------------------------------------

LOG_OUTPUT_LIMIT = 4 * 1024 * 1024  # bytes kept of each log source (its end)
LOG_SOURCES: dict[str, list[str]] = {
    "journal.log": ["journalctl", "-b", "--no-pager", "-o", "short-precise", "-n", "20000"],
    "dmesg.log": ["dmesg", "-T"],
    "ip-addr.txt": ["ip", "addr"],
    "lsblk.txt": ["lsblk", "-a", "-o", "NAME,SIZE,TYPE,FSTYPE,LABEL,MODEL,SERIAL"],
}


class VersionMismatch(AgentError):
    """The hardware managers changed since the conductor listed the steps: list them again."""

    reason = "version_mismatch"


class CleanVersionMismatch(VersionMismatch):
    """IPA's name for a version mismatch during cleaning (Ironic restarts cleaning on it)."""


class _ManagerExtension(Extension):
    def __init__(self, managers: Managers, ctx: HardwareContext) -> None:
        self.managers = managers
        self.ctx = ctx


class StandbyExtension(_ManagerExtension):
    """Deploying an image, and powering off or rebooting into it."""

    name = "standby"

    def __init__(self, managers: Managers, ctx: HardwareContext) -> None:
        super().__init__(managers, ctx)
        self.partition_uuids: dict[str, Any] = {}

    @command()
    def prepare_image(self, image_info: dict[str, Any], configdrive: str | None = None) -> dict[str, Any]:
        """Write the image (and config drive) to the install disk; progress is bytes written."""
        result = dict(
            self.managers.call(
                "write_image", node=self.ctx.node, ports=[], image_info=image_info, configdrive=configdrive
            )
        )
        self.partition_uuids = dict(result.get("partition_uuids") or {})
        result["result"] = f"image {image_info.get('id', '')} written to {result.get('device')}".replace("  ", " ")
        return result

    @command()
    def power_off(self) -> dict[str, Any]:
        """Sync and power off (outside a ramdisk: only sync)."""
        return {"result": self.managers.call("power_off")}

    @command()
    def run_image(self) -> dict[str, Any]:
        """Sync and reboot into the written image (outside a ramdisk: only sync)."""
        return {"result": self.managers.call("reboot")}

    @command(sync=True)
    def sync(self) -> dict[str, Any]:
        """Flush file system buffers."""
        self.managers.call("sync")
        return {"result": "synced"}

    @command(sync=True)
    def get_partition_uuids(self) -> dict[str, Any]:
        """Partition UUIDs of the image last written (empty for a whole-disk image)."""
        return dict(self.partition_uuids)


class _StepsExtension(_ManagerExtension):
    kind = ""
    mismatch: type[VersionMismatch] = VersionMismatch

    def _steps(self, node: dict[str, Any], ports: list[Any]) -> dict[str, Any]:
        return self.managers.get_steps(self.kind, node, ports)

    def _execute(self, step: dict[str, Any], node: dict[str, Any], ports: list[Any], version: Any) -> dict[str, Any]:
        current = {m.name: m.HARDWARE_MANAGER_VERSION for m in self.managers.ordered}
        if version is not None and version != current:
            raise self.mismatch(
                f"hardware managers changed since the {self.kind} steps were listed (was {version}, now {current}); "
                f"list the {self.kind} steps again",
                agent_version=current,
                node_version=version,
            )
        result = self.managers.execute_step(self.kind, step, node, ports)
        return {f"{self.kind}_result": result, f"{self.kind}_step": step}


class CleanExtension(_StepsExtension):
    """Clean steps."""

    name = kind = "clean"
    mismatch = CleanVersionMismatch

    @command(sync=True)
    def get_clean_steps(self, node: dict[str, Any], ports: list[Any]) -> dict[str, Any]:
        """Clean steps per manager, and the managers' versions."""
        return self._steps(node, ports)

    @command()
    def execute_clean_step(
        self, step: dict[str, Any], node: dict[str, Any], ports: list[Any], clean_version: Any = None
    ) -> dict[str, Any]:
        """Run one clean step."""
        return self._execute(step, node, ports, clean_version)


class DeployExtension(_StepsExtension):
    """Deploy steps."""

    name = kind = "deploy"

    @command(sync=True)
    def get_deploy_steps(self, node: dict[str, Any], ports: list[Any]) -> dict[str, Any]:
        """Deploy steps per manager, and the managers' versions."""
        return self._steps(node, ports)

    @command()
    def execute_deploy_step(
        self, step: dict[str, Any], node: dict[str, Any], ports: list[Any], deploy_version: Any = None
    ) -> dict[str, Any]:
        """Run one deploy step."""
        return self._execute(step, node, ports, deploy_version)


class ServiceExtension(_StepsExtension):
    """Service steps (on an active node)."""

    name = kind = "service"

    @command(sync=True)
    def get_service_steps(self, node: dict[str, Any], ports: list[Any]) -> dict[str, Any]:
        """Service steps per manager, and the managers' versions."""
        return self._steps(node, ports)

    @command()
    def execute_service_step(
        self, step: dict[str, Any], node: dict[str, Any], ports: list[Any], service_version: Any = None
    ) -> dict[str, Any]:
        """Run one service step."""
        return self._execute(step, node, ports, service_version)


class SystemExtension(_ManagerExtension):
    """What the machine is."""

    name = "system"

    @command(sync=True)
    def inventory(self) -> dict[str, Any]:
        """The hardware inventory."""
        return {"inventory": self.managers.call("get_inventory")}


class PollExtension(_ManagerExtension):
    """IPA's ``poll`` extension: what in-band inspection asks the agent for."""

    name = "poll"

    @command(sync=True)
    def get_hardware_info(self) -> dict[str, Any]:
        """The hardware inventory itself (IPA's shape: ``cpu``, ``memory``, ``disks``, ``interfaces`` ...)."""
        inventory: dict[str, Any] = self.managers.call("get_inventory")
        return inventory


class LogExtension(_ManagerExtension):
    """Logs for the conductor to keep."""

    name = "log"

    @command()
    def collect_system_logs(self) -> dict[str, Any]:
        """A base64 tar.gz of the journal, dmesg, addresses, disks and the inventory (each bounded)."""
        files: dict[str, bytes] = {}
        for fname, argv in LOG_SOURCES.items():
            try:
                res = self.ctx.runner(argv, timeout=60)
                files[fname] = (res.stdout + res.stderr).encode()[-LOG_OUTPUT_LIMIT:]
            except (OSError, subprocess.SubprocessError) as exc:
                files[fname] = f"{argv[0]} unavailable: {exc}\n".encode()
        try:
            files["inventory.json"] = json.dumps(self.managers.call("get_inventory"), indent=2).encode()
        except Exception as exc:  # logs are wanted most when something is broken
            files["inventory.json"] = f"inventory failed: {exc}\n".encode()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for fname, data in files.items():
                info = tarfile.TarInfo(fname)
                info.size, info.mtime = len(data), int(time.time())
                tar.addfile(info, io.BytesIO(data))
        return {"system_logs": base64.b64encode(buf.getvalue()).decode()}


class RescueExtension(_ManagerExtension):
    """Rescue mode: let the owner log in."""

    name = "rescue"

    def __init__(
        self, managers: Managers, ctx: HardwareContext, *, on_finalized: Callable[[], None] | None = None
    ) -> None:
        super().__init__(managers, ctx)
        self._on_finalized = on_finalized

    @command(sync=True)
    def finalize_rescue(self, rescue_password: str, hashed: bool = False) -> dict[str, Any]:
        """Set the ``rescue`` user's password; in a ramdisk /init then opens logins (getty, SSH)."""
        # heartbeats stop (as IPA's do): the conductor has moved the node to "rescue" and needs no more;
        # the API keeps serving, token-protected, so the command's result can still be read
        self.managers.call("set_rescue_password", rescue_password, hashed=hashed)
        if self._on_finalized is not None:
            self._on_finalized()
        return {"result": "rescue password set"}


def default_extensions(
    managers: Managers, ctx: HardwareContext, *, on_rescue: Callable[[], None] | None = None
) -> list[Extension]:
    """Every extension the agent serves."""
    return [
        StandbyExtension(managers, ctx),
        CleanExtension(managers, ctx),
        DeployExtension(managers, ctx),
        ServiceExtension(managers, ctx),
        SystemExtension(managers, ctx),
        PollExtension(managers, ctx),
        LogExtension(managers, ctx),
        RescueExtension(managers, ctx, on_finalized=on_rescue),
    ]
