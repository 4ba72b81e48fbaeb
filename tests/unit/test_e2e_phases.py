"""Phase timings of the e2e deploy benchmark (``bench/e2e_deploy_bench.py``) from recorded samples.

Samples: the serial lines are a lab VM's console, recorded with ``SerialRecorder`` while it
network-booted through iPXE (dnsmasq on the lab bridge) and then booted the test image from its disk;
times are seconds after the recording started. The agent's log line is spliced in where the ramdisk
would start it (the recorded network boot loaded the test image's kernel, not the agent ramdisk). The
dnsmasq lines are that boot's ``--log-dhcp`` log. The history is a real deploy's ``/v1/nodes/{id}/history``
(the agent e2e test against ``ironworks serve``), in ``RECORDED_HISTORY``; ``DEPLOY_HISTORY`` carries the
same entries at the times they would have on the VM.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bench.e2e_deploy_bench import (
    MILESTONES,
    DeployTimeline,
    deploy_timeline,
    dnsmasq_events,
    history_milestones,
    load_recording,
    parse_iso,
    recording,
    render,
    save_recording,
    serial_milestones,
    summarize,
    timed_syslog_lines,
)
from tests.lab.serial import SerialLog, SerialRecorder

BASE = 1796110753.0  # 2026-12-01 07:39:13 UTC, when the recorded boot started
MAC = "52:54:00:be:49:01"

SERIAL = [
    (0.00, "\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.2-debian-1.16.2-1)"),
    (0.15, "iPXE (http://ipxe.org) 00:02.0 C000 PCI2.10 PnP PMM+3EFCF020+3EF0F020 C000"),
    (0.30, "iPXE (PCI 00:02.0) starting execution...ok"),
    (5.60, "Configuring (net0 52:54:00:be:49:01)..... ok"),
    (5.60, "net0: 192.168.119.175/255.255.255.0 gw 192.168.119.1"),
    (5.65, "Filename: http://192.168.119.1:18080/boot.ipxe"),
    (6.52, "http://192.168.119.1:18080/vmlinuz... ok"),
    (6.72, "http://192.168.119.1:18080/initrd.img... ok"),
    (20.81, "Probing EDD (edd=off to disable)... o\x1bc\x1b[?7l\x1b[2J[    0.000000] Linux version 6.1.0-57-amd64 (de"),
    (20.86, "[    0.000000] Booting paravirtualized kernel on bare hardware"),
    # spliced in: what the agent ramdisk's /init and the agent print (ironworks/ramdisk/files/init.sh,
    # ironworks/agent/main.py's logging format)
    (25.40, "ironworks-init: network up after 2s: eth0 192.168.119.175/24 "),
    (25.45, "ironworks-init: starting the agent (run 1)"),
    (27.90, "2026-12-01 07:39:40,900 INFO ironworks.agent: node 5f0c: agent API on 0.0.0.0:9999"),
    (31.50, "[   10.103080] reboot: Restarting system"),
    (32.12, "\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.2-debian-1.16.2-1)"),
    (32.33, "Booting from Hard Disk..."),
    (32.38, "SYSLINUX 6.04 EDD 20210613 Copyright (C) 1994-2015 H. Peter Anvin et al"),
    (52.22, "Probing EDD (edd=off to disable)... o\x1bc\x1b[?7l\x1b[2J[    0.000000] Linux version 6.1.0-57-amd64 (de"),
    (62.24, "IRONWORKS-E2E-INSTANCE image=e2e-instance firmware=bios kernel=6.1.0-57-amd64"),
    (62.39, "IRONWORKS-E2E-CONFIGDRIVE uuid=5f0c device=/dev/vda2"),
    (62.44, "[    9.214128] reboot: Power down"),
]

DNSMASQ_LOG = """\
Dec  1 07:39:11 dnsmasq-dhcp[2182]: DHCP, IP range 192.168.119.100 -- 192.168.119.200, lease time 10m
Dec  1 07:39:15 dnsmasq-dhcp[2182]: 1008260707 user class: iPXE
Dec  1 07:39:15 dnsmasq-dhcp[2182]: RTR-SOLICIT(iwbr0) 52:54:00:be:49:01
Dec  1 07:39:18 dnsmasq-dhcp[2182]: 1008260707 DHCPDISCOVER(iwbr0) 52:54:00:be:49:01 
Dec  1 07:39:18 dnsmasq-dhcp[2182]: 1008260707 tags: ipxe, iwbr0
Dec  1 07:39:18 dnsmasq-dhcp[2182]: 1008260707 DHCPOFFER(iwbr0) 192.168.119.175 52:54:00:be:49:01 
Dec  1 07:39:18 dnsmasq-dhcp[2182]: 1008260707 sent size: 37 option: 67 bootfile-name  http://192.168.119.1:18080/boot.ipxe
Dec  1 07:39:18 dnsmasq-dhcp[2182]: 1008260707 DHCPREQUEST(iwbr0) 192.168.119.175 52:54:00:be:49:01 
Dec  1 07:39:18 dnsmasq-dhcp[2182]: 1008260707 DHCPACK(iwbr0) 192.168.119.175 52:54:00:be:49:01 
Dec  1 07:39:19 dnsmasq-tftp[2182]: sent /srv/tftp/undionly.kpxe to 192.168.119.175
"""  # noqa: W291  (dnsmasq ends DHCP lines for a client without a hostname with a space)
#: the same boot as the lab's recorder saw dnsmasq's stderr (no syslog stamps), seconds after BASE
DNSMASQ_RECORDED = [
    (-30.0, "dnsmasq-dhcp: 3735928559 DHCPACK(iwbr0) 192.168.119.175 52:54:00:be:49:01 "),  # an earlier boot
    (5.90, "dnsmasq-dhcp: 1008260707 DHCPDISCOVER(iwbr0) 52:54:00:be:49:01 "),
    (5.91, "dnsmasq-dhcp: 1008260707 DHCPOFFER(iwbr0) 192.168.119.175 52:54:00:be:49:01 "),
    (5.93, "dnsmasq-dhcp: 1008260707 DHCPACK(iwbr0) 192.168.119.175 52:54:00:aa:aa:02 "),  # another VM
    (5.95, "dnsmasq-dhcp: 1008260707 DHCPREQUEST(iwbr0) 192.168.119.175 52:54:00:be:49:01 "),
    (5.96, "dnsmasq-dhcp: 1008260707 DHCPACK(iwbr0) 192.168.119.175 52:54:00:be:49:01 "),
    (29.0, "dnsmasq-dhcp: 2882343476 DHCPACK(iwbr0) 192.168.119.175 52:54:00:be:49:01 ramdisk"),
]

# (time of day, event_type, event, data) of a real deploy's history, cleaning included
RECORDED_HISTORY: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("07:28:13.497464", "provision", "Provision state manageable -> cleaning (provide requested)",
     {"from": "manageable", "to": "cleaning", "target": "provide"}),
    ("07:28:13.522463", "log", "Booting the agent ramdisk for clean step erase_devices_metadata; waiting for its "
     "first heartbeat", None),
    ("07:28:14.030878", "agent", "Agent 0.1.0 up at http://127.0.0.1:51223", None),
    ("07:28:14.213316", "step.end", "Finished clean step deploy.erase_devices_metadata in 0.684s",
     {"kind": "clean", "step": "deploy.erase_devices_metadata", "outcome": "done", "duration_s": 0.684}),
    ("07:28:14.213324", "provision", "Provision state cleaning -> available (done)",
     {"from": "cleaning", "to": "available"}),
    ("07:28:14.438951", "provision", "Provision state available -> deploying (active requested)",
     {"from": "available", "to": "deploying", "target": "active"}),
    ("07:28:14.498063", "step.start", "Started deploy step deploy.deploy",
     {"kind": "deploy", "step": "deploy.deploy", "args": {}}),
    ("07:28:14.506109", "log", "Booting the agent ramdisk for deployment; waiting for its first heartbeat", None),
    ("07:28:14.506131", "provision", "Provision state deploying -> wait call-back (wait)",
     {"from": "deploying", "to": "wait call-back"}),
    ("07:28:15.024131", "agent", "Agent 0.1.0 up at http://127.0.0.1:48373", None),
    ("07:28:15.024161", "step.end", "Finished deploy step deploy.deploy in 0.521s",
     {"kind": "deploy", "step": "deploy.deploy", "outcome": "done", "duration_s": 0.521}),
    ("07:28:15.024170", "step.start", "Started deploy step deploy.write_image",
     {"kind": "deploy", "step": "deploy.write_image", "args": {}}),
    ("07:28:15.584429", "agent.result", "The agent's standby.prepare_image succeeded",
     {"type": "agent.result", "command": "standby.prepare_image"}),
    ("07:28:15.584436", "step.end", "Finished deploy step deploy.write_image in 0.564s",
     {"kind": "deploy", "step": "deploy.write_image", "outcome": "done", "duration_s": 0.564}),
    ("07:28:15.593683", "step.end", "Finished deploy step deploy.boot_instance in 0.004s",
     {"kind": "deploy", "step": "deploy.boot_instance", "outcome": "done", "duration_s": 0.004}),
    ("07:28:15.593697", "provision", "Provision state deploying -> active (done)",
     {"from": "deploying", "to": "active"}),
    ("07:28:15.603666", "agent", "Agent 0.1.0 up at http://127.0.0.1:48373", None),
]  # fmt: skip
#: seconds after BASE at which each RECORDED_HISTORY entry would have been written on the VM
DEPLOY_TIMES = [-60.0, -59.9, -40.0, -5.0, -4.9, -1.2, -1.1, -0.4, -0.4, 29.4, 29.5, 29.5, 31.2, 31.2, 32.4, 32.4, 32.5]


def entry(created_at: str, event_type: str, event: str, data: dict[str, Any] | None) -> dict[str, Any]:
    """A history entry as the API returns it."""
    return {"uuid": "x", "created_at": created_at, "severity": "INFO", "event": event, "event_type": event_type,
            "conductor": "c", "user": None, "data": data}  # fmt: skip


def recorded_history() -> list[dict[str, Any]]:
    """RECORDED_HISTORY with its real timestamps."""
    return [entry(f"2026-12-01T{t}+00:00", k, e, d) for t, k, e, d in RECORDED_HISTORY]


def deploy_history() -> list[dict[str, Any]]:
    """RECORDED_HISTORY at DEPLOY_TIMES."""
    stamps = [datetime.fromtimestamp(BASE + dt, UTC).isoformat() for dt in DEPLOY_TIMES]
    return [entry(at, k, e, d) for at, (_, k, e, d) in zip(stamps, RECORDED_HISTORY, strict=True)]


def timed(lines: list[tuple[float, str]]) -> list[tuple[float, str]]:
    """Sample lines at absolute times."""
    return [(BASE + dt, line) for dt, line in lines]


def at(timeline: DeployTimeline, name: str) -> float:
    """Seconds after BASE of a milestone (fails when it was not found)."""
    found = timeline.get(name)
    assert found is not None, f"{name} not found in {timeline.milestones}"
    return round(found.at - BASE, 2)


# ---- the three sources -----------------------------------------------------------------------------------
def test_dnsmasq_log_with_syslog_stamps_gives_the_dhcp_exchange_and_tftp() -> None:
    events = dnsmasq_events(timed_syslog_lines(DNSMASQ_LOG, year=2026))
    assert [(e.kind, e.mac, e.ip) for e in events] == [
        ("DHCPDISCOVER", MAC, None),
        ("DHCPOFFER", MAC, "192.168.119.175"),
        ("DHCPREQUEST", MAC, "192.168.119.175"),
        ("DHCPACK", MAC, "192.168.119.175"),
        ("TFTP", None, "192.168.119.175"),
    ]
    # whole seconds of local time; these machines run in UTC
    ack = events[3]
    assert ack.at == datetime(2026, 12, 1, 7, 39, 18).astimezone().timestamp()
    assert "bootfile" not in ack.detail and ack.detail.startswith("DHCPACK(iwbr0)")


def test_dnsmasq_lines_from_the_recorder_need_no_stamps() -> None:
    acks = [e for e in dnsmasq_events(timed(DNSMASQ_RECORDED)) if e.kind == "DHCPACK"]
    assert [(round(e.at - BASE, 2), e.mac) for e in acks] == [
        (-30.0, MAC),
        (5.93, "52:54:00:aa:aa:02"),
        (5.96, MAC),
        (29.0, MAC),
    ]


def test_serial_milestones_follow_the_boot_order() -> None:
    found = {m.name: (round(m.at - BASE, 2), m.evidence) for m in serial_milestones(timed(SERIAL), after=BASE)}
    assert {k: v[0] for k, v in found.items()} == {
        "power_on": 0.0,
        "ramdisk_loaded": 20.81,  # the ramdisk's kernel banner, not the deployed image's at 52.22
        "ramdisk_network": 25.4,
        "agent_started": 25.45,  # /init starting it, before the agent's own first log line
        "rebooted": 32.12,
        "instance_booted": 62.24,
    }
    # the evidence is the line without the console's escape sequences
    assert found["power_on"][1] == "SeaBIOS (version 1.16.2-debian-1.16.2-1)"
    assert found["instance_booted"][1].startswith("IRONWORKS-E2E-INSTANCE image=e2e-instance")


def test_serial_lines_before_the_request_and_a_missing_agent_line_are_handled() -> None:
    earlier = [(-90.0, SERIAL[0][1]), (-80.0, SERIAL[8][1])]  # an earlier boot of the same VM
    lines = timed(earlier + [line for line in SERIAL if "agent" not in line[1]])
    found = {m.name: round(m.at - BASE, 2) for m in serial_milestones(lines, after=BASE - 1)}
    assert found == {
        "power_on": 0.0,
        "ramdisk_loaded": 20.81,
        "ramdisk_network": 25.4,
        "rebooted": 32.12,
        "instance_booted": 62.24,
    }


def test_uefi_firmware_start_is_one_burst_of_console_resets() -> None:
    burst = "\x1b[2J\x1b[01;01H\x1b[=3h\x1b[2J\x1b[01;01H" * 3
    lines = [
        (0.0, burst + 'BdsDxe: loading Boot0002 "UEFI PXEv4 (MAC:525400BE4903)" from PciRoot(0x0)/Pci(0x1,0x0)'),
        (0.1, 'BdsDxe: starting Boot0002 "UEFI PXEv4 (MAC:525400BE4903)"'),
        (14.0, "[    0.000000] Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org)"),
        (40.0, burst + 'BdsDxe: loading Boot0001 "UEFI Misc Device" from PciRoot(0x0)/Pci(0x3,0x0)'),
        (60.0, "IRONWORKS-E2E-INSTANCE image=e2e-instance firmware=uefi kernel=6.1.0-57-amd64"),
    ]
    found = {m.name: round(m.at - BASE, 2) for m in serial_milestones(timed(lines), after=BASE)}
    assert found == {"power_on": 0.0, "ramdisk_loaded": 14.0, "rebooted": 40.0, "instance_booted": 60.0}


def test_history_milestones_of_a_recorded_deploy_skip_the_cleaning_before_it() -> None:
    found = {m.name: m for m in history_milestones(recorded_history())}
    times = {name: datetime.fromtimestamp(m.at, UTC).strftime("%H:%M:%S.%f") for name, m in found.items()}
    assert times == {
        "deploy_requested": "07:28:14.438951",
        "power_on": "07:28:14.506109",  # "Booting the agent ramdisk for deployment", not the cleaning's
        "first_heartbeat": "07:28:15.024131",  # not the cleaning agent's heartbeat at 07:28:14.03
        "image_written": "07:28:15.584436",
        "active": "07:28:15.593697",
    }
    assert found["first_heartbeat"].evidence == "Agent 0.1.0 up at http://127.0.0.1:48373"


def test_parse_iso_reads_the_api_timestamps_as_utc() -> None:
    assert parse_iso("2026-12-01T07:39:13+00:00") == BASE
    assert parse_iso("2026-12-01T07:39:13") == BASE
    assert parse_iso("2026-12-01T07:39:13.5Z") == BASE + 0.5


# ---- one deploy, then several ----------------------------------------------------------------------------
def test_deploy_timeline_merges_the_sources_and_its_phases_add_up() -> None:
    timeline = deploy_timeline(
        history=deploy_history(), serial=timed(SERIAL), dnsmasq=timed(DNSMASQ_RECORDED), mac=MAC.upper()
    )
    assert [m.name for m in timeline.milestones] == list(MILESTONES)
    assert timeline.missing() == []
    # the serial console's firmware start is the power-on (the history's entry comes before it happens)
    assert (timeline.get("power_on") or pytest.fail()).source == "serial"
    # the first ACK to this MAC after the power-on: not an earlier boot's, not another VM's, not the ramdisk's
    assert at(timeline, "dhcp") == 5.96
    phases = timeline.phases()
    assert list(phases) == list(MILESTONES[1:])
    assert round(phases["dhcp"], 2) == 5.96
    assert round(phases["first_heartbeat"], 2) == 3.95  # agent_started 25.45 -> heartbeat 29.4
    assert round(phases["instance_booted"], 2) == round(62.24 - 32.4, 2)
    assert round(sum(phases.values()), 6) == round(timeline.total, 6) == round(62.24 + 1.2, 6)


def test_a_missing_dnsmasq_log_moves_its_time_to_the_next_phase() -> None:
    timeline = deploy_timeline(history=deploy_history(), serial=timed(SERIAL), dnsmasq=[], mac=MAC)
    assert timeline.missing() == ["dhcp"]
    assert round(timeline.phases()["ramdisk_loaded"], 2) == 20.81
    assert "not seen in some run: dhcp" in render([timeline])


def test_a_history_without_a_deploy_is_refused() -> None:
    cleaning_only = recorded_history()[:5]
    with pytest.raises(ValueError, match="no 'available -> deploying' entry"):
        deploy_timeline(history=cleaning_only, serial=timed(SERIAL), dnsmasq=[], mac=MAC)


def test_medians_over_runs_and_the_table() -> None:
    def run(shift: float) -> DeployTimeline:
        serial = [(t + shift if t >= 62 else t, line) for t, line in SERIAL]  # the deployed image boots later
        return deploy_timeline(history=deploy_history(), serial=timed(serial), dnsmasq=timed(DNSMASQ_RECORDED), mac=MAC)

    runs = [run(0.0), run(10.0), run(4.0)]
    medians = summarize(runs)
    assert round(medians["instance_booted"], 2) == round(62.24 - 32.4 + 4.0, 2)
    assert round(medians["dhcp"], 2) == 5.96
    assert round(medians["total"], 2) == round(62.24 + 1.2 + 4.0, 2)
    table = render(runs)
    header, *rows = table.splitlines()
    assert header.split() == ["phase", "(s)", "run", "1", "run", "2", "run", "3", "median"]
    assert [r.split()[0] for r in rows] == [*MILESTONES[1:], "total"]
    assert rows[-1].split()[1:] == ["63.4", "73.4", "67.4", "67.4"]


def test_a_saved_recording_loads_back_to_the_same_timeline(tmp_path: Path) -> None:
    history, serial, dnsmasq = deploy_history(), timed(SERIAL), timed(DNSMASQ_RECORDED)
    save_recording(tmp_path / "run-1", history=history, serial=serial, dnsmasq=dnsmasq, mac=MAC)
    assert json.loads((tmp_path / "run-1" / "history.json").read_text())["mac"] == MAC
    loaded = load_recording(tmp_path / "run-1")
    assert loaded == deploy_timeline(history=history, serial=serial, dnsmasq=dnsmasq, mac=MAC)


# ---- the lab's serial log helpers these build on ------------------------------------------------------------
def test_serial_log_waits_after_an_offset_and_counts_firmware_starts(tmp_path: Path) -> None:
    path = tmp_path / "vm-serial.log"
    path.write_bytes(b"\x1bcSeaBIOS (version 1.16.2)\r\nLinux version 6.1\r\n")
    log = SerialLog(path)
    offset = log.offset()
    with path.open("ab") as f:
        f.write(b"\x1bcSeaBIOS (version 1.16.2)\r\nIRONWORKS-E2E-INSTANCE image=a firmware=bios kernel=k\r\n")
    found = log.wait_for(r"IRONWORKS-E2E-INSTANCE image=(\S+)", after=offset, bound=0)
    assert found.match.group(1) == "a"
    assert found.end == offset + len(b"\x1bcSeaBIOS (version 1.16.2)\r\nIRONWORKS-E2E-INSTANCE image=a")
    assert (log.firmware_starts(), log.firmware_starts(offset)) == (2, 1)
    with pytest.raises(AssertionError, match=r"'Linux version' did not appear .* within 0 s; last lines:\n.*SeaBIOS"):
        log.wait_for("Linux version", after=offset, bound=0, context=lambda: "\n--- more context")
    with pytest.raises(AssertionError, match="<nothing written>"):
        SerialLog(tmp_path / "never-started.log").wait_for("x", bound=0)


def test_serial_recorder_stamps_every_line_written_after_its_offset(tmp_path: Path) -> None:
    path = tmp_path / "vm-serial.log"
    path.write_text("before\n")
    log = SerialLog(path)
    with SerialRecorder(log, after=log.offset()) as recorder, path.open("a") as f:
        f.write("one\r\ntwo\npartial")
    assert [line for _, line in recorder.lines] == ["one", "two", "partial"]
    stamps = [t for t, _ in recorder.lines]
    assert stamps == sorted(stamps)


def test_recording_saves_what_appeared_during_the_deploy_and_the_history(tmp_path: Path) -> None:
    console, dnsmasq = tmp_path / "vm-serial.log", tmp_path / "dnsmasq.log"
    console.write_text("an earlier boot\n")
    dnsmasq.write_text("dnsmasq-dhcp: 1 DHCPACK(iwbr0) 192.168.119.170 52:54:00:be:49:01 \n")
    with recording(tmp_path / "run-1", serial=SerialLog(console), dnsmasq_log=dnsmasq, mac=MAC, history=deploy_history):
        with console.open("a") as f:
            f.write(SERIAL[0][1] + "\r\n")
        with dnsmasq.open("a") as f:
            f.write(DNSMASQ_RECORDED[-2][1] + "\n")
    saved = tmp_path / "run-1"
    assert [json.loads(line)[1] for line in (saved / "serial.jsonl").read_text().splitlines()] == [SERIAL[0][1]]
    assert [json.loads(line)[1] for line in (saved / "dnsmasq.jsonl").read_text().splitlines()] == [
        DNSMASQ_RECORDED[-2][1]
    ]
    assert json.loads((saved / "history.json").read_text()) == {"mac": MAC, "history": deploy_history()}


def test_nothing_is_saved_when_the_deploy_fails(tmp_path: Path) -> None:
    console = tmp_path / "vm-serial.log"
    console.write_text("")
    record = recording(tmp_path / "run-1", serial=SerialLog(console), dnsmasq_log=tmp_path / "none", mac=MAC,
                       history=deploy_history)  # fmt: skip
    with pytest.raises(RuntimeError, match="deploy failed"), record:
        raise RuntimeError("deploy failed")
    assert not (tmp_path / "run-1").exists()
