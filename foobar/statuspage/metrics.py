"""What the status page reads from a role's Prometheus text: its requests and 5xx answers
counted, and its latency histogram; and the arithmetic Prometheus would do on them (a
rate between two readings, histogram_quantile over the buckets' increase)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

# each role's requests counter and latency histogram (the balancer keeps no histogram;
# the web tier's is its wait for the app)
REQUESTS = {"lb": "foobar_lb_requests", "web": "foobar_web_requests", "app": "foobar_app_requests"}
LATENCY = {"web": "foobar_web_upstream_seconds", "app": "foobar_app_request_seconds"}


@dataclass(frozen=True)
class Reading:
    """One scrape of one role, at `time` (monotonic seconds)."""

    time: float
    requests: float = 0.0
    errors: float = 0.0  # answers with a 5xx status
    buckets: Mapping[float, float] = field(default_factory=dict)  # le -> cumulative count
    gauges: Mapping[str, float] = field(default_factory=dict)  # unlabelled gauges by name


def read(role: str, text: str, time: float) -> Reading:
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    gauges: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if family.name == REQUESTS.get(role) and sample.name.endswith("_total"):
                requests += sample.value
                if sample.labels.get("status", "").startswith("5"):
                    errors += sample.value
            elif family.name == LATENCY.get(role) and sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
            elif family.type == "gauge" and not sample.labels:
                gauges[sample.name] = sample.value
    return Reading(time, requests, errors, buckets, gauges)


def increase(new: float, old: float) -> float:
    """A counter's increase; a smaller value means the process restarted from 0 (as
    Prometheus's rate() reads a counter reset)."""
    return new - old if new >= old else new


def rate(new: Reading, old: Reading) -> tuple[float, float]:
    """Requests and 5xx answers per second between two readings."""
    elapsed = new.time - old.time
    if elapsed <= 0:
        return 0.0, 0.0
    return (
        increase(new.requests, old.requests) / elapsed,
        increase(new.errors, old.errors) / elapsed,
    )


def bucket_increase(new: Mapping[float, float], old: Mapping[float, float]) -> dict[float, float]:
    return {le: increase(count, old.get(le, 0.0)) for le, count in new.items()}


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus's histogram_quantile: `buckets` maps each upper bound (le) to the
    cumulative count at or below it; linear interpolation inside the bucket holding the
    rank; the highest finite bound when the rank falls in +Inf; None without observations."""
    bounds = sorted(buckets)
    if not bounds or not math.isinf(bounds[-1]) or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower
