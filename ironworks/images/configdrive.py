"""Config drives given as JSON, built into the ``config-2`` image that cloud-init reads.

Since API 1.56 a deploy's ``configdrive`` may be an object instead of a ready image::

    {"meta_data": {...}, "user_data": "..." or {...} or [...], "network_data": {...}, "vendor_data": {...}}

The conductor turns it into an ISO 9660 volume labelled ``config-2`` (with Rock Ridge and Joliet,
so the lower-case names survive whichever extension the reader uses) holding
``openstack/<version>/meta_data.json``, ``user_data``, ``network_data.json`` and
``vendor_data.json`` for ``latest`` and ``2012-08-10``, as Ironic does; then gzips and
base64-encodes it, the form the agent's ``standby.prepare_image`` accepts. Everything is built in
memory with pycdlib: no temporary files, no external tool.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import re
from typing import Any

import pycdlib

from ironworks.errors import InvalidInput

LABEL = "config-2"
VERSIONS = ("latest", "2012-08-10")
KEYS = ("meta_data", "user_data", "network_data", "vendor_data")
#: the contents of one version directory may not exceed this (cloud-init data is kilobytes)
MAX_CONTENT = 32 << 20
#: the agent refuses an image that unpacks to more (ironworks.agent.configdrive.MAX_CONFIGDRIVE)
MAX_IMAGE = 64 << 20
_NOT_D_CHAR = re.compile(r"[^A-Z0-9_]")


class ConfigDriveError(InvalidInput):
    """A config drive given as JSON is malformed or too large."""

    reason = "invalid_configdrive"


def _files(configdrive: dict[str, Any], *, node_uuid: str, node_name: str | None) -> dict[str, bytes]:
    """The files of one version directory, by name; raises ``ConfigDriveError`` naming every problem."""
    problems: list[str] = []
    unknown = sorted(set(configdrive) - set(KEYS))
    if unknown:
        problems.append(f"unknown keys {', '.join(unknown)} (known: {', '.join(KEYS)})")
    meta = configdrive.get("meta_data")
    if meta is not None and not isinstance(meta, dict):
        problems.append(f"meta_data must be an object, not {type(meta).__name__}")
    for key in ("network_data", "vendor_data"):
        value = configdrive.get(key)
        if value is not None and not isinstance(value, dict):
            problems.append(f"{key} must be an object, not {type(value).__name__}")
    user = configdrive.get("user_data")
    if user is not None and not isinstance(user, str | dict | list):
        problems.append(f"user_data must be a string, an object or a list, not {type(user).__name__}")
    if problems:
        raise ConfigDriveError("Invalid configdrive: " + "; ".join(problems) + ".")
    # cloud-init needs the instance's identity; like Ironic, fill it in from the node when absent
    meta = dict(meta or {})
    meta.setdefault("uuid", node_uuid)
    if node_name:
        meta.setdefault("name", node_name)
        meta.setdefault("hostname", node_name)
    files = {"meta_data.json": json.dumps(meta).encode()}
    if user is not None:
        files["user_data"] = user.encode() if isinstance(user, str) else json.dumps(user).encode()
    for key in ("network_data", "vendor_data"):
        if configdrive.get(key) is not None:
            files[f"{key}.json"] = json.dumps(configdrive[key]).encode()
    size = sum(len(data) for data in files.values())
    if size > MAX_CONTENT:
        raise ConfigDriveError(
            f"Invalid configdrive: its contents are {size} bytes; at most {MAX_CONTENT} bytes are accepted. "
            "Serve large user data from a URL instead."
        )
    return files


def validate(configdrive: Any, *, node_uuid: str = "", node_name: str | None = None) -> None:
    """Raise ``ConfigDriveError`` when ``configdrive`` (an object) cannot become a config drive."""
    if not isinstance(configdrive, dict):
        raise ConfigDriveError(
            "configdrive must be an object or a string (base64 gzipped image or URL), "
            f"not {type(configdrive).__name__}."
        )
    _files(configdrive, node_uuid=node_uuid, node_name=node_name)


def _iso_name(name: str, *, is_file: bool) -> str:
    """The plain ISO 9660 name (d-characters) of ``name``; readers use the Rock Ridge/Joliet one."""
    if not is_file:
        return _NOT_D_CHAR.sub("_", name.upper())[:31]
    stem, _, ext = name.upper().partition(".")
    return f"{_NOT_D_CHAR.sub('_', stem)[:26]}.{_NOT_D_CHAR.sub('_', ext)[:3]};1"


def build_iso(configdrive: dict[str, Any], *, node_uuid: str, node_name: str | None = None) -> bytes:
    """The ``config-2`` ISO image for ``configdrive`` (validated here too)."""
    files = _files(configdrive, node_uuid=node_uuid, node_name=node_name)
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=LABEL)
    try:
        iso.add_directory("/OPENSTACK", rr_name="openstack", joliet_path="/openstack")
        for version in VERSIONS:
            iso_dir = f"/OPENSTACK/{_iso_name(version, is_file=False)}"
            iso.add_directory(iso_dir, rr_name=version, joliet_path=f"/openstack/{version}")
            for name, data in files.items():
                iso.add_fp(
                    io.BytesIO(data),
                    len(data),
                    f"{iso_dir}/{_iso_name(name, is_file=True)}",
                    rr_name=name,
                    joliet_path=f"/openstack/{version}/{name}",
                )
        out = io.BytesIO()
        iso.write_fp(out)
    finally:
        iso.close()
    image = out.getvalue()
    if len(image) > MAX_IMAGE:
        raise ConfigDriveError(f"Invalid configdrive: the image would be {len(image)} bytes; at most {MAX_IMAGE}.")
    return image


def encode(image: bytes) -> str:
    """Base64 of the gzipped image: the config drive string Ironic and the agent exchange."""
    return base64.b64encode(gzip.compress(image, mtime=0)).decode()


def build(configdrive: dict[str, Any], *, node_uuid: str, node_name: str | None = None) -> str:
    """The agent-ready config drive string for a config drive given as JSON."""
    return encode(build_iso(configdrive, node_uuid=node_uuid, node_name=node_name))


def for_agent(value: Any, *, node_uuid: str, node_name: str | None) -> str | None:
    """``instance_info/configdrive`` as the agent takes it: an image string as given, JSON built into one."""
    if isinstance(value, str) and value.lstrip().startswith("{"):  # base64 and URLs never start with "{"
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ConfigDriveError(f"The configdrive looks like JSON but does not parse: {exc}.") from exc
    if isinstance(value, dict):
        return build(value, node_uuid=node_uuid, node_name=node_name)
    if value is not None and not isinstance(value, str):
        raise ConfigDriveError(f"instance_info/configdrive must be an object or a string, not {type(value).__name__}.")
    return value or None
