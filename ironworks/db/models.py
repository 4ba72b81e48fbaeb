"""SQLAlchemy 2 models: nodes, ports, conductors, the durable action queue, node events (the
timeline), firmware components, BIOS settings and node inventories (what in-band inspection found).

Timestamps are naive UTC (``utcnow()``); the API renders them with ``+00:00``. Secret values inside
``driver_info``, ``instance_info`` and ``driver_internal_info`` are stored encrypted (see
``ironworks.db.secrets``); ``actions.args`` is encrypted whole because it may carry a config drive
or a rescue password.
"""

from __future__ import annotations

import datetime as dt
import uuid as uuidlib
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> dt.datetime:
    """Current time, naive UTC (what the database stores)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def new_uuid() -> str:
    """A random UUID as a string."""
    return str(uuidlib.uuid4())


class Base(DeclarativeBase):
    """Declarative base of every table."""

    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


#: The driver interfaces a node names (``<name>_interface`` columns).
INTERFACES = (
    "bios",
    "boot",
    "console",
    "deploy",
    "firmware",
    "inspect",
    "management",
    "network",
    "power",
    "raid",
    "rescue",
    "storage",
    "vendor",
)


class Node(Base):
    """A physical machine."""

    __tablename__ = "nodes"
    __table_args__ = (
        Index("nodes_provision_state_idx", "provision_state"),
        Index("nodes_reservation_idx", "reservation"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=new_uuid)
    name: Mapped[str | None] = mapped_column(String(255), unique=True)
    driver: Mapped[str] = mapped_column(String(255))
    driver_info: Mapped[dict[str, Any]] = mapped_column(default=dict)
    driver_internal_info: Mapped[dict[str, Any]] = mapped_column(default=dict)
    properties: Mapped[dict[str, Any]] = mapped_column(default=dict)
    instance_info: Mapped[dict[str, Any]] = mapped_column(default=dict)
    instance_uuid: Mapped[str | None] = mapped_column(String(36), unique=True)
    extra: Mapped[dict[str, Any]] = mapped_column(default=dict)
    provision_state: Mapped[str] = mapped_column(String(20), default="enroll")
    target_provision_state: Mapped[str | None] = mapped_column(String(20))
    provision_updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    power_state: Mapped[str | None] = mapped_column(String(20))
    target_power_state: Mapped[str | None] = mapped_column(String(20))
    maintenance: Mapped[bool] = mapped_column(Boolean, default=False)
    maintenance_reason: Mapped[str | None] = mapped_column(Text)
    fault: Mapped[str | None] = mapped_column(String(255))
    last_error: Mapped[str | None] = mapped_column(Text)
    reservation: Mapped[str | None] = mapped_column(String(255))
    conductor_group: Mapped[str] = mapped_column(String(255), default="")
    console_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    inspection_started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    inspection_finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    clean_step: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    deploy_step: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    service_step: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    boot_mode: Mapped[str | None] = mapped_column(String(16))
    secure_boot: Mapped[bool | None] = mapped_column(Boolean)
    resource_class: Mapped[str | None] = mapped_column(String(80))
    traits: Mapped[list[Any]] = mapped_column(default=list)
    automated_clean: Mapped[bool | None] = mapped_column(Boolean)
    protected: Mapped[bool] = mapped_column(Boolean, default=False)
    protected_reason: Mapped[str | None] = mapped_column(Text)
    owner: Mapped[str | None] = mapped_column(String(255))
    lessee: Mapped[str | None] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text)
    retired: Mapped[bool] = mapped_column(Boolean, default=False)
    retired_reason: Mapped[str | None] = mapped_column(Text)
    network_data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    shard: Mapped[str | None] = mapped_column(String(255))
    parent_node: Mapped[str | None] = mapped_column(String(36))
    disable_power_off: Mapped[bool] = mapped_column(Boolean, default=False)
    chassis_uuid: Mapped[str | None] = mapped_column(String(36))
    bios_interface: Mapped[str | None] = mapped_column(String(255))
    boot_interface: Mapped[str | None] = mapped_column(String(255))
    console_interface: Mapped[str | None] = mapped_column(String(255))
    deploy_interface: Mapped[str | None] = mapped_column(String(255))
    firmware_interface: Mapped[str | None] = mapped_column(String(255))
    inspect_interface: Mapped[str | None] = mapped_column(String(255))
    management_interface: Mapped[str | None] = mapped_column(String(255))
    network_interface: Mapped[str | None] = mapped_column(String(255))
    power_interface: Mapped[str | None] = mapped_column(String(255))
    raid_interface: Mapped[str | None] = mapped_column(String(255))
    rescue_interface: Mapped[str | None] = mapped_column(String(255))
    storage_interface: Mapped[str | None] = mapped_column(String(255))
    vendor_interface: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime, onupdate=utcnow)


class Port(Base):
    """A network interface of a node, known by its MAC address."""

    __tablename__ = "ports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=new_uuid)
    address: Mapped[str] = mapped_column(String(18), unique=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    name: Mapped[str | None] = mapped_column(String(255), unique=True)
    extra: Mapped[dict[str, Any]] = mapped_column(default=dict)
    local_link_connection: Mapped[dict[str, Any]] = mapped_column(default=dict)
    internal_info: Mapped[dict[str, Any]] = mapped_column(default=dict)
    pxe_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    physical_network: Mapped[str | None] = mapped_column(String(64))
    is_smartnic: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime, onupdate=utcnow)


class Conductor(Base):
    """A conductor process; alive while it heartbeats."""

    __tablename__ = "conductors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255), unique=True)
    online: Mapped[bool] = mapped_column(Boolean, default=True)
    conductor_group: Mapped[str] = mapped_column(String(255), default="")
    hardware_types: Mapped[list[Any]] = mapped_column(default=list)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Action(Base):
    """An accepted intent in the durable queue: what to do to which node, and how it went.

    ``status``: ``pending`` (waiting for a conductor, not before ``not_before``), ``running``
    (claimed by ``conductor``), ``done`` or ``failed``.
    """

    __tablename__ = "actions"
    __table_args__ = (Index("actions_status_idx", "status", "not_before"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(64))
    args: Mapped[str | None] = mapped_column(Text)  # encrypted JSON
    status: Mapped[str] = mapped_column(String(16), default="pending")
    conductor: Mapped[str | None] = mapped_column(String(255))
    not_before: Mapped[dt.datetime | None] = mapped_column(DateTime)
    request_id: Mapped[str | None] = mapped_column(String(64))
    user: Mapped[str | None] = mapped_column(String(255))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class NodeEvent(Base):
    """One entry of a node's timeline (``GET /v1/nodes/{id}/history``)."""

    __tablename__ = "node_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=new_uuid)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    event_type: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16), default="INFO")
    event: Mapped[str] = mapped_column(Text)
    conductor: Mapped[str | None] = mapped_column(String(255))
    user: Mapped[str | None] = mapped_column(String(255))
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class FirmwareComponent(Base):
    """A firmware component of a node and its versions."""

    __tablename__ = "firmware_components"
    __table_args__ = (UniqueConstraint("node_id", "component"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    component: Mapped[str] = mapped_column(String(255))
    initial_version: Mapped[str | None] = mapped_column(String(255))
    current_version: Mapped[str | None] = mapped_column(String(255))
    last_version_flashed: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime, onupdate=utcnow)


class BiosSetting(Base):
    """A BIOS setting of a node, cached from the BMC."""

    __tablename__ = "bios_settings"
    __table_args__ = (UniqueConstraint("node_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    value: Mapped[str | None] = mapped_column(Text)
    attribute_type: Mapped[str | None] = mapped_column(String(255))
    allowable_values: Mapped[list[Any] | None] = mapped_column(JSON)
    lower_bound: Mapped[int | None] = mapped_column(Integer)
    upper_bound: Mapped[int | None] = mapped_column(Integer)
    min_length: Mapped[int | None] = mapped_column(Integer)
    max_length: Mapped[int | None] = mapped_column(Integer)
    read_only: Mapped[bool | None] = mapped_column(Boolean)
    reset_required: Mapped[bool | None] = mapped_column(Boolean)
    unique: Mapped[bool | None] = mapped_column(Boolean)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime, onupdate=utcnow)


class NodeInventory(Base):
    """The last inventory in-band inspection stored for a node (``GET /v1/nodes/{id}/inventory``).

    A table of its own, not a key of ``driver_internal_info``: an inventory runs to tens of KiB and
    would otherwise be read, decrypted and sent with every node.
    """

    __tablename__ = "node_inventories"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), unique=True)
    inventory: Mapped[dict[str, Any]] = mapped_column(default=dict)
    plugin_data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime, onupdate=utcnow)
