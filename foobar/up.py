"""`python -m foobar up`: the whole site on one machine, each role its own process started
through the same entry points as in production (`python -m foobar.db`, `.app`, `.web`,
`.lb`), state under `./var` (or `--state-dir`) and reused on the next start.

Ports, from `--base-port` B (8080):

    B        the balancer's HTTP listener (redirects to HTTPS unless --no-tls)
    B+363    the balancer's HTTPS listener (8443)
    B+1..    web servers         B+11..   app servers      B+21, B+22   MariaDB db1, db2
    B+100    the balancer's admin (stats)    B+101.. web admins    B+111.. app admins
    B+121, B+122   the database agents' admins (db1, db2)    B+123   the witness
    B+200    the status page (the whole site at a glance)
    B+201    Prometheus      B+202    Alertmanager   (with --monitoring)

The database runs as on two hosts: one agent per server and a witness, so a failover can
be watched locally (kill -9 the primary's agent and its mariadbd, see `status`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import uvloop

from foobar import monitoring
from foobar.errors import FoobarError
from foobar.files import private_directory, tighten, write_private
from foobar.http.client import PoolConfig, UpstreamPool
from foobar.settings import HostPort
from foobar.statuspage.collector import Collector, Target
from foobar.statuspage.server import StatusPage

HOST = "127.0.0.1"
STOP_TIMEOUT = 30.0
READY_TIMEOUT = 90.0
SERVER_BINARIES = ("mariadbd", "mysqld")
SBIN = ("/usr/sbin", "/usr/local/sbin")
# The self-signed certificate is made for 825 days (the longest browsers accepted) and
# made again when it has less than this left, as an ACME client renews at 30 days.
CERT_DAYS = 825
CERT_RENEW_SECONDS = 30 * 24 * 3600


class UpError(FoobarError):
    """The site cannot be started; the message says why in one line."""


@dataclass
class Child:
    role: str
    name: str
    command: list[str]
    address: str
    admin: HostPort
    metric: str | None  # the requests counter whose rate the table shows
    # added to the environment: how secrets reach a child (a command line is public)
    env: dict[str, str] = field(default_factory=dict, repr=False)
    process: asyncio.subprocess.Process | None = None
    healthy: str = "starting"
    rate: float | None = None
    _last: tuple[float, float] | None = None
    _pool: UpstreamPool | None = field(default=None, repr=False)
    health_path: str = "/healthz"  # Prometheus and Alertmanager say /-/ready

    async def admin_get(self, path: str) -> tuple[int, str]:
        if self._pool is None:
            self._pool = UpstreamPool(
                self.admin.host, self.admin.port, PoolConfig(read_timeout=2.0)
            )
        response = await self._pool.request("GET", path.encode(), [(b"Host", b"up")])
        return response.status, (await response.read()).decode()


@dataclass
class Plan:
    state_dir: Path
    base: int
    webs: int
    apps: int
    tls: bool
    monitoring: bool = False
    interval: float = 15.0  # Prometheus's scrape and evaluation interval

    def port(self, offset: int) -> int:
        return self.base + offset

    @property
    def https_port(self) -> int:
        return self.port(363)

    def all_ports(self) -> list[int]:
        ports = [self.port(0), self.port(100), self.port(21), self.port(22)]
        ports += [self.port(121), self.port(122), self.port(123), self.port(200)]
        ports += [self.port(1 + i) for i in range(self.webs)] + [
            self.port(101 + i) for i in range(self.webs)
        ]
        ports += [self.port(11 + i) for i in range(self.apps)] + [
            self.port(111 + i) for i in range(self.apps)
        ]
        ports += [self.port(201), self.port(202)] if self.monitoring else []
        return ports + ([self.https_port] if self.tls else [])


def database_secrets(state: Path) -> dict[str, str]:
    """The passwords both database agents share: made once, kept in
    <state>/secrets.json (0600), handed to the agents in their environment."""
    path = private_directory(state) / "secrets.json"
    if path.exists():
        tighten(path)
    stored = json.loads(path.read_text()) if path.exists() else {}
    for key in ("app_password", "replication_password"):
        stored.setdefault(key, secrets.token_urlsafe(24))
    write_private(path, json.dumps(stored))
    return {
        "FOOBAR_DB_APP_PASSWORD": stored["app_password"],
        "FOOBAR_DB_REPLICATION_PASSWORD": stored["replication_password"],
    }


def agents_config(state: Path, ports: dict[str, int]) -> Path:
    """The settings file both agents share: the two servers, db1 the first primary."""
    config = state / "agents.toml"
    config.write_text(
        '[db]\ninitial_primary = "db1"\n'
        + "".join(
            f'[[db.instances]]\nname = "{name}"\nhost = "{HOST}"\nport = {port}\nserver_id = {n}\n'
            for n, (name, port) in enumerate(ports.items(), start=1)
        )
    )
    return config


def port_free(port: int) -> bool:
    """Could a server listen on `port`? (As a server binds: TIME_WAIT does not count.)"""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def free_base_port(webs: int = 2, apps: int = 2, tls: bool = True) -> int:
    """A base port whose whole plan is free, below the kernel's ephemeral range (32768 up
    on Linux) where outgoing connections do not land; for tests and benchmarks."""
    for _ in range(200):
        base = random.randrange(20000, 32000)
        if all(port_free(port) for port in Plan(Path(), base, webs, apps, tls).all_ports()):
            return base
    raise UpError("no free range of ports for the site")


def preflight(plan: Plan) -> None:
    """Refuse at once, with one line, what would make a half-started site."""
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(SBIN)
    if not any(shutil.which(binary, path=path) for binary in SERVER_BINARIES):
        raise UpError(
            "MariaDB/MySQL is not installed: apt-get install mariadb-server (or run `make up`)"
        )
    if plan.tls and shutil.which("openssl") is None:
        raise UpError(
            "openssl is needed for the self-signed certificate: "
            "apt-get install openssl, or use --no-tls"
        )
    if plan.monitoring:
        monitoring.find_tools()
    for port in plan.all_ports():
        if not port_free(port):
            raise UpError(f"port {port} on {HOST} is taken; try --base-port")


def certificate_valid(cert: Path) -> bool:
    """Does `cert` exist and stay valid for more than CERT_RENEW_SECONDS?"""
    if not cert.exists():
        return False
    check = subprocess.run(
        ["openssl", "x509", "-checkend", str(CERT_RENEW_SECONDS), "-noout", "-in", str(cert)],
        capture_output=True,
    )
    return check.returncode == 0


def make_certificate(cert: Path, key: Path, days: int) -> None:
    """A self-signed certificate for www.foobar.com (and localhost) valid for `days`, its
    key 0600; both replace the old ones only once complete."""
    new_cert, new_key = cert.with_suffix(".pem.new"), key.with_suffix(".pem.new")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            str(days),
            "-keyout",
            str(new_key),
            "-out",
            str(new_cert),
            "-subj",
            "/CN=www.foobar.com",
            "-addext",
            "subjectAltName=DNS:www.foobar.com,DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    new_key.chmod(0o600)
    new_key.replace(key)
    new_cert.replace(cert)


def certificate(plan: Plan) -> tuple[Path, Path]:
    """A self-signed certificate for www.foobar.com, made once and kept, and made again
    when it is about to expire."""
    folder = private_directory(plan.state_dir / "tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    if key.exists():
        tighten(key)
        if certificate_valid(cert):
            return cert, key
        print("the self-signed certificate expires within 30 days: renewing it", flush=True)
    else:
        print("making a self-signed certificate for www.foobar.com ...", flush=True)
    make_certificate(cert, key, CERT_DAYS)
    return cert, key


def admin_token(plan: Plan) -> Path:
    """The token that state-changing admin requests carry (`POST /promote`,
    `POST /servers/...`), made once, 0600; children and tools are given its path."""
    path = plan.state_dir / "admin-token"
    if path.exists():
        tighten(path)
    else:
        write_private(path, secrets.token_urlsafe(32) + "\n")
    return path


def lb_config(plan: Plan, webs: list[Child]) -> Path:
    servers = "".join(
        f'[[lb.backends.servers]]\nname = "{web.name}"\naddress = "{web.address}"\n\n'
        for web in webs
    )
    if plan.tls:
        cert, key = certificate(plan)
        frontends = (
            f'[[lb.frontends]]\nname = "https"\nbind = "{HOST}:{plan.https_port}"\n'
            'backend = "web"\n'
            f'tls_cert = "{cert}"\ntls_key = "{key}"\nhsts_max_age = 300\n\n'
            f'[[lb.frontends]]\nname = "http"\nbind = "{HOST}:{plan.port(0)}"\nbackend = "web"\n'
            f"redirect_https_port = {plan.https_port}\n\n"
        )
    else:
        frontends = (
            f'[[lb.frontends]]\nname = "http"\nbind = "{HOST}:{plan.port(0)}"\nbackend = "web"\n\n'
        )
    text = (
        f'[lb]\nname = "lb1"\nadmin = "{HOST}:{plan.port(100)}"\n'
        f'admin_token_file = "{admin_token(plan).resolve()}"\n\n{frontends}'
        '[[lb.backends]]\nname = "web"\nalgorithm = "leastconn"\n'
        'check = { kind = "http", path = "/healthz", inter = 1.0, rise = 2, fall = 2 }\n\n'
        f"{servers}"
    )
    path = plan.state_dir / "lb.toml"
    path.write_text(text)
    return path


def python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


class Site:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.children: list[Child] = []
        self.stopping = False
        self.logs = plan.state_dir / "logs"
        self.watchers: set[asyncio.Task[None]] = set()
        self.page: StatusPage | None = None

    async def start_child(self, child: Child) -> None:
        private_directory(self.logs)
        log = (self.logs / f"{child.name}.log").open("ab")
        child.process = await asyncio.create_subprocess_exec(
            *child.command,
            env={**os.environ, **child.env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # Ctrl-C reaches them through us, in order
        )
        log.close()
        self.children.append(child)
        self.watchers.add(asyncio.create_task(self.watch(child)))

    async def watch(self, child: Child) -> None:
        assert child.process is not None
        code = await child.process.wait()
        if not self.stopping:
            child.healthy = f"EXITED ({code})"
            print(
                f"\n!! {child.role} {child.name} (pid {child.process.pid}) exited, code {code}; "
                f"see {self.logs / (child.name + '.log')}",
                flush=True,
            )

    async def wait_ready(self, child: Child, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        reason = "not answering yet"
        while loop.time() < deadline:
            if child.process is not None and child.process.returncode is not None:
                raise UpError(
                    f"{child.name} exited with code {child.process.returncode}; "
                    f"see {self.logs / (child.name + '.log')}"
                )
            try:
                status, text = await child.admin_get(child.health_path)
                if status == 200:
                    child.healthy = "ok"
                    return
                reason = text.strip()
            except FoobarError as exc:
                reason = str(exc)
            await asyncio.sleep(0.3)
        raise UpError(f"{child.name} was not ready within {READY_TIMEOUT:.0f}s ({what}): {reason}")

    async def start_tier(
        self, role: str, index: int, offset: int, *args: str, env: dict[str, str] | None = None
    ) -> Child:
        """Server `index` of the web or app tier: its port at B+offset+index, its admin
        listener 100 above."""
        name, port = f"{role}{index + 1}", self.plan.port(offset + index)
        admin = port + 100
        child = Child(
            role,
            name,
            python(
                f"foobar.{role}",
                "--bind",
                f"{HOST}:{port}",
                "--name",
                name,
                "--admin",
                f"{HOST}:{admin}",
                *args,
            ),
            f"{HOST}:{port}",
            HostPort(HOST, admin),
            f"foobar_{role}_requests_total",
            env or {},
        )
        await self.start_child(child)
        return child

    async def start_database(self, state: Path) -> dict[str, str]:
        """The witness and one agent per database server, as on two hosts; returns the
        passwords both agents share (made once, kept in <state>/secrets.json)."""
        plan = self.plan
        passwords = database_secrets(state)
        ports = {"db1": plan.port(21), "db2": plan.port(22)}
        admins = {"db1": plan.port(121), "db2": plan.port(122), "witness": plan.port(123)}
        instances = [f"--instance={name}={HOST}:{port}" for name, port in ports.items()]
        witness = Child(
            "db",
            "witness",
            python(
                "foobar.db",
                "witness",
                f"--state-dir={state / 'witness'}",
                f"--admin={HOST}:{admins['witness']}",
                f"--admin-token-file={admin_token(plan).resolve()}",
                *instances,
            ),
            "-",
            HostPort(HOST, admins["witness"]),
            None,
        )
        await self.start_child(witness)
        config = agents_config(state, ports)
        print(f"starting the database (db1 :{ports['db1']}, db2 :{ports['db2']}) ...", flush=True)
        agents = []
        for name, other in (("db1", "db2"), ("db2", "db1")):
            agent = Child(
                "db",
                name,
                python(
                    "foobar.db",
                    "serve",
                    f"--config={config}",
                    f"--agent={name}",
                    f"--state-dir={state / name}",
                    f"--admin={HOST}:{admins[name]}",
                    f"--admin-token-file={admin_token(plan).resolve()}",
                    f"--peer={other}={HOST}:{admins[other]}",
                    f"--witness={HOST}:{admins['witness']}",
                ),
                f"{HOST}:{ports[name]}",
                HostPort(HOST, admins[name]),
                None,
                env=passwords,
            )
            await self.start_child(agent)
            agents.append(agent)
        await self.wait_ready(agents[0], "db1 primary, db2 replicating with semi-sync")
        return passwords

    async def start(self) -> None:
        plan = self.plan
        state = plan.state_dir.resolve()
        dbs = await self.start_database(state / "db")
        dsn = "mysql://foobar:{password}@{host}:{port}/foobar"
        # The URLs hold the password: they go by environment, which only the process's
        # own user can read (/proc/PID/environ is 0400), never on the command line.
        database = {
            "FOOBAR_APP_DATABASES": json.dumps(
                [
                    dsn.format(password=dbs["FOOBAR_DB_APP_PASSWORD"], host=HOST, port=port)
                    for port in (plan.port(21), plan.port(22))
                ]
            )
        }
        apps = [await self.start_tier("app", i, 11, env=database) for i in range(plan.apps)]
        for app in apps:
            await self.wait_ready(app, "schema ready")
        upstreams = [arg for app in apps for arg in ("--upstream", app.address)]
        webs = [await self.start_tier("web", i, 1, *upstreams) for i in range(plan.webs)]
        for web in webs:
            await self.wait_ready(web, "listening")

        lb = Child(
            "lb",
            "lb1",
            python("foobar.lb", "--config", str(lb_config(plan, webs))),
            f"{HOST}:{plan.port(0)}" + (f", https :{plan.https_port}" if plan.tls else ""),
            HostPort(HOST, plan.port(100)),
            "foobar_lb_requests_total",
        )
        await self.start_child(lb)
        await self.wait_ready(lb, "web servers up")
        if plan.monitoring:
            await self.start_monitoring()
        targets = [
            Target(child.role, child.name, child.address, child.admin)
            for child in self.children
            if child.role != "monitoring"
        ]
        self.page = StatusPage(Collector(targets))
        await self.page.start(HostPort(HOST, plan.port(200)))

    async def start_monitoring(self) -> None:
        """Prometheus scraping every role's admin listener, and Alertmanager."""
        tools = monitoring.find_tools()
        plan, folder = self.plan, self.plan.state_dir.resolve() / "monitoring"
        targets: dict[str, list[str]] = {}
        for child in self.children:
            targets.setdefault(child.role, []).append(str(child.admin))
        alertmanager = HostPort(HOST, plan.port(202))
        config = monitoring.prometheus_config(
            targets, plan.interval, str(alertmanager), tools.directory / "rules"
        )
        path = monitoring.write_prometheus_config(folder / "prometheus.yml", config)
        print("starting Prometheus and Alertmanager ...", flush=True)
        for name, address, command in (
            (
                "alertmanager",
                alertmanager,
                monitoring.alertmanager_command(tools, folder / "alertmanager", str(alertmanager)),
            ),
            (
                "prometheus",
                HostPort(HOST, plan.port(201)),
                monitoring.prometheus_command(
                    tools, path, folder / "prometheus", f"{HOST}:{plan.port(201)}"
                ),
            ),
        ):
            child = Child("monitoring", name, command, str(address), address, None)
            child.health_path = "/-/ready"
            await self.start_child(child)
            await self.wait_ready(child, "ready")

    def banner(self) -> str:
        plan = self.plan
        lines = ["", "www.foobar.com is up:"]
        if plan.tls:
            lines.append(
                f"  https://localhost:{plan.https_port}/   (self-signed certificate in "
                f"{plan.state_dir / 'tls'}; http://localhost:{plan.port(0)}/ redirects there)"
            )
        else:
            lines.append(f"  http://localhost:{plan.port(0)}/")
        lines.append(f"  status page: http://{HOST}:{plan.port(200)}/")
        lines.append(f"  load balancer stats: http://{HOST}:{plan.port(100)}/stats")
        if plan.monitoring:
            lines.append(f"  Prometheus: http://{HOST}:{plan.port(201)}/alerts")
            lines.append(f"  Alertmanager: http://{HOST}:{plan.port(202)}/")
        lines.append(
            f"  admin token (for POST /servers/..., foobar.db promote): "
            f"{plan.state_dir / 'admin-token'}"
        )
        lines.append(f"  logs: {self.logs}/   state: {plan.state_dir}/   Ctrl-C stops everything")
        return "\n".join(lines)

    async def refresh(self) -> None:
        for child in self.children:
            if child.process is None or child.process.returncode is not None:
                continue
            try:
                status, text = await child.admin_get(child.health_path)
                child.healthy = "ok" if status == 200 else f"UNHEALTHY: {text.strip()[:40]}"
                if child.metric:
                    _, metrics = await child.admin_get("/metrics")
                    total = sum(
                        float(line.rsplit(" ", 1)[1])
                        for line in metrics.splitlines()
                        if line.startswith(child.metric)
                    )
                    now = time.monotonic()
                    if child._last is not None:
                        child.rate = (total - child._last[1]) / (now - child._last[0])
                    child._last = (now, total)
            except FoobarError as exc:
                child.healthy = f"no answer: {str(exc)[:40]}"

    def table(self) -> str:
        rows = [("role", "name", "pid", "address", "health", "req/s")]
        for child in self.children:
            pid = str(child.process.pid) if child.process else "-"
            rate = "-" if child.rate is None else f"{child.rate:.1f}"
            rows.append((child.role, child.name, pid, child.address, child.healthy, rate))
        widths = [max(len(row[i]) for row in rows) for i in range(6)]
        return "\n".join(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            for row in rows
        )

    async def show(self, stop: asyncio.Event) -> None:
        interactive = sys.stdout.isatty()
        while not stop.is_set():
            await self.refresh()
            if interactive:
                print("\x1b[2J\x1b[H" + self.banner() + "\n\n" + self.table(), flush=True)
            else:
                print(self.table() + "\n", flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2.0 if interactive else 10.0)

    async def stop(self) -> None:
        """SIGTERM in reverse order of start (the balancer first, the database last), then
        SIGKILL what has not stopped within STOP_TIMEOUT."""
        self.stopping = True
        if self.page is not None:
            await self.page.stop()
        for child in reversed(self.children):
            process = child.process
            if process is None or process.returncode is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                print(f"{child.name} did not stop in {STOP_TIMEOUT:.0f}s: killing it", flush=True)
                process.kill()
                await process.wait()
            print(f"stopped {child.role} {child.name}", flush=True)


async def run(plan: Plan) -> int:
    preflight(plan)
    private_directory(plan.state_dir)
    site = Site(plan)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        starting = asyncio.create_task(site.start())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            return 130
        starting.result()
        print(site.banner(), flush=True)
        await site.show(stop)
        return 0
    except (UpError, monitoring.MonitoringError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        print("\nstopping ...", flush=True)
        await site.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m foobar up",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--state-dir", type=Path, default=Path("var"))
    parser.add_argument("--base-port", type=int, default=8080)
    parser.add_argument("--web", type=int, default=2, choices=range(1, 10), metavar="N")
    parser.add_argument("--app", type=int, default=2, choices=range(1, 10), metavar="N")
    parser.add_argument("--no-tls", action="store_true", help="HTTP only on the base port")
    parser.add_argument(
        "--monitoring",
        action="store_true",
        help="also run Prometheus and Alertmanager with deploy/monitoring's rules",
    )
    parser.add_argument(
        "--monitoring-interval",
        type=float,
        default=15.0,
        metavar="S",
        help="Prometheus's scrape and evaluation interval (default 15)",
    )
    args = parser.parse_args(argv)
    if not 1024 <= args.base_port <= 65535 - 400:
        parser.error("--base-port must leave room for 400 ports above it, from 1024")
    if not 0.1 <= args.monitoring_interval <= 300:
        parser.error("--monitoring-interval must be between 0.1 and 300 seconds")
    plan = Plan(
        args.state_dir,
        args.base_port,
        args.web,
        args.app,
        not args.no_tls,
        args.monitoring,
        args.monitoring_interval,
    )
    try:
        return uvloop.run(run(plan))
    except (UpError, monitoring.MonitoringError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
