"""One virtual router's state machine (RFC 5798 section 6.4), with no I/O: events in,
actions out, the one timer as a deadline the caller schedules.

    init ──start──> backup ──master down timer──> master
      ^               ^  <──higher priority advert──┘
      └──stop/fault───┴──────────────────────────────┘  (a master sends priority 0 first)

Every transition happens in `_enter()`. Times are the caller's monotonic seconds.

Beyond the RFC, as keepalived does: `preempt_delay` (a backup of higher priority waits
this long after start before it preempts a lower master), and a master hearing a lower
priority master (two masters: a partition that healed) answers at once with an advert and
gratuitous ARPs, so the other steps down and the neighbours' ARP caches follow.
A fault (the balancer cannot serve: tracking) sends priority 0 and leaves the election
until it clears, which works whatever the peer's preempt setting is.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from foobar.lb.vrrp.packet import Advert


class State(enum.IntEnum):
    """The values of foobar_lb_vrrp_state."""

    INIT = 0
    BACKUP = 1
    MASTER = 2


@dataclass(frozen=True)
class Send:
    """Send an advertisement with this priority."""

    priority: int


@dataclass(frozen=True)
class TakeAddresses:
    """Add the virtual addresses to the interface, then send gratuitous ARPs."""


@dataclass(frozen=True)
class ReleaseAddresses:
    """Remove the virtual addresses (and stop any gratuitous ARPs still planned)."""


@dataclass(frozen=True)
class Announce:
    """Gratuitous ARPs again for addresses already held."""


Action = Send | TakeAddresses | ReleaseAddresses | Announce


@dataclass(frozen=True)
class Config:
    router_id: int
    priority: int  # 1-254: 255 is the address owner's, which foobar never is
    interval_cs: int  # Advertisement_Interval
    preempt: bool
    preempt_delay: float  # seconds after start before preempting
    address: str  # this router's own address, the tie-break of equal priorities


def skew_time(priority: int, interval: float) -> float:
    """Section 6.1: ((256 - Priority) * Master_Adver_Interval) / 256."""
    return (256 - priority) * interval / 256


def master_down_interval(priority: int, interval: float) -> float:
    """Section 6.1: (3 * Master_Adver_Interval) + Skew_time."""
    return 3 * interval + skew_time(priority, interval)


class Machine:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.state = State.INIT
        self.deadline: float | None = None  # Master_Down_Timer in backup, Adver_Timer in master
        self.master_interval = config.interval_cs / 100  # Master_Adver_Interval (learnt)
        self.master_address: str | None = None  # who we last heard as master
        self.fault: str | None = None
        self.stopped = True
        self.preempt_after = 0.0
        self.master_transitions = 0

    @property
    def interval(self) -> float:
        return self.config.interval_cs / 100

    @property
    def priority(self) -> int:
        """The priority this router advertises now: 0 while it stays out of the election."""
        return 0 if self.stopped or self.fault else self.config.priority

    def down_interval(self) -> float:
        return master_down_interval(self.config.priority, self.master_interval)

    # events

    def start(self, now: float) -> list[Action]:
        """Startup (section 6.4.1), or resuming after a fault cleared."""
        self.stopped = False
        self.preempt_after = now + self.config.preempt_delay
        if self.fault is not None:
            return []
        self.master_interval = self.interval
        return self._enter(State.BACKUP, now)

    def stop(self, now: float) -> list[Action]:
        """Shutdown (SIGTERM): a master sends priority 0 so a backup takes over at once."""
        actions = self._enter(State.INIT, now)
        self.stopped = True
        return actions

    def set_fault(self, reason: str | None, now: float) -> list[Action]:
        """Tracking: `reason` why this balancer cannot serve, or None when it can again."""
        if reason == self.fault:
            return []
        was, self.fault = self.fault, reason
        if self.stopped:
            return []
        if reason is not None and was is None:
            return self._enter(State.INIT, now)
        if reason is None:
            return self.start(now)
        return []

    def tick(self, now: float) -> list[Action]:
        """The deadline passed: the master is down (backup), or it is time to advertise."""
        if self.deadline is None or now < self.deadline:
            return []
        if self.state is State.BACKUP:
            return self._enter(State.MASTER, now)
        if self.state is State.MASTER:
            self.deadline = now + self.interval
            return [Send(self.priority)]
        return []

    def receive(self, advert: Advert, now: float) -> list[Action]:
        """An advert for our router id that passed the packet checks (section 6.4.2/3)."""
        if self.state is State.BACKUP:
            if advert.priority == 0:
                self.deadline = now + skew_time(self.config.priority, self.master_interval)
                return []
            may_preempt = self.config.preempt and now >= self.preempt_after
            if not may_preempt or advert.priority >= self.config.priority:
                self.master_interval = advert.interval_cs / 100
                self.master_address = advert.source
                self.deadline = now + self.down_interval()
            return []  # a lower master while we may preempt: its adverts no longer count
        if self.state is State.MASTER:
            if advert.priority == 0:
                self.deadline = now + self.interval
                return [Send(self.priority)]
            if self._outranks(advert):
                self.master_interval = advert.interval_cs / 100
                self.master_address = advert.source
                return self._enter(State.BACKUP, now)
            return [Send(self.priority), Announce()]  # two masters: the other must yield
        return []

    def _outranks(self, advert: Advert) -> bool:
        """Whether the sender wins against us: higher priority, or equal and higher address."""
        if advert.priority != self.config.priority:
            return advert.priority > self.config.priority
        return ipaddress.IPv4Address(advert.source) > ipaddress.IPv4Address(self.config.address)

    # the one place the state changes

    def _enter(self, state: State, now: float) -> list[Action]:
        actions: list[Action] = []
        was, self.state = self.state, state
        if was is State.MASTER and state is not State.MASTER:
            if state is State.INIT:
                actions.append(Send(0))
            actions.append(ReleaseAddresses())
        if state is State.BACKUP:
            self.deadline = now + self.down_interval()
        elif state is State.MASTER:
            self.master_transitions += 1
            self.master_address = self.config.address
            self.deadline = now + self.interval
            actions += [Send(self.priority), TakeAddresses()]
        else:
            self.deadline = None
        return actions
