"""The `[web]` settings: the site's files, the app servers behind /api/, and the limits."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from pydantic import Field, field_validator

from foobar.http.limits import BODY_MIN_RATE, MAX_IDLE_CONNECTIONS
from foobar.settings import Address, HostPort, RoleSettings

SITE = Path(__file__).resolve().parent / "site"

# The site's pages load only their own script, style and API (no inline script, so an
# injected <script> does not run), may not be framed (clickjacking), are not sniffed
# into another type, and send only their origin to other sites.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; object-src 'none'; base-uri 'self'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "strict-origin-when-cross-origin",
}
# RFC 9110 §5.1 token; §5.5 field values: no CR, LF or NUL (a header could be split)
FIELD_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
BAD_VALUE = re.compile(r"[\r\n\x00]")


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
    # nginx's add_header by location: headers added to the files under each path prefix,
    # the longest matching prefix's set only (as a location's add_header replaces the
    # inherited ones)
    add_headers: dict[str, dict[str, str]] = {"/": SECURITY_HEADERS}

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

    @field_validator("proxy_prefixes")
    @classmethod
    def _paths(cls, prefixes: list[str]) -> list[str]:
        for prefix in prefixes:
            if not prefix.startswith("/") or "?" in prefix or "#" in prefix:
                raise ValueError(f"a proxy prefix is a path, like /api/: not {prefix!r}")
        return prefixes

    @field_validator("add_headers")
    @classmethod
    def _valid_fields(cls, table: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for prefix, fields in table.items():
            for name, value in fields.items():
                if not FIELD_NAME.match(name):
                    raise ValueError(f"{prefix}: {name!r} is not a header field name")
                if BAD_VALUE.search(value):
                    raise ValueError(f"{prefix}: {name}'s value holds CR, LF or NUL")
        return table
