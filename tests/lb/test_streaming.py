"""HTTP mode moves large bodies through the balancer as they come, both ways: memory stays
flat and every byte arrives in order."""

from __future__ import annotations

import pytest

from tests.conftest import foobar_process, wait_listening
from tests.dbcluster import free_port
from tests.http.streaming_server import streaming_upstream, streams_with_flat_memory

SIZE = 100 * 1024 * 1024


@pytest.mark.timeout(90)
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_100_mb_up_and_down_in_http_mode_with_flat_memory(chunked: bool) -> None:
    port = free_port()
    async with (
        streaming_upstream() as (_, upstream_port),
        foobar_process(
            "foobar.lb",
            "--mode",
            "http",
            "--bind",
            f"127.0.0.1:{port}",
            "--backend",
            f"127.0.0.1:{upstream_port}",
        ) as lb,
    ):
        await wait_listening(port)
        await streams_with_flat_memory(lb.pid, port, SIZE, chunked)
