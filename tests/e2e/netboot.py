"""What the network-boot deploy tests and the deploy benchmark share: the agent ramdisk, Ironworks, nodes.

* ``agent_ramdisk()`` -- the kernel and initramfs of ``ironworks ramdisk build`` for this tree, built
  once into the builder's own input-hash cache (``/var/cache/ironworks-tests/ramdisk/builds/<key>``,
  the key and layout of ``tests/integration/test_ramdisk_build.py``, so one build serves both);
  ``IRONWORKS_E2E_RAMDISK=DIR`` uses a build you already have instead.
* ``start_netboot_ironworks(lab)`` -- ``ironworks serve`` on the lab bridge, running dnsmasq there.
* ``Deployer`` -- the API calls of a deploy as a user makes them, with bounded waits whose failures
  carry the node's state, last_error, timeline and the log tails that explain it.

Nothing here asserts a wall-clock time; every wait is a bound.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.images import CONFIGDRIVE_LINE, INSTANCE_LINE, InstanceImage  # noqa: F401  (re-exported to the test modules)
from tests.lab.lab import Lab
from tests.lab.libvirt import Vm
from tests.lab.service import IronworksInLab

#: bounds, not expectations (a TCG boot of the ramdisk to its first heartbeat takes ~1 min)
FLOW_BOUND_S = 900.0
BOOT_BOUND_S = 600.0
#: the conductor settings of the tests: poll the agent's running command every 0.5 s (default 2 s)
SERVER_ENV = {
    "IRONWORKS_CONDUCTOR_AGENT_POLL_INTERVAL": "0.5",
    # deploy kernels/ramdisks are local files of the ramdisk build cache (or IRONWORKS_E2E_RAMDISK)
    "IRONWORKS_IMAGES_ALLOWED_FILE_DIRS": ",".join(
        d
        for d in (
            os.environ.get("IRONWORKS_TEST_RAMDISK_CACHE", "/var/cache/ironworks-tests/ramdisk"),
            os.environ.get("IRONWORKS_E2E_RAMDISK", ""),
        )
        if d
    ),
}


class RamdiskUnavailable(RuntimeError):
    """``ironworks ramdisk build`` failed; the message has its output."""


@dataclass(frozen=True)
class AgentRamdisk:
    """A build of ``ironworks ramdisk build``: its directory, kernel, initramfs and manifest."""

    directory: Path
    reused: bool

    @property
    def kernel(self) -> Path:
        """``ironworks-agent.kernel``."""
        return self.directory / "ironworks-agent.kernel"

    @property
    def initramfs(self) -> Path:
        """``ironworks-agent.initramfs`` (zstd cpio)."""
        return self.directory / "ironworks-agent.initramfs"

    @property
    def manifest(self) -> dict[str, Any]:
        """``manifest.json``."""
        doc: dict[str, Any] = json.loads((self.directory / "manifest.json").read_text())
        return doc


def agent_ramdisk() -> AgentRamdisk:
    """This tree's agent ramdisk, from the build cache or built now (a few minutes at zstd -19)."""
    given = os.environ.get("IRONWORKS_E2E_RAMDISK")
    if given:
        found = AgentRamdisk(Path(given), reused=True)
        for path in (found.kernel, found.initramfs):
            if not path.is_file():
                raise RamdiskUnavailable(f"IRONWORKS_E2E_RAMDISK={given}: {path.name} is missing there")
        return found
    # the integration tier's key, arguments and cache layout: one build serves both tiers
    from tests.integration import test_ramdisk_build as rb

    args = ["--iso", *(f"--kernel-param={p}" for p in rb.ISO_PARAMS)]
    out = rb.CACHE / "builds" / rb._inputs_key(args)
    if (out / "manifest.json").is_file():
        return AgentRamdisk(out, reused=True)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.monotonic()
    proc = rb._build(tmp, *args)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RamdiskUnavailable(f"`ironworks ramdisk build` exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    (tmp / "build-output.txt").write_text(f"{proc.stdout}\nwall time {time.monotonic() - started:.1f} s\n")
    rb.prune_builds(rb.CACHE / "builds", keep=tmp)  # the builder's tests keep only the newest build too
    tmp.rename(out)
    return AgentRamdisk(out, reused=False)


def start_netboot_ironworks(lab: Lab, env: Mapping[str, str] | None = None) -> IronworksInLab:
    """``ironworks serve`` on the bridge address with its managed dnsmasq on the bridge."""
    return lab.start_ironworks({**lab.network.dhcp_env(), **SERVER_ENV, **(env or {})}, on_bridge=True)


def publish_image(lab: Lab, image: InstanceImage, image_format: str = "raw") -> str:
    """Put the test image into the lab's web root (a hard link when it can); its URL as a VM fetches it."""
    source = image.raw if image_format == "raw" else image.qcow2
    target = lab.www / f"{image.image_id}.{image_format}"
    if not target.exists():
        try:
            os.link(source, target)
        except OSError:  # another file system: a sparse copy
            subprocess.run(["cp", "--sparse=always", str(source), str(target)], check=True)
    return f"{lab.http_url}/{target.name}"


def image_instance_info(lab: Lab, image: InstanceImage, image_format: str = "raw") -> dict[str, str]:
    """``instance_info`` for the test image over the lab's HTTP server, with its sha256."""
    return {
        "image_source": publish_image(lab, image, image_format),
        "image_os_hash_algo": "sha256",
        "image_os_hash_value": image.raw_sha256 if image_format == "raw" else image.qcow2_sha256,
        "image_disk_format": image_format,
    }


def disk_head_table(lab: Lab, vm: Vm, workdir: Path) -> str:
    """``sfdisk -d`` of the first MiB of the shut-off VM's disk ("" when there is no partition table)."""
    assert lab.domain_state(vm) == "shut off", f"{vm.name} must be off to read its disk"
    head = workdir / f"{vm.name}-head.raw"
    head.unlink(missing_ok=True)
    volume = lab.libvirt.volume_path(vm)
    subprocess.run(
        ["qemu-img", "dd", "-f", "qcow2", "-O", "raw", "bs=1M", "count=1", f"if={volume}", f"of={head}"],
        check=True,
        capture_output=True,
    )
    proc = subprocess.run(["sfdisk", "-d", str(head)], capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else ""


def _merged(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    out = {**base, **changes}
    return {k: v for k, v in out.items() if v is not None}


def node_traces(server: IronworksInLab, uuid: str, mac: str) -> list[str]:
    """Every boot file, link or DHCP option file of the server that still names the node or its MAC."""
    state, dashes = server.state_dir, mac.replace(":", "-")
    found = []
    for root in (state / "tftpboot", state / "httpboot", state / "dhcp" / "optsdir.d"):
        if root.exists():
            found += [str(p) for p in root.rglob("*") if uuid in p.name or dashes in p.name or mac in p.name]
    return found


def dhcp_host_entry(server: IronworksInLab, mac: str) -> str:
    """The dnsmasq host file the provider wrote for ``mac`` ("" when there is none)."""
    path = server.state_dir / "dhcp" / "hostsdir.d" / f"ironworks-{mac.replace(':', '-')}.conf"
    return path.read_text() if path.exists() else ""


class Deployer:
    """A user's API calls against one Ironworks in the lab, with bounded, explained waits."""

    def __init__(self, lab: Lab, server: IronworksInLab) -> None:
        self.lab = lab
        self.server = server
        self.api = server.api

    def create_node(
        self,
        vm: Vm,
        *,
        mac: str | None = None,
        port: bool = True,
        driver_info: Mapping[str, Any] | None = None,
        driver: str,
        ramdisk: AgentRamdisk,
        boot_interface: str = "ipxe",
        instance_info: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> str:
        """Enroll a node for ``vm`` (``driver`` redfish|ipmi|fake-hardware), a port for its MAC; ``manage`` it.

        ``mac`` replaces the VM's MAC on the port, ``port=False`` makes none, ``driver_info`` is merged
        over the BMC's and the ramdisk's keys (a ``None`` value removes a key).
        """
        bmc: dict[str, Any] = {}
        if driver == "redfish":
            bmc = dict(self.lab.redfish_driver_info(vm))
        elif driver == "ipmi":
            bmc = dict(self.lab.ipmi_driver_info(vm))
        body = {
            "name": name or f"{vm.name}-{driver}-{boot_interface}",
            "driver": driver,
            "boot_interface": boot_interface,
            "deploy_interface": "agent",
            "driver_info": _merged(
                {**bmc, "deploy_kernel": str(ramdisk.kernel), "deploy_ramdisk": str(ramdisk.initramfs)},
                driver_info or {},
            ),
            "properties": {"capabilities": f"boot_mode:{vm.firmware}"},
            "instance_info": dict(instance_info or {}),
        }
        r = self.api.post("/v1/nodes", json=body)
        assert r.status_code == 201, r.text
        uuid = str(r.json()["uuid"])
        if port:
            r = self.api.post("/v1/ports", json={"address": mac or vm.mac, "node_uuid": uuid})
            assert r.status_code == 201, r.text
        self.provision(uuid, "manage")
        self.wait(uuid, {"manageable"}, bound=120.0)
        return uuid

    def node(self, uuid: str) -> dict[str, Any]:
        """``GET /v1/nodes/{uuid}``."""
        r = self.api.get(f"/v1/nodes/{uuid}")
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        return doc

    def history(self, uuid: str) -> list[dict[str, Any]]:
        """The node's timeline, oldest first, with details."""
        r = self.api.get(f"/v1/nodes/{uuid}/history", params={"detail": "true"})
        assert r.status_code == 200, r.text
        events: list[dict[str, Any]] = r.json()["history"]
        return events

    def provision(self, uuid: str, target: str, **body: Any) -> None:
        """``PUT /v1/nodes/{uuid}/states/provision``; must be accepted (202), retried while the node is locked."""
        deadline = time.monotonic() + 60.0
        while True:
            r = self.api.put(f"/v1/nodes/{uuid}/states/provision", json={"target": target, **body})
            # 409 "locked by ...": a power sync or the end of a flow holds the node for a moment
            if r.status_code != 409 or "is locked" not in r.text or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert r.status_code == 202, f"provision {target}: {r.status_code} {r.text}"

    def set_instance_info(self, uuid: str, values: Mapping[str, Any]) -> None:
        """``PATCH`` ``instance_info`` keys (undeploy clears them, as Ironic does)."""
        patch = [{"op": "add", "path": f"/instance_info/{k}", "value": v} for k, v in values.items()]
        r = self.api.patch(f"/v1/nodes/{uuid}", json=patch)
        assert r.status_code == 200, r.text

    def delete_node(self, uuid: str) -> None:
        """Delete the node (in maintenance when it must be, so a failed test still cleans up)."""
        node = self.node(uuid)
        if node["provision_state"] not in ("available", "manageable", "enroll"):
            self.api.put(f"/v1/nodes/{uuid}/maintenance", json={"reason": "e2e test clean-up"})
        self.api.delete(f"/v1/nodes/{uuid}")

    def explain(self, uuid: str, vm: Vm | None = None) -> str:
        """The node's state, last_error, its last timeline entries, the server's and dnsmasq's log tails."""
        try:
            n = self.node(uuid)
            state = (
                f"state {n['provision_state']!r} (target {n['target_provision_state']!r}), power {n['power_state']!r}, "
                f"last_error {n['last_error']!r}"
            )
            events = "\n".join(f"  {e['created_at']} {e['event_type']}: {e['event']}" for e in self.history(uuid)[-25:])
        except Exception as exc:  # the explanation must not hide the failure it explains
            state, events = f"<node unreadable: {exc}>", ""
        dnsmasq = self.server.state_dir / "logs" / "dnsmasq.log"
        tail = "\n".join(dnsmasq.read_text(errors="replace").splitlines()[-15:]) if dnsmasq.exists() else "(no log)"
        console = ""
        if vm is not None:
            console = f"\n--- {vm.name} serial (last 3000 chars) ---\n{vm.serial.text(0)[-3000:]}"
        return (
            f"{state}\n--- timeline (last entries) ---\n{events}\n--- server ---\n{self.server.log_tail(40)}"
            f"\n--- dnsmasq ---\n{tail}{console}"
        )

    def wait(
        self, uuid: str, until: set[str], *, bound: float = FLOW_BOUND_S, vm: Vm | None = None, settled: bool = True
    ) -> dict[str, Any]:
        """Poll until the provision state is in ``until`` (``settled``: with no target, as a wait state
        has one); AssertionError with the explanation after ``bound``."""
        deadline = time.monotonic() + bound
        while True:
            n = self.node(uuid)
            if n["provision_state"] in until and (n["target_provision_state"] is None or not settled):
                return n
            if time.monotonic() > deadline:
                why = self.explain(uuid, vm)
                raise AssertionError(f"node {uuid} did not reach {sorted(until)} in {bound:g} s: {why}")
            time.sleep(0.5)

    def available(self, uuid: str, vm: Vm) -> None:
        """``provide``: automated cleaning boots the ramdisk on ``vm`` (metadata erase), then ``available``."""
        self.provision(uuid, "provide")
        n = self.wait(uuid, {"available", "clean failed"}, vm=vm)
        assert n["provision_state"] == "available", self.explain(uuid, vm)
