"""Hosts for the multi-host test: network namespaces joined by a bridge that lives in a
namespace of its own, so the machine's own network is never touched.

Each host gets eth0 with its address on 10.0.0.0/24 (the addresses of deploy/), its
firewall from deploy/firewall/, and the roles started from deploy/'s settings with only
machine-specific paths substituted. Everything is removed afterwards: processes (by pid),
namespaces, and the /etc/netns/<host>/hosts files `ip netns exec` binds over /etc/hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import trustme

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SERVER3 = "10.0.0.3"  # the database server of deploy/


def available() -> str | None:
    """Why the test cannot run here, or None."""
    if os.geteuid() != 0:
        return "network namespaces and nftables need root (CI runs as root)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install iproute2 nftables)"
    return None


def run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True)


def run_quietly(*command: str) -> None:
    """For clean-up: quick, and a failure is not the test's."""
    subprocess.run(command, capture_output=True)


class Network:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.switch = f"{prefix}sw"
        self.hosts: dict[str, str] = {}  # host name -> address
        self.processes: list[asyncio.subprocess.Process] = []

    def ns(self, host: str) -> str:
        return f"{self.prefix}{host}"

    def create(self) -> None:
        run("ip", "netns", "add", self.switch)
        run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.switch, "link", "set", "br0", "up")

    def add_host(self, host: str, address: str) -> None:
        ns, port = self.ns(host), f"p{len(self.hosts)}"
        run("ip", "netns", "add", ns)
        run(
            "ip",
            "-n",
            self.switch,
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns,
        )
        run("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
        run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        self.hosts[host] = address

    def firewall(self, host: str, rules: Path, replace: dict[str, str] | None = None) -> None:
        text = rules.read_text()
        for old, new in (replace or {}).items():
            text = text.replace(old, new)
        subprocess.run(
            ["ip", "netns", "exec", self.ns(host), "nft", "-f", "-"],
            input=text.encode(),
            check=True,
            capture_output=True,
        )

    def hosts_file(self, host: str, entries: dict[str, str]) -> None:
        folder = Path("/etc/netns") / self.ns(host)
        folder.mkdir(parents=True, exist_ok=True)
        lines = ["127.0.0.1 localhost"] + [f"{address} {name}" for name, address in entries.items()]
        (folder / "hosts").write_text("\n".join(lines) + "\n")

    async def start(
        self, host: str, module: str, *args: str, env: dict[str, str] | None = None, log: Path
    ) -> asyncio.subprocess.Process:
        with log.open("ab") as output:
            process = await asyncio.create_subprocess_exec(
                "ip",
                "netns",
                "exec",
                self.ns(host),
                sys.executable,
                "-m",
                module,
                *args,
                cwd=ROOT,
                env={**os.environ, **(env or {})},
                stdout=output,
                stderr=output,
            )
        self.processes.append(process)
        return process

    async def probe(self, host: str, *args: str) -> Any:
        process = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            self.ns(host),
            sys.executable,
            "-m",
            "tests.e2e.probe",
            *args,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        if process.returncode != 0:
            raise AssertionError(f"probe {args} on {host} failed: {err.decode()[-500:]}")
        return json.loads(out)

    async def until(self, host: str, url: str, ca: str | None = None, seconds: float = 60) -> Any:
        """Probe `url` from `host` until it answers 200."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        last: Any = None
        while loop.time() < deadline:
            with contextlib.suppress(AssertionError):
                last = await self.probe(host, "get", url, *([ca] if ca else []))
                if last["status"] == 200:
                    return last
            await asyncio.sleep(0.3)
        raise AssertionError(f"{url} from {host} never answered 200: {last}")

    async def stop_host(self, host: str) -> None:
        """Kill every process of one host (what a crashed server looks like)."""
        for pid in self.pids(host):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def pids(self, host: str) -> list[int]:
        result = subprocess.run(
            ["ip", "netns", "pids", self.ns(host)], capture_output=True, text=True
        )
        return [int(pid) for pid in result.stdout.split()]

    async def destroy(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        for process in self.processes:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 20)
        for host in self.hosts:
            await self.stop_host(host)  # whatever a TERM left (mariadbd children included)
        for host in self.hosts:
            run_quietly("ip", "netns", "del", self.ns(host))
            shutil.rmtree(Path("/etc/netns") / self.ns(host), ignore_errors=True)
        run_quietly("ip", "netns", "del", self.switch)


@contextlib.asynccontextmanager
async def network_of(prefix: str) -> AsyncIterator[Network]:
    """A network whose names start with `prefix` (make it unique per run), destroyed after."""
    net = Network(prefix)
    net.create()
    try:
        yield net
    finally:
        await net.destroy()


def certificates(folder: Path, *names: str) -> tuple[Path, Path, Path]:
    """A certificate for `names` from a new authority: (cert chain, key, CA) files."""
    authority = trustme.CA()
    issued = authority.issue_cert(*names)
    cert, key, ca = folder / "www.pem", folder / "www.key", folder / "ca.pem"
    issued.private_key_and_cert_chain_pem.write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    authority.cert_pem.write_to_path(str(ca))
    return cert, key, ca


def settings(path: Path, replace: Sequence[tuple[str, str]], out: Path) -> Path:
    """A copy of a deploy/ settings file with machine-specific values substituted."""
    text = path.read_text()
    for old, new in replace:
        assert old in text, f"{old!r} not in {path}"
        text = text.replace(old, new)
    out.write_text(text)
    return out


async def start_web_and_db(net: Network, tmp: Path, web_hosts: dict[str, str]) -> None:
    """foobar.db on server 3, and foobar.app + foobar.web on each web host (name ->
    address), from deploy/'s settings; returns when every web server answers. The hosts
    and their firewalls are the caller's; the logs go to tmp/logs."""
    logs = tmp / "logs"
    db = settings(
        DEPLOY / "server3" / "db.toml",
        [
            ('state_dir = "/var/lib/foobar/db"', f'state_dir = "{tmp / "db"}"'),
            ('innodb_buffer_pool_size = "1G"', 'innodb_buffer_pool_size = "64M"'),
        ],
        tmp / "db.toml",
    )
    await net.start("server3", "foobar.db", "serve", "--config", str(db), log=logs / "db.log")
    await net.until("server3", f"http://{SERVER3}:9103/healthz")
    password = json.loads((tmp / "db" / "secrets.json").read_text())["app_password"]
    database = {
        "FOOBAR_APP_PRIMARY": f"mysql://foobar:{password}@{SERVER3}:3306/foobar",
        "FOOBAR_APP_REPLICAS": json.dumps([f"mysql://foobar:{password}@{SERVER3}:3307/foobar"]),
    }
    for n, (host, address) in enumerate(web_hosts.items(), start=1):
        app = settings(
            DEPLOY / "server2" / "app.toml",
            [('name = "app1"', f'name = "app{n}"'), ("10.0.0.2", address)],
            tmp / f"app{n}.toml",
        )
        web = settings(
            DEPLOY / "server2" / "web.toml",
            [('name = "web1"', f'name = "web{n}"'), ("10.0.0.2", address)],
            tmp / f"web{n}.toml",
        )
        await net.start(
            host, "foobar.app", "--config", str(app), env=database, log=logs / f"app{n}.log"
        )
        await net.start(host, "foobar.web", "--config", str(web), log=logs / f"web{n}.log")
    for host in web_hosts:
        await net.until(host, f"http://{web_hosts[host]}:8080/healthz")
