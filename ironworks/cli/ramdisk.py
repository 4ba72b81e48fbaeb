"""``ironworks ramdisk build``: the agent's kernel and initramfs (and ISO) from Debian packages."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

ramdisk_app = typer.Typer(no_args_is_help=True, help="Build the agent's utility ramdisk.")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@ramdisk_app.command("build")
def build(
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the kernel, initramfs, ISO, manifest.")],
    cache: Annotated[
        Path | None, typer.Option("--cache", help="Download cache (default ~/.cache/ironworks/ramdisk).")
    ] = None,
    kernel_deb: Annotated[
        Path | None, typer.Option("--kernel-deb", help="A linux-image .deb instead of linux-image-amd64's kernel.")
    ] = None,
    extra_package: Annotated[
        list[str] | None, typer.Option("--extra-package", help="Another Debian package to include (repeatable).")
    ] = None,
    without: Annotated[
        list[str] | None,
        typer.Option("--without", help="Leave out a base package: fio, stress-ng, qemu-utils ... (repeatable)."),
    ] = None,
    module: Annotated[
        list[str] | None, typer.Option("--module", help="Another kernel module to include (repeatable).")
    ] = None,
    overlay: Annotated[
        Path | None, typer.Option("--overlay", help="A directory copied over the ramdisk's root (vendor files).")
    ] = None,
    iso: Annotated[bool, typer.Option("--iso", help="Also build a hybrid BIOS/UEFI ISO.")] = False,
    kernel_param: Annotated[
        list[str] | None, typer.Option("--kernel-param", help="A kernel parameter baked into the ISO (repeatable).")
    ] = None,
    compression_level: Annotated[int, typer.Option("--compression-level", help="zstd level, 1-22.")] = 19,
) -> None:
    """Build the kernel and zstd initramfs carrying the agent and its tools; print where the bytes go."""
    from ironworks.errors import IronworksError
    from ironworks.ramdisk.builder import SIZE_TARGET, BuildOptions, default_cache
    from ironworks.ramdisk.builder import build as run_build

    epoch_env = os.environ.get("SOURCE_DATE_EPOCH", "").strip()  # the reproducible-builds convention
    try:
        epoch = int(epoch_env) if epoch_env else None
    except ValueError:
        typer.echo(f"error: SOURCE_DATE_EPOCH must be a number of seconds, got {epoch_env!r}", err=True)
        raise typer.Exit(2) from None
    opts = BuildOptions(
        output=output,
        cache=cache or default_cache(),
        kernel_deb=kernel_deb,
        extra_packages=tuple(extra_package or ()),
        without=tuple(without or ()),
        extra_modules=tuple(module or ()),
        overlay=overlay,
        iso=iso,
        kernel_params=tuple(kernel_param or ()),
        compression_level=compression_level,
        source_date_epoch=epoch,
    )
    try:
        result = run_build(opts, progress=lambda msg: typer.echo(f"... {msg}", err=True))
    except IronworksError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    m = result.manifest
    initrd = m["initramfs"]
    typer.echo(f"kernel     {output / m['kernel']['file']}  {_mb(m['kernel']['size'])}  ({m['kernel']['release']})")
    verdict = "within" if initrd["size"] <= SIZE_TARGET else "OVER"
    typer.echo(
        f"initramfs  {output / initrd['file']}  {_mb(initrd['size'])} {initrd['compression']} "
        f"({_mb(initrd['uncompressed_size'])} uncompressed; {verdict} the {_mb(SIZE_TARGET)} target)"
    )
    if m["iso"]:
        typer.echo(f"iso        {output / m['iso']['file']}  {_mb(m['iso']['size'])}")
    typer.echo(
        f"manifest   {output / 'manifest.json'}  ({len(m['packages'])} packages, built in {result.seconds:.0f} s)"
    )
    typer.echo("uncompressed bytes by part:")
    for name, size in list(result.groups.items())[:12]:
        typer.echo(f"  {size / 1e6:7.1f} MB  {name}")
    if m["modules"]["missing"]:
        typer.echo(f"modules not in this kernel: {', '.join(m['modules']['missing'])}")
