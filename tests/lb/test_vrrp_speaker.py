"""What a speaker does with datagrams it receives, before the state machine sees them:
the checks that need its configuration (router id, addresses, unicast peers, its own
source). Bytes in, counters and state out; no socket is opened."""

from __future__ import annotations

import pytest

from foobar.lb.settings import VrrpInstanceSettings, VrrpSettings
from foobar.lb.vrrp import packet
from foobar.lb.vrrp.link import Link
from foobar.lb.vrrp.machine import State
from foobar.lb.vrrp.speaker import Speaker

ME, PEER, STRANGER = "10.0.0.1", "10.0.0.5", "10.0.0.9"
VIP = "10.0.0.10"


def speaker(**fields: object) -> Speaker:
    instance = VrrpInstanceSettings.model_validate(
        {"name": "www", "virtual_router_id": 51, "priority": 100, "addresses": [VIP], **fields}
    )
    shared = VrrpSettings.model_construct(instances=[instance], garp_repeat=5, garp_delay=5.0)
    return Speaker(instance, shared, Link("eth0", ME, 24, bytes(6)))


def advert(
    source: str, priority: int = 150, router_id: int = 51, addresses: tuple[str, ...] = (VIP,)
) -> bytes:
    to = packet.MULTICAST_GROUP
    message = packet.encode(router_id, priority, 10, addresses, source, to)
    return packet.ipv4_header(source, to, len(message)) + message


def backup(s: Speaker) -> Speaker:
    s.machine.start(0.0)
    assert s.machine.state is State.BACKUP
    return s


@pytest.mark.parametrize(
    ("unicast_peers", "datagram", "dropped", "heard"),
    [
        ([], advert(PEER), {}, True),
        ([PEER], advert(PEER), {}, True),
        ([PEER], advert(STRANGER), {"peer": 1}, False),
        ([], advert(PEER, addresses=("10.0.0.99",)), {"addresses": 1}, False),
        ([], advert(PEER, addresses=(VIP, "10.0.0.99")), {"addresses": 1}, False),
        ([], advert(PEER, router_id=52), {}, False),  # another router's: not ours to count
        ([], advert(ME), {}, False),  # our own, looped back
        ([], advert(PEER)[:-1], {"checksum": 1}, False),
        ([], advert(PEER)[:20] + b"\x21" + advert(PEER)[21:], {"version": 1}, False),
    ],
)
def test_received_datagrams(
    unicast_peers: list[str], datagram: bytes, dropped: dict[str, int], heard: bool
) -> None:
    s = backup(speaker(unicast_peers=unicast_peers))
    s._on_datagram(datagram, 1.0)
    assert dict(s.dropped) == dropped
    assert s.received == int(heard)
    assert (s.machine.master_address == PEER) is heard
