"""Virtual media against a real Redfish peer: ``ironworks serve`` + sushy-emulator (fake driver, no VM).

Nodes use the ``redfish`` hardware type with the ``redfish-virtual-media`` boot and ``ramdisk``
deploy interfaces. The user ISO is built by the test with xorriso and served by a loopback HTTP
server; Ironworks downloads it, remasters it, publishes it at ``/boot/vmedia/`` and inserts it. The
emulator fetches the inserted URL itself (InsertMedia downloads the image), so a deploy that reaches
``active`` proves the URL was reachable; the test also fetches it and reads the parameters back
from inside the ISO. Power changes of the fake driver land 1-11 s after each request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import LOOPBACK, IronworksServer, ServerFactory
from tests.integration.redfish_emulator import RedfishEmulator, fake_system, free_loopback_port, start_emulator
from tests.vmedia_fixtures import iso_file, make_iso

HEADERS = {"X-OpenStack-Ironic-API-Version": "1.87"}
#: bounds, not expectations: two power changes of the fake driver take up to ~22 s
SETTLE_BOUND_S = 120.0
PARAMS = "ip=dhcp ironworks.test=injected"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A loopback HTTP server (the ISO's origin): its directory and base URL."""
    root = tmp_path / "origin"
    root.mkdir()
    httpd = ThreadingHTTPServer((LOOPBACK, 0), partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://{LOOPBACK}:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def bmc(tmp_path: Path) -> Iterator[RedfishEmulator]:
    """sushy-emulator with two fake systems, each with its own virtual CD."""
    systems = [fake_system("node-a", ["52:54:00:aa:10:01"]), fake_system("node-b", ["52:54:00:aa:10:02"])]
    emu = start_emulator(tmp_path / "bmc", systems=systems)
    try:
        yield emu
    finally:
        emu.stop()


class Api:
    """The few API calls these tests make, and what the BMC says about its virtual CD."""

    def __init__(self, server: IronworksServer, emu: RedfishEmulator) -> None:
        self.server, self.emu = server, emu
        self.http = httpx.Client(base_url=server.url, headers=HEADERS, timeout=30.0)
        self.bmc = httpx.Client(base_url=emu.url, auth=(emu.username, emu.password), timeout=30.0)

    def close(self) -> None:
        self.http.close()
        self.bmc.close()

    def node(self, index: int, **instance_info: Any) -> str:
        body = {
            "driver": "redfish",
            "driver_info": self.emu.driver_info(index),
            "boot_interface": "redfish-virtual-media",
            "deploy_interface": "ramdisk",
            "instance_info": instance_info,
        }
        r = self.http.post("/v1/nodes", json=body)
        assert r.status_code == 201, r.text
        uuid: str = r.json()["uuid"]
        for target, state in (("manage", "manageable"), ("provide", "available")):
            self.provision(uuid, target)
            self.wait(uuid, {state})
        return uuid

    def provision(self, uuid: str, target: str, **body: Any) -> httpx.Response:
        """Request ``target``; a node locked by the conductor (handling a heartbeat, say) is asked again."""
        deadline = time.monotonic() + SETTLE_BOUND_S
        while True:
            r = self.http.put(f"/v1/nodes/{uuid}/states/provision", json={"target": target, **body})
            if r.status_code != 409 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 202, r.text
        return r

    def get(self, uuid: str) -> dict[str, Any]:
        node: dict[str, Any] = self.http.get(f"/v1/nodes/{uuid}").json()
        return node

    def wait(self, uuid: str, states: set[str]) -> dict[str, Any]:
        """Until the node is in one of ``states`` (a stable one with nothing more in progress)."""
        deadline = time.monotonic() + SETTLE_BOUND_S
        node = self.get(uuid)
        while time.monotonic() < deadline:
            node = self.get(uuid)
            settled = node["target_provision_state"] is None or node["provision_state"].endswith(" wait")
            if node["provision_state"] in states and settled:
                return node
            time.sleep(0.2)
        raise AssertionError(f"node {uuid} never reached {states}: {node}\n{self.server.log_tail()}")

    def cd(self, index: int) -> dict[str, Any]:
        cd: dict[str, Any] = self.bmc.get(f"{self.emu.system_path(index)}/VirtualMedia/Cd").json()
        return cd

    def boot(self, index: int) -> dict[str, Any]:
        boot: dict[str, Any] = self.bmc.get(self.emu.system_path(index)).json()["Boot"]
        return boot

    def published(self) -> list[Path]:
        d = self.server.state_dir / "httpboot" / "vmedia"
        return sorted(p for p in d.iterdir() if not p.name.startswith(".")) if d.is_dir() else []

    def history(self, uuid: str) -> str:
        r = self.http.get(f"/v1/nodes/{uuid}/history")
        return r.text


@pytest.fixture
def connect(bmc: RedfishEmulator) -> Iterator[Callable[[IronworksServer], Api]]:
    made: list[Api] = []

    def make(server: IronworksServer) -> Api:
        made.append(Api(server, bmc))
        return made[-1]

    yield make
    for api in made:
        api.close()


def _env(**extra: str) -> dict[str, str]:
    return {"IRONWORKS_CONDUCTOR_AUTOMATED_CLEAN": "false", **extra}


def test_ramdisk_deploy_of_a_user_iso_to_active_and_back(
    ironworks_server: ServerFactory, connect: Callable[[IronworksServer], Api], origin: tuple[Path, str], tmp_path: Path
) -> None:
    root, url = origin
    make_iso(root / "live.iso")
    api = connect(ironworks_server(env=_env()))
    uuid = api.node(0, boot_iso=f"{url}/live.iso", kernel_append_params=PARAMS)
    api.provision(uuid, "active")
    node = api.wait(uuid, {"active", "deploy failed"})
    assert node["provision_state"] == "active", node["last_error"]
    assert node["power_state"] == "power on"

    cd = api.cd(0)
    [iso] = api.published()
    assert cd["Inserted"] is True and cd["Image"] == f"{api.server.url}/boot/vmedia/{iso.name}"
    assert api.boot(0)["BootSourceOverrideTarget"] == "Cd"
    fetched = tmp_path / "fetched.iso"
    with httpx.stream("GET", cd["Image"], timeout=30.0) as resp:
        assert resp.status_code == 200
        with fetched.open("wb") as out:
            for chunk in resp.iter_bytes():
                out.write(chunk)
    assert f"quiet {PARAMS}" in iso_file(fetched, "/isolinux/isolinux.cfg", tmp_path / "x")
    assert f"quiet {PARAMS}" in iso_file(fetched, "/boot/grub/grub.cfg", tmp_path / "x")
    secret = iso.name.removesuffix(".iso").split("-", 5)[-1]
    assert secret not in api.history(uuid) and secret not in api.http.get(f"/v1/nodes/{uuid}").text

    api.provision(uuid, "deleted")
    node = api.wait(uuid, {"available", "error"})
    assert node["provision_state"] == "available", node["last_error"]
    assert api.cd(0)["Inserted"] is False
    assert api.published() == []
    assert api.http.get(f"/boot/vmedia/{iso.name}").status_code == 404


def test_one_shot_deletes_the_published_iso_once_active(
    ironworks_server: ServerFactory, connect: Callable[[IronworksServer], Api], origin: tuple[Path, str]
) -> None:
    root, url = origin
    make_iso(root / "live.iso")
    api = connect(ironworks_server(env=_env()))
    uuid = api.node(0, boot_iso=f"{url}/live.iso", kernel_append_params=PARAMS, one_shot=True, one_shot_grace=1)
    api.provision(uuid, "active")
    node = api.wait(uuid, {"active", "deploy failed"})
    assert node["provision_state"] == "active", node["last_error"]
    assert api.published() == [], api.history(uuid)
    assert api.boot(0)["BootSourceOverrideTarget"] == "Cd"  # (the emulator reports every override Continuous)
    assert "One-shot" in api.history(uuid)


def test_the_disk_budget_refuses_the_second_node_and_leaves_nothing_for_it(
    ironworks_server: ServerFactory, connect: Callable[[IronworksServer], Api], origin: tuple[Path, str]
) -> None:
    root, url = origin
    size = make_iso(root / "live.iso").stat().st_size
    budget = size * 2 + size // 2  # the cached master and one node's remastered copy
    api = connect(ironworks_server(env=_env(IRONWORKS_IMAGES_DISK_BUDGET_BYTES=str(budget))))
    first = api.node(0, boot_iso=f"{url}/live.iso", kernel_append_params=PARAMS)
    second = api.node(1, boot_iso=f"{url}/live.iso", kernel_append_params=PARAMS)
    api.provision(first, "active")
    assert api.wait(first, {"active", "deploy failed"})["provision_state"] == "active"
    # the conductor checks the ISO against the budget while the request waits: 400, the node stays put
    r = api.http.put(f"/v1/nodes/{second}/states/provision", json={"target": "active"})
    assert r.status_code == 400, r.text
    assert "refused before anything changed" in r.text and "disk_budget_bytes" in r.text and second in r.text
    assert api.get(second)["provision_state"] == "available"
    assert [p.name.startswith(first) for p in api.published()] == [True]
    assert api.cd(1)["Inserted"] is False
    assert api.cd(0)["Inserted"] is True


def test_bad_isos_and_bad_parameters_are_refused(
    ironworks_server: ServerFactory, connect: Callable[[IronworksServer], Api], origin: tuple[Path, str]
) -> None:
    root, url = origin
    (root / "not-an.iso").write_bytes(b"\x00" * 70_000 + b"not an ISO")
    make_iso(root / "live.iso")
    api = connect(ironworks_server(env=_env()))

    # caught by validate in the API: the node does not move
    uuid = api.node(0, boot_iso=f"{url}/missing.iso", kernel_append_params="quiet {oops}")
    r = api.http.put(f"/v1/nodes/{uuid}/states/provision", json={"target": "active"})
    assert r.status_code == 400 and "'{'" in r.text, r.text
    assert api.get(uuid)["provision_state"] == "available"

    # found when a conductor fetches and reads the ISO while the request waits: 400, the node stays put
    r = api.http.patch(f"/v1/nodes/{uuid}", json=[{"op": "remove", "path": "/instance_info/kernel_append_params"}])
    assert r.status_code == 200, r.text
    bad_sum = "sha256:" + "0" * 64
    for source, checksum, message in (
        (f"{url}/not-an.iso", None, "no ISO 9660 volume descriptor"),
        (f"{url}/missing.iso", None, "404"),
        (f"{url}/live.iso", bad_sum, "checksum"),
    ):
        patch = [{"op": "add", "path": "/instance_info/boot_iso", "value": source}]
        if checksum:
            patch.append({"op": "add", "path": "/instance_info/boot_iso_checksum", "value": checksum})
        r = api.http.patch(f"/v1/nodes/{uuid}", json=patch)
        assert r.status_code == 200, r.text
        r = api.http.put(f"/v1/nodes/{uuid}/states/provision", json={"target": "active"})
        assert r.status_code == 400, r.text
        assert "refused before anything changed" in r.text and message in r.text, r.text
        node = api.get(uuid)
        assert node["provision_state"] == "available" and node["target_provision_state"] is None
        assert api.published() == [] and api.cd(0)["Inserted"] is False


# ---- the agent ramdisk over virtual media: cleaning, rescue, servicing ----------------------------

MAC = "52:54:00:aa:10:01"  # node-a's NIC


def _token_in_published_iso(api: Api, tmp_path: Path) -> str:
    """The agent token as the machine would read it: from the kernel line inside the ISO the BMC fetches."""
    cd = api.cd(0)
    assert cd["Inserted"] is True
    fetched = tmp_path / "agent.iso"
    fetched.write_bytes(httpx.get(cd["Image"], timeout=30.0).content)
    line = iso_file(fetched, "/isolinux/isolinux.cfg", tmp_path / "x")
    assert f"ipa-api-url={api.server.url}" in line
    [token] = [w.split("=", 1)[1] for w in line.split() if w.startswith("ipa-agent-token=")]
    return token


def _agent_can_check_in(api: Api, uuid: str, token: str) -> None:
    """What the agent does on its first boot, with no DHCP options from Ironworks: lookup by MAC, heartbeat."""
    r = api.http.get("/v1/lookup", params={"addresses": MAC})
    assert r.status_code == 200, r.text
    assert r.json()["config"]["agent_token"] == "******"  # pre-generated: the agent uses its kernel line's
    beat = {"callback_url": "http://127.0.0.1:9/", "agent_token": "wrong", "agent_version": "test"}
    assert api.http.post(f"/v1/heartbeat/{uuid}", json=beat).status_code == 401
    assert api.http.post(f"/v1/heartbeat/{uuid}", json={**beat, "agent_token": token}).status_code == 202


def _agent_node(api: Api, origin: tuple[Path, str]) -> str:
    root, url = origin
    make_iso(root / "agent.iso")
    body = {
        "driver": "redfish",
        "driver_info": api.emu.driver_info(0, deploy_iso=f"{url}/agent.iso"),
        "boot_interface": "redfish-virtual-media",
        "deploy_interface": "agent",
        "rescue_interface": "agent",
        "instance_info": {"image_source": "http://127.0.0.1:9/image.raw"},
    }
    r = api.http.post("/v1/nodes", json=body)
    assert r.status_code == 201, r.text
    uuid: str = r.json()["uuid"]
    assert api.http.post("/v1/ports", json={"address": MAC, "node_uuid": uuid}).status_code == 201
    api.provision(uuid, "manage")
    api.wait(uuid, {"manageable"})
    return uuid


def _gone(api: Api) -> None:
    """The CD is ejected and the ISO deleted (polled: the abort's clean-up runs after the state moved)."""
    deadline = time.monotonic() + SETTLE_BOUND_S
    while (api.cd(0)["Inserted"] or api.published()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert api.cd(0)["Inserted"] is False
    assert api.published() == []


def test_cleaning_boots_the_agent_iso_and_abort_takes_it_down(
    ironworks_server: ServerFactory, connect: Callable[[IronworksServer], Api], origin: tuple[Path, str], tmp_path: Path
) -> None:
    api = connect(ironworks_server(env=_env()))
    uuid = _agent_node(api, origin)
    api.provision(uuid, "clean", clean_steps=[{"interface": "deploy", "step": "erase_devices_metadata"}])
    api.wait(uuid, {"clean wait"})
    assert api.boot(0)["BootSourceOverrideTarget"] == "Cd"
    token = _token_in_published_iso(api, tmp_path)
    assert token not in api.http.get(f"/v1/nodes/{uuid}").text and token not in api.history(uuid)
    _agent_can_check_in(api, uuid, token)
    api.provision(uuid, "abort")
    api.wait(uuid, {"clean failed"})
    _gone(api)


def test_rescue_and_servicing_boot_the_agent_iso(
    ironworks_server: ServerFactory, connect: Callable[[IronworksServer], Api], origin: tuple[Path, str], tmp_path: Path
) -> None:
    api = connect(ironworks_server(env=_env()))
    uuid = _agent_node(api, origin)
    api.provision(uuid, "adopt")
    api.wait(uuid, {"active"})

    api.provision(uuid, "rescue", rescue_password="pw-1")
    api.wait(uuid, {"rescue wait"})
    _agent_can_check_in(api, uuid, _token_in_published_iso(api, tmp_path))
    api.provision(uuid, "abort")
    api.wait(uuid, {"rescue failed"})
    _gone(api)

    api.provision(uuid, "unrescue")
    api.wait(uuid, {"active"})
    step = {"interface": "deploy", "step": "update_firmware", "args": {"url": "http://127.0.0.1:9/fw.tar"}}
    api.provision(uuid, "service", service_steps=[step])
    api.wait(uuid, {"service wait"})
    _agent_can_check_in(api, uuid, _token_in_published_iso(api, tmp_path))


class _NoVirtualMedia(RedfishEmulator):
    """The emulator configured with no virtual media devices (a BMC without the licence, say)."""

    def write_config(self) -> Path:
        path = super().write_config()
        path.write_text(path.read_text() + "SUSHY_EMULATOR_VMEDIA_DEVICES = {}\n")
        return path


def test_a_bmc_without_virtual_media_is_refused_with_nothing_published(
    ironworks_server: ServerFactory, origin: tuple[Path, str], tmp_path: Path
) -> None:
    root, url = origin
    make_iso(root / "live.iso")
    emu = _NoVirtualMedia(tmp_path / "novm", free_loopback_port(), "admin", "Redfish-Secret-2", [fake_system("x", [])])
    emu.workdir.mkdir(parents=True)
    emu.start()
    api = Api(ironworks_server(env=_env()), emu)
    try:
        uuid = api.node(0, boot_iso=f"{url}/live.iso", kernel_append_params=PARAMS)
        # verifying (manage) read the BMC's virtual media devices and warned in the timeline
        history = api.http.get(f"/v1/nodes/{uuid}/history").json()["history"]
        assert any("offers no virtual cd device" in e["event"] for e in history), history
        # so the deploy request is refused before the node moves, with what to do
        r = api.http.put(f"/v1/nodes/{uuid}/states/provision", json={"target": "active"})
        assert r.status_code == 400 and "offers no virtual cd device" in r.text, r.text
        assert "--boot-interface" in r.text
        assert api.get(uuid)["provision_state"] == "available"
        assert api.published() == []
    finally:
        api.close()
        emu.stop()
