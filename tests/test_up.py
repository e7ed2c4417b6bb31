"""`python -m foobar up`: the whole site as processes, served, and stopped cleanly."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import httpx
import pytest

from foobar.up import free_base_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(180)


def pids_of(state: Path) -> list[int]:
    pids = [int(p.read_text()) for p in state.glob("db/**/mysqld.pid")]
    return pids


async def test_up_serves_the_site_and_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    base = free_base_port(webs=1, apps=1)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "foobar",
        "up",
        "--state-dir",
        str(tmp_path),
        "--base-port",
        str(base),
        "--web",
        "1",
        "--app",
        "1",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    output = b""
    try:
        while b"www.foobar.com is up" not in output:
            line = await asyncio.wait_for(process.stdout.readline(), 120)
            assert line, output.decode()
            output += line
        table = b""
        while b"lb1" not in table:
            table += await asyncio.wait_for(process.stdout.readline(), 30)
        children = [
            int(line.split()[2])
            for line in table.decode().splitlines()
            if line.split()[:1] in (["db"], ["app"], ["web"], ["lb"])
        ]
        assert len(children) == 6  # witness, two database agents, app, web, lb
        async with httpx.AsyncClient(verify=False, timeout=10) as client:
            moved = await client.get(f"http://127.0.0.1:{base}/")
            assert moved.status_code == 301
            page = await client.get(f"https://127.0.0.1:{base + 363}/")
            assert page.status_code == 200 and "www.foobar.com" in page.text
            created = await client.post(
                f"https://127.0.0.1:{base + 363}/api/posts",
                json={"author": "up", "title": "from make up", "body": "hello"},
            )
            assert created.status_code == 201
            assert {"x-foobar-lb", "x-foobar-web", "x-foobar-app", "x-foobar-db"} <= set(
                created.headers
            )
        mysqld = pids_of(tmp_path)
        assert len(mysqld) == 2
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C
        rest = await asyncio.wait_for(process.stdout.read(), 90)
        code = await process.wait()
    assert code == 0, rest.decode()
    assert b"stopped db db1" in rest and b"stopped db witness" in rest
    for pid in children + mysqld:
        assert not Path(f"/proc/{pid}").exists(), f"process {pid} left behind"
    # state is kept for the next start
    assert (tmp_path / "db" / "secrets.json").exists() and (tmp_path / "tls" / "cert.pem").exists()


async def test_up_refuses_a_taken_port(tmp_path: Path) -> None:
    base = free_base_port(webs=1, apps=1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 1))
        taken.listen()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "foobar",
            "up",
            "--state-dir",
            str(tmp_path),
            "--base-port",
            str(base),
            cwd=ROOT,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1
    assert f"error: port {base + 1} on 127.0.0.1 is taken" in err.decode()
