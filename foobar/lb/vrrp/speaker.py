"""One virtual router on the wire: the raw sockets, the timer, and carrying out what the
state machine (machine.py) decides. Packets are built and checked in packet.py.

Two raw IPv4 sockets of protocol 112 per virtual router: one receives every VRRP packet
arriving on the interface (bound to the device, in the multicast group), one sends, bound
to the interface's own address so the kernel's source address is the one the checksum's
pseudo-header was computed with. TTL 255 both for multicast and unicast (RFC 5798 5.1.1.3).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import socket
import time
from typing import Any

from foobar.lb.settings import VrrpInstanceSettings, VrrpSettings
from foobar.lb.vrrp import link, packet
from foobar.lb.vrrp.link import Link, LinkError
from foobar.lb.vrrp.machine import (
    Action,
    Announce,
    Config,
    Machine,
    ReleaseAddresses,
    Send,
    State,
    TakeAddresses,
)

log = logging.getLogger("foobar.lb.vrrp")

# A VRRP message is at most 8 + 255 * 4 bytes; with the IP header well under this.
RECEIVE_BYTES = 2048
# What one readiness callback reads at most before letting the loop run other work.
READ_BATCH = 64
IPTOS_CS6 = 0xC0  # network control traffic class, as keepalived marks its adverts
# After the new master's first advert, how long a stopping master keeps the address: the
# new master sends its gratuitous ARPs right after that advert (and an `ip addr add`); a
# client's packet arriving between a removal and the ARPs would be lost.
HANDOVER_GRACE = 0.2


class Speaker:
    def __init__(self, settings: VrrpInstanceSettings, shared: VrrpSettings, where: Link) -> None:
        self.settings = settings
        self.shared = shared
        self.link = where
        self.machine = Machine(
            Config(
                router_id=settings.virtual_router_id,
                priority=settings.priority,
                interval_cs=settings.interval_cs,
                preempt=settings.preempt,
                preempt_delay=settings.preempt_delay,
                address=where.address,
            )
        )
        self.destinations = settings.unicast_peers or [packet.MULTICAST_GROUP]
        self.dropped: collections.Counter[str] = collections.Counter()
        self.received = 0
        self.sent = 0
        self.last_change = time.time()
        self._receiver: socket.socket | None = None
        self._sender: socket.socket | None = None
        self._arp: socket.socket | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._second_garp: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._logged_state = State.INIT
        self._new_master: asyncio.Event | None = None  # set while handing over

    @property
    def name(self) -> str:
        return self.settings.name

    # life

    def start(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self._open_sockets()
        assert self._receiver is not None
        loop.add_reader(self._receiver.fileno(), self._on_readable)
        # A balancer killed while master left its addresses behind; a master that restarts
        # must not hold them before it wins the election again (two masters).
        for address in self.settings.addresses:
            if link.remove_address(self.link, address):
                log.warning(
                    "event=vrrp_stale_address_removed instance=%s address=%s", self.name, address
                )
        log.info(
            "event=vrrp_start instance=%s vrid=%d priority=%d interval=%.2f interface=%s "
            "source=%s to=%s",
            self.name,
            self.settings.virtual_router_id,
            self.settings.priority,
            self.settings.advert_interval,
            self.link.interface,
            self.link.address,
            ",".join(self.destinations),
        )
        self._apply(self.machine.start(loop.time()))

    def _open_sockets(self) -> None:
        device = self.link.interface.encode()
        receiver = socket.socket(socket.AF_INET, socket.SOCK_RAW, packet.PROTOCOL)
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device)
        if not self.settings.unicast_peers:
            membership = socket.inet_aton(packet.MULTICAST_GROUP) + socket.inet_aton(
                self.link.address
            )
            receiver.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        receiver.setblocking(False)
        sender = socket.socket(socket.AF_INET, socket.SOCK_RAW, packet.PROTOCOL)
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device)
        sender.bind((self.link.address, 0))
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, packet.TTL)
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, packet.TTL)
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        sender.setsockopt(
            socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(self.link.address)
        )
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, IPTOS_CS6)
        sender.setblocking(False)
        self._receiver, self._sender = receiver, sender
        self._arp = link.open_arp_socket(self.link.interface)

    async def stop(self) -> None:
        """Step down: a master sends priority 0, so the backup takes over at once (its skew
        time, not three advert intervals), and keeps its addresses until the new master
        has spoken (bounded by the master-down interval), so no client packet falls
        between two owners."""
        if self._loop is None:
            return
        was_master = self.machine.state is State.MASTER
        waited = self.machine.down_interval()
        self._new_master = asyncio.Event()
        actions = self.machine.stop(self._loop.time())
        self._apply([action for action in actions if not isinstance(action, ReleaseAddresses)])
        if was_master:
            try:
                await asyncio.wait_for(self._new_master.wait(), waited)
                await asyncio.sleep(HANDOVER_GRACE)
                log.info("event=vrrp_handed_over instance=%s", self.name)
            except TimeoutError:
                log.warning("event=vrrp_no_new_master instance=%s waited=%.2f", self.name, waited)
        self._release_addresses()
        self._close()

    def _close(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and self._receiver is not None:
            loop.remove_reader(self._receiver.fileno())
        for sock in (self._receiver, self._sender, self._arp):
            if sock is not None:
                sock.close()
        self._receiver = self._sender = self._arp = None

    def set_fault(self, reason: str | None) -> None:
        if self._loop is None or reason == self.machine.fault:
            return
        if reason is None:
            log.info("event=vrrp_fault_cleared instance=%s", self.name)
        else:
            log.warning("event=vrrp_fault instance=%s reason=%r", self.name, reason)
        self._apply(self.machine.set_fault(reason, self._loop.time()))

    # events

    def _on_readable(self) -> None:
        self._read_pending()

    def _read_pending(self) -> None:
        """Read what waits on the socket: a process that was starved of CPU first learns
        what its master said meanwhile, and only then looks at its timer."""
        receiver, loop = self._receiver, self._loop
        if receiver is None or loop is None:
            return
        for _ in range(READ_BATCH):
            try:
                datagram = receiver.recv(RECEIVE_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("event=vrrp_receive_error instance=%s error=%r", self.name, exc)
                return
            self._on_datagram(datagram, loop.time())

    def _on_datagram(self, datagram: bytes, now: float) -> None:
        result = packet.decode(datagram)
        ours = self.settings.virtual_router_id
        if isinstance(result, packet.Dropped):
            if result.router_id in (None, ours):
                self._drop(result.reason, datagram)
            return
        if result.router_id != ours or result.source == self.link.address:
            return  # another virtual router's, or our own
        if self.settings.unicast_peers and result.source not in self.settings.unicast_peers:
            self._drop("peer", datagram)
            return
        if sorted(result.addresses) != sorted(self.settings.addresses):
            self._drop("addresses", datagram)
            return
        self.received += 1
        if self._new_master is not None and result.priority > 0:
            self._new_master.set()
        self._apply(self.machine.receive(result, now))

    def _drop(self, reason: str, datagram: bytes) -> None:
        self.dropped[reason] += 1
        source = str(ipaddress.IPv4Address(datagram[12:16])) if len(datagram) >= 20 else "?"
        log.warning(
            "event=vrrp_advert_dropped instance=%s reason=%s source=%s", self.name, reason, source
        )

    def _on_timer(self) -> None:
        self._timer = None
        self._read_pending()
        if self._loop is not None:
            self._apply(self.machine.tick(self._loop.time()))

    # actions

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._send(action.priority)
            elif isinstance(action, TakeAddresses):
                self._take_addresses()
            elif isinstance(action, ReleaseAddresses):
                self._release_addresses()
            elif isinstance(action, Announce):
                self._announce()
        if self.machine.state is not self._logged_state:
            self._log_state()
        self._schedule()

    def _log_state(self) -> None:
        was, self._logged_state = self._logged_state, self.machine.state
        self.last_change = time.time()
        log.info(
            "event=vrrp_state instance=%s from=%s to=%s priority=%d master=%s",
            self.name,
            was.name.lower(),
            self._logged_state.name.lower(),
            self.machine.priority,
            self.machine.master_address,
        )

    def _schedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.machine.deadline
        if deadline is not None and self._loop is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _send(self, priority: int) -> None:
        if self._sender is None:
            return
        for destination in self.destinations:
            message = packet.encode(
                self.settings.virtual_router_id,
                priority,
                self.settings.interval_cs,
                tuple(self.settings.addresses),
                self.link.address,
                destination,
            )
            try:
                self._sender.sendto(message, (destination, 0))
                self.sent += 1
            except OSError as exc:  # a full buffer or a down link: the next advert retries
                log.warning(
                    "event=vrrp_send_failed instance=%s to=%s error=%r", self.name, destination, exc
                )

    def _take_addresses(self) -> None:
        # `ip` runs synchronously: a transition is rare, takes a few milliseconds, and the
        # address must be in place before the ARPs that send traffic to it
        for address in self.settings.addresses:
            try:
                link.add_address(self.link, address)
            except LinkError as exc:
                log.error("event=vrrp_address_failed instance=%s error=%r", self.name, str(exc))
        self._announce()
        if self._loop is not None and self.shared.garp_delay > 0:
            self._second_garp = self._loop.call_later(self.shared.garp_delay, self._announce)

    def _release_addresses(self) -> None:
        if self._second_garp is not None:
            self._second_garp.cancel()
            self._second_garp = None
        for address in self.settings.addresses:
            link.remove_address(self.link, address)

    def _announce(self) -> None:
        if self._arp is None or self.machine.state is not State.MASTER:
            return
        for _ in range(self.shared.garp_repeat):
            for address in self.settings.addresses:
                with contextlib.suppress(OSError):
                    self._arp.send(link.garp_frame(self.link.mac, address))

    # reports

    def describe(self) -> dict[str, Any]:
        machine = self.machine
        return {
            "instance": self.name,
            "virtual_router_id": self.settings.virtual_router_id,
            "state": machine.state.name.lower(),
            "priority": machine.priority,
            "configured_priority": self.settings.priority,
            "fault": machine.fault,
            "addresses": list(self.settings.addresses),
            "interface": self.link.interface,
            "source": self.link.address,
            "master": machine.master_address,
            "advert_interval": self.settings.advert_interval,
            "master_down_interval": round(machine.down_interval(), 3),
            "preempt": self.settings.preempt,
            "peers": self.destinations,
            "master_transitions": machine.master_transitions,
            "adverts_sent": self.sent,
            "adverts_received": self.received,
            "adverts_dropped": dict(self.dropped),
            "last_change": self.last_change,
        }
