"""Malformed VRRP adverts on the wire, one of each kind foobar must drop, sent from a host
of the multi-host test as raw Ethernet frames (so any source address can be forged):

    python -m tests.e2e.vrrp_forge INTERFACE SOURCE VRID ADDRESS

Each advert claims priority 254, higher than any balancer's: acted on, it would make the
master step down. Prints the reasons sent, as JSON."""

from __future__ import annotations

import json
import socket
import struct
import sys
from pathlib import Path

from foobar.lb.vrrp import packet

ETH_P_IP = 0x0800
MULTICAST_MAC = bytes.fromhex("01005e000012")  # 224.0.0.18
GROUP = packet.MULTICAST_GROUP


def fix_checksum(message: bytes, source: str) -> bytes:
    zeroed = message[:6] + b"\0\0" + message[8:]
    header = packet.pseudo_header(source, GROUP, len(zeroed))
    return zeroed[:6] + struct.pack("!H", packet.checksum(header + zeroed)) + zeroed[8:]


def adverts(source: str, vrid: int, address: str) -> dict[str, tuple[bytes, int]]:
    """reason -> (VRRP message, TTL)"""
    good = packet.encode(vrid, 254, 10, (address,), source, GROUP)
    return {
        "ttl": (good, 64),
        "version": (fix_checksum(bytes([0x21]) + good[1:], source), 255),
        "type": (fix_checksum(bytes([0x32]) + good[1:], source), 255),
        "checksum": (good[:7] + bytes([good[7] ^ 0x5A]) + good[8:], 255),
        "address_count": (fix_checksum(good[:3] + bytes([3]) + good[4:], source), 255),
        "authentication": (fix_checksum(good + b"password", source), 255),
        "interval": (fix_checksum(good[:4] + b"\0\0" + good[6:], source), 255),
        # well formed, but for addresses this virtual router does not have
        "addresses": (packet.encode(vrid, 254, 10, ("10.0.0.99",), source, GROUP), 255),
    }


def main(argv: list[str]) -> None:
    interface, source, vrid, address = argv[0], argv[1], int(argv[2]), argv[3]
    mac = bytes.fromhex(Path(f"/sys/class/net/{interface}/address").read_text().replace(":", ""))
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((interface, 0))
    sent = []
    for reason, (message, ttl) in adverts(source, vrid, address).items():
        ip = packet.ipv4_header(source, GROUP, len(message), ttl)
        sock.send(MULTICAST_MAC + mac + struct.pack("!H", ETH_P_IP) + ip + message)
        sent.append(reason)
    sock.close()
    print(json.dumps(sent))


if __name__ == "__main__":
    main(sys.argv[1:])
