"""The issue's acceptance tests: the REAL agent process against a REAL ``ironworks serve``.

The server runs fake-hardware (fake power; fake boot is a no-op) with the ``agent`` deploy and rescue
interfaces. The test plays "the machine booting the ramdisk": when the node enters a state that
waits for the agent (clean wait, wait call-back, rescue wait, service wait) it starts
``python -m ironworks.agent`` on 127.0.0.1 with a fake ``--root`` sys tree whose only NIC carries the
node's port MAC and an allowlist naming only this test's loop device; when the flow is over (the
conductor has powered the "machine" off) the test stops that agent by its PID.

Images and firmware tarballs are served by a local HTTP server on 127.0.0.1 from a temp dir. Every
wait is bounded; a failure message carries the node's last_error and the tails of the agent's and
the server's logs. Nothing here asserts a wall-clock time.

Cleaning: automated cleaning stays on, so ``provide`` runs ``erase_devices_metadata`` through the
agent (the test boots one for it like for any other wait state).

Stores: the flows that matter most (deploy raw with a JSON config drive and qcow2 with an image
config drive, firmware clean, rescue, the agent killed mid-deploy) also run with ``ironworks serve``
on a private PostgreSQL database (``store`` parameter, marked ``postgres``); the rest on SQLite.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import LOOPBACK, IronworksServer, ServerFactory, free_loopback_port

MIB = 1 << 20
MAC = "52:54:00:e2:e0:01"
BOUND_S = 120.0  # bounds, never expectations
API_VERSION = "1.87"
#: seconds the conductor waits for an agent that stopped answering (test 7); heartbeats come every
#: 3-6 s (30-60 % of the heartbeat timeout below) and right after every command
SILENCE_S = 5
SERVER_ENV = {
    "IRONWORKS_CONDUCTOR_AGENT_POLL_INTERVAL": "0.2",
    "IRONWORKS_CONDUCTOR_POWER_SYNC_INTERVAL": "3600",
    "IRONWORKS_CONDUCTOR_AGENT_HEARTBEAT_TIMEOUT": "10",
    "IRONWORKS_CONDUCTOR_AGENT_SILENCE_TIMEOUT": str(SILENCE_S),
}
AGENT_WAIT_STATES = frozenset({"clean wait", "wait call-back", "rescue wait", "service wait"})


# ---- images over loopback HTTP ---------------------------------------------------------------------


@dataclass
class Files:
    """A loopback HTTP server for the files of ``root``; ``/slow/NAME`` trickles NAME out."""

    root: Path
    url: str = ""
    stop: threading.Event = field(default_factory=threading.Event)
    slow_bytes_sent: int = 0
    slow_progress: threading.Condition = field(default_factory=threading.Condition)

    def put(self, name: str, data: bytes) -> str:
        (self.root / name).write_bytes(data)
        return f"{self.url}/{name}"

    def wait_slow_bytes(self, count: int) -> None:
        with self.slow_progress:
            ok = self.slow_progress.wait_for(lambda: self.slow_bytes_sent >= count, BOUND_S)
        assert ok, f"the agent did not download {count} bytes of the slow image within {BOUND_S:g} s"


def _handler(files: Files) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            slow = self.path.startswith("/slow/")
            path = files.root / self.path.removeprefix("/slow/").lstrip("/")
            if not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not slow:
                self.wfile.write(data)
                return
            with contextlib.suppress(OSError):  # the agent may be killed mid-download
                for offset in range(0, len(data), MIB):
                    if files.stop.wait(0.2):
                        return
                    self.wfile.write(data[offset : offset + MIB])
                    self.wfile.flush()
                    with files.slow_progress:
                        files.slow_bytes_sent += MIB
                        files.slow_progress.notify_all()

    return Handler


@pytest.fixture
def files(tmp_path: Path) -> Iterator[Files]:
    root = tmp_path / "www"
    root.mkdir()
    served = Files(root)
    httpd = ThreadingHTTPServer((LOOPBACK, 0), _handler(served))
    httpd.daemon_threads = True
    served.url = f"http://{LOOPBACK}:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        served.stop.set()
        httpd.shutdown()
        httpd.server_close()


# ---- the loop device --------------------------------------------------------------------------------


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    """A 128 MiB loop device over a sparse file in tmp_path, detached at teardown whatever happens."""
    if os.geteuid() != 0:  # a failure, not a skip: CI runs this tier as root
        pytest.fail("loop devices need root")
    backing = tmp_path / "disk.img"
    with backing.open("wb") as f:
        f.truncate(128 * MIB)
    dev = subprocess.run(
        ["losetup", "--find", "--show", "-P", str(backing)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def read_dev(dev: str, length: int, offset: int = 0) -> bytes:
    with open(dev, "rb", buffering=0) as f:
        f.seek(offset)
        return f.read(length)


def fill_dev(dev: str, data: bytes, offset: int = 0) -> None:
    with open(dev, "r+b", buffering=0) as f:
        f.seek(offset)
        f.write(data)
        os.fsync(f.fileno())


def partition_labels(dev: str) -> dict[str, str]:
    """Partition → file system label, read from the partitions themselves (``blkid -p``)."""
    subprocess.run(["partx", "-u", dev], check=False, capture_output=True)
    labels = {}
    for part in sorted(Path("/dev").glob(f"{Path(dev).name}p*")):
        out = subprocess.run(
            ["blkid", "-p", "-o", "value", "-s", "LABEL", str(part)], capture_output=True, text=True, check=False
        )
        labels[str(part)] = out.stdout.strip()
    return labels


# ---- the lab: one server, agents started as the "machine" boots the ramdisk -------------------------


@dataclass
class Agent:
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"<cannot read {self.log}: {exc.strerror}>"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)


@dataclass
class Lab:
    server: IronworksServer
    api: httpx.Client
    device: str
    tmp: Path
    agents: list[Agent] = field(default_factory=list)

    # -- API --
    def node(self, uuid: str) -> dict[str, Any]:
        r = self.api.get(f"/v1/nodes/{uuid}")
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        return doc

    def history(self, uuid: str) -> list[dict[str, Any]]:
        r = self.api.get(f"/v1/nodes/{uuid}/history", params={"detail": "true"})
        assert r.status_code == 200, r.text
        events: list[dict[str, Any]] = r.json()["history"]
        return events

    def provision(self, uuid: str, target: str, **body: Any) -> None:
        r = self.api.put(f"/v1/nodes/{uuid}/states/provision", json={"target": target, **body})
        assert r.status_code == 202, f"provision {target}: {r.status_code} {r.text}"

    def create_node(self, **instance_info: Any) -> str:
        body = {
            "driver": "fake-hardware",
            "deploy_interface": "agent",
            "rescue_interface": "agent",
            "instance_info": instance_info,
        }
        r = self.api.post("/v1/nodes", json=body)
        assert r.status_code == 201, r.text
        uuid = str(r.json()["uuid"])
        r = self.api.post("/v1/ports", json={"address": MAC, "node_uuid": uuid})
        assert r.status_code == 201, r.text
        self.provision(uuid, "manage")
        self.wait(uuid, {"manageable"})
        return uuid

    def set_instance_info(self, uuid: str, **values: Any) -> None:
        patch = [{"op": "add", "path": f"/instance_info/{k}", "value": v} for k, v in values.items()]
        r = self.api.patch(f"/v1/nodes/{uuid}", json=patch)
        assert r.status_code == 200, r.text

    # -- the machine --
    def boot_agent(self, env: dict[str, str] | None = None) -> Agent:
        """What booting the ramdisk does: start the agent, which looks the node up by its MAC."""
        root = self.tmp / f"root{len(self.agents)}"
        nic = root / "sys/class/net/eth0"
        nic.mkdir(parents=True)
        (nic / "address").write_text(MAC + "\n")
        # the ramdisk's rescue user, in the agent's own root (it sets passwords there with chpasswd -R)
        (root / "etc").mkdir()
        (root / "etc/passwd").write_text("rescue:x:1000:1000::/home/rescue:/bin/sh\n")
        (root / "etc/group").write_text("rescue:x:1000:\n")
        (root / "etc/shadow").write_text("rescue:!:19000:0:99999:7:::\n")
        (root / "etc/shadow").chmod(0o640)
        port = free_loopback_port()
        log = self.tmp / f"agent{len(self.agents)}.log"
        argv = [
            sys.executable, "-m", "ironworks.agent",
            "--cmdline-file", os.devnull,
            "--root", str(root),
            "--ipa-api-url", self.server.url,
            "--ipa-listen-host", LOOPBACK, "--ipa-advertise-host", LOOPBACK, "--ipa-advertise-port", str(port),
            "--ipa-lookup-timeout", str(int(BOUND_S)),
            "--ironworks-device-allowlist", self.device,
        ]  # fmt: skip
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("IRONWORKS_", "IPA_", "OS_"))}
        environ.update(env or {})
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=environ)
        agent = Agent(proc, log)
        self.agents.append(agent)
        return agent

    def stop_agents(self) -> None:
        for agent in self.agents:
            agent.stop()

    def explain(self, uuid: str) -> str:
        try:
            n = self.node(uuid)
            state = (
                f"state {n['provision_state']!r} (target {n['target_provision_state']!r}), "
                f"last_error {n['last_error']!r}"
            )
        except Exception as exc:  # the explanation must not hide the failure it explains
            state = f"<node unreadable: {exc}>"
        agents = "\n".join(f"--- agent {i} (pid {a.proc.pid}):\n{a.tail()}" for i, a in enumerate(self.agents))
        return f"{state}\n{agents or '--- no agent started'}\n--- server:\n{self.server.log_tail(40)}"

    def wait(self, uuid: str, until: set[str], *, bound: float = BOUND_S) -> dict[str, Any]:
        """Poll the node until its provision state is one of ``until`` and nothing is in progress.

        The conductor writes the final state while it still holds the node's lock for the last of its
        work, so "nothing in progress" also means no reservation: a request sent earlier gets 409.
        """
        deadline = time.monotonic() + bound
        while True:
            n = self.node(uuid)
            if n["provision_state"] in until and n["target_provision_state"] is None and not n.get("reservation"):
                return n
            if time.monotonic() > deadline:
                pytest.fail(f"node {uuid} did not reach {sorted(until)} within {bound:g} s: {self.explain(uuid)}")
            time.sleep(0.1)

    def run_with_agent(self, uuid: str, until: set[str], env: dict[str, str] | None = None) -> dict[str, Any]:
        """Wait for the node to wait for its agent, boot one, wait for ``until``, power the machine off."""
        deadline = time.monotonic() + BOUND_S
        while True:
            n = self.node(uuid)
            if n["provision_state"] in AGENT_WAIT_STATES:
                break
            if n["provision_state"].endswith("failed") or time.monotonic() > deadline:
                pytest.fail(f"node {uuid} never waited for an agent: {self.explain(uuid)}")
            time.sleep(0.1)
        agent = self.boot_agent(env)
        try:
            return self.wait(uuid, until)
        finally:
            agent.stop()


@pytest.fixture
def store() -> str:
    """Which database ``ironworks serve`` uses; tests parametrize it with ``STORES``."""
    return "sqlite"


STORES = pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])


@pytest.fixture
def server_env(store: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """The server's environment; a PostgreSQL database made before (so dropped after) the server."""
    env = dict(SERVER_ENV)
    if store == "postgres":
        env["IRONWORKS_DATABASE_URL"] = request.getfixturevalue("pg_url")
    return env


@pytest.fixture
def lab(server_env: dict[str, str], ironworks_server: ServerFactory, loop_device: str, tmp_path: Path) -> Iterator[Lab]:
    server = ironworks_server(env=server_env)
    with httpx.Client(
        base_url=server.url, timeout=30.0, headers={"X-OpenStack-Ironic-API-Version": API_VERSION}
    ) as api:
        the_lab = Lab(server, api, loop_device, tmp_path)
        try:
            yield the_lab
        finally:
            the_lab.stop_agents()
            for i, agent in enumerate(the_lab.agents):  # shown only when the test failed
                print(f"--- agent {i} exited with {agent.proc.returncode}:\n{agent.tail(60)}")


# ---- what the tests deploy -----------------------------------------------------------------------------


def mbr_image(size_mib: int = 8) -> bytes:
    """A whole-disk image: an MBR with one partition over random data (no config-2 partition)."""
    data = bytearray(os.urandom(size_mib * MIB))
    data[446:512] = bytes(66)
    # partition 1: type 0x83 from sector 2048 to the end of the image
    start, sectors = 2048, size_mib * MIB // 512 - 2048
    entry = bytes([0x00, 0, 0, 0, 0x83, 0, 0, 0]) + start.to_bytes(4, "little") + sectors.to_bytes(4, "little")
    data[446:462] = entry
    data[510:512] = b"\x55\xaa"
    return bytes(data)


def configdrive(tmp: Path) -> str:
    """Base64 of a gzipped config-2 ISO, built with genisoimage like Ironic's tools do."""
    src = tmp / "configdrive"
    (src / "openstack/latest").mkdir(parents=True)
    meta = {"uuid": "e2e-node", "hostname": "e2e", "name": "e2e"}
    (src / "openstack/latest/meta_data.json").write_text(json.dumps(meta))
    iso = tmp / "configdrive.iso"
    subprocess.run(
        ["genisoimage", "-quiet", "-o", str(iso), "-ldots", "-allow-lowercase", "-allow-multidot", "-l",
         "-publisher", "ironworks-e2e", "-J", "-r", "-V", "config-2", str(src)],
        check=True, capture_output=True,
    )  # fmt: skip
    return base64.b64encode(gzip.compress(iso.read_bytes())).decode()


def firmware_tarball(script: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = script.encode()
        info = tarfile.TarInfo("runme.sh")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def image_info(url: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {
        "image_source": url,
        "image_os_hash_algo": "sha256",
        "image_os_hash_value": hashlib.sha256(data).hexdigest(),
        **extra,
    }


def available_node(lab: Lab, **instance_info: Any) -> str:
    """enroll → manage → provide (automated cleaning runs erase_devices_metadata through the agent)."""
    uuid = lab.create_node(**instance_info)
    lab.provision(uuid, "provide")
    n = lab.run_with_agent(uuid, {"available", "clean failed"})
    assert n["provision_state"] == "available", lab.explain(uuid)
    steps = [e["data"]["step"] for e in lab.history(uuid) if e["event_type"] == "step.end"]
    assert "deploy.erase_devices_metadata" in steps, steps
    return uuid


# ---- 1, 2, 3: deploying ---------------------------------------------------------------------------------


def iso_file(device: str, path: str) -> bytes:
    """A file of the ISO 9660 file system on ``device``, read through Rock Ridge by the real isoinfo."""
    return subprocess.run(["isoinfo", "-R", "-x", path, "-i", device], capture_output=True, check=True).stdout


JSON_DRIVE: dict[str, Any] = {
    "meta_data": {"hostname": "e2e-json", "public_keys": {"0": "ssh-ed25519 AAAAC3Nza e2e"}, "availability_zone": "z1"},
    "user_data": "#cloud-config\nruncmd: [touch /run/e2e-ok]\n",
    "network_data": {"links": [{"id": "eth0", "type": "phy", "ethernet_mac_address": MAC}]},
}


@STORES
def test_deploy_raw_image_with_json_configdrive(lab: Lab, files: Files) -> None:
    """API >= 1.56: the config drive as JSON; the conductor builds the config-2 ISO the agent writes."""
    data = mbr_image()
    uuid = available_node(lab, **image_info(files.put("disk.raw", data), data))
    lab.provision(uuid, "active", configdrive=JSON_DRIVE)
    n = lab.run_with_agent(uuid, {"active", "deploy failed"})
    assert n["provision_state"] == "active", lab.explain(uuid)
    assert n["power_state"] == "power on" and n["last_error"] is None

    written = read_dev(lab.device, len(data))
    # the config drive partition was added to the MBR (entry 2); everything else is the image
    assert written[:462] == data[:462]
    assert written[512:] == data[512:]
    labels = partition_labels(lab.device)
    assert "config-2" in labels.values(), labels
    part = next(p for p, label in labels.items() if label == "config-2")
    meta = json.loads(iso_file(part, "/openstack/latest/meta_data.json"))
    assert meta["hostname"] == "e2e-json" and meta["uuid"] == uuid, meta
    assert meta["public_keys"] == JSON_DRIVE["meta_data"]["public_keys"]
    assert iso_file(part, "/openstack/2012-08-10/user_data").decode() == JSON_DRIVE["user_data"]
    assert json.loads(iso_file(part, "/openstack/latest/network_data.json")) == JSON_DRIVE["network_data"]
    assert "ssh-ed25519" not in json.dumps(lab.node(uuid))  # the drive is masked in the API
    steps = [e["data"]["step"] for e in lab.history(uuid) if e["event_type"] == "step.end"]
    assert steps[-5:] == [
        "deploy.deploy",
        "deploy.write_image",
        "deploy.prepare_instance_boot",
        "deploy.tear_down_agent",
        "deploy.boot_instance",
    ]


@STORES
def test_deploy_qcow2_image_with_configdrive(lab: Lab, files: Files, tmp_path: Path) -> None:
    """A qcow2 whole-disk image, and the config drive as a ready image (base64 of a gzipped ISO)."""
    data = mbr_image(12)
    raw = tmp_path / "src.raw"
    raw.write_bytes(data)
    qcow = tmp_path / "src.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow)], check=True)
    qdata = qcow.read_bytes()
    uuid = available_node(lab, **image_info(files.put("disk.qcow2", qdata), qdata, image_disk_format="qcow2"))
    lab.provision(uuid, "active", configdrive=configdrive(tmp_path))
    n = lab.run_with_agent(uuid, {"active", "deploy failed"})
    assert n["provision_state"] == "active", lab.explain(uuid)

    back = tmp_path / "back.raw"  # the served qcow2, converted back, is what the disk holds
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(qcow), str(back)], check=True)
    assert back.read_bytes() == data
    written = read_dev(lab.device, len(data))  # but for the config drive's partition entry (MBR entry 2)
    assert written[:462] == data[:462] and written[512:] == data[512:]
    part = next(p for p, label in partition_labels(lab.device).items() if label == "config-2")
    assert json.loads(iso_file(part, "/openstack/latest/meta_data.json"))["hostname"] == "e2e"


def test_checksum_mismatch_fails_the_deploy_and_wipes(lab: Lab, files: Files) -> None:
    data = os.urandom(8 * MIB)
    url = files.put("disk.raw", data)
    uuid = available_node(lab, image_source=url, image_os_hash_algo="sha256", image_os_hash_value="0" * 64)
    fill_dev(lab.device, b"\xa5" * MIB)  # something to wipe (cleaning already zeroed the head)
    lab.provision(uuid, "active")
    n = lab.run_with_agent(uuid, {"active", "deploy failed"})
    assert n["provision_state"] == "deploy failed", lab.explain(uuid)
    assert "sha256" in n["last_error"] and "expected " + "0" * 64 in n["last_error"], n["last_error"]
    assert "write_image" in n["last_error"]
    assert read_dev(lab.device, MIB) == bytes(MIB)
    moves = [e["event"] for e in lab.history(uuid) if e["event"].startswith("Provision state ")]
    assert moves and not any(" -> active " in m for m in moves), moves  # never active, not even briefly


# ---- 4, 5: manual cleaning ------------------------------------------------------------------------------


RUNME_OK = """#!/bin/bash
set -e
echo "flashing from $PWD"
echo "fw-e2e-$$" > marker.txt
echo "MARKER: $(cat marker.txt) in $PWD"
"""
RUNME_FAIL = """#!/bin/bash
echo "checking the BMC"
echo "FLASH FAILED: image rejected by the controller"
exit 1
"""


@STORES
def test_update_firmware_clean_step(lab: Lab, files: Files) -> None:
    uuid = lab.create_node()
    ok = firmware_tarball(RUNME_OK)
    step = {
        "interface": "deploy",
        "step": "update_firmware",
        "args": {"url": files.put("fw-ok.tgz", ok), "checksum": "sha256:" + hashlib.sha256(ok).hexdigest()},
    }
    lab.provision(uuid, "clean", clean_steps=[step])
    n = lab.run_with_agent(uuid, {"manageable", "clean failed"})
    assert n["provision_state"] == "manageable", lab.explain(uuid)
    assert not n["maintenance"]
    results = [e for e in lab.history(uuid) if e["event_type"] == "agent.result"]
    assert results, "the agent's answer is not in the node's timeline"
    assert "MARKER: fw-e2e-" in results[-1]["event"], results[-1]
    assert results[-1]["data"]["result"]["exit_code"] == 0
    workdir = results[-1]["event"].split("MARKER: fw-e2e-", 1)[1].split(" in ", 1)[1].splitlines()[0]
    assert "/firmware-" in workdir and not os.path.exists(workdir)  # its own work dir, removed afterwards

    bad = firmware_tarball(RUNME_FAIL)
    step = {"interface": "deploy", "step": "update_firmware", "args": {"url": files.put("fw-bad.tgz", bad)}}
    lab.provision(uuid, "clean", clean_steps=[step])
    n = lab.run_with_agent(uuid, {"manageable", "clean failed"})
    assert n["provision_state"] == "clean failed", lab.explain(uuid)
    assert "runme.sh exited with 1" in n["last_error"], n["last_error"]
    assert "FLASH FAILED: image rejected by the controller" in n["last_error"], n["last_error"]
    assert n["maintenance"] and n["fault"] == "clean failure"


def test_erase_devices_zeroes_the_disk(lab: Lab) -> None:
    uuid = lab.create_node()
    size = os.path.getsize(lab.tmp / "disk.img")
    for offset in (0, 5 * MIB + 123, size // 2, size - MIB):
        fill_dev(lab.device, os.urandom(MIB // 2), offset)
    lab.provision(uuid, "clean", clean_steps=[{"interface": "deploy", "step": "erase_devices"}])
    n = lab.run_with_agent(uuid, {"manageable", "clean failed"})
    assert n["provision_state"] == "manageable", lab.explain(uuid)
    with open(lab.device, "rb") as f:
        while block := f.read(4 * MIB):
            assert block == bytes(len(block)), f"non-zero bytes near offset {f.tell() - len(block)}"


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def vendor_manager() -> dict[str, str]:
    """The example vendor manager, installed into this venv (dev.sh installs it; CI may not have yet);
    the environment that makes it rate itself VENDOR on this (non-ExampleVendor) machine."""
    import importlib.metadata

    def installed() -> bool:
        eps = importlib.metadata.entry_points(group="ironworks.agent.hardware_managers")
        return any(ep.name == "example-vendor" for ep in eps)

    if not installed():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "-e", str(REPO / "examples/vendor_manager")], check=True
        )
        importlib.invalidate_caches()
    assert installed(), "pip install examples/vendor_manager did not register its entry point"
    return {"IRONWORKS_EXAMPLE_VENDOR": "1"}


def test_vendor_step_through_the_api_with_the_real_agent(lab: Lab, vendor_manager: dict[str, str]) -> None:
    """A vendor hardware manager's step (``update_vendor_firmware``) as a manual clean step: accepted
    while the agent's steps were never listed, checked once the agent lists them, run; from then on
    the API knows it (and its arguments) up front."""
    uuid = lab.create_node()
    step = {"interface": "deploy", "step": "update_vendor_firmware", "args": {"version": "7.1"}}
    lab.provision(uuid, "clean", clean_steps=[step])
    n = lab.run_with_agent(uuid, {"manageable", "clean failed"}, env=vendor_manager)
    assert n["provision_state"] == "manageable", lab.explain(uuid)
    results = [e for e in lab.history(uuid) if e["event_type"] == "agent.result"]
    assert results and results[-1]["data"]["result"] == {"vendor": "ExampleVendor", "firmware_version": "7.1"}
    cached = n["driver_internal_info"]["agent_cached_clean_steps"]["deploy"]
    vendor = next(s for s in cached if s["step"] == "update_vendor_firmware")
    assert vendor["argsinfo"]["version"]["type"] == "string"
    assert {"erase_devices_metadata", "update_firmware"} <= {s["step"] for s in cached}

    for bad, expected in (
        ({"interface": "deploy", "step": "update_vendor_firmwre"}, "deploy.update_vendor_firmware"),
        (dict(step, args={"version": 7}), "argument 'version' must be of type string"),
    ):
        r = lab.api.put(f"/v1/nodes/{uuid}/states/provision", json={"target": "clean", "clean_steps": [bad]})
        assert r.status_code == 400, r.text
        assert expected in json.loads(r.json()["error_message"])["faultstring"], r.text
    assert lab.node(uuid)["provision_state"] == "manageable"


def test_firmware_service_step_on_a_deployed_node(lab: Lab, files: Files) -> None:
    """Seed 000 on a node that has an instance: servicing runs update_firmware in the ramdisk and
    returns to the instance; maintenance is honoured (servicing is refused until it is unset)."""
    data = os.urandom(4 * MIB)
    uuid = available_node(lab, **image_info(files.put("disk.raw", data), data))
    lab.provision(uuid, "active")
    assert lab.run_with_agent(uuid, {"active", "deploy failed"})["provision_state"] == "active", lab.explain(uuid)
    ok = firmware_tarball(RUNME_OK)
    step = {"interface": "deploy", "step": "update_firmware", "args": {"url": files.put("fw.tgz", ok)}}

    assert lab.api.put(f"/v1/nodes/{uuid}/maintenance", json={"reason": "waiting for the window"}).status_code == 202
    r = lab.api.put(f"/v1/nodes/{uuid}/states/provision", json={"target": "service", "service_steps": [step]})
    assert r.status_code == 400 and "maintenance" in r.text, r.text
    assert lab.api.delete(f"/v1/nodes/{uuid}/maintenance").status_code == 202

    lab.provision(uuid, "service", service_steps=[step])
    n = lab.run_with_agent(uuid, {"active", "service failed"})
    assert n["provision_state"] == "active", lab.explain(uuid)
    assert n["power_state"] == "power on"  # back into the instance
    results = [e for e in lab.history(uuid) if e["event_type"] == "agent.result"]
    assert results and "MARKER: fw-e2e-" in results[-1]["event"], results[-1:]
    assert read_dev(lab.device, len(data)) == data  # the instance's disk is untouched


# ---- 6: rescue ------------------------------------------------------------------------------------------


@STORES
def test_rescue_sets_the_password_and_unrescue_returns(lab: Lab, files: Files) -> None:
    """rescue: the agent sets the rescue user's password (hashed, in its own root: never the host's
    /etc), the node reaches ``rescue``; unrescue brings it back to ``active``."""
    data = os.urandom(4 * MIB)
    uuid = available_node(lab, **image_info(files.put("disk.raw", data), data))
    lab.provision(uuid, "active")
    assert lab.run_with_agent(uuid, {"active", "deploy failed"})["provision_state"] == "active", lab.explain(uuid)

    lab.provision(uuid, "rescue", rescue_password="s3cret-rescue")
    n = lab.run_with_agent(uuid, {"rescue", "rescue failed"})
    assert n["provision_state"] == "rescue", lab.explain(uuid)
    shadow = (lab.tmp / f"root{len(lab.agents) - 1}" / "etc/shadow").read_text()
    user, hashed = shadow.split(":")[:2]
    assert user == "rescue" and hashed.startswith("$6$") and "s3cret-rescue" not in shadow
    assert "s3cret-rescue" not in json.dumps(n) and "s3cret-rescue" not in json.dumps(lab.history(uuid))
    lab.provision(uuid, "unrescue")
    assert lab.wait(uuid, {"active", "unrescue failed"})["provision_state"] == "active", lab.explain(uuid)


# ---- 7: the agent dies mid-deploy ---------------------------------------------------------------------


@STORES
def test_agent_killed_mid_deploy_fails_after_silence(lab: Lab, files: Files) -> None:
    data = os.urandom(64 * MIB)
    files.put("big.raw", data)
    uuid = available_node(lab, **image_info(f"{files.url}/slow/big.raw", data))
    lab.provision(uuid, "active")
    deadline = time.monotonic() + BOUND_S
    while lab.node(uuid)["provision_state"] != "wait call-back":
        assert time.monotonic() < deadline, lab.explain(uuid)
        time.sleep(0.1)
    agent = lab.boot_agent()
    files.wait_slow_bytes(3 * MIB)  # the image is being written
    assert lab.node(uuid)["provision_state"] in ("deploying", "wait call-back")
    agent.stop(signal.SIGKILL)
    n = lab.wait(uuid, {"deploy failed", "active"})
    assert n["provision_state"] == "deploy failed", lab.explain(uuid)
    err = n["last_error"]
    assert "stopped answering" in err and "standby.prepare_image" in err, err
    assert f"agent_silence_timeout = {SILENCE_S}s" in err, err


# ---- 8: the real baremetal CLI --------------------------------------------------------------------------


def test_manual_clean_through_the_baremetal_cli(lab: Lab) -> None:
    uuid = lab.create_node()
    fill_dev(lab.device, b"\x5a" * MIB)
    exe = Path(sys.executable).with_name("baremetal")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "IRONWORKS_"))}
    env.update(OS_AUTH_TYPE="none", OS_ENDPOINT=lab.server.url)
    steps = json.dumps([{"interface": "deploy", "step": "erase_devices_metadata"}])
    out_path = lab.tmp / "baremetal.out"
    with out_path.open("wb") as out:
        cli = subprocess.Popen(
            [str(exe), "node", "clean", uuid, "--clean-steps", steps, "--wait", "120"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        n = lab.run_with_agent(uuid, {"manageable", "clean failed"})
        code = cli.wait(BOUND_S)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    output = out_path.read_text(errors="replace")
    assert code == 0, f"baremetal exited {code}:\n{output}\n{lab.explain(uuid)}"
    assert n["provision_state"] == "manageable", lab.explain(uuid)
    assert read_dev(lab.device, MIB) == bytes(MIB)
    shown = subprocess.run(
        [str(exe), "node", "show", uuid, "-f", "json", "-c", "provision_state"],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert json.loads(shown.stdout) == {"provision_state": "manageable"}
