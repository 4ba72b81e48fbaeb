"""Ramdisk size and build time: ``ironworks ramdisk build`` at one or more zstd levels.

For each level it builds ``--runs`` times (the download cache is shared, so after the first run
this measures assembling and compressing, not downloading) and reports the compressed size, the
uncompressed size, the ratio, the median build time, and the largest parts of the ramdisk.

    .venv/bin/python bench/ramdisk_size.py [--levels 3,19] [--runs 1] [--cache DIR] [--json out.json]

Target (issue 5): initramfs <= 60 MB. Nothing here asserts a time; it reports.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET = 60 * 1000 * 1000


def build_once(level: int, cache: Path) -> dict[str, Any]:
    """One build into a temporary directory; its manifest figures and wall time."""
    with tempfile.TemporaryDirectory(prefix="ramdisk-bench-") as out:
        argv = [str(ROOT / ".venv/bin/ironworks"), "ramdisk", "build", "--output", out, "--cache", str(cache),
                "--compression-level", str(level)]  # fmt: skip
        started = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        wall = time.monotonic() - started
        if proc.returncode != 0:
            raise SystemExit(f"build failed at level {level}:\n{proc.stderr[-2000:]}")
        manifest = json.loads((Path(out) / "manifest.json").read_text())
    return {
        "level": level,
        "wall_s": round(wall, 1),
        "size": manifest["initramfs"]["size"],
        "uncompressed": manifest["initramfs"]["uncompressed_size"],
        "kernel": manifest["kernel"]["size"],
        "parts": manifest["sizes_uncompressed"],
    }


def main() -> int:
    """Run the builds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="19", help="comma-separated zstd levels (default 19)")
    parser.add_argument("--runs", type=int, default=1, help="builds per level (default 1)")
    parser.add_argument("--cache", type=Path, default=Path("/var/cache/ironworks-tests/ramdisk"))
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    levels = [int(v) for v in args.levels.split(",") if v.strip()]
    results = [build_once(level, args.cache) for level in levels for _ in range(args.runs)]
    print(f"{'level':>5} {'initramfs MB':>12} {'uncompressed MB':>15} {'ratio':>6} {'build s (median)':>16}  target")
    for level in levels:
        rows = [r for r in results if r["level"] == level]
        size = statistics.median(r["size"] for r in rows)
        raw = statistics.median(r["uncompressed"] for r in rows)
        wall = statistics.median(r["wall_s"] for r in rows)
        verdict = "within" if size <= TARGET else "OVER"
        print(f"{level:>5} {size / 1e6:>12.1f} {raw / 1e6:>15.1f} {raw / size:>6.2f} {wall:>16.1f}  {verdict} 60 MB")
    print("largest parts (uncompressed MB):")
    parts = sorted(results[-1]["parts"].items(), key=lambda kv: -kv[1])
    for name, size in parts[:12]:
        print(f"  {size / 1e6:6.1f}  {name}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
