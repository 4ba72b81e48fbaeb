"""The Redfish boundary and driver against a recorded BMC (``redfish_fake``): errors, connections,
power waits, boot devices, inspection, driver_info."""

from __future__ import annotations

import gc
import ssl
import subprocess
import sys
from typing import Any

import pytest
import requests

from ironworks.bmc.redfish import RedfishClient, RetryPolicy
from ironworks.bmc.redfish_resources import component_name
from ironworks.drivers.base import PowerState, ValidationError
from ironworks.drivers.redfish import (
    PROPERTIES,
    RedfishHardware,
    RedfishInspect,
    RedfishManagement,
    RedfishPower,
    parse_driver_info,
)
from ironworks.drivers.steps import Done
from ironworks.errors import BmcAuthFailed, BmcRequestFailed, BmcTimeout, BmcTlsError, BmcUnreachable, BmcUnsupported
from tests.fakes import Clock
from tests.unit.redfish_fake import ADDRESS, PASSWORD, SYSTEM, FakeBmc, client, endpoint, make_task


@pytest.fixture
def bmc() -> FakeBmc:
    return FakeBmc()


def power_of(bmc: FakeBmc, clock: Clock | None = None) -> RedfishPower:
    power = RedfishPower()
    power.client = client(bmc)
    if clock is not None:
        power.clock, power.sleep = clock, clock.sleep
    return power


# ---- error translation ------------------------------------------------------------------------
def test_wrong_password_is_an_auth_failure_that_names_the_fix_and_not_the_password(bmc: FakeBmc) -> None:
    c = client(bmc)
    with pytest.raises(BmcAuthFailed) as err:
        c.power_state(endpoint(password="not-the-password"))
    msg = str(err.value)
    assert msg == (
        f"Redfish BMC {ADDRESS} rejected the credentials for user 'root' while reading the power state: "
        "check driver_info redfish_username/redfish_password."
    )
    assert "not-the-password" not in msg and err.value.reason == "bmc_auth_failed"
    assert bmc.count("GET", SYSTEM) == 0 and bmc.count("GET", "/Systems") == 1  # never retried
    assert c.connections() == 0  # the rejected login is not kept


def test_session_auth_logs_in_once_for_many_calls(bmc: FakeBmc) -> None:
    c = client(bmc)
    ep = endpoint(auth_type="auto")
    for _ in range(10):
        assert c.power_state(ep) == "On"
    assert bmc.count("POST", "/SessionService/Sessions") == 1
    assert c.connections() == 1 and bmc.count("GET", "/redfish/v1/Systems") == 1  # the only system, listed once
    assert PASSWORD not in repr(ep) and PASSWORD not in repr(ep.cache_key())


def test_evicted_connections_log_out_and_unreachable_ones_do_not_try(bmc: FakeBmc) -> None:
    c = RedfishClient(retry=RetryPolicy(attempts=2, sleep=lambda s: None), adapter=bmc, max_connections=1)
    first, second = endpoint(auth_type="session"), endpoint(auth_type="session", address="https://bmc-2.example.test")
    c.power_state(first)
    c.power_state(second)  # evicts the first: its session is deleted on the BMC (they have few slots)
    gc.collect()
    assert c.connections() == 1 and bmc.count("DELETE", "/Sessions/token-0") == 1
    refused = requests.exceptions.ConnectionError(ConnectionRefusedError(111, "Connection refused"))
    bmc.fail("GET", SYSTEM, refused, times=2)
    with pytest.raises(BmcUnreachable) as err:
        c.power_state(second)
    del err, refused  # their tracebacks hold the connection
    gc.collect()
    assert c.connections() == 0 and bmc.count("DELETE") == 1  # no log-out sent to a BMC that does not answer


def test_failed_session_login_is_an_auth_failure(bmc: FakeBmc) -> None:
    with pytest.raises(BmcAuthFailed, match="check driver_info redfish_username/redfish_password"):
        client(bmc).power_state(endpoint(auth_type="session", password="wrong"))


def test_connection_refused_is_retried_with_backoff_then_unreachable(bmc: FakeBmc) -> None:
    refused = requests.exceptions.ConnectionError(ConnectionRefusedError(111, "Connection refused"))
    bmc.fail("GET", "/redfish/v1", refused, times=5)
    sleeps: list[float] = []
    with pytest.raises(BmcUnreachable) as err:
        client(bmc, attempts=3, sleeps=sleeps).power_state(endpoint())
    assert str(err.value) == (
        f"Redfish BMC {ADDRESS} is unreachable (connection refused) while reading the power state: check "
        "driver_info redfish_address and the network path to the BMC. (gave up after 3 attempts)"
    )
    assert sleeps == [0.5, 1.0] and bmc.count("GET", "/redfish/v1") == 3


def test_tls_failure_is_not_retried_and_names_verify_ca(bmc: FakeBmc) -> None:
    bmc.fail("GET", "/redfish/v1", requests.exceptions.SSLError(ssl.SSLCertVerificationError("self-signed")))
    with pytest.raises(BmcTlsError, match="check driver_info redfish_verify_ca"):
        client(bmc).power_state(endpoint())
    assert bmc.count("GET", "/redfish/v1") == 1


def test_server_errors_are_retried_then_reported(bmc: FakeBmc) -> None:
    c = client(bmc, attempts=3)
    c.power_state(endpoint())  # connected and the system found
    before = bmc.count("GET", SYSTEM)
    bmc.fail("GET", SYSTEM, 500, times=10)
    with pytest.raises(BmcRequestFailed) as err:
        c.power_state(endpoint())
    assert "answered HTTP 500 while reading the power state: busy" in str(err.value)
    assert str(err.value).endswith("(gave up after 3 attempts)")
    assert bmc.count("GET", SYSTEM) - before == 3 * 2  # sushy repeats a failed GET once, at once; we try 3 times


def test_a_busy_bmc_answers_on_a_later_attempt(bmc: FakeBmc) -> None:
    bmc.fail("GET", SYSTEM, 503, times=2)
    assert client(bmc).power_state(endpoint()) == "On"


def test_client_errors_are_not_retried(bmc: FakeBmc) -> None:
    with pytest.raises(BmcRequestFailed, match="check driver_info redfish_system_id"):
        client(bmc).power_state(endpoint(system_id="/redfish/v1/Systems/System.Embedded.9"))
    assert bmc.count("GET", "System.Embedded.9") == 1


def test_a_web_page_instead_of_redfish_is_reported_as_such(bmc: FakeBmc) -> None:
    bmc.fail("GET", "/redfish/v1", b"<html><body>iDRAC login</body></html>")
    with pytest.raises(BmcRequestFailed, match=r"something other than Redfish JSON .* redfish_address"):
        client(bmc).power_state(endpoint())


def test_a_reset_type_the_bmc_does_not_list_is_unsupported(bmc: FakeBmc) -> None:
    allowed = bmc.system["Actions"]["#ComputerSystem.Reset"]["ResetType@Redfish.AllowableValues"]
    allowed.remove("GracefulRestart")
    power = power_of(bmc, Clock())
    with pytest.raises(BmcUnsupported, match="does not offer what requesting GracefulRestart") as err:
        power.set_power_state(make_task(), PowerState.SOFT_REBOOT)
    assert "ForceRestart" in str(err.value)  # the message lists what the BMC allows
    assert bmc.count("POST", "ComputerSystem.Reset") == 0


def test_a_password_the_bmc_echoes_is_masked(bmc: FakeBmc) -> None:
    bmc.fail("GET", SYSTEM, 400)
    original = FakeBmc._reply

    def echo(request: Any, status: int, payload: Any, headers: Any = None) -> requests.Response:
        if status == 400:
            payload = {"error": {"code": "Base.1.8.PropertyValueError", "message": f"bad password {PASSWORD}"}}
        return original(request, status, payload, headers)

    bmc._reply = echo  # type: ignore[method-assign]
    with pytest.raises(BmcRequestFailed) as err:
        client(bmc).power_state(endpoint())
    assert PASSWORD not in str(err.value) and "bad password ******" in str(err.value)


# ---- power ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("redfish", "ironic"),
    [
        ("On", "power on"),
        ("PoweringOn", "power on"),
        ("Off", "power off"),
        ("PoweringOff", "power off"),
        ("Paused", "error"),
    ],
)
def test_power_states_map_to_ironic(bmc: FakeBmc, redfish: str, ironic: str) -> None:
    bmc.system["PowerState"] = redfish
    assert power_of(bmc).get_power_state(make_task()) == ironic


def test_power_off_waits_until_the_bmc_reports_off(bmc: FakeBmc) -> None:
    clock = Clock()
    power = power_of(bmc, clock)
    bmc.power_lands_after = 3
    power.set_power_state(make_task(), PowerState.OFF, timeout=30)
    assert bmc.requests[-1][0] == "GET" and bmc.system["PowerState"] == "Off"
    assert [b for m, p, b in bmc.requests if m == "POST"] == [{"ResetType": "ForceOff"}]
    assert clock.sleeps == [1.0, 1.0]  # polled every poll_interval, never longer


def test_power_wait_times_out_with_what_the_bmc_reports(bmc: FakeBmc) -> None:
    clock = Clock()
    power = power_of(bmc, clock)
    bmc.power_lands_after = 1000
    with pytest.raises(BmcTimeout) as err:
        power.set_power_state(make_task(), PowerState.SOFT_OFF, timeout=5)
    assert str(err.value) == (
        f"Redfish BMC {ADDRESS} still reports power state On 5s after the request for 'soft power off': check "
        "the machine, or retry with a longer timeout."
    )
    assert sum(clock.sleeps) == 5
    assert [b for m, p, b in bmc.requests if m == "POST"] == [{"ResetType": "GracefulShutdown"}]


def test_power_on_when_on_changes_nothing(bmc: FakeBmc) -> None:
    power_of(bmc, Clock()).set_power_state(make_task(), PowerState.ON)
    assert bmc.count("POST") == 0


@pytest.mark.parametrize(("before", "reset"), [("On", "ForceRestart"), ("Off", "On")])
def test_reboot_restarts_or_powers_on(bmc: FakeBmc, before: str, reset: str) -> None:
    bmc.system["PowerState"] = before
    power_of(bmc, Clock()).reboot(make_task(), timeout=10)
    assert [b for m, p, b in bmc.requests if m == "POST"] == [{"ResetType": reset}]
    assert bmc.system["PowerState"] == "On"


# ---- boot device and mode ---------------------------------------------------------------------
def test_boot_device_set_and_read_back(bmc: FakeBmc) -> None:
    mgmt = RedfishManagement()
    mgmt.client = client(bmc)
    task = make_task()
    assert mgmt.get_boot_device(task) == {"boot_device": None, "persistent": None}
    mgmt.set_boot_device(task, "pxe", persistent=True)
    assert bmc.requests[-1] == (
        "PATCH",
        SYSTEM,
        {"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Continuous"}},
    )
    assert mgmt.get_boot_device(task) == {"boot_device": "pxe", "persistent": True}
    mgmt.set_boot_device(task, "disk")
    assert mgmt.get_boot_device(task) == {"boot_device": "disk", "persistent": False}
    mgmt.set_boot_device(task, "bios")
    assert bmc.system["Boot"]["BootSourceOverrideTarget"] == "BiosSetup"
    assert mgmt.get_supported_boot_devices(task) == ["pxe", "disk", "cdrom", "bios"]
    with pytest.raises(BmcUnsupported, match="cannot set boot device 'safe'"):
        mgmt.set_boot_device(task, "safe")


def test_boot_device_the_bmc_does_not_allow_is_unsupported(bmc: FakeBmc) -> None:
    bmc.system["Boot"]["BootSourceOverrideTarget@Redfish.AllowableValues"] = ["None", "Pxe", "Hdd"]
    mgmt = RedfishManagement()
    mgmt.client = client(bmc)
    assert mgmt.get_supported_boot_devices(make_task()) == ["pxe", "disk"]
    with pytest.raises(BmcUnsupported, match="setting the boot device to cdrom"):
        mgmt.set_boot_device(make_task(), "cdrom")


def test_boot_mode_read_and_set(bmc: FakeBmc) -> None:
    mgmt = RedfishManagement()
    mgmt.client = client(bmc)
    assert mgmt.get_boot_mode(make_task()) == "uefi"
    mgmt.set_boot_mode(make_task(), "bios")
    assert bmc.requests[-1][2] == {"Boot": {"BootSourceOverrideMode": "Legacy"}}
    assert mgmt.get_boot_mode(make_task()) == "bios"


# ---- inspection -------------------------------------------------------------------------------
def test_inspection_reads_cpus_memory_disk_nics_and_boot_mode(bmc: FakeBmc) -> None:
    inspect = RedfishInspect()
    inspect.client = client(bmc)
    outcome = inspect.inspect_hardware(make_task())
    assert outcome == Done(
        {
            "properties": {
                "cpus": 128,  # 2 sockets x 64 threads
                "cpu_arch": "x86_64",
                "memory_mb": 262144,
                "local_gb": 1787,  # the 1.92 TB RAID drive, the largest: 1788 GiB minus one, as Ironic
                "capabilities": "secure_boot:true,boot_mode:uefi",
            },
            "macs": ["b0:7b:25:de:6a:10", "b0:7b:25:de:6a:11"],
        }
    )


def test_inspection_keeps_what_a_sparse_bmc_does_not_report(bmc: FakeBmc) -> None:
    for key in ("Processors", "MemorySummary", "ProcessorSummary", "Storage", "SimpleStorage", "EthernetInterfaces"):
        del bmc.system[key]
    inspect = RedfishInspect()
    inspect.client = client(bmc)
    task = make_task()
    outcome = inspect.inspect_hardware(task)
    assert outcome == Done({"properties": {"capabilities": "secure_boot:true,boot_mode:uefi"}, "macs": []})
    assert (
        "INFO",
        "The BMC did not report cpus, cpu_arch, memory_mb, local_gb; those properties were left as they were.",
    ) in task.records


# ---- virtual media (for the redfish-virtual-media boot interface) ------------------------------
def test_virtual_media_insert_is_idempotent_and_eject_empties(bmc: FakeBmc) -> None:
    c, ep = client(bmc), endpoint()
    c.insert_media(ep, "http://10.0.0.1/deploy.iso")
    c.insert_media(ep, "http://10.0.0.1/deploy.iso")
    assert bmc.count("POST", "InsertMedia") == 1
    inserts = [(p, b) for m, p, b in bmc.requests if m == "POST" and p.endswith("InsertMedia")]
    assert inserts == [  # found on the manager, where iDRAC 9 keeps it
        (
            "/redfish/v1/Managers/iDRAC.Embedded.1/VirtualMedia/CD/Actions/VirtualMedia.InsertMedia",
            {"Image": "http://10.0.0.1/deploy.iso"},
        )
    ]
    c.insert_media(ep, "http://10.0.0.1/other.iso")
    assert bmc.count("POST", "EjectMedia") == 1 and bmc.count("POST", "InsertMedia") == 2
    c.eject_media(ep)
    c.eject_media(ep)
    assert bmc.count("POST", "EjectMedia") == 2
    with pytest.raises(BmcUnsupported, match="VirtualMedia of type floppy"):
        c.insert_media(ep, "http://10.0.0.1/f.img", device="floppy")


# ---- driver_info, registration --------------------------------------------------------------------
def test_driver_info_problems_are_listed_together() -> None:
    info = {
        "redfish_address": "ftp://bmc/redfish",
        "redfish_verify_ca": "/nonexistent/ca.pem",
        "redfish_auth_type": "token",
    }
    task = make_task()
    task.node.driver_info = info | {"redfish_password": "x"}
    with pytest.raises(ValidationError) as err:
        RedfishPower().validate(task)
    msg = str(err.value)
    for part in (
        "must use http or https",
        "redfish_password is set but redfish_username is not",
        "redfish_verify_ca",
        "redfish_auth_type must be one of basic, session, auto",
    ):
        assert part in msg
    task.node.driver_info = {}
    with pytest.raises(ValidationError, match="redfish_address is required"):
        RedfishPower().validate(task)
    task.node.driver_info = {"redfish_address": "https://root:calvin@10.0.0.5"}
    with pytest.raises(ValidationError, match="must not hold credentials") as err:
        RedfishPower().validate(task)
    assert "calvin" not in str(err.value)


@pytest.mark.parametrize(
    ("info", "address", "verify", "system"),
    [
        ({"redfish_address": "10.0.0.5"}, "https://10.0.0.5", True, None),
        (
            {"redfish_address": "http://[fd00::5]:8000/", "redfish_verify_ca": "False"},
            "http://[fd00::5]:8000",
            False,
            None,
        ),
        ({"redfish_address": "bmc:443", "redfish_system_id": "1"}, "https://bmc:443", True, "/redfish/v1/Systems/1"),
    ],
)
def test_driver_info_is_normalized(info: dict[str, Any], address: str, verify: bool, system: str | None) -> None:
    ep, problems = parse_driver_info(info)
    assert problems == [] and ep is not None
    assert (ep.address, ep.verify, ep.system_id, ep.auth_type) == (address, verify, system, "auto")


def test_redfish_hardware_and_its_properties() -> None:
    assert RedfishHardware.supported["power"] == ["redfish"]
    assert RedfishHardware.supported["boot"] == ["ipxe", "pxe", "petitboot", "redfish-virtual-media", "fake"]
    assert set(PROPERTIES) == {
        "redfish_address",
        "redfish_system_id",
        "redfish_username",
        "redfish_password",
        "redfish_verify_ca",
        "redfish_auth_type",
    }
    assert RedfishPower.properties is PROPERTIES and "Required" in PROPERTIES["redfish_address"]


@pytest.mark.parametrize(
    ("identity", "name", "component"),
    [
        ("BIOS", "BIOS", "bios"),
        ("BMC", "BMC", "bmc"),
        ("Installed-159-1.7.5__BIOS.Setup.1-1", "BIOS", "bios"),
        ("Installed-25227-6.10.30.00__iDRAC.Embedded.1-1", "Integrated Dell Remote Access Controller", "bmc"),
        ("Previous-159-1.6.13__BIOS.Setup.1-1", "BIOS", None),
        ("1", "System ROM", "bios"),
        ("2", "iLO 5", "bmc"),
        ("BMC-Primary", "XCC", "bmc"),
        ("CPLD", "System CPLD", "CPLD"),
    ],
)
def test_firmware_component_names(identity: str, name: str, component: str | None) -> None:
    assert component_name(identity, name) == component


def test_a_server_with_redfish_enabled_loads_sushy_only_when_a_node_needs_it() -> None:
    code = (
        "import sys\n"
        "from ironworks.drivers.registry import DriverFactory\n"
        "DriverFactory(['redfish']).driver_for('redfish', {})\n"
        "print('sushy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["False"]
