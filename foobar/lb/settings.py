"""The `[lb]` settings, in HAProxy's vocabulary.

Quick start (one frontend, one backend) from flags:

    python -m foobar.lb --bind 0.0.0.0:80 --mode http --algorithm leastconn \\
        --backend web1=10.0.0.2:8080,weight=2 --backend 10.0.0.3:8080,backup \\
        --check-path /healthz --admin 127.0.0.1:9100 --name lb1

The full set in TOML: `[[lb.frontends]]` and `[[lb.backends]]` with `[[lb.backends.servers]]`
(deploy/server1/lb.toml is an example).
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from foobar.http.limits import BODY_MIN_RATE, MAX_IDLE_CONNECTIONS
from foobar.lb import algorithms
from foobar.lb.vrrp import link
from foobar.settings import Address, HostPort, RoleSettings, parse_host_port

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
ServerState = Literal["ready", "drain", "maint"]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(Model):
    name: Name
    address: Address
    weight: int = Field(default=1, ge=0, le=256)  # HAProxy's range
    backup: bool = False
    maxconn: int | None = Field(default=None, ge=1)
    state: ServerState = "ready"
    send_proxy: Literal["v1", "v2"] | None = None  # PROXY protocol towards it (tcp mode)


def parse_server(value: object) -> object:
    """`[NAME=]HOST:PORT[,weight=N][,backup][,maxconn=N]`, as given to --backend."""
    if not isinstance(value, str):
        return value
    first, *options = value.split(",")
    name, _, address = first.rpartition("=")
    fields: dict[str, object] = {"address": parse_host_port(address)}
    fields["name"] = name or address.replace(":", "_").replace("[", "").replace("]", "")
    for option in options:
        key, _, setting = option.partition("=")
        key = key.strip()
        if key == "backup" and not setting:
            fields["backup"] = True
        elif key in ("weight", "maxconn") and setting.isdigit():
            fields[key] = int(setting)
        elif key == "send-proxy":
            fields["send_proxy"] = setting or "v1"
        else:
            raise ValueError(f"unknown server option {option!r} (weight=N, backup, maxconn=N)")
    return fields


ServerSpec = Annotated[ServerSettings, BeforeValidator(parse_server)]


class CheckSettings(Model):
    """`check inter 2s rise 2 fall 3`, and `option httpchk GET /healthz` +
    `http-check expect status 200` when kind is http."""

    kind: Literal["tcp", "http"] = "tcp"
    path: str = "/healthz"
    expect_status: int = Field(default=200, ge=100, le=599)
    inter: float = Field(default=2.0, gt=0)
    rise: int = Field(default=2, ge=1)
    fall: int = Field(default=3, ge=1)
    timeout: float = Field(default=1.0, gt=0)


class BackendSettings(Model):
    name: Name
    algorithm: str = "roundrobin"
    servers: list[ServerSpec] = Field(min_length=1)
    check: CheckSettings | None = CheckSettings()
    # passive checks (Envoy's outlier detection): this many consecutive connection
    # failures or 5xx eject a server for `eject_time`
    observe_errors: int = Field(default=5, ge=1)
    eject_time: float = Field(default=10.0, gt=0)
    retries: int = Field(default=3, ge=0)
    redispatch: bool = True
    cookie: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")  # `cookie X insert`
    timeout_connect: float = Field(default=5.0, gt=0)
    timeout_server: float = Field(default=50.0, gt=0)
    timeout_queue: float = Field(default=5.0, gt=0)
    # idle server connections kept (http mode)
    keepalive: int = Field(default=MAX_IDLE_CONNECTIONS, ge=0)

    @model_validator(mode="after")
    def _valid(self) -> Self:
        algorithms.create(self.algorithm)  # an unknown name or bad argument fails here
        names = [server.name for server in self.servers]
        if len(set(names)) != len(names):
            raise ValueError(f"backend {self.name}: server names must differ: {names}")
        return self


class FrontendSettings(Model):
    name: Name
    bind: Address
    mode: Literal["http", "tcp"] = "http"
    backend: Name
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # an http listener that only redirects to the HTTPS one on this port (301/308)
    redirect_https_port: int | None = Field(default=None, ge=1, le=65535)
    hsts_max_age: int | None = Field(default=None, ge=0)
    accept_proxy: bool = False
    # connections open at most, the rest wait in the listen backlog (HAProxy's maxconn);
    # unset: half the open-files limit
    maxconn: int | None = Field(default=None, ge=1)
    timeout_client: float = Field(default=50.0, gt=0)
    # a request body slower than this on average after timeout_client (bytes/s; 0: off)
    body_min_rate: float = Field(default=BODY_MIN_RATE, ge=0)
    timeout_http_request: float = Field(default=10.0, gt=0)
    timeout_http_keep_alive: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _valid(self) -> Self:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(f"frontend {self.name}: tls_cert and tls_key go together")
        if self.mode == "tcp" and (self.redirect_https_port or self.hsts_max_age is not None):
            raise ValueError(f"frontend {self.name}: redirects and HSTS need mode http")
        return self


def parse_ipv4(value: object) -> object:
    """A virtual address or unicast peer: one IPv4 address, written as usual."""
    if isinstance(value, str):
        return str(ipaddress.IPv4Address(value))
    return value


IPv4 = Annotated[str, BeforeValidator(parse_ipv4)]


class VrrpInstanceSettings(Model):
    """One virtual router (keepalived's `vrrp_instance`), VRRP version 3 (RFC 5798)."""

    name: Name
    virtual_router_id: int = Field(ge=1, le=255)
    # 255 is the address owner's (RFC 5798 5.2.4): a balancer never owns the address
    priority: int = Field(default=100, ge=1, le=254)
    # seconds, in centiseconds: 12 bits of them on the wire (0.01-40.95 s)
    advert_interval: float = Field(default=1.0, ge=0.01, le=40.95)
    preempt: bool = True
    preempt_delay: float = Field(default=0.0, ge=0, le=1000)  # keepalived's bound
    addresses: list[IPv4] = Field(min_length=1, max_length=20)
    # adverts to these addresses instead of multicast 224.0.0.18 (clouds without multicast)
    unicast_peers: list[IPv4] = []
    # step down while this balancer cannot serve (no usable backend, a listener down)
    track: bool = True

    @model_validator(mode="after")
    def _valid(self) -> Self:
        if abs(self.advert_interval * 100 - round(self.advert_interval * 100)) > 1e-6:
            raise ValueError(f"vrrp {self.name}: advert_interval is in steps of 0.01 s")
        return self

    @property
    def interval_cs(self) -> int:
        return round(self.advert_interval * 100)


class VrrpSettings(Model):
    """`[lb.vrrp]`: the floating addresses a pair of balancers share."""

    instances: list[VrrpInstanceSettings] = Field(min_length=1)
    # gratuitous ARPs on becoming master, and as many again `garp_delay` later (keepalived)
    garp_repeat: int = Field(default=5, ge=1, le=100)
    garp_delay: float = Field(default=5.0, ge=0)

    @model_validator(mode="after")
    def _valid(self) -> Self:
        ids = [instance.virtual_router_id for instance in self.instances]
        if len(set(ids)) != len(ids):
            raise ValueError(f"vrrp: virtual_router_id must differ between instances: {ids}")
        addresses = [address for instance in self.instances for address in instance.addresses]
        if len(set(addresses)) != len(addresses):
            raise ValueError("vrrp: an address belongs to one instance only")
        missing = link.missing_capabilities()
        if missing:
            raise ValueError(
                f"vrrp needs {' and '.join(missing)} to send adverts and move addresses "
                "(run as root, or give the service these capabilities)"
            )
        try:
            networks = link.read_networks()
        except link.LinkError as exc:
            raise ValueError(f"vrrp: {exc}") from exc
        for address in addresses:
            if link.network_for(address, networks) is None:
                raise ValueError(f"vrrp: virtual address {address} is on no interface's network")
        return self


class LbSettings(RoleSettings):
    role = "lb"

    name: str = Field(default_factory=socket.gethostname, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    frontends: list[FrontendSettings] = []
    backends: list[BackendSettings] = []
    drain_timeout: float = Field(default=30.0, ge=0)
    # processes accepting on the same ports (SO_REUSEPORT): one per core
    workers: int = Field(default=1, ge=1, le=64)
    # a floating address shared with another balancer (VRRP); none when absent
    vrrp: VrrpSettings | None = None

    # quick start: one frontend and one backend from flags
    bind: Address | None = None
    mode: Literal["http", "tcp"] = "http"
    backend: list[ServerSpec] = []
    algorithm: str = "roundrobin"
    check_path: str | None = None

    @model_validator(mode="after")
    def _valid(self) -> Self:
        if self.backend and not self.frontends:
            check = (
                CheckSettings(kind="http", path=self.check_path)
                if self.check_path
                else CheckSettings()
            )
            backend = BackendSettings(
                name="default", algorithm=self.algorithm, servers=list(self.backend), check=check
            )
            frontend = FrontendSettings(
                name="default",
                bind=self.bind or HostPort("0.0.0.0", 80),
                mode=self.mode,
                backend="default",
            )
            object.__setattr__(self, "frontends", [frontend])
            object.__setattr__(self, "backends", [*self.backends, backend])
        if not self.frontends:
            raise ValueError("nothing to balance: give --backend HOST:PORT or [[lb.frontends]]")
        backends = {backend.name: backend for backend in self.backends}
        if len(backends) != len(self.backends):
            raise ValueError("backend names must differ")
        for frontend in self.frontends:
            target = backends.get(frontend.backend)
            if target is None:
                raise ValueError(f"frontend {frontend.name}: no backend named {frontend.backend!r}")
            name, _ = algorithms.parse_spec(target.algorithm)
            if frontend.mode == "tcp" and name in algorithms.HTTP_ONLY:
                raise ValueError(f"frontend {frontend.name}: {name} needs mode http")
        return self
