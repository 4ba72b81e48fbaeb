"""Hardware managers: dispatch order, fall-through, steps, the generic manager and the example vendor one."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import subprocess
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import ironworks.agent
from ironworks.agent import RunResult
from ironworks.agent.commands import CleanExtension, CleanVersionMismatch, RescueExtension, StandbyExtension
from ironworks.agent.generic import GenericHardwareManager
from ironworks.agent.hardware import (
    ENTRY_POINT_GROUP,
    HardwareContext,
    HardwareError,
    HardwareManager,
    HardwareManagerMethodNotFound,
    HardwareSupport,
    IncompatibleHardwareMethodError,
    InvalidStepArgs,
    Managers,
    agent_step,
    load_managers,
)

REPO = Path(__file__).resolve().parents[2]


class Mainline(HardwareManager):
    HARDWARE_MANAGER_NAME = "mainline"

    def evaluate_hardware_support(self) -> int:
        return HardwareSupport.MAINLINE

    def get_inventory(self) -> dict[str, Any]:
        raise IncompatibleHardwareMethodError("not on this board")

    @agent_step("clean", priority=50, argsinfo={"level": {"required": True, "type": "integer"}})
    def erase_devices(self, *, node: dict[str, Any], ports: list[Any], level: int) -> dict[str, Any]:
        return {"by": "mainline", "level": level}


class Unsupported(HardwareManager):
    def evaluate_hardware_support(self) -> int:
        return HardwareSupport.NONE

    def get_inventory(self) -> dict[str, Any]:
        return {"by": "unsupported"}


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[list[str], str | None]] = []

    def __call__(self, argv: Sequence[str], *, input: str | None = None, timeout: float = 60.0) -> RunResult:
        self.calls.append((list(argv), input))
        return RunResult(0, "")


def generic(ctx: HardwareContext | None = None) -> GenericHardwareManager:
    return GenericHardwareManager(ctx or HardwareContext(runner=Recorder()))


def test_most_specific_manager_first_and_fall_through(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = generic()
    monkeypatch.setattr(gen, "get_inventory", lambda: {"by": "generic"})
    managers = Managers([gen, Unsupported(gen.ctx), Mainline(gen.ctx)])
    assert [m.name for m in managers.ordered] == ["mainline", "generic_hardware_manager"]  # NONE never called
    assert managers.call("get_inventory") == {"by": "generic"}  # Mainline passed it on
    with pytest.raises(HardwareManagerMethodNotFound, match="no hardware manager handles 'flash_bmc'"):
        managers.call("flash_bmc")


def test_steps_are_listed_once_by_the_best_manager() -> None:
    gen = generic()
    steps = Managers([gen, Mainline(gen.ctx)]).get_steps("clean", {}, [])
    assert steps["hardware_manager_version"] == {"mainline": "1.0", "generic_hardware_manager": "1.0"}
    assert [s["step"] for s in steps["clean_steps"]["mainline"]] == ["erase_devices"]
    generic_steps = {s["step"]: s for s in steps["clean_steps"]["generic_hardware_manager"]}
    assert "erase_devices" not in generic_steps  # the mainline one won
    assert generic_steps["erase_devices_metadata"]["priority"] == 99
    assert {n: s["priority"] for n, s in generic_steps.items() if n != "erase_devices_metadata"} == {
        "burnin_cpu": 0,
        "burnin_disk": 0,
        "burnin_memory": 0,
        "burnin_network": 0,
        "update_firmware": 0,
    }
    step = generic_steps["update_firmware"]
    assert step["interface"] == "deploy" and step["reboot_requested"] is False and step["abortable"] is False
    assert set(step["argsinfo"]) == {"url", "checksum", "timeout"}


def test_generic_defaults_match_ironic() -> None:
    steps = {s["step"]: s for s in generic().get_clean_steps({}, [])}
    assert (steps["erase_devices"]["priority"], steps["erase_devices"]["abortable"]) == (10, True)
    assert {s["step"] for s in generic().get_service_steps({}, [])} == {
        "update_firmware",
        "burnin_cpu",
        "burnin_memory",
        "burnin_disk",
        "burnin_network",
    }
    assert [s["step"] for s in generic().get_deploy_steps({}, [])] == ["write_image"]


def test_execute_step_checks_arguments_then_dispatches_by_name() -> None:
    gen = generic()
    managers = Managers([gen, Mainline(gen.ctx)])
    assert managers.execute_step("clean", {"step": "erase_devices", "args": {"level": 3}}, {}, []) == {
        "by": "mainline",
        "level": 3,
    }
    for args, says in [
        ({}, "missing required argument 'level'"),
        ({"level": "3"}, "argument 'level' must be of type integer"),
        ({"level": 3, "fast": True}, "unknown argument 'fast'"),
    ]:
        with pytest.raises(InvalidStepArgs, match=says):
            managers.execute_step("clean", {"step": "erase_devices", "args": args}, {}, [])
    with pytest.raises(HardwareManagerMethodNotFound, match="no clean step 'write_image'"):
        managers.execute_step("clean", {"step": "write_image"}, {}, [])


def test_clean_version_mismatch_is_reported_as_ironic_expects() -> None:
    gen = generic()
    ext = CleanExtension(Managers([gen]), gen.ctx)
    with pytest.raises(CleanVersionMismatch, match="list the clean steps again"):
        ext.execute_clean_step({"step": "burnin_cpu"}, {}, [], clean_version={"generic_hardware_manager": "0.9"})


def fake_module(monkeypatch: pytest.MonkeyPatch, name: str, **funcs: Any) -> None:
    mod = types.ModuleType(f"ironworks.agent.{name}")
    for fname, func in funcs.items():
        setattr(mod, fname, func)
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setattr(ironworks.agent, name, mod, raising=False)


def test_prepare_image_writes_to_the_allowlisted_file_with_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * 4096)
    progress: list[dict[str, Any]] = []
    ctx = HardwareContext(runner=Recorder(), allowed_devices=[str(disk)], progress=progress.append)
    fake_module(monkeypatch, "devices", list_block_devices=lambda allowlist: [])
    seen: dict[str, Any] = {}

    def write_image(info: dict[str, Any], device: str, *, progress: Any, allowlist: list[str] | None) -> dict[str, Any]:
        seen.update(device=device, allowlist=allowlist)
        progress(2048, 4096)
        return {"bytes_written": 4096}

    fake_module(monkeypatch, "image", write_image=write_image)
    fake_module(monkeypatch, "configdrive", write_configdrive=lambda dev, cd, *, allowlist: dev + "p2")
    ext = StandbyExtension(Managers([GenericHardwareManager(ctx)]), ctx)
    result = ext.prepare_image({"id": "img-1"}, configdrive="H4sI")
    assert seen == {"device": str(disk), "allowlist": [str(disk)]}
    assert result["result"] == f"image img-1 written to {disk}" and result["configdrive_partition"] == f"{disk}p2"
    assert progress == [{"done": 2048, "total": 4096, "device": str(disk)}]
    assert ext.get_partition_uuids() == {}


def test_root_device_hints_pick_the_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [
        {"name": "sda", "path": "/dev/sda", "size": 500 * 2**30, "serial": "A1", "ro": False},
        {"name": "sdb", "path": "/dev/sdb", "size": 100 * 2**30, "serial": "B2", "ro": False},
        {"name": "sdc", "path": "/dev/sdc", "size": 2**30, "serial": "C3", "ro": False},
    ]
    fake_module(monkeypatch, "devices", list_block_devices=lambda allowlist: rows)
    gen = GenericHardwareManager(HardwareContext(runner=Recorder(), allowed_devices=None, ramdisk=True))
    assert gen.get_os_install_device({}) == "/dev/sdb"  # the smallest of at least 4 GiB
    assert gen.get_os_install_device({"properties": {"root_device": {"serial": "a1"}}}) == "/dev/sda"
    with pytest.raises(HardwareError, match="no disk matches the root device hints"):
        gen.get_os_install_device({"properties": {"root_device": {"name": "/dev/nvme0n1"}}})


def test_power_and_rescue_password_only_in_a_ramdisk() -> None:
    runner = Recorder()
    host = GenericHardwareManager(HardwareContext(runner=runner, ramdisk=False))
    assert host.power_off() == "poweroff skipped: not in a ramdisk"
    assert runner.calls == [(["sync"], None)]
    with pytest.raises(HardwareError, match="outside a ramdisk"):
        host.set_rescue_password("pw")
    runner = Recorder()
    ctx = HardwareContext(runner=runner, ramdisk=True, allowed_devices=None)
    finalized: list[bool] = []
    ext = RescueExtension(Managers([GenericHardwareManager(ctx)]), ctx, on_finalized=lambda: finalized.append(True))
    ext.finalize_rescue("$6$salt$hash", hashed=True)
    assert runner.calls == [(["chpasswd", "-e"], "rescue:$6$salt$hash\n")] and finalized == [True]
    assert GenericHardwareManager(ctx).reboot() == "reboot started"
    assert runner.calls[-1] == (["reboot", "-f"], None)


def test_vendor_manager_wins_its_step_and_passes_the_rest_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.syspath_prepend(str(REPO / "examples/vendor_manager"))
    VendorHardwareManager = importlib.import_module("ironworks_example_vendor").VendorHardwareManager

    (tmp_path / "sys/class/dmi/id").mkdir(parents=True)
    (tmp_path / "sys/class/dmi/id/sys_vendor").write_text("ExampleVendor\n")
    ctx = HardwareContext(root=tmp_path, runner=Recorder())
    vendor = VendorHardwareManager(ctx)
    assert vendor.evaluate_hardware_support() == HardwareSupport.VENDOR
    assert VendorHardwareManager(HardwareContext(root=tmp_path / "other")).evaluate_hardware_support() == 0
    managers = Managers([GenericHardwareManager(ctx), vendor])
    steps = managers.get_steps("clean", {}, [])["clean_steps"]
    listed = {(s["interface"], s["step"]) for s in steps["example_vendor_hardware_manager"]}
    assert listed == {
        ("deploy", "update_vendor_firmware"),
        ("bios", "apply_configuration"),
        ("bios", "factory_reset"),
        ("raid", "create_configuration"),
        ("raid", "delete_configuration"),
    }
    step = {"step": "update_vendor_firmware", "args": {"version": "2.1"}}
    assert managers.execute_step("clean", step, {}, []) == {"vendor": "ExampleVendor", "firmware_version": "2.1"}
    fake_module(monkeypatch, "burnin", burnin_cpu=lambda **args: {"by": "generic", **args})
    assert managers.execute_step("clean", {"step": "burnin_cpu", "args": {"timeout": 5}}, {}, []) == {
        "by": "generic",
        "timeout": 5,
    }


def test_bios_and_raid_hooks_dispatch_by_interface_and_check_their_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO / "examples/vendor_manager"))
    monkeypatch.setenv("IRONWORKS_EXAMPLE_VENDOR", "1")
    VendorHardwareManager = importlib.import_module("ironworks_example_vendor").VendorHardwareManager
    ctx = HardwareContext(runner=Recorder())
    managers = Managers([GenericHardwareManager(ctx), VendorHardwareManager(ctx)])

    def run(interface: str, name: str, **args: Any) -> Any:
        return managers.execute_step("clean", {"interface": interface, "step": name, "args": args}, {}, [])

    done = run("bios", "apply_configuration", settings=[{"name": "ProcTurboMode", "value": "Disabled"}])
    assert done["bios_settings"]["ProcTurboMode"] == "Disabled"
    assert run("bios", "factory_reset")["bios_settings"]["ProcTurboMode"] == "Enabled"
    with pytest.raises(InvalidStepArgs, match=r"unknown setting 'NoSuch'.*known settings: BootMode"):
        run("bios", "apply_configuration", settings=[{"name": "NoSuch", "value": "1"}])
    target = {"logical_disks": [{"size_gb": "MAX", "raid_level": "1"}]}
    made = run("raid", "create_configuration", target_raid_config=target)["raid_config"]["logical_disks"]
    assert made == [{"raid_level": "1", "size_gb": "MAX", "controller": "example-raid-0", "volume_name": "vd0"}]
    with pytest.raises(InvalidStepArgs, match="raid_level '7'; supported: 0, 1, 5"):
        run("raid", "create_configuration", target_raid_config={"logical_disks": [{"size_gb": 1, "raid_level": "7"}]})
    with pytest.raises(InvalidStepArgs, match="missing required argument 'target_raid_config'"):
        run("raid", "create_configuration")
    assert run("raid", "delete_configuration") == {"raid_config": {"logical_disks": []}}
    # the interface is part of the step's identity: no raid step called factory_reset exists
    missing = r"no clean step 'raid\.factory_reset'.*bios\.factory_reset"
    with pytest.raises(HardwareManagerMethodNotFound, match=missing):
        run("raid", "factory_reset")
    # without a vendor manager the generic one offers no hook at all
    generic_only = Managers([GenericHardwareManager(ctx)])
    with pytest.raises(HardwareManagerMethodNotFound, match=r"no clean step 'bios\.apply_configuration'"):
        generic_only.execute_step("clean", {"interface": "bios", "step": "apply_configuration", "args": {}}, {}, [])


def test_vendor_manager_installs_as_an_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    def installed() -> bool:
        return any(ep.name == "example-vendor" for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))

    if not installed():  # CI: install the example into this venv once
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "-e", str(REPO / "examples/vendor_manager")], check=True
        )
        importlib.invalidate_caches()
    assert installed()
    monkeypatch.setenv("IRONWORKS_EXAMPLE_VENDOR", "1")
    managers = load_managers(HardwareContext(runner=Recorder()))
    assert [m.name for m in managers.ordered] == ["example_vendor_hardware_manager", "generic_hardware_manager"]


def test_collect_system_logs_is_a_bounded_tarball(monkeypatch: pytest.MonkeyPatch) -> None:
    import base64
    import io
    import tarfile

    from ironworks.agent import commands

    def runner(argv: Sequence[str], *, input: str | None = None, timeout: float = 60.0) -> RunResult:
        if argv[0] == "dmesg":
            raise FileNotFoundError("dmesg")
        return RunResult(0, "x" * 100 + argv[0])

    monkeypatch.setattr(commands, "LOG_OUTPUT_LIMIT", 50)
    ctx = HardwareContext(runner=runner)
    gen = GenericHardwareManager(ctx)
    monkeypatch.setattr(gen, "get_inventory", lambda: {"cpu": {"count": 2}})
    logs = commands.LogExtension(Managers([gen]), ctx).collect_system_logs()
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(logs["system_logs"])), mode="r:gz") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert set(files) == {"journal.log", "dmesg.log", "ip-addr.txt", "lsblk.txt", "inventory.json"}
    assert files["journal.log"] == (b"x" * 100 + b"journalctl")[-50:]  # the end is kept
    assert files["dmesg.log"].startswith(b"dmesg unavailable")
    assert json.loads(files["inventory.json"]) == {"cpu": {"count": 2}}


def test_a_plain_rescue_password_is_hashed_through_stdin_then_set_with_chpasswd_e(tmp_path: Path) -> None:
    class Hashing(Recorder):
        def __call__(self, argv: Sequence[str], *, input: str | None = None, timeout: float = 60.0) -> RunResult:
            super().__call__(argv, input=input, timeout=timeout)
            return RunResult(0, "$6$salt$hashed\n") if argv[0] == "openssl" else RunResult(0, "")

    runner = Hashing()
    gen = GenericHardwareManager(HardwareContext(root=tmp_path, runner=runner))  # its own root, not a ramdisk
    gen.set_rescue_password("pw")
    assert runner.calls[0] == (["openssl", "passwd", "-6", "-stdin"], "pw\n")  # never in argv
    assert runner.calls[1] == (["chpasswd", "-e", "-R", str(tmp_path.resolve())], "rescue:$6$salt$hashed\n")
