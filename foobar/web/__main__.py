"""python -m foobar.web --bind HOST:PORT --root DIR --upstream HOST:PORT [--upstream ...]
--admin HOST:PORT --name NODE"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import uvloop

from foobar import logs
from foobar.settings import from_command_line, new_parser
from foobar.web.serve import run
from foobar.web.settings import WebSettings


def main(argv: Sequence[str] | None = None) -> int:
    parser = new_parser(WebSettings, "static files and the proxy to the app servers")
    parser.add_argument("--bind", metavar="HOST:PORT")
    parser.add_argument("--root", help="the site's files (default: the site in the package)")
    parser.add_argument("--upstream", dest="upstreams", action="append", metavar="HOST:PORT")
    parser.add_argument("--name", help="this node's name, sent as X-Foobar-Web")
    settings = from_command_line(WebSettings, parser, argv)
    logs.setup(settings.log_level)
    try:
        return uvloop.run(run(settings))
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
