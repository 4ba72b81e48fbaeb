"""Wall time of an end-to-end deploy on the virtual lab, split by phase; medians of N runs.

A deploy of the 1 GiB test image (``tests/e2e/images.py``) onto a TCG VM that network-boots the
Ironworks ramdisk goes through these milestones; each is the first of its kind after the previous one:

==================  ==================================================================================
milestone           where it is read
==================  ==================================================================================
deploy_requested    node history: provision ``available -> deploying``
power_on            serial console: the VM's firmware starts (fallback: history "Booting the agent ramdisk")
dhcp                dnsmasq log: ``DHCPACK`` to the node's MAC
ramdisk_loaded      serial console: the kernel banner ``Linux version ...``
ramdisk_network     serial console: the ramdisk's /init has a DHCP lease (``ironworks-init: network up``)
agent_started       serial console: /init starts the agent (``ironworks-init: starting the agent``), or
                    the agent's first log line (``ironworks.agent``)
first_heartbeat     node history: the first ``agent`` entry ("Agent ... up at ...")
image_written       node history: ``step.end`` of ``deploy.write_image``
rebooted            serial console: the firmware starts again
active              node history: provision ``deploying -> active``
instance_booted     serial console: ``IRONWORKS-E2E-INSTANCE`` (the deployed image's /init)
==================  ==================================================================================

The phase named after a milestone is the time from the milestone seen just before it (in time: the
conductor may record ``active`` before the rebooted firmware prints its banner) to it, so phases add
up to the total (deploy_requested -> the last milestone seen). A milestone that is missing (e.g. no
dnsmasq log) is reported as such and its time goes to the next phase.

Status: the parts that turn recordings into phases are done and unit-tested on recorded samples
(``tests/unit/test_e2e_phases.py``): ``serial_milestones``, ``dnsmasq_events``, ``history_milestones``,
``deploy_timeline``, ``summarize``, ``render``; ``--recorded DIR`` runs them on files saved from a run.
``recording()`` records one deploy (serial console and dnsmasq's log with ``tests.lab.serial.SerialRecorder``,
then the node history) into a directory. ``run_deploys`` builds a lab of its own and deploys ``--runs``
times inside ``recording()`` (the same helpers as ``tests/e2e/test_netboot_deploy.py``).

    .venv/bin/python bench/e2e_deploy_bench.py --recorded DIR [DIR ...] [--json out.json]
    .venv/bin/python bench/e2e_deploy_bench.py --runs 3 [--firmware bios|uefi] [--boot-interface ipxe|pxe] \\
        [--driver redfish|ipmi] [--image-format raw|qcow2] [--hash-algo sha256|sha512|md5] [--out DIR]

It reports medians and judges nothing (target of issue 5: <= 60 s for a 1 GiB image on TCG).
"""

from __future__ import annotations

import argparse
import calendar
import hashlib
import json
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.lab.serial import SerialLog, SerialRecorder  # noqa: E402

MILESTONES = (
    "deploy_requested",
    "power_on",
    "dhcp",
    "ramdisk_loaded",
    "ramdisk_network",
    "agent_started",
    "first_heartbeat",
    "image_written",
    "rebooted",
    "active",
    "instance_booted",
)
#: a timestamped line: (time.time() when it was seen, the line)
TimedLine = tuple[float, str]

FIRMWARE_START = re.compile(r"SeaBIOS \(version|\x1b\[=3h")
KERNEL_BANNER = re.compile(r"Linux version \S+")
#: what the ramdisk's /init (ironworks/ramdisk/files/init.sh) and the agent's logging print
RAMDISK_NETWORK_LINE = re.compile(r"ironworks-init: network up")
AGENT_LINE = re.compile(r"ironworks-init: starting the agent|ironworks\.agent")
INSTANCE_LINE = re.compile(r"IRONWORKS-E2E-INSTANCE image=(\S+)")
#: ``Dec  1 07:40:13 dnsmasq-dhcp[4242]: 1672513 DHCPACK(iwbr0) 192.168.150.150 52:54:00:aa:bb:01 host``
#: (the transaction id is there with --log-dhcp; the syslog stamp with --log-facility=FILE)
DNSMASQ_LINE = re.compile(
    r"^(?:(?P<stamp>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) )?dnsmasq-(?P<facility>dhcp|tftp)(?:\[\d+\])?: "
    r"(?:\d+ )?(?P<message>.*)$"
)
DHCP_MESSAGE = re.compile(
    r"^(?P<kind>DHCP[A-Z]+)\((?P<iface>[^)]+)\)(?: (?P<ip>\d+\.\d+\.\d+\.\d+))? (?P<mac>[0-9a-f]{2}(?::[0-9a-f]{2}){5})"
)
TFTP_MESSAGE = re.compile(r"^sent (?P<path>\S+) to (?P<ip>\S+)")


@dataclass(frozen=True)
class Milestone:
    """One milestone of a deploy: when (``time.time()`` seconds) and the evidence it was read from."""

    name: str
    at: float
    source: str
    evidence: str


@dataclass(frozen=True)
class DnsmasqEvent:
    """A DHCP exchange step or a TFTP transfer from dnsmasq's log."""

    at: float
    kind: str  # DHCPDISCOVER, DHCPOFFER, DHCPREQUEST, DHCPACK, ... or TFTP
    mac: str | None
    ip: str | None
    detail: str


# ---- reading the recordings ---------------------------------------------------------------------------
def parse_iso(stamp: str) -> float:
    """An ISO 8601 timestamp of the API (UTC when it has no offset) as ``time.time()`` seconds."""
    dt = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        return calendar.timegm(dt.timetuple()) + dt.microsecond / 1e6
    return dt.timestamp()


def syslog_time(stamp: str, *, year: int) -> float:
    """dnsmasq's ``Mon dd HH:MM:SS`` (local time, no year) as ``time.time()`` seconds."""
    return time.mktime(time.strptime(f"{year} {stamp}", "%Y %b %d %H:%M:%S"))


def timed_syslog_lines(text: str, *, year: int) -> list[TimedLine]:
    """Lines of a dnsmasq ``--log-facility`` file, timed by their own (1 s resolution) stamps."""
    out = []
    for line in text.splitlines():
        found = DNSMASQ_LINE.match(line)
        if found and found.group("stamp"):
            out.append((syslog_time(found.group("stamp"), year=year), line))
    return out


def dnsmasq_events(lines: Iterable[TimedLine]) -> list[DnsmasqEvent]:
    """DHCP and TFTP events from timed dnsmasq log lines (a recorder's or ``timed_syslog_lines``)."""
    events = []
    for at, line in lines:
        found = DNSMASQ_LINE.match(line.strip())
        if not found:
            continue
        message = found.group("message")
        if found.group("facility") == "dhcp" and (dhcp := DHCP_MESSAGE.match(message)):
            events.append(DnsmasqEvent(at, dhcp.group("kind"), dhcp.group("mac").lower(), dhcp.group("ip"), message))
        elif found.group("facility") == "tftp" and (tftp := TFTP_MESSAGE.match(message)):
            events.append(DnsmasqEvent(at, "TFTP", None, tftp.group("ip"), message))
    return events


def serial_milestones(lines: Sequence[TimedLine], *, after: float) -> list[Milestone]:
    """power_on, ramdisk_loaded, ramdisk_network, agent_started, rebooted, instance_booted from a serial log.

    Each counts once and in order: the first firmware start is the power-on, the first kernel banner
    before the reboot is the ramdisk's, a firmware start after it is the reboot, and the instance
    marker comes last. A milestone that never shows (say, no agent log line) blocks none after it.
    """
    seen: dict[str, Milestone] = {}

    def mark(name: str, at: float, line: str) -> None:
        seen.setdefault(name, Milestone(name, at, "serial", _clean(line)))

    for at, line in lines:
        if at < after:
            continue
        if FIRMWARE_START.search(line):
            if "ramdisk_loaded" in seen:
                mark("rebooted", at, line)
            elif "power_on" not in seen:
                mark("power_on", at, line)
        elif KERNEL_BANNER.search(line):
            if "rebooted" not in seen:
                mark("ramdisk_loaded", at, line)
        elif RAMDISK_NETWORK_LINE.search(line):
            if "ramdisk_loaded" in seen and "rebooted" not in seen:
                mark("ramdisk_network", at, line)
        elif AGENT_LINE.search(line):
            if "ramdisk_loaded" in seen and "rebooted" not in seen:
                mark("agent_started", at, line)
        elif INSTANCE_LINE.search(line):
            mark("instance_booted", at, line)
    return sorted(seen.values(), key=lambda m: m.at)


def _clean(line: str) -> str:
    return re.sub(r"\x1b\[[0-9;=?]*[A-Za-z]|\x1bc", "", line).strip()[:200]


def history_milestones(history: Sequence[Mapping[str, Any]]) -> list[Milestone]:
    """deploy_requested, power_on (fallback), first_heartbeat, image_written, active from a node's history."""
    found: dict[str, Milestone] = {}
    for entry in history:
        at, kind, data = parse_iso(str(entry["created_at"])), entry.get("event_type"), entry.get("data") or {}
        text = str(entry.get("event", ""))
        if kind == "provision" and data.get("to") == "deploying" and data.get("from") == "available":
            found = {"deploy_requested": Milestone("deploy_requested", at, "history", text)}  # the last deploy
        elif "deploy_requested" not in found:
            continue
        elif kind == "log" and text.startswith("Booting the agent ramdisk"):
            found.setdefault("power_on", Milestone("power_on", at, "history", text))
        elif kind == "agent":
            found.setdefault("first_heartbeat", Milestone("first_heartbeat", at, "history", text))
        elif kind == "step.end" and data.get("step") == "deploy.write_image":
            found.setdefault("image_written", Milestone("image_written", at, "history", text))
        elif kind == "provision" and data.get("to") == "active":
            found.setdefault("active", Milestone("active", at, "history", text))
    return sorted(found.values(), key=lambda m: m.at)


@dataclass(frozen=True)
class DeployTimeline:
    """The milestones of one deploy in the order they happened, and the phases between them."""

    milestones: tuple[Milestone, ...]

    def get(self, name: str) -> Milestone | None:
        """The milestone ``name``, if it was seen."""
        return next((m for m in self.milestones if m.name == name), None)

    def phases(self) -> dict[str, float]:
        """Seconds from the previous milestone seen to each milestone seen (they add up to ``total``)."""
        out, previous = {}, None
        for m in self.milestones:
            if previous is not None:
                out[m.name] = m.at - previous.at
            previous = m
        return out

    @property
    def total(self) -> float:
        """Seconds from the deploy request to the last milestone seen."""
        return self.milestones[-1].at - self.milestones[0].at if self.milestones else 0.0

    def missing(self) -> list[str]:
        """Milestones that were not seen."""
        seen = {m.name for m in self.milestones}
        return [n for n in MILESTONES if n not in seen]


def deploy_timeline(
    *, history: Sequence[Mapping[str, Any]], serial: Sequence[TimedLine], dnsmasq: Sequence[TimedLine], mac: str
) -> DeployTimeline:
    """Merge the three recordings of one deploy into its milestones (serial beats history for power_on)."""
    from_history = {m.name: m for m in history_milestones(history)}
    requested = from_history.get("deploy_requested")
    if requested is None:
        raise ValueError("the node history has no 'available -> deploying' entry: it is not the history of a deploy")
    chosen = dict(from_history)
    for m in serial_milestones(serial, after=requested.at):
        chosen[m.name] = m
    power_on = chosen.get("power_on")
    acks = [e for e in dnsmasq_events(dnsmasq) if e.kind == "DHCPACK" and e.mac == mac.lower()]
    # dnsmasq stamps whole seconds: an ACK in the power-on second counts
    first = next((e for e in acks if power_on is None or e.at >= int(power_on.at)), None)
    if first is not None:
        chosen["dhcp"] = Milestone("dhcp", first.at, "dnsmasq", first.detail)
    ordered = sorted(chosen.values(), key=lambda m: (m.at, MILESTONES.index(m.name)))
    return DeployTimeline(tuple(ordered))


# ---- reporting ------------------------------------------------------------------------------------------
def summarize(runs: Sequence[DeployTimeline]) -> dict[str, float]:
    """Median seconds of each phase over the runs that saw it, and of the total."""
    out: dict[str, float] = {}
    for name in MILESTONES[1:]:
        values = [r.phases()[name] for r in runs if name in r.phases()]
        if values:
            out[name] = statistics.median(values)
    out["total"] = statistics.median(r.total for r in runs) if runs else 0.0
    return out


def render(runs: Sequence[DeployTimeline]) -> str:
    """A table: one column per run, the median, one row per phase, then the total."""
    medians = summarize(runs)
    head = f"{'phase (s)':<18}" + "".join(f"{'run ' + str(i + 1):>9}" for i in range(len(runs))) + f"{'median':>9}"
    rows = [head]
    for name in [*MILESTONES[1:], "total"]:
        cells = []
        for r in runs:
            value = r.total if name == "total" else r.phases().get(name)
            cells.append(f"{value:>9.1f}" if value is not None else f"{'-':>9}")
        med = medians.get(name)
        rows.append(f"{name:<18}" + "".join(cells) + (f"{med:>9.1f}" if med is not None else f"{'-':>9}"))
    missing = sorted({n for r in runs for n in r.missing()})
    if missing:
        rows.append(f"not seen in some run: {', '.join(missing)}")
    return "\n".join(rows)


# ---- recordings on disk -----------------------------------------------------------------------------------
def save_recording(
    directory: Path, *, history: Sequence[Mapping[str, Any]], serial: Sequence[TimedLine], dnsmasq: Sequence[TimedLine],
    mac: str,
) -> None:  # fmt: skip
    """Write one run's recordings: history.json, serial.jsonl and dnsmasq.jsonl ([time, line] per line)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "history.json").write_text(json.dumps({"mac": mac, "history": list(history)}, indent=1))
    for name, lines in (("serial", serial), ("dnsmasq", dnsmasq)):
        (directory / f"{name}.jsonl").write_text("".join(json.dumps([t, line]) + "\n" for t, line in lines))


def load_recording(directory: Path) -> DeployTimeline:
    """The timeline of a run saved by ``save_recording``."""
    data = json.loads((directory / "history.json").read_text())

    def timed(name: str) -> list[TimedLine]:
        path = directory / f"{name}.jsonl"
        if not path.exists():
            return []
        return [(float(t), str(line)) for t, line in map(json.loads, path.read_text().splitlines())]

    return deploy_timeline(history=data["history"], serial=timed("serial"), dnsmasq=timed("dnsmasq"), mac=data["mac"])


@contextmanager
def recording(
    directory: Path,
    *,
    serial: SerialLog,
    dnsmasq_log: Path,
    mac: str,
    history: Callable[[], Sequence[Mapping[str, Any]]],
) -> Iterator[None]:
    """Record one deploy around the ``with`` body and save it to ``directory`` (``save_recording``).

    The VM's serial console and dnsmasq's log are followed from their current end, every line stamped
    as it appears; afterwards ``history()`` (``GET /v1/nodes/{id}/history``) gives the node's timeline.
    Nothing is saved when the body raises: a failed deploy is not a measurement.
    """
    log = SerialLog(dnsmasq_log)
    with SerialRecorder(serial, after=serial.offset()) as on_serial, SerialRecorder(log, after=log.offset()) as on_log:
        yield
    save_recording(directory, history=history(), serial=on_serial.lines, dnsmasq=on_log.lines, mac=mac)


def run_deploys(
    runs: int,
    *,
    firmware: str,
    boot_interface: str,
    out: Path,
    driver: str = "redfish",
    image_format: str = "raw",
    hash_algo: str = "sha256",
) -> list[Path]:
    """Deploy ``runs`` times on a lab of its own and save each run's recordings under ``out``/run-N.

    One ``Lab`` (tests/lab), one Ironworks on its bridge with the managed dnsmasq, the agent ramdisk
    of this tree (``tests/e2e/netboot.agent_ramdisk``, from the build cache), one node for a VM of
    ``firmware`` with its port, the 1 GiB test image over the lab's HTTP server with its sha256.
    Per run: blank disk, ``active`` with a config drive recorded until the deployed image prints its
    marker, then ``deleted``. Automated cleaning is off here (it is not part of a deploy and would
    double the run time); the e2e tests run it.
    """
    import tempfile

    from tests.e2e.images import DEFAULT_CACHE, build_instance_image
    from tests.e2e.netboot import (
        BOOT_BOUND_S,
        INSTANCE_LINE,
        Deployer,
        agent_ramdisk,
        image_instance_info,
        start_netboot_ironworks,
    )
    from tests.lab.lab import Lab

    image = build_instance_image(image_id="e2e-instance", cache=DEFAULT_CACHE)
    ramdisk = agent_ramdisk()
    print(f"agent ramdisk {ramdisk.directory}: initramfs {ramdisk.initramfs.stat().st_size / 1e6:.1f} MB, "
          f"kernel {ramdisk.kernel.stat().st_size / 1e6:.1f} MB", file=sys.stderr)  # fmt: skip
    lab = Lab(Path(tempfile.mkdtemp(prefix="iw-bench-lab-")))
    dirs: list[Path] = []
    try:
        lab.setup()
        server = start_netboot_ironworks(lab, {"IRONWORKS_CONDUCTOR_AUTOMATED_CLEAN": "false"})
        d = Deployer(lab, server)
        vm = lab.vms_with(firmware)[0]
        info = image_instance_info(lab, image, image_format)
        if hash_algo != "sha256":  # the user's choice of os_hash_algo: the agent hashes what it writes with it
            path = image.raw if image_format == "raw" else image.qcow2
            digest = hashlib.new(hash_algo)
            with path.open("rb") as f:
                while block := f.read(8 << 20):
                    digest.update(block)
            info.update(image_os_hash_algo=hash_algo, image_os_hash_value=digest.hexdigest())
        uuid = d.create_node(vm, driver=driver, ramdisk=ramdisk, boot_interface=boot_interface)
        d.available(uuid, vm)
        for i in range(runs):
            lab.power_off_vm(vm)
            lab.blank_disk(vm)
            d.set_instance_info(uuid, info)  # undeploy cleared it
            run_dir = out / f"run-{i + 1}"
            dnsmasq_log = server.state_dir / "logs" / "dnsmasq.log"
            history = partial(d.history, uuid)
            with recording(run_dir, serial=vm.serial, dnsmasq_log=dnsmasq_log, mac=vm.mac, history=history):
                offset = vm.serial.offset()
                d.provision(uuid, "active", configdrive={"meta_data": {"uuid": f"bench-run-{i + 1}"}})
                node = d.wait(uuid, {"active", "deploy failed"}, vm=vm)
                if node["provision_state"] != "active":
                    raise RuntimeError(f"run {i + 1}: the deploy failed: {d.explain(uuid, vm)}")
                lab.wait_for_serial(vm, INSTANCE_LINE, after=offset, bound=BOOT_BOUND_S)
            dirs.append(run_dir)
            print(f"run {i + 1}: {load_recording(run_dir).total:.1f} s", file=sys.stderr)
            lab.wait_for_domain(vm, "shut off", bound=BOOT_BOUND_S)  # the test image powers itself off
            d.provision(uuid, "deleted")
            d.wait(uuid, {"available"}, vm=vm)
    finally:
        lab.teardown()
    return dirs


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: phases of recorded runs (``--recorded``) or of new runs on a lab of its own."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--recorded", nargs="+", type=Path, help="directories saved by save_recording()")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--firmware", choices=("bios", "uefi"), default="bios")
    parser.add_argument("--boot-interface", choices=("ipxe", "pxe"), default="ipxe")
    parser.add_argument("--driver", choices=("redfish", "ipmi"), default="redfish")
    parser.add_argument("--image-format", choices=("raw", "qcow2"), default="raw")
    parser.add_argument("--hash-algo", choices=("sha256", "sha512", "md5"), default="sha256", help="os_hash_algo")
    parser.add_argument("--out", type=Path, default=Path("e2e-deploy-runs"))
    parser.add_argument("--json", type=Path, help="write every milestone and the medians here")
    args = parser.parse_args(argv)
    try:
        dirs = args.recorded or run_deploys(
            args.runs,
            firmware=args.firmware,
            boot_interface=args.boot_interface,
            out=args.out,
            driver=args.driver,
            image_format=args.image_format,
            hash_algo=args.hash_algo,
        )
    except (RuntimeError, AssertionError) as exc:
        print(f"e2e_deploy_bench: {exc}", file=sys.stderr)
        return 2
    runs = [load_recording(d) for d in dirs]
    print(render(runs))
    if args.json:
        doc = {"runs": [[asdict(m) for m in r.milestones] for r in runs], "medians": summarize(runs)}
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
