"""--workers N: processes sharing the port, one stats page for all of them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from foobar.http.server import Request, Response, Server
from tests.conftest import start_server, until
from tests.dbcluster import free_port
from tests.lb.conftest import ROOT

pytestmark = pytest.mark.timeout(60)
TOKEN = "workers-admin-token-0123456789"


async def test_two_workers_share_the_port_and_the_stats(servers: list[Server]) -> None:
    async def upstream(request: Request) -> Response:
        return Response(200, [], b"ok")

    backend = await start_server(upstream)
    servers.append(backend)
    port, admin = free_port(), free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "foobar.lb",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "2",
        "--backend",
        f"a=127.0.0.1:{backend.address[1]}",
        "--admin",
        f"127.0.0.1:{admin}",
        cwd=ROOT,
        env={**os.environ, "FOOBAR_LB_ADMIN_TOKEN": TOKEN},  # the workers inherit it
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        while b"event=worker_started" not in await asyncio.wait_for(process.stderr.readline(), 20):
            pass
        for _ in range(40):  # new connections: the kernel spreads them over the workers
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"http://127.0.0.1:{port}/")).status_code == 200
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin}") as ops:
            workers = (await ops.get("/stats.json")).json()["workers"]
            assert len(workers) == 2 and workers[0]["pid"] != workers[1]["pid"]
            served = [w["backends"][0]["servers"][0]["requests"] for w in workers]
            assert sum(served) == 40 and min(served) > 0, served
            page = (await ops.get("/stats")).text
            assert "2 worker(s)" in page and all(f"pid {w['pid']}" in page for w in workers)
            drain = json.dumps({"state": "drain"})
            assert (await ops.post("/servers/default/a", content=drain)).status_code == 401
            authorized = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
            changed = await ops.post("/servers/default/a", content=drain, headers=authorized)
            assert changed.status_code == 200
            states = [
                w["backends"][0]["servers"][0]["state"]
                for w in (await ops.get("/stats.json")).json()["workers"]
            ]
            assert states == ["drain", "drain"]
        pids = [w["pid"] for w in workers]
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    await until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), what="workers gone")
