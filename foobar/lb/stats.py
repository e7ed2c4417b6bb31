"""The stats page, in the spirit of HAProxy's: per frontend, backend and server the state,
weight, current/max/total sessions, requests, queue, errors, check status and last change.

    GET  /stats                      HTML, refreshes itself
    GET  /stats.json                 the same as JSON
    POST /servers/{backend}/{server} {"state": "ready"|"drain"|"maint", "weight": N}
    GET  /metrics                    the same numbers for Prometheus (foobar_lb_*)
"""

from __future__ import annotations

import html
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from foobar.admin import json_response
from foobar.http.server import Request, Response
from foobar.lb.balancer import Balancer
from foobar.lb.vrrp import group
from foobar.lb.workers import Workers

STATES = ("ready", "drain", "maint")
REFRESH_SECONDS = 5


def snapshot(balancer: Balancer) -> dict[str, Any]:
    return {
        "node": balancer.settings.name,
        "pid": os.getpid(),
        "uptime": round(time.time() - balancer.started, 1),
        "frontends": [
            {
                "name": name,
                "bind": str(listener.settings.bind),
                "mode": listener.settings.mode,
                "tls": listener.settings.tls_cert is not None,
                "backend": listener.settings.backend,
                "connections": listener.connections,
                # maxconn, and how often it stopped accepting
                "maxconn": listener.accepting.limit if listener.accepting else None,
                "paused": listener.accepting.paused_at_limit if listener.accepting else 0,
            }
            for name, listener in balancer.listeners.items()
        ],
        "backends": [
            {
                "name": name,
                "algorithm": backend.settings.algorithm,
                "queue": backend.queued,
                "queue_max": backend.queued_max,
                "servers": [server.describe() for server in backend.servers],
            }
            for name, backend in balancer.backends.items()
        ],
    }


def section(data: dict[str, Any]) -> str:
    """One worker's frontends, backends and servers."""
    escape = html.escape
    rows = []
    for backend in data["backends"]:
        rows.append(
            f"<h2>backend {escape(backend['name'])} <small>{escape(backend['algorithm'])}, "
            f"queue {backend['queue']} (max {backend['queue_max']})</small></h2>"
            "<table><tr><th>server</th><th>address</th><th>status</th><th>state</th>"
            "<th>weight</th><th>backup</th><th>cur</th><th>max</th><th>total</th>"
            "<th>requests</th><th>conn err</th><th>resp err</th><th>retries</th>"
            "<th>check</th><th>last change</th></tr>"
        )
        for server in backend["servers"]:
            status = server["status"] + (" (ejected)" if server["ejected"] else "")
            css = "up" if server["status"] == "UP" and not server["ejected"] else "down"
            if server["state"] != "ready":
                css = server["state"]
            since = time.strftime("%H:%M:%S", time.localtime(server["last_change"]))
            rows.append(
                f"<tr class='{css}'><td>{escape(server['name'])}</td>"
                f"<td>{escape(server['address'])}</td>"
                f"<td>{status}</td><td>{server['state']}</td><td>{server['weight']}</td>"
                f"<td>{'yes' if server['backup'] else ''}</td><td>{server['active']}</td>"
                f"<td>{server['sessions_max']}</td><td>{server['sessions_total']}</td>"
                f"<td>{server['requests']}</td><td>{server['errors_connect']}</td>"
                f"<td>{server['errors_response']}</td><td>{server['retries']}</td>"
                f"<td>{escape(server['check'])}</td><td>{since}</td></tr>"
            )
        rows.append("</table>")
    frontends = "".join(
        f"<tr><td>{escape(f['name'])}</td><td>{escape(f['bind'])}</td><td>{f['mode']}"
        f"{' + TLS' if f['tls'] else ''}</td><td>{escape(f['backend'])}</td>"
        f"<td>{f['connections']}</td><td>{f['maxconn']}</td><td>{f['paused']}</td></tr>"
        for f in data["frontends"]
    )
    return f"""<h1>foobar.lb <small>node {escape(data["node"])}, pid {data["pid"]},
up {data["uptime"]:.0f}s</small></h1>
<h2>frontends</h2><table><tr><th>name</th><th>bind</th><th>mode</th><th>backend</th>
<th>connections</th><th>maxconn</th><th>times at maxconn</th></tr>{frontends}</table>
{"".join(rows)}"""


def page(workers: list[dict[str, Any]], vrrp: list[dict[str, Any]] | None = None) -> bytes:
    sections = "<hr>".join(
        section(data)
        if "error" not in data
        else f"<p>worker pid {data['pid']}: {data['error']}</p>"
        for data in workers
    )
    return f"""<!doctype html><html><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<title>foobar.lb stats</title>
<style>
body {{ font: 13px system-ui, sans-serif; margin: 1.5rem; color: #1d2433; }}
table {{ border-collapse: collapse; margin-bottom: 1rem; }}
th, td {{ border: 1px solid #cfd6e0; padding: 3px 7px; text-align: left; }}
th {{ background: #e8edf5; }} tr.up {{ background: #e3f6e8; }} tr.down {{ background: #fbe3e3; }}
tr.drain {{ background: #fdf1d8; }} tr.maint {{ background: #e6e2f5; }}
small {{ color: #5c6779; font-weight: normal; }}
</style></head><body>
<p><small>{len(workers)} worker(s); this page refreshes every {REFRESH_SECONDS}s</small></p>
{group.section(vrrp or [])}
{sections}
</body></html>""".encode()


def routes(
    balancer: Balancer,
    workers: Workers | None,
    vrrp: Callable[[], list[dict[str, Any]]] | None = None,
) -> dict[tuple[str, bytes], Any]:
    async def everyone() -> list[dict[str, Any]]:
        return [snapshot(balancer), *(await workers.snapshots() if workers else [])]

    async def stats_html(request: Request) -> Response:
        body = page(await everyone(), vrrp() if vrrp else None)
        return Response(200, [(b"Content-Type", b"text/html; charset=utf-8")], body)

    async def stats_json(request: Request) -> Response:
        if workers is None:
            return json_response(200, snapshot(balancer))
        return json_response(200, {"workers": await everyone()})

    return {("GET", b"/stats"): stats_html, ("GET", b"/stats.json"): stats_json}


async def change_server(balancer: Balancer, workers: Workers | None, request: Request) -> Response:
    """POST /servers/{backend}/{server} with {"state": ..., "weight": ...}, applied in
    every worker."""
    parts = request.path.decode("latin-1").strip("/").split("/")
    if request.method != "POST" or len(parts) != 3 or parts[0] != "servers":
        return json_response(404, {"error": "not found"})
    backend = balancer.backends.get(parts[1])
    server = backend.server(parts[2]) if backend else None
    if backend is None or server is None:
        return json_response(404, {"error": f"no server {parts[2]!r} in backend {parts[1]!r}"})
    body = await request.body.read()
    try:
        change = json.loads(body or b"{}")
    except json.JSONDecodeError:
        return json_response(400, {"error": "the body must be JSON"})
    if not isinstance(change, dict) or not set(change) <= {"state", "weight"}:
        return json_response(400, {"error": 'expected {"state": ..., "weight": N}'})
    state, weight = change.get("state"), change.get("weight")
    if state is not None and state not in STATES:
        return json_response(400, {"error": f"state must be one of {', '.join(STATES)}"})
    if weight is not None and (not isinstance(weight, int) or not 0 <= weight <= 256):
        return json_response(400, {"error": "weight must be an integer from 0 to 256"})
    if state is not None:
        server.state = state
        server.last_change = time.time()
    if weight is not None:
        server.weight = weight
    backend.wake_one()
    if workers is not None:
        await workers.forward("POST", request.path.decode("latin-1"), body)
    return json_response(200, server.describe())


class StatsCollector(Collector):
    """The same numbers as gauges, read at scrape time so they follow reloads."""

    def __init__(self, balancer: Balancer) -> None:
        self.balancer = balancer

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["backend", "server"]
        up = GaugeMetricFamily(
            "foobar_lb_server_up", "1 when the server is up and usable", labels=labels
        )
        active = GaugeMetricFamily(
            "foobar_lb_server_active", "requests or connections in flight", labels=labels
        )
        weight = GaugeMetricFamily("foobar_lb_server_weight", "current weight", labels=labels)
        total = GaugeMetricFamily(
            "foobar_lb_server_sessions", "sessions since start", labels=labels
        )
        errors = GaugeMetricFamily(
            "foobar_lb_server_errors", "connection and response errors", labels=labels
        )
        queue = GaugeMetricFamily(
            "foobar_lb_backend_queue", "requests waiting for a slot", labels=["backend"]
        )
        connections = GaugeMetricFamily(
            "foobar_lb_frontend_connections", "connections open", labels=["frontend"]
        )
        maxconn = GaugeMetricFamily(
            "foobar_lb_frontend_maxconn", "connection limit (maxconn)", labels=["frontend"]
        )
        at_limit = GaugeMetricFamily(
            "foobar_lb_frontend_limit_reached",
            "times accepting stopped at maxconn since start",
            labels=["frontend"],
        )
        for name, listener in self.balancer.listeners.items():
            connections.add_metric([name], listener.connections)
            if listener.accepting is not None:
                maxconn.add_metric([name], listener.accepting.limit)
                at_limit.add_metric([name], listener.accepting.paused_at_limit)
        yield from (connections, maxconn, at_limit)
        for name, backend in self.balancer.backends.items():
            queue.add_metric([name], backend.queued)
            for server in backend.servers:
                key = [name, server.name]
                up.add_metric(key, float(server.usable))
                active.add_metric(key, server.active)
                weight.add_metric(key, server.weight)
                total.add_metric(key, server.counters.sessions_total)
                errors.add_metric(
                    key, server.counters.errors_connect + server.counters.errors_response
                )
        yield from (up, active, weight, total, errors, queue)
