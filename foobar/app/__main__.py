"""python -m foobar.app --bind HOST:PORT --db DSN --db DSN ... --admin HOST:PORT --name NODE
(or the older --primary DSN [--replica DSN ...]: followed the same way)"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import uvloop

from foobar import logs
from foobar.app.errors import SchemaError
from foobar.app.serve import run
from foobar.app.settings import AppSettings
from foobar.settings import from_command_line, new_parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = new_parser(AppSettings, "the www.foobar.com application server")
    parser.add_argument("--bind", metavar="HOST:PORT")
    parser.add_argument("--name", help="this node's name, sent as X-Foobar-App")
    parser.add_argument(
        "--db",
        dest="databases",
        action="append",
        metavar="mysql://USER:PASSWORD@HOST:PORT/DB",
        help="a database server (repeat for each); the app finds the primary itself",
    )
    parser.add_argument("--primary", metavar="mysql://USER:PASSWORD@HOST:PORT/DB")
    parser.add_argument(
        "--replica", dest="replicas", action="append", metavar="mysql://USER:PASSWORD@HOST:PORT/DB"
    )
    settings = from_command_line(AppSettings, parser, argv)
    logs.setup(settings.log_level)
    try:
        return uvloop.run(run(settings))
    except (SchemaError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
