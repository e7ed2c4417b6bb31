"""docs/benchmarks.md as `make bench` writes it: the method, every row's median and
min-max over the rounds, and the verdicts the harness computed against the targets."""

from __future__ import annotations

import math
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from loadtests.bench.measure import CONNECTIONS, LOAD_CORE, SATURATED, SERVER_CORE, Result
from loadtests.bench.verdicts import Spread, Verdict, floor_verdicts, saturated

METHOD = f"""\
## Method

wrk runs on core {LOAD_CORE} with {CONNECTIONS} keep-alive connections, the server under test
alone on core {SERVER_CORE}: one process, one thread (HAProxy `nbthread 1`, nginx
`worker_processes 1`, foobar without `--workers`). The balancers' backends are two nginx
`return 200` servers on the load generator's core. Each server is started afresh for each
run, warmed up for a second, then measured.

- **Three contenders per proxy test.** foobar, the peer (HAProxy for the balancer, nginx for
  the web tier) and the floor: `loadtests/bench/floor.py`, a minimal HTTP/1.1 keep-alive
  proxy on uvloop + httptools answering from the protocols' callbacks (round robin, pooled
  upstream connections, X-Forwarded-For appended, no task per request). The floor is what
  this machine can do in Python with none of foobar's rules; foobar's CPU per request is
  judged against it. The file tests have a floor too, `loadtests/bench/file_floor.py`:
  each file's head serialised once, a small file answered from memory, a larger one with
  one sendfile(2), the Date made once a second. No target is set against it; its rows say
  how much of the gap to nginx is Python's own.
- **The peers do foobar's work.** HAProxy: `option forwardfor`, X-Forwarded-Proto set, a
  response header added (foobar.lb adds X-Foobar-LB). nginx: `proxy_set_header` for
  X-Forwarded-For/-Proto/-Host and X-Real-IP, `add_header` (foobar.web adds X-Foobar-Web and
  Cache-Control), `open_file_cache` (foobar keeps small files in memory) and upstream
  `keepalive 128` (foobar.web's pool size). Their configurations are printed below.
- **Access logs.** The main rows run with every access log off: HAProxy has no log target,
  nginx `access_log off`, foobar `FOOBAR_LB_ACCESS_LOG=false` / `FOOBAR_WEB_ACCESS_LOG=false`.
  foobar's default is the log on: the row "foobar, access log on" measures it, against
  foobar's own row.
- **Rounds.** Every server of a test runs once per round; the order is reversed every other
  round, so a machine that drifts favours no one. Medians are shown with the min-max over the
  rounds. A verdict's ratio is the median of the rounds' ratios, with their range: each
  round's runs are back to back, so the machine's drift between rounds cancels out of a
  round's ratio. The ratio of the two sides' medians, which pairs runs of different
  rounds, is shown beside it.
- **CPU** is the server's utime+stime per request, from /proc; "of which user" is the
  utime's median alone: the server's own code, where the kernel's share (much the same
  system calls for every contender) moves with the machine. **Saturation:** when the load
  core was busy {SATURATED:.0%} of a run or more (wrk, and the backends that share it), the
  throughput measures wrk as much as the server: such a row is marked, and a throughput
  target that involves it is judged on CPU per request instead (throughput >= r x the
  peer's becomes CPU per request <= 1/r x the peer's).
- **Verdicts** are computed by the harness (`loadtests/bench/verdicts.py`) from the measured
  numbers against issue 15's targets; none is written by hand. The floors are held to the
  same bars against the peers, as a reference: what the run allowed in Python.
"""


def _spread(values: Sequence[float], digits: int = 0) -> str:
    spread = Spread.of(values)
    return f"{spread.median:,.{digits}f} ({spread.low:,.{digits}f}-{spread.high:,.{digits}f})"


def _ratio(value: float) -> str:
    return f"{value:.2f}x" if math.isfinite(value) else "n/a (no CPU counted)"


def results_table(results: dict[str, dict[str, list[Result]]], units: dict[str, str]) -> list[str]:
    lines = [
        "| test | server | rate: median (min-max) | CPU µs/request: median (min-max) "
        "| of which user | p50 ms | p99 ms | peak RSS MiB | load core busy (wrk) | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for test, rows in results.items():
        for label, runs in rows.items():
            busy = Spread.of([r.load_busy for r in runs]).median
            wrk = Spread.of([r.wrk_cpu for r in runs]).median
            mark = " **saturated**" if saturated(runs) else ""
            lines.append(
                f"| {test} | {label} | {_spread([r.rate for r in runs])} {units[test]} "
                f"| {_spread([r.cpu_us for r in runs], 1)} "
                f"| {Spread.of([r.user_us for r in runs]).median:.1f} "
                f"| {Spread.of([r.p50_ms for r in runs]).median:.2f} "
                f"| {Spread.of([r.p99_ms for r in runs]).median:.2f} "
                f"| {Spread.of([r.rss_mib for r in runs]).median:.0f} "
                f"| {busy:.0%} ({wrk:.0%}){mark} | {_errors(runs)} |"
            )
    return lines


def _errors(runs: list[Result]) -> str:
    """The errors of all rounds, and of what kind in the rounds that had any."""
    kinds = "; ".join(
        f"round {number}: {run.error_kinds}" for number, run in enumerate(runs, 1) if run.errors
    )
    total = sum(run.errors for run in runs)
    return f"{total} ({kinds})" if kinds else str(total)


def verdict_table(verdicts: list[Verdict]) -> list[str]:
    lines = [
        "| target | judged on | bar | measured: median of the rounds' ratios (min-max) "
        "| ratio of the medians | met? |",
        "|---|---|---|---|---|---|",
    ]
    for verdict in verdicts:
        judged = "throughput" if verdict.judged_on == "throughput" else "CPU per request"
        if verdict.saturated:
            judged += " (load core saturated)"
        rounds = verdict.rounds
        lines.append(
            f"| {verdict.target} | {judged} | {verdict.bar} | {_ratio(verdict.ratio)} "
            f"({_ratio(rounds.low)}-{_ratio(rounds.high)}) | {_ratio(verdict.of_medians)} "
            f"| {'yes' if verdict.met else '**no**'} |"
        )
    return lines


def machine(seconds: float, rounds: int) -> str:
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
        # which build matters as much as which version (see the Makefile's PYTHON)
        "Python": f"{sys.version.split()[0]} ({os.path.realpath(sys.executable)})",
    }
    return (
        f"Measured {time.strftime('%Y-%m-%d')} by `make bench` (`python -m loadtests.bench.run`), "
        f"{rounds} rounds of {seconds:g} s per server. Machine: {os.cpu_count()} cores ({cpu}), "
        f"Linux {platform.release()}; " + ", ".join(f"{k} {v}" for k, v in versions.items()) + "."
    )


def render(
    header: str,
    results: dict[str, dict[str, list[Result]]],
    units: dict[str, str],
    verdicts: list[Verdict],
    idle: str,
    commands: dict[str, str],
    configs: list[Path],
) -> str:
    lines = ["# Benchmarks", "", header, "", METHOD, "## Results", ""]
    lines += results_table(results, units)
    lines += ["", "## Against issue 15's targets", "", *verdict_table(verdicts), ""]
    if floors := floor_verdicts(results):
        lines += [
            "Python's floors held to the same bars (a reference, not a target: where a floor",
            "misses a bar, the run asked more than this machine does in Python):",
            "",
            *verdict_table(floors),
            "",
        ]
    if idle:
        lines += [idle, ""]
    lines += ["## Commands", "", *(f"- {name}: `{command}`" for name, command in commands.items())]
    lines += ["", "The peers' configurations, as generated:", ""]
    for config in configs:
        lines += [f"`{config.name}`:", "", "```", config.read_text().strip(), "```", ""]
    notes = Path(__file__).with_name("notes.md")
    if notes.exists():
        lines += ["", notes.read_text()]
    return "\n".join(lines) + "\n"
