"""python -m foobar.db serve | witness | init | status | promote

serve    set up the cluster (managed: start the servers) and watch it until SIGTERM;
         with --agent NAME, run only that instance and fail over with its peer
witness  the third vote for agents on two hosts                  --admin HOST:PORT
init     only prepare the data directories
status   print the cluster's state (exit 1 when unhealthy)       --admin HOST:PORT
promote  planned switchover to a replica                         --admin HOST:PORT [--to NAME]
         [--admin-token-file PATH] (or FOOBAR_DB_ADMIN_TOKEN)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import uvloop

from foobar import logs
from foobar.db import cli, witness
from foobar.db.errors import DbError
from foobar.db.serve import run
from foobar.db.settings import DbSettings, WitnessSettings
from foobar.db.supervisor import Supervisor
from foobar.settings import (
    HostPort,
    from_command_line,
    new_parser,
    parse_host_port,
    read_token_file,
)

COMMANDS = ("serve", "witness", "init", "status", "promote")


def settings_parser(command: str) -> argparse.ArgumentParser:
    parser = new_parser(DbSettings, f"foobar.db {command}")
    parser.prog = f"python -m foobar.db {command}"
    parser.add_argument("--mode", choices=["managed", "external"])
    parser.add_argument(
        "--state-dir", dest="state_dir", help="data directories, sockets, logs, secrets"
    )
    parser.add_argument("--bind-host", dest="bind_host")
    parser.add_argument("--primary-port", dest="primary_port", type=int)
    parser.add_argument("--replica-port", dest="replica_port", type=int)
    parser.add_argument("--agent", help="agent mode: the one instance this host runs")
    parser.add_argument(
        "--peer", dest="peers", action="append", metavar="NAME=HOST:PORT", help="another agent"
    )
    parser.add_argument("--witness", metavar="HOST:PORT", help="the witness's admin listener")
    parser.add_argument("--cluster-name", dest="cluster_name")
    parser.add_argument("--failover-after", dest="failover_after", type=float)
    parser.add_argument(
        "--no-auto-failover", dest="auto_failover", action="store_false", help="never fail over"
    )
    return parser


def witness_parser() -> argparse.ArgumentParser:
    parser = new_parser(WitnessSettings, "foobar.db witness")
    parser.prog = "python -m foobar.db witness"
    parser.add_argument("--state-dir", dest="state_dir", help="where the epoch is kept")
    parser.add_argument("--instance", dest="instances", action="append", metavar="NAME=HOST:PORT")
    parser.add_argument("--cluster-name", dest="cluster_name")
    parser.add_argument("--failover-after", dest="failover_after", type=float)
    parser.add_argument("--check-interval", dest="check_interval", type=float)
    return parser


def admin_address(value: str) -> HostPort:
    try:
        address = parse_host_port(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    assert isinstance(address, HostPort)
    return address


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        if args and args[0] in ("-h", "--help"):
            print(__doc__)
            return 0
        print(f"usage: python -m foobar.db {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    command, rest = args[0], args[1:]
    if command in ("status", "promote"):
        parser = argparse.ArgumentParser(prog=f"python -m foobar.db {command}")
        parser.add_argument("--admin", type=admin_address, required=True, metavar="HOST:PORT")
        if command == "promote":
            parser.add_argument("--to", help="the replica to promote (default: the first)")
            parser.add_argument(
                "--admin-token-file",
                type=Path,
                metavar="PATH",
                help=f"the admin token (default: the environment's {cli.TOKEN_ENV})",
            )
        options = parser.parse_args(rest)
        if command == "status":
            return uvloop.run(cli.status(options.admin))
        token = os.environ.get(cli.TOKEN_ENV)
        if options.admin_token_file is not None:
            try:
                token = read_token_file(options.admin_token_file)
            except ValueError as exc:
                parser.error(str(exc))
        return uvloop.run(cli.promote(options.admin, options.to, token))
    if command == "witness":
        witness_settings = from_command_line(WitnessSettings, witness_parser(), rest)
        logs.setup(witness_settings.log_level)
        return uvloop.run(witness.run(witness_settings))
    settings = from_command_line(DbSettings, settings_parser(command), rest)
    logs.setup(settings.log_level)
    try:
        if command == "init":
            uvloop.run(Supervisor(settings).initialize())
            return 0
        return uvloop.run(run(settings))
    except DbError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
