"""What a virtual media boot reads from the node: ISO sources, kernel parameters, network data, one-shot.

Everything here is checked without fetching anything or touching the BMC, so ``validate`` (which the
API calls before a deploy moves the node) and the preparations share one set of checks and messages.
"""

from __future__ import annotations

import json
from typing import Any

from ironworks.config import Config
from ironworks.drivers.base import Task, ValidationError
from ironworks.errors import InvalidInput, IronworksError
from ironworks.images import iso as isolib
from ironworks.images.cache import ImageCache, local_path, parse_checksum
from ironworks.netboot.render import kernel_params

RESCUE_STATES = ("rescuing", "rescue wait", "rescue")


def one_shot(task: Task) -> bool:
    """``instance_info/one_shot`` as a bool (``ValidationError`` for anything else)."""
    raw = task.node.instance_info.get("one_shot", False)
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
        return raw.strip().lower() in ("true", "yes", "1")
    raise ValidationError(f"instance_info/one_shot must be true or false, not {raw!r}.")


def ramdisk_sources(task: Task, cache: ImageCache) -> list[tuple[str, str | None]]:
    """``[(iso, checksum)]`` or ``[(kernel, checksum), (ramdisk, checksum)]`` from driver_info."""
    info = task.node.driver_info
    rescuing = task.node.provision_state in RESCUE_STATES
    if rescuing and info.get("rescue_iso"):
        return [source(task, cache, "driver_info", "rescue_iso")]
    if rescuing and info.get("rescue_kernel") and info.get("rescue_ramdisk"):
        return [source(task, cache, "driver_info", f"rescue_{w}") for w in ("kernel", "ramdisk")]
    if info.get("deploy_iso"):
        return [source(task, cache, "driver_info", "deploy_iso")]
    missing = [k for k in ("deploy_kernel", "deploy_ramdisk") if not info.get(k)]
    if missing:
        raise ValidationError(
            f"driver_info/{' and driver_info/'.join(missing)} missing: the redfish-virtual-media boot interface "
            "needs the agent ramdisk as an ISO (driver_info/deploy_iso) or as deploy_kernel + deploy_ramdisk (an "
            f"ISO is built from them). Set them with `baremetal node set {task.node.uuid} --driver-info "
            "deploy_iso=<URL>` (what `ironworks ramdisk build` produced)."
        )
    return [source(task, cache, "driver_info", k) for k in ("deploy_kernel", "deploy_ramdisk")]


def instance_source(task: Task, cache: ImageCache) -> tuple[str, str | None]:
    """``(instance_info/boot_iso, its checksum)``."""
    ii = task.node.instance_info
    if not ii.get("boot_iso"):
        raise ValidationError(
            "instance_info/boot_iso is required for a ramdisk deploy over virtual media: the URL of the ISO "
            f"to boot. Set it with `baremetal node set {task.node.uuid} --instance-info boot_iso=<URL>` "
            "(and boot_iso_checksum=sha256:<hex> to have it verified)."
        )
    return source(task, cache, "instance_info", "boot_iso")


def source(task: Task, cache: ImageCache, where: str, key: str) -> tuple[str, str | None]:
    """``(URL or path, checksum)`` of ``<where>/<key>``, checked without fetching it."""
    data = task.node.driver_info if where == "driver_info" else task.node.instance_info
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{where}/{key} must be a URL (http, https or file), not {value!r}.")
    try:
        local = local_path(value)
    except IronworksError as exc:
        raise ValidationError(f"{where}/{key}: {exc.message}") from exc
    if local is not None and not local.is_absolute():
        raise ValidationError(f"{where}/{key} must be an absolute path or a URL, not {value!r}.")
    if local is not None:
        try:
            cache.check_source(value)  # [images] allowed_file_dirs
        except IronworksError as exc:
            raise ValidationError(f"{where}/{key}: {exc.message}") from exc
    checksum = data.get(f"{key}_checksum")
    if checksum:
        try:
            parse_checksum(str(checksum))
        except IronworksError as exc:
            raise ValidationError(f"{where}/{key}_checksum: {exc.message}") from exc
    return value, str(checksum) if checksum else None


def ramdisk_params(task: Task, config: Config, params: dict[str, Any] | None, *, token: str) -> list[str]:
    """The deploy ISO's kernel parameters: the conductor's, the token, then the operator's extras."""
    node = task.node
    extras = [
        ("[vmedia] kernel_append_params", config.vmedia.kernel_append_params),
        ("driver_info/kernel_append_params", node.driver_info.get("kernel_append_params") or ""),
        ("instance_info/kernel_append_params", node.instance_info.get("kernel_append_params") or ""),
    ]
    try:
        tokens = kernel_params({**(params or {}), "ipa-agent-token": token}, extras)
        for source, text in extras:
            if text:
                isolib.check_params(text, where=source)
    except InvalidInput as exc:
        raise ValidationError(exc.message) from exc
    return tokens


def instance_params(task: Task) -> list[str]:
    """``instance_info/kernel_append_params`` as tokens ([] when not given: the ISO is used as is)."""
    text = task.node.instance_info.get("kernel_append_params") or ""
    source = "instance_info/kernel_append_params"
    try:
        tokens = kernel_params(None, [(source, text)])
        if tokens:
            isolib.check_params(str(text), where=source)
    except InvalidInput as exc:
        raise ValidationError(exc.message) from exc
    return tokens


def network_data(task: Task) -> dict[str, Any] | None:
    """``network_data`` (OpenStack network_data.json) from instance_info or driver_info; None when not given."""
    raw = task.node.instance_info.get("network_data") or task.node.driver_info.get("network_data")
    if not raw:
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise ValidationError(
                f"network_data is not valid JSON ({exc}); give an OpenStack network_data.json document."
            ) from exc
    if not isinstance(raw, dict):
        raise ValidationError("network_data must be a JSON object (OpenStack network_data.json format).")
    return raw
