"""The dnsmasq DHCP provider's files: formats, generations, validation, atomicity; the generated dnsmasq.conf."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ironworks.config import Config, load_config
from ironworks.errors import ConfigError, InvalidInput
from ironworks.netboot.dhcp import DhcpError, DhcpOption, NoDhcp, dhcp_provider, normalize_mac
from ironworks.netboot.dnsmasq import DnsmasqDhcp, dhcp_dirs
from ironworks.netboot.dnsmasq_process import check_managed_config, explain, render_conf

NODE = "1be26c0b-03f2-4d2d-ae87-c02d7f33c123"
OTHER = "8f5c1a8e-7a61-4c37-9d71-8a1f2b3c4d5e"
MAC1, MAC2 = "52:54:00:aa:bb:01", "52:54:00:aa:bb:02"
PXE = [
    DhcpOption("bootfile-name", "pxelinux.0", tags=("!ipxe", "bios")),
    DhcpOption("server-ip-address", "192.168.77.1"),
    DhcpOption("210", "/tftpboot/"),
]


def _config(tmp_path: Path, **dhcp: object) -> Config:
    return load_config(None, environ={}, overrides={"": {"state_dir": str(tmp_path / "state")}, "dhcp": dhcp})


def _provider(tmp_path: Path) -> DnsmasqDhcp:
    provider = dhcp_provider(_config(tmp_path))
    assert isinstance(provider, DnsmasqDhcp)
    return provider


def _host(p: DnsmasqDhcp, mac: str) -> str:
    return (p.hostsdir / f"ironworks-{mac.replace(':', '-')}.conf").read_text()


def _opts(p: DnsmasqDhcp, node: str = NODE) -> list[str]:
    return (p.optsdir / f"ironworks-node-{node}.conf").read_text().splitlines()


def _all_files(tmp_path: Path) -> list[str]:
    return sorted(str(f.relative_to(tmp_path)) for f in tmp_path.rglob("*") if f.is_file())


def test_update_writes_one_host_file_per_mac_and_one_option_file_per_node(tmp_path: Path) -> None:
    p = _provider(tmp_path)
    p.update_dhcp_opts(NODE, [MAC1, "52-54-00-AA-BB-02"], PXE)
    assert (p.hostsdir, p.optsdir) == dhcp_dirs(p.config)
    assert p.hostsdir == tmp_path / "state" / "dhcp" / "hostsdir.d"
    head, *lines = _opts(p)
    assert head == f"# Ironworks node {NODE}; MACs: {MAC1} {MAC2}"
    gen = lines[0].split(",")[1]
    assert gen.startswith("tag:iw-")
    assert lines == [
        f"tag:node-{NODE},{gen},tag:!ipxe,tag:bios,option:bootfile-name,pxelinux.0",
        f"tag:node-{NODE},{gen},option:server-ip-address,192.168.77.1",
        f"tag:node-{NODE},{gen},210,/tftpboot/",
    ]
    for mac in (MAC1, MAC2):
        assert _host(p, mac) == f"{mac},set:node-{NODE},set:{gen[4:]}\n"


def test_ipv6_options_use_the_option6_form(tmp_path: Path) -> None:
    p = _provider(tmp_path)
    p.update_dhcp_opts(
        NODE,
        [MAC1],
        [
            DhcpOption("bootfile-url", "tftp://[fd00::1]/ipxe.efi", ip_version=6),
            DhcpOption("23", "[fd00::1]", ip_version=6),
        ],
    )
    bodies = [line.split(",", 2)[2] for line in _opts(p)[1:]]
    assert bodies == ["option6:bootfile-url,tftp://[fd00::1]/ipxe.efi", "option6:23,[fd00::1]"]


def test_same_options_twice_change_no_file(tmp_path: Path) -> None:
    p = _provider(tmp_path)
    p.update_dhcp_opts(NODE, [MAC1], PXE)
    before = {f: (f.stat().st_ino, f.read_text()) for f in tmp_path.rglob("*.conf")}
    p.update_dhcp_opts(NODE, [MAC1.upper()], list(PXE))
    assert {f: (f.stat().st_ino, f.read_text()) for f in tmp_path.rglob("*.conf")} == before


def test_new_options_get_a_new_generation_that_the_host_entry_switches_to(tmp_path: Path) -> None:
    p = _provider(tmp_path)
    p.update_dhcp_opts(NODE, [MAC1], PXE)
    first = _host(p, MAC1)
    petitboot = [DhcpOption("209", f"{NODE}/config"), DhcpOption("210", "/tftpboot/")]
    p.update_dhcp_opts(NODE, [MAC1], petitboot)
    second = _host(p, MAC1)
    assert first != second and second.startswith(f"{MAC1},set:node-{NODE},set:iw-")
    gen = second.strip().rsplit("set:", 1)[1]
    assert all(f"tag:{gen}," in line for line in _opts(p)[1:])
    assert not any("bootfile-name" in line for line in _opts(p))


def test_a_mac_dropped_from_the_node_is_ignored_but_kept_mac_is_not(tmp_path: Path) -> None:
    p = _provider(tmp_path)
    p.update_dhcp_opts(NODE, [MAC1, MAC2], PXE)
    p.update_dhcp_opts(NODE, [MAC2], PXE)
    assert _host(p, MAC1) == f"{MAC1},ignore\n"
    assert _host(p, MAC2).startswith(f"{MAC2},set:node-{NODE}")


def test_clean_ignores_every_mac_of_the_node_and_removes_its_options(tmp_path: Path) -> None:
    p = _provider(tmp_path)
    p.update_dhcp_opts(NODE, [MAC1, MAC2], PXE)
    p.clean_dhcp_opts(NODE, [MAC1])  # MAC2 is found from the node's option file
    assert _host(p, MAC1) == f"{MAC1},ignore\n" and _host(p, MAC2) == f"{MAC2},ignore\n"
    assert not (p.optsdir / f"ironworks-node-{NODE}.conf").exists()
    p.clean_dhcp_opts(NODE, [MAC1])  # idempotent
    assert _host(p, MAC1) == f"{MAC1},ignore\n"


def test_clean_leaves_a_mac_that_another_node_owns_now(tmp_path: Path) -> None:
    p = _provider(tmp_path)
    p.update_dhcp_opts(NODE, [MAC1], PXE)
    p.update_dhcp_opts(OTHER, [MAC1], PXE)  # the port moved to another node
    p.clean_dhcp_opts(NODE, [MAC1])
    assert _host(p, MAC1).startswith(f"{MAC1},set:node-{OTHER},")


@pytest.mark.parametrize(
    ("macs", "options", "message"),
    [
        ([MAC1, "52:54:00:aa:bb"], PXE, "'52:54:00:aa:bb' is not a MAC address"),
        ([MAC1, "52:54:00:aa:bb:zz"], PXE, "six hexadecimal octets"),
        (["52:54-00:aa:bb:01"], PXE, "not a MAC address"),
        (["01:00:5e:00:00:01"], PXE, "multicast"),
        ([], PXE, "no MAC address"),
        ([MAC1], [DhcpOption("bootfile-name", "a b")], "whitespace"),
        ([MAC1], [DhcpOption("bootfile-name", "x\nlog-queries")], "control character"),
        ([MAC1], [DhcpOption("bootfile-name", 'x"y')], "quote, escape or comment"),
        ([MAC1], [DhcpOption("bootfile-name", "x#y")], "comment"),
        ([MAC1], [DhcpOption("bootfile-name", "")], "empty value"),
        ([MAC1], [DhcpOption("bootfile-name", "x" * 256)], "255 bytes"),
        ([MAC1], [DhcpOption("bootfile", "x")], "not an option name dnsmasq knows for DHCPv4"),
        ([MAC1], [DhcpOption("bootfile-url", "x")], "DHCPv4"),
        ([MAC1], [DhcpOption("255", "x")], "1-254"),
        ([MAC1], [DhcpOption("67", "x", ip_version=5)], "use 4 or 6"),
        ([MAC1], [DhcpOption("67", "x", tags=("ipxe,option:6",))], "has the tag"),
        ([MAC1], [DhcpOption("67", "x", tags=("!!x",))], "has the tag"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_written(
    tmp_path: Path, macs: list[str], options: list[DhcpOption], message: str
) -> None:
    p = _provider(tmp_path)
    with pytest.raises(InvalidInput, match=message):
        p.update_dhcp_opts(NODE, macs, [*PXE, *options])
    assert _all_files(tmp_path) == []


def test_a_node_uuid_is_required(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="not a node UUID"):
        _provider(tmp_path).update_dhcp_opts("node-1,set:x", [MAC1], PXE)


def test_mac_normalisation() -> None:
    assert normalize_mac(" 52-54-00-AA-bb-0C ") == "52:54:00:aa:bb:0c"


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = _provider(tmp_path)
    p.update_dhcp_opts(NODE, [MAC1], PXE)
    before = _opts(p)

    def failing_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device", dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(DhcpError, match=r"No space left on device.*hostsdir"):
        p.update_dhcp_opts(NODE, [MAC1], [DhcpOption("209", f"{NODE}/config")])
    assert _opts(p) == before
    # dnsmasq reads every non-dot file in these directories: no stray temporary file may remain
    assert [f.name for f in tmp_path.rglob(".*")] == []


def test_files_are_written_through_a_dotfile_and_a_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    renames: list[tuple[str, str]] = []
    real = os.replace

    def recording_replace(src: str, dst: str) -> None:
        renames.append((Path(src).name, Path(dst).name))
        real(src, dst)

    monkeypatch.setattr(os, "replace", recording_replace)
    _provider(tmp_path).update_dhcp_opts(NODE, [MAC1], PXE)
    # the option file is in place before the host entry that points at its generation
    assert [dst for _, dst in renames] == [f"ironworks-node-{NODE}.conf", "ironworks-52-54-00-aa-bb-01.conf"]
    assert all(src.startswith(f".{dst}.") for src, dst in renames)


def test_provider_none_and_unknown_provider(tmp_path: Path) -> None:
    none = dhcp_provider(_config(tmp_path, provider="none"))
    assert isinstance(none, NoDhcp)
    none.update_dhcp_opts(NODE, [MAC1], PXE)
    none.clean_dhcp_opts(NODE, [MAC1])
    assert _all_files(tmp_path) == []
    with pytest.raises(InvalidInput):
        none.update_dhcp_opts(NODE, ["nonsense"], PXE)
    with pytest.raises(ConfigError, match=r"unknown value 'isc'.*dnsmasq, none"):
        dhcp_provider(_config(tmp_path, provider="isc"))


def test_generated_dnsmasq_conf(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path, interface="prov0", dhcp_range="192.168.77.100,192.168.77.200,10m", extra_options=["no-ping"]
    )
    lines = [line for line, _ in render_conf(cfg)]
    state = tmp_path / "state"
    for expected in (
        "port=0",
        "interface=prov0",
        "bind-interfaces",
        "dhcp-range=192.168.77.100,192.168.77.200,10m",
        f"dhcp-hostsdir={state}/dhcp/hostsdir.d",
        f"dhcp-optsdir={state}/dhcp/optsdir.d",
        f"dhcp-leasefile={state}/dnsmasq/dnsmasq.leases",
        "enable-tftp",
        f"tftp-root={state}/tftpboot",
        "dhcp-match=set:ipxe,175",
        "dhcp-userclass=set:ipxe,iPXE",
        "dhcp-match=set:efi64,option:client-arch,7",
        "dhcp-match=set:efi64,option:client-arch,9",
        "dhcp-match=set:efi-arm64,option:client-arch,11",
        "dhcp-match=set:bios,option:client-arch,0",
        "dhcp-ignore=tag:!known",
        "log-dhcp",
        f"log-facility={state}/logs/dnsmasq.log",
    ):
        assert expected in lines
    assert lines[-1] == "no-ping"
    assert not any("enable-ra" in line or "tag:!known,tag" in line for line in lines)


def test_generated_conf_for_discovery_and_router_advertisements(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path, interface="prov0", dhcp_range="10.1.0.10,10.1.0.20", unknown_macs="discovery", enable_ra=True
    )
    cfg.api.public_url = "http://10.1.0.1:6385/"
    lines = [line for line, _ in render_conf(cfg)]
    assert "dhcp-ignore=tag:!known" not in lines
    assert "dhcp-option=tag:!known,tag:!ipxe,tag:bios,option:bootfile-name,undionly.kpxe" in lines
    assert "dhcp-option=tag:!known,tag:!ipxe,tag:efi64,option:bootfile-name,snponly.efi" in lines
    assert "dhcp-option=tag:!known,tag:ipxe,option:bootfile-name,http://10.1.0.1:6385/boot/default.ipxe" in lines
    assert "enable-ra" in lines and "dhcp-range=::,constructor:prov0,ra-only" in lines


@pytest.mark.parametrize(
    ("dhcp", "message"),
    [
        ({"dhcp_range": "10.0.0.2,10.0.0.9"}, r"\[dhcp\] interface is empty"),
        ({"interface": "prov0"}, r"\[dhcp\] dhcp_range is empty"),
        ({"interface": "prov0", "dhcp_range": "1,2", "unknown_macs": "boot"}, "choose one of: ignore, discovery"),
        ({"interface": "a,b", "dhcp_range": "1,2"}, "characters that do not belong"),
        ({"interface": "prov0", "dhcp_range": "1,2", "extra_options": ["a\nb"]}, "no newlines"),
        ({"interface": "prov0", "dhcp_range": "1,2", "dnsmasq_binary": "/nonexistent/dnsmasq"}, "dnsmasq-base"),
        ({"interface": "prov0", "dhcp_range": "1,2", "hostsdir": "/srv/my hosts"}, r"\[dhcp\] hostsdir /srv/my hosts"),
    ],
)
def test_managed_dnsmasq_config_errors_name_the_key(tmp_path: Path, dhcp: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_managed_config(_config(tmp_path, manage_dnsmasq=True, **dhcp))


def test_dnsmasq_messages_are_mapped_to_config_keys(tmp_path: Path) -> None:
    lines = render_conf(_config(tmp_path, interface="prov0", dhcp_range="bogus"))
    number = next(i for i, (line, _) in enumerate(lines, 1) if line.startswith("dhcp-range="))
    said = f"dnsmasq: bad dhcp-range at line {number} of /x/dnsmasq.conf"
    assert explain(said, lines) == f"{said} (check [dhcp] dhcp_range)"
    assert explain("dnsmasq: unknown interface prov9", lines).endswith("(check [dhcp] interface)")
