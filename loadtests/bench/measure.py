"""One measured run: wrk on the load generator's core against a server pinned to its own,
and what the run cost: the server's CPU per request and peak RSS, and how busy the load
generator's core was (when it is full, the throughput says more about wrk than about the
server)."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SERVER_CORE, LOAD_CORE = 0, 1
CONNECTIONS = 50
# the load core busy this share of the run: the load side, not the server, may be the limit
SATURATED = 0.9
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class WrkOutput:
    """What one `wrk --latency` run printed."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # socket errors and non-2xx/3xx answers
    megabytes_per_s: float
    # the errors by kind, e.g. "timeout 50": timeouts say the server stalled for wrk's
    # 2 s, resets a server that closed connections, non-2xx what it answered
    error_kinds: str = ""


@dataclass(frozen=True)
class Result:
    """One server, one run."""

    rate: float  # requests/s, or MB/s for a test that measures throughput
    p50_ms: float
    p99_ms: float
    cpu_us: float  # the server's CPU (user + system) per request, in microseconds
    rss_mib: float
    errors: int
    load_busy: float  # share of the load core busy (wrk, and the backends it shares with)
    wrk_cpu: float  # wrk's own share of the load core
    error_kinds: str = ""  # as WrkOutput's
    # the user-space share of cpu_us: where a server's own code shows (the kernel's share,
    # much the same system calls for every contender, moves with the machine)
    user_us: float = 0.0

    @property
    def saturated(self) -> bool:
        return self.load_busy >= SATURATED


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
_UNITS_MB = {"B": 1e-6, "KB": 1e-3, "MB": 1.0, "GB": 1e3}


def _duration_ms(text: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not found:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(found[1]) * _UNITS_MS[found[2]]


def _field(pattern: str, output: str) -> str:
    found = re.search(pattern, output)
    if not found:
        raise ValueError(f"wrk output without {pattern!r}:\n{output}")
    return found[1]


def parse_wrk(output: str) -> WrkOutput:
    kinds: dict[str, int] = {}
    if found := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        kinds = dict(
            zip(("connect", "read", "write", "timeout"), map(int, found.groups()), strict=True)
        )
    if found := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        kinds["non-2xx/3xx"] = int(found[1])
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", output)
    return WrkOutput(
        rps=float(_field(r"Requests/sec:\s+([\d.]+)", output)),
        p50_ms=_duration_ms(_field(r"\s50%\s+(\S+)", output)),
        p99_ms=_duration_ms(_field(r"\s99%\s+(\S+)", output)),
        requests=int(_field(r"(\d+) requests in", output)),
        errors=sum(kinds.values()),
        megabytes_per_s=float(transfer[1]) * _UNITS_MB[transfer[2]] if transfer else 0.0,
        error_kinds=", ".join(f"{kind} {count}" for kind, count in kinds.items() if count),
    )


def cpu_seconds(pid: int) -> tuple[float, float]:
    """The process's CPU time so far, (user, system) seconds, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICKS, int(fields[12]) / _TICKS  # utime, stime


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def core_ticks(core: int, stat: str) -> tuple[int, int]:
    """(busy, total) clock ticks of one core since boot, from /proc/stat's text; stolen
    time counts as busy: the core was not there for wrk."""
    for line in stat.splitlines():
        if line.startswith(f"cpu{core} "):
            user, nice, system, idle, iowait, irq, softirq, steal = map(int, line.split()[1:9])
            total = user + nice + system + idle + iowait + irq + softirq + steal
            return total - idle - iowait, total
    raise ValueError(f"no cpu{core} in /proc/stat")


def load(url: str, pid: int, seconds: float, megabytes: bool = False) -> Result:
    """wrk against `url` for `seconds`, the server under test being `pid`; the rate in
    MB/s when `megabytes`, else in requests/s."""
    server_before, stat_before = cpu_seconds(pid), Path("/proc/stat").read_text()
    wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    duration = f"-d{max(1, round(seconds))}s"
    output = subprocess.run(
        [
            "taskset",
            "-c",
            str(LOAD_CORE),
            "wrk",
            "-t1",
            f"-c{CONNECTIONS}",
            duration,
            "--latency",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    wall = time.monotonic() - started
    # wrk is the only child that ends during the run: the children's usage grew by its own
    wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_used = (wrk_after.ru_utime + wrk_after.ru_stime) - (
        wrk_before.ru_utime + wrk_before.ru_stime
    )
    busy_before, total_before = core_ticks(LOAD_CORE, stat_before)
    busy_after, total_after = core_ticks(LOAD_CORE, Path("/proc/stat").read_text())
    (user_before, system_before), (user_after, system_after) = server_before, cpu_seconds(pid)
    user, system = user_after - user_before, system_after - system_before
    run = parse_wrk(output)
    requests = max(run.requests, 1)
    return Result(
        rate=run.megabytes_per_s if megabytes else run.rps,
        p50_ms=run.p50_ms,
        p99_ms=run.p99_ms,
        cpu_us=(user + system) / requests * 1e6,
        rss_mib=peak_rss_mib(pid),
        errors=run.errors,
        load_busy=(busy_after - busy_before) / max(total_after - total_before, 1),
        wrk_cpu=wrk_used / wall,
        error_kinds=run.error_kinds,
        user_us=user / requests * 1e6,
    )
