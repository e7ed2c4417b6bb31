"""The `[db]` settings: which MySQL/MariaDB servers make the cluster and how to reach them.

Without a file, two instances are made from `bind_host`, `primary_port` and
`replica_port`, everything kept under `state_dir`:

    python -m foobar.db serve --state-dir var/db --primary-port 3306 --replica-port 3307

With a file, `[[db.instances]]` lists them (any number of replicas).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, model_validator

from foobar.settings import Address, RoleSettings

# MySQL's own rule for account names: up to 32 characters (MariaDB allows 80).
ACCOUNT = r"^[A-Za-z0-9_]{1,32}$"
NAME = r"^[a-z0-9_-]{1,32}$"
# How long the primary waits for a replica's acknowledgement while a replica is expected:
# MariaDB's maximum (about 49 days), i.e. never on its own. Only the majority's explicit
# decision (a degrade) lets the primary go on without the replica.
SEMI_SYNC_FOREVER_MS = 4294967295


def name_to_address(value: object) -> object:
    """`--instance NAME=HOST:PORT` flags (a list) into the table form."""
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        pairs = [item.partition("=") for item in value]
        for name, sep, address in pairs:
            if not sep or not name or not address:
                raise ValueError(f"expected NAME=HOST:PORT, got {name}{sep}{address!r}")
        return {name: address for name, _, address in pairs}
    return value


def peer_flags(value: object) -> object:
    """`--peer NAME=HOST:PORT` flags into the list-of-tables form."""
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        table = name_to_address(value)
        assert isinstance(table, dict)
        return [{"name": name, "admin": admin} for name, admin in table.items()]
    return value


class PeerSettings(BaseModel):
    """Another agent of the cluster: the instance it manages and its admin listener."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME)
    admin: Address


class InstanceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME)
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

    # Agent mode (one agent per database host): `agent` names the one instance this
    # process manages; `peers` are the other agents, `witness` the third vote. Without
    # `agent`, one process manages every instance (the single-host form).
    cluster_name: str = Field(default="foobar", pattern=NAME)
    agent: str | None = None
    peers: Annotated[list[PeerSettings], BeforeValidator(peer_flags)] = []
    witness: Address | None = None
    auto_failover: bool = True
    # how long the primary must have been silent, to a majority, before a failover
    failover_after: float = Field(default=3.0, gt=0)

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
        if self.agent is not None:
            self._agent_consistent({spec.name for spec in specs})
        return self

    def _agent_consistent(self, names: set[str]) -> None:
        if self.agent not in names:
            raise ValueError(f"agent {self.agent!r} is not an instance")
        if len(names) != 2:
            raise ValueError("agent mode runs a primary and one replica (two instances)")
        if self.admin_token is None and self.admin_token_file is None:
            raise ValueError(
                "agent mode needs the admin token (admin_token or admin_token_file): the "
                "agents and the witness change epochs only for a request that carries it"
            )
        if self.mode != "managed":
            raise ValueError("an agent manages its own instance: mode must be managed")
        if self.witness is None:
            raise ValueError("agent mode needs witness = HOST:PORT (the third vote)")
        if self.app_password is None or self.replication_password is None:
            raise ValueError(
                "agent mode needs app_password and replication_password (the same on both "
                "database hosts; FOOBAR_DB_APP_PASSWORD, FOOBAR_DB_REPLICATION_PASSWORD)"
            )
        peers = {peer.name for peer in self.peers}
        if self.agent in peers:
            raise ValueError(f"agent {self.agent!r} cannot be its own peer")
        if peers != names - {self.agent}:
            raise ValueError(
                f"agent mode needs one peer per other instance: {sorted(names - {self.agent})}"
            )

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


class WitnessSettings(RoleSettings):
    """`python -m foobar.db witness`: the third vote, on a host without a database."""

    role = "witness"

    cluster_name: str = Field(default="foobar", pattern=NAME)
    state_dir: Path = Path("var/witness")
    # every database server of the cluster, by name: the witness checks each is alive
    instances: Annotated[dict[str, Address], BeforeValidator(name_to_address)]
    failover_after: float = Field(default=3.0, gt=0)
    check_interval: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _named(self) -> Self:
        if len(self.instances) < 2:
            raise ValueError("instances must name the primary and at least one replica")
        if self.admin is None:
            raise ValueError("a witness is reached through its admin listener: set admin")
        if self.admin_token is None and self.admin_token_file is None:
            raise ValueError(
                "a witness needs the admin token the agents share (admin_token or "
                "admin_token_file): it changes epochs only for a request that carries it"
            )
        return self
