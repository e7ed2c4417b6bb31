"""The VRRP state machine with no I/O: events in, actions and deadlines out (RFC 5798
section 6.4)."""

from __future__ import annotations

import pytest

from foobar.lb.vrrp.machine import (
    Announce,
    Config,
    Machine,
    ReleaseAddresses,
    Send,
    State,
    TakeAddresses,
    master_down_interval,
    skew_time,
)
from foobar.lb.vrrp.packet import Advert

ME = "10.0.0.1"


def machine(priority: int = 100, preempt: bool = True, delay: float = 0.0) -> Machine:
    return Machine(Config(51, priority, 100, preempt, delay, ME))


def advert(priority: int, source: str = "10.0.0.5", interval_cs: int = 100) -> Advert:
    return Advert(51, priority, interval_cs, ("10.0.0.10",), source)


def master(m: Machine) -> Machine:
    m.start(0.0)
    assert m.deadline is not None
    m.tick(m.deadline)
    assert m.state is State.MASTER
    return m


@pytest.mark.parametrize(
    ("priority", "interval", "skew", "down"),
    [
        (100, 1.0, 0.609375, 3.609375),  # keepalived's default: ~3.6 s
        (100, 0.1, 0.0609375, 0.3609375),
        (254, 1.0, 2 / 256, 3 + 2 / 256),
        (1, 1.0, 255 / 256, 3 + 255 / 256),
    ],
)
def test_timers(priority: int, interval: float, skew: float, down: float) -> None:
    assert skew_time(priority, interval) == pytest.approx(skew)
    assert master_down_interval(priority, interval) == pytest.approx(down)


def test_start_as_backup_then_master_when_nobody_speaks() -> None:
    m = machine()
    assert m.start(10.0) == []
    assert m.state is State.BACKUP
    assert m.deadline == pytest.approx(10.0 + 3.609375)
    assert m.tick(12.0) == []  # not yet
    actions = m.tick(m.deadline)
    assert actions == [Send(100), TakeAddresses()]
    assert m.state is State.MASTER and m.master_transitions == 1
    assert m.deadline == pytest.approx(10.0 + 3.609375 + 1.0)
    assert m.tick(m.deadline) == [Send(100)]  # the advert timer


def test_backup_follows_a_master_and_learns_its_interval() -> None:
    m = machine(priority=100)
    m.start(0.0)
    assert m.receive(advert(150, interval_cs=10), 1.0) == []
    assert m.master_address == "10.0.0.5"
    assert m.deadline == pytest.approx(1.0 + 3 * 0.1 + skew_time(100, 0.1))


def test_priority_zero_makes_the_backup_take_over_after_its_skew() -> None:
    m = machine(priority=100)
    m.start(0.0)
    m.receive(advert(150), 1.0)
    m.receive(advert(0), 2.0)
    assert m.deadline == pytest.approx(2.0 + skew_time(100, 1.0))
    assert m.tick(m.deadline) == [Send(100), TakeAddresses()]


def test_preempt_ignores_a_lower_master_so_the_timer_runs_out() -> None:
    m = machine(priority=150, preempt=True)
    m.start(0.0)
    first = m.deadline
    m.receive(advert(100), 1.0)
    assert m.deadline == first  # not reset
    assert m.tick(first or 0.0) == [Send(150), TakeAddresses()]


def test_no_preempt_keeps_following_a_lower_master() -> None:
    m = machine(priority=150, preempt=False)
    m.start(0.0)
    m.receive(advert(100), 1.0)
    assert m.deadline == pytest.approx(1.0 + m.down_interval())


def test_preempt_delay() -> None:
    m = machine(priority=150, preempt=True, delay=30.0)
    m.start(0.0)
    m.receive(advert(100), 10.0)
    assert m.deadline == pytest.approx(10.0 + m.down_interval())  # still following
    deadline = m.deadline
    m.receive(advert(100), 31.0)
    assert m.deadline == deadline  # preempting now


@pytest.mark.parametrize(
    ("theirs", "source", "steps_down"),
    [
        (150, "10.0.0.5", True),  # higher priority
        (100, "10.0.0.5", True),  # equal, higher address wins
        (100, "10.0.0.0", False),  # equal, lower address
        (50, "10.0.0.5", False),  # lower: two masters, we answer
    ],
)
def test_master_hearing_another_master(theirs: int, source: str, steps_down: bool) -> None:
    m = master(machine(priority=100))
    actions = m.receive(advert(theirs, source), 5.0)
    if steps_down:
        assert actions == [ReleaseAddresses()]
        assert m.state is State.BACKUP and m.master_address == source
    else:
        assert actions == [Send(100), Announce()]
        assert m.state is State.MASTER


def test_master_answers_priority_zero_at_once() -> None:
    m = master(machine())
    assert m.receive(advert(0), 5.0) == [Send(100)]
    assert m.deadline == pytest.approx(6.0)


def test_stop_sends_priority_zero_and_releases() -> None:
    m = master(machine())
    assert m.stop(9.0) == [Send(0), ReleaseAddresses()]
    assert m.state is State.INIT and m.priority == 0 and m.deadline is None
    assert m.tick(100.0) == [] and m.receive(advert(50), 100.0) == []


def test_a_fault_steps_down_and_its_end_rejoins_as_backup() -> None:
    m = master(machine())
    assert m.set_fault("no usable server", 9.0) == [Send(0), ReleaseAddresses()]
    assert m.state is State.INIT and m.priority == 0
    assert m.set_fault("no usable server", 9.5) == []
    assert m.set_fault(None, 10.0) == []
    assert m.state is State.BACKUP and m.priority == 100
    assert m.master_transitions == 1


def test_a_fault_before_start_keeps_it_out_of_the_election() -> None:
    m = machine()
    m.set_fault("frontend down", 0.0)
    assert m.start(0.0) == [] and m.state is State.INIT
    m.set_fault(None, 1.0)
    assert m.state is State.BACKUP
