"""Assembling the ramdisk's tree: layout, package payloads, Python, busybox, the agent, /init.

Payload packages (the tools asked for) bring their files minus docs and the like; the Python
standard library comes pruned, checked against the agent's import graph; dependency packages
bring only the shared libraries some ELF file in the tree actually needs.
"""

from __future__ import annotations

import importlib.resources
import json
import modulefinder
import os
import posixpath
import stat
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ironworks
from ironworks.ramdisk import RamdiskBuildError
from ironworks.ramdisk.tree import PAYLOAD_PRUNE, PYTHON_PRUNE, Node, Staging, Tree, add_libraries

SITE_DIR = "usr/lib/python3/dist-packages"
#: programs the agent's steps and /init run: a build without one of them fails
REQUIRED_TOOLS = (
    "sh", "bash", "python3", "udhcpc", "ip", "modprobe", "mount", "poweroff", "reboot", "sync", "setsid",
    "qemu-img", "sgdisk", "sfdisk", "lsblk", "blkid", "wipefs", "partx", "prlimit", "dmesg", "shred",
    "hdparm", "nvme", "stress-ng", "fio", "ipmitool", "dmidecode", "mkfs.vfat", "tar", "gzip", "sha256sum",
    "openssl", "chpasswd", "getty", "login", "chown", "grep", "sshd",
)  # fmt: skip
#: password logins for the rescue user only; no PAM in the ramdisk (crypt() against /etc/shadow)
SSHD_CONFIG = """\
# Ironworks rescue ramdisk: /init starts sshd once rescue.finalize_rescue has set the rescue password
Port 22
HostKey /run/ironworks-ssh/ssh_host_ecdsa_key
PidFile /run/sshd.pid
UsePAM no
AllowUsers rescue
PermitRootLogin no
PasswordAuthentication yes
PermitEmptyPasswords no
KbdInteractiveAuthentication no
AllowTcpForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTunnel no
PrintMotd no
"""
ETC_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nsshd:x:100:65534::/run/sshd:/bin/false\n"
    "rescue:x:1000:1000:rescue:/home/rescue:/bin/sh\n",
    "etc/group": "root:x:0:\ntty:x:5:\ndisk:x:6:\nrescue:x:1000:\nnogroup:x:65534:\n",
    "etc/shadow": "root:*:19000:0:99999:7:::\nsshd:*:19000:0:99999:7:::\nrescue:!:19000:0:99999:7:::\n",
    "etc/hosts": "127.0.0.1 localhost ironworks-ramdisk\n::1 localhost ip6-localhost\n",
    "etc/hostname": "ironworks-ramdisk\n",
    "etc/nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n",
    "etc/os-release": 'NAME="Ironworks ramdisk"\nID=ironworks-ramdisk\nID_LIKE=debian\n',
    "etc/resolv.conf": "",
    "etc/shells": "/bin/sh\n/usr/bin/sh\n/bin/bash\n/usr/bin/bash\n",
    # /init starts sshd only once a rescue is finalized; sshd runs as the privilege-separation user sshd
    "etc/ssh/sshd_config": SSHD_CONFIG,
    "etc/issue": "Ironworks rescue ramdisk: log in as rescue with the rescue password\n\n",
}


@dataclass(frozen=True, slots=True)
class PythonCheck:
    """What the agent's import graph found."""

    version: str
    modules: tuple[str, ...]
    compiled: int


def layout(tree: Tree) -> None:
    """Directories, merged-/usr links, the console device the kernel opens before /init runs, /etc."""
    for d in ("proc", "sys", "dev", "run", "tmp", "root", "home/rescue", "var/log", "var/tmp", "mnt"):
        tree.directory(d, mode=0o1777 if d in ("tmp", "var/tmp") else 0o755)
    for d in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64"):
        tree.directory(d)
    for d in ("bin", "sbin", "lib", "lib64"):
        tree.symlink(d, f"usr/{d}")
    tree.symlink("var/run", "../run")
    tree.symlink("etc/mtab", "../proc/self/mounts")
    tree.device("dev/console", stat.S_IFCHR, 5, 1)
    tree.device("dev/null", stat.S_IFCHR, 1, 3, mode=0o666)
    for path, text in ETC_FILES.items():
        tree.file(path, text.encode(), mode=0o600 if path == "etc/shadow" else 0o644)


def add_payload(tree: Tree, staging: Staging, packages: Sequence[str]) -> None:
    """Every file of ``packages`` except what ``PAYLOAD_PRUNE`` drops (symlinks bring their targets)."""
    for pkg in packages:
        for path in staging.files_of.get(pkg, []):
            if PAYLOAD_PRUNE.search(path) or PYTHON_PRUNE.search(path):
                continue
            if path.startswith("usr/share/ca-certificates/"):
                continue  # bundled into one file below, as update-ca-certificates would
            tree.take(staging, path)


def add_ca_bundle(tree: Tree, staging: Staging) -> None:
    """/etc/ssl/certs/ca-certificates.crt from ca-certificates' certificates (sorted, concatenated)."""
    crts = sorted(p for p in staging.index if p.startswith("usr/share/ca-certificates/") and p.endswith(".crt"))
    if crts:
        bundle = b"".join(staging.index[p][1].read_bytes().rstrip(b"\n") + b"\n" for p in crts)
        tree.file("etc/ssl/certs/ca-certificates.crt", bundle, package="ca-certificates")


def python_version(staging: Staging) -> str:
    """``3.11`` from where ``usr/bin/python3`` points."""
    real = staging.resolve("usr/bin/python3")
    if real is None or not posixpath.basename(real).startswith("python3."):
        raise RamdiskBuildError("the python3 package gave no usr/bin/python3 -> python3.X; is python3 in the build?")
    return posixpath.basename(real).removeprefix("python")


def add_stdlib(tree: Tree, staging: Staging, version: str) -> None:
    """The standard library (``usr/lib/python3.X``) from whichever packages hold it, pruned."""
    prefix = f"usr/lib/python{version}/"
    tree.take(staging, "usr/bin/python3")  # python3-minimal's link to python3.X
    for path in sorted(staging.index):
        if path.startswith(prefix) and not PYTHON_PRUNE.search(path) and not PAYLOAD_PRUNE.search(path):
            tree.take(staging, path)


def add_agent(tree: Tree) -> list[str]:
    """``ironworks/__init__.py`` and ``ironworks/agent/`` from the installed package, and its dist-info."""
    src = Path(ironworks.__file__).parent
    files = [src / "__init__.py", *sorted(p for p in (src / "agent").rglob("*.py") if "__pycache__" not in p.parts)]
    added = []
    for f in files:
        rel = f"{SITE_DIR}/ironworks/{f.relative_to(src).as_posix()}"
        tree.add(rel, Node(stat.S_IFREG | 0o644, source=f, package="ironworks-agent"))
        added.append(rel)
    dist = f"{SITE_DIR}/ironworks-{ironworks.__version__}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: ironworks\nVersion: {ironworks.__version__}\n"
    tree.file(f"{dist}/METADATA", meta.encode(), package="ironworks-agent")
    # only the agent's own managers: the rest of Ironworks is not in the ramdisk
    entry_points = "[ironworks.agent.hardware_managers]\ngeneric = ironworks.agent.generic:GenericHardwareManager\n"
    tree.file(f"{dist}/entry_points.txt", entry_points.encode(), package="ironworks-agent")
    return added


def add_scripts(tree: Tree) -> None:
    """/init and the udhcpc hook."""
    files = importlib.resources.files("ironworks.ramdisk") / "files"
    tree.file("init", (files / "init.sh").read_bytes(), mode=0o755)
    tree.file("usr/share/udhcpc/default.script", (files / "udhcpc.script").read_bytes(), mode=0o755)


def add_busybox_links(tree: Tree, staging: Staging) -> int:
    """A link for each busybox applet no real package provides; returns how many were made."""
    real = staging.real("usr/bin/busybox")
    if real is None:
        raise RamdiskBuildError("busybox-static gave no /bin/busybox; is busybox-static in the build?")
    proc = subprocess.run([str(real[1]), "--list-full"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RamdiskBuildError(f"busybox --list-full failed: {proc.stderr.strip()[-200:]}")
    made = 0
    for line in sorted(proc.stdout.split()):
        name = posixpath.basename(line)
        # busybox itself is skipped: bin/busybox -> busybox is a self-loop (ELOOP, no working init)
        if "/" not in line or name == "busybox":
            continue
        if any(f"{d}/{name}" in tree.nodes for d in ("usr/bin", "usr/sbin")):
            continue
        d = "usr/sbin" if "sbin/" in line else "usr/bin"
        tree.symlink(f"{d}/{name}", "busybox" if d == "usr/bin" else "../bin/busybox", package="busybox-static")
        made += 1
    return made


def add_overlay(tree: Tree, overlay: Path) -> int:
    """Every file, link and directory under ``overlay`` at the same path in the ramdisk (replacing)."""
    if not overlay.is_dir():
        raise RamdiskBuildError(f"--overlay {overlay} is not a directory")
    count = 0
    for dirpath, dirnames, filenames in os.walk(overlay):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            full = Path(dirpath, name)
            rel = full.relative_to(overlay).as_posix()
            if full.is_symlink():
                tree.symlink(rel, os.readlink(full), package="overlay")
            else:
                mode = stat.S_IMODE(full.stat().st_mode) & 0o7755
                tree.add(rel, Node(stat.S_IFREG | mode, source=full, package="overlay"))
            count += 1
    return count


def check_agent_imports(tree: Tree, staging: Staging, version: str, *, workdir: Path) -> PythonCheck:
    """Walk the agent's import graph: everything it imports must be in the tree, and nothing of Ironworks
    outside ``ironworks.agent``; the modules found are compiled to unchecked-hash .pyc files."""
    stdlib = staging.resolve(f"usr/lib/python{version}/os.py")
    if stdlib is None:
        raise RamdiskBuildError(f"no Python {version} standard library in the packages (usr/lib/python{version})")
    stdlib_dir = staging.index[stdlib][1].parent
    agent_root = Path(ironworks.__file__).parent.parent
    finder = modulefinder.ModuleFinder(path=[str(agent_root), str(stdlib_dir), str(stdlib_dir / "lib-dynload")])
    finder.run_script(str(Path(ironworks.__file__).parent / "agent" / "__main__.py"))
    reverse = {real: rel for rel, (_pkg, real) in staging.index.items()}
    problems: list[str] = []
    to_compile: list[tuple[Path, str]] = []
    names: list[str] = []
    for name, mod in sorted(finder.modules.items()):
        file = getattr(mod, "__file__", None)
        if name == "__main__" or not file:
            continue
        names.append(name)
        path = Path(file)
        if path.is_relative_to(agent_root / "ironworks"):
            if not (name == "ironworks" or name.startswith("ironworks.agent")):
                problems.append(f"the agent imports {name}, which is not part of the agent")
            rel = f"{SITE_DIR}/{path.relative_to(agent_root).as_posix()}"
        else:
            rel = reverse.get(path, f"usr/lib/python{version}/{path.name}")
        if rel not in tree.nodes:
            problems.append(f"the agent needs {name} ({rel}), which the ramdisk leaves out")
        elif rel.endswith(".py"):
            to_compile.append((path, rel))
    if problems:
        raise RamdiskBuildError("the agent's imports do not fit the ramdisk: " + "; ".join(problems))
    compiled = _compile(tree, to_compile, version, workdir=workdir)
    return PythonCheck(version=version, modules=tuple(names), compiled=compiled)


def _compile(tree: Tree, files: list[tuple[Path, str]], version: str, *, workdir: Path) -> int:
    """Unchecked-hash .pyc files (no mtimes in them) beside the sources, when this Python is the same version."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" != version:
        return 0  # another bytecode format: the ramdisk's Python compiles at run time instead
    out = Path(tempfile.mkdtemp(prefix="pyc-", dir=workdir))
    jobs = [(str(src), str(out / f"{i}.pyc"), "/" + rel) for i, (src, rel) in enumerate(files)]
    script = (
        "import json, py_compile, sys\n"
        "for src, cfile, dfile in json.load(sys.stdin):\n"
        "    py_compile.compile(src, cfile=cfile, dfile=dfile, doraise=True,\n"
        "                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)\n"
    )
    # a fixed hash seed: set and frozenset constants are marshalled in hash order
    env = {"PYTHONHASHSEED": "0", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = subprocess.run(
        [sys.executable, "-I", "-c", script],
        input=json.dumps(jobs),
        text=True,
        capture_output=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RamdiskBuildError(f"compiling the agent's modules failed: {proc.stderr.strip()[-400:]}")
    tag = f"cpython-{version.replace('.', '')}"
    for (_src, cfile, _dfile), (_s, rel) in zip(jobs, files, strict=True):
        d, base = posixpath.split(rel)
        pyc = f"{d}/__pycache__/{base.removesuffix('.py')}.{tag}.pyc"
        tree.file(pyc, Path(cfile).read_bytes(), package=tree.nodes[rel].package)
    return len(jobs)


def libraries(tree: Tree, staging: Staging) -> list[str]:
    """``add_libraries`` (the ELF closure), here so the builder has one place to call."""
    return add_libraries(tree, staging)


def missing_tools(tree: Tree) -> dict[str, str | None]:
    """Each required tool -> its path in the ramdisk (None when missing)."""
    found: dict[str, str | None] = {}
    for tool in REQUIRED_TOOLS:
        found[tool] = next((f"/{d}/{tool}" for d in ("usr/sbin", "usr/bin") if f"{d}/{tool}" in tree.nodes), None)
    return found
