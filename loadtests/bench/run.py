"""Side-by-side benchmarks: foobar.lb against HAProxy, foobar.web against nginx, and the
full path, measured in one run on this machine, alternating, with the load generator
(wrk) and the server under test pinned to different cores.

    python -m loadtests.bench.run [--seconds S] [--rounds R] [--smoke] [--out docs/benchmarks.md]

For each pair: requests/s, p50 and p99 latency, CPU time per request of the server under
test (utime+stime from /proc), its peak RSS (VmHWM), and the ratio foobar/peer. Medians of
the rounds are reported: this machine is shared and noisy. Exits 1 if any run had errors
(socket errors or non-2xx answers). --smoke runs everything once for a second each, to
keep the harness working, and writes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
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

ROOT = Path(__file__).resolve().parents[2]
SERVER_CORE, LOAD_CORE = "0", "1"
CONNECTIONS = 50
TICKS = os.sysconf("SC_CLK_TCK")
TOOLS = ("haproxy", "nginx", "wrk", "taskset")


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


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float  # CPU microseconds per request, server under test
    rss_mib: float
    errors: int


@dataclass
class Pair:
    name: str
    metric: str  # "rps" or "MB/s"
    results: dict[str, list[Result]] = field(default_factory=dict)


def parse_wrk(output: str) -> tuple[float, float, float, int, float]:
    def duration(text: str) -> float:
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1])  # type: ignore[index]
    p50 = duration(re.search(r"\s50%\s+(\S+)", output)[1])  # type: ignore[index]
    p99 = duration(re.search(r"\s99%\s+(\S+)", output)[1])  # type: ignore[index]
    total = int(re.search(r"(\d+) requests in", output)[1])  # type: ignore[index]
    errors = 0
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        errors += sum(int(n) for n in match.groups())
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors += int(match[1])
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", output)
    megabytes = 0.0
    if transfer:
        scale = {"B": 1e-6, "KB": 1e-3, "MB": 1.0, "GB": 1e3}.get(transfer[2], 1.0)
        megabytes = float(transfer[1]) * scale
    return rps, p50, p99, errors or 0, megabytes if total else 0.0


def load(url: str, pid: int, seconds: float) -> tuple[Result, float]:
    before = cpu_seconds(pid)
    output = subprocess.run(
        [
            "taskset",
            "-c",
            LOAD_CORE,
            "wrk",
            "-t1",
            f"-c{CONNECTIONS}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    used = cpu_seconds(pid) - before
    rps, p50, p99, errors, megabytes = parse_wrk(output)
    requests = max(rps * seconds, 1.0)
    return Result(rps, p50, p99, used / requests * 1e6, peak_rss_mib(pid), errors), megabytes


@contextlib.contextmanager
def process(command: list[str], port: int, core: str = SERVER_CORE) -> Iterator[int]:
    # the peers log nothing (HAProxy without a log target, nginx access_log off): nor do we
    quiet = {**os.environ, "FOOBAR_LB_ACCESS_LOG": "false", "FOOBAR_WEB_ACCESS_LOG": "false"}
    proc = subprocess.Popen(
        ["taskset", "-c", core, *command],
        cwd=ROOT,
        env=quiet,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
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


class Bench:
    def __init__(self, folder: Path, seconds: float, rounds: int) -> None:
        self.folder = folder
        self.seconds = seconds
        self.rounds = rounds
        self.site = folder / "site"
        self.site.mkdir()
        (self.site / "1k.bin").write_bytes(os.urandom(1024))
        (self.site / "1m.bin").write_bytes(os.urandom(1024 * 1024))
        self.backend_ports = [free_port(), free_port()]
        self.pairs: list[Pair] = []
        self.commands: dict[str, str] = {}

    def nginx_conf(self, body: str) -> Path:
        conf = self.folder / f"nginx-{free_port()}.conf"
        conf.write_text(
            # master_process off: the one process serves, so its CPU and RSS are what we read
            f"worker_processes 1;\nmaster_process off;\ndaemon off;\npid {conf}.pid;\n"
            "error_log /dev/null;\n"
            "events { worker_connections 4096; }\n"
            f"http {{ access_log off; sendfile on; etag on; keepalive_requests 100000;\n"
            f"client_body_temp_path {self.folder}; proxy_temp_path {self.folder};\n"
            f"fastcgi_temp_path {self.folder}; uwsgi_temp_path {self.folder};\n"
            f"scgi_temp_path {self.folder};\n"
            f"{body}\n}}\n"
        )
        return conf

    @contextlib.contextmanager
    def backends(self) -> Iterator[None]:
        """Two small nginx servers answering "ok", on the load generator's core: cheap,
        and the same for both balancers."""
        servers = "".join(
            f"server {{ listen 127.0.0.1:{port}; location / {{ return 200 'ok\\n'; }} }}\n"
            for port in self.backend_ports
        )
        with process(
            ["nginx", "-c", str(self.nginx_conf(servers))], self.backend_ports[0], LOAD_CORE
        ):
            yield

    def haproxy(self, mode: str, port: int) -> list[str]:
        conf = self.folder / f"haproxy-{mode}.cfg"
        servers = "".join(
            f"  server s{i} 127.0.0.1:{p}\n" for i, p in enumerate(self.backend_ports)
        )
        http = "  option http-keep-alive\n" if mode == "http" else ""
        conf.write_text(
            "global\n  nbthread 1\n  maxconn 4096\n"
            f"defaults\n  mode {mode}\n  timeout connect 5s\n  timeout client 50s\n"
            f"  timeout server 50s\n{http}"
            f"frontend f\n  bind 127.0.0.1:{port}\n  default_backend b\n"
            f"backend b\n  balance roundrobin\n{servers}"
        )
        return ["haproxy", "-f", str(conf)]

    def foobar_lb(self, mode: str, port: int) -> list[str]:
        backends = [arg for p in self.backend_ports for arg in ("--backend", f"127.0.0.1:{p}")]
        return python(
            "foobar.lb",
            "--mode",
            mode,
            "--bind",
            f"127.0.0.1:{port}",
            "--algorithm",
            "roundrobin",
            *backends,
        )

    def run_pair(self, pair: Pair, commands: dict[str, tuple[list[str], int]], path: str) -> None:
        for label, (command, _) in commands.items():
            self.commands[f"{pair.name}: {label}"] = " ".join(command)
        for _ in range(self.rounds):
            for label, (command, port) in commands.items():  # alternating, round by round
                with process(command, port) as pid:
                    load(f"http://127.0.0.1:{port}{path}", pid, min(1.0, self.seconds))  # warm-up
                    result, megabytes = load(f"http://127.0.0.1:{port}{path}", pid, self.seconds)
                if pair.metric == "MB/s":
                    result.rps = megabytes
                pair.results.setdefault(label, []).append(result)
                print(
                    f"  {pair.name:<28} {label:<10} {result.rps:>10.1f} {pair.metric:<5} "
                    f"p99 {result.p99_ms:.2f} ms  errors {result.errors}",
                    flush=True,
                )
        self.pairs.append(pair)

    def balancers(self) -> None:
        with self.backends():
            for mode in ("http", "tcp"):
                port = free_port()
                self.run_pair(
                    Pair(f"lb {mode} mode", "rps"),
                    {
                        "foobar": (self.foobar_lb(mode, port), port),
                        "haproxy": (self.haproxy(mode, port), port),
                    },
                    "/",
                )

    def web(self) -> None:
        for name, path in (("web 1 KiB file", "/1k.bin"), ("web 1 MiB file", "/1m.bin")):
            port = free_port()
            nginx = self.nginx_conf(f"server {{ listen 127.0.0.1:{port}; root {self.site}; }}")
            self.run_pair(
                Pair(name, "MB/s" if "MiB" in name else "rps"),
                {
                    "foobar": (
                        python(
                            "foobar.web", "--bind", f"127.0.0.1:{port}", "--root", str(self.site)
                        ),
                        port,
                    ),
                    "nginx": (["nginx", "-c", str(nginx)], port),
                },
                path,
            )
        with self.backends():
            port = free_port()
            upstream = self.backend_ports[0]
            nginx = self.nginx_conf(
                f"upstream app {{ server 127.0.0.1:{upstream}; keepalive 128; }}\n"
                f"server {{ listen 127.0.0.1:{port}; location /api/ {{ proxy_pass http://app; "
                "proxy_http_version 1.1; proxy_set_header Connection ''; } }"
            )
            self.run_pair(
                Pair("web proxying /api/", "rps"),
                {
                    "foobar": (
                        python(
                            "foobar.web",
                            "--bind",
                            f"127.0.0.1:{port}",
                            "--root",
                            str(self.site),
                            "--upstream",
                            f"127.0.0.1:{upstream}",
                        ),
                        port,
                    ),
                    "nginx": (["nginx", "-c", str(nginx)], port),
                },
                "/api/ping",
            )

    def idle_connections(self, count: int) -> dict[str, float]:
        """foobar.lb holding `count` idle keep-alive connections: its RSS, and the rate other
        clients get from it, in rounds alternating with an identical balancer that holds none
        (measured one after the other, a drifting machine made the idle ones look costly or
        free by turns)."""
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
                    LOAD_CORE,
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
                holding: list[Result] = []
                quiet: list[Result] = []
                # more rounds than elsewhere: the ratio is near 1 and the machine's noise
                # alone moved one run's median to 0.7
                rounds = max(self.rounds, 5) if self.rounds > 1 else 1
                for _ in range(rounds):
                    quiet.append(
                        load(f"http://127.0.0.1:{quiet_port}/", quiet_pid, self.seconds)[0]
                    )
                    holding.append(load(f"http://127.0.0.1:{port}/", pid, self.seconds)[0])
            finally:
                if idle.stdin is not None:
                    idle.stdin.close()
                idle.wait(30)
        result = {
            "held": count,
            "rss_mib": rss,
            "rps_quiet": median(quiet, "rps"),
            "rps_holding": median(holding, "rps"),
            # each round's pair ran back to back: their ratio is spared the slower drift
            "ratio": statistics.median(h.rps / q.rps for h, q in zip(holding, quiet, strict=True)),
            "cpu_us_quiet": median(quiet, "cpu_us"),
            "cpu_us_holding": median(holding, "cpu_us"),
            "rounds": rounds,
            "errors": sum(run.errors for run in quiet + holding),
        }
        print(
            f"  idle keep-alive             {count} held, RSS {rss:.0f} MiB, "
            f"{result['rps_holding']:.0f} rps next to them, {result['rps_quiet']:.0f} without "
            f"({result['ratio']:.2f}x)",
            flush=True,
        )
        return result

    def full_path(self) -> Pair | None:
        """client → lb → web → app → replica, on the site `python -m foobar up` runs."""
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
        pair = Pair("full path GET /api/posts/{id}", "rps")
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
            post_id = re.search(r'"id":(\d+)', created)[1]  # type: ignore[index]
            time.sleep(1.0)  # let the replica apply it
            lb_pid = int(
                subprocess.run(
                    ["pgrep", "-f", f"foobar.lb --config {state}"], capture_output=True, text=True
                ).stdout.split()[0]
            )
            for _ in range(self.rounds):
                result, _ = load(
                    f"http://127.0.0.1:{base}/api/posts/{post_id}", lb_pid, self.seconds
                )
                pair.results.setdefault("foobar", []).append(result)
                print(
                    f"  {pair.name:<28} foobar     {result.rps:>10.1f} rps   errors {result.errors}"
                )
        finally:
            up.terminate()
            up.wait(120)
        self.pairs.append(pair)
        return pair


def median(results: list[Result], attribute: str) -> float:
    return float(statistics.median(getattr(result, attribute) for result in results))


def ratio(ours: list[Result], peer: list[Result], attribute: str) -> str:
    below = median(peer, attribute)
    # CPU time is counted in clock ticks (10 ms): a short run of a fast server may show 0
    return f"{median(ours, attribute) / below:.2f}" if below else "n/a"


def report(bench: Bench, seconds: float, rounds: int, idle: dict[str, float]) -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )

    def version(command: list[str], pattern: str) -> str:
        result = subprocess.run(command, capture_output=True, text=True)
        found = re.search(pattern, result.stdout + result.stderr)
        return found[1] if found else "?"

    versions = {
        "HAProxy": version(["haproxy", "-v"], r"version (\S+)"),
        "nginx": version(["nginx", "-v"], r"nginx/(\S+)"),
        "wrk": version(["wrk", "--version"], r"wrk (\S+)"),
        "Python": sys.version.split()[0],
    }
    lines = [
        "# Benchmarks",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} by `make bench` (`python -m loadtests.bench.run`), "
        f"{rounds} alternating rounds of {seconds:.0f} s per server, medians shown. Machine: "
        f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}; "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + ".",
        "",
        f"wrk runs on core {LOAD_CORE} with {CONNECTIONS} keep-alive connections, the server under "
        f"test alone on core {SERVER_CORE} (one process, one thread: HAProxy `nbthread 1`, nginx "
        "`worker_processes 1`, foobar without `--workers`). The balancers' backends are two "
        "nginx `return 200` servers on the load generator's core. CPU is the server's "
        "utime+stime per request. This machine is shared: take ratios, not absolutes.",
        "",
        "| test | server | req/s (or MB/s) | p50 ms | p99 ms | CPU µs/req | peak RSS MiB "
        "| errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ratios = []
    for pair in bench.pairs:
        for label, results in pair.results.items():
            lines.append(
                f"| {pair.name} | {label} | {median(results, 'rps'):,.0f}"
                f"{'' if pair.metric == 'rps' else ' MB/s'}"
                f" | {median(results, 'p50_ms'):.2f} | {median(results, 'p99_ms'):.2f} | "
                f"{median(results, 'cpu_us'):.1f} | {median(results, 'rss_mib'):.0f} | "
                f"{sum(r.errors for r in results)} |"
            )
        labels = list(pair.results)
        if len(labels) == 2:
            ours, peer = (pair.results[label] for label in labels)
            ratios.append(
                f"| {pair.name} | {ratio(ours, peer, 'rps')} | {ratio(ours, peer, 'cpu_us')} | "
                f"{ratio(ours, peer, 'p99_ms')} |"
            )
    lines += [
        "",
        f"foobar.lb holding {idle['held']:.0f} idle keep-alive connections: RSS "
        f"{idle['rss_mib']:.0f} MiB; other clients got {idle['rps_holding']:,.0f} req/s from it, "
        f"against {idle['rps_quiet']:,.0f} from an identical balancer holding none; "
        f"{idle['ratio']:.2f}x, the median of the ratios of {idle['rounds']:.0f} alternating "
        f"rounds. CPU per request: {idle['cpu_us_holding']:.1f} µs against "
        f"{idle['cpu_us_quiet']:.1f} µs.",
    ]
    lines += [
        "",
        "Ratios foobar / peer (throughput: higher is better; CPU and p99: lower is better):",
        "",
        "| test | throughput | CPU per request | p99 |",
        "|---|---|---|---|",
        *ratios,
        "",
        "Commands:",
        "",
    ]
    lines += [f"- {name}: `{command}`" for name, command in bench.commands.items()]
    lines += ["", "The peers' configurations, as generated:", ""]
    peers = sorted(bench.folder.glob("haproxy-*.cfg")) + sorted(bench.folder.glob("nginx-*.conf"))
    for config in peers:
        lines += [f"`{config.name}`:", "", "```", config.read_text().strip(), "```", ""]
    notes = Path(__file__).with_name("notes.md")
    if notes.exists():
        lines += ["", notes.read_text()]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        print(
            f"error: missing {', '.join(missing)}: apt-get install haproxy nginx wrk util-linux",
            file=sys.stderr,
        )
        return 2
    if os.cpu_count() and os.cpu_count() < 2:  # type: ignore[operator]
        print(
            "error: the benchmark pins the load and the server to two different cores",
            file=sys.stderr,
        )
        return 2
    seconds, rounds = (1.0, 1) if args.smoke else (args.seconds, args.rounds)
    with tempfile.TemporaryDirectory(prefix="foobar-bench-") as folder:
        bench = Bench(Path(folder), seconds, rounds)
        print("balancers ...", flush=True)
        bench.balancers()
        print("web ...", flush=True)
        bench.web()
        print("idle connections ...", flush=True)
        idle = bench.idle_connections(200 if args.smoke else 10_000)
        print("full path ...", flush=True)
        bench.full_path()
        text = report(bench, seconds, rounds, idle)
    if not args.smoke:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")
    print(text)
    errors = int(idle["errors"]) + sum(
        r.errors for pair in bench.pairs for results in pair.results.values() for r in results
    )
    if errors:
        print(f"error: {errors} failed requests during the runs", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
