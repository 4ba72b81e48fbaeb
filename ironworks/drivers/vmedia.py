"""``redfish-virtual-media`` boot interface: the BMC boots an ISO that Ironworks publishes over HTTP.

Ramdisk (agent deploy, cleaning, rescue, servicing): ``prepare_ramdisk`` pre-generates the agent
token, builds the node's deploy ISO (``driver_info/deploy_iso`` remastered, or ``deploy_kernel`` +
``deploy_ramdisk`` made into a BIOS/UEFI ISO) with the agent's kernel parameters, the token and a
``network_data.json`` when one is given (so the agent needs no DHCP options from Ironworks), publishes
it under ``<http_root>/<[vmedia] publish_subdir>/`` with an unguessable name (the ISO carries the
token), ejects whatever the virtual CD holds, inserts the ISO and sets the next boot (once) to the CD.

Instance (the ``ramdisk`` deploy, ``ironworks.drivers.ramdisk_deploy``): ``stage_instance`` fetches
``instance_info/boot_iso`` through the image cache, checks that it is an ISO with a boot config,
reserves its size in the ``[images] disk_budget_bytes`` budget and remasters it with
``instance_info/kernel_append_params`` into the publish directory (or hard-links the cached master
there when there are none: no copy), all before the BMC is touched. ``prepare_instance`` inserts it
and boots the CD persistently (reboots come back to it), or once for ``instance_info/one_shot``
(``retire_published`` then deletes it). For the ``agent`` deploy ``prepare_instance`` ejects,
deletes the ramdisk ISO and boots the disk.

Every preparation that fails removes what it published, ejects what it inserted and releases what it
reserved before it raises. Nothing logged, recorded or raised names the token or the published file
name (records show ``<uuid>-******.iso``); the name is kept in ``driver_internal_info`` under a key
that the API masks and the database seals.

A BMC without virtual media: the devices the BMC offers are read (and cached in
``driver_internal_info/vmedia_devices``) before anything is built; a BMC with no CD/DVD device is
refused then, and ``validate`` refuses it from the cached answer on every later request. The API
calls ``validate`` before it moves a node into a deploy (``validate_before_deploy``), so what can be
checked without the ISO itself is refused with the node still ``available``. What the inputs must be
is in ``vmedia_inputs``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from ironworks.config import Config
from ironworks.drivers import vmedia_inputs as inputs
from ironworks.drivers.base import BootDevice, BootInterface, ManagementInterface, Task, ValidationError
from ironworks.drivers.redfish import PROPERTIES as REDFISH_PROPERTIES
from ironworks.drivers.redfish import RedfishBase
from ironworks.drivers.vmedia_inputs import one_shot
from ironworks.errors import ConfigError, IronworksError
from ironworks.images import iso as isolib
from ironworks.images.cache import ImageCache
from ironworks.images.errors import display
from ironworks.netboot import layout as lay

LOG = logging.getLogger(__name__)
#: driver_internal_info key: what the virtual CD holds for the node (``{"state": ..., "secret_name": ...}``)
STATE_KEY = "vmedia"
#: driver_internal_info key: the virtual media devices the BMC offered when last asked
DEVICES_KEY = "vmedia_devices"
TOKEN_KEY = "agent_secret_token"
#: where a deploy ISO carries the node's network_data.json (the ramdisk's /init reads it for static addressing)
NETWORK_DATA_PATH = "openstack/latest/network_data.json"
PROPERTIES: dict[str, str] = {
    **REDFISH_PROPERTIES,
    "deploy_iso": "URL (http, https, file) of an agent ramdisk ISO to remaster with the agent's parameters. "
    "Either this or deploy_kernel + deploy_ramdisk.",
    "deploy_iso_checksum": "sha256:<hex> (or sha512:) the deploy ISO must have. Optional.",
    "deploy_kernel": "URL or absolute path of the agent ramdisk's kernel (an ISO is built from it). Optional.",
    "deploy_ramdisk": "URL or absolute path of the agent ramdisk's initramfs. Optional.",
    "deploy_kernel_checksum": "sha256:<hex> the kernel must have. Optional.",
    "deploy_ramdisk_checksum": "sha256:<hex> the initramfs must have. Optional.",
    "rescue_iso": "ISO of the rescue ramdisk (default: the deploy ISO or kernel/ramdisk). Optional.",
    "rescue_kernel": "kernel of the rescue ramdisk (default: deploy_kernel). Optional.",
    "rescue_ramdisk": "initramfs of the rescue ramdisk (default: deploy_ramdisk). Optional.",
    "kernel_append_params": "extra kernel parameters for this node's ramdisk. Optional.",
    "network_data": "network_data.json (OpenStack format) put into the deploy ISO, for static addressing. Optional.",
}


def _inspect_user_iso(master: Path, source: str) -> None:
    """``inspect_iso`` of the cached copy of ``source``; an error names the user's ISO, not the cache's file."""
    try:
        isolib.inspect_iso(master)
    except IronworksError as exc:
        shown = f"instance_info/boot_iso {display(source)}"
        exc.message = exc.message.replace(str(master), shown).replace(master.name, shown)
        exc.args = (exc.message,)
        raise


def is_ramdisk_deploy(task: Task) -> bool:
    """Whether the node's deploy interface is ``ramdisk`` (the instance is an ISO or kernel + ramdisk)."""
    with contextlib.suppress(Exception):  # a task without a resolvable deploy interface is not a ramdisk deploy
        return getattr(task.interface("deploy"), "name", None) == "ramdisk"
    return False


class VirtualMediaBoot(RedfishBase, BootInterface):
    """Boots the agent ramdisk or a user's ISO from the BMC's virtual CD, published over HTTP."""

    name = "redfish-virtual-media"
    validate_before_deploy = True
    properties: ClassVar[dict[str, str]] = PROPERTIES

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._cache: ImageCache | None = None

    # ---- validate ------------------------------------------------------------------------
    def validate(self, task: Task) -> None:
        """Redfish driver_info, a usable http_url, the ISO sources and parameters; no BMC traffic."""
        super().validate(task)
        layout = self._layout()
        problem = layout.unroutable_address()
        if problem:
            raise ValidationError(problem)
        devices = task.node.driver_internal_info.get(DEVICES_KEY)
        if isinstance(devices, list) and self._device() not in devices:
            raise ValidationError(self._no_device_message(task, devices))
        if is_ramdisk_deploy(task):
            inputs.instance_source(task, self._image_cache())
            inputs.instance_params(task)
            one_shot(task)
            return
        with contextlib.suppress(Exception):
            if getattr(task.interface("deploy"), "name", "agent") == "fake":
                return
        inputs.ramdisk_sources(task, self._image_cache())
        inputs.ramdisk_params(task, self._config(), {"ipa-api-url": "http://ironworks.invalid"}, token="x")
        inputs.network_data(task)

    # ---- the agent ramdisk -----------------------------------------------------------------
    def prepare_ramdisk(self, task: Task, *, params: dict[str, Any] | None = None) -> None:
        """Build, publish and insert the node's deploy ISO; boot it once. On failure nothing is left."""
        node = task.node
        info = node.driver_internal_info
        self._check_device(task)
        sources = inputs.ramdisk_sources(task, self._image_cache())
        token = secrets.token_urlsafe(32)
        tokens = inputs.ramdisk_params(task, self._config(), params, token=token)
        network_data = inputs.network_data(task)
        # an earlier ISO of the node goes first: a retried flow's, or a ramdisk instance's (rescue):
        # unrescue stages the instance's ISO again from the cache
        self._tear_down(task)
        info[TOKEN_KEY] = token
        name = self._new_name(node.uuid)
        cache = self._image_cache()
        try:
            dest = self._publish_dir() / name
            part = dest.with_name(f".{name}.part")
            work = self._workdir()
            try:
                masters = [cache.fetch(src, expected=checksum, owner=node.uuid) for src, checksum in sources]
                size = sum(m.stat().st_size for m in masters) + (4 << 20)  # + boot loaders and file system
                cache.reserve(node.uuid, size, what=f"the deploy ISO of node {node.uuid}")
                if len(masters) == 1:
                    extra = {NETWORK_DATA_PATH: json.dumps(network_data).encode()} if network_data else None
                    isolib.remaster(masters[0], part, tokens, extra_files=extra, workdir=work)
                else:
                    isolib.build_deploy_iso(
                        masters[0], masters[1], part, tokens, network_data=network_data, workdir=work
                    )
                os.chmod(part, 0o600)  # it carries the agent token: only the serving process reads it
                os.replace(part, dest)
            finally:
                shutil.rmtree(work, ignore_errors=True)
                part.unlink(missing_ok=True)
            info[STATE_KEY] = {"state": "ramdisk", "secret_name": name}
            self._insert(task, name, persistent=False)
        except BaseException as exc:
            self._undo(task, name, inserted=isinstance(info.get(STATE_KEY), dict))
            info.pop(TOKEN_KEY, None)
            self._scrub(exc, name)
            raise
        task.record(f"Virtual media: deploy ISO {self._shown(node.uuid)} inserted; booting it once")

    def clean_up_ramdisk(self, task: Task) -> None:
        """Eject the ramdisk ISO and delete it; idempotent. An instance's ISO (ramdisk deploy) stays."""
        state = task.node.driver_internal_info.get(STATE_KEY)
        if isinstance(state, dict) and state.get("state") in ("staged", "instance"):
            return
        self._tear_down(task)

    # ---- the instance ----------------------------------------------------------------------
    def needs_precheck(self, task: Task) -> bool:
        """A ramdisk deploy of ``instance_info/boot_iso``: the API has the conductor check the ISO first."""
        return is_ramdisk_deploy(task) and bool(task.node.instance_info.get("boot_iso"))

    def precheck_deploy(self, task: Task) -> None:
        """Before the node moves (the API waits for this): the BMC has a CD, and ``boot_iso`` downloads,
        matches its checksum, is an ISO with a boot config and, remastered, fits the disk budget.

        Nothing is published or reserved; the master stays in the cache, so the deploy that follows
        does not download it again. The same checks run again when the deploy stages the ISO.
        """
        node = task.node
        self._check_device(task)
        cache = self._image_cache()
        source, checksum = inputs.instance_source(task, cache)
        tokens = inputs.instance_params(task)
        master = cache.fetch(source, expected=checksum, owner=node.uuid)
        _inspect_user_iso(master, source)
        if tokens:
            cache.check_fits(node.uuid, master.stat().st_size, what=f"the remastered boot ISO of node {node.uuid}")

    def stage_instance(self, task: Task) -> None:
        """Ramdisk deploy: fetch, check, reserve and publish ``instance_info/boot_iso``; nothing inserted yet.

        Runs before the node's BMC is changed (the deploy interface's ``prepare``), so a bad ISO, a
        failed download, a wrong checksum or a full budget is refused with nothing left behind.
        """
        node = task.node
        self._check_device(task)
        source, checksum = inputs.instance_source(task, self._image_cache())
        tokens = inputs.instance_params(task)
        self._tear_down(task)
        cache = self._image_cache()
        name = self._new_name(node.uuid)
        try:
            master = cache.fetch(source, expected=checksum, owner=node.uuid)
            _inspect_user_iso(master, source)
            dest = self._publish_dir() / name
            if tokens:
                cache.reserve(node.uuid, master.stat().st_size, what=f"the remastered boot ISO of node {node.uuid}")
                work = self._workdir()
                part = dest.with_name(f".{name}.part")
                try:
                    isolib.remaster(master, part, tokens, workdir=work)
                    os.chmod(part, 0o644)
                    os.replace(part, dest)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                    with contextlib.suppress(FileNotFoundError):
                        part.unlink()
                how = f"remastered with {len(tokens)} kernel parameter(s)"
            else:
                cache.link_into(master, dest, on_copy=lambda m: task.record(m, severity="WARNING"))
                how = "hard-linked from the image cache (no kernel parameters to inject)"
        except BaseException as exc:
            self._undo(task, name, inserted=False)
            self._scrub(exc, name)
            raise
        node.driver_internal_info[STATE_KEY] = {"state": "staged", "secret_name": name}
        task.record(f"Virtual media: boot ISO {self._shown(node.uuid)} published, {how}")

    def prepare_instance(self, task: Task) -> None:
        """Ramdisk deploy: insert the staged ISO and boot the CD; agent deploy: eject, delete, boot the disk."""
        if not is_ramdisk_deploy(task):
            self._tear_down(task)
            self._set_boot(task, BootDevice.DISK, persistent=True)
            return
        state = task.node.driver_internal_info.get(STATE_KEY)
        if isinstance(state, dict) and state.get("state") in ("instance", "retired"):
            return  # inserted already (the deploy step did it; the conductor asks again after the last step)
        if not (isinstance(state, dict) and state.get("state") == "staged"):
            self.stage_instance(task)
            state = task.node.driver_internal_info[STATE_KEY]
        name = str(state["secret_name"])
        shot = one_shot(task)
        try:
            self._insert(task, name, persistent=not shot)
        except BaseException as exc:
            self._undo(task, name, inserted=True)
            self._scrub(exc, name)
            raise
        task.node.driver_internal_info[STATE_KEY] = {"state": "instance", "secret_name": name}
        how = "once (one-shot)" if shot else "persistently (reboots come back to it)"
        task.record(f"Virtual media: boot ISO {self._shown(task.node.uuid)} inserted; booting it {how}")

    def retire_published(self, task: Task) -> None:
        """One-shot: delete the published ISO and release its budget; the CD stays as the machine booted it."""
        state = task.node.driver_internal_info.get(STATE_KEY)
        if isinstance(state, dict) and state.get("secret_name"):
            self._delete(str(state["secret_name"]))
            task.node.driver_internal_info[STATE_KEY] = {"state": "retired"}
        self._image_cache().release(task.node.uuid)

    def clean_up_instance(self, task: Task) -> None:
        """Eject, delete the node's ISO and release its budget; idempotent."""
        self._tear_down(task)

    # ---- helpers ----------------------------------------------------------------------------
    def _config(self) -> Config:
        if not isinstance(self.config, Config):
            raise ConfigError(f"The {self.name} boot interface was created without a configuration.")
        return self.config

    def _layout(self) -> lay.NetbootLayout:
        return lay.NetbootLayout.from_config(self._config())

    def _device(self) -> str:
        return self._config().vmedia.device or "cd"

    def _image_cache(self) -> ImageCache:
        if self._cache is None:
            self._cache = ImageCache.from_config(self._config())
        return self._cache

    def _publish_dir(self) -> Path:
        sub = self._config().vmedia.publish_subdir.strip("/") or "vmedia"
        if ".." in Path(sub).parts or Path(sub).is_absolute():
            raise ConfigError(f"[vmedia] publish_subdir {sub!r} must be a plain subdirectory of [netboot] http_root.")
        path = self._layout().http_root / sub
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _workdir(self) -> Path:
        base = self._config().state_path / "vmedia-work"
        base.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=base))

    @staticmethod
    def _new_name(uuid: str) -> str:
        return f"{uuid}-{secrets.token_urlsafe(24)}.iso"

    def _shown(self, uuid: str) -> str:
        """The published ISO's URL as records and messages show it: the secret part masked."""
        sub = self._config().vmedia.publish_subdir.strip("/") or "vmedia"
        return f"{self._layout().http_url}/{sub}/{uuid}-******.iso"

    def _url(self, name: str) -> str:
        return self._layout().url_of(self._publish_dir() / name)

    def _no_device_message(self, task: Task, devices: list[Any]) -> str:
        offered = ", ".join(str(d) for d in devices) or "none"
        return (
            f"The BMC of node {task.node.uuid} offers no virtual {self._device()} device (it offers: {offered}), "
            "so the redfish-virtual-media boot interface cannot boot it. Use a network boot interface "
            f"(`baremetal node set {task.node.uuid} --boot-interface ipxe`), or enable virtual media on the BMC "
            "and try again (the BMC is asked again at the next deploy, clean or rescue)."
        )

    def on_verify(self, task: Task) -> None:
        """Cache the BMC's virtual media devices at verify time, so a deploy, clean or rescue request
        for a BMC without a CD is refused by ``validate`` (400, the node stays put) the first time."""
        try:
            devices = self.client.virtual_media_kinds(self.endpoint(task))
        except IronworksError as exc:  # the node is still manageable: prepare_ramdisk asks again
            task.record(f"Could not read the BMC's virtual media devices: {exc.message}", severity="WARNING")
            return
        task.node.driver_internal_info[DEVICES_KEY] = devices
        if self._device() not in devices:
            task.record(self._no_device_message(task, devices), severity="WARNING")

    def _check_device(self, task: Task) -> None:
        """Read (and cache) the BMC's virtual media devices; refuse a BMC without the configured one."""
        ep = self.endpoint(task)
        devices = self.client.virtual_media_kinds(ep)
        task.node.driver_internal_info[DEVICES_KEY] = devices
        if self._device() not in devices:
            raise ValidationError(self._no_device_message(task, devices))

    def _set_boot(self, task: Task, device: str, *, persistent: bool) -> None:
        mgmt = task.interface("management")
        if isinstance(mgmt, ManagementInterface):
            mgmt.set_boot_device(task, device, persistent=persistent)

    def _insert(self, task: Task, name: str, *, persistent: bool) -> None:
        """Eject what the CD holds, insert the node's ISO, boot from the CD."""
        ep = self.endpoint(task)
        device = self._device()
        self.client.eject_media(ep, device=device)
        self.client.insert_media(ep, self._url(name), device=device, shown_url=self._shown(task.node.uuid))
        self._set_boot(task, BootDevice.CDROM, persistent=persistent)

    def _delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self._publish_dir() / name).unlink()

    def _tear_down(self, task: Task) -> None:
        """Eject (when the node's ISO may be in), delete the node's ISO, release; an eject error is raised last."""
        info = task.node.driver_internal_info
        state = info.get(STATE_KEY)
        problem: BaseException | None = None
        if isinstance(state, dict) and state.get("state") in ("ramdisk", "instance", "retired"):
            try:
                self.client.eject_media(self.endpoint(task), device=self._device())
            except Exception as exc:
                problem = exc
        if isinstance(state, dict) and state.get("secret_name"):
            self._delete(str(state["secret_name"]))
        self._remove_node_files(task.node.uuid)
        self._image_cache().release(task.node.uuid)
        info.pop(STATE_KEY, None)
        if problem is not None:
            raise problem

    def _remove_node_files(self, uuid: str) -> None:
        """Every published ISO of the node (one a crashed conductor left behind, too)."""
        with contextlib.suppress(FileNotFoundError):
            for entry in self._publish_dir().iterdir():
                if entry.name.startswith((f"{uuid}-", f".{uuid}-")):
                    entry.unlink(missing_ok=True)

    def _undo(self, task: Task, name: str, *, inserted: bool) -> None:
        """After a failed preparation: eject, delete, release; each part best-effort, recorded when it fails."""
        if inserted:
            try:
                self.client.eject_media(self.endpoint(task), device=self._device())
            except Exception as exc:
                task.record(
                    f"After the failure, ejecting the virtual {self._device()} failed too: {exc}", severity="WARNING"
                )
        try:
            self._delete(name)
            self._remove_node_files(task.node.uuid)
            self._image_cache().release(task.node.uuid)
        except Exception as exc:
            LOG.warning("node %s: removing a failed virtual media ISO failed too: %s", task.node.uuid, exc)
            task.record(f"After the failure, removing the ISO failed too: {exc}", severity="WARNING")
        task.node.driver_internal_info.pop(STATE_KEY, None)

    @staticmethod
    def _scrub(exc: BaseException, name: str) -> None:
        """Mask the published file name's secret part in ``exc``'s message (a BMC may echo the URL back)."""
        secret = name.removesuffix(".iso").split("-", 5)[-1]
        if isinstance(exc, IronworksError) and secret in exc.message:
            exc.message = exc.message.replace(secret, "******")
            exc.args = (exc.message,)
