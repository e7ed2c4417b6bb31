"""Two app servers on one real primary-replica pair."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from foobar.app.serve import AppServer
from foobar.app.settings import AppSettings
from tests.dbcluster import Cluster


def app_settings(cluster: Cluster, name: str, **overrides: Any) -> AppSettings:
    return AppSettings.model_validate(
        {
            "bind": "127.0.0.1:0",
            "name": name,
            "primary": cluster.dsn(cluster.primary.name),
            "replicas": [cluster.dsn(cluster.replica.name)],
            "health_interval": 0.2,
            "access_log": False,
            **overrides,
        }
    )


class RunningApp:
    def __init__(self, server: AppServer) -> None:
        self.server = server
        host, port = server.server.address
        self.address = (host, port)
        self.url = f"http://{host}:{port}"

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10)


@pytest.fixture
async def apps(db_cluster: Cluster) -> AsyncIterator[list[RunningApp]]:
    """app1 and app2, both on db_cluster."""
    servers = [AppServer(app_settings(db_cluster, f"app{n}")) for n in (1, 2)]
    # at once, as on a real deploy: the schema lock must keep them from racing
    await asyncio.gather(*(server.start() for server in servers))
    yield [RunningApp(server) for server in servers]
    for server in servers:
        await server.stop()
