"""Burn-in: load CPUs and memory with stress-ng, disks with a verifying fio run, and the network
with fio's ``net`` engine between two agents (a reader that listens, a writer that connects, as IPA
pairs them), to catch a flaky component before a tenant gets the machine.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
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


#: fio's error number for a refused connection (ECONNREFUSED): the reader is not listening yet
_ECONNREFUSED = 111
_SIZE = re.compile(r"^[1-9][0-9]*[kKmMgGtT]?$")
_HOST = re.compile(r"^[A-Za-z0-9._:-]{1,253}$")
NETWORK_PORT = 9000
NETWORK_PARTNER_TIMEOUT = 300
#: seconds fio may take beyond its runtime (start-up, the last transfer) before it counts as hung
NETWORK_GRACE = 10


def _net_job(output: str) -> dict[str, Any]:
    data = json.loads(output[output.index("{") :])
    job = data["jobs"][0]
    return {
        "error": int(job.get("error", 0)),
        "read_bytes": int(job["read"]["io_bytes"]),
        "write_bytes": int(job["write"]["io_bytes"]),
        "read_bytes_per_second": int(job["read"]["bw_bytes"]),
        "write_bytes_per_second": int(job["write"]["bw_bytes"]),
        "elapsed": float(job.get("elapsed", 0)),
    }


def _check_network_args(role: str, partner: str | None, port: int, runtime: int, timeout: int, size: str) -> None:
    problems = []
    if role not in ("reader", "writer"):
        problems.append(f"role must be 'reader' (listens) or 'writer' (connects to the partner), not {role!r}")
    if role == "writer" and not partner:
        problems.append("a writer needs 'partner': the host name or address of the agent running the reader")
    if partner is not None and not _HOST.match(partner):
        problems.append(f"partner {partner!r} is not a host name or an IP address")
    if not 0 < port < 65536:
        problems.append(f"port must be 1-65535, not {port}")
    if runtime <= 0 or timeout <= 0:
        problems.append("runtime and timeout must be more than 0 seconds")
    if not _SIZE.match(size):
        problems.append(f"size must be a fio size such as 64m or 1g, not {size!r}")
    if problems:
        raise AgentError(f"burnin_network: {'; '.join(problems)}")


def burnin_network(
    *,
    role: str,
    partner: str | None = None,
    port: int = NETWORK_PORT,
    runtime: int = 60,
    timeout: int = NETWORK_PARTNER_TIMEOUT,
    size: str = "1g",
) -> dict[str, Any]:
    """Stream TCP traffic with fio between two agents for ``runtime`` seconds; both report throughput.

    The reader listens on ``port`` and waits up to ``timeout`` seconds for its writer. The writer
    connects to ``partner:port``, retrying while the reader is not listening yet (the two steps
    start independently), for up to ``timeout`` seconds.
    """
    _check_network_args(role, partner, port, runtime, timeout, size)
    argv = [
        "fio", f"--name={role}", "--ioengine=net", "--protocol=tcp", f"--port={port}", "--bs=64k",
        f"--size={size}", "--time_based", f"--runtime={runtime}", "--output-format=json",
    ]  # fmt: skip
    if role == "reader":
        argv += ["--listen", "--rw=read"]
        grace = NETWORK_GRACE + runtime // 10
        job = _network_run(argv, bound=timeout + runtime + grace, role=role, port=port, partner=partner)
    else:
        argv += [f"--hostname={partner}", "--rw=write"]
        deadline = time.monotonic() + timeout
        while True:
            bound = runtime + NETWORK_GRACE + runtime // 10
            job = _network_run(argv, bound=bound, role=role, port=port, partner=partner, refused_ok=True)
            if job["error"] != _ECONNREFUSED:
                break
            if time.monotonic() > deadline:
                raise AgentError(
                    f"the network burn-in's reader at {partner}:{port} refused the connection for {timeout} s: "
                    "start burnin_network with role 'reader' on the partner (and check its address and port)"
                )
            time.sleep(1.0)
    moved = job["read_bytes"] if role == "reader" else job["write_bytes"]
    rate = job["read_bytes_per_second"] if role == "reader" else job["write_bytes_per_second"]
    if moved == 0:
        raise AgentError(f"the network burn-in ({role}, port {port}) moved no data: the partner closed at once")
    return {
        "tool": "fio", "role": role, "partner": partner, "port": port, "bytes": moved,
        "bytes_per_second": rate, "seconds": job["elapsed"],
    }  # fmt: skip


def _network_run(
    argv: list[str], *, bound: float, role: str, port: int, partner: str | None, refused_ok: bool = False
) -> dict[str, Any]:
    """One fio run; its job figures (a refused connection is returned, not raised, when ``refused_ok``)."""
    try:
        proc = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=bound, check=False
        )
    except FileNotFoundError as exc:
        raise AgentError("fio is not installed in the ramdisk: cannot run the network burn-in") from exc
    except subprocess.TimeoutExpired as exc:
        waited = "no writer connected to port" if role == "reader" else "the transfer to"
        where = f"{port}" if role == "reader" else f"{partner}:{port}"
        raise AgentError(f"the network burn-in did not end within {bound:g} s: {waited} {where}") from exc
    out = proc.stdout + proc.stderr
    try:
        job = _net_job(proc.stdout)
    except (ValueError, KeyError, IndexError) as exc:
        raise AgentError(f"could not read fio's report:\n{_tail(out)}", output_tail=_tail(out)) from exc
    if job["error"] == _ECONNREFUSED and refused_ok:
        return job
    if proc.returncode != 0 or job["error"]:
        raise AgentError(
            f"the network burn-in ({role}) failed (exit {proc.returncode}, error {job['error']}):\n{_tail(out)}",
            output_tail=_tail(out),
        )
    return job
