"""The `[statuspage]` settings, for the status page run on its own
(`python -m foobar.statuspage`, on the monitoring host): where it listens, how often it
polls, and the roles' admin listeners it polls. `foobar up` builds its targets itself."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from foobar.settings import Address, HostPort, RoleSettings


class TargetSettings(BaseModel):
    """One role's admin listener, and the address it serves on, shown on the page."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["lb", "web", "app", "db"]
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    admin: Address
    address: str = ""  # e.g. "10.0.0.2:8080"; the admin address when not given


class StatusPageSettings(RoleSettings):
    role = "statuspage"

    # the page shows the site's inner addresses: keep it on a private address
    bind: Address = HostPort("127.0.0.1", 8280)
    interval: float = Field(default=1.0, ge=0.2, le=60.0)  # seconds between polls
    targets: list[TargetSettings] = Field(min_length=1)
