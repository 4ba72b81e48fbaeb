"""The ipmi hardware type and its ipmitool boundary, with a scripted runner instead of ipmitool.

The stderr and stdout strings below were recorded from ipmitool 1.8.19 (``-v``) against the fake
BMC of ``tests/integration/fake_ipmi_bmc.py`` and a closed port, except where a comment says they
come from ipmitool's source (responses pyghmi never sends).
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from ironworks.bmc.ipmitool import IpmiTarget, IpmitoolClient, RetryPolicy, classify, parse_boot_flags
from ironworks.drivers import registry
from ironworks.drivers.base import NodeView, PortView, PowerState, ValidationError
from ironworks.drivers.ipmi import IpmiHardware, IpmiManagement, IpmiPower, parse_driver_info
from ironworks.errors import (
    BmcAuthFailed,
    BmcError,
    BmcRequestFailed,
    BmcTimeout,
    BmcUnreachable,
    BmcUnsupported,
    DriverError,
)
from tests.fakes import Clock

PASSWORD = "Sup3r-s3cret"
_V = "Loading IANA PEN Registry...\nUsing best available cipher suite 3\n\n"
_VSO = (
    "Running Get VSO Capabilities my_addr 0x20, transit 0, target 0x20\n"
    "Invalid completion code received: Invalid command\nDiscovered IPMB address 0x0\n"
)
OK_STDERR = _V + _VSO
WRONG_PASSWORD = _V + "> RAKP 2 HMAC is invalid\nError: Unable to establish IPMI v2 / RMCP+ session\n"
UNKNOWN_USER = (
    _V + "> Error: no response from RAKP 1 message\n" * 4 + "Set Session Privilege Level to ADMINISTRATOR failed\n"
    "Error: Unable to establish IPMI v2 / RMCP+ session\n"
)
CLOSED_PORT = (
    "Loading IANA PEN Registry...\nGet Auth Capabilities error\nError issuing Get Channel Authentication "
    "Capabilities request\nError: Unable to establish IPMI v2 / RMCP+ session\n"
)
CLOSED_PORT_LAN = (
    "Loading IANA PEN Registry...\nGet Auth Capabilities command failed\nError: Unable to establish LAN session\n"
    "Error: Unable to establish IPMI v1.5 / RMCP session\n"
)
NO_SUCH_HOST = (
    "Address lookup for bmc.invalid failed\nCould not open socket!\n"
    "Error: Unable to establish IPMI v2 / RMCP+ session\n"
)
INVALID_COMMAND = OK_STDERR + "Set Chassis Identify failed: Invalid command\n"
UNSUPPORTED_PARAM = OK_STDERR + "Get Chassis Boot Parameter 4 failed: Unsupported parameter\n"
CYCLE_WHILE_OFF = OK_STDERR + "Set Chassis Power Control to Cycle failed: Command not supported in present state\n"
# from ipmitool's lanplus.c / lan.c: what real BMCs answer and pyghmi does not
UNAUTHORIZED_NAME = (
    "RAKP 2 message indicates an error : unauthorized name\nError: Unable to establish IPMI v2 / RMCP+ session\n"
)
NO_SESSIONS = (
    "Error in open session response message : insufficient resources for session\n"
    "Error: Unable to establish IPMI v2 / RMCP+ session\n"
)
INVALID_USER_15 = "Invalid user name\nError: Unable to establish LAN session\n"
NO_CHALLENGE_15 = "Get Session Challenge command failed\nError: Unable to establish LAN session\n"
PRIV_TOO_HIGH = OK_STDERR + "Set Session Privilege Level to ADMINISTRATOR failed: Insufficient privilege level\n"

BOOTPARAM = (
    "Boot parameter version: 1\nBoot parameter 5 is valid/unlocked\nBoot parameter data: {data}\n Boot Flags :\n"
    "   - Boot Flag Valid\n   - Options apply to all future boots\n   - BIOS EFI boot \n"
    "   - Boot Device Selector : Force Boot from CD/DVD\n   - BIOS verbosity : System Default\n"
)


@dataclass
class Runner:
    """Answers ipmitool commands from a script: command -> replies (the last one repeats)."""

    script: dict[str, list[tuple[int, str, str]]] = field(default_factory=dict)
    calls: list[tuple[list[str], dict[str, str], float]] = field(default_factory=list)

    def __call__(self, argv: Sequence[str], env: Mapping[str, str], *, timeout: float) -> tuple[int, str, str]:
        self.calls.append((list(argv), dict(env), timeout))
        replies = self.script.get(" ".join(command_of(argv)), [(0, "", OK_STDERR)])
        return replies.pop(0) if len(replies) > 1 else replies[0]

    def commands(self) -> list[str]:
        return [" ".join(command_of(argv)) for argv, _, _ in self.calls]


def command_of(argv: Sequence[str]) -> list[str]:
    return list(argv[argv.index("-N") + 2 :])


def status(*states: str) -> list[tuple[int, str, str]]:
    return [(0, f"Chassis Power is {s}\n", OK_STDERR) for s in states]


@dataclass
class FakeTask:
    node: NodeView
    ports: list[PortView] = field(default_factory=list)
    records: list[tuple[str, str]] = field(default_factory=list)

    def record(self, message: str, *, severity: str = "INFO", data: dict[str, Any] | None = None) -> None:
        self.records.append((severity, message))

    def progress(self, done: float, total: float | None = None, *, message: str = "") -> None:
        """Unused."""


def task(boot_mode: str | None = None, properties: dict[str, Any] | None = None, **info: Any) -> FakeTask:
    driver_info = {"ipmi_address": "127.0.0.1", "ipmi_username": "admin", "ipmi_password": PASSWORD, **info}
    node = NodeView(1, "uuid-1", None, "ipmi", driver_info, {}, {}, properties or {}, "manageable", None, boot_mode)
    return FakeTask(node)


FAST = RetryPolicy(sleep=lambda _s: None)


def power(runner: Runner, clock: Clock | None = None, **config: Any) -> IpmiPower:
    clock = clock or Clock()
    cfg = SimpleNamespace(conductor=SimpleNamespace(**config)) if config else None
    return IpmiPower(cfg, runner=runner, retry=FAST, clock=clock, sleep=clock.sleep, poll_interval=1.0)


# ---- argv and the password -----------------------------------------------------------------------
def test_argv_defaults_and_password_only_in_the_environment() -> None:
    runner = Runner({"power status": status("on")})
    assert power(runner).get_power_state(task()) == PowerState.ON
    [(argv, env, timeout)] = runner.calls
    assert " ".join(argv) == (
        "ipmitool -v -I lanplus -H 127.0.0.1 -p 623 -U admin -E -L ADMINISTRATOR -R 1 -N 1 power status"
    )
    assert not any(PASSWORD in arg for arg in argv)
    assert env == {"IPMI_PASSWORD": PASSWORD}
    assert 0 < timeout <= FAST.command_timeout


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        ({"ipmi_port": "6230", "ipmi_priv_level": "operator"}, "-p 6230 -U admin -E -L OPERATOR -R"),
        ({"ipmi_protocol_version": "1.5"}, "-I lan -H"),
        ({"ipmi_bridging": "single", "ipmi_target_channel": 0, "ipmi_target_address": "0x82"}, "-b 0 -t 0x82 -R"),
        (
            {
                "ipmi_bridging": "dual",
                "ipmi_target_channel": "7",
                "ipmi_target_address": 114,
                "ipmi_transit_channel": 0,
                "ipmi_transit_address": "0x82",
            },
            "-b 7 -t 0x72 -B 0 -T 0x82 -R",
        ),
        ({"ipmi_bridging": "no", "ipmi_target_channel": 0}, "-L ADMINISTRATOR -R"),
    ],
)
def test_argv_options(info: dict[str, Any], expected: str) -> None:
    client = IpmitoolClient(parse_driver_info({"ipmi_address": "10.0.0.9", "ipmi_username": "admin", **info}))
    assert expected in " ".join(client.argv(["power", "status"]))


@pytest.mark.parametrize(
    ("info", "message"),
    [
        ({"ipmi_address": ""}, "ipmi_address is required"),
        ({"ipmi_port": "http"}, "ipmi_port must be an integer"),
        ({"ipmi_port": 70000}, "ipmi_port must be between 1 and 65535"),
        ({"ipmi_priv_level": "root"}, "ipmi_priv_level must be one of ADMINISTRATOR"),
        ({"ipmi_protocol_version": "3"}, "ipmi_protocol_version must be 1.5 or 2.0"),
        ({"ipmi_bridging": "triple"}, "ipmi_bridging must be one of no, single, dual"),
        ({"ipmi_bridging": "single", "ipmi_target_channel": 0}, "ipmi_target_address required"),
        (
            {"ipmi_bridging": "dual", "ipmi_target_channel": 0, "ipmi_target_address": 1},
            "ipmi_transit_channel and ipmi_transit_address required when ipmi_bridging is 'dual'",
        ),
        ({"ipmi_bridging": "single", "ipmi_target_channel": 0, "ipmi_target_address": 300}, "between 0 and 255"),
        ({"ipmi_password": "x" * 21}, "longer than IPMI 2.0's 20 bytes"),
        ({"ipmi_password": "x" * 17, "ipmi_protocol_version": "1.5"}, "longer than IPMI 1.5's 16 bytes"),
        ({"ipmi_username": "u" * 17}, "ipmi_username is longer than IPMI's 16 bytes"),
    ],
)
def test_validate_names_the_field(info: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        power(Runner()).validate(task(**info))
    with pytest.raises(ValidationError, match=message):
        IpmiManagement().validate(task(**info))


# ---- errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("stderr", "cls", "hint", "retried"),
    [
        (WRONG_PASSWORD, BmcAuthFailed, "check driver_info ipmi_username/ipmi_password", False),
        (UNAUTHORIZED_NAME, BmcAuthFailed, "check driver_info ipmi_username/ipmi_password", False),
        (UNKNOWN_USER, BmcAuthFailed, "check driver_info ipmi_username (the BMC ignored it)", False),
        (INVALID_USER_15, BmcAuthFailed, "ipmi_username/ipmi_password", False),
        (PRIV_TOO_HIGH, BmcAuthFailed, "check driver_info ipmi_priv_level", False),
        (CLOSED_PORT, BmcUnreachable, "check driver_info ipmi_address and ipmi_port", True),
        (CLOSED_PORT_LAN, BmcUnreachable, "check driver_info ipmi_address and ipmi_port", True),
        (NO_CHALLENGE_15, BmcUnreachable, "check driver_info ipmi_address and ipmi_port", True),
        (NO_SUCH_HOST, BmcUnreachable, "check driver_info ipmi_address (name not resolved)", True),
        (NO_SESSIONS, BmcRequestFailed, "busy or out of sessions", True),
        (INVALID_COMMAND, BmcUnsupported, "does not offer it", False),
        (UNSUPPORTED_PARAM, BmcUnsupported, "does not offer it", False),
        (CYCLE_WHILE_OFF, BmcRequestFailed, "current state", False),
        (OK_STDERR + "Something new\n", BmcRequestFailed, "Something new", False),
    ],
)
def test_error_translation(stderr: str, cls: type[BmcError], hint: str, retried: bool) -> None:
    runner = Runner({"power status": [(1, "", stderr + f"echo {PASSWORD}\n")]})
    with pytest.raises(BmcError) as caught:
        power(runner).get_power_state(task(ipmi_port=6230))
    err = caught.value
    assert type(err) is cls
    assert "127.0.0.1:6230" in str(err) and "'power status'" in str(err) and hint in str(err)
    assert PASSWORD not in str(err) and "Traceback" not in str(err)
    assert len(runner.calls) == (FAST.attempts if retried else 1)


def test_success_chatter_is_not_a_diagnosis() -> None:
    assert classify(OK_STDERR) is None


def test_retries_back_off_within_the_budget() -> None:
    waits: list[float] = []
    runner = Runner({"power status": [(1, "", CLOSED_PORT), (1, "", NO_SESSIONS), *status("off")]})
    client = IpmitoolClient(IpmiTarget("127.0.0.1"), runner=runner, retry=RetryPolicy(sleep=waits.append))
    assert client.power_status() == "off"
    assert waits == [0.5, 1.0]


def test_retries_stop_when_the_total_time_is_spent() -> None:
    clock = Clock()

    def slow(argv: Sequence[str], env: Mapping[str, str], *, timeout: float) -> tuple[int, str, str]:
        clock.now += timeout  # every run hangs until it is killed
        raise subprocess.TimeoutExpired(list(argv), timeout)

    policy = RetryPolicy(attempts=10, total=18.0, command_timeout=10.0, sleep=clock.sleep)
    with pytest.raises(BmcUnreachable, match=r"did not finish 'power status' within 8 s"):
        IpmitoolClient(IpmiTarget("127.0.0.1"), runner=slow, retry=policy, clock=clock).power_status()
    assert clock.now - 1000.0 <= 18.0


def test_missing_ipmitool_is_a_conductor_problem() -> None:
    def missing(argv: Sequence[str], env: Mapping[str, str], *, timeout: float) -> tuple[int, str, str]:
        raise FileNotFoundError(argv[0])

    with pytest.raises(DriverError, match="not installed on this conductor") as caught:
        IpmitoolClient(IpmiTarget("127.0.0.1"), runner=missing, retry=FAST).power_status()
    assert not isinstance(caught.value, BmcError)


# ---- power -------------------------------------------------------------------------------------------
def test_power_on_polls_until_the_bmc_reports_it() -> None:
    clock = Clock()
    runner = Runner({"power status": status("off", "off", "off", "on")})
    power(runner, clock).set_power_state(task(), PowerState.ON, timeout=30)
    assert runner.commands() == ["power status", "power on", "power status", "power status", "power status"]
    assert clock.sleeps == [1.0, 1.0]


def test_power_change_times_out_naming_the_bmc() -> None:
    clock = Clock()
    runner = Runner({"power status": status("on")})
    with pytest.raises(BmcTimeout, match=r"127.0.0.1:623 still reports power on 5 s after 'power soft'.*ACPI"):
        power(runner, clock).set_power_state(task(), PowerState.SOFT_OFF, timeout=5)
    assert sum(clock.sleeps) == 5.0
    assert runner.commands().count("power soft") == 1


def test_default_timeout_comes_from_the_conductor_config() -> None:
    clock = Clock()
    with pytest.raises(BmcTimeout, match="3 s after 'power off'"):
        power(Runner({"power status": status("on")}), clock, power_state_change_timeout=3).set_power_state(
            task(), PowerState.OFF
        )


def test_power_is_idempotent() -> None:
    runner = Runner({"power status": status("off")})
    power(runner).set_power_state(task(), PowerState.SOFT_OFF, timeout=5)
    assert runner.commands() == ["power status"]


@pytest.mark.parametrize(
    ("before", "target", "expected"),
    [
        # off, then on (not "power cycle": VirtualBMC and many BMCs reject it)
        ("on", PowerState.REBOOT, ["power status", "power off", "power status", "power on", "power status"]),
        ("off", PowerState.REBOOT, ["power status", "power on", "power status"]),
        ("on", PowerState.SOFT_REBOOT, ["power status", "power soft", "power status", "power on", "power status"]),
    ],
)
def test_reboot(before: str, target: str, expected: list[str]) -> None:
    after = {"power off": "off", "power on": "on", "power soft": "off"}
    runner = Runner({"power status": status(before)})
    real = runner.__call__

    def follow(argv: Sequence[str], env: Mapping[str, str], *, timeout: float) -> tuple[int, str, str]:
        command = " ".join(command_of(argv))
        if command in after:
            runner.script["power status"] = status(after[command])
        return real(argv, env, timeout=timeout)

    iface = power(runner)
    iface.runner = follow
    iface.set_power_state(task(), target, timeout=5)
    assert runner.commands() == expected


# ---- boot device -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("node", "persistent", "expected"),
    [
        (task(), False, "chassis bootdev pxe"),
        (task(), True, "chassis bootdev pxe options=persistent"),
        (task(boot_mode="uefi"), True, "chassis bootdev pxe options=persistent,efiboot"),
        (
            task(properties={"capabilities": "secure_boot:false,boot_mode:uefi"}),
            False,
            "chassis bootdev pxe options=efiboot",
        ),
        (task(capabilities={"boot_mode": "uefi"}), False, "chassis bootdev pxe options=efiboot"),
        (task(boot_mode="uefi", properties={"capabilities": "boot_mode:bios"}), False, "chassis bootdev pxe"),
    ],
)
def test_set_boot_device(node: FakeTask, persistent: bool, expected: str) -> None:
    runner = Runner()
    IpmiManagement(runner=runner, retry=FAST).set_boot_device(node, "pxe", persistent=persistent)
    assert runner.commands() == ["raw 0x00 0x08 0x03 0x08", expected]


def test_boot_flag_timeout_is_optional_and_not_fatal() -> None:
    runner = Runner()
    IpmiManagement(runner=runner, retry=FAST).set_boot_device(task(ipmi_disable_boot_timeout="false"), "disk")
    assert runner.commands() == ["chassis bootdev disk"]

    refused = Runner({"raw 0x00 0x08 0x03 0x08": [(1, "", INVALID_COMMAND)]})
    node = task()
    IpmiManagement(runner=refused, retry=FAST).set_boot_device(node, "cdrom")
    assert refused.commands()[-1] == "chassis bootdev cdrom"
    assert node.records and node.records[0][0] == "WARNING" and "ipmi_disable_boot_timeout" in node.records[0][1]


def test_unsupported_boot_device() -> None:
    with pytest.raises(BmcUnsupported, match="cannot set boot device 'floppy'"):
        IpmiManagement(runner=Runner(), retry=FAST).set_boot_device(task(), "floppy")


@pytest.mark.parametrize(
    ("data", "device", "persistent", "efi"),
    [
        ("e014000000", "cdrom", True, True),  # bootdev cdrom options=persistent,efiboot
        ("8004000000", "pxe", False, False),  # bootdev pxe
        ("c008000000", "disk", True, False),
        ("8018000000", "bios", False, False),
        ("800c000000", "safe", False, False),
        ("803c000000", None, False, False),  # floppy: no Ironic name
        ("0004000000", None, False, False),  # flags not valid: the BMC ignores them
    ],
)
def test_get_boot_device_decodes_the_raw_flags(data: str, device: str | None, persistent: bool, efi: bool) -> None:
    out = BOOTPARAM.format(data=data)
    runner = Runner({"chassis bootparam get 5": [(0, out, OK_STDERR)]})
    got = IpmiManagement(runner=runner, retry=FAST).get_boot_device(task())
    assert got == {"boot_device": device, "persistent": persistent}
    assert parse_boot_flags(out).efiboot is efi


def test_unparsable_bootparam_is_a_request_failure() -> None:
    runner = Runner({"chassis bootparam get 5": [(0, "Boot parameter version: 1\n", OK_STDERR)]})
    with pytest.raises(BmcRequestFailed, match="no 'Boot parameter data'"):
        IpmiManagement(runner=runner, retry=FAST).get_boot_device(task())


# ---- registration ----------------------------------------------------------------------------------------
def test_registered_and_described() -> None:
    assert registry.hardware_type_class("ipmi") is IpmiHardware
    assert registry.interface_class("power", "ipmitool") is IpmiPower
    assert registry.interface_class("management", "ipmitool") is IpmiManagement
    assert IpmiHardware.supported["boot"] == ["ipxe", "pxe", "petitboot", "fake"]  # network boot, ipxe default
    assert {"ipmi_address", "ipmi_password", "ipmi_bridging"} <= set(IpmiPower.properties)
    assert "ipmi_address" in IpmiManagement.properties


def test_a_late_answer_to_a_power_command_is_checked_not_trusted() -> None:
    """VirtualBMC powers a TCG VM off in ~2 s, after ipmitool gave up: the state decides."""
    timeout_reply = [(1, "", "Unable to set Chassis Power Control to Down/Off\nIPMI Request Match NOT FOUND\n")]
    runner = Runner({"power status": status("on", "off"), "power off": timeout_reply})
    power(runner).set_power_state(task(), PowerState.OFF, timeout=5)
    assert runner.commands()[-1] == "power status"
    stuck = Runner({"power status": status("on"), "power off": timeout_reply})
    with pytest.raises(BmcError, match="power off"):
        power(stuck, Clock()).set_power_state(task(), PowerState.OFF, timeout=3)
