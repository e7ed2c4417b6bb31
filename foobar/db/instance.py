"""One MySQL/MariaDB server process that foobar.db runs itself (managed mode).

Its files live in one directory: `data/` (the data directory), `mysqld.sock`, `mysqld.pid`,
`error.log`. The server's root account is reachable only through that socket
(unix_socket authentication for the operating-system user running foobar.db), never
over TCP. A data directory is initialised only when it is missing or empty; one holding
anything but a MySQL data directory is refused, and none is ever deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import shutil
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiomysql

from foobar.db.dialect import MARIADB, MYSQL, Dialect
from foobar.db.errors import DbError
from foobar.db.settings import InstanceSettings

log = logging.getLogger("foobar.db.instance")

# How long a server may take to answer after start (InnoDB recovery after a crash can
# take a while on a big buffer pool) and to stop (it flushes dirty pages).
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
SEARCH_PATH = ("/usr/sbin", "/usr/local/sbin", "/usr/local/mysql/bin")


@dataclass(frozen=True)
class ServerProgram:
    server: Path
    install_db: Path | None  # mariadb-install-db; MySQL initialises with --initialize
    dialect: Dialect


def find_server(explicit: Path | None = None) -> ServerProgram:
    """The installed server binary, or a DbError saying which package to install."""
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(SEARCH_PATH)
    candidates = [str(explicit)] if explicit else ["mariadbd", "mysqld"]
    for name in candidates:
        found = shutil.which(name, path=path)
        if found is None:
            continue
        server = Path(found)
        install_db = shutil.which("mariadb-install-db", path=path) or shutil.which(
            "mysql_install_db", path=path
        )
        is_mariadb = server.name == "mariadbd" or (server.parent / "mariadbd").exists()
        return ServerProgram(
            server,
            Path(install_db) if install_db and is_mariadb else None,
            MARIADB if is_mariadb else MYSQL,
        )
    if explicit:
        raise DbError(f"server binary {explicit} not found or not executable")
    raise DbError(
        "no MySQL/MariaDB server installed: install the Debian package mariadb-server "
        "(apt-get install mariadb-server)"
    )


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


class ManagedInstance:
    def __init__(
        self,
        spec: InstanceSettings,
        directory: Path,
        program: ServerProgram,
        semi_sync_timeout: float,
        buffer_pool: str,
        extra_options: Sequence[str] = (),
    ) -> None:
        self.spec = spec
        self.extra_options = list(extra_options)
        self.directory = directory.resolve()
        self.program = program
        self.semi_sync_timeout = semi_sync_timeout
        self.buffer_pool = buffer_pool
        self.process: asyncio.subprocess.Process | None = None
        self.os_user = getpass.getuser()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def datadir(self) -> Path:
        return self.directory / "data"

    @property
    def socket(self) -> Path:
        return self.directory / "mysqld.sock"

    @property
    def error_log(self) -> Path:
        return self.directory / "error.log"

    @property
    def pid(self) -> int | None:
        if self.process is None or self.process.returncode is not None:
            return None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.pid is not None

    def check_port(self) -> None:
        if port_in_use(self.spec.host, self.spec.port):
            raise DbError(
                f"instance {self.name}: port {self.spec.port} on {self.spec.host} is already in use"
            )

    def check_datadir(self) -> bool:
        """True when the data directory is initialised, False when it is missing or
        empty; a DbError when it holds something else."""
        if not self.datadir.exists():
            return False
        if not self.datadir.is_dir():
            raise DbError(f"{self.datadir} is not a directory")
        entries = list(self.datadir.iterdir())
        if not entries:
            return False
        if (self.datadir / "mysql").is_dir():
            return True
        raise DbError(
            f"{self.datadir} is not empty and is not a MySQL data directory "
            "(no mysql/ inside); foobar.db will not touch it"
        )

    async def initialize(self) -> bool:
        """Create the data directory if it is missing or empty; True when it did."""
        if self.check_datadir():
            return False
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        if self.program.install_db is not None:
            command = [
                str(self.program.install_db),
                "--no-defaults",
                f"--datadir={self.datadir}",
                "--auth-root-authentication-method=socket",
                f"--auth-root-socket-user={self.os_user}",
                "--skip-test-db",
                f"--tmpdir={self.directory}",
                f"--user={self.os_user}",
                f"--tmpdir={self.directory}",
                f"--innodb-buffer-pool-size={self.buffer_pool}",
            ]
        else:
            # MySQL: root@localhost gets no password. With skip-name-resolve a TCP
            # client is never "localhost", so that account is reachable only through
            # the socket, which lives in this 0700 directory.
            command = [
                str(self.program.server),
                "--no-defaults",
                "--initialize-insecure",
                f"--datadir={self.datadir}",
                f"--tmpdir={self.directory}",
                f"--user={self.os_user}",
            ]
        log.info("event=initialize instance=%s datadir=%s", self.name, self.datadir)
        process = await asyncio.create_subprocess_exec(
            *command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=self.directory,
        )
        output, _ = await process.communicate()
        if process.returncode != 0:
            lines = output.decode(errors="replace").strip().splitlines()
            # mariadb-install-db ends with advice; the reason is in its [ERROR] lines
            tail = [line for line in lines if "ERROR" in line or "failed" in line] or lines
            raise DbError(f"initialising {self.datadir} failed: {' / '.join(tail[-5:])}")
        return True

    def command(self, primary: bool) -> list[str]:
        spec = self.spec
        options = [
            str(self.program.server),
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            f"--pid-file={self.directory / 'mysqld.pid'}",
            f"--log-error={self.error_log}",
            # temporary tables in the instance's own 0700 directory, not the shared /tmp
            # (where another user can read them, or another server's clean-up remove them)
            f"--tmpdir={self.directory}",
            f"--bind-address={spec.host}",
            f"--port={spec.port}",
            f"--server-id={spec.server_id}",
            f"--user={self.os_user}",
            "--log-bin=binlog",
            "--relay-log=relay",
            "--binlog-format=ROW",
            "--skip-name-resolve",
            f"--innodb-buffer-pool-size={self.buffer_pool}",
            # the local stack runs several servers: none should take all file handles
            "--open-files-limit=4096",
            *self.program.dialect.server_options(int(self.semi_sync_timeout * 1000), primary),
            # Fencing: every start is read-only; only whoever holds the current epoch
            # (the supervisor, or the primary's agent) lifts it.
            f"--{self.program.dialect.read_only_variable.replace('_', '-')}=ON",
            *self.extra_options,
        ]
        if self.program.dialect is MARIADB:
            # After a crash, a former primary that restarts as a replica drops from its
            # binlog the transactions no replica acknowledged (they were never reported
            # as committed) instead of keeping them as errant ones (MDEV-21117).
            options.append(f"--init-rpl-role={'MASTER' if primary else 'SLAVE'}")
        return options

    async def start(self, primary: bool) -> None:
        """Start the server (read-only, whatever its role) and wait until it answers on
        its socket."""
        if self.running:
            return
        self.check_port()
        log.info("event=start instance=%s port=%d primary=%s", self.name, self.spec.port, primary)
        self.process = await asyncio.create_subprocess_exec(
            *self.command(primary),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            cwd=self.directory,
            start_new_session=True,  # a Ctrl-C meant for us reaches it through stop()
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while loop.time() < deadline:
            if self.process.returncode is not None:
                raise DbError(f"instance {self.name} exited at start: {self.last_errors()}")
            if await self._answers():
                log.info("event=started instance=%s pid=%d", self.name, self.process.pid)
                return
            await asyncio.sleep(0.05)
        raise DbError(f"instance {self.name} did not answer within {START_TIMEOUT}s")

    async def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            connection = await aiomysql.connect(
                unix_socket=str(self.socket), user=self.admin_user, connect_timeout=1
            )
        except Exception:  # any failure means "not yet": start() gives the real reason
            return False
        connection.close()
        return True

    @property
    def admin_user(self) -> str:
        """The account the socket lets us in as: MariaDB's unix_socket authentication
        admits the OS user under its own name (root for root, else the account
        mariadb-install-db --auth-root-socket-user made); MySQL's is root."""
        if self.program.install_db is None or self.os_user == "root":
            return "root"
        return self.os_user

    def last_errors(self, lines: int = 3) -> str:
        try:
            text = self.error_log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no error log)"
        errors = [line for line in text if "[ERROR]" in line] or text
        return " / ".join(errors[-lines:])

    def leftover_pid(self) -> int | None:
        """The pid of a server still running on this data directory, if any."""
        try:
            pid = int((self.directory / "mysqld.pid").read_text())
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        # gone, or the pid now belongs to something else
        return pid if f"--datadir={self.datadir}".encode() in command else None

    async def stop_leftover(self) -> None:
        """Stop a server a previous foobar.db process started on this data directory and
        left running when it died (kill -9): it may be writable, and its successor starts
        every server read-only. Identified by its pid file and its command line."""
        pid = self.leftover_pid()
        if pid is None:
            return
        log.warning("event=leftover_server instance=%s pid=%d action=stop", self.name, pid)
        os.kill(pid, signal.SIGCONT)  # a frozen one cannot act on SIGTERM
        os.kill(pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_TIMEOUT
        while self.leftover_pid() == pid:
            if loop.time() > deadline:
                os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """SIGTERM, then wait for a clean shutdown; SIGKILL only past STOP_TIMEOUT."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        log.info("event=stop instance=%s pid=%d", self.name, process.pid)
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            log.warning("event=stop_timeout instance=%s pid=%d action=kill", self.name, process.pid)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
