"""User-space instructions per proxied request, counted by valgrind's callgrind: the one
measure of the request path that does not move with the machine (another process on the
other core, a slower CPU model, cheaper system calls), so a change can be judged in
minutes on a busy machine and compared across sessions. It counts what the process runs,
not the kernel's share (the same read and write calls for foobar and the floor).

    python -m loadtests.bench.instructions lb web floor      # N=2000 requests each
    python -m loadtests.bench.instructions lb-tcp haproxy-tcp # the balancer's tcp mode
    python -m loadtests.bench.instructions file file-floor   # foobar.web, Python's floor: 1 KiB
    FILE=1m.bin python -m loadtests.bench.instructions file   # the 1 MiB file (sendfile)
    python -m loadtests.bench.instructions rules             # the floor with lb's rules
    ACCESS_LOG=true python -m loadtests.bench.instructions lb # with foobar's access log on
    BROWSER=true python -m loadtests.bench.instructions lb    # a browser's 12 fields, not wrk's 1

HAProxy is counted the same way in tcp mode, where foobar's target is set against it; the
count is of the process's user space, so the kernel's share (the same four socket calls a
request for both, `strace -c`) is not in it.

Each server runs under callgrind behind two nginx backends answering "ok"; 200 requests
warm the pools, the counters are zeroed, N requests go over 10 keep-alive connections,
and the counters are dumped. `file` is foobar.web answering GET /1k.bin from its root,
`file-floor` loadtests/bench/file_floor.py answering the same.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtests.bench import peers
from loadtests.bench.run import ROOT, free_port, wait_port

REQUESTS = int(os.environ.get("N", "2000"))
ACCESS_LOG = os.environ.get("ACCESS_LOG", "false")  # foobar's, off unless asked for
CONNECTIONS = 10
FILE = os.environ.get("FILE", "1k.bin").encode()  # the file asked for: 1k.bin or 1m.bin
PATHS = {"web": b"/api/x", "file": b"/" + FILE, "file-floor": b"/" + FILE}
# BROWSER=true: the fields a browser sends with a page's request (wrk sends only Host)
BROWSER_FIELDS = (
    b"Connection: keep-alive\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/131.0.0.0 Safari/537.36\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Sec-Fetch-Site: same-origin\r\n"
    b"Sec-Fetch-Mode: navigate\r\n"
    b"Sec-Fetch-Dest: document\r\n"
    b"Referer: http://www.foobar.com/\r\n"
    b"Accept-Encoding: gzip, deflate\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\n"
    b"Cookie: session=4f2a9c1e7b3d5a60\r\n"
)
FIELDS = BROWSER_FIELDS if os.environ.get("BROWSER", "false") == "true" else b""


def command(server: str, port: int, backends: list[int], root: Path) -> list[str]:
    python = [sys.executable, "-m"]
    upstreams = [f"127.0.0.1:{backend}" for backend in backends]
    if server in ("lb", "lb-tcp"):
        mode = "tcp" if server == "lb-tcp" else "http"
        arguments = ["--mode", mode, "--bind", f"127.0.0.1:{port}"]
        return [*python, "foobar.lb", *arguments, *(f"--backend={a}" for a in upstreams)]
    if server == "haproxy-tcp":
        conf = root / f"haproxy-{port}.cfg"
        conf.write_text(peers.haproxy("tcp", port, backends))
        return ["haproxy", "-f", str(conf)]
    if server in ("web", "file"):
        arguments = ["--bind", f"127.0.0.1:{port}", "--root", str(root)]
        return [*python, "foobar.web", *arguments, "--upstream", upstreams[0]]
    if server in ("floor", "rules"):
        return [*python, f"loadtests.bench.{server}", f"127.0.0.1:{port}", *upstreams]
    if server == "file-floor":
        return [*python, "loadtests.bench.file_floor", f"127.0.0.1:{port}", str(root)]
    raise SystemExit(
        f"unknown server {server}: lb, lb-tcp, haproxy-tcp, web, file, file-floor, floor or rules"
    )


async def client(port: int, path: bytes, count: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s\r\n" % (path, port, FIELDS)
    for _ in range(count):
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        found = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        await reader.readexactly(int(found[1]) if found else 0)
    writer.close()


async def load(port: int, path: bytes, count: int) -> None:
    await asyncio.gather(*(client(port, path, count // CONNECTIONS) for _ in range(CONNECTIONS)))


def measure(server: str, folder: Path) -> float:
    backends, port = [free_port(), free_port()], free_port()
    conf = folder / f"nginx-{port}.conf"
    conf.write_text(peers.nginx(conf, peers.nginx_backends(backends)))
    (folder / "1k.bin").write_bytes(os.urandom(1024))
    (folder / "1m.bin").write_bytes(os.urandom(1024 * 1024))
    out = folder / f"callgrind-{server}.out"
    nginx = subprocess.Popen(["nginx", "-c", str(conf)], stderr=subprocess.DEVNULL)
    quiet = {**os.environ, "FOOBAR_LB_ACCESS_LOG": ACCESS_LOG, "FOOBAR_WEB_ACCESS_LOG": ACCESS_LOG}
    callgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    proxy = subprocess.Popen(
        [*callgrind, *command(server, port, backends, folder)],
        cwd=ROOT,
        env=quiet,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(backends[0])
        wait_port(port, 120)
        path = PATHS.get(server, b"/")
        asyncio.run(load(port, path, 200))
        subprocess.run(["callgrind_control", "-z", str(proxy.pid)], check=True, capture_output=True)
        asyncio.run(load(port, path, REQUESTS))
        subprocess.run(["callgrind_control", "-d", str(proxy.pid)], check=True, capture_output=True)
        time.sleep(0.5)
    finally:
        proxy.terminate()
        proxy.wait()
        nginx.terminate()
        nginx.wait()
    dumps = sorted(folder.glob(f"callgrind-{server}.out.*"))
    text = dumps[0].read_text()
    total = re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE)
    assert total is not None, "callgrind wrote no totals"
    return int(total[1]) / REQUESTS


def main(servers: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="foobar-instructions-") as folder:
        for server in servers or ["lb", "web", "floor"]:
            count = measure(server, Path(folder))
            print(f"{server:<11} {count:>10,.0f} instructions per request", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
