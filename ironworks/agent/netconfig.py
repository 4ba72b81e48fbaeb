"""Static addressing in the ramdisk from a config drive's ``openstack/latest/network_data.json``.

Booted from virtual media there may be no DHCP server at all: the boot interface then puts the node's
``network_data`` (Ironic's format, the one Nova and cloud-init read) into the deploy ISO. ``/init``
runs ``python3 -m ironworks.agent.netconfig`` before it starts DHCP; this finds a ``config-2`` or
ISO 9660 device (the virtual CD), mounts it read-only, reads the file, unmounts, and for each network
of type ``ipv4``/``ipv6`` whose link's ``ethernet_mac_address`` is a NIC of this machine, sets the
address, the link's MTU, the routes and the DNS servers. It prints the names of the NICs it configured
(one a line) on stdout, so ``/init`` starts udhcpc only on the others; what it did goes to stderr as
``ironworks-init: ...`` lines (the console). A missing file, bad JSON or a failed command is said and
leaves the NIC to DHCP; nothing here makes ``/init`` fail.

A BMC's virtual CD is often a USB device that appears seconds after the kernel started:
``ironworks-netconfig-wait=S`` on the kernel command line waits up to S seconds for a CD or config
drive to show up when there is none yet (default 0: a network-booted machine does not wait).

Outside a ramdisk it refuses to run: it would change the host's network.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ironworks.agent.config import in_ramdisk

NETWORK_DATA = "openstack/latest/network_data.json"
#: network types configured here; ``ipv4_dhcp``/``ipv6_dhcp``/``ipv6_slaac`` stay with DHCP (or RA)
STATIC_TYPES = frozenset({"ipv4", "ipv6"})
#: config drives are at most a few MiB; a bigger file is not a network_data.json
MAX_BYTES = 1 << 20
#: kernel command line key: seconds to wait for a CD or config drive to appear (USB virtual media)
WAIT_KEY = "ironworks-netconfig-wait"
POLL_S = 0.5

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output (the default runner)."""
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)


def say(message: str) -> None:
    """One ``ironworks-init:`` line on stderr (the console under /init)."""
    print(f"ironworks-init: {message}", file=sys.stderr, flush=True)


class NetworkDataError(ValueError):
    """network_data.json is not usable; the message says what is wrong in it."""


@dataclass
class NicPlan:
    """What to configure on one NIC: addresses (CIDR), routes (destination CIDR, gateway), MTU."""

    nic: str
    mac: str
    addresses: list[str] = field(default_factory=list)
    routes: list[tuple[str, str]] = field(default_factory=list)
    mtu: int | None = None


@dataclass
class Plan:
    """Every NIC's static configuration and the DNS servers of the whole document."""

    nics: dict[str, NicPlan] = field(default_factory=dict)
    dns: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def nics(sys_class_net: Path = Path("/sys/class/net")) -> dict[str, str]:
    """Physical NICs: lower-case MAC -> interface name (as /init picks them: those with a device)."""
    found: dict[str, str] = {}
    for dev in sorted(sys_class_net.iterdir()) if sys_class_net.is_dir() else []:
        if dev.name == "lo" or not ((dev / "device").exists() or (dev / "phy80211").exists()):
            continue
        try:
            mac = (dev / "address").read_text().strip().lower()
        except OSError:
            continue
        found.setdefault(mac, dev.name)
    return found


def _with_mask(addr: str, mask: object) -> str:
    """``addr/prefix``: an IPv6 netmask (``ffff:ffff::``, which ``ipaddress`` does not take) as a length."""
    if not mask or "/" in addr:
        return addr
    text = str(mask)
    if ":" in text:
        try:
            bits = int(ipaddress.IPv6Address(text))
        except ValueError as exc:
            raise NetworkDataError(f"{text!r} is not an IPv6 netmask") from exc
        length = 128 - (bits ^ ((1 << 128) - 1)).bit_length()
        if bits != ((1 << 128) - 1) ^ ((1 << (128 - length)) - 1):
            raise NetworkDataError(f"{text!r} is not a contiguous IPv6 netmask")
        text = str(length)
    return f"{addr}/{text}"


def _cidr(net: Mapping[str, Any]) -> str:
    """``ip_address`` with its prefix: from ``ip_address`` itself (``a/b``) or ``netmask``."""
    addr = net.get("ip_address")
    if not isinstance(addr, str) or not addr:
        raise NetworkDataError(f"network {net.get('id')!r} of type {net.get('type')!r} has no ip_address")
    mask = net.get("netmask")
    try:
        iface = ipaddress.ip_interface(_with_mask(addr, mask))
    except ValueError as exc:
        shown = f"{addr}" + (f" netmask {mask}" if mask else "")
        raise NetworkDataError(f"network {net.get('id')!r}: {shown!r} is not an address with a prefix: {exc}") from exc
    if "/" not in addr and not mask and iface.version == 4:
        raise NetworkDataError(f"network {net.get('id')!r}: ip_address {addr!r} needs a netmask")
    return str(iface)


def _route(net_id: object, route: Any) -> tuple[str, str]:
    if not isinstance(route, Mapping):
        raise NetworkDataError(f"network {net_id!r}: a route must be an object, got {route!r}")
    dest, mask, gateway = route.get("network"), route.get("netmask"), route.get("gateway")
    if not isinstance(dest, str) or not isinstance(gateway, str):
        raise NetworkDataError(f"network {net_id!r}: a route needs 'network' and 'gateway', got {dict(route)!r}")
    try:
        network = ipaddress.ip_network(_with_mask(dest, mask), strict=False)
        ipaddress.ip_address(gateway)
    except ValueError as exc:
        raise NetworkDataError(f"network {net_id!r}: bad route {dict(route)!r}: {exc}") from exc
    return ("default" if network.prefixlen == 0 else str(network), gateway)


def plan(doc: Any, macs: Mapping[str, str]) -> Plan:
    """The static configuration ``doc`` (a parsed network_data.json) asks for on the NICs in ``macs``."""
    if not isinstance(doc, Mapping):
        raise NetworkDataError("the document must be a JSON object with 'links' and 'networks'")
    links, networks = doc.get("links", []), doc.get("networks", [])
    if not isinstance(links, list) or not isinstance(networks, list):
        raise NetworkDataError("'links' and 'networks' must be lists")
    by_id: dict[str, Mapping[str, Any]] = {}
    for link in links:
        if isinstance(link, Mapping) and isinstance(link.get("id"), str):
            by_id[link["id"]] = link
    out = Plan()
    for net in networks:
        if not isinstance(net, Mapping):
            raise NetworkDataError(f"a network must be an object, got {net!r}")
        kind = net.get("type")
        if kind not in STATIC_TYPES:
            continue
        link = by_id.get(str(net.get("link")))
        if link is None:
            out.notes.append(f"network {net.get('id')!r} names link {net.get('link')!r}, which is not in 'links'")
            continue
        mac = str(link.get("ethernet_mac_address") or "").lower()
        if link.get("type") in ("bond", "vlan") or not mac:
            out.notes.append(f"link {link.get('id')!r} ({link.get('type')}) is not a plain NIC: not configured here")
            continue
        nic = macs.get(mac)
        if nic is None:
            out.notes.append(f"link {link.get('id')!r}: no NIC here has MAC {mac}")
            continue
        entry = out.nics.setdefault(nic, NicPlan(nic=nic, mac=mac))
        entry.addresses.append(_cidr(net))
        entry.routes += [_route(net.get("id"), r) for r in net.get("routes") or []]
        mtu = link.get("mtu")
        if isinstance(mtu, int) and not isinstance(mtu, bool) and mtu > 0:
            entry.mtu = mtu
        for server in net.get("dns_nameservers") or []:
            if isinstance(server, str) and server not in out.dns:
                out.dns.append(server)
    for service in doc.get("services") or []:
        if isinstance(service, Mapping) and service.get("type") == "dns":
            server = service.get("address")
            if isinstance(server, str) and server not in out.dns:
                out.dns.append(server)
    return out


def apply(p: Plan, *, runner: Runner = run, resolv_conf: Path = Path("/etc/resolv.conf")) -> list[str]:
    """Configure the planned NICs with ``ip``; the NICs fully configured (a NIC whose command failed
    is flushed and left to DHCP)."""
    done: list[str] = []
    for entry in p.nics.values():
        argvs = [["ip", "link", "set", entry.nic, "up"]]
        if entry.mtu:
            argvs.append(["ip", "link", "set", entry.nic, "mtu", str(entry.mtu)])
        argvs += [["ip", "addr", "add", a, "dev", entry.nic] for a in entry.addresses]
        for dest, gateway in entry.routes:
            family = "-6" if ipaddress.ip_address(gateway).version == 6 else "-4"
            argvs.append(["ip", family, "route", "add", dest, "via", gateway, "dev", entry.nic])
        failed = None
        for argv in argvs:
            proc = runner(argv)
            if proc.returncode != 0:
                failed = f"`{' '.join(argv)}` failed: {(proc.stderr or proc.stdout).strip()[-200:]}"
                break
        if failed:
            runner(["ip", "addr", "flush", "dev", entry.nic])
            say(f"static addressing of {entry.nic} ({entry.mac}) failed, DHCP instead: {failed}")
            continue
        routes = ", ".join(f"{d} via {g}" for d, g in entry.routes) or "none"
        say(
            f"static address on {entry.nic} ({entry.mac}): {' '.join(entry.addresses)}, routes {routes}"
            + (f", mtu {entry.mtu}" if entry.mtu else "")
        )
        done.append(entry.nic)
    if done and p.dns:
        resolv_conf.write_text("".join(f"nameserver {s}\n" for s in p.dns))
        say(f"DNS servers from network_data.json: {' '.join(p.dns)}")
    return done


def candidate_devices(dev: Path = Path("/dev"), *, runner: Runner = run) -> list[str]:
    """Devices labelled ``config-2`` (either case), then the CD drives, each once."""
    found: list[str] = []
    for label in ("config-2", "CONFIG-2"):
        proc = runner(["blkid", "-o", "device", "-t", f"LABEL={label}"])
        if proc.returncode == 0:
            found += proc.stdout.split()
    found += sorted(str(p) for p in dev.glob("sr[0-9]*"))
    return list(dict.fromkeys(found))


@contextlib.contextmanager
def mounted(device: str, *, runner: Runner = run, under: Path = Path("/run")) -> Iterator[Path | None]:
    """``device`` mounted read-only on a fresh directory in ``under`` (None when it does not mount);
    unmounted after."""
    where = Path(tempfile.mkdtemp(prefix="ironworks-cd-", dir=under))
    ok = False
    try:
        for fstype in ("iso9660", "vfat"):
            if runner(["mount", "-o", "ro", "-t", fstype, device, str(where)]).returncode == 0:
                ok = True
                break
        yield where if ok else None
    finally:
        if ok:
            runner(["umount", str(where)])
        with contextlib.suppress(OSError):
            where.rmdir()


def read_network_data(
    devices: Sequence[str], *, runner: Runner = run, under: Path = Path("/run")
) -> tuple[str, bytes] | None:
    """The first ``network_data.json`` on ``devices``: (device, content), or None."""
    for device in devices:
        with mounted(device, runner=runner, under=under) as root:
            if root is None:
                continue
            path = root / NETWORK_DATA
            if path.is_file():
                if path.stat().st_size > MAX_BYTES:
                    say(f"{device}: {NETWORK_DATA} is larger than {MAX_BYTES} bytes; ignored")
                    continue
                return device, path.read_bytes()
    return None


def configure(
    *,
    runner: Runner = run,
    dev: Path = Path("/dev"),
    sys_class_net: Path = Path("/sys/class/net"),
    resolv_conf: Path = Path("/etc/resolv.conf"),
    mount_under: Path = Path("/run"),
    wait: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Find, read and apply network_data.json; the NICs configured statically (none on any problem).

    ``wait``: seconds to poll for a device when none is there yet."""
    devices = candidate_devices(dev, runner=runner)
    waited = 0.0
    while not devices and waited < wait:
        sleep(POLL_S)
        waited += POLL_S
        devices = candidate_devices(dev, runner=runner)
    if waited:
        say(f"waited {waited:g} s for a CD or config drive: {' '.join(devices) if devices else 'none appeared'}")
    found = read_network_data(devices, runner=runner, under=mount_under)
    if found is None:
        say(f"no {NETWORK_DATA} on a config drive or CD: DHCP on every interface")
        return []
    device, raw = found
    try:
        doc = json.loads(raw)
        p = plan(doc, nics(sys_class_net))
    except (ValueError, NetworkDataError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        say(f"{device}: {NETWORK_DATA} is not usable ({exc}); DHCP on every interface")
        return []
    for note in p.notes:
        say(f"{device}: {NETWORK_DATA}: {note}")
    if not p.nics:
        say(f"{device}: {NETWORK_DATA} has no static network for a NIC of this machine: DHCP on every interface")
        return []
    return apply(p, runner=runner, resolv_conf=resolv_conf)


def wait_seconds(cmdline: str) -> float:
    """``ironworks-netconfig-wait`` (or ``_``) from a kernel command line; 0 when absent or not a number."""
    for arg in cmdline.split():
        key, _, value = arg.partition("=")
        if key.replace("_", "-") == WAIT_KEY:
            try:
                seconds = float(value)
            except ValueError:
                seconds = -1.0
            if not 0 <= seconds <= 600:
                say(f"{WAIT_KEY}={value!r} is not a number of seconds from 0 to 600; not waiting")
                return 0.0
            return seconds
    return 0.0


def main(argv: Sequence[str] | None = None) -> int:
    """Configure static addresses; print the configured NICs. Exit 0 always in a ramdisk, 2 elsewhere."""
    del argv
    if not in_ramdisk():
        say("netconfig changes the machine's network and runs only in the ramdisk; nothing done")
        return 2
    try:
        cmdline = Path("/proc/cmdline").read_text()
    except OSError:
        cmdline = ""
    for nic in configure(wait=wait_seconds(cmdline)):
        print(nic)
    return 0


if __name__ == "__main__":
    sys.exit(main())
