"""The `[app]` settings: where the application listens and which databases it uses."""

from __future__ import annotations

import socket
from typing import Annotated, Any, Self
from urllib.parse import unquote, urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    model_validator,
)

from foobar.settings import Address, HostPort, RoleSettings


class Dsn(BaseModel):
    """mysql://USER:PASSWORD@HOST:PORT/DATABASE. Shown anywhere (logs, --check, /status)
    with the password masked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user: str
    password: SecretStr
    host: str
    port: int = Field(default=3306, ge=1, le=65535)
    database: str

    def __str__(self) -> str:
        return f"mysql://{self.user}:***@{self.host}:{self.port}/{self.database}"


def parse_dsn(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("mysql", "mariadb"):
        raise ValueError("expected mysql://USER:PASSWORD@HOST:PORT/DATABASE")
    database = parts.path.lstrip("/")
    if not parts.hostname or not parts.username or not database:
        raise ValueError("expected mysql://USER:PASSWORD@HOST:PORT/DATABASE")
    try:
        port = parts.port or 3306
    except ValueError as exc:
        raise ValueError(f"bad port in database URL: {exc}") from exc
    return {
        "user": unquote(parts.username),
        "password": unquote(parts.password or ""),
        "host": parts.hostname,
        "port": port,
        "database": database,
    }


DatabaseUrl = Annotated[Dsn, BeforeValidator(parse_dsn), PlainSerializer(str, return_type=str)]


class AppSettings(RoleSettings):
    role = "app"

    bind: Address = HostPort("127.0.0.1", 8000)
    name: str = Field(default_factory=socket.gethostname, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # Every database server (`--db`, repeated): the app finds the primary itself, the
    # writable one with the current epoch, and follows it when it changes.
    databases: list[DatabaseUrl] = []
    # The older form: the first primary and its replicas, which the app follows the same way.
    primary: DatabaseUrl | None = None
    replicas: list[DatabaseUrl] = []

    pool_size: int = Field(default=10, ge=1, le=1000)
    # Below the servers' wait_timeout (8 h by default), so the pool drops a connection
    # before the server does; a dead one is also detected when it is taken.
    pool_recycle: float = Field(default=3600.0, gt=0)
    # No request waits on the database longer than this.
    query_timeout: float = Field(default=2.0, gt=0)
    connect_timeout: float = Field(default=1.0, gt=0)
    # A read carrying a GTID waits this long for the replica before going to the primary.
    gtid_wait_timeout: float = Field(default=0.5, ge=0)
    max_replica_lag: float = Field(default=5.0, ge=0)
    health_interval: float = Field(default=1.0, gt=0)
    # The board's requests are small JSON; nginx's default client_max_body_size is 1 MiB.
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)

    @model_validator(mode="after")
    def _some_database(self) -> Self:
        if self.databases and (self.primary or self.replicas):
            raise ValueError("give the databases either as databases (--db) or as primary/replicas")
        if not self.databases and self.primary is None:
            raise ValueError("no database: give --db URL (each server) or --primary URL")
        return self

    def database_nodes(self) -> list[tuple[str, Dsn]]:
        """Each server with the name it has in logs and metrics."""
        if self.databases:
            return [(f"db{n}", dsn) for n, dsn in enumerate(self.databases, 1)]
        assert self.primary is not None
        replicas = [
            ("replica" if n == 0 else f"replica{n + 1}", dsn) for n, dsn in enumerate(self.replicas)
        ]
        return [("primary", self.primary), *replicas]
