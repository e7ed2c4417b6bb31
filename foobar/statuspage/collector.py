"""Polls every role's admin listener (`/healthz`, `/metrics`, and the database's
`/status`) each `interval`, and keeps what the page shows: each node's health, rates and
p99, the database's per-instance replication state, and the history behind the charts.

A node is `up` (healthz 200), `unhealthy` (healthz answered otherwise), `down` (no answer
within `timeout`: stopped, frozen or cut off) or `unknown` (not polled yet, or a database
instance whose supervisor does not answer).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from foobar.errors import FoobarError
from foobar.http.client import PoolConfig, UpstreamPool
from foobar.settings import HostPort
from foobar.statuspage import metrics

RATE_WINDOW = 10.0  # seconds of readings behind a node's rates: steady, yet quick to move
P99_WINDOW = 60.0  # a p99 needs a hundred requests or so before it means anything
HISTORY_SECONDS = 600.0  # the charts' span
DEFAULT_MAX_LAG = 30.0  # foobar.db's max_replica_lag, when its metrics do not say


@dataclass(frozen=True)
class Target:
    role: str  # lb, web, app or db
    name: str
    address: str  # where it serves, as shown on the page
    admin: HostPort


@dataclass
class Node:
    target: Target
    pool: UpstreamPool
    health: str = "unknown"
    reason: str = "not polled yet"
    readings: collections.deque[metrics.Reading] = field(default_factory=collections.deque)
    status: dict[str, Any] | None = None  # the database's /status

    async def get(self, path: str) -> tuple[int, str]:
        response = await self.pool.request("GET", path.encode(), [(b"Host", b"status-page")])
        return response.status, (await response.read()).decode()

    def window(self, seconds: float) -> tuple[metrics.Reading, metrics.Reading] | None:
        """The newest reading and the oldest one within `seconds` of it."""
        if len(self.readings) < 2:
            return None
        newest = self.readings[-1]
        oldest = next(r for r in self.readings if newest.time - r.time <= seconds)
        return (newest, oldest) if oldest is not newest else None


class Collector:
    def __init__(self, targets: list[Target], interval: float = 1.0) -> None:
        self.interval = interval
        config = PoolConfig(connect_timeout=interval, read_timeout=interval)
        self.nodes = [
            Node(target, UpstreamPool(target.admin.host, target.admin.port, config))
            for target in targets
        ]
        length = int(HISTORY_SECONDS / interval)
        self.history: collections.deque[tuple[float, float | None, float | None]] = (
            collections.deque(maxlen=length)
        )

    async def poll(self, node: Node) -> None:
        now = time.monotonic()
        try:
            status, text = await node.get("/healthz")
            node.health = "up" if status == 200 else "unhealthy"
            node.reason = text.strip()
            _, text = await node.get("/metrics")
            node.readings.append(metrics.read(node.target.role, text, now))
            if node.target.role == "db":
                _, text = await node.get("/status")
                node.status = json.loads(text)
        except (FoobarError, OSError, ValueError) as exc:
            node.health, node.reason, node.status = "down", str(exc) or type(exc).__name__, None
        while node.readings and now - node.readings[0].time > P99_WINDOW:
            node.readings.popleft()

    async def poll_all(self) -> None:
        await asyncio.gather(*(self.poll(node) for node in self.nodes))
        self.history.append((time.time(), self.site_rate(), self.site_p99()))

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            await self.poll_all()
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def close(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(FoobarError, OSError):
                await node.pool.close()

    # figures

    def rates(self, node: Node) -> tuple[float | None, float | None]:
        window = node.window(RATE_WINDOW)
        if window is None or node.health == "down":
            return None, None
        return metrics.rate(*window)

    def p99(self, nodes: list[Node]) -> float | None:
        total: dict[float, float] = {}
        for node in nodes:
            window = node.window(P99_WINDOW)
            if window is None:
                continue
            for le, count in metrics.bucket_increase(window[0].buckets, window[1].buckets).items():
                total[le] = total.get(le, 0.0) + count
        return metrics.quantile(0.99, total)

    def of_role(self, role: str) -> list[Node]:
        return [node for node in self.nodes if node.target.role == role]

    def site_rate(self) -> float | None:
        """Requests per second as visitors make them: at the balancer(s), else the web tier."""
        for role in ("lb", "web"):
            rates = [self.rates(node)[0] for node in self.of_role(role)]
            if any(rate is not None for rate in rates):
                return sum(rate for rate in rates if rate is not None)
        return None

    def site_p99(self) -> float | None:
        return self.p99(self.of_role("app"))

    # what the page draws

    def snapshot(self) -> dict[str, Any]:
        nodes: list[dict[str, Any]] = []
        edges: list[tuple[str, str, str]] = []
        database: dict[str, Any] = {}
        for node in self.nodes:
            if node.target.role == "db":
                database = merged(database, self.database(node))
                continue
            requests, errors = self.rates(node)
            nodes.append(
                {
                    "id": f"{node.target.role}:{node.target.name}",
                    "role": node.target.role,
                    "name": node.target.name,
                    "address": node.target.address,
                    "health": node.health,
                    "reason": node.reason,
                    "rate": requests,
                    "errors": errors,
                    "p99": self.p99([node]) if requests is not None else None,
                }
            )
        nodes += database.get("instances", [])
        ids = {role: [n["id"] for n in nodes if n["role"] == role] for role in ("lb", "web", "app")}
        edges += [(lb, web, "") for lb in ids["lb"] for web in ids["web"]]
        edges += [(web, app, "") for web in ids["web"] for app in ids["app"]]
        instances = database.get("instances", [])
        primaries = [i["id"] for i in instances if i["role"] == "primary"]
        for instance in instances:
            kind = "writes" if instance["role"] == "primary" else "reads"
            edges += [(app, instance["id"], kind) for app in ids["app"]]
            if instance["role"] != "primary":
                edges += [(primary, instance["id"], "replication") for primary in primaries]
        return {
            "generated": time.time(),
            "interval": self.interval,
            "nodes": nodes,
            "edges": edges,
            "database": {key: value for key, value in database.items() if key != "instances"},
            "history": [
                {"time": when, "rate": rate, "p99": p99} for when, rate, p99 in self.history
            ],
        }

    def database(self, node: Node) -> dict[str, Any]:
        """The supervisor's view of each MariaDB instance, as page nodes."""
        status = node.status or {}
        gauges = node.readings[-1].gauges if node.readings else {}
        max_lag = gauges.get("foobar_db_max_replica_lag_seconds", DEFAULT_MAX_LAG)
        epoch = status.get("epoch")
        # an agent's is its whole epoch state; the number is what the page shows
        epoch = epoch.get("epoch") if isinstance(epoch, dict) else epoch
        instances = []
        for instance in status.get("instances", []):
            health, reason = instance_health(instance, max_lag)
            if node.health == "down":
                health, reason = "unknown", f"foobar.db does not answer: {node.reason}"
            instances.append(
                {
                    "id": f"db:{instance['name']}",
                    "role": instance["role"],
                    "name": instance["name"],
                    "address": f"{instance['host']}:{instance['port']}",
                    "health": health,
                    "reason": reason,
                    "lag": instance.get("seconds_behind"),
                    "semi_sync": instance.get("semi_sync"),
                    "epoch": instance.get("epoch", epoch),
                }
            )
        return {
            "supervisor": node.health,
            "reason": node.reason,
            "address": str(node.target.admin),
            "primary": status.get("primary"),
            "epoch": epoch,
            "instances": instances,
        }


def merged(database: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """The database as several admin listeners tell it (one agent per host and the
    witness, or one supervisor): every instance once, the view of the newest epoch."""
    if not database:
        return more
    names = {instance["name"] for instance in database["instances"]}
    instances = database["instances"] + [i for i in more["instances"] if i["name"] not in names]
    newer = (more.get("epoch") or 0) > (database.get("epoch") or 0)
    return {**(more if newer else database), "instances": instances}


def instance_health(instance: dict[str, Any], max_lag: float) -> tuple[str, str]:
    if not instance.get("reachable"):
        return "down", instance.get("error") or "not reachable"
    if instance["role"] == "primary":
        return "up", "primary"
    if not (instance.get("io_running") and instance.get("sql_running")):
        return "unhealthy", "replication stopped"
    lag = instance.get("seconds_behind")
    if lag is None or lag > max_lag:
        return "unhealthy", f"lag {lag if lag is not None else 'unknown'} (max {max_lag:g}s)"
    return "up", f"replicating, {lag}s behind"
