"""Issue 15's targets, and the verdict on each computed from the measured rounds (never
written by hand). Pure: numbers in, verdicts out.

A throughput target compares rates; when the load generator's core was saturated in
either side's runs the rates say more about wrk than about the servers, and the target
is judged on CPU per request instead (throughput >= r x the peer's becomes CPU per
request <= 1/r x the peer's: what the rates would be if the server's core were the
limit).

A verdict's ratio is the median of the rounds' ratios: each round runs both sides back to
back, so a round's ratio is measured on one state of the machine, and its drift between
rounds (a slower minute for everyone) cancels out of it. The ratio of the two sides'
medians, which pairs a run of one round with a run of another, is kept beside it as a
reference (see loadtests/bench/notes.md, fourteenth pass: over eight runs of the same
code, the paired median moved less from run to run for eight targets of nine)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from loadtests.bench.measure import SATURATED, Result

# the tests, and the rows each shows
LB_HTTP, LB_TCP = "lb http mode", "lb tcp mode"
WEB_PROXY, WEB_1K, WEB_1M = "web proxying /api/", "web 1 KiB file", "web 1 MiB file"
FOOBAR, LOGGED, FLOOR, HAPROXY, NGINX = (
    "foobar",
    "foobar, access log on",
    "floor",
    "haproxy",
    "nginx",
)

Measure = Literal["throughput", "cpu"]


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(float(statistics.median(values)), min(values), max(values))


@dataclass(frozen=True)
class Target:
    """`ours` against `peer` in `test`: throughput >= bound x, or CPU per request <= bound x."""

    test: str
    ours: str
    peer: str
    on: Measure
    bound: float

    def __str__(self) -> str:
        if self.on == "throughput":
            return f"{self.test}: {self.ours} throughput >= {self.bound:g}x {self.peer}"
        return f"{self.test}: {self.ours} CPU/request <= {self.bound:g}x {self.peer}"


TARGETS = (
    Target(LB_HTTP, FOOBAR, FLOOR, "cpu", 1.5),
    Target(LB_HTTP, FOOBAR, HAPROXY, "throughput", 0.6),
    Target(WEB_PROXY, FOOBAR, NGINX, "throughput", 0.6),
    Target(WEB_1K, FOOBAR, NGINX, "throughput", 0.7),
    Target(LB_TCP, FOOBAR, HAPROXY, "cpu", 1.1),
    Target(WEB_1M, FOOBAR, NGINX, "cpu", 1.2),
    # the access log costs at most 10% of throughput
    *(Target(test, LOGGED, FOOBAR, "throughput", 0.9) for test in (LB_HTTP, WEB_PROXY, WEB_1K)),
)


@dataclass(frozen=True)
class Verdict:
    target: Target
    judged_on: Measure  # the target's own measure, or CPU when the load core was saturated
    ratio: float  # ours / peer, the median of the rounds' ratios, in the measure judged on
    rounds: Spread  # the same ratio round by round (each round's pair ran back to back)
    of_medians: float  # ours' median / the peer's median: the unpaired reference
    limit: float  # what the ratio had to reach: at least, on throughput; at most, on CPU
    met: bool

    @property
    def saturated(self) -> bool:
        return self.judged_on != self.target.on

    @property
    def bar(self) -> str:
        return f"{'>=' if self.judged_on == 'throughput' else '<='} {self.limit:.2f}x"


def saturated(results: Sequence[Result]) -> bool:
    """The load core was full in the median run."""
    return statistics.median(r.load_busy for r in results) >= SATURATED


def _ratio(ours: float, peer: float) -> float:
    # CPU time is counted in clock ticks: a very short run may show none
    return ours / peer if peer else math.inf


def judge(target: Target, ours: Sequence[Result], peer: Sequence[Result]) -> Verdict:
    on: Measure = target.on
    if on == "throughput" and (saturated(ours) or saturated(peer)):
        on = "cpu"

    def value(result: Result) -> float:
        return result.rate if on == "throughput" else result.cpu_us

    per_round = Spread.of([_ratio(value(a), value(b)) for a, b in zip(ours, peer, strict=True)])
    of_medians = _ratio(statistics.median(map(value, ours)), statistics.median(map(value, peer)))
    ratio = per_round.median
    # a throughput target judged on CPU: CPU per request <= 1/bound x the peer's
    limit = 1 / target.bound if on != target.on else target.bound
    met = ratio >= limit if on == "throughput" else ratio <= limit
    return Verdict(target, on, ratio, per_round, of_medians, limit, met)


def verdicts(
    results: dict[str, dict[str, list[Result]]], targets: Sequence[Target] = TARGETS
) -> list[Verdict]:
    """The verdict on every target whose two rows were measured."""
    return [
        judge(target, rows[target.ours], rows[target.peer])
        for target in targets
        if (rows := results.get(target.test)) and target.ours in rows and target.peer in rows
    ]


def floor_verdicts(results: dict[str, dict[str, list[Result]]]) -> list[Verdict]:
    """Python's floor held to foobar's bars against the peers, where the test ran it: a
    reference, not a target. Where the floor misses a bar, that run asked more than this
    machine does in Python; where it meets one foobar misses, the gap is foobar's."""
    against_peers = [t for t in TARGETS if t.ours == FOOBAR and t.peer != FLOOR]
    return verdicts(results, [replace(target, ours=FLOOR) for target in against_peers])
