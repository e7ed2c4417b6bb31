"""VRRP v3 adverts as bytes: encoding, the checksum over the IPv4 pseudo-header, and every
reason decode() drops an advert for."""

from __future__ import annotations

import struct

import pytest

from foobar.lb.vrrp import packet
from foobar.lb.vrrp.packet import Advert, Dropped

SOURCE, GROUP = "10.0.0.1", packet.MULTICAST_GROUP
VIPS = ("10.0.0.10",)


def datagram(message: bytes, ttl: int = 255, source: str = SOURCE, to: str = GROUP) -> bytes:
    return packet.ipv4_header(source, to, len(message), ttl) + message


def good(priority: int = 150, interval_cs: int = 10, addresses: tuple[str, ...] = VIPS) -> bytes:
    return packet.encode(51, priority, interval_cs, addresses, SOURCE, GROUP)


def with_checksum(message: bytes) -> bytes:
    """`message` with its checksum recomputed, so only the field under test is wrong."""
    zeroed = message[:6] + b"\0\0" + message[8:]
    total = packet.checksum(packet.pseudo_header(SOURCE, GROUP, len(zeroed)) + zeroed)
    return zeroed[:6] + struct.pack("!H", total) + zeroed[8:]


def test_the_wire_format() -> None:
    message = good()
    # version 3, type 1; vrid 51; priority 150; one address; 10 cs; checksum; the address
    assert message[:6] == bytes([0x31, 51, 150, 1, 0x00, 10])
    assert message[8:] == bytes([10, 0, 0, 10])
    assert len(message) == 12


def test_checksum_covers_the_pseudo_header() -> None:
    message = good()
    assert packet.checksum(packet.pseudo_header(SOURCE, GROUP, 12) + message) == 0
    # the same message sent to another destination (a unicast peer) needs another checksum
    assert packet.encode(51, 150, 10, VIPS, SOURCE, "10.0.0.5") != message
    # version 2's checksum (the message alone) is not version 3's
    assert packet.checksum(message) != 0


def test_rfc1071_example() -> None:
    # RFC 1071 section 3's example: the one's complement sum of these words is 0xddf2
    assert packet.checksum(bytes.fromhex("0001f203f4f5f6f7")) == ~0xDDF2 & 0xFFFF


def test_a_good_advert_decodes() -> None:
    addresses = ("10.0.0.10", "10.0.0.20")
    result = packet.decode(datagram(good(200, 4095, addresses)))
    assert result == Advert(51, 200, 4095, addresses, SOURCE)


def test_priority_zero_is_an_advert() -> None:
    result = packet.decode(datagram(good(priority=0)))
    assert isinstance(result, Advert) and result.priority == 0


def bad_version(message: bytes) -> bytes:
    return with_checksum(bytes([0x21]) + message[1:])


def bad_type(message: bytes) -> bytes:
    return with_checksum(bytes([0x32]) + message[1:])


def bad_checksum(message: bytes) -> bytes:
    return message[:7] + bytes([message[7] ^ 0xFF]) + message[8:]


def bad_count(message: bytes) -> bytes:
    return with_checksum(message[:3] + bytes([2]) + message[4:])


def zero_count(message: bytes) -> bytes:
    return with_checksum(message[:3] + bytes([0]) + message[4:8])


def v2_authentication(message: bytes) -> bytes:
    return with_checksum(message + b"secret\0\0")


def zero_interval(message: bytes) -> bytes:
    return with_checksum(message[:4] + b"\0\0" + message[6:])


@pytest.mark.parametrize(
    ("name", "wire", "reason"),
    [
        ("ttl 64 (routed from elsewhere)", datagram(good(), ttl=64), "ttl"),
        ("ttl 254", datagram(good(), ttl=254), "ttl"),
        ("version 2", datagram(bad_version(good())), "version"),
        ("type 2", datagram(bad_type(good())), "type"),
        ("checksum flipped", datagram(bad_checksum(good())), "checksum"),
        ("checksum without pseudo-header", datagram(good(), source="10.0.0.7"), "checksum"),
        ("count says 2, carries 1", datagram(bad_count(good())), "address_count"),
        ("count 0, no address", datagram(zero_count(good())), "address_count"),
        ("v2 authentication data", datagram(v2_authentication(good())), "authentication"),
        ("interval 0", datagram(zero_interval(good())), "interval"),
        ("header cut short", datagram(good()[:6]), "truncated"),
        ("not IPv4", b"\x60" + bytes(40), "truncated"),
        ("empty", b"", "truncated"),
    ],
)
def test_malformed_adverts_are_dropped_with_their_reason(
    name: str, wire: bytes, reason: str
) -> None:
    result = packet.decode(wire)
    assert isinstance(result, Dropped), name
    assert result.reason == reason, name
    assert reason in packet.DROP_REASONS


@pytest.mark.parametrize(
    ("router_id", "priority", "interval_cs", "count"),
    [
        (0, 100, 100, 1),
        (256, 100, 100, 1),
        (1, 256, 100, 1),
        (1, 100, 0, 1),
        (1, 100, 4096, 1),
        (1, 100, 100, 0),
    ],
)
def test_encode_refuses_out_of_range_fields(
    router_id: int, priority: int, interval_cs: int, count: int
) -> None:
    with pytest.raises(ValueError):
        packet.encode(router_id, priority, interval_cs, VIPS * count, SOURCE, GROUP)
