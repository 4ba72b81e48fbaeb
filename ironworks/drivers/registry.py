"""Hardware types and interface implementations, found through entry points, resolved per node.

* group ``ironworks.hardware_types``: name -> ``HardwareType`` subclass;
* group ``ironworks.interfaces``: ``<kind>.<name>`` -> ``Interface`` subclass.

A node names its hardware type (``driver``) and, optionally, one implementation per kind
(``<kind>_interface``); an unset kind uses the hardware type's default (the first it supports).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar

from ironworks.drivers.base import INTERFACE_KINDS, Interface
from ironworks.errors import InvalidInput, NotFound


class HardwareType:
    """A family of machines: which implementations of each interface kind it supports."""

    name: ClassVar[str]
    #: kind -> implementation names, the default first
    supported: ClassVar[dict[str, list[str]]]


@functools.cache
def _entry_points(group: str) -> dict[str, Any]:
    """Entry points of ``group`` by name, not loaded: a broken or heavy plugin costs nothing unused."""
    return {ep.name: ep for ep in entry_points(group=group)}


@functools.cache
def _load(group: str, name: str) -> Any:
    return _entry_points(group)[name].load()


def hardware_type_names() -> list[str]:
    """Every installed hardware type's name."""
    return sorted(_entry_points("ironworks.hardware_types"))


def hardware_type_class(name: str) -> type[HardwareType]:
    """The installed hardware type ``name`` (loaded on first use)."""
    cls: type[HardwareType] = _load("ironworks.hardware_types", name)
    return cls


def interface_class(kind: str, name: str) -> type[Interface]:
    """The implementation class registered as ``<kind>.<name>``."""
    key = f"{kind}.{name}"
    if key not in _entry_points("ironworks.interfaces"):
        raise NotFound(f"No {kind} interface named {name!r} is installed.")
    cls: type[Interface] = _load("ironworks.interfaces", key)
    return cls


@dataclass(frozen=True, slots=True)
class Driver:
    """The interfaces a node uses, one instance per kind."""

    hardware_type: str
    interfaces: dict[str, Interface]

    def __getitem__(self, kind: str) -> Interface:
        return self.interfaces[kind]


class DriverFactory:
    """Builds ``Driver``s for nodes from the enabled hardware types; instances are cached."""

    def __init__(self, enabled: list[str], config: Any = None) -> None:
        installed = hardware_type_names()
        missing = [n for n in enabled if n not in installed]
        if missing:
            raise NotFound(
                f"Enabled hardware type(s) {', '.join(missing)} are not installed; installed: {', '.join(installed)}."
            )
        for name in enabled:
            hardware_type_class(name)  # fail at start-up, not on the first request, if it is broken
        self.enabled = list(enabled)
        self.config = config
        self._instances: dict[tuple[str, str], Interface] = {}

    def hardware_type(self, driver: str) -> type[HardwareType]:
        """The enabled hardware type named ``driver``."""
        if driver not in self.enabled:
            raise InvalidInput(
                f"Driver {driver!r} is not enabled; enabled drivers: {', '.join(self.enabled)}. "
                "Set [conductor] enabled_hardware_types to enable it."
            )
        return hardware_type_class(driver)

    def resolve_names(self, driver: str, requested: dict[str, str | None]) -> dict[str, str]:
        """Interface names per kind for a node: requested ones checked, the rest defaulted."""
        hw = self.hardware_type(driver)
        out: dict[str, str] = {}
        for kind in INTERFACE_KINDS:
            supported = hw.supported.get(kind, [])
            want = requested.get(kind)
            if want:
                if want not in supported:
                    raise InvalidInput(
                        f"Hardware type {driver!r} does not support {kind}_interface {want!r}; "
                        f"supported: {', '.join(supported) or 'none'}."
                    )
                out[kind] = want
            elif supported:
                out[kind] = supported[0]
        return out

    def interface(self, kind: str, name: str) -> Interface:
        """A shared instance of implementation ``name`` of ``kind``."""
        key = (kind, name)
        inst = self._instances.get(key)
        if inst is None:
            inst = interface_class(kind, name)(self.config)
            self._instances[key] = inst
        return inst

    def driver_for(self, driver: str, requested: dict[str, str | None]) -> Driver:
        """The ``Driver`` of a node with hardware type ``driver`` and ``requested`` interfaces."""
        names = self.resolve_names(driver, requested)
        return Driver(driver, {kind: self.interface(kind, name) for kind, name in names.items()})
