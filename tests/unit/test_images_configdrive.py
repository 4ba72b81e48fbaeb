"""Config drives given as JSON become the config-2 ISO cloud-init reads: built in process, read back
with pycdlib and with the real ``isoinfo`` and ``xorriso``, and accepted by the agent's decoder."""

from __future__ import annotations

import base64
import gzip
import io
import json
import subprocess
from pathlib import Path
from typing import Any

import pycdlib
import pytest

from ironworks.agent.configdrive import decode_configdrive
from ironworks.images import configdrive
from ironworks.images.configdrive import ConfigDriveError

DRIVE: dict[str, Any] = {
    "meta_data": {
        "uuid": "11111111-2222-3333-4444-555555555555",
        "hostname": "web-1",
        "public_keys": {"k": "ssh-ed25519 AAA"},
    },
    "user_data": "#cloud-config\nruncmd: [touch /tmp/ok]\n",
    "network_data": {"links": [{"id": "eth0", "type": "phy", "ethernet_mac_address": "52:54:00:00:00:01"}]},
    "vendor_data": {"vendor": {"x": 1}},
}
FILES = ("meta_data.json", "user_data", "network_data.json", "vendor_data.json")


def _read_rr(iso_bytes: bytes, path: str) -> bytes:
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(iso_bytes))
    try:
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, rr_path=path)
        return out.getvalue()
    finally:
        iso.close()


def _joliet_names(iso: pycdlib.PyCdlib, path: str) -> list[str]:
    children = iso.list_children(joliet_path=path)
    return sorted(c.file_identifier().decode("utf-16-be") for c in children if not (c.is_dot() or c.is_dotdot()))


def test_json_drive_builds_a_config2_iso_readable_through_rock_ridge_and_joliet() -> None:
    image = configdrive.build_iso(DRIVE, node_uuid="node-uuid", node_name="node-1")
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(image))
    try:
        assert iso.pvd.volume_identifier.rstrip(b" ") == b"config-2"
        for version in ("latest", "2012-08-10"):
            assert _joliet_names(iso, f"/openstack/{version}") == sorted(FILES)
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, joliet_path="/openstack/2012-08-10/network_data.json")
        assert json.loads(out.getvalue()) == DRIVE["network_data"]
    finally:
        iso.close()
    meta = json.loads(_read_rr(image, "/openstack/latest/meta_data.json"))
    assert meta["uuid"] == DRIVE["meta_data"]["uuid"]  # what the user sent wins over the node's identity
    assert meta["hostname"] == "web-1" and meta["name"] == "node-1"
    assert _read_rr(image, "/openstack/latest/user_data").decode() == DRIVE["user_data"]
    assert json.loads(_read_rr(image, "/openstack/latest/vendor_data.json")) == DRIVE["vendor_data"]


def test_the_real_isoinfo_and_xorriso_read_it(tmp_path: Path) -> None:
    path = tmp_path / "cd.iso"
    path.write_bytes(configdrive.build_iso(DRIVE, node_uuid="node-uuid"))
    label = subprocess.run(["isoinfo", "-d", "-i", str(path)], capture_output=True, text=True, check=True).stdout
    assert "Volume id: config-2" in label and "Rock Ridge signatures version 1 found" in label
    meta = subprocess.run(
        ["isoinfo", "-R", "-x", "/openstack/latest/meta_data.json", "-i", str(path)],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    assert json.loads(meta)["public_keys"] == {"k": "ssh-ed25519 AAA"}
    listing = subprocess.run(
        ["xorriso", "-indev", str(path), "-ls", "/openstack/2012-08-10"], capture_output=True, text=True, check=True
    ).stdout
    assert [line.strip("'") for line in listing.split()] == sorted(FILES)
    blkid = subprocess.run(["blkid", "-p", "-o", "value", "-s", "LABEL", str(path)], capture_output=True, text=True)
    assert blkid.stdout.strip() == "config-2"


def test_the_agent_decodes_what_the_conductor_encodes(tmp_path: Path) -> None:
    encoded = configdrive.build({"meta_data": {"a": 1}, "user_data": {"k": [1, 2]}}, node_uuid="u1", node_name=None)
    image = gzip.decompress(base64.b64decode(encoded))
    dest = tmp_path / "out.img"
    assert decode_configdrive(encoded, str(dest)) == len(image)
    assert dest.read_bytes() == image
    assert json.loads(_read_rr(image, "/openstack/latest/meta_data.json")) == {"a": 1, "uuid": "u1"}
    assert json.loads(_read_rr(image, "/openstack/latest/user_data")) == {"k": [1, 2]}  # objects are JSON-encoded
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(image))
    try:  # only what was given is written
        assert _joliet_names(iso, "/openstack/latest") == ["meta_data.json", "user_data"]
    finally:
        iso.close()


@pytest.mark.parametrize(
    ("drive", "message"),
    [
        ({"meta_data": ["not", "an", "object"]}, "meta_data must be an object, not list"),
        ({"network_data": "eth0"}, "network_data must be an object, not str"),
        ({"user_data": 42}, "user_data must be a string, an object or a list, not int"),
        ({"meta_data": {}, "userdata": "x"}, "unknown keys userdata (known: meta_data, user_data"),
        ("just a string", "configdrive must be an object"),
    ],
)
def test_bad_drives_are_refused_with_what_is_wrong(drive: object, message: str) -> None:
    with pytest.raises(ConfigDriveError, match=message.replace("(", r"\(")):
        configdrive.validate(drive, node_uuid="u")


def test_a_drive_larger_than_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(configdrive, "MAX_CONTENT", 1000)
    with pytest.raises(ConfigDriveError, match="at most 1000 bytes"):
        configdrive.build({"user_data": "x" * 2000}, node_uuid="u")


def test_for_agent_builds_json_and_passes_image_strings_through() -> None:
    assert configdrive.for_agent(None, node_uuid="u", node_name=None) is None
    assert configdrive.for_agent("H4sIAAAA", node_uuid="u", node_name=None) == "H4sIAAAA"  # an image: as given
    assert configdrive.for_agent("http://cd/img.gz", node_uuid="u", node_name=None) == "http://cd/img.gz"
    built = configdrive.for_agent(json.dumps({"meta_data": {"k": "v"}}), node_uuid="u", node_name="n")
    assert built is not None
    meta = json.loads(_read_rr(gzip.decompress(base64.b64decode(built)), "/openstack/latest/meta_data.json"))
    assert meta == {"k": "v", "uuid": "u", "name": "n", "hostname": "n"}
    with pytest.raises(ConfigDriveError, match="does not parse"):
        configdrive.for_agent("{not json", node_uuid="u", node_name=None)
    with pytest.raises(ConfigDriveError, match="not int"):
        configdrive.for_agent(7, node_uuid="u", node_name=None)
