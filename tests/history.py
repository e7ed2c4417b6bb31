"""A history checker in the spirit of Jepsen's set checker, for the failover tests.

Several clients post uniquely titled posts through the app over HTTP while a fault is
injected. Each operation is recorded as **ok** (201: acknowledged), **failed** (503: the
app refused it before writing; such a post may still exist if the database wrote it
after the app gave up, which the checker allows) or **unknown** (timeout or a broken
connection: it may or may not have happened). A sampler reads every database server's
`read_only` and epoch all along. At the end every server is read, and the checker fails
when an acknowledged post is missing from the primary (or from a replica in service), when
any post appears twice anywhere, or when two servers were writable in the same epoch.
A semi-synchronous acknowledgement means the replica *received* a transaction, not that it
applied it: a replica is given a bounded time to apply what it holds before it is judged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiomysql
import httpx

# Bounds: a history never runs away with the machine.
MAX_OPS_PER_CLIENT = 5000
REQUEST_TIMEOUT = 5.0
APPLY_WITHIN = 10.0  # seconds a server in service has to apply the posts it has received


@dataclass
class Op:
    title: str
    started: float
    ended: float = 0.0
    outcome: str = "unknown"  # ok | failed | unknown


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)
    samples: list[tuple[float, str, bool, int]] = field(default_factory=list)
    fault_at: float | None = None

    def count(self, outcome: str) -> int:
        return sum(op.outcome == outcome for op in self.ops)

    def resumed_after(self) -> float | None:
        """Seconds from the fault to the first acknowledged write that started after it."""
        if self.fault_at is None:
            return None
        after = [op.ended for op in self.ops if op.outcome == "ok" and op.started >= self.fault_at]
        return min(after) - self.fault_at if after else None

    def two_writable(self) -> list[str]:
        """Moments when two servers were writable in the same epoch."""
        found = []
        by_round: dict[float, list[tuple[str, bool, int]]] = {}
        for moment, name, writable, epoch in self.samples:
            by_round.setdefault(moment, []).append((name, writable, epoch))
        for moment, rows in by_round.items():
            epochs = Counter(epoch for _, writable, epoch in rows if writable)
            found += [f"t={moment:.2f} epoch {e}" for e, n in epochs.items() if n > 1]
        return found


class Checker:
    def __init__(self, app_urls: Sequence[str], servers: dict[str, dict[str, Any]]) -> None:
        """`servers`: name -> aiomysql.connect arguments (the app's account)."""
        self.app_urls = list(app_urls)
        self.servers = servers
        self.history = History()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._loop = asyncio.get_running_loop()

    def now(self) -> float:
        return self._loop.time()

    def start(self, clients: int = 4) -> None:
        for client in range(clients):
            url = self.app_urls[client % len(self.app_urls)]
            self._tasks.append(asyncio.create_task(self._client(client, url)))
        self._tasks.append(asyncio.create_task(self._sample()))

    def fault(self) -> None:
        self.history.fault_at = self.now()

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _client(self, client: int, url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT) as http:
            for n in range(MAX_OPS_PER_CLIENT):
                if self._stop.is_set():
                    return
                op = Op(f"c{client}-{n}", self.now())
                self.history.ops.append(op)
                try:
                    response = await http.post(
                        "/api/posts", json={"author": "checker", "title": op.title, "body": "x"}
                    )
                except httpx.HTTPError:
                    op.outcome = "unknown"
                else:
                    if response.status_code == 201:
                        op.outcome = "ok"
                    elif response.status_code == 503:
                        op.outcome = "failed"
                        await asyncio.sleep(0.05)  # as a client honouring Retry-After would, faster
                op.ended = self.now()

    async def _sample(self) -> None:
        while not self._stop.is_set():
            moment = self.now()
            rows = await asyncio.gather(*(self._server_state(name) for name in self.servers))
            for name, row in zip(self.servers, rows, strict=True):
                if row is not None:
                    self.history.samples.append((moment, name, *row))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.1)

    async def _server_state(self, name: str) -> tuple[bool, int] | None:
        try:
            async with asyncio.timeout(0.5):
                connection = await aiomysql.connect(**self.servers[name], connect_timeout=0.5)
                try:
                    async with connection.cursor() as cursor:
                        await cursor.execute(
                            "SELECT @@GLOBAL.read_only, (SELECT epoch FROM foobar_ha.epoch)"
                        )
                        read_only, epoch = await cursor.fetchone()
                finally:
                    connection.close()
        except Exception:  # unreachable, frozen: no sample, which claims nothing
            return None
        return not read_only, int(epoch or 0)

    async def titles(self, name: str) -> list[str] | None:
        try:
            connection = await aiomysql.connect(**self.servers[name], connect_timeout=2)
        except Exception:
            return None
        try:
            async with connection.cursor() as cursor:
                await cursor.execute("SELECT title FROM posts WHERE author = 'checker'")
                return [row[0] for row in await cursor.fetchall()]
        finally:
            connection.close()

    async def _titles_once_applied(self, name: str, wanted: set[str]) -> list[str] | None:
        """`name`'s titles once it holds all of `wanted`, or as they are when APPLY_WITHIN
        has passed (a replica's SQL thread may still be applying what it acknowledged)."""
        deadline = self.now() + APPLY_WITHIN
        while True:
            titles = await self.titles(name)
            if titles is None or wanted <= set(titles) or self.now() >= deadline:
                return titles
            await asyncio.sleep(0.1)

    async def verdict(self, must_hold: Sequence[str]) -> dict[str, Any]:
        """Read every server; `must_hold` names those that must have every acknowledged
        post (the primary, and replicas in service). Returns the counts and problems."""
        acknowledged = {op.title for op in self.history.ops if op.outcome == "ok"}
        problems: list[str] = []
        lost = 0
        for name in self.servers:
            wanted = acknowledged if name in must_hold else set()
            titles = await self._titles_once_applied(name, wanted)
            if titles is None:
                if name in must_hold:
                    problems.append(f"{name} cannot be read")
                continue
            twice = [title for title, n in Counter(titles).items() if n > 1]
            if twice:
                problems.append(f"{name} holds {len(twice)} posts twice: {twice[:5]}")
            if name in must_hold:
                missing = acknowledged - set(titles)
                lost = max(lost, len(missing))
                if missing:
                    problems.append(
                        f"{name} lacks {len(missing)} acknowledged posts: {sorted(missing)[:5]}"
                    )
        problems += [f"two writable servers at {moment}" for moment in self.history.two_writable()]
        resumed = self.history.resumed_after()
        result = {
            "ok": self.history.count("ok"),
            "failed": self.history.count("failed"),
            "unknown": self.history.count("unknown"),
            "lost": lost,
            "writes_resumed_after": None if resumed is None else round(resumed, 2),
            "problems": problems,
        }
        print(f"history: {result}")
        return result
