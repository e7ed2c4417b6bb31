"""What every role's settings share: the loading order, `--check`, and common field types.

Each role defines one pydantic model (extra keys forbidden, frozen) deriving from
`RoleSettings`, and its `__main__` calls `from_command_line(Model, parser)`. Values are
taken in this order, each overriding the one before:

    1. the model's defaults
    2. the TOML file given with `--config`, table `[<role>]` (other roles' tables are left
       for them, so one file can hold every role of a machine)
    3. the environment: `FOOBAR_<ROLE>_<FIELD>`, e.g. FOOBAR_WEB_BIND=0.0.0.0:80; a list or
       table is written as JSON
    4. the command-line flags

A bad setting never starts a half-working server: every problem is reported with its key
and where the value came from, and the process exits with status 2. `--check` prints the
effective settings (secrets masked) and exits 0, or prints the problems and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, NamedTuple, NoReturn, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from foobar.errors import ConfigError

ROLES = frozenset({"lb", "web", "app", "db", "witness", "up", "statuspage"})


class HostPort(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(value: object) -> object:
    """'HOST:PORT', '[v6]:PORT' or ':PORT' (all addresses) into a HostPort."""
    if not isinstance(value, str):
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"port {number} is out of range 0-65535")
    return HostPort(host.strip("[]") or "0.0.0.0", number)


Address = Annotated[
    HostPort, BeforeValidator(parse_host_port), PlainSerializer(str, return_type=str)
]


class RoleSettings(BaseModel):
    """Base of each role's settings model."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    role: ClassVar[str]

    admin: Address | None = None
    # What a state-changing admin request (POST /promote, POST /servers/...) must carry as
    # `Authorization: Bearer ...`: given here, as FOOBAR_<ROLE>_ADMIN_TOKEN, or in a file
    # (`make up` writes one, 0600). Without one, nothing can be changed through the admin
    # listener. `admin_names`: host names besides its address that it answers to.
    admin_token: SecretStr | None = None
    admin_token_file: Path | None = None
    admin_names: list[str] = []
    log_level: str = "info"
    access_log: bool = True

    @field_validator("admin_token")
    @classmethod
    def _long_enough(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and len(token.get_secret_value()) < MIN_TOKEN_LENGTH:
            raise ValueError(f"under {MIN_TOKEN_LENGTH} characters")
        return token

    @field_validator("admin_token_file")
    @classmethod
    def _readable(cls, path: Path | None) -> Path | None:
        if path is not None:
            read_token_file(path)  # unreadable or too short fails here, not at first use
        return path

    @model_validator(mode="after")
    def _one_admin_token(self) -> RoleSettings:
        if self.admin_token is not None and self.admin_token_file is not None:
            raise ValueError("give admin_token or admin_token_file, not both")
        return self

    def admin_secret(self) -> str | None:
        """The admin token from wherever the settings say, or None."""
        if self.admin_token is not None:
            return self.admin_token.get_secret_value()
        if self.admin_token_file is not None:
            return read_token_file(self.admin_token_file)
        return None


# A token shorter than this is guessable over a few days of tries.
MIN_TOKEN_LENGTH = 16


def read_token_file(path: Path) -> str:
    """The token in `path` (its first line), or ValueError saying what is wrong."""
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"admin token file {path}: {exc.strerror}") from exc
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"admin token file {path}: under {MIN_TOKEN_LENGTH} characters")
    return token


S = TypeVar("S", bound=RoleSettings)


def load(
    model: type[S],
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> tuple[S, dict[str, str]]:
    """Build the settings from all sources; returns them and, per field, where its value
    came from. Raises ConfigError listing every problem."""
    role = model.role
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    problems: list[tuple[str, str]] = []

    if config_file is not None:
        table = _read_toml(config_file, role, problems)
        for key, value in table.items():
            values[key] = value
            origin[key] = f"{config_file} [{role}]"

    prefix = f"FOOBAR_{role.upper()}_"
    for name, raw in (os.environ if environ is None else environ).items():
        if not name.startswith(prefix):
            continue
        key = name[len(prefix) :].lower()
        if key not in model.model_fields:
            problems.append((name, "unknown setting (no such field)"))
            continue
        values[key] = _from_env(raw)
        origin[key] = f"environment {name}"

    for key, value in (flags or {}).items():
        values[key] = value
        origin[key] = f"flag --{key.replace('_', '-')}"

    try:
        settings = model.model_validate(values)
    except ValidationError as exc:
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"]) or model.role
            where = origin.get(str(error["loc"][0]) if error["loc"] else "", "")
            message = error["msg"] if error["type"] != "extra_forbidden" else "unknown setting"
            problems.append((f"{key} ({where})" if where else key, message))
        raise ConfigError(problems) from exc
    if problems:
        raise ConfigError(problems)
    return settings, origin


def _read_toml(path: Path, role: str, problems: list[tuple[str, str]]) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        problems.append((str(path), f"cannot read: {exc.strerror}"))
        return {}
    except tomllib.TOMLDecodeError as exc:
        problems.append((str(path), f"not valid TOML: {exc}"))
        return {}
    for key, value in data.items():
        if key not in ROLES:
            problems.append((f"{path} {key}", f"unknown table; expected one of {sorted(ROLES)}"))
        elif not isinstance(value, dict):
            problems.append((f"{path} {key}", "must be a table, e.g. [web]"))
    table = data.get(role, {})
    return table if isinstance(table, dict) else {}


def _from_env(raw: str) -> Any:
    if raw[:1] in ("[", "{"):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw  # pydantic then says what it expected
    return raw


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML settings file")
    parser.add_argument(
        "--check",
        action="store_true",
        help="print the effective settings and exit 0, or every error and exit 2",
    )
    parser.add_argument("--admin", metavar="HOST:PORT", help="admin listener address")
    parser.add_argument(
        "--admin-token-file",
        metavar="PATH",
        help="the token state-changing admin requests must carry (never the token itself "
        "on a command line: any local user can read it there)",
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def new_parser(model: type[RoleSettings], description: str) -> argparse.ArgumentParser:
    """An argument parser whose absent flags leave no key behind, so a flag overrides
    the file and environment only when it is given."""
    parser = argparse.ArgumentParser(
        prog=f"python -m foobar.{model.role}",
        description=description,
        argument_default=argparse.SUPPRESS,
    )
    add_common_arguments(parser)
    return parser


def from_command_line(
    model: type[S], parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> S:
    """Parse flags, load the settings, and act on --check. Exits 2 on any bad setting."""
    flags = vars(parser.parse_args(argv))
    config_file = flags.pop("config", None)
    check = flags.pop("check", False)
    try:
        settings, origin = load(model, config_file, flags=flags)
    except ConfigError as exc:
        fail(exc)
    if check:
        print(describe(settings, origin))
        sys.exit(0)
    return settings


def fail(exc: ConfigError) -> NoReturn:
    for key, message in exc.problems:
        print(f"error: {key}: {message}", file=sys.stderr)
    sys.exit(2)


def describe(settings: RoleSettings, origin: Mapping[str, str]) -> str:
    """The effective settings as TOML, each value's source in a comment; secrets masked
    (pydantic's SecretStr dumps as '**********')."""
    lines = [f"[{settings.role}]"]
    for key, value in settings.model_dump(mode="json").items():
        if value is None:
            lines.append(f"# {key} is not set")
            continue
        source = origin.get(key, "default")
        lines.append(f"{key} = {json.dumps(value)}  # {source}")
    return "\n".join(lines)
