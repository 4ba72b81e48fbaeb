"""The ramdisk's file tree, assembled in memory from unpacked packages, and the rules for what goes in.

Paths are relative (``usr/bin/bash``) and merged-/usr: a package's ``/bin/x``, ``/sbin/x``,
``/lib/x`` and ``/lib64/x`` land under ``usr/`` and the root holds ``bin -> usr/bin`` etc., as on
an installed Debian 12. ``Staging`` is the union of the unpacked packages (first package wins on a
clash); ``Tree`` is what the initramfs will hold, each path with the package it came from.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ironworks.ramdisk import RamdiskBuildError, elf
from ironworks.ramdisk.cpio import CpioEntry

MERGED_DIRS = ("bin", "sbin", "lib", "lib64")
#: where the loader looks without an ld.so.cache (Debian's multiarch system directories first)
LIBRARY_DIRS = ("usr/lib/x86_64-linux-gnu", "usr/lib", "usr/lib64")

#: files of a payload package that a ramdisk never uses (docs, shell completions, service units ...)
PAYLOAD_PRUNE = re.compile(
    r"^usr/share/(doc|doc-base|man|info|locale|lintian|bash-completion|zsh|fish|bug|menu|applications|icons"
    r"|pixmaps|mime|gtk-doc|help|metainfo|appdata|polkit-1|dbus-1|common-licenses|initramfs-tools|apport)(/|$)"
    r"|^usr/lib/(systemd|tmpfiles\.d|sysusers\.d|udev/hwdb\.d|modules-load\.d)(/|$)"
    r"|^etc/(init\.d|cron\.[a-z]+|logrotate\.d|systemd|rc[0-9S]\.d)(/|$)"
    r"|^usr/include/|/pkgconfig/|\.a$"
    # fio's optional engines are plugins linking Ceph, GlusterFS, RDMA ...; the agent uses libaio (built in)
    r"|^usr/lib/x86_64-linux-gnu/fio/"
    # tools of the same packages the agent never runs (qemu-nbd/qemu-io: 4.7 MB; ipmievd) and ipmitool's
    # 4.7 MB list of IANA enterprise numbers (only used to print vendor names)
    r"|^usr/bin/qemu-(nbd|io|storage-daemon)$|^usr/sbin/ipmievd$|^usr/share/misc/enterprise-numbers"
    # tc's qdisc plugins (libatm ...); the agent never shapes traffic
    r"|^usr/lib/x86_64-linux-gnu/tc/"
)
#: parts of the Python standard library the agent does not use (checked against its import graph)
PYTHON_PRUNE = re.compile(
    r"(^|/)(__pycache__|test|tests|idle_test)(/|$)"
    r"|^usr/lib/python3\.\d+/(idlelib|tkinter|turtledemo|ensurepip|lib2to3|pydoc_data|distutils|venv"
    r"|sqlite3|dbm|curses|unittest|config-[^/]*|site-packages)(/|$)"
    r"|^usr/lib/python3\.\d+/(turtle|pydoc|doctest|_pydecimal|imaplib|nntplib|mailbox|smtpd|tabnanny)\.py$"
    r"|^usr/lib/python3\.\d+/lib-dynload/(_tkinter|_sqlite3|_dbm|_gdbm|_curses|_curses_panel|readline"
    r"|_test[^/]*|_ctypes_test|_xxtestfuzz|xxlimited[^/]*|xxsubtype|_xxsubinterpreters)\.cpython"
)
#: dlopen()ed at run time, so no DT_NEEDED names them: pthread_exit needs libgcc_s (lab pitfall)
DLOPENED = ("libgcc_s.so.1",)


def canonical(path: str) -> str:
    """The merged-/usr form of a relative path: ``lib/x`` -> ``usr/lib/x``."""
    path = posixpath.normpath(path.lstrip("/"))
    head = path.split("/", 1)[0]
    return f"usr/{path}" if head in MERGED_DIRS else path


@dataclass(frozen=True, slots=True)
class Node:
    """One member of the tree: a regular file (from ``source`` or ``data``), a symlink, a directory or a device."""

    mode: int
    source: Path | None = None
    data: bytes = b""
    target: str = ""
    rdev: tuple[int, int] = (0, 0)
    package: str = ""

    def entry(self, path: str) -> CpioEntry:
        """The cpio member for this node at ``path``."""
        if stat.S_ISLNK(self.mode):
            return CpioEntry(path, self.mode, data=self.target.encode())
        return CpioEntry(path, self.mode, data=self.data, source=self.source, rdev_major=self.rdev[0],
                         rdev_minor=self.rdev[1])  # fmt: skip

    @property
    def size(self) -> int:
        """Bytes this node adds to the archive's contents."""
        if self.source is not None:
            return self.source.stat().st_size
        return len(self.data) or len(self.target)


class Staging:
    """The union of unpacked packages, indexed by canonical path."""

    def __init__(self, roots: Sequence[tuple[str, Path]]) -> None:
        self.index: dict[str, tuple[str, Path]] = {}
        self.files_of: dict[str, list[str]] = {}
        for package, root in roots:
            mine = self.files_of.setdefault(package, [])
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                rel_dir = os.path.relpath(dirpath, root)
                for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                    rel = canonical(os.path.join(rel_dir, name))
                    mine.append(rel)
                    self.index.setdefault(rel, (package, Path(dirpath, name)))

    def real(self, path: str) -> tuple[str, Path] | None:
        """The package and unpacked file behind ``path`` (not following the last symlink)."""
        return self.index.get(path)

    def link_target(self, path: str) -> str | None:
        """Where the symlink at ``path`` points, as a canonical path (None when it is no symlink)."""
        found = self.index.get(path)
        if found is None or not found[1].is_symlink():
            return None
        target = os.readlink(found[1])
        base = "" if target.startswith("/") else posixpath.dirname(path)
        return canonical(posixpath.join(base, target))

    def resolve(self, path: str, *, depth: int = 0) -> str | None:
        """The canonical path of the file ``path`` finally names, or None if it is not in the union."""
        if depth > 20:
            return None
        path = canonical(path)
        if path not in self.index:
            return self._resolve_dirs(path, depth)
        target = self.link_target(path)
        return path if target is None else self.resolve(target, depth=depth + 1)

    def _resolve_dirs(self, path: str, depth: int) -> str | None:
        # a symlinked directory on the way (rare in packages): resolve the longest linked prefix
        parts = path.split("/")
        for i in range(len(parts) - 1, 0, -1):
            prefix = "/".join(parts[:i])
            target = self.link_target(prefix)
            if target is not None:
                return self.resolve("/".join([target, *parts[i:]]), depth=depth + 1)
        return None


class Tree:
    """What the initramfs holds: path -> Node."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}

    def add(self, path: str, node: Node) -> None:
        """Add ``node`` at ``path`` (and its parent directories); a path already there is replaced."""
        self._parents(path)
        self.nodes[path] = node

    def _parents(self, path: str) -> None:
        parent = posixpath.dirname(path)
        while parent and parent not in self.nodes:
            self.nodes[parent] = Node(stat.S_IFDIR | 0o755)
            parent = posixpath.dirname(parent)

    def file(self, path: str, data: bytes, *, mode: int = 0o644, package: str = "ironworks") -> None:
        """Add a regular file with ``data``."""
        self.add(path, Node(stat.S_IFREG | mode, data=data, package=package))

    def symlink(self, path: str, target: str, *, package: str = "ironworks") -> None:
        """Add a symlink."""
        self.add(path, Node(stat.S_IFLNK | 0o777, target=target, package=package))

    def directory(self, path: str, *, mode: int = 0o755) -> None:
        """Add a directory."""
        self.add(path, Node(stat.S_IFDIR | mode))

    def device(self, path: str, kind: int, major: int, minor: int, *, mode: int = 0o600) -> None:
        """Add a device node (``kind`` is ``stat.S_IFCHR`` or ``stat.S_IFBLK``)."""
        self.add(path, Node(kind | mode, rdev=(major, minor)))

    def take(self, staging: Staging, path: str, *, follow: bool = True) -> None:
        """Copy ``path`` from the staging union, following symlink chains so their targets come too."""
        for _ in range(20):
            found = staging.real(path)
            if found is None or path in self.nodes:
                return
            package, real = found
            if real.is_symlink():
                self.symlink(path, os.readlink(real), package=package)
                target = staging.link_target(path)
                if not follow or target is None:
                    return
                path = target
                continue
            mode = real.lstat().st_mode
            self.add(path, Node(stat.S_IFREG | (stat.S_IMODE(mode) & 0o7755), source=real, package=package))
            return

    def entries(self) -> list[CpioEntry]:
        """Every node as a cpio member."""
        return [node.entry(path) for path, node in self.nodes.items()]

    def elf_files(self) -> list[tuple[str, Path]]:
        """(path, unpacked file) of every regular file in the tree that is an ELF object."""
        return [(p, n.source) for p, n in sorted(self.nodes.items()) if n.source is not None and elf.is_elf(n.source)]


def add_libraries(tree: Tree, staging: Staging, *, extra: Iterable[str] = DLOPENED) -> list[str]:
    """Add every shared library the tree's ELF files need (transitively), plus the ``extra`` names.

    Returns the paths added; raises RamdiskBuildError naming the file and the library when a needed
    library is in no unpacked package (its package is missing from the closure).
    """
    added: list[str] = []
    done: set[str] = set()
    todo = tree.elf_files()

    def include(lib: str) -> None:
        if lib not in tree.nodes:
            tree.take(staging, lib)
            added.append(lib)
        real = staging.resolve(lib)
        node = tree.nodes.get(real) if real else None
        if real and real not in done and node is not None and node.source is not None:
            todo.append((real, node.source))

    for name in extra:
        lib = _find(staging, name, LIBRARY_DIRS)
        if lib is None:
            raise RamdiskBuildError(f"{name} (loaded at run time) is in no unpacked package; add its package")
        include(lib)
    while todo:
        path, source = todo.pop()
        if path in done:
            continue
        done.add(path)
        try:
            info = elf.read(source)
        except (ValueError, OSError) as exc:
            raise RamdiskBuildError(f"cannot read the ELF file {path} ({source}): {exc}") from exc
        if info.interpreter:
            interp = canonical(info.interpreter)
            if staging.resolve(interp) is None:
                raise RamdiskBuildError(
                    f"{path} needs the loader {info.interpreter}, which no unpacked package has; add the package "
                    "that ships it with --extra-package"
                )
            include(interp)
        search = [_origin(d, path) for d in info.runpath] + list(LIBRARY_DIRS)
        for name in info.needed:
            lib = _find(staging, name, search)
            if lib is None:
                raise RamdiskBuildError(
                    f"{path} needs {name}, which no unpacked package has; add the package that ships it "
                    f"with --extra-package (apt-file search {name} names it)"
                )
            include(lib)
    return sorted(added)


def _origin(runpath: str, path: str) -> str:
    origin = "/" + posixpath.dirname(path)
    return canonical(runpath.replace("${ORIGIN}", origin).replace("$ORIGIN", origin))


def _find(staging: Staging, name: str, search: Sequence[str]) -> str | None:
    for d in search:
        candidate = canonical(f"{d}/{name}")
        if staging.resolve(candidate) is not None:
            return candidate
    return None
