"""Balancing algorithms: one small interface, a registry by name, and HAProxy's built-ins.

An algorithm picks a server among the candidates the backend offers (up, in `ready`
state, with a free slot under `maxconn`), is told when a connection starts and ends, and
when the server set or a weight changes:

    class Algorithm:
        def __init__(self, argument: str | None) -> None      # "X-User" for hdr(X-User)
        def update(self, servers: Sequence[Target]) -> None    # set or weights changed
        def pick(self, candidates: Sequence[Target], request: RequestInfo) -> Target | None
        def turns(self, candidates: Sequence[Target]) -> Sequence[Target] | None
        def started(self, server: Target) -> None
        def finished(self, server: Target) -> None

A third party adds one without touching foobar, through the entry-point group
`foobar.lb.algorithms` (see the README's example); `--algorithm NAME` or `NAME(argument)`
then finds it.

Built in: roundrobin (smooth weighted, nginx's algorithm), static-rr, leastconn, first,
source, uri, hdr(NAME), random (power of two choices). The hashing ones use a consistent
hash ring, so adding or removing one of N servers moves about 1/N of the keys.
"""

from __future__ import annotations

import bisect
import hashlib
import importlib.metadata
import random
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

ENTRY_POINT_GROUP = "foobar.lb.algorithms"
# Planning smooth weighted round-robin's period costs its length times the servers; past
# this (hundreds of servers of high weights) the picks are computed one by one instead.
MAX_PLANNED_WORK = 100_000


class Target(Protocol):
    """What an algorithm sees of a server."""

    @property
    def name(self) -> str: ...
    @property
    def weight(self) -> int: ...
    @property
    def active(self) -> int:
        """Connections (tcp) or requests (http) in flight."""
        ...


class RequestInfo(Protocol):
    """What the hashing algorithms key on. An HTTP request (the core's `Request`) is one
    as it is, with no copy made per request; `RequestKeys` gives them directly."""

    @property
    def client_ip(self) -> str: ...
    @property
    def path(self) -> bytes: ...
    def header(self, name: bytes) -> bytes | None:
        """The last value of a request header (`name` lower-case), or None."""
        ...


@dataclass(frozen=True, slots=True)
class RequestKeys:
    """A RequestInfo given directly: a TCP connection's (only its client), a test's."""

    client_ip: str
    path: bytes = b""
    headers: Callable[[bytes], bytes | None] = lambda name: None

    def header(self, name: bytes) -> bytes | None:
        return self.headers(name)


class Algorithm(ABC):
    """Base class; every built-in and plugin derives from it."""

    name: ClassVar[str]

    def __init__(self, argument: str | None = None) -> None:
        self.argument = argument

    def update(self, servers: Sequence[Target]) -> None:  # noqa: B027 - optional hook
        """The server set or a weight changed."""

    @abstractmethod
    def pick(self, candidates: Sequence[Target], request: RequestInfo) -> Target | None:
        """The server for this connection or request; None when none will do."""

    def turns(self, candidates: Sequence[Target]) -> Sequence[Target] | None:
        """For an algorithm that picks independently of the request and of the servers'
        load: its picks among `candidates` over one whole period, in order. The backend
        then plans them once per change of its usable servers and steps through them
        (HAProxy's map-based algorithms). None (the default): `pick` is asked each time."""
        return None

    def started(self, server: Target) -> None:  # noqa: B027 - optional hook
        """A connection or request to `server` started."""

    def finished(self, server: Target) -> None:  # noqa: B027 - optional hook
        """A connection or request to `server` ended."""


class RoundRobin(Algorithm):
    """Smooth weighted round-robin (nginx): weights 3 and 1 give a a b a, not a a a b.
    Each pick adds every candidate's weight to its score, takes the highest, and takes
    the total off it."""

    name = "roundrobin"

    def __init__(self, argument: str | None = None) -> None:
        super().__init__(argument)
        self._score: dict[str, int] = {}

    def update(self, servers: Sequence[Target]) -> None:
        self._score = {server.name: 0 for server in servers}

    def pick(self, candidates: Sequence[Target], request: RequestInfo) -> Target | None:
        return _smooth_weighted_pick(candidates, self._score)

    def turns(self, candidates: Sequence[Target]) -> Sequence[Target] | None:
        weighted = [server for server in candidates if server.weight > 0]
        period = sum(server.weight for server in weighted)
        if period * len(weighted) > MAX_PLANNED_WORK:
            return None
        score: dict[str, int] = {}
        turns = []
        for _ in range(period):
            server = _smooth_weighted_pick(weighted, score)
            assert server is not None  # every one of them has a weight
            turns.append(server)
        return turns


def _smooth_weighted_pick(candidates: Sequence[Target], score: dict[str, int]) -> Target | None:
    best: Target | None = None
    best_score = -(1 << 62)
    total = 0
    for server in candidates:
        weight = server.weight
        if weight > 0:
            total += weight
            current = score[server.name] = score.get(server.name, 0) + weight
            if current > best_score:
                best, best_score = server, current
    if best is not None:
        score[best.name] -= total
    return best


class StaticRoundRobin(Algorithm):
    """HAProxy's static-rr: each server in turn, `weight` times in a row."""

    name = "static-rr"

    def __init__(self, argument: str | None = None) -> None:
        super().__init__(argument)
        self._position = 0

    def pick(self, candidates: Sequence[Target], request: RequestInfo) -> Target | None:
        slots = self.turns(candidates)
        if not slots:
            return None
        server = slots[self._position % len(slots)]
        self._position += 1
        return server

    def turns(self, candidates: Sequence[Target]) -> Sequence[Target]:
        return [server for server in candidates for _ in range(max(server.weight, 0))]


class LeastConn(Algorithm):
    """Fewest active connections relative to weight; round-robin among ties."""

    name = "leastconn"

    def __init__(self, argument: str | None = None) -> None:
        super().__init__(argument)
        self._turn = 0

    def pick(self, candidates: Sequence[Target], request: RequestInfo) -> Target | None:
        weighted = [server for server in candidates if server.weight > 0]
        if not weighted:
            return None
        lowest = min(server.active / server.weight for server in weighted)
        tied = [server for server in weighted if server.active / server.weight == lowest]
        self._turn += 1
        return tied[self._turn % len(tied)]


class First(Algorithm):
    """HAProxy's first: the first server (in the configured order) with a free slot."""

    name = "first"

    def pick(self, candidates: Sequence[Target], request: RequestInfo) -> Target | None:
        return next((server for server in candidates if server.weight > 0), None)


class Random(Algorithm):
    """Power of two choices (Envoy's and HAProxy 3's default): two servers drawn by
    weight, the less busy one wins."""

    name = "random"

    def __init__(self, argument: str | None = None) -> None:
        super().__init__(argument)
        self.draws = int(argument) if argument else 2
        self._random = random.Random()

    def pick(self, candidates: Sequence[Target], request: RequestInfo) -> Target | None:
        weighted = [server for server in candidates if server.weight > 0]
        if not weighted:
            return None
        weights = [server.weight for server in weighted]
        drawn = self._random.choices(weighted, weights, k=self.draws)
        return min(drawn, key=lambda server: server.active / server.weight)


def hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class ConsistentHash(Algorithm):
    """A hash ring with `POINTS` points per unit of weight. A key goes to the first point
    clockwise whose server is a candidate, so only the keys of a server that leaves move."""

    POINTS = 160  # Ketama's choice: enough for an even spread with few servers

    def __init__(self, argument: str | None = None) -> None:
        super().__init__(argument)
        self._hashes: list[int] = []
        self._owners: list[str] = []
        self._fallback = RoundRobin()

    def update(self, servers: Sequence[Target]) -> None:
        points = sorted(
            (hash64(f"{server.name}#{i}".encode()), server.name)
            for server in servers
            for i in range(self.POINTS * max(server.weight, 0))
        )
        self._hashes = [point for point, _ in points]
        self._owners = [owner for _, owner in points]
        self._fallback.update(servers)

    @abstractmethod
    def key(self, request: RequestInfo) -> bytes | None:
        """What to hash; None to fall back to round-robin."""

    def pick(self, candidates: Sequence[Target], request: RequestInfo) -> Target | None:
        key = self.key(request)
        if key is None or not self._hashes:
            return self._fallback.pick(candidates, request)  # HAProxy falls back to RR
        by_name = {server.name: server for server in candidates}
        start = bisect.bisect(self._hashes, hash64(key))
        count = len(self._hashes)
        for step in range(count):
            owner = self._owners[(start + step) % count]
            if owner in by_name:
                return by_name[owner]
        return None


class Source(ConsistentHash):
    name = "source"

    def key(self, request: RequestInfo) -> bytes | None:
        return request.client_ip.encode()


class Uri(ConsistentHash):
    """The path, without the query (HAProxy's `balance uri` default)."""

    name = "uri"

    def key(self, request: RequestInfo) -> bytes | None:
        return request.path.partition(b"?")[0] or None


class Header(ConsistentHash):
    name = "hdr"

    def __init__(self, argument: str | None = None) -> None:
        if not argument:
            raise ValueError("hdr needs a header name: hdr(X-User)")
        super().__init__(argument)
        self.header_name = argument.lower().encode()

    def key(self, request: RequestInfo) -> bytes | None:
        return request.header(self.header_name)


BUILT_IN: dict[str, type[Algorithm]] = {
    algorithm.name: algorithm
    for algorithm in (RoundRobin, StaticRoundRobin, LeastConn, First, Random, Source, Uri, Header)
}
# Only these read HTTP requests: a tcp backend has no path or headers.
HTTP_ONLY = frozenset({"uri", "hdr"})

SPEC = re.compile(r"^([A-Za-z0-9_.-]+)(?:\((.*)\))?$")


def registry() -> dict[str, type[Algorithm]]:
    """Built-ins and every algorithm installed under the entry-point group."""
    found = dict(BUILT_IN)
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in found:
            continue  # a plugin never replaces a built-in
        loaded = entry.load()
        if isinstance(loaded, type) and issubclass(loaded, Algorithm):
            found[entry.name] = loaded
    return found


def parse_spec(spec: str) -> tuple[str, str | None]:
    match = SPEC.fullmatch(spec.strip())
    if match is None:
        raise ValueError(f"not an algorithm: {spec!r} (expected NAME or NAME(argument))")
    return match[1], match[2]


def create(spec: str) -> Algorithm:
    """`roundrobin`, `hdr(X-User)`, `random(3)`, or a plugin's name."""
    name, argument = parse_spec(spec)
    known = registry()
    if name not in known:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(sorted(known))}")
    return known[name](argument)
