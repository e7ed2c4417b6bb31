"""The interface side of VRRP: which interface a virtual address belongs on, adding and
removing it (`ip addr`, iproute2's netlink client), gratuitous ARP frames, and the
capabilities all this needs.

A virtual address goes on the interface whose network holds it, with that network's prefix
length, as a secondary address: the interface's own (primary) address stays the source of
the adverts and the tie-break of equal priorities.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from foobar.errors import FoobarError

ETH_P_ARP = 0x0806
BROADCAST_MAC = b"\xff" * 6
# capability bits (linux/capability.h)
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13


class LinkError(FoobarError):
    """An address could not be added or removed, or an interface not read."""


@dataclass(frozen=True)
class Network:
    interface: str
    address: str  # the interface's own address on this network
    prefix: int


@dataclass(frozen=True)
class Link:
    """Where one virtual router speaks: its interface, own address, and hardware address."""

    interface: str
    address: str
    prefix: int
    mac: bytes


def parse_networks(ip_json: str) -> list[Network]:
    """`ip -j -4 addr show` as (interface, address, prefix), primary addresses first (the
    order iproute2 lists them); secondary ones (a virtual address we hold) are skipped."""
    networks = []
    for interface in json.loads(ip_json or "[]"):
        for info in interface.get("addr_info", []):
            if info.get("family") != "inet" or info.get("secondary"):
                continue
            networks.append(Network(interface["ifname"], info["local"], int(info["prefixlen"])))
    return networks


def network_for(address: str, networks: list[Network]) -> Network | None:
    """The first interface network (not loopback) holding `address`, other than the
    interface's own address."""
    target = ipaddress.IPv4Address(address)
    for network in networks:
        if network.interface == "lo" or network.address == address:
            continue
        if target in ipaddress.IPv4Interface(f"{network.address}/{network.prefix}").network:
            return network
    return None


def read_networks() -> list[Network]:
    try:
        result = subprocess.run(
            ["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LinkError(f"cannot list the interfaces with `ip`: {exc}") from exc
    if result.returncode != 0:
        raise LinkError(f"ip addr show: {result.stderr.strip()}")
    return parse_networks(result.stdout)


def mac_address(interface: str) -> bytes:
    text = Path(f"/sys/class/net/{interface}/address").read_text().strip()
    return bytes.fromhex(text.replace(":", ""))


def find_link(address: str) -> Link:
    network = network_for(address, read_networks())
    if network is None:
        raise LinkError(f"virtual address {address} is not on any interface's network")
    return Link(network.interface, network.address, network.prefix, mac_address(network.interface))


def _ip_address(command: str, link: Link, address: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["ip", "-4", "addr", command, f"{address}/{link.prefix}", "dev", link.interface],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LinkError(f"ip addr {command} {address}: {exc}") from exc


def add_address(link: Link, address: str) -> None:
    result = _ip_address("add", link, address)
    if result.returncode != 0 and "File exists" not in result.stderr:
        raise LinkError(f"ip addr add {address} dev {link.interface}: {result.stderr.strip()}")


def remove_address(link: Link, address: str) -> bool:
    """Remove `address` if held; whether it was."""
    result = _ip_address("del", link, address)
    return result.returncode == 0


def garp_frame(mac: bytes, address: str) -> bytes:
    """A gratuitous ARP request (RFC 5227 section 3: sender and target address both the
    announced one), broadcast, as keepalived sends when it becomes master."""
    packed = ipaddress.IPv4Address(address).packed
    ethernet = BROADCAST_MAC + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + packed + b"\0" * 6 + packed
    return ethernet + arp


def open_arp_socket(interface: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    sock.bind((interface, ETH_P_ARP))
    sock.setblocking(False)
    return sock


def missing_capabilities(status: str | None = None) -> list[str]:
    """The capabilities VRRP needs that this process lacks: NET_RAW for the adverts and
    ARPs, NET_ADMIN for the addresses (read from /proc/self/status's CapEff)."""
    if status is None:
        status = Path("/proc/self/status").read_text()
    effective = 0
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            effective = int(line.split()[1], 16)
    names = {CAP_NET_RAW: "CAP_NET_RAW", CAP_NET_ADMIN: "CAP_NET_ADMIN"}
    return [name for bit, name in sorted(names.items()) if not effective >> bit & 1]
