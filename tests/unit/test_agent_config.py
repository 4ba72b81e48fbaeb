"""Agent configuration from the kernel command line and flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from ironworks.agent.config import AgentConfigError, build_config, in_ramdisk, load_config, parse_cmdline

API = "http://10.0.0.1:6385"


def test_cmdline_keys_quotes_underscores_and_bare_flags() -> None:
    text = 'BOOT_IMAGE=/vmlinuz quiet ipa_api_url=http://10.0.0.1:6385/ "ipa-agent-token=a b" ipa-insecure other=1\n'
    assert parse_cmdline(text) == {
        "ipa-api-url": "http://10.0.0.1:6385/",
        "ipa-agent-token": "a b",
        "ipa-insecure": "1",
    }


def test_defaults_and_trailing_slash() -> None:
    cfg = build_config({"ipa-api-url": API + "/"}, ramdisk=False)
    assert cfg.api_url == API
    assert (cfg.advertise_port, cfg.listen_port, cfg.listen_host) == (9999, 9999, "0.0.0.0")
    assert cfg.lookup_timeout == 300 and cfg.heartbeat_timeout is None and cfg.agent_token is None
    assert cfg.allowed_devices == []  # not a ramdisk, no allowlist: nothing may be touched


def test_listen_port_follows_advertise_port_unless_given() -> None:
    assert build_config({"ipa-api-url": API, "ipa-advertise-port": "8000"}, ramdisk=False).listen_port == 8000
    cfg = build_config({"ipa-api-url": API, "ipa-advertise-port": "8000", "ipa-listen-port": "7000"}, ramdisk=False)
    assert (cfg.advertise_port, cfg.listen_port) == (8000, 7000)


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({}, "ipa-api-url is required"),
        ({"ipa-api-url": "10.0.0.1:6385"}, "ipa-api-url must be an http(s) URL"),
        ({"ipa-api-url": API, "ipa-advertise-port": "http"}, "ipa-advertise-port must be a port"),
        ({"ipa-api-url": API, "ipa-listen-port": "70000"}, "ipa-listen-port must be a port"),
        ({"ipa-api-url": API, "ipa-lookup-timeout": "-1"}, "ipa-lookup-timeout must be more than 0"),
        ({"ipa-api-url": API, "ipa-heartbeat-timeout": "soon"}, "ipa-heartbeat-timeout must be a number"),
        ({"ipa-api-url": API, "ipa-insecure": "maybe"}, "ipa-insecure must be 1 or 0"),
        ({"ipa-api-url": API, "ironworks-device-allowlist": "loop5"}, "takes absolute paths, got loop5"),
    ],
)
def test_invalid_values_are_named(values: dict[str, str], names: str) -> None:
    with pytest.raises(AgentConfigError, match=names.replace("(", r"\(").replace(")", r"\)")):
        build_config(values, ramdisk=False)


def test_allowlist_limits_devices_even_in_a_ramdisk() -> None:
    cfg = build_config({"ipa-api-url": API, "ironworks-device-allowlist": "/dev/loop5, /tmp/d.img,"}, ramdisk=True)
    assert cfg.device_allowlist == ("/dev/loop5", "/tmp/d.img")
    assert cfg.allowed_devices == ["/dev/loop5", "/tmp/d.img"]
    assert cfg.ramdisk is False  # an allowlist means: behave as on a host (no power off, no chpasswd)
    ramdisk = build_config({"ipa-api-url": API}, ramdisk=True)
    assert ramdisk.ramdisk is True and ramdisk.allowed_devices is None


def test_ramdisk_detection_reads_the_root_mount(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    mounts = tmp_path / "proc/mounts"
    mounts.write_text("rootfs / rootfs rw 0 0\nproc /proc proc rw 0 0\n")
    assert in_ramdisk(tmp_path)
    mounts.write_text("/dev/sda1 / ext4 rw 0 0\n")
    assert not in_ramdisk(tmp_path)
    assert not in_ramdisk(tmp_path / "missing")


def test_flags_override_the_kernel_command_line(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(f"ipa-api-url={API} ipa-advertise-host=10.0.0.5 ipa-heartbeat-timeout=60\n")
    cfg = load_config(["--ipa-advertise-host", "127.0.0.1", "--root", str(tmp_path)], cmdline_path=cmdline)
    assert (cfg.api_url, cfg.advertise_host, cfg.heartbeat_timeout) == (API, "127.0.0.1", 60.0)
    assert cfg.root == tmp_path
    missing = load_config(["--ipa-api-url", API], cmdline_path=tmp_path / "nope")
    assert missing.api_url == API


def test_the_agent_imports_only_the_standard_library() -> None:
    """The ramdisk carries no third-party packages: the agent must start without them."""
    import subprocess
    import sys

    code = (
        "import sys; before = set(sys.modules); import ironworks.agent.main, ironworks.agent.generic;"
        "print('\\n'.join(m for m in set(sys.modules) - before if m.split('.')[0] not in sys.stdlib_module_names))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    foreign = [m for m in out if not (m == "ironworks" or m.startswith("ironworks.agent"))]
    assert foreign == []
