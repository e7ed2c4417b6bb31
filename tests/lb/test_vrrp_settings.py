"""`[lb.vrrp]`: the bad input the issue lists gets one clear line and exit 2 at --check; and
the interface rules of link.py as tables (no sockets)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from foobar.lb.vrrp import link

LB = """
[lb]
name = "lbx"
[[lb.frontends]]
name = "http"
bind = "127.0.0.1:18080"
backend = "web"
[[lb.backends]]
name = "web"
[[lb.backends.servers]]
name = "web1"
address = "127.0.0.1:18081"
[lb.vrrp]
[[lb.vrrp.instances]]
name = "www"
"""


def check(tmp_path: Path, instance: str, *wrapper: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "lb.toml"
    config.write_text(LB + instance)
    return subprocess.run(
        [*wrapper, sys.executable, "-m", "foobar.lb", "--config", str(config), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def address_on_a_local_network() -> str:
    """An address on a network this machine has (not its own): where a VIP may go."""
    networks = [n for n in link.read_networks() if n.interface != "lo" and n.prefix < 31]
    if not networks:
        pytest.fail("no IPv4 network on any interface but loopback")
    own = networks[0]
    base = int.from_bytes(bytes(int(part) for part in own.address.split(".")), "big")
    mask = (1 << (32 - own.prefix)) - 1
    candidate = (base & ~mask) | ((base + 1) & mask or 1)
    return ".".join(str(candidate >> shift & 255) for shift in (24, 16, 8, 0))


@pytest.mark.parametrize(
    ("instance", "message"),
    [
        (
            'virtual_router_id = 0\naddresses = ["10.9.9.9"]',
            "virtual_router_id (",
        ),
        (
            'virtual_router_id = 256\naddresses = ["10.9.9.9"]',
            "virtual_router_id (",
        ),
        (
            'virtual_router_id = 51\nadvert_interval = 0.001\naddresses = ["10.9.9.9"]',
            "advert_interval (",
        ),
        (
            'virtual_router_id = 51\nadvert_interval = 41\naddresses = ["10.9.9.9"]',
            "advert_interval (",
        ),
        (
            'virtual_router_id = 51\nadvert_interval = 0.015\naddresses = ["10.9.9.9"]',
            "advert_interval is in steps of 0.01 s",
        ),
        (
            'virtual_router_id = 51\npriority = 255\naddresses = ["10.9.9.9"]',
            "priority (",
        ),
        ('virtual_router_id = 51\naddresses = ["10.9.9.300"]', "addresses.0 ("),
        (
            'virtual_router_id = 51\naddresses = ["198.51.100.77"]',
            "virtual address 198.51.100.77 is on no interface's network",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, instance: str, message: str) -> None:
    result = check(tmp_path, instance)
    assert result.returncode == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: vrrp") and message in lines[0], lines[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping capabilities needs root (CI is root)")
def test_missing_capabilities_exit_2(tmp_path: Path) -> None:
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "setpriv (util-linux) is missing"
    instance = f'virtual_router_id = 51\naddresses = ["{address_on_a_local_network()}"]'
    assert check(tmp_path, instance).returncode == 0
    result = check(tmp_path, instance, setpriv, "--bounding-set", "-net_raw,-net_admin")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: vrrp (" + str(tmp_path / "lb.toml") + " [lb]): Value error, vrrp needs "
        "CAP_NET_ADMIN and CAP_NET_RAW to send adverts and move addresses (run as root, "
        "or give the service these capabilities)"
    ]


IP_JSON = json.dumps(
    [
        {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]},
        {
            "ifname": "eth0",
            "addr_info": [
                {"family": "inet", "local": "203.0.113.11", "prefixlen": 24},
                {"family": "inet", "local": "203.0.113.10", "prefixlen": 24, "secondary": True},
            ],
        },
        {"ifname": "eth1", "addr_info": [{"family": "inet", "local": "10.0.0.1", "prefixlen": 24}]},
    ]
)


@pytest.mark.parametrize(
    ("address", "interface"),
    [
        ("203.0.113.10", "eth0"),  # a VIP we hold already (secondary): still eth0's network
        ("203.0.113.20", "eth0"),
        ("10.0.0.10", "eth1"),
        ("10.0.0.1", None),  # the interface's own address is no virtual address
        ("127.0.0.2", None),  # loopback is no network to share
        ("198.51.100.1", None),
    ],
)
def test_which_interface_a_virtual_address_goes_on(address: str, interface: str | None) -> None:
    found = link.network_for(address, link.parse_networks(IP_JSON))
    assert (found.interface if found else None) == interface
    if found is not None:
        assert found.prefix == 24 and found.address != "203.0.113.10"


def test_gratuitous_arp_frame() -> None:
    mac = bytes.fromhex("020000000001")
    frame = link.garp_frame(mac, "203.0.113.10")
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == mac and frame[12:14] == b"\x08\x06"
    arp = frame[14:]
    assert arp[:8] == bytes.fromhex("0001080006040001")  # Ethernet, IPv4, request
    assert arp[8:14] == mac and arp[14:18] == bytes([203, 0, 113, 10])
    assert arp[18:24] == bytes(6) and arp[24:28] == bytes([203, 0, 113, 10])


@pytest.mark.parametrize(
    ("capeff", "missing"),
    [
        ("000001ffffffffff", []),
        ("0000000000000000", ["CAP_NET_ADMIN", "CAP_NET_RAW"]),
        (f"{1 << 13:016x}", ["CAP_NET_ADMIN"]),
        (f"{1 << 12:016x}", ["CAP_NET_RAW"]),
    ],
)
def test_missing_capabilities(capeff: str, missing: list[str]) -> None:
    status = f"Name:\tpython\nCapInh:\t0000000000000000\nCapEff:\t{capeff}\n"
    assert link.missing_capabilities(status) == missing
