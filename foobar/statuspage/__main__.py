"""python -m foobar.statuspage --config status.toml [--bind HOST:PORT] [--interval S]"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import uvloop

from foobar import logs
from foobar.settings import from_command_line, new_parser
from foobar.statuspage.server import run
from foobar.statuspage.settings import StatusPageSettings


def main(argv: Sequence[str] | None = None) -> int:
    parser = new_parser(StatusPageSettings, "the live status page of the whole site")
    parser.add_argument("--bind", metavar="HOST:PORT")
    parser.add_argument("--interval", type=float, metavar="S", help="seconds between polls")
    settings = from_command_line(StatusPageSettings, parser, argv)
    logs.setup(settings.log_level)
    try:
        return uvloop.run(run(settings))
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
