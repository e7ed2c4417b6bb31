"""The status page's arithmetic, as tables: what it reads from a role's Prometheus text,
rates across a restart, histogram_quantile as Prometheus computes it, and the health of
a database instance from foobar.db's /status."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from foobar.admin import PlainCounter
from foobar.statuspage.collector import instance_health
from foobar.statuspage.metrics import Reading, quantile, rate, read

INF = math.inf


def test_read_counts_requests_errors_buckets_and_gauges() -> None:
    registry = CollectorRegistry()
    requests = PlainCounter("foobar_app_requests", "", ["method", "route", "status"], registry)
    requests.values[("GET", "/api/posts", 200)] += 7
    requests.values[("POST", "/api/posts", 503)] += 2
    requests.values[("GET", "/api/posts/{id}", 500)] += 1
    latency = Histogram("foobar_app_request_seconds", "", ["route"], registry=registry)
    for route, seconds in [("a", 0.003), ("a", 0.2), ("b", 0.2), ("b", 20.0)]:
        latency.labels(route).observe(seconds)
    Counter("foobar_app_db_fallbacks", "", ["reason"], registry=registry).labels("lag").inc(5)
    Gauge("foobar_db_max_replica_lag_seconds", "", registry=registry).set(30)

    reading = read("app", generate_latest(registry).decode(), 12.0)

    assert (reading.time, reading.requests, reading.errors) == (12.0, 10.0, 3.0)
    assert reading.buckets[0.005] == 1 and reading.buckets[0.25] == 3 and reading.buckets[INF] == 4
    assert reading.gauges == {"foobar_db_max_replica_lag_seconds": 30.0}


def test_read_ignores_other_roles_counters() -> None:
    registry = CollectorRegistry()
    PlainCounter("foobar_web_requests", "", ["status"], registry).values[("200",)] += 3
    assert read("lb", generate_latest(registry).decode(), 0.0).requests == 0


@pytest.mark.parametrize(
    ("new", "old", "expected"),
    [
        (Reading(10.0, 150.0, 5.0), Reading(0.0, 50.0, 0.0), (10.0, 0.5)),
        # the process restarted: its counters began again from 0
        (Reading(10.0, 20.0, 0.0), Reading(0.0, 900.0, 40.0), (2.0, 0.0)),
        (Reading(5.0, 1.0, 0.0), Reading(5.0, 0.0, 0.0), (0.0, 0.0)),
    ],
)
def test_rate(new: Reading, old: Reading, expected: tuple[float, float]) -> None:
    assert rate(new, old) == expected


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.99, {0.25: 98, 0.5: 100, INF: 100}, 0.375),  # as promtool's test of the rules
        (0.5, {0.1: 50, 1.0: 100, INF: 100}, 0.1),
        (0.5, {0.1: 0, 1.0: 100, INF: 100}, 0.55),
        (0.99, {0.1: 10, 1.0: 10, INF: 100}, 1.0),  # in +Inf: the highest finite bound
        (0.99, {0.1: 0, INF: 0}, None),  # no observations
        (0.99, {0.1: 5}, None),  # no +Inf bucket: not a histogram
        (0.99, {}, None),
    ],
)
def test_quantile(q: float, buckets: dict[float, float], expected: float | None) -> None:
    assert quantile(q, buckets) == expected


REPLICA = {"role": "replica", "reachable": True, "io_running": True, "sql_running": True}


@pytest.mark.parametrize(
    ("instance", "health"),
    [
        ({"role": "primary", "reachable": True}, "up"),
        ({"role": "primary", "reachable": False, "error": "refused"}, "down"),
        ({**REPLICA, "seconds_behind": 0}, "up"),
        ({**REPLICA, "seconds_behind": 31}, "unhealthy"),
        ({**REPLICA, "seconds_behind": None}, "unhealthy"),
        ({**REPLICA, "sql_running": False, "seconds_behind": None}, "unhealthy"),
        ({**REPLICA, "reachable": False}, "down"),
    ],
)
def test_instance_health(instance: dict[str, object], health: str) -> None:
    assert instance_health(instance, max_lag=30.0)[0] == health


async def test_two_agents_views_make_one_database_with_numbered_epochs() -> None:
    """`foobar up` and deploy/ run the database as two agents (and a witness), each
    reporting its own server and its whole epoch state: the page shows both servers once,
    the epoch as a number (it read "[object Object]" before)."""
    from foobar.settings import HostPort
    from foobar.statuspage.collector import Collector, Target

    def agent(name: str, role: str, epoch: int) -> dict[str, object]:
        return {
            "primary": "db1",
            "epoch": {"epoch": epoch, "primary": "db1", "degraded": False},
            "instances": [
                {
                    "name": name,
                    "role": role,
                    "host": "127.0.0.1",
                    "port": 3306,
                    "reachable": True,
                    "io_running": True,
                    "sql_running": True,
                    "seconds_behind": 0,
                }
            ],
        }

    targets = [
        Target("db", name, "-", HostPort("127.0.0.1", port))
        for name, port in (("db1", 1), ("db2", 2), ("witness", 3))
    ]
    collector = Collector(targets)
    statuses = [agent("db1", "primary", 3), agent("db2", "replica", 3), {"epoch": {"epoch": 3}}]
    for node, status in zip(collector.nodes, statuses, strict=True):
        node.health, node.status = "up", status
    snapshot = collector.snapshot()
    nodes = {node["id"]: node for node in snapshot["nodes"]}
    assert sorted(nodes) == ["db:db1", "db:db2"]
    assert [nodes[n]["epoch"] for n in ("db:db1", "db:db2")] == [3, 3]
    assert snapshot["database"]["epoch"] == 3
    assert ("db:db1", "db:db2", "replication") in snapshot["edges"]
