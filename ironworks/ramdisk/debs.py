"""Debian packages through this machine's apt: dependency closure, a download cache, unpacking.

The closure is computed from ``apt-cache depends --recurse`` output (recorded once, parsed here) and
not left to apt, so packages that only matter on an installed system (debconf, dpkg, perl, ...) can
be left out: nothing in the ramdisk runs maintainer scripts. Downloads are verified against the
SHA256 apt knows, kept in the cache by file name, and unpacked once with ``dpkg-deb -x``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ironworks.ramdisk import HostToolMissing, PackageError

#: packages whose files a ramdisk never needs (installed-system plumbing); libraries are never here
SKIP_PACKAGES = frozenset(
    {
        "adduser", "base-files", "cdebconf", "debconf", "debianutils", "dpkg", "init-system-helpers",
        "install-info", "libdebian-installer4", "libpam-modules", "libpam-modules-bin", "libpam-runtime",
        "lsb-base", "mailcap", "media-types", "mime-support", "perl", "perl-base", "perl-modules-5.36",
        "readline-common", "sensible-utils", "sysvinit-utils", "tzdata", "ucf", "usr-is-merged", "usrmerge",
        "libfile-find-rule-perl", "libnumber-compare-perl", "libtext-glob-perl", "libperl5.36",
        "libgdbm-compat4", "libsemanage-common", "libtirpc-common", "freeipmi-common", "libx11-data",
        "libdrm-common", "util-linux-extra", "uuid-runtime", "dmsetup", "libaudit-common",
        # openssh-server wants these for its maintainer scripts and the client tools; sshd itself does not
        "openssh-client", "openssh-sftp-server", "procps", "runit-helper",
    }
)  # fmt: skip
DEPENDS_FLAGS = ("--no-recommends", "--no-suggests", "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances")
_DEP_LINE = re.compile(r"^ (?P<alt>[ |])(?P<kind>Depends|PreDepends): (?P<name>\S+)$")


@dataclass(frozen=True, slots=True)
class Alternative:
    """One choice of a dependency: a package or a ``<virtual>`` name and the packages providing it."""

    name: str
    providers: tuple[str, ...] = ()

    @property
    def virtual(self) -> bool:
        """Whether ``name`` is a virtual package (apt prints it in angle brackets)."""
        return self.name.startswith("<")


#: package -> its dependency groups; a group is satisfied by any one of its alternatives
DependencyGraph = dict[str, list[list[Alternative]]]


@dataclass(frozen=True, slots=True)
class PackageInfo:
    """What apt knows of the candidate version of a package."""

    name: str
    version: str
    architecture: str
    filename: str
    sha256: str
    size: int

    @property
    def deb_name(self) -> str:
        """The file name ``apt-get download`` writes (an epoch's colon becomes ``%3a``)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.architecture}.deb"


def _bare(name: str) -> str:
    """``perl:any`` -> ``perl``; ``<perl:any>`` keeps its brackets."""
    if name.startswith("<"):
        return "<" + name[1:-1].split(":", 1)[0] + ">"
    return name.split(":", 1)[0]


def parse_depends(text: str) -> DependencyGraph:
    """Parse ``apt-cache depends --recurse`` output into a graph (package -> groups of alternatives)."""
    graph: DependencyGraph = {}
    current: list[list[Alternative]] | None = None
    open_group = False  # the previous line started with "|": the next one belongs to the same group
    for raw in text.splitlines():
        if not raw.strip():
            continue
        if not raw.startswith(" "):
            current = graph.setdefault(_bare(raw.strip()), [])
            open_group = False
            continue
        if current is None:
            continue
        match = _DEP_LINE.match(raw)
        if match:
            alt = Alternative(_bare(match["name"]))
            if open_group and current:
                current[-1].append(alt)
            else:
                current.append([alt])
            open_group = match["alt"] == "|"
        elif raw.startswith("    ") and current and current[-1]:
            last = current[-1][-1]  # a provider of the dependency on the line above
            current[-1][-1] = Alternative(last.name, (*last.providers, _bare(raw.strip())))
        # Recommends/Suggests/... lines are ignored: the closure follows Depends and PreDepends only
    return graph


def resolve(
    roots: Sequence[str], graph: Mapping[str, list[list[Alternative]]], *, skip: Iterable[str] = ()
) -> list[str]:
    """The packages ``roots`` need (roots included), sorted; each group picks its first usable choice.

    A choice is usable when it is a real package not in ``skip``; a virtual one stands for its first
    provider that is. A group whose every choice is skipped is dropped (its files are never needed).
    """
    skipped = set(skip)
    missing = [r for r in roots if r not in graph or r.startswith("<")]
    if missing:
        raise PackageError(
            f"apt does not know the package(s) {', '.join(missing)}: check the names, or run apt-get update",
            packages=missing,
        )
    chosen: set[str] = set()
    todo = list(roots)
    while todo:
        pkg = todo.pop()
        if pkg in chosen:
            continue
        chosen.add(pkg)
        for group in graph.get(pkg, []):
            pick = _pick(group, chosen, skipped, graph)
            if pick is not None and pick not in chosen:
                todo.append(pick)
    return sorted(chosen)


def _pick(group: list[Alternative], chosen: set[str], skipped: set[str], graph: Mapping[str, object]) -> str | None:
    candidates: list[str] = []
    for alt in group:
        names = list(alt.providers) if alt.virtual else [alt.name, *alt.providers]
        candidates += [n for n in names if n not in skipped and not n.startswith("<")]
    for name in candidates:  # already chosen wins: no second implementation of the same thing
        if name in chosen:
            return name
    for name in candidates:
        if name in graph:
            return name
    return candidates[0] if candidates else None


def parse_show(text: str) -> dict[str, PackageInfo]:
    """Parse ``apt-cache show --no-all-versions`` stanzas (the first stanza of a name wins)."""
    found: dict[str, PackageInfo] = {}
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        name = fields.get("Package")
        if not name or name in found:
            continue
        try:
            found[name] = PackageInfo(
                name=name,
                version=fields["Version"],
                architecture=fields["Architecture"],
                filename=fields["Filename"],
                sha256=fields["SHA256"],
                size=int(fields["Size"]),
            )
        except (KeyError, ValueError) as exc:
            raise PackageError(f"apt-cache show gave an incomplete record for {name}: missing {exc}") from None
    return found


def kernel_package(depends_text: str, meta: str = "linux-image-amd64") -> str:
    """The versioned ``linux-image-*`` package the kernel meta package depends on."""
    for group in parse_depends(depends_text).get(meta, []):
        for alt in group:
            if alt.name.startswith("linux-image-") and not alt.virtual:
                return alt.name
    raise PackageError(f"{meta} depends on no linux-image-* package; pass --kernel-deb PATH to choose a kernel")


def require_tool(name: str, package: str) -> str:
    """The path of a host program, or HostToolMissing naming the Debian package to install."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise HostToolMissing(
            f"{name} is not installed on this machine; install it with: apt-get install {package}", tool=name
        )
    return path


def _run(argv: Sequence[str], *, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, check=False)


class Apt:
    """This machine's apt, read-only: queries, downloads into ``cache/debs``, unpacks into ``cache/unpacked``."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.debs = cache / "debs"
        self.unpacked = cache / "unpacked"
        require_tool("apt-cache", "apt")
        require_tool("dpkg-deb", "dpkg")

    def depends(self, roots: Sequence[str]) -> str:
        """``apt-cache depends --recurse`` output for ``roots``."""
        proc = _run(["apt-cache", "depends", "--recurse", *DEPENDS_FLAGS, *roots])
        if proc.returncode != 0:
            raise PackageError(
                f"apt-cache depends failed for {' '.join(roots)}: {proc.stderr.strip()[-400:]} "
                "(check the package names, or run apt-get update)"
            )
        return proc.stdout

    def show(self, names: Sequence[str]) -> dict[str, PackageInfo]:
        """Candidate versions of ``names``; PackageError names any apt cannot show."""
        proc = _run(["apt-cache", "show", "--no-all-versions", *names])
        found = parse_show(proc.stdout)
        missing = sorted(set(names) - set(found))
        if missing:
            raise PackageError(
                f"apt has no installable version of {', '.join(missing)}: check the names, or run apt-get update",
                packages=missing,
            )
        return {n: found[n] for n in names}

    def download(self, infos: Sequence[PackageInfo]) -> dict[str, Path]:
        """Each package's .deb in the cache (downloaded when missing or damaged), verified by SHA256."""
        self.debs.mkdir(parents=True, exist_ok=True)
        wanted = [i for i in infos if not self._good(i)]
        if wanted:
            proc = _run(["apt-get", "download", *(f"{i.name}={i.version}" for i in wanted)], cwd=self.debs)
            if proc.returncode != 0:
                failed = [i.name for i in wanted if not (self.debs / i.deb_name).is_file()]
                named = ", ".join(failed[:8]) + (f" and {len(failed) - 8} more" if len(failed) > 8 else "")
                raise PackageError(
                    f"apt-get download failed for {named or 'some packages'}: {proc.stderr.strip()[-300:]} "
                    "(is the Debian mirror reachable? try apt-get update)",
                    packages=failed,
                )
        for info in wanted:
            if not self._good(info):
                (self.debs / info.deb_name).unlink(missing_ok=True)
                raise PackageError(
                    f"{info.deb_name} does not match the SHA256 apt expects; it was removed, run the build again"
                )
        return {i.name: self.debs / i.deb_name for i in infos}

    def _good(self, info: PackageInfo) -> bool:
        path = self.debs / info.deb_name
        if not path.is_file() or path.stat().st_size != info.size:
            return False
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest() == info.sha256

    def unpack(self, deb: Path) -> Path:
        """The directory ``deb`` is unpacked in (``dpkg-deb -x`` once per file, atomically)."""
        return unpack_deb(deb, self.unpacked)


def unpack_deb(deb: Path, into: Path) -> Path:
    """Unpack ``deb`` under ``into/<file name>`` unless already there; returns that directory."""
    dest = into / deb.name.removesuffix(".deb")
    if dest.is_dir():
        return dest
    into.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=into))
    proc = _run(["dpkg-deb", "-x", str(deb), str(tmp)])
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise PackageError(f"dpkg-deb -x {deb} failed: {proc.stderr.strip()[-400:]} (is the file a .deb?)")
    try:
        os.rename(tmp, dest)
    except OSError:  # another build unpacked it at the same time
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def deb_field(deb: Path, field: str) -> str:
    """One control field of a .deb file (``Package``, ``Version`` ...)."""
    proc = _run(["dpkg-deb", "-f", str(deb), field])
    if proc.returncode != 0:
        raise PackageError(f"cannot read {field} of {deb}: {proc.stderr.strip()[-300:]} (is it a .deb?)")
    return proc.stdout.strip()
