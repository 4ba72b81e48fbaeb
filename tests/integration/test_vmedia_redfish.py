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
from tests.integration.redfish_emulator import RedfishEmulator, fake_system, start_emulator
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

    def provision(self, uuid: str, target: str) -> httpx.Response:
        r = self.http.put(f"/v1/nodes/{uuid}/states/provision", json={"target": target})
        assert r.status_code == 202, r.text
        return r

    def get(self, uuid: str) -> dict[str, Any]:
        node: dict[str, Any] = self.http.get(f"/v1/nodes/{uuid}").json()
        return node

    def wait(self, uuid: str, states: set[str]) -> dict[str, Any]:
        deadline = time.monotonic() + SETTLE_BOUND_S
        node = self.get(uuid)
        while time.monotonic() < deadline:
            node = self.get(uuid)
            if node["provision_state"] in states and node["target_provision_state"] is None:
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
    api.provision(second, "active")
    node = api.wait(second, {"active", "deploy failed"})
    assert node["provision_state"] == "deploy failed"
    assert "disk_budget_bytes" in node["last_error"] and second in node["last_error"]
    assert [p.name.startswith(first) for p in api.published()] == [True]
    assert api.cd(1)["Inserted"] is False
    assert api.cd(0)["Inserted"] is True


def test_bad_isos_and_bad_parameters_are_refused(
    ironworks_server: ServerFactory, connect: Callable[[IronworksServer], Api], origin: tuple[Path, str]
) -> None:
    root, url = origin
    (root / "not-an.iso").write_bytes(b"\x00" * 70_000 + b"not an ISO")
    api = connect(ironworks_server(env=_env()))

    # caught by validate in the API: the node does not move
    uuid = api.node(0, boot_iso=f"{url}/missing.iso", kernel_append_params="quiet {oops}")
    r = api.http.put(f"/v1/nodes/{uuid}/states/provision", json={"target": "active"})
    assert r.status_code == 400 and "'{'" in r.text, r.text
    assert api.get(uuid)["provision_state"] == "available"

    # found when the ISO is fetched and read (before the BMC is touched): deploy failed, nothing left
    r = api.http.patch(f"/v1/nodes/{uuid}", json=[{"op": "remove", "path": "/instance_info/kernel_append_params"}])
    assert r.status_code == 200, r.text
    for source, message in ((f"{url}/not-an.iso", "ISO"), (f"{url}/missing.iso", "404")):
        r = api.http.patch(
            f"/v1/nodes/{uuid}", json=[{"op": "add", "path": "/instance_info/boot_iso", "value": source}]
        )
        assert r.status_code == 200, r.text
        api.provision(uuid, "active")
        node = api.wait(uuid, {"deploy failed", "active"})
        assert node["provision_state"] == "deploy failed"
        assert message in node["last_error"], node["last_error"]
        assert api.published() == [] and api.cd(0)["Inserted"] is False
        api.provision(uuid, "deleted")
        api.wait(uuid, {"available"})
