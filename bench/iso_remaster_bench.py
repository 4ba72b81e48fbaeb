"""Remastering a ~700 MB hybrid ISO with injected kernel parameters, against a plain ``cp`` of it.

The ISO (isolinux for BIOS, a FAT EFI image whose grub.cfg has a ``linux`` line, boot/grub/grub.cfg,
isohybrid MBR + GPT, Rock Ridge + Joliet, and a random filler file for the bulk) is built once with
xorriso and cached in /var/cache/ironworks-tests/bench-iso/. Each run, in alternating order:

* ``cp``        ``/bin/cp SRC NEW`` (coreutils copies with copy_file_range, in the kernel);
* ``remaster``  ``ironworks.images.iso.remaster(SRC, NEW, params)`` in a fresh child interpreter,
                which reports the call's time and its peak RSS (VmHWM): the in-place path;
* ``xorriso``   the same with an extra file (network_data.json), which forces the xorriso rewrite
                (``-boot_image any replay``): for comparison. xorriso's own peak RSS is measured once
                more at the end, polling its /proc status while it runs.

Before each timed operation: ``sync`` and, as root, ``echo 3 > /proc/sys/vm/drop_caches`` (the
source is read from disk every time). Nothing is fsynced, as ``cp`` does not. Targets: remaster
<= 1.2x cp, peak RSS <= 100 MB. Reports medians and ratios of one invocation; judges nothing
(exit 1 only when something breaks).

    .venv/bin/python bench/iso_remaster_bench.py [--size-mib 700] [--runs 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CACHE = Path("/var/cache/ironworks-tests/bench-iso")
PARAMS = ["ipa-api-url=http://192.0.2.1:6385", "ipa-agent-token=0123456789abcdef0123456789abcdef", "nomodeset"]
MIB = 1 << 20
MT_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def build_iso(size_mib: int) -> Path:
    """The cached bench ISO of about ``size_mib`` MiB (built once)."""
    iso = CACHE / f"bench-{size_mib}m.iso"
    if iso.is_file():
        return iso
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        root = Path(tmp) / "root"
        for d in ("isolinux", "boot/grub", "install", "pool"):
            (root / d).mkdir(parents=True)
        (root / "install/vmlinuz").write_bytes(os.urandom(8 * MIB))
        (root / "install/initrd.gz").write_bytes(os.urandom(40 * MIB))
        with (root / "pool/filler.bin").open("wb") as f:
            for _ in range(max(1, size_mib - 52)):
                f.write(os.urandom(MIB))
        (root / "isolinux/isolinux.bin").write_bytes(Path("/usr/lib/ISOLINUX/isolinux.bin").read_bytes())
        (root / "isolinux/isolinux.cfg").write_text(
            "default install\nlabel install\n  kernel /install/vmlinuz\n  append initrd=/install/initrd.gz --- quiet\n"
        )
        grub = 'menuentry "Install" {\n  linux /install/vmlinuz --- quiet\n  initrd /install/initrd.gz\n}\n'
        (root / "boot/grub/grub.cfg").write_text(grub)
        efi = root / "boot/grub/efi.img"
        subprocess.run(["mkfs.fat", "-C", str(efi), "4096"], check=True, capture_output=True)
        subprocess.run(["mmd", "-i", str(efi), "::/EFI", "::/EFI/BOOT"], check=True, env=MT_ENV)
        local = Path(tmp) / "f"
        for name, data in (("BOOTX64.EFI", os.urandom(2 * MIB)), ("grub.cfg", grub.encode())):
            local.write_bytes(data)
            subprocess.run(["mcopy", "-i", str(efi), str(local), f"::/EFI/BOOT/{name}"], check=True, env=MT_ENV)
        part = iso.with_name(iso.name + ".part")
        subprocess.run(
            ["xorriso", "-as", "mkisofs", "-quiet", "-o", str(part), "-R", "-J", "-V", "BENCH",
             "-isohybrid-mbr", "/usr/lib/ISOLINUX/isohdpfx.bin", "-b", "isolinux/isolinux.bin",
             "-c", "isolinux/boot.cat", "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
             "-eltorito-alt-boot", "-e", "boot/grub/efi.img", "-no-emul-boot", "-isohybrid-gpt-basdat", str(root)],
            check=True, capture_output=True,
        )  # fmt: skip
        part.replace(iso)
    return iso


def drop_caches() -> bool:
    """``sync`` and drop the page cache (root only); whether it was dropped."""
    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def child(src: str, dest: str, workdir: str, mode: str) -> None:
    """In a fresh interpreter: one remaster, then its time and peak RSS as JSON on stdout."""
    from ironworks.images.iso import remaster

    extra = {"openstack/latest/network_data.json": b'{"links": []}'} if mode == "xorriso" else None
    started = time.perf_counter()
    report = remaster(Path(src), Path(dest), PARAMS, extra_files=extra, workdir=Path(workdir))
    seconds = time.perf_counter() - started
    status = Path("/proc/self/status").read_text()
    hwm_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
    print(
        json.dumps({"s": seconds, "hwm_mb": hwm_kib * 1024 / 1e6, "method": report.method, "changed": report.changed})
    )


def run_remaster(src: Path, dest: Path, workdir: Path, mode: str) -> dict[str, Any]:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(src), str(dest), str(workdir), mode],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"remaster ({mode}) failed: {proc.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_s"] = wall
    expected = "in-place" if mode == "remaster" else "xorriso"
    if out["method"] != expected or len(out["changed"]) != 3:
        raise RuntimeError(f"remaster ({mode}) ran {out['method']} and changed {out['changed']}")
    return out


def xorriso_rss(src: Path, dest: Path, workdir: Path) -> float:
    """Peak RSS (MB) of the xorriso rewrite that ``remaster`` runs, polled from /proc while it runs.

    Measured apart because a child's ru_maxrss includes the forking Python's RSS at exec time.
    """
    nd = workdir / "nd.json"
    workdir.mkdir(parents=True, exist_ok=True)
    nd.write_bytes(b'{"links": []}')
    argv = ["xorriso", "-abort_on", "FAILURE", "-indev", str(src), "-outdev", str(dest), "-boot_image", "any",
            "replay", "-joliet", "on", "-map", str(nd), "/openstack/latest/network_data.json"]  # fmt: skip
    peak = 0
    with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM:"))
                peak = max(peak, int(line.split()[1]))
            except (OSError, StopIteration):
                pass
            time.sleep(0.02)
    if proc.returncode != 0:
        raise RuntimeError(f"xorriso failed with exit {proc.returncode}")
    return peak * 1024 / 1e6


def run_cp(src: Path, dest: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["/bin/cp", str(src), str(dest)], check=True)
    return time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=700)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return 0
    src = build_iso(args.size_mib)
    print(f"ISO {src}: {src.stat().st_size / 1e6:.0f} MB; {args.runs} runs; load {os.getloadavg()[0]:.2f}")
    samples: dict[str, list[Any]] = {"cp": [], "remaster": [], "xorriso": []}
    dropped = True
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="run-") as tmp:
        out, work = Path(tmp) / "out.iso", Path(tmp) / "work"
        for run in range(args.runs):
            order = ["cp", "remaster", "xorriso"] if run % 2 == 0 else ["remaster", "cp", "xorriso"]
            for what in order:
                dropped = drop_caches() and dropped
                if what == "cp":
                    samples["cp"].append(run_cp(src, out))
                else:
                    samples[what].append(run_remaster(src, out, work, what))
                out.unlink()
            cp_s, rm, xo = samples["cp"][-1], samples["remaster"][-1], samples["xorriso"][-1]
            print(f"run {run + 1}: cp {cp_s:.2f} s  remaster {rm['s']:.2f} s (process {rm['wall_s']:.2f} s, "
                  f"{rm['hwm_mb']:.1f} MB)  xorriso {xo['s']:.2f} s ({xo['hwm_mb']:.1f} MB)", flush=True)  # fmt: skip
        tool_mb = xorriso_rss(src, out, work)
        out.unlink()
    cp_med = statistics.median(samples["cp"])
    rm_med = statistics.median(r["s"] for r in samples["remaster"])
    rm_wall = statistics.median(r["wall_s"] for r in samples["remaster"])
    xo_med = statistics.median(r["s"] for r in samples["xorriso"])
    result = {
        "iso_mb": src.stat().st_size / 1e6,
        "runs": args.runs,
        "page_cache_dropped": dropped,
        "cp_s": cp_med,
        "remaster_s": rm_med,
        "remaster_process_s": rm_wall,
        "ratio": rm_med / cp_med,
        "ratio_process": rm_wall / cp_med,
        "remaster_peak_rss_mb": max(r["hwm_mb"] for r in samples["remaster"]),
        "xorriso_s": xo_med,
        "xorriso_ratio": xo_med / cp_med,
        "xorriso_python_peak_rss_mb": max(r["hwm_mb"] for r in samples["xorriso"]),
        "xorriso_tool_peak_rss_mb": tool_mb,
        "samples": samples,
    }
    print(f"\nmedians: cp {cp_med:.2f} s | remaster {rm_med:.2f} s = {result['ratio']:.2f}x cp "
          f"(with interpreter start {rm_wall:.2f} s = {result['ratio_process']:.2f}x; target <= 1.2x), peak RSS "
          f"{result['remaster_peak_rss_mb']:.1f} MB (target <= 100) | xorriso fallback {xo_med:.2f} s = "
          f"{result['xorriso_ratio']:.2f}x, RSS {result['xorriso_python_peak_rss_mb']:.1f} MB + xorriso "
          f"{result['xorriso_tool_peak_rss_mb']:.1f} MB")  # fmt: skip
    if not dropped:
        print("page cache NOT dropped (not root): the source may have been read from memory")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        sys.exit(1)
