"""Burn-in: load CPUs and memory with stress-ng, and disks with a verifying fio run, to catch a
flaky component before a tenant gets the machine.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Sequence
from typing import Any

from ironworks.agent import devices
from ironworks.agent.errors import AgentError

_METRIC = re.compile(
    r"stress-ng: \w+:\s+\[\d+\]\s+(?P<stressor>[\w-]+)\s+(?P<ops>\d+)\s+(?P<real>[\d.]+)\s+(?P<usr>[\d.]+)\s+"
    r"(?P<sys>[\d.]+)\s+(?P<rate_real>[\d.]+)\s+(?P<rate_cpu>[\d.]+)"
)


def parse_stress_ng(output: str) -> dict[str, dict[str, float]]:
    """Per-stressor figures from ``stress-ng --metrics-brief`` output."""
    found = {}
    for m in _METRIC.finditer(output):
        found[m.group("stressor")] = {
            "bogo_ops": float(m.group("ops")),
            "real_time": float(m.group("real")),
            "bogo_ops_per_second": float(m.group("rate_real")),
        }
    return found


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _run(argv: list[str], *, timeout: float, what: str) -> str:
    try:
        proc = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise AgentError(f"{argv[0]} is not installed in the ramdisk: cannot run the {what} burn-in") from exc
    except subprocess.TimeoutExpired as exc:
        raise AgentError(f"the {what} burn-in did not end within {timeout:g} s") from exc
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AgentError(f"the {what} burn-in failed (exit {proc.returncode}):\n{_tail(out)}", output_tail=_tail(out))
    return out


def _stress(args: list[str], *, timeout: int, what: str, stressor: str) -> dict[str, Any]:
    argv = ["stress-ng", *args, "--timeout", f"{timeout}s", "--metrics-brief"]
    out = _run(argv, timeout=timeout + 60, what=what)
    metrics = parse_stress_ng(out)
    if stressor not in metrics:
        raise AgentError(f"the {what} burn-in printed no metrics:\n{_tail(out)}", output_tail=_tail(out))
    return {"tool": "stress-ng", "seconds": timeout, **metrics[stressor]}


def burnin_cpu(*, timeout: int = 60) -> dict[str, Any]:
    """Load every CPU for ``timeout`` seconds."""
    return _stress(["--cpu", "0"], timeout=timeout, what="CPU", stressor="cpu")


def burnin_memory(*, timeout: int = 60, vm_bytes: str = "75%") -> dict[str, Any]:
    """Write and check ``vm_bytes`` of memory (a size or a share of the memory) for ``timeout`` seconds."""
    return _stress(["--vm", "1", "--vm-bytes", vm_bytes, "--verify"], timeout=timeout, what="memory", stressor="vm")


def parse_fio(output: str) -> dict[str, dict[str, Any]]:
    """Per-job figures (and error code) from ``fio --output-format=json``."""
    data = json.loads(output[output.index("{") :])
    jobs = {}
    for job in data.get("jobs", []):
        jobs[job["jobname"]] = {
            "error": int(job.get("error", 0)),
            "read_iops": float(job["read"]["iops"]),
            "write_iops": float(job["write"]["iops"]),
            "read_bytes_per_second": int(job["read"]["bw_bytes"]),
            "write_bytes_per_second": int(job["write"]["bw_bytes"]),
        }
    return jobs


def burnin_disk(devices_: Sequence[str], *, runtime: int = 60, allowlist: list[str] | None = None) -> dict[str, Any]:
    """Random read/write with checksum verification on every device at once (destroys their data)."""
    for dev in devices_:
        devices.check_allowed(dev, allowlist)
    if not devices_:
        return {}
    argv = [
        "fio", "--rw=randrw", "--bs=4k", "--ioengine=libaio", "--iodepth=16", "--direct=1",
        "--verify=crc32c", "--verify_backlog=1024", "--verify_fatal=1", "--verify_state_save=0",
        f"--runtime={runtime}", "--time_based", "--output-format=json",
    ]  # fmt: skip
    for dev in devices_:
        argv += [f"--name={dev}", f"--filename={dev}"]
    out = _run(argv, timeout=runtime + 120, what="disk")
    try:
        jobs = parse_fio(out)
    except (ValueError, KeyError) as exc:
        raise AgentError(f"could not read fio's report:\n{_tail(out)}", output_tail=_tail(out)) from exc
    bad = [f"{name}: error {job['error']}" for name, job in jobs.items() if job["error"]]
    if bad or set(jobs) != set(devices_):
        raise AgentError(f"the disk burn-in found errors ({'; '.join(bad)}):\n{_tail(out)}", output_tail=_tail(out))
    return jobs
