"""Power-state sync of many Redfish nodes behind sushy-emulator's fake driver.

For each fleet size (default 100, 250, 500, 1000 nodes) this starts ``--emulators`` sushy-emulator
processes (fake driver: no VMs) on 127.0.0.1 sharing the systems between them, enrolls one
``redfish`` node per system in an in-process Ironworks (SQLite in a temp dir), and times full
``sync_power_states()`` passes of the conductor: wall time, the conductor process's CPU share and
each emulator's CPU share (from /proc), so the report says which side limits.

    .venv/bin/python bench/power_sync_bench.py [--sizes 100,250,500,1000] [--runs 3] [--emulators 2]
                                              [--workers 8] [--json out.json]

Target (issue 3): a full pass of 1,000 nodes in <= 60 s on the 2-core build machine (Ironic's default
sync interval is 120 s). Nothing here asserts a time; it reports.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import update  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from ironworks import server  # noqa: E402
from ironworks.config import load_config  # noqa: E402
from ironworks.db.models import Node  # noqa: E402
from tests.integration.redfish_emulator import RedfishEmulator, fake_system, start_emulator  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its reaped children) in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / TICKS


def start_emulators(base: Path, count: int, nodes: int) -> list[RedfishEmulator]:
    """``count`` emulators sharing ``nodes`` powered-on fake systems."""
    emus = []
    for e in range(count):
        share = range(e, nodes, count)
        systems = [
            fake_system(
                f"bench-{i}",
                [f"52:54:{(i >> 16) & 0xFF:02x}:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}:{e:02x}"],
                power_state="On",
            )
            for i in share
        ]
        emus.append(start_emulator(base / f"emu-{e}", systems=systems))
    return emus


def measure(size: int, args: argparse.Namespace) -> dict[str, Any]:
    """Enroll ``size`` redfish nodes and time ``args.runs`` sync passes."""
    with tempfile.TemporaryDirectory(prefix="iw-psync-") as tmp:
        base = Path(tmp)
        emus = start_emulators(base, args.emulators, size)
        try:
            cfg = load_config(
                None,
                environ={},
                overrides={
                    "": {"state_dir": str(base / "state"), "log_level": "WARNING"},
                    "conductor": {
                        "hostname": "bench",
                        "enabled_hardware_types": ["redfish"],
                        "power_sync_workers": args.workers,
                        "power_sync_interval": 3600,
                        "heartbeat_interval": 3600,
                        "timeout_check_interval": 3600,
                    },
                },
            )
            rt = server.build(cfg, upgrade=True)
            conductor = server.make_conductor(rt)
            conductor._register()
            client = TestClient(server.make_app(rt), headers={"X-OpenStack-Ironic-API-Version": "1.87"})
            for emu in emus:
                for i in range(len(emu.systems)):
                    r = client.post("/v1/nodes", json={"driver": "redfish", "driver_info": emu.driver_info(i)})
                    if r.status_code != 201:
                        raise SystemExit(f"enrolling failed: {r.status_code} {r.text}")
            with rt.db.write() as s:  # setup only: skip verifying, the pass is what is measured
                s.execute(update(Node).values(provision_state="manageable", power_state="power on"))
            passes = []
            for run in range(args.runs + 1):  # the first pass warms the BMC connection cache
                emu_cpu0 = [proc_cpu_seconds(e.pid or 0) for e in emus]
                cpu0, t0 = time.process_time(), time.monotonic()
                checked = conductor.sync_power_states()
                wall = time.monotonic() - t0
                cpu = time.process_time() - cpu0
                emu_cpu = [proc_cpu_seconds(e.pid or 0) - c for e, c in zip(emus, emu_cpu0, strict=True)]
                if checked != size:
                    raise SystemExit(f"a pass checked {checked} of {size} nodes")
                if run:
                    passes.append(
                        {"wall_s": wall, "conductor_cpu": cpu / wall, "emulator_cpu": [c / wall for c in emu_cpu]}
                    )
            with rt.db.read() as s:
                in_maintenance = s.query(Node).filter(Node.maintenance.is_(True)).count()
            client.close()
            conductor.pool.shutdown()
            conductor._sync_pool.shutdown()
            rt.db.dispose()
        finally:
            for emu in emus:
                emu.stop()
    wall = statistics.median(p["wall_s"] for p in passes)
    conductor_share = statistics.median(p["conductor_cpu"] for p in passes)
    emu_share = statistics.median(max(p["emulator_cpu"]) for p in passes)
    return {
        "nodes": size,
        "passes": passes,
        "wall_s": wall,
        "ms_per_node": 1000 * wall / size,
        "conductor_cpu_share": conductor_share,
        "busiest_emulator_cpu_share": emu_share,
        "limited_by": "emulator" if emu_share > conductor_share else "conductor",
        "nodes_in_maintenance": in_maintenance,
    }


def main() -> int:
    """Run the benchmark and print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100,250,500,1000")
    p.add_argument("--runs", type=int, default=3, help="timed passes per size (after one warm-up pass)")
    p.add_argument("--emulators", type=int, default=2, help="sushy-emulator processes sharing the systems")
    p.add_argument("--workers", type=int, default=8, help="[conductor] power_sync_workers")
    p.add_argument("--json", help="write raw figures here")
    args = p.parse_args()
    results = [measure(int(n), args) for n in args.sizes.split(",")]
    print(f"\npower sync pass, {args.emulators} emulator(s), {args.workers} workers, median of {args.runs} passes")
    header = ("nodes", "pass s", "ms/node", "conductor CPU", "busiest emulator CPU", "limited by")
    widths = (6, 8, 8, 14, 21, 11)
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    for r in results:
        print(
            f"{r['nodes']:>6} {r['wall_s']:>8.2f} {r['ms_per_node']:>8.2f} {100 * r['conductor_cpu_share']:>13.0f}% "
            f"{100 * r['busiest_emulator_cpu_share']:>20.0f}% {r['limited_by']:>11}"
        )
    big = results[-1]
    print(f"\ntarget: a full pass of 1,000 nodes <= 60 s; measured {big['wall_s']:.2f} s for {big['nodes']} nodes")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
