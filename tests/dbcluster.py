"""A primary-replica pair for tests, started by foobar.db's own supervisor in a temporary
directory on free ports (the `db_cluster` fixture in conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomysql

from foobar.db.replication import Node
from foobar.db.settings import DbSettings, InstanceSettings
from foobar.db.supervisor import Supervisor


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Cluster:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.settings = supervisor.settings

    def spec(self, name: str) -> InstanceSettings:
        return self.supervisor.specs[name]

    @property
    def primary(self) -> InstanceSettings:
        return self.spec(self.supervisor.primary)

    @property
    def replica(self) -> InstanceSettings:
        return self.spec(self.supervisor.replicas[0])

    def dsn(self, name: str) -> str:
        spec = self.spec(name)
        return (
            f"mysql://{self.settings.app_user}:{self.supervisor.app_password}"
            f"@{spec.host}:{spec.port}/{self.settings.app_schema}"
        )

    def admin(self, name: str) -> Node:
        return self.supervisor.nodes[name]

    async def app_connection(self, name: str) -> aiomysql.Connection:
        spec = self.spec(name)
        return await aiomysql.connect(
            host=spec.host,
            port=spec.port,
            user=self.settings.app_user,
            password=self.supervisor.app_password,
            db=self.settings.app_schema,
            autocommit=True,
        )

    async def app_query(self, name: str, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        connection = await self.app_connection(name)
        try:
            async with connection.cursor() as cursor:
                await cursor.execute(sql, args)
                return list(await cursor.fetchall())
        finally:
            connection.close()

    async def wait_until(self, name: str, sql: str, expected: Any, timeout: float = 15.0) -> None:
        """Poll `sql` on instance `name` until its first value equals `expected`. A query
        may fail while the server starts or catches up; on timeout the last value and the
        last error are both reported (the error chained), not hidden."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        value: Any = None
        error: Exception | None = None
        while loop.time() < deadline:
            try:
                value = (await self.app_query(name, sql))[0][0]
            except Exception as exc:
                error = exc
            else:
                error = None
                if value == expected:
                    return
            await asyncio.sleep(0.1)
        last = f"; last error: {error!r}" if error is not None else ""
        raise AssertionError(
            f"{name}: {sql} gave {value!r}, expected {expected!r} within {timeout}s{last}"
        ) from error


def cluster_settings(state_dir: Path, **overrides: Any) -> DbSettings:
    fields: dict[str, Any] = {
        "state_dir": state_dir,
        "primary_port": free_port(),
        "replica_port": free_port(),
        "check_interval": 0.2,
        "semi_sync_timeout": 0.5,
        "innodb_buffer_pool_size": "32M",
        **overrides,
    }
    return DbSettings.model_validate(fields)


@contextlib.asynccontextmanager
async def running_cluster(settings: DbSettings) -> AsyncIterator[Cluster]:
    supervisor = Supervisor(settings)
    await supervisor.start()
    watcher = asyncio.create_task(supervisor.watch())
    try:
        yield Cluster(supervisor)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await supervisor.stop()
