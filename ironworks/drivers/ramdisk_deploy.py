"""``ramdisk`` deploy interface: the instance *is* a ramdisk, booted on every start; no agent, no disk image.

As Ironic's ``RamdiskDeploy``: its one deploy step, ``deploy``, has the boot interface prepare the
instance (``prepare_instance``) and powers the machine on; the node goes ``active`` without an agent.
``instance_info`` names what to boot:

- ``boot_iso`` (seed 003) with the ``redfish-virtual-media`` boot interface: the ISO is downloaded
  and cached, remastered with ``instance_info/kernel_append_params`` when given, published and
  inserted (``ironworks.drivers.vmedia``);
- ``kernel`` + ``ramdisk`` with a network boot interface (``pxe``, ``ipxe``): they boot over the
  network, every time, with ``kernel_append_params``.

``instance_info/one_shot`` (default false): once the machine was powered on, the published ISO is
deleted and its disk budget released; the machine runs from RAM and a reboot will not find the ISO.
``one_shot_grace`` (seconds, default 30) is how long the BMC is given to read the boot files first.

The ISO is fetched, checked and published in ``prepare`` (before the deploy step touches the BMC):
a bad ISO, failed download, wrong checksum, bad parameter or full budget fails the deploy with
nothing published, inserted or reserved.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

from ironworks.drivers.base import BootInterface, DeployInterface, PowerState, Task, ValidationError
from ironworks.drivers.steps import Done, Outcome, Wait, step
from ironworks.drivers.vmedia import VirtualMediaBoot
from ironworks.drivers.vmedia_inputs import one_shot

#: driver_internal_info key: when the one-shot ISO may be deleted (wall-clock seconds)
ONE_SHOT_KEY = "ramdisk_one_shot_after"
#: driver_internal_info key: the deploy step has started changing the machine (power, media)
BOOTING_KEY = "ramdisk_booting"
DEFAULT_GRACE = 30.0
NETBOOT = ("pxe", "ipxe")


def _grace(task: Task) -> float:
    raw = task.node.instance_info.get("one_shot_grace", DEFAULT_GRACE)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = -1.0
    if value < 0:
        raise ValidationError(f"instance_info/one_shot_grace must be a number of seconds >= 0, not {raw!r}.")
    return value


class RamdiskDeploy(DeployInterface):
    """Deploys a ramdisk instance: a user's ISO over virtual media, or kernel + ramdisk over the network."""

    name = "ramdisk"
    validate_before_deploy = True
    properties: ClassVar[dict[str, str]] = {}
    instance_properties: ClassVar[dict[str, str]] = {
        "boot_iso": "URL (http, https, file) of the ISO to boot (redfish-virtual-media).",
        "boot_iso_checksum": "sha256:<hex> (or sha512:) the ISO must have. Optional.",
        "kernel": "URL of the kernel to boot (pxe, ipxe).",
        "ramdisk": "URL of the initramfs to boot (pxe, ipxe).",
        "kernel_append_params": "kernel parameters injected into the ISO's boot entries (or the netboot line).",
        "one_shot": "true: delete the published ISO once the node is active (a reboot will not find it).",
        "one_shot_grace": "seconds the BMC gets to read the ISO before a one-shot delete (default 30).",
    }

    def validate(self, task: Task) -> None:
        """``boot_iso`` or ``kernel`` + ``ramdisk``, matching the boot interface; one_shot is a bool."""
        ii = task.node.instance_info
        boot = self._boot(task)
        has_iso, has_kernel = bool(ii.get("boot_iso")), bool(ii.get("kernel") or ii.get("ramdisk"))
        if has_iso and has_kernel:
            raise ValidationError(
                "instance_info has both boot_iso and kernel/ramdisk: a ramdisk deploy boots one of them. "
                f"Unset one (`baremetal node unset {task.node.uuid} --instance-info kernel --instance-info ramdisk`)."
            )
        if has_iso and not isinstance(boot, VirtualMediaBoot):
            raise ValidationError(
                f"instance_info/boot_iso needs the redfish-virtual-media boot interface, not {boot.name!r}: "
                f"`baremetal node set {task.node.uuid} --boot-interface redfish-virtual-media` (a Redfish node), "
                "or give instance_info/kernel and ramdisk to boot over the network."
            )
        if not has_iso:
            missing = [k for k in ("kernel", "ramdisk") if not ii.get(k)]
            if missing:
                raise ValidationError(
                    f"A ramdisk deploy needs instance_info/boot_iso (virtual media) or instance_info/kernel and "
                    f"ramdisk (network boot); instance_info/{' and '.join(missing)} missing. Set them with "
                    f"`baremetal node set {task.node.uuid} --instance-info boot_iso=<URL>`."
                )
            if boot.name not in (*NETBOOT, "fake"):
                raise ValidationError(
                    f"instance_info/kernel and ramdisk boot over pxe or ipxe, not the {boot.name!r} boot interface: "
                    f"`baremetal node set {task.node.uuid} --boot-interface ipxe`, or give instance_info/boot_iso "
                    "to boot an ISO over virtual media."
                )
        one_shot(task)
        _grace(task)

    def prepare(self, task: Task) -> None:
        """Check the boot configuration and, for virtual media, fetch, check and publish the ISO (no BMC change)."""
        boot = self._boot(task)
        boot.validate(task)
        task.node.driver_internal_info.pop(ONE_SHOT_KEY, None)
        if isinstance(boot, VirtualMediaBoot) and task.node.instance_info.get("boot_iso"):
            boot.stage_instance(task)

    @step("deploy", priority=100)
    def deploy(self, task: Task) -> Outcome:
        """Boot the instance: prepare its boot, power on; one-shot: delete the ISO after the grace period."""
        info = task.node.driver_internal_info
        boot = self._boot(task)
        due = info.get(ONE_SHOT_KEY)
        if due is None:
            info[BOOTING_KEY] = True
            task.set_power_state(PowerState.OFF)
            boot.prepare_instance(task)
            task.set_power_state(PowerState.ON)
            task.record("Ramdisk instance booting; no agent is involved")
            if not (one_shot(task) and isinstance(boot, VirtualMediaBoot)):
                info.pop(BOOTING_KEY, None)
                return Done()
            grace = _grace(task)
            info[ONE_SHOT_KEY] = time.time() + grace
            if grace > 0:
                return Wait(grace, reason="one-shot: giving the BMC time to read the ISO before it is deleted")
        elif time.time() < float(due):
            return Wait(max(0.5, float(due) - time.time()), reason="one-shot: waiting to delete the ISO")
        assert isinstance(boot, VirtualMediaBoot)
        boot.retire_published(task)
        info.pop(ONE_SHOT_KEY, None)
        info.pop(BOOTING_KEY, None)
        task.record(
            "One-shot: the published boot ISO was deleted and its disk budget released; a reboot will not find it"
        )
        return Done()

    def tear_down(self, task: Task) -> None:
        """Undeploy: power off, eject and delete what the instance booted."""
        task.set_power_state(PowerState.OFF)
        self._boot(task).clean_up_instance(task)
        for key in (ONE_SHOT_KEY, BOOTING_KEY):
            task.node.driver_internal_info.pop(key, None)

    def clean_up_after_failure(self, task: Task) -> None:
        """A failed deploy leaves nothing published, inserted or reserved; a machine it booted is powered off.

        A failure before the deploy step changed the machine (a refused ISO, the budget) leaves its power alone.
        """
        info = task.node.driver_internal_info
        actions: list[tuple[str, Callable[[], object]]] = [
            ("remove the instance's boot media", lambda: self._boot(task).clean_up_instance(task))
        ]
        if info.get(BOOTING_KEY):
            actions.insert(0, ("power the machine off", lambda: task.set_power_state(PowerState.OFF)))
        for what, action in actions:
            try:
                action()
            except Exception as exc:
                task.record(f"After the failure, could not {what}: {exc}", severity="WARNING")
        for key in (ONE_SHOT_KEY, BOOTING_KEY):
            info.pop(key, None)

    def take_over(self, task: Task) -> None:
        """Adopt: the instance runs already; nothing to boot."""

    @staticmethod
    def _boot(task: Task) -> BootInterface:
        boot = task.interface("boot")
        assert isinstance(boot, BootInterface)
        return boot
