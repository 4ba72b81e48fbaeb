"""The pxe, ipxe and petitboot boot interfaces inside a real ``ironworks serve``.

A node with a port and ``deploy_kernel``/``deploy_ramdisk`` (files this test creates, given as
``file://`` URLs, plain paths, or ``http://`` URLs of a loopback server) is deployed with the agent
deploy interface and fake power: the conductor prepares the network boot and waits for the agent's
heartbeat. The test then checks what a machine would fetch: the files on disk, the per-MAC links,
the dnsmasq host and option files (the real dnsmasq provider, no dnsmasq process), and the boot
files served at ``/boot/`` (with Range, and without credentials even when the API wants them).
Abort and undeploy must leave nothing behind, and the node's MACs must be ``ignore``d.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from ironworks.api.auth import make_htpasswd_line
from tests.integration.conftest import LOOPBACK, IronworksServer, ServerFactory

HEADERS = {"X-OpenStack-Ironic-API-Version": "1.87"}
MAC = "52:54:00:5e:00:42"
DASHES = MAC.replace(":", "-")
#: a bound for a flow that finishes in well under a second here; not an expectation
SETTLE_BOUND_S = 60.0
NO_CLEAN = {"IRONWORKS_CONDUCTOR_AUTOMATED_CLEAN": "false"}


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    """A small kernel and initramfs (their bytes differ, so a mix-up would show)."""
    d = tmp_path / "ramdisk"
    d.mkdir()
    kernel, initramfs = d / "ironworks-agent.kernel", d / "ironworks-agent.initramfs"
    kernel.write_bytes(bytes(range(256)) * 64)
    initramfs.write_bytes(b"\x28\xb5\x2f\xfd" + os.urandom(40000))
    return {"kernel": kernel, "ramdisk": initramfs}


@pytest.fixture
def file_server(images: dict[str, Path]) -> Iterator[str]:
    """An HTTP server on loopback serving the images' directory; its base URL."""
    handler = partial(_QuietHandler, directory=str(images["kernel"].parent))
    httpd = ThreadingHTTPServer((LOOPBACK, 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class Api:
    """A client of one server, with the few calls these tests make."""

    def __init__(self, server: IronworksServer, **kwargs: Any) -> None:
        self.server = server
        self.http = httpx.Client(base_url=server.url, headers=HEADERS, timeout=30.0, **kwargs)
        self.closing: list[httpx.Client] = [self.http]

    def close(self) -> None:
        for client in self.closing:
            client.close()

    def node_with_port(self, **body: Any) -> dict[str, Any]:
        r = self.http.post("/v1/nodes", json=body)
        assert r.status_code == 201, r.text
        node: dict[str, Any] = r.json()
        r = self.http.post("/v1/ports", json={"address": MAC, "node_uuid": node["uuid"]})
        assert r.status_code == 201, r.text
        return node

    def provision(self, uuid: str, target: str, **body: Any) -> None:
        r = self.http.put(f"/v1/nodes/{uuid}/states/provision", json={"target": target, **body})
        assert r.status_code == 202, r.text

    def wait(self, uuid: str, states: set[str]) -> dict[str, Any]:
        deadline = time.monotonic() + SETTLE_BOUND_S
        while time.monotonic() < deadline:
            node: dict[str, Any] = self.http.get(f"/v1/nodes/{uuid}").json()
            if node["provision_state"] in states:
                return node
            time.sleep(0.1)
        raise AssertionError(f"node {uuid} never reached {states}: {node}\n{self.server.log_tail()}")

    def available(self, uuid: str) -> None:
        self.provision(uuid, "manage")
        self.wait(uuid, {"manageable"})
        self.provision(uuid, "provide")
        self.wait(uuid, {"available"})


@pytest.fixture
def connect() -> Iterator[Callable[[IronworksServer], Api]]:
    """Makes ``Api`` clients of servers; closes them all at the end."""
    made: list[Api] = []

    def make(server: IronworksServer) -> Api:
        made.append(Api(server))
        return made[-1]

    yield make
    for api in made:
        api.close()


def dhcp_files(state: Path) -> tuple[Path, Path]:
    """The dnsmasq host file of MAC and the option file of a node (what the dnsmasq provider writes)."""
    return state / "dhcp" / "hostsdir.d" / f"ironworks-{DASHES}.conf", state / "dhcp" / "optsdir.d"


def node_traces(state: Path, uuid: str) -> list[str]:
    """Every boot file, link or DHCP option file that still names the node or its MAC."""
    found = []
    for root in (state / "tftpboot", state / "httpboot", state / "dhcp" / "optsdir.d"):
        if root.exists():
            found += [str(p) for p in root.rglob("*") if uuid in p.name or DASHES in p.name or MAC in p.name]
    return found


def master_of(state: Path, source: str) -> Path:
    return state / "images" / "master" / hashlib.sha256(source.encode()).hexdigest()


def test_redfish_and_ipmi_nodes_default_to_ipxe(
    connect: Callable[[IronworksServer], Api], ironworks_server: ServerFactory
) -> None:
    api = connect(ironworks_server())
    for driver, info in (("ipmi", {"ipmi_address": "127.0.0.1"}), ("redfish", {"redfish_address": "127.0.0.1"})):
        r = api.http.post("/v1/nodes", json={"driver": driver, "driver_info": info})
        assert r.status_code == 201, r.text
        assert r.json()["boot_interface"] == "ipxe"
    r = api.http.post("/v1/nodes", json={"driver": "fake-hardware", "boot_interface": "petitboot"})
    assert r.status_code == 201 and r.json()["boot_interface"] == "petitboot", r.text


@pytest.mark.parametrize("source", ["file", "path", "http"])
def test_ipxe_deploy_prepares_serves_and_undeploy_removes(
    connect: Callable[[IronworksServer], Api],
    ironworks_server: ServerFactory,
    images: dict[str, Path],
    file_server: str,
    source: str,
) -> None:
    server = ironworks_server(env=NO_CLEAN)
    api, state = connect(server), server.state_dir
    kernel = {"file": f"file://{images['kernel']}", "path": str(images["kernel"]), "http": f"{file_server}/"}[source]
    if source == "http":
        kernel += images["kernel"].name
    ramdisk = f"file://{images['ramdisk']}"
    node = api.node_with_port(
        driver="fake-hardware",
        boot_interface="ipxe",
        deploy_interface="agent",
        driver_info={"deploy_kernel": kernel, "deploy_ramdisk": ramdisk, "kernel_append_params": "ipa-debug=1"},
        instance_info={"image_source": "http://example.invalid/img.raw"},
    )
    uuid = node["uuid"]
    api.available(uuid)
    api.provision(uuid, "active")
    waiting = api.wait(uuid, {"wait call-back", "deploy failed"})
    assert waiting["provision_state"] == "wait call-back", waiting["last_error"]
    # the next boot goes to the network, once (the BMC here is the fake management interface)
    assert waiting["driver_internal_info"]["fake_boot_device"] == {"boot_device": "pxe", "persistent": False}

    http_root = state / "httpboot"
    script = (http_root / uuid / "boot.ipxe").read_text()
    assert f"{server.url}/boot/{uuid}/deploy_kernel initrd=deploy_ramdisk ipa-api-url={server.url} " in script
    assert "console=ttyS0,115200n8 ipa-debug=1 BOOTIF=01-${netX/mac:hexhyp}" in script
    assert (http_root / "pxelinux.cfg" / DASHES).resolve() == (http_root / uuid / "boot.ipxe").resolve()
    # hard links of the cache's master copies, not per-node copies
    for name, src in (("deploy_kernel", kernel), ("deploy_ramdisk", ramdisk)):
        assert (http_root / uuid / name).stat().st_ino == master_of(state, src).stat().st_ino
    host, optsdir = dhcp_files(state)
    assert host.read_text().startswith(f"{MAC},set:node-{uuid}")
    opts = (optsdir / f"ironworks-node-{uuid}.conf").read_text()
    assert "tag:!ipxe,tag:!efi64,option:bootfile-name,undionly.kpxe" in opts
    assert "tag:!ipxe,tag:efi64,option:bootfile-name,snponly.efi" in opts
    assert f"tag:ipxe,option:bootfile-name,{server.url}/boot/{uuid}/boot.ipxe" in opts

    # what iPXE fetches, over the API's /boot/ (no credentials)
    boot = httpx.Client(base_url=server.url, timeout=30.0)
    api.closing.append(boot)
    r = boot.get(f"/boot/{uuid}/boot.ipxe")
    assert r.status_code == 200 and r.text == script
    assert boot.get(f"/boot/pxelinux.cfg/{DASHES}").text == script
    r = boot.get(f"/boot/{uuid}/deploy_kernel", headers={"Range": "bytes=256-511"})
    assert r.status_code == 206 and r.content == images["kernel"].read_bytes()[256:512]
    assert boot.get(f"/boot/{uuid}/deploy_ramdisk").content == images["ramdisk"].read_bytes()
    assert boot.get("/boot/undionly.kpxe").content == Path("/usr/lib/ipxe/undionly.kpxe").read_bytes()

    # undeploy while it waits for the agent (the deploy step itself cannot be aborted)
    api.provision(uuid, "deleted")
    api.wait(uuid, {"available"})
    assert node_traces(state, uuid) == []
    assert host.read_text() == f"{MAC},ignore\n"
    assert boot.get(f"/boot/{uuid}/boot.ipxe").status_code == 404


def test_pxe_uefi_deploy_then_local_boot_then_undeploy_removes_everything(
    connect: Callable[[IronworksServer], Api], ironworks_server: ServerFactory, images: dict[str, Path]
) -> None:
    server = ironworks_server(env=NO_CLEAN)
    api, state = connect(server), server.state_dir
    node = api.node_with_port(
        driver="fake-hardware",
        boot_interface="pxe",
        deploy_interface="agent",
        properties={"capabilities": "boot_mode:uefi"},
        driver_info={"deploy_kernel": str(images["kernel"]), "deploy_ramdisk": str(images["ramdisk"])},
        instance_info={"image_source": "http://example.invalid/img.raw"},
    )
    uuid = node["uuid"]
    api.available(uuid)
    api.provision(uuid, "active")
    assert api.wait(uuid, {"wait call-back", "deploy failed"})["provision_state"] == "wait call-back"
    tftp = state / "tftpboot"
    grub = (tftp / "grub" / f"{MAC}.conf").read_text()
    assert f"linux /{uuid}/deploy_kernel 'ipa-api-url={server.url}'" in grub and f"'BOOTIF=01-{DASHES}'" in grub
    assert (tftp / "grub" / f"grub.cfg-01-{DASHES}").read_text() == grub
    assert "$prefix/${net_default_mac}.conf" in (tftp / "grub" / "grub.cfg").read_text()
    assert (tftp / "grubnetx64.efi").is_file()
    assert "option:bootfile-name,grubnetx64.efi" in (dhcp_files(state)[1] / f"ironworks-node-{uuid}.conf").read_text()
    # undeploy, then deploy with the fake deploy interface: it ends with the local-boot config
    api.provision(uuid, "deleted")
    api.wait(uuid, {"available"})
    assert node_traces(state, uuid) == []
    r = api.http.patch(f"/v1/nodes/{uuid}", json=[{"op": "replace", "path": "/deploy_interface", "value": "fake"}])
    assert r.status_code == 200, r.text
    api.provision(uuid, "active")
    assert api.wait(uuid, {"active", "deploy failed"})["provision_state"] == "active"
    local = (tftp / "grub" / f"{MAC}.conf").read_text()
    assert "set default=local" in local and "chainloader /EFI/BOOT/BOOTX64.EFI" in local
    assert not (tftp / uuid / "deploy_kernel").exists()
    api.provision(uuid, "deleted")
    api.wait(uuid, {"available"})
    assert node_traces(state, uuid) == []
    assert dhcp_files(state)[0].read_text() == f"{MAC},ignore\n"


@pytest.mark.parametrize("protocol", ["tftp", "http"])
def test_petitboot_clean_boots_the_ramdisk_with_options_209_210(
    connect: Callable[[IronworksServer], Api], ironworks_server: ServerFactory, images: dict[str, Path], protocol: str
) -> None:
    server = ironworks_server(env={"IRONWORKS_PETITBOOT_PROTOCOL": protocol})
    api, state = connect(server), server.state_dir
    node = api.node_with_port(
        driver="fake-hardware",
        boot_interface="petitboot",
        deploy_interface="agent",
        driver_info={"deploy_kernel": str(images["kernel"]), "deploy_ramdisk": str(images["ramdisk"])},
    )
    uuid = node["uuid"]
    api.provision(uuid, "manage")
    api.wait(uuid, {"manageable"})
    api.provision(uuid, "provide")  # automated cleaning boots the ramdisk for the metadata erase
    waiting = api.wait(uuid, {"clean wait", "clean failed"})
    assert waiting["provision_state"] == "clean wait", waiting["last_error"]
    root, prefix = (
        (state / "tftpboot", f"tftp://{LOOPBACK}/")
        if protocol == "tftp"
        else (state / "httpboot", f"{server.url}/boot/")
    )
    config = (root / uuid / "config").read_text()
    assert f"kernel {prefix}{uuid}/deploy_kernel\n" in config and f"initrd {prefix}{uuid}/deploy_ramdisk\n" in config
    opts = (dhcp_files(state)[1] / f"ironworks-node-{uuid}.conf").read_text()
    assert f",209,{uuid}/config\n" in opts and f",210,{prefix}\n" in opts and "bootfile-name" not in opts
    if protocol == "http":
        assert httpx.get(f"{server.url}/boot/{uuid}/config", timeout=30.0).text == config
    api.provision(uuid, "abort")
    api.wait(uuid, {"clean failed"})
    deadline = time.monotonic() + SETTLE_BOUND_S
    while node_traces(state, uuid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert node_traces(state, uuid) == []


def test_unreachable_image_fails_the_deploy_and_leaves_nothing(
    connect: Callable[[IronworksServer], Api], ironworks_server: ServerFactory, images: dict[str, Path]
) -> None:
    server = ironworks_server(env=NO_CLEAN)
    api, state = connect(server), server.state_dir
    with contextlib.closing(__import__("socket").socket()) as s:
        s.bind((LOOPBACK, 0))
        closed = s.getsockname()[1]  # nothing listens there once the socket is closed
    node = api.node_with_port(
        driver="fake-hardware",
        boot_interface="ipxe",
        deploy_interface="agent",
        driver_info={"deploy_kernel": f"http://{LOOPBACK}:{closed}/k", "deploy_ramdisk": str(images["ramdisk"])},
        instance_info={"image_source": "http://example.invalid/img.raw"},
    )
    uuid = node["uuid"]
    api.available(uuid)
    api.provision(uuid, "active")
    failed = api.wait(uuid, {"deploy failed", "wait call-back"})
    assert failed["provision_state"] == "deploy failed"
    assert f"http://{LOOPBACK}:{closed}/k" in failed["last_error"] and "reachable" in failed["last_error"]
    assert node_traces(state, uuid) == []
    assert dhcp_files(state)[0].read_text() == f"{MAC},ignore\n"


def test_boot_files_need_no_credentials_and_stay_inside_http_root(
    connect: Callable[[IronworksServer], Api], ironworks_server: ServerFactory, tmp_path: Path
) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(make_htpasswd_line("alice", "wonderland") + "\n")
    http_root = tmp_path / "http"
    (http_root / "sub").mkdir(parents=True)
    (http_root / "sub" / "file.txt").write_text("inside")
    (http_root / ".hidden").write_text("dotfile")
    (tmp_path / "secret.txt").write_text("outside")
    (http_root / "escape").symlink_to(tmp_path / "secret.txt")
    (http_root / "inner").symlink_to("sub/file.txt")
    server = ironworks_server(
        env={
            "IRONWORKS_API_AUTH_STRATEGY": "http_basic",
            "IRONWORKS_API_HTPASSWD": str(htpasswd),
            "IRONWORKS_NETBOOT_HTTP_ROOT": str(http_root),
        }
    )
    c = httpx.Client(base_url=server.url, timeout=30.0)
    connect(server).closing.append(c)
    assert c.get("/v1/nodes", headers=HEADERS).status_code == 401  # the API still wants credentials
    assert c.get("/boot/sub/file.txt").text == "inside"
    assert c.get("/boot/inner").text == "inside"  # a link that stays inside is fine
    r = c.get("/boot/sub/file.txt", headers={"Range": "bytes=2-3"})
    assert (r.status_code, r.content) == (206, b"si")
    assert c.head("/boot/sub/file.txt").status_code == 200
    refused = ("escape", "sub/", "sub", "", ".hidden", "%2e%2e/secret.txt", "sub/%2e%2e/%2e%2e/secret.txt")
    for path in (f"/boot/{p}" for p in refused):
        r = c.get(path)
        assert r.status_code == 404, (path, r.status_code, r.text)
        assert "outside" not in r.text
    assert c.put("/boot/sub/file.txt", content=b"x").status_code == 405
