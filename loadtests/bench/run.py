"""Side-by-side benchmarks: foobar.lb against HAProxy and the floor, foobar.web against
nginx and Python's floors (floor.py proxying, file_floor.py serving files), the full path,
measured in one run on this machine in alternating rounds; the method is written out in
report.py and in the report itself.

    python -m loadtests.bench.run [--seconds S] [--rounds R] [--only TEST,...] [--smoke]
                                  [--out FILE]

BENCH_SECONDS, BENCH_ROUNDS and BENCH_ONLY set the same from the environment (`make bench
BENCH_ROUNDS=1 BENCH_SECONDS=2 BENCH_ONLY="lb http"` for a quick look). A full run (at least
5 rounds, every test) writes docs/benchmarks.md; a quick one writes var/bench/benchmarks.md,
so that a noisy look never replaces the published numbers. Exits 1 if any run had errors
(socket errors or non-2xx answers). --smoke runs everything once for a second, to keep the
harness working, and writes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from foobar.up import free_base_port
from loadtests.bench import peers, report
from loadtests.bench.measure import LOAD_CORE, SERVER_CORE, Result, load
from loadtests.bench.verdicts import (
    FLOOR,
    FOOBAR,
    HAPROXY,
    LB_HTTP,
    LB_TCP,
    LOGGED,
    NGINX,
    WEB_1K,
    WEB_1M,
    WEB_PROXY,
    verdicts,
)

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("haproxy", "nginx", "wrk", "taskset", "curl")
FULL_PATH = "full path GET /api/posts/{id}"
IDLE = "idle connections"
MIN_ROUNDS = 5  # fewer gives no median worth publishing


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@dataclass(frozen=True)
class Contender:
    """One server in a test: the row's label, how to start it, where it listens."""

    label: str
    command: list[str]
    port: int
    access_log: bool = False

    @property
    def environment(self) -> dict[str, str]:
        """foobar's access log switch (the peers' logs are set in their configurations)."""
        log = "true" if self.access_log else "false"
        return {"FOOBAR_LB_ACCESS_LOG": log, "FOOBAR_WEB_ACCESS_LOG": log}

    def shell(self) -> str:
        """The command as the report shows it."""
        tier = next((part for part in self.command if part.startswith("foobar.")), "")
        variable = f"FOOBAR_{tier.removeprefix('foobar.').upper()}_ACCESS_LOG"
        prefix = f"{variable}={self.environment[variable]} " if tier else ""
        return prefix + " ".join(self.command)


@contextlib.contextmanager
def process(
    command: list[str],
    port: int,
    core: int = SERVER_CORE,
    environment: dict[str, str] | None = None,
) -> Iterator[int]:
    env = {**os.environ, **(environment or {})}
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            ["taskset", "-c", str(core), *command],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        try:
            try:
                wait_port(port)
            except RuntimeError:
                errors.seek(0)
                said = errors.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"{' '.join(command)} did not start: {said}") from None
            yield proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


@dataclass
class Bench:
    folder: Path
    seconds: float
    rounds: int
    only: list[str]
    results: dict[str, dict[str, list[Result]]] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    commands: dict[str, str] = field(default_factory=dict)
    backend_ports: list[int] = field(default_factory=lambda: [free_port(), free_port()])
    backends_command: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.site = self.folder / "site"
        self.site.mkdir()
        (self.site / "1k.bin").write_bytes(os.urandom(1024))
        (self.site / "1m.bin").write_bytes(os.urandom(1024 * 1024))

    def wanted(self, test: str) -> bool:
        return not self.only or any(part in test for part in self.only)

    def nginx(self, servers: str) -> list[str]:
        conf = self.folder / f"nginx-{free_port()}.conf"
        conf.write_text(peers.nginx(conf, servers))
        return ["nginx", "-c", str(conf)]

    @contextlib.contextmanager
    def backends(self) -> Iterator[None]:
        """Two small nginx servers answering "ok", on the load generator's core: cheap,
        and the same for every contender."""
        if not self.backends_command:
            self.backends_command = self.nginx(peers.nginx_backends(self.backend_ports))
        with process(self.backends_command, self.backend_ports[0], LOAD_CORE):
            yield

    def run_test(self, test: str, contenders: list[Contender], path: str) -> None:
        megabytes = test == WEB_1M
        self.units[test] = "MB/s" if megabytes else "req/s"
        for contender in contenders:
            self.commands[f"{test}: {contender.label}"] = contender.shell()
        rows = self.results.setdefault(test, {})
        for round_ in range(self.rounds):
            # reversed every other round: a drifting machine favours no one
            for contender in contenders if round_ % 2 == 0 else contenders[::-1]:
                url = f"http://127.0.0.1:{contender.port}{path}"
                with process(
                    contender.command, contender.port, environment=contender.environment
                ) as pid:
                    load(url, pid, min(1.0, self.seconds))  # warm-up
                    result = load(url, pid, self.seconds, megabytes)
                rows.setdefault(contender.label, []).append(result)
                print(
                    f"  {test:<20} {contender.label:<22} {result.rate:>10.1f} "
                    f"{self.units[test]:<5} CPU {result.cpu_us:6.1f} µs/req "
                    f"(user {result.user_us:5.1f})  "
                    f"load core {result.load_busy:4.0%}  errors {result.errors}"
                    + (f" ({result.error_kinds})" if result.errors else ""),
                    flush=True,
                )

    def foobar(self, tier: str, *args: str) -> list[str]:
        return python(f"foobar.{tier}", "--name", peers.NAME, *args)

    def haproxy(self, mode: str, port: int) -> list[str]:
        conf = self.folder / f"haproxy-{mode}.cfg"
        conf.write_text(peers.haproxy(mode, port, self.backend_ports))
        return ["haproxy", "-f", str(conf)]

    def floor(self, port: int, backends: list[int]) -> list[str]:
        return python(
            "loadtests.bench.floor", f"127.0.0.1:{port}", *(f"127.0.0.1:{p}" for p in backends)
        )

    def balancers(self) -> None:
        backends = [arg for p in self.backend_ports for arg in ("--backend", f"127.0.0.1:{p}")]
        for test, mode in ((LB_HTTP, "http"), (LB_TCP, "tcp")):
            if not self.wanted(test):
                continue
            port = free_port()
            lb = self.foobar(
                "lb", "--mode", mode, "--bind", f"127.0.0.1:{port}", "--algorithm", "roundrobin"
            )
            contenders = [Contender(FOOBAR, lb + backends, port)]
            if mode == "http":
                contenders += [
                    Contender(LOGGED, lb + backends, port, access_log=True),
                    Contender(FLOOR, self.floor(port, self.backend_ports), port),
                ]
            contenders.append(Contender(HAPROXY, self.haproxy(mode, port), port))
            with self.backends():
                self.run_test(test, contenders, "/")

    def web(self) -> None:
        if self.wanted(WEB_PROXY):
            port, upstream = free_port(), self.backend_ports[0]
            web = self.foobar(
                "web",
                "--bind",
                f"127.0.0.1:{port}",
                "--root",
                str(self.site),
                "--upstream",
                f"127.0.0.1:{upstream}",
            )
            contenders = [
                Contender(FOOBAR, web, port),
                Contender(LOGGED, web, port, access_log=True),
                Contender(FLOOR, self.floor(port, [upstream]), port),
                Contender(NGINX, self.nginx(peers.nginx_proxy(port, upstream)), port),
            ]
            with self.backends():
                self.run_test(WEB_PROXY, contenders, "/api/ping")
        for test, path in ((WEB_1K, "/1k.bin"), (WEB_1M, "/1m.bin")):
            if not self.wanted(test):
                continue
            port = free_port()
            web = self.foobar("web", "--bind", f"127.0.0.1:{port}", "--root", str(self.site))
            contenders = [Contender(FOOBAR, web, port)]
            if test == WEB_1K:
                contenders.append(Contender(LOGGED, web, port, access_log=True))
            floor = python("loadtests.bench.file_floor", f"127.0.0.1:{port}", str(self.site))
            contenders += [
                Contender(FLOOR, floor, port),
                Contender(NGINX, self.nginx(peers.nginx_files(port, self.site)), port),
            ]
            self.run_test(test, contenders, path)

    def idle_connections(self, count: int) -> str:
        """foobar.lb holding `count` idle keep-alive connections: its RSS, and the rate other
        clients get from it, in rounds alternating with an identical balancer that holds none
        (measured one after the other, a drifting machine made the idle ones look costly or
        free by turns). Returns the report's paragraph."""
        backends = "".join(
            f'[[lb.backends.servers]]\nname = "s{i}"\naddress = "127.0.0.1:{p}"\n'
            for i, p in enumerate(self.backend_ports)
        )

        def balancer(name: str) -> tuple[list[str], int]:
            port = free_port()
            config = self.folder / f"{name}-lb.toml"
            config.write_text(
                '[lb]\naccess_log = false\n[[lb.frontends]]\nname = "f"\n'
                f'bind = "127.0.0.1:{port}"\nbackend = "b"\ntimeout_http_keep_alive = 600.0\n'
                # idle clients hold no server connection: more than the default maxconn
                # (half the open-files limit) may be open, as an operator would set it
                f"maxconn = {count + 1000}\n"
                f'timeout_client = 600.0\n[[lb.backends]]\nname = "b"\n{backends}'
            )
            return python("foobar.lb", "--config", str(config)), port

        holding_command, port = balancer("holding")
        quiet_command, quiet_port = balancer("quiet")
        with (
            self.backends(),
            process(holding_command, port) as pid,
            process(quiet_command, quiet_port) as quiet_pid,
        ):
            idle = subprocess.Popen(
                # on the load generator's core: it must not take the server's
                [
                    "taskset",
                    "-c",
                    str(LOAD_CORE),
                    *python("loadtests.bench.idle", "127.0.0.1", str(port), str(count)),
                ],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert idle.stdout is not None
                line = idle.stdout.readline()
                if not line.startswith("held"):
                    raise RuntimeError(f"could not hold {count} connections: {line!r}")
                status = Path(f"/proc/{pid}/status").read_text().splitlines()
                rss = (
                    next(float(row.split()[1]) for row in status if row.startswith("VmRSS:")) / 1024
                )
                rows = self.results.setdefault(IDLE, {})
                self.units[IDLE] = "req/s"
                quiet = rows.setdefault("foobar.lb holding none", [])
                holding = rows.setdefault(f"foobar.lb holding {count}", [])
                for _ in range(self.rounds):
                    quiet.append(load(f"http://127.0.0.1:{quiet_port}/", quiet_pid, self.seconds))
                    holding.append(load(f"http://127.0.0.1:{port}/", pid, self.seconds))
            finally:
                if idle.stdin is not None:
                    idle.stdin.close()
                idle.wait(30)
        # each round's pair ran back to back: their ratio is spared the slower drift
        ratio = statistics.median(h.rate / q.rate for h, q in zip(holding, quiet, strict=True))
        text = (
            f"foobar.lb holding {count} idle keep-alive connections: RSS {rss:.0f} MiB; other "
            f"clients got {ratio:.2f}x the rate an identical balancer holding none gave them "
            f"(the median of the ratios of {self.rounds} alternating rounds; rows "
            f'"{IDLE}" above).'
        )
        print(f"  {text}", flush=True)
        return text

    def full_path(self) -> None:
        """client → lb → web → app → replica, on the site `python -m foobar up` runs, the
        access logs on (the site's default); the CPU is the balancer's."""
        base = free_base_port(webs=1, apps=1, tls=False)
        state = self.folder / "up"
        up = subprocess.Popen(
            python(
                "foobar",
                "up",
                "--no-tls",
                "--web",
                "1",
                "--app",
                "1",
                "--base-port",
                str(base),
                "--state-dir",
                str(state),
            ),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.units[FULL_PATH] = "req/s"
        rows = self.results.setdefault(FULL_PATH, {})
        try:
            wait_port(base, 120)
            wait_port(base + 100, 60)
            created = subprocess.run(
                [
                    "curl",
                    "-s",
                    "-X",
                    "POST",
                    "-H",
                    "Content-Type: application/json",
                    "-d",
                    '{"author":"bench","title":"bench","body":"bench"}',
                    f"http://127.0.0.1:{base}/api/posts",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            found = re.search(r'"id":(\d+)', created)
            if not found:
                raise RuntimeError(f"could not create a post: {created!r}")
            time.sleep(1.0)  # let the replica apply it
            lb_pid = int(
                subprocess.run(
                    ["pgrep", "-f", f"foobar.lb --config {state}"], capture_output=True, text=True
                ).stdout.split()[0]
            )
            for _ in range(self.rounds):
                url = f"http://127.0.0.1:{base}/api/posts/{found[1]}"
                result = load(url, lb_pid, self.seconds)
                rows.setdefault(FOOBAR, []).append(result)
                print(f"  {FULL_PATH:<20} {result.rate:>10.1f} req/s  errors {result.errors}")
        finally:
            up.terminate()
            up.wait(120)


def destination(rounds: int, only: list[str]) -> Path:
    """Where a run's report goes: a full run replaces the published one, a quick look does
    not."""
    full = rounds >= MIN_ROUNDS and not only
    return ROOT / ("docs/benchmarks.md" if full else "var/bench/benchmarks.md")


def setting(name: str, default: str) -> str:
    return os.environ.get(name) or default


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=float(setting("BENCH_SECONDS", "5")))
    parser.add_argument("--rounds", type=int, default=int(setting("BENCH_ROUNDS", "7")))
    parser.add_argument(
        "--only",
        default=setting("BENCH_ONLY", ""),
        help="comma-separated parts of test names (e.g. 'lb http,1 KiB,idle')",
    )
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        print(
            f"error: missing {', '.join(missing)}: apt-get install haproxy nginx wrk "
            "util-linux curl",
            file=sys.stderr,
        )
        return 2
    if (os.cpu_count() or 1) < 2:
        print(
            "error: the benchmark pins the load and the server to two different cores",
            file=sys.stderr,
        )
        return 2
    seconds, rounds = (1.0, 1) if args.smoke else (args.seconds, args.rounds)
    only = [part.strip() for part in args.only.split(",") if part.strip()]
    out = args.out or destination(rounds, only)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="foobar-bench-") as folder:
        bench = Bench(Path(folder), seconds, rounds, only)
        print("balancers ...", flush=True)
        bench.balancers()
        print("web ...", flush=True)
        bench.web()
        idle = ""
        if bench.wanted(IDLE):
            print("idle connections ...", flush=True)
            idle = bench.idle_connections(200 if args.smoke else 10_000)
        if bench.wanted(FULL_PATH):
            print("full path ...", flush=True)
            bench.full_path()
        configs = sorted(Path(folder).glob("haproxy-*.cfg")) + sorted(
            Path(folder).glob("nginx-*.conf")
        )
        text = report.render(
            report.machine(seconds, rounds),
            bench.results,
            bench.units,
            verdicts(bench.results),
            idle,
            bench.commands,
            configs,
        )
    if not args.smoke:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")
    print(text)
    print(f"the benchmark took {time.monotonic() - started:.0f} s", flush=True)
    errors = sum(
        r.errors for rows in bench.results.values() for runs in rows.values() for r in runs
    )
    if errors:
        print(f"error: {errors} failed requests during the runs", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
