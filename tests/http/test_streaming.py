"""Large bodies stream through the server with bounded memory, both ways."""

from __future__ import annotations

import pytest

from tests.http.streaming_server import streaming_upstream, streams_with_flat_memory

SIZE = 100 * 1024 * 1024


@pytest.mark.timeout(60)
async def test_100_mb_up_and_down_with_flat_memory() -> None:
    async with streaming_upstream() as (pid, port):
        await streams_with_flat_memory(pid, port, SIZE, chunked=True)
