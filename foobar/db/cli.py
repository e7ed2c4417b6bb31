"""`status` and `promote`: what a person types, talking to a running `serve` through its
admin listener (so there is one place that knows the cluster)."""

from __future__ import annotations

import json
from typing import Any

from foobar.admin import admin_headers
from foobar.errors import FoobarError
from foobar.http.client import PoolConfig, UpstreamPool
from foobar.settings import HostPort

# Where `promote` finds the admin token when --admin-token-file is not given (the same
# name `serve` reads it from).
TOKEN_ENV = "FOOBAR_DB_ADMIN_TOKEN"

COLUMNS = (
    ("name", "name"),
    ("role", "role"),
    ("pid", "pid"),
    ("address", "address"),
    ("up", "reachable"),
    ("ro", "read_only"),
    ("gtid", "gtid_current_pos"),
    ("io", "io_running"),
    ("sql", "sql_running"),
    ("behind", "seconds_behind"),
    ("semisync", "semi_sync"),
)


async def call(
    admin: HostPort,
    method: str,
    path: str,
    body: bytes | None = None,
    timeout: float = 10.0,
    token: str | None = None,
) -> tuple[int, Any]:
    pool = UpstreamPool(admin.host, admin.port, PoolConfig(read_timeout=timeout))
    try:
        headers = admin_headers(str(admin), token)
        response = await pool.request(method, path.encode(), headers, body)
        data = await response.read()
    except FoobarError as exc:
        raise SystemExit(
            f"error: cannot reach foobar.db's admin listener at {admin}: {exc}"
        ) from exc
    finally:
        await pool.close()
    return response.status, json.loads(data) if data.startswith((b"{", b"[")) else data.decode()


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return str(value)


def table(status: dict[str, Any]) -> str:
    rows = [[title for title, _ in COLUMNS]]
    for instance in status["instances"]:
        instance = {**instance, "address": f"{instance['host']}:{instance['port']}"}
        rows.append([cell(instance[key]) for _, key in COLUMNS])
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.append("")
    lines.extend(epoch_lines(status))
    lines.append(f"{'healthy' if status['healthy'] else 'UNHEALTHY'}: {status['reason']}")
    for instance in status["instances"]:
        if instance["error"]:
            lines.append(f"{instance['name']}: {instance['error']}")
    return "\n".join(lines)


def epoch_lines(status: dict[str, Any]) -> list[str]:
    """Who is primary by which decision: the epoch, replication mode, last failover,
    and any errant transactions (an agent's status has them all)."""
    epoch = status.get("epoch")
    if not epoch:
        return []
    mode = "ASYNC (degraded)" if epoch["degraded"] else "semi-sync"
    lines = [f"epoch {epoch['epoch']}: primary {epoch['primary']}, {mode}"]
    last = status.get("last_failover")
    if last:
        took = f", took {last['took']:.2f}s" if last.get("took") is not None else ""
        lines.append(
            f"last change: epoch {last['epoch']} -> {last['primary']}: {last['reason']}{took}"
        )
    if status.get("errant"):
        lines.append(f"ERRANT transactions (kept out of service): {', '.join(status['errant'])}")
    return lines


async def status(admin: HostPort) -> int:
    code, data = await call(admin, "GET", "/status")
    if code != 200 or not isinstance(data, dict):
        print(f"error: {admin} answered {code}: {data}")
        return 2
    print(table(data))
    return 0 if data["healthy"] else 1


async def promote(admin: HostPort, target: str | None, token: str | None) -> int:
    body = json.dumps({"to": target} if target else {}).encode()
    print(f"switching over through {admin} ...", flush=True)
    code, data = await call(admin, "POST", "/promote", body, timeout=60.0, token=token)
    if code == 401:
        print(
            f"error: {admin} wants its admin token: --admin-token-file PATH "
            f"or {TOKEN_ENV} (`make up` keeps one in var/admin-token)"
        )
        return 1
    if code != 200 or not isinstance(data, dict):
        reason = data.get("error") if isinstance(data, dict) else data
        print(f"error: switchover refused ({code}): {reason}")
        return 1
    print(f"{data['primary']} is now the primary, {data['previous']} replicates from it")
    print(f"switched at GTID {data['gtid']}")
    return 0
