"""The load test and the benchmark harness: their pure parts (wrk's output, the load
core's ticks, the verdicts computed from numbers, the peers' configurations as HAProxy and
nginx read them, the floors proxying and serving files over real sockets), and smoke runs
of the locust load test and of the whole harness, so the scripts never rot: they must run
without a failed request. Speed is the benchmark's business."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import aiomysql
import pytest

from foobar.up import free_base_port
from loadtests.bench import file_floor, floor, instructions, peers, report, rules
from loadtests.bench.measure import Result, core_ticks, cpu_seconds, parse_wrk
from loadtests.bench.run import destination
from loadtests.bench.verdicts import (
    FLOOR,
    FOOBAR,
    LB_HTTP,
    NGINX,
    WEB_1K,
    WEB_1M,
    Target,
    floor_verdicts,
    judge,
    verdicts,
)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)

WRK_OUTPUT = """\
Running 5s test @ http://127.0.0.1:41000/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.56ms    1.55ms  11.82ms   81.03%
    Req/Sec    22.10k     1.20k   24.02k    60.00%
  Latency Distribution
     50%  850.00us
     75%    3.04ms
     90%    4.40ms
     99%    1.20s
  110500 requests in 5.00s, 1.85GB read
  Socket errors: connect 0, read 2, write 1, timeout 4
  Non-2xx or 3xx responses: 5
Requests/sec:  22100.35
Transfer/sec:    378.50MB
"""


def test_wrk_output_is_read_with_its_units() -> None:
    run = parse_wrk(WRK_OUTPUT)
    assert run.rps == 22100.35
    assert run.p50_ms == pytest.approx(0.85)
    assert run.p99_ms == pytest.approx(1200.0)
    assert run.requests == 110500
    assert run.errors == 2 + 1 + 4 + 5
    assert run.error_kinds == "read 2, write 1, timeout 4, non-2xx/3xx 5"
    assert run.megabytes_per_s == pytest.approx(378.5)


def test_wrk_output_without_errors_or_with_a_missing_field() -> None:
    clean = "\n".join(
        line for line in WRK_OUTPUT.splitlines() if "errors" not in line and "Non-2xx" not in line
    )
    assert (parse_wrk(clean).errors, parse_wrk(clean).error_kinds) == (0, "")
    with pytest.raises(ValueError, match="Requests/sec"):
        parse_wrk(clean.replace("Requests/sec", "Requests"))


def test_the_load_core_busy_share_counts_steal_and_not_iowait() -> None:
    stat = "cpu  9 9 9 9 9 9 9 9 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\ncpu1 10 2 5 70 3 1 2 7 0 0\n"
    assert core_ticks(1, stat) == (10 + 2 + 5 + 1 + 2 + 7, 100)
    with pytest.raises(ValueError):
        core_ticks(2, stat)


def result(rate: float, cpu_us: float, load_busy: float = 0.5) -> Result:
    return Result(rate, 1.0, 2.0, cpu_us, 40.0, 0, load_busy, load_busy / 2)


def test_the_report_says_which_rounds_had_errors_and_of_what_kind() -> None:
    """A stall (wrk's timeouts) and a server that answered errors read differently."""
    clean = result(30_000, 30.0)
    stalled = dataclasses.replace(clean, errors=50, error_kinds="timeout 50")
    [_, _, row] = report.results_table(
        {"lb http mode": {"foobar": [clean, stalled]}}, {"lb http mode": "req/s"}
    )
    assert row.endswith("| 50 (round 2: timeout 50) |")
    [_, _, row] = report.results_table(
        {"lb http mode": {"foobar": [clean]}}, {"lb http mode": "req/s"}
    )
    assert row.endswith("| 0 |")


def test_the_report_shows_the_user_share_of_the_cpu() -> None:
    """The server's own code, beside its CPU in all: the kernel's share moves with the
    machine, the user share with the server."""
    rounds = [
        dataclasses.replace(result(30_000, cpu), user_us=user)
        for cpu, user in ((30.0, 10.0), (34.0, 12.0), (31.0, 14.0))
    ]
    [_, _, row] = report.results_table(
        {"web 1 MiB file": {"foobar": rounds}}, {"web 1 MiB file": "MB/s"}
    )
    assert "| 31.0 (30.0-34.0) | 12.0 |" in row
    user, system = cpu_seconds(os.getpid())
    assert user > 0 and system >= 0


@pytest.mark.parametrize(
    ("target", "ours", "peer", "judged_on", "ratio", "met"),
    [
        # throughput >= 0.6x: rounds at 0.5x, 0.6x and 0.7x, met exactly at the bar
        (
            Target(LB_HTTP, FOOBAR, "haproxy", "throughput", 0.6),
            [result(50_000, 30), result(60_000, 30), result(70_000, 30)],
            [result(100_000, 10), result(100_000, 10), result(100_000, 10)],
            "throughput",
            0.6,
            True,
        ),
        (
            Target(WEB_1K, FOOBAR, NGINX, "throughput", 0.7),
            [result(30_000, 30)],
            [result(100_000, 10)],
            "throughput",
            0.3,
            False,
        ),
        # the load core saturated in the peer's runs: judged on CPU, <= 1/0.6x the peer's
        (
            Target(LB_HTTP, FOOBAR, "haproxy", "throughput", 0.6),
            [result(90_000, 16)],
            [result(90_000, 10, load_busy=0.97)],
            "cpu",
            1.6,
            True,
        ),
        (
            Target(LB_HTTP, FOOBAR, "haproxy", "throughput", 0.6),
            [result(90_000, 17, load_busy=0.95)],
            [result(90_000, 10)],
            "cpu",
            1.7,
            False,
        ),
        # a CPU target stays a CPU target, saturated or not
        (
            Target(LB_HTTP, FOOBAR, FLOOR, "cpu", 1.5),
            [result(20_000, 45)],
            [result(70_000, 15)],
            "cpu",
            3.0,
            False,
        ),
        (
            Target(LB_HTTP, FOOBAR, FLOOR, "cpu", 1.5),
            [result(20_000, 22.5, load_busy=0.99)],
            [result(70_000, 15, load_busy=0.99)],
            "cpu",
            1.5,
            True,
        ),
        # no CPU counted for the peer (a run too short for a clock tick): never met
        (
            Target(LB_HTTP, FOOBAR, FLOOR, "cpu", 1.5),
            [result(20_000, 22.5)],
            [result(70_000, 0.0)],
            "cpu",
            float("inf"),
            False,
        ),
    ],
)
def test_verdicts_are_computed_from_the_numbers(
    target: Target,
    ours: list[Result],
    peer: list[Result],
    judged_on: str,
    ratio: float,
    met: bool,
) -> None:
    verdict = judge(target, ours, peer)
    assert verdict.judged_on == judged_on
    assert verdict.ratio == pytest.approx(ratio)
    assert verdict.met is met
    assert verdict.saturated is (judged_on != target.on)


def test_per_round_ratios_pair_each_round_and_only_measured_targets_are_judged() -> None:
    ours = [result(10, 1), result(30, 1), result(20, 1)]
    peer = [result(20, 1), result(20, 1), result(20, 1)]
    found = verdicts({WEB_1K: {FOOBAR: ours, NGINX: peer}})
    assert [str(v.target) for v in found] == [f"{WEB_1K}: foobar throughput >= 0.7x nginx"]
    assert (found[0].rounds.low, found[0].rounds.median, found[0].rounds.high) == (0.5, 1.0, 1.5)
    assert found[0].bar == ">= 0.70x"
    full = [result(20, 1, load_busy=0.95)]
    assert verdicts({WEB_1K: {FOOBAR: full, NGINX: peer[:1]}})[0].bar == "<= 1.43x"


def test_a_verdict_pairs_each_round_so_the_machines_drift_cancels_out() -> None:
    """The machine slows down round by round, and the peer's second run met a hiccup:
    each round foobar did 0.9x the peer, which the rounds' median says; the ratio of the
    two medians pairs runs of different rounds and says 1.2x."""
    ours = [result(900, 1), result(720, 1), result(540, 1)]
    peer = [result(1000, 1), result(500, 1), result(600, 1)]
    [verdict] = verdicts({WEB_1K: {FOOBAR: ours, NGINX: peer}})
    assert verdict.ratio == pytest.approx(0.9) and verdict.of_medians == pytest.approx(1.2)
    assert verdict.met and (verdict.rounds.low, verdict.rounds.high) == (0.9, 1.44)
    row = report.verdict_table([verdict])[2]
    assert "| >= 0.70x | 0.90x (0.90x-1.44x) | 1.20x | yes |" in row


def test_the_floors_are_held_to_foobars_bars_against_the_peers_only() -> None:
    """A reference beside the verdicts: the floor against nginx with the 1 MiB file's bar;
    never a bar foobar is held to against the floor itself (lb http's 1.5x)."""
    saturated = [result(1_000, 100, load_busy=0.99)]
    results = {
        WEB_1M: {FOOBAR: [result(1_000, 140, 0.99)], FLOOR: saturated, NGINX: [result(1, 90)]},
        LB_HTTP: {FOOBAR: [result(1, 30)], FLOOR: [result(1, 20)]},
    }
    [floor] = floor_verdicts(results)
    assert str(floor.target) == f"{WEB_1M}: floor CPU/request <= 1.2x nginx"
    assert floor.ratio == pytest.approx(100 / 90) and floor.met
    assert [v.met for v in verdicts(results)] == [True, False]  # lb vs floor, 1 MiB vs nginx
    text = report.verdict_table(floor_verdicts(results))[2]
    assert text.startswith(f"| {WEB_1M}: floor CPU/request <= 1.2x nginx | CPU per request |")


def test_only_a_full_run_replaces_the_published_report() -> None:
    assert destination(5, []) == ROOT / "docs" / "benchmarks.md"
    assert destination(4, []) == ROOT / "var" / "bench" / "benchmarks.md"
    assert destination(5, ["lb http"]) == ROOT / "var" / "bench" / "benchmarks.md"


@pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("haproxy", "nginx")),
    reason="needs haproxy and nginx (make test installs them)",
)
def test_the_peers_configurations_do_foobars_work_and_load(tmp_path: Path) -> None:
    for mode in ("http", "tcp"):
        conf = tmp_path / f"haproxy-{mode}.cfg"
        conf.write_text(peers.haproxy(mode, 18080, [18081, 18082]))
        checked = subprocess.run(["haproxy", "-c", "-f", str(conf)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    http = peers.haproxy("http", 18080, [18081, 18082])
    for directive in ("option forwardfor", "X-Forwarded-Proto", f"X-Foobar-LB {peers.NAME}"):
        assert directive in http
    proxy = peers.nginx_proxy(18080, 18081)
    for header in ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Real-IP"):
        assert f"proxy_set_header {header}" in proxy
    files = peers.nginx_files(18083, tmp_path)
    assert "open_file_cache " in files and f"add_header X-Foobar-Web {peers.NAME}" in files
    conf = tmp_path / "nginx.conf"
    conf.write_text(peers.nginx(conf, proxy + files + peers.nginx_backends([18084, 18085])))
    checked = subprocess.run(
        ["nginx", "-t", "-e", "/dev/null", "-c", str(conf)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_instructions_counts_tcp_mode_against_haproxy_in_tcp_mode(tmp_path: Path) -> None:
    lb = instructions.command("lb-tcp", 18080, [18081, 18082], tmp_path)
    assert lb[lb.index("--mode") + 1] == "tcp" and "--backend=127.0.0.1:18082" in lb
    haproxy = instructions.command("haproxy-tcp", 18080, [18081, 18082], tmp_path)
    assert haproxy[:2] == ["haproxy", "-f"]
    assert Path(haproxy[2]).read_text() == peers.haproxy("tcp", 18080, [18081, 18082])
    with pytest.raises(SystemExit):
        instructions.command("nginx", 18080, [18081], tmp_path)


async def test_the_floor_relays_round_robin_with_x_forwarded_for_appended() -> None:
    seen: list[tuple[bytes, bytes]] = []

    async def backend(name: bytes) -> asyncio.Server:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while head := await reader.readuntil(b"\r\n\r\n"):
                seen.append((name, head))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n" + name)

        return await asyncio.start_server(answer, "127.0.0.1", 0)

    backends = [await backend(b"a1"), await backend(b"b2")]
    ports = [server.sockets[0].getsockname()[1] for server in backends]
    proxy = await floor.serve("127.0.0.1:0", [f"127.0.0.1:{port}" for port in ports])
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.sockets[0].getsockname()[1])
    try:
        answers = []
        for _ in range(3):  # one keep-alive connection
            writer.write(
                b"GET /api/ping HTTP/1.1\r\nHost: bench\r\nX-Forwarded-For: 192.0.2.7\r\n\r\n"
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            answers.append(await reader.readexactly(2))
        # two pipelined, the last asking to close: answered in order, then closed
        writer.write(
            b"GET /1 HTTP/1.1\r\nHost: bench\r\n\r\n"
            b"GET /2 HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
        )
        rest = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        proxy.close()
        for server in backends:
            server.close()
    assert answers == [b"a1", b"b2", b"a1"]
    assert rest.count(b"HTTP/1.1 200 OK") == 2 and rest.endswith(b"a1")
    assert [name for name, _ in seen] == [b"a1", b"b2", b"a1", b"b2", b"a1"]
    assert seen[0][1] == (
        b"GET /api/ping HTTP/1.1\r\nHost: bench\r\nX-Forwarded-For: 192.0.2.7, 127.0.0.1\r\n\r\n"
    )
    assert b"X-Forwarded-For: 127.0.0.1\r\n" in seen[3][1]
    assert all(b"Connection" not in head for _, head in seen)


async def test_the_floor_with_the_balancers_rules_relays_as_foobar_lb_does() -> None:
    """rules.py, the measuring stick: the head as received with the forwarding fields
    added, the answer's Connection field out and X-Foobar-LB in, its Host checked."""
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            seen.append(head)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"
            )

    backend = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = backend.sockets[0].getsockname()[1]
    proxy = await floor.serve("127.0.0.1:0", [f"127.0.0.1:{port}"], rules.Client)
    address = proxy.sockets[0].getsockname()
    reader, writer = await asyncio.open_connection(*address)
    try:
        for _ in range(2):  # one keep-alive connection, one pooled upstream connection
            writer.write(b"GET /x HTTP/1.1\r\nHost: bench\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head == (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Foobar-LB: bench\r\n\r\n")
            assert await reader.readexactly(2) == b"ok"
        refused = await asyncio.open_connection(*address)
        refused[1].write(b"GET /x HTTP/1.1\r\nHost: a b\r\n\r\n")
        assert await asyncio.wait_for(refused[0].read(), 5) == b""  # an invalid Host
        refused[1].close()
    finally:
        writer.close()
        proxy.close()
        backend.close()
    assert (
        seen
        == [
            b"GET /x HTTP/1.1\r\nHost: bench\r\nX-Forwarded-For: 127.0.0.1\r\n"
            b"X-Forwarded-Proto: http\r\n\r\n"
        ]
        * 2
    )


async def test_the_file_floor_serves_files_whole_on_one_connection(tmp_path: Path) -> None:
    small, large = os.urandom(1024), os.urandom(3 * 1024 * 1024)  # large: past a full socket
    root = tmp_path / "site"
    root.mkdir()
    (root / "1k.bin").write_bytes(small)
    (root / "big.bin").write_bytes(large)
    (tmp_path / "secret").write_bytes(b"not served")
    server = await file_floor.serve("127.0.0.1:0", str(root))
    address = server.sockets[0].getsockname()
    reader, writer = await asyncio.open_connection(*address)

    async def get(
        target: bytes, fields: bytes = b"", method: bytes = b"GET "
    ) -> tuple[bytes, bytes]:
        writer.write(b"%s%s HTTP/1.1\r\nHost: bench\r\n%s\r\n" % (method, target, fields))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        return head, await asyncio.wait_for(reader.readexactly(length), 5)

    try:
        for _ in range(2):  # found once, then from what was kept
            head, body = await get(b"/1k.bin?v=1")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == small
            assert b'ETag: "' in head and b"\r\nDate: " in head
            assert (await get(b"/big.bin"))[1] == large
        writer.write(b"GET /1k")  # a target cut between two reads
        await writer.drain()
        await asyncio.sleep(0.05)
        assert (await get(b".bin", method=b""))[1] == small
        assert (await get(b"/nothing"))[0].startswith(b"HTTP/1.1 404 Not Found\r\n")
        assert (await get(b"/../secret"))[0].startswith(b"HTTP/1.1 404 Not Found\r\n")
        head, body = await get(b"/1k.bin", b"Connection: close\r\n")
        assert body == small
        assert await asyncio.wait_for(reader.read(), 5) == b""  # then it closed
    finally:
        writer.close()
        server.close()


async def test_locust_visitors_against_the_site(tmp_path: Path) -> None:
    base = free_base_port(webs=1, apps=2, tls=False)
    site = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "foobar",
        "up",
        "--no-tls",
        "--web",
        "1",
        "--app",
        "2",
        "--base-port",
        str(base),
        "--state-dir",
        str(tmp_path / "site"),
        cwd=ROOT,
        # the apps check the replica at start, then not for a minute: stopped below, it
        # stays in use, stale, and only the GTID cookie makes a read-back see its post
        env={**os.environ, "FOOBAR_APP_HEALTH_INTERVAL": "60"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert site.stdout is not None
    try:
        while b"www.foobar.com is up" not in await asyncio.wait_for(site.stdout.readline(), 120):
            pass
        # db2 is the replica (db1 the first primary); each agent keeps its server under
        # <state>/db/<agent>/<server>/
        replica = await aiomysql.connect(
            unix_socket=str(tmp_path / "site" / "db" / "db2" / "db2" / "mysqld.sock"), user="root"
        )
        async with replica.cursor() as cursor:
            await cursor.execute("STOP SLAVE SQL_THREAD")
        replica.close()
        locust = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "locust",
            "-f",
            "loadtests/locustfile.py",
            "--headless",
            "--host",
            f"http://127.0.0.1:{base}",
            "-u",
            "6",
            "-r",
            "6",
            "-t",
            "5s",
            "--csv",
            str(tmp_path / "smoke"),
            "--only-summary",
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(locust.communicate(), 120)
        assert locust.returncode == 0, out.decode()[-3000:]
    finally:
        site.send_signal(signal.SIGINT)
        await asyncio.wait_for(site.wait(), 90)
    with (tmp_path / "smoke_stats.csv").open() as file:
        rows = {row["Name"]: row for row in csv.DictReader(file)}
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 20 and int(total["Failure Count"]) == 0
    assert "/api/posts" in rows


@pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("haproxy", "nginx", "wrk", "taskset", "curl")),
    reason="the benchmark needs haproxy, nginx, wrk, taskset and curl (make test installs them)",
)
async def test_benchmark_harness_runs_without_errors() -> None:
    bench = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loadtests.bench.run",
        "--smoke",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(bench.communicate(), 240)
    text = out.decode()
    assert bench.returncode == 0, text[-3000:]
    for row in (
        "lb http mode | foobar",
        "lb http mode | foobar, access log on",
        "lb http mode | floor",
        "lb http mode | haproxy",
        "lb tcp mode | haproxy",
        "web 1 KiB file | foobar, access log on",
        "web 1 KiB file | nginx",
        "web 1 KiB file | floor",
        "web 1 MiB file | floor",
        "web 1 MiB file | nginx",
        "web proxying /api/ | floor",
        "web proxying /api/ | nginx",
        "full path GET /api/posts/{id} | foobar",
    ):
        assert f"| {row} |" in text, row
    # one verdict per target, computed (a smoke run's numbers decide nothing, but they are there)
    assert text.count("| lb http mode: foobar ") == 2
    assert "| lb tcp mode: foobar CPU/request <= 1.1x haproxy |" in text
    assert "| web 1 KiB file: foobar, access log on throughput >= 0.9x foobar |" in text
    assert "| web 1 MiB file: floor CPU/request <= 1.2x nginx |" in text  # a reference
