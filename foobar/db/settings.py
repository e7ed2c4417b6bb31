"""The `[db]` settings: which MySQL/MariaDB servers make the cluster and how to reach them.

Without a file, two instances are made from `bind_host`, `primary_port` and
`replica_port`, everything kept under `state_dir`:

    python -m foobar.db serve --state-dir var/db --primary-port 3306 --replica-port 3307

With a file, `[[db.instances]]` lists them (any number of replicas).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from foobar.settings import RoleSettings

# MySQL's own rule for account names: up to 32 characters (MariaDB allows 80).
ACCOUNT = r"^[A-Za-z0-9_]{1,32}$"


class InstanceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9_-]{1,32}$")
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    server_id: int = Field(ge=1, le=4294967295)
    # managed mode: where its files live (default <state_dir>/<name>)
    directory: Path | None = None


class DbSettings(RoleSettings):
    role = "db"

    mode: Literal["managed", "external"] = "managed"
    state_dir: Path = Path("var/db")
    bind_host: str = "127.0.0.1"
    primary_port: int = Field(default=3306, ge=1, le=65535)
    replica_port: int = Field(default=3307, ge=1, le=65535)
    instances: list[InstanceSettings] = []
    # which instance is the primary the first time; later the state directory remembers
    initial_primary: str = "primary"

    app_user: str = Field(default="foobar", pattern=ACCOUNT)
    app_password: SecretStr | None = None
    app_schema: str = Field(default="foobar", pattern=r"^[A-Za-z0-9_]{1,64}$")
    replication_user: str = Field(default="replication", pattern=ACCOUNT)
    replication_password: SecretStr | None = None
    # external mode: an account allowed to manage replication (managed mode uses the
    # local socket, where the server's root account is reachable)
    admin_user: str | None = None
    admin_password: SecretStr | None = None

    check_interval: float = Field(default=1.0, gt=0)
    # lag above which the cluster reports itself unhealthy
    max_replica_lag: float = Field(default=30.0, gt=0)
    # how long the primary waits for a replica's acknowledgement before it falls back to
    # asynchronous replication. MySQL/MariaDB's default is 10 s; 2 s keeps writes moving
    # when the replica dies, at the cost of a shorter window of guaranteed durability.
    semi_sync_timeout: float = Field(default=2.0, gt=0)
    # managed mode: the server binary (found on PATH and in /usr/sbin when not given)
    server_binary: Path | None = None
    innodb_buffer_pool_size: str = "128M"

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.mode == "external":
            if not self.instances:
                raise ValueError("external mode needs [[db.instances]] with each server's address")
            if self.admin_user is None:
                raise ValueError("external mode needs admin_user (and admin_password)")
        specs = self.cluster()
        for attribute in ("name", "server_id"):
            values = [getattr(spec, attribute) for spec in specs]
            if len(set(values)) != len(values):
                raise ValueError(f"instances must have different {attribute}s: {values}")
        addresses = [(spec.host, spec.port) for spec in specs]
        if len(set(addresses)) != len(addresses):
            raise ValueError(f"instances must have different addresses: {addresses}")
        if self.initial_primary not in {spec.name for spec in specs}:
            raise ValueError(f"initial_primary {self.initial_primary!r} is not an instance")
        if len(specs) < 2:
            raise ValueError("a cluster needs a primary and at least one replica")
        return self

    def cluster(self) -> list[InstanceSettings]:
        """The instances, as listed or as made from the quick-start fields."""
        if self.instances:
            return list(self.instances)
        return [
            InstanceSettings(
                name="primary", host=self.bind_host, port=self.primary_port, server_id=1
            ),
            InstanceSettings(
                name="replica", host=self.bind_host, port=self.replica_port, server_id=2
            ),
        ]
