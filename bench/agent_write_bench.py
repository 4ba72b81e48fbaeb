"""Image write throughput of the agent onto a loop device, against the tools it competes with.

A random raw image of ``--size-mib`` is served over HTTP on 127.0.0.1 and written onto a loop device
(over a file in a temp dir outside the repo) by, alternately within each run:

* ``agent raw``   ``image.write_image`` (disk_format raw, sha256 verified), in a child process whose
                  peak RSS (VmHWM) is reported;
* ``curl|dd``     ``curl -s URL | dd of=DEV bs=4M iflag=fullblock oflag=direct conv=fsync``: the
                  baseline, a plain streaming copy that hashes nothing (so it is the harder one to beat);
* ``agent qcow2`` ``write_image`` on the same data as qcow2 (made by ``qemu-img convert -O qcow2``),
                  in a child process too: streamed like raw (download -> hash thread -> decode +
                  ``O_DIRECT`` write thread), only the data clusters written, the rest zeroed;
* ``qemu-img``    ``qemu-img convert -t none -W -n`` of that qcow2 from a local file alone: no
                  download, no hash (the write stage alone, with several writes in flight).

    .venv/bin/python bench/agent_write_bench.py [--size-mib 2048] [--runs 3] [--only raw|qcow2] [--json out.json]

``--only raw`` runs just ``agent raw`` and ``curl|dd`` (``--only qcow2``: ``agent qcow2`` and ``qemu-img``).

Targets: agent raw >= 0.9x curl|dd, agent qcow2 >= 0.9x qemu-img, peak RSS <= 100 MB. It reports
medians and ratios of one invocation and judges nothing. Needs root (losetup).
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ironworks.agent import image  # noqa: E402

MIB = 1 << 20


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Sendfile(_Quiet):
    """Sends file bodies with sendfile(2), as nginx or Apache serve images: the copy through user
    space that SimpleHTTPRequestHandler does costs ~0.55 CPU s/GiB on the two cores the writer under
    test also needs, which the local-file qemu-img baseline never pays."""

    def copyfile(self, source: Any, outputfile: Any) -> None:
        outputfile.flush()
        size, offset = os.fstat(source.fileno()).st_size, 0
        while offset < size:
            sent = os.sendfile(self.connection.fileno(), source.fileno(), offset, size - offset)
            if not sent:
                break
            offset += sent


def _agent_child(info: dict[str, Any], dev: str, tmp_dir: str, conn: Any) -> None:
    result = image.write_image(info, dev, progress=lambda d, t: None, allowlist=[dev], tmp_dir=tmp_dir)
    hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM"))
    conn.send((result, int(hwm.split()[1]) * 1024))


def _agent(info: dict[str, Any], dev: str, tmp_dir: str) -> tuple[float, int]:
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: VmHWM is the write's own peak
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_agent_child, args=(info, dev, tmp_dir, child))
    proc.start()
    child.close()  # only the child holds its end now: if it dies, recv() sees EOF instead of hanging
    try:
        result, hwm = parent.recv()
    except EOFError:
        proc.join()
        raise SystemExit(f"the agent's write process died (exit code {proc.exitcode}) before reporting") from None
    proc.join()
    return float(result["seconds"]), hwm  # write_image's own clock: interpreter start-up is not the write


def _timed(argv: str | list[str], *, shell: bool = False) -> float:
    started = time.monotonic()
    subprocess.run(argv, shell=shell, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - started


def _drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", choices=["raw", "qcow2"], help="run only this pair of writers")
    ap.add_argument("--json")
    ap.add_argument(
        "--server",
        choices=["sendfile", "python"],
        default="sendfile",
        help="how the loopback HTTP server sends the image: sendfile(2) like nginx (default), or Python's copy",
    )
    args = ap.parse_args()
    size = args.size_mib * MIB
    tmp = tempfile.mkdtemp(prefix="ironworks-write-bench-")
    www = Path(tmp, "www")
    www.mkdir()
    raw, qcow = www / "disk.raw", www / "disk.qcow2"
    with open(raw, "wb") as f:
        for _ in range(args.size_mib):
            f.write(os.urandom(MIB))
    if args.only != "raw":
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow], check=True)
    backing = Path(tmp, "target.img")
    with open(backing, "wb") as f:
        f.truncate(size + 64 * MIB)
    dev = subprocess.run(["losetup", "--find", "--show", backing], capture_output=True, text=True, check=True)
    loop = dev.stdout.strip()
    handler = _Sendfile if args.server == "sendfile" else _Quiet
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    pairs = {"raw": ["agent raw", "curl|dd"], "qcow2": ["agent qcow2", "qemu-img"]}
    names = pairs[args.only] if args.only else [*pairs["raw"], *pairs["qcow2"]]
    figures: dict[str, list[float]] = {name: [] for name in names}
    hwms: list[int] = []
    try:
        digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (raw, qcow) if p.exists()}
        for run in range(args.runs):
            for name in figures:
                _drop_caches()
                if name == "agent raw":
                    info = {"id": "b", "urls": [f"{base}/disk.raw"], "disk_format": "raw", "checksum": digest[raw]}
                    secs, hwm = _agent(info, loop, tmp)
                    hwms.append(hwm)
                elif name == "agent qcow2":
                    info = {"id": "q", "urls": [f"{base}/disk.qcow2"], "disk_format": "qcow2", "checksum": digest[qcow]}
                    secs, hwm = _agent(info, loop, tmp)
                    hwms.append(hwm)
                elif name == "curl|dd":
                    cmd = f"curl -sS {base}/disk.raw | dd of={loop} bs=4M iflag=fullblock oflag=direct conv=fsync"
                    secs = _timed(["bash", "-o", "pipefail", "-c", cmd])
                else:
                    argv = [
                        "qemu-img",
                        "convert",
                        "-f",
                        "qcow2",
                        "-O",
                        "raw",
                        "-t",
                        "none",
                        "-W",
                        "-n",
                        str(qcow),
                        loop,
                    ]
                    secs = _timed(argv)
                figures[name].append(secs)
                print(f"run {run + 1} {name:12} {secs:7.2f} s  {size / MIB / secs:7.0f} MiB/s", flush=True)
    finally:
        server.shutdown()
        server.server_close()
        subprocess.run(["losetup", "-d", loop], check=False)
        subprocess.run(["rm", "-rf", tmp], check=False)
    med = {k: statistics.median(v) for k, v in figures.items()}
    print(f"\n{args.size_mib} MiB, {args.runs} runs, medians:")
    for k, v in med.items():
        print(f"  {k:12} {v:7.2f} s  {size / MIB / v:7.0f} MiB/s")
    if "agent raw" in med:
        print(f"  agent raw / curl|dd throughput  {med['curl|dd'] / med['agent raw']:.2f}x (target >= 0.9)")
    if "agent qcow2" in med:
        print(f"  agent qcow2 / qemu-img          {med['qemu-img'] / med['agent qcow2']:.2f}x (target >= 0.9)")
    print(f"  agent peak RSS (VmHWM, max)     {max(hwms) / 1e6:.1f} MB (target <= 100)")
    if args.json:
        Path(args.json).write_text(json.dumps({"size_mib": args.size_mib, "seconds": figures, "vmhwm": hwms}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
