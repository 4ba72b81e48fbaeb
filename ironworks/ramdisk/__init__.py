"""The ramdisk builder: a kernel and an initramfs carrying the agent, from Debian packages.

::

    debs.py      apt: dependency closure from ``apt-cache depends``, download cache, extraction
    elf.py       DT_NEEDED / RUNPATH of ELF files, so only the shared libraries in use go in
    tree.py      the ramdisk's file tree in memory (files, links, devices) and what a package adds
    modules.py   kernel module selection from modules.dep, and depmod
    cpio.py      a reproducible newc cpio writer (sorted, fixed mtimes, uid/gid 0)
    iso.py       the hybrid BIOS (isolinux) + UEFI (GRUB) ISO
    builder.py   one build: inputs -> kernel, initramfs, ISO, manifest.json

Nothing here runs a package's maintainer scripts or touches the host's boot files: packages are
unpacked with ``dpkg-deb -x`` into a cache directory and the ramdisk is assembled in memory.
"""

from __future__ import annotations

from ironworks.errors import ServerError

__all__ = ["HostToolMissing", "PackageError", "RamdiskBuildError"]


class RamdiskBuildError(ServerError):
    """The ramdisk could not be built; the message says what failed and what to do."""

    reason = "ramdisk_build_failed"


class HostToolMissing(RamdiskBuildError):
    """A program the build runs on this machine is not installed."""

    reason = "host_tool_missing"


class PackageError(RamdiskBuildError):
    """A Debian package could not be resolved, downloaded or unpacked."""

    reason = "package_error"
