"""One ramdisk build: packages -> tree -> zstd cpio, the kernel beside it, the ISO, ``manifest.json``.

Reproducible: the same packages, options and builder give a byte-identical initramfs (sorted cpio
members, every mtime = SOURCE_DATE_EPOCH or else the newest file of the packages, owner 0, zstd at
a fixed level, whose multi-threaded output does not depend on the number of threads: checked, -T1
and -T2 give the same bytes). The cpio is piped into zstd, so the frame records no content size;
recompressing the unpacked cpio from a file gives other (equally valid) bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ironworks
from ironworks.ramdisk import RamdiskBuildError, cpio, debs, iso, modules, rootfs
from ironworks.ramdisk.tree import Node, Staging, Tree

#: the Debian packages every ramdisk carries: the shell, Python and the tools the agent's steps run
BASE_PACKAGES: tuple[str, ...] = (
    "busybox-static", "python3", "bash", "coreutils", "util-linux", "fdisk", "gdisk", "kmod", "iproute2",
    "qemu-utils", "hdparm", "nvme-cli", "stress-ng", "fio", "ipmitool", "dmidecode", "dosfstools",
    "tar", "gzip", "openssl", "passwd", "ca-certificates", "openssh-server",
)  # fmt: skip
#: base packages a build may leave out (``--without``), and the tools they ship, then not required
OPTIONAL_PACKAGES: dict[str, tuple[str, ...]] = {
    "fio": ("fio",),
    "stress-ng": ("stress-ng",),
    "qemu-utils": ("qemu-img",),
    "ipmitool": ("ipmitool",),
    "nvme-cli": ("nvme",),
    "hdparm": ("hdparm",),
    "dmidecode": ("dmidecode",),
    "openssh-server": ("sshd",),  # SSH in rescue; without it, console logins only
}
KERNEL_META = "linux-image-amd64"
KERNEL_NAME = "ironworks-agent.kernel"
INITRAMFS_NAME = "ironworks-agent.initramfs"
ISO_NAME = "ironworks-agent.iso"
MANIFEST_NAME = "manifest.json"
DEFAULT_LEVEL = 19
SIZE_TARGET = 60 * 1000 * 1000


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    """What ``ironworks ramdisk build`` was asked for."""

    output: Path
    cache: Path
    kernel_deb: Path | None = None
    extra_packages: tuple[str, ...] = ()
    without: tuple[str, ...] = ()
    extra_modules: tuple[str, ...] = ()
    overlay: Path | None = None
    iso: bool = False
    kernel_params: tuple[str, ...] = ()
    compression_level: int = DEFAULT_LEVEL
    source_date_epoch: int | None = None


@dataclass
class BuildResult:
    """What was built and what it weighs; ``manifest`` is what manifest.json holds."""

    output: Path
    manifest: dict[str, Any]
    seconds: float
    groups: dict[str, int] = field(default_factory=dict)


Progress = Callable[[str], None]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_info(path: Path) -> dict[str, Any]:
    return {"file": path.name, "size": path.stat().st_size, "sha256": _sha256(path)}


def _check_options(opts: BuildOptions) -> None:
    if not 1 <= opts.compression_level <= 22:
        raise RamdiskBuildError(f"--compression-level must be 1-22 (zstd), got {opts.compression_level}")
    if opts.kernel_deb is not None and not opts.kernel_deb.is_file():
        raise RamdiskBuildError(f"--kernel-deb {opts.kernel_deb} is not a file; give the path of a linux-image .deb")
    for p in opts.kernel_params:
        if not p.strip() or any(c in p for c in "\n\r\"'"):
            raise RamdiskBuildError(f"--kernel-param {p!r} must be one word without quotes or newlines")
    bad = [p for p in opts.without if p not in OPTIONAL_PACKAGES]
    if bad:
        raise RamdiskBuildError(
            f"--without {', '.join(bad)}: only these base packages may be left out: {', '.join(OPTIONAL_PACKAGES)}"
        )
    if opts.iso:
        iso.check_tools()


def _zstd_version(zstd: str) -> str:
    proc = subprocess.run([zstd, "--version"], capture_output=True, text=True, check=False)
    return proc.stdout.strip()


def build(opts: BuildOptions, *, progress: Progress = lambda _msg: None) -> BuildResult:
    """Build the kernel, initramfs (and ISO) into ``opts.output``; nothing is left half-written there."""
    started = time.monotonic()
    _check_options(opts)
    zstd = debs.require_tool("zstd", "zstd")
    apt = debs.Apt(opts.cache)
    opts.output.mkdir(parents=True, exist_ok=True)
    opts.cache.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="build-", dir=opts.cache))
    try:
        return _build(opts, apt, zstd, workdir, started, progress)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _kernel(opts: BuildOptions, apt: debs.Apt, progress: Progress) -> tuple[Path, dict[str, Any]]:
    if opts.kernel_deb is not None:
        deb = opts.kernel_deb
        info = {"package": debs.deb_field(deb, "Package"), "version": debs.deb_field(deb, "Version"),
                "deb": str(deb), "deb_sha256": _sha256(deb)}  # fmt: skip
    else:
        proc = subprocess.run(["apt-cache", "depends", KERNEL_META], capture_output=True, text=True, check=False)
        name = debs.kernel_package(proc.stdout, KERNEL_META)
        pkg = apt.show([name])[name]
        progress(f"kernel package {name} {pkg.version}")
        deb = apt.download([pkg])[name]
        info = {"package": name, "version": pkg.version, "deb": deb.name, "deb_sha256": pkg.sha256}
    if not info["package"].startswith("linux-image-"):
        raise RamdiskBuildError(f"{deb} is the package {info['package']}, not a linux-image-* kernel")
    return apt.unpack(deb), info


def _build(
    opts: BuildOptions, apt: debs.Apt, zstd: str, workdir: Path, started: float, progress: Progress
) -> BuildResult:
    base = [p for p in BASE_PACKAGES if p not in opts.without]
    roots = list(dict.fromkeys((*base, *opts.extra_packages)))
    progress(f"resolving the dependencies of {len(roots)} packages")
    graph = debs.parse_depends(apt.depends(roots))
    names = debs.resolve(roots, graph, skip=debs.SKIP_PACKAGES - set(roots))
    infos = apt.show(names)
    progress(f"{len(names)} packages; downloading the missing ones into {apt.debs}")
    files = apt.download(list(infos.values()))
    unpacked = {n: apt.unpack(files[n]) for n in names}
    kernel_root, kernel_info = _kernel(opts, apt, progress)
    kver = modules.kernel_version(kernel_root)
    vmlinuz = kernel_root / "boot" / f"vmlinuz-{kver}"
    if not vmlinuz.is_file():
        raise RamdiskBuildError(f"the kernel package has no boot/vmlinuz-{kver}")

    order = roots + [n for n in names if n not in roots]  # a payload package wins a path clash
    staging = Staging([(n, unpacked[n]) for n in order])
    epoch = opts.source_date_epoch if opts.source_date_epoch is not None else _newest(staging)

    progress("assembling the ramdisk tree")
    tree = Tree()
    rootfs.layout(tree)
    rootfs.add_payload(tree, staging, roots)
    rootfs.add_ca_bundle(tree, staging)
    version = rootfs.python_version(staging)
    rootfs.add_stdlib(tree, staging, version)
    rootfs.add_agent(tree)
    rootfs.add_scripts(tree)
    links = rootfs.add_busybox_links(tree, staging)
    mod_dir, selection = modules.stage_modules(
        kernel_root, kver, list(dict.fromkeys((*modules.DEFAULT_MODULES, *opts.extra_modules))), workdir / "kmod"
    )
    _add_dir(tree, mod_dir, f"usr/lib/modules/{kver}", package="linux-image")
    overlay_files = rootfs.add_overlay(tree, opts.overlay) if opts.overlay else 0
    libs = rootfs.libraries(tree, staging)
    tools = rootfs.missing_tools(tree)
    not_needed = {t for p in opts.without for t in OPTIONAL_PACKAGES[p]}
    missing = sorted(t for t, p in tools.items() if p is None and t not in not_needed)
    if missing:
        raise RamdiskBuildError(
            f"the ramdisk would lack {', '.join(missing)}; the packages no longer ship them where expected"
        )
    py = rootfs.check_agent_imports(tree, staging, version, workdir=workdir)

    progress(f"writing the initramfs ({len(tree.nodes)} entries, zstd -{opts.compression_level})")
    tmp_initrd = opts.output / f".{INITRAMFS_NAME}.tmp"
    raw_size = _write_initramfs(tree, tmp_initrd, zstd=zstd, level=opts.compression_level, epoch=epoch)
    tmp_kernel = opts.output / f".{KERNEL_NAME}.tmp"
    shutil.copyfile(vmlinuz, tmp_kernel)
    tmp_initrd.replace(opts.output / INITRAMFS_NAME)
    tmp_kernel.replace(opts.output / KERNEL_NAME)
    iso_info: dict[str, Any] | None = None
    if opts.iso:
        progress("building the ISO")
        out = iso.build_iso(opts.output / KERNEL_NAME, opts.output / INITRAMFS_NAME, opts.kernel_params,
                            opts.output / ISO_NAME, workdir=workdir, epoch=epoch)  # fmt: skip
        iso_info = {**_file_info(out), "kernel_params": list(opts.kernel_params),
                    "boot_configs": ["isolinux/isolinux.cfg", "boot/grub/grub.cfg",
                                     "images/efiboot.img::EFI/BOOT/grub.cfg"]}  # fmt: skip
    groups = size_groups(tree, version)
    manifest: dict[str, Any] = {
        "format": 1,
        "builder": f"ironworks {ironworks.__version__}",
        "kernel": {**_file_info(opts.output / KERNEL_NAME), "release": kver, **kernel_info},
        "initramfs": {
            **_file_info(opts.output / INITRAMFS_NAME),
            "uncompressed_size": raw_size,
            "entries": len(tree.nodes),
            "compression": f"zstd -{opts.compression_level}",
        },
        "iso": iso_info,
        "packages": [
            {"name": i.name, "version": i.version, "architecture": i.architecture, "sha256": i.sha256}
            for i in (infos[n] for n in names)
        ],
        "payload_packages": roots,
        "tools": tools,
        "modules": {
            "files": len(selection.paths),
            "builtin": list(selection.builtin),
            "missing": list(selection.missing),
        },
        "python": {"version": version, "agent_import_graph": len(py.modules), "precompiled": py.compiled},
        "libraries": len(libs),
        "busybox_links": links,
        "overlay_files": overlay_files,
        "sizes_uncompressed": groups,
        "inputs": {
            "source_date_epoch": epoch,
            "compression_level": opts.compression_level,
            "extra_packages": list(opts.extra_packages),
            "without": list(opts.without),
            "extra_modules": list(opts.extra_modules),
            "overlay": str(opts.overlay) if opts.overlay else None,
            "kernel_params": list(opts.kernel_params),
            "zstd": _zstd_version(zstd),
        },
    }
    seconds = time.monotonic() - started
    manifest["build_seconds"] = round(seconds, 1)
    tmp_manifest = opts.output / f".{MANIFEST_NAME}.tmp"
    tmp_manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp_manifest.replace(opts.output / MANIFEST_NAME)
    return BuildResult(output=opts.output, manifest=manifest, seconds=seconds, groups=groups)


def _newest(staging: Staging) -> int:
    """The newest mtime among the unpacked packages' files: a date the inputs fix."""
    newest = 0
    for _pkg, real in staging.index.values():
        st = real.lstat()
        if stat.S_ISREG(st.st_mode):  # a symlink's mtime is when it was unpacked, not the package's
            newest = max(newest, int(st.st_mtime))
    return newest


def _add_dir(tree: Tree, src: Path, dest: str, *, package: str) -> None:
    for path in sorted(src.rglob("*")):
        if path.is_file() and not path.is_symlink():
            rel = f"{dest}/{path.relative_to(src).as_posix()}"
            tree.add(rel, Node(0o100644, source=path, package=package))


def _write_initramfs(tree: Tree, out: Path, *, zstd: str, level: int, epoch: int) -> int:
    """The zstd-compressed cpio of ``tree``; returns the uncompressed size."""
    argv = [zstd, "-q", "-c", f"-{level}", "-T0"]
    if level > 19:
        argv.insert(1, "--ultra")
    with out.open("wb") as f:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=f, stderr=subprocess.PIPE)
        assert proc.stdin is not None
        try:
            size = cpio.write(tree.entries(), proc.stdin, mtime=epoch)
            proc.stdin.close()
        except BrokenPipeError:
            size = -1
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.wait() != 0 or size < 0:
            out.unlink(missing_ok=True)
            raise RamdiskBuildError(f"zstd failed (exit {proc.returncode}): {err.strip()[-300:]}")
    return size


def size_groups(tree: Tree, version: str) -> dict[str, int]:
    """Uncompressed bytes per part of the ramdisk: Python, kernel modules, the agent, each package's share."""
    groups: dict[str, int] = {}
    py_prefix = f"usr/lib/python{version}/"
    for path, node in tree.nodes.items():
        if path.startswith(py_prefix):
            key = "python stdlib"
        elif path.startswith("usr/lib/modules/"):
            key = "kernel modules"
        else:
            key = node.package or "layout"
        groups[key] = groups.get(key, 0) + node.size
    return dict(sorted(groups.items(), key=lambda kv: -kv[1]))


def default_cache() -> Path:
    """``~/.cache/ironworks/ramdisk``."""
    return Path(os.path.expanduser("~/.cache/ironworks/ramdisk"))
