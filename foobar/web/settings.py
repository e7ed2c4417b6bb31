"""The `[web]` settings: the site's files, the app servers behind /api/, and the limits."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field

from foobar.http.limits import BODY_MIN_RATE, MAX_IDLE_CONNECTIONS
from foobar.settings import Address, HostPort, RoleSettings

SITE = Path(__file__).resolve().parent / "site"


class WebSettings(RoleSettings):
    role = "web"

    bind: Address = HostPort("127.0.0.1", 8080)
    name: str = Field(default_factory=socket.gethostname, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    root: Path = SITE
    upstreams: list[Address] = []
    # requests under these prefixes go to the upstreams; everything else is a file
    proxy_prefixes: list[str] = ["/api/"]
    # Cache-Control by path prefix, the longest matching prefix wins
    cache_control: dict[str, str] = {"/": "no-cache", "/assets/": "public, max-age=3600"}

    # nginx's defaults, under nginx's names
    client_max_body_size: int = Field(default=1024 * 1024, ge=0)
    # open connections at most, the rest wait in the listen backlog; unset: half the
    # open-files limit (nginx's default is 512 per worker)
    worker_connections: int | None = Field(default=None, ge=1)
    # nginx has no such bound (client_body_timeout is between reads); Apache's MinRate
    client_body_min_rate: float = Field(default=BODY_MIN_RATE, ge=0)
    proxy_connect_timeout: float = Field(default=5.0, gt=0)
    proxy_read_timeout: float = Field(default=60.0, gt=0)
    keepalive: int = Field(default=MAX_IDLE_CONNECTIONS, ge=0)  # idle connections kept per upstream
    max_fails: int = Field(default=1, ge=1)
    fail_timeout: float = Field(default=10.0, gt=0)
    # how long file metadata is trusted (nginx open_file_cache_valid)
    open_file_cache_valid: float = Field(default=1.0, ge=0)
