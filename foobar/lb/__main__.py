"""python -m foobar.lb --bind HOST:PORT --mode http|tcp --backend [NAME=]HOST:PORT[,weight=N]
    [,backup][,maxconn=N] ... --algorithm NAME --check-path PATH --admin HOST:PORT --name NODE

or --config lb.toml for several frontends and backends. SIGHUP reloads."""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvloop

from foobar import logs
from foobar.errors import FoobarError
from foobar.lb.serve import run
from foobar.lb.settings import LbSettings
from foobar.settings import from_command_line, load, new_parser


def reload_settings(config: Path | None, flags: dict[str, Any]) -> LbSettings:
    """The settings as at start, read again: the file and the environment may have changed."""
    settings, _ = load(LbSettings, config, flags=flags)
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = new_parser(LbSettings, "the load balancer (HAProxy's job)")
    parser.add_argument("--bind", metavar="HOST:PORT")
    parser.add_argument("--mode", choices=["http", "tcp"])
    parser.add_argument(
        "--backend", action="append", metavar="[NAME=]HOST:PORT[,weight=N][,backup]"
    )
    parser.add_argument(
        "--algorithm",
        help="roundrobin, static-rr, leastconn, first, source, uri, "
        "hdr(NAME), random, or a plugin's name",
    )
    parser.add_argument("--check-path", dest="check_path", help="HTTP health checks on this path")
    parser.add_argument("--name", help="this node's name, sent as X-Foobar-LB")
    parser.add_argument("--workers", type=int, help="processes sharing the ports (one per core)")
    settings = from_command_line(LbSettings, parser, argv)
    logs.setup(settings.log_level)
    options = vars(parser.parse_args(argv))
    config = options.pop("config", None)
    options.pop("check", None)
    try:
        reload = functools.partial(reload_settings, config, options)
        return uvloop.run(run(settings, reload, list(argv if argv is not None else sys.argv[1:])))
    except (OSError, FoobarError) as exc:  # a port taken; a virtual address gone since --check
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
