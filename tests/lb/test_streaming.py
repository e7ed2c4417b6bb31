"""HTTP mode moves large bodies through the balancer as they come, both ways: memory stays
flat and every byte arrives in order."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from tests.conftest import RawClient, peak_rss_mib, wait_listening
from tests.dbcluster import free_port
from tests.http.streaming_server import upload_and_download
from tests.lb.conftest import ROOT

SIZE = 100 * 1024 * 1024


@pytest.mark.timeout(90)
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_100_mb_up_and_down_in_http_mode_with_flat_memory(chunked: bool) -> None:
    upstream = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.http.streaming_server",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert upstream.stdout is not None
    upstream_port = int(await asyncio.wait_for(upstream.stdout.readline(), 10))
    port = free_port()
    lb = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "foobar.lb",
        "--mode",
        "http",
        "--bind",
        f"127.0.0.1:{port}",
        "--backend",
        f"127.0.0.1:{upstream_port}",
        cwd=ROOT,
        env={**os.environ, "FOOBAR_LB_ACCESS_LOG": "false"},
    )
    try:
        await wait_listening(port)
        client = await RawClient.connect(("127.0.0.1", port))
        await client.send(b"GET /warmup?1024 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await client.response())[0] == 200
        baseline = peak_rss_mib(lb.pid)
        await upload_and_download(client, SIZE, chunked=chunked)
        growth = peak_rss_mib(lb.pid) - baseline
        assert growth < 20, f"the balancer's peak RSS grew by {growth:.1f} MiB moving 200 MB"
    finally:
        for process in (lb, upstream):
            process.terminate()
            await process.wait()
