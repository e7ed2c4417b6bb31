"""Smoke runs of the locust load test and the side-by-side benchmark, so the scripts
never rot: they must run without a failed request. Speed is the benchmark's business."""

from __future__ import annotations

import asyncio
import csv
import os
import shutil
import signal
import sys
from pathlib import Path

import aiomysql
import pytest

from foobar.up import free_base_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)


async def test_locust_visitors_against_the_site(tmp_path: Path) -> None:
    base = free_base_port(webs=1, apps=2, tls=False)
    site = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "foobar",
        "up",
        "--no-tls",
        "--web",
        "1",
        "--app",
        "2",
        "--base-port",
        str(base),
        "--state-dir",
        str(tmp_path / "site"),
        cwd=ROOT,
        # the apps check the replica at start, then not for a minute: stopped below, it
        # stays in use, stale, and only the GTID cookie makes a read-back see its post
        env={**os.environ, "FOOBAR_APP_HEALTH_INTERVAL": "60"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert site.stdout is not None
    try:
        while b"www.foobar.com is up" not in await asyncio.wait_for(site.stdout.readline(), 120):
            pass
        replica = await aiomysql.connect(
            unix_socket=str(tmp_path / "site" / "db" / "replica" / "mysqld.sock"), user="root"
        )
        async with replica.cursor() as cursor:
            await cursor.execute("STOP SLAVE SQL_THREAD")
        replica.close()
        locust = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "locust",
            "-f",
            "loadtests/locustfile.py",
            "--headless",
            "--host",
            f"http://127.0.0.1:{base}",
            "-u",
            "6",
            "-r",
            "6",
            "-t",
            "5s",
            "--csv",
            str(tmp_path / "smoke"),
            "--only-summary",
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(locust.communicate(), 120)
        assert locust.returncode == 0, out.decode()[-3000:]
    finally:
        site.send_signal(signal.SIGINT)
        await asyncio.wait_for(site.wait(), 90)
    with (tmp_path / "smoke_stats.csv").open() as file:
        rows = {row["Name"]: row for row in csv.DictReader(file)}
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 20 and int(total["Failure Count"]) == 0
    assert "/api/posts" in rows


@pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("haproxy", "nginx", "wrk", "taskset", "curl")),
    reason="the benchmark needs haproxy, nginx, wrk, taskset and curl (make test installs them)",
)
async def test_benchmark_harness_runs_without_errors() -> None:
    bench = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loadtests.bench.run",
        "--smoke",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(bench.communicate(), 240)
    text = out.decode()
    assert bench.returncode == 0, text[-3000:]
    for name in (
        "lb http mode",
        "lb tcp mode",
        "web 1 KiB file",
        "web 1 MiB file",
        "web proxying /api/",
        "full path GET /api/posts/{id}",
    ):
        assert f"| {name} |" in text, name
