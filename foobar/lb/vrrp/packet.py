"""VRRP version 3 advertisements over IPv4 (RFC 5798 section 5), as bytes: no sockets here.

    0                   1                   2                   3
    0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
   |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
   |(rsvd) |     Max Adver Int     |          Checksum             |
   |                       IPv4 Address(es) ...                    |

`encode()` builds the VRRP message the kernel wraps in an IPv4 header (protocol 112);
`decode()` takes what a raw socket receives (the IPv4 header included) and returns an
`Advert` or a `Dropped` with the reason it is counted under. Version 3 computes the checksum
over an IPv4 pseudo-header too (section 5.2.8), unlike version 2.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

PROTOCOL = 112  # IANA: vrrp
MULTICAST_GROUP = "224.0.0.18"  # RFC 5798 section 5.1.1.2
TTL = 255  # section 5.1.1.3: a router receiving any other TTL discards (not forwarded)
VERSION = 3
TYPE_ADVERTISEMENT = 1
HEADER = struct.Struct("!BBBBHH")
IPV4_HEADER_MIN = 20
# 12 bits of centiseconds (section 5.2.7)
MAX_INTERVAL_CS = 0x0FFF
# VRRP version 2 adverts carry 8 bytes of authentication data after the addresses
# (RFC 3768 section 5.3.10); version 3 removed authentication.
V2_AUTH_DATA = 8

# why an advert was dropped, the label of foobar_lb_vrrp_adverts_dropped_total
DROP_REASONS = (
    "truncated",
    "ttl",
    "version",
    "type",
    "checksum",
    "address_count",
    "authentication",
    "interval",
    "addresses",
    "peer",
)


@dataclass(frozen=True)
class Advert:
    router_id: int
    priority: int
    interval_cs: int  # the sender's Max Adver Int
    addresses: tuple[str, ...]
    source: str = ""  # the sender's IPv4 address, from the IP header


@dataclass(frozen=True)
class Dropped:
    reason: str  # one of DROP_REASONS
    router_id: int | None = None  # when the header was readable


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): one's complement of the one's complement sum."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo_header(source: str, destination: str, length: int) -> bytes:
    """Section 5.2.8: the IPv4 pseudo-header (RFC 768's) the version 3 checksum covers."""
    return (
        ipaddress.IPv4Address(source).packed
        + ipaddress.IPv4Address(destination).packed
        + struct.pack("!BBH", 0, PROTOCOL, length)
    )


def encode(
    router_id: int,
    priority: int,
    interval_cs: int,
    addresses: tuple[str, ...],
    source: str,
    destination: str,
) -> bytes:
    """The VRRP message (no IP header) from `source` to `destination`, checksum filled in."""
    if not 1 <= router_id <= 255 or not 0 <= priority <= 255:
        raise ValueError(f"router id {router_id} or priority {priority} out of range")
    if not 1 <= interval_cs <= MAX_INTERVAL_CS or not 1 <= len(addresses) <= 255:
        raise ValueError(f"interval {interval_cs} cs or {len(addresses)} addresses out of range")
    body = b"".join(ipaddress.IPv4Address(address).packed for address in addresses)
    header = HEADER.pack(
        VERSION << 4 | TYPE_ADVERTISEMENT, router_id, priority, len(addresses), interval_cs, 0
    )
    message = header + body
    total = checksum(pseudo_header(source, destination, len(message)) + message)
    return message[:6] + struct.pack("!H", total) + message[8:]


def decode(datagram: bytes) -> Advert | Dropped:
    """Section 7.1's checks on a received IPv4 datagram, in order: TTL, version, type,
    checksum, the address count against the length. The caller checks the router id, the
    interval, the addresses and the sender against its own configuration."""
    if len(datagram) < IPV4_HEADER_MIN or datagram[0] >> 4 != 4:
        return Dropped("truncated")
    ip_length = (datagram[0] & 0x0F) * 4
    ttl, source, destination = datagram[8], datagram[12:16], datagram[16:20]
    message = datagram[ip_length:]
    if len(message) < HEADER.size:
        return Dropped("truncated")
    version_type, router_id, priority, count, interval, _ = HEADER.unpack_from(message)
    if ttl != TTL:
        return Dropped("ttl", router_id)
    if version_type >> 4 != VERSION:
        return Dropped("version", router_id)
    if version_type & 0x0F != TYPE_ADVERTISEMENT:
        return Dropped("type", router_id)
    source_text = str(ipaddress.IPv4Address(source))
    destination_text = str(ipaddress.IPv4Address(destination))
    if checksum(pseudo_header(source_text, destination_text, len(message)) + message) != 0:
        return Dropped("checksum", router_id)
    expected = HEADER.size + 4 * count
    if len(message) == expected + V2_AUTH_DATA:
        return Dropped("authentication", router_id)
    if count == 0 or len(message) != expected:
        return Dropped("address_count", router_id)
    interval_cs = interval & MAX_INTERVAL_CS
    if interval_cs == 0:
        return Dropped("interval", router_id)
    addresses = tuple(
        str(ipaddress.IPv4Address(message[offset : offset + 4]))
        for offset in range(HEADER.size, expected, 4)
    )
    return Advert(router_id, priority, interval_cs, addresses, source_text)


def ipv4_header(source: str, destination: str, payload_length: int, ttl: int = TTL) -> bytes:
    """An IPv4 header for a protocol-112 payload (what a raw socket receives), for tests and
    tools that forge adverts; the kernel writes the real one when foobar sends."""
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0xC0,  # DSCP CS6: network control, as keepalived sends
        IPV4_HEADER_MIN + payload_length,
        0,
        0,
        ttl,
        PROTOCOL,
        0,
        ipaddress.IPv4Address(source).packed,
        ipaddress.IPv4Address(destination).packed,
    )
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:]
