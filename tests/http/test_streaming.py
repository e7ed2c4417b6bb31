"""Large bodies stream through the server with bounded memory, both ways."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import RawClient, peak_rss_mib
from tests.http.streaming_server import upload_and_download

SIZE = 100 * 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def streaming_server() -> AsyncIterator[tuple[int, int]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.http.streaming_server",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    port = int(await asyncio.wait_for(process.stdout.readline(), 10))
    yield process.pid, port
    process.terminate()
    await process.wait()


@pytest.mark.timeout(60)
async def test_100_mb_up_and_down_with_flat_memory(streaming_server: tuple[int, int]) -> None:
    pid, port = streaming_server
    client = await RawClient.connect(("127.0.0.1", port))
    await client.send(b"GET /warmup?1024 HTTP/1.1\r\nHost: a\r\n\r\n")
    await client.response()
    baseline = peak_rss_mib(pid)

    await upload_and_download(client, SIZE, chunked=True)
    growth = peak_rss_mib(pid) - baseline
    # 200 MB moved; buffers are 64 KiB high-water marks plus one read of 256 KiB
    assert growth < 20, f"peak RSS grew by {growth:.1f} MiB"
