"""The commands a person types: serve, status, promote, init; and the MySQL dialect."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from foobar.db.cli import TOKEN_ENV
from foobar.db.dialect import MARIADB, MYSQL
from tests.dbcluster import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


async def command(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "foobar.db",
        *args,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_serve_status_promote_and_clean_stop(tmp_path: Path) -> None:
    admin = f"127.0.0.1:{free_port()}"
    token_file = tmp_path.parent / f"{tmp_path.name}-token"
    token_file.write_text("promote-token-0123456789\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "foobar.db",
        "serve",
        "--state-dir",
        str(tmp_path),
        "--primary-port",
        str(free_port()),
        "--replica-port",
        str(free_port()),
        "--admin",
        admin,
        "--admin-token-file",
        str(token_file),
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        while b"event=serving" not in (
            line := await asyncio.wait_for(process.stderr.readline(), 60)
        ):
            assert line, "serve exited before serving"
        code, out = await command("status", "--admin", admin)
        assert code == 0, out
        assert out.splitlines()[0].split()[:4] == ["name", "role", "pid", "address"]
        assert "healthy: primary primary, 1 replica(s) replicating" in out

        code, out = await command("promote", "--admin", admin)
        assert code == 1 and "wants its admin token" in out, out
        code, out = await command(
            "promote", "--admin", admin, "--admin-token-file", str(token_file)
        )
        assert code == 0, out
        assert "replica is now the primary, primary replicates from it" in out
        code, out = await command("status", "--admin", admin)
        assert "healthy: primary replica" in out
        code, out = await command(
            "promote",
            "--admin",
            admin,
            "--to",
            "replica",
            env={TOKEN_ENV: "promote-token-0123456789"},
        )
        assert code == 1 and "replica is already the primary" in out
        pids = [int(path.read_text()) for path in tmp_path.glob("*/mysqld.pid")]
        assert len(pids) == 2
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 60) == 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"mariadbd {pid} still running"
    assert json.loads((tmp_path / "topology.json").read_text()) == {"primary": "replica"}


async def test_status_of_nothing_is_a_clear_error() -> None:
    code, out = await command("status", "--admin", f"127.0.0.1:{free_port()}")
    assert code != 0 and "cannot reach foobar.db's admin listener" in out


async def test_init_only_prepares_data_directories(tmp_path: Path) -> None:
    code, out = await command("init", "--state-dir", str(tmp_path))
    assert code == 0, out
    for name in ("primary", "replica"):
        assert (tmp_path / name / "data" / "mysql").is_dir()
        assert not (tmp_path / name / "mysqld.pid").exists()
    assert oct((tmp_path / "primary").stat().st_mode & 0o777) == "0o700"


async def test_check_prints_settings_without_secrets(tmp_path: Path) -> None:
    env_password = "s3cret-from-env"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "foobar.db",
        "serve",
        "--check",
        "--state-dir",
        str(tmp_path),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "FOOBAR_DB_APP_PASSWORD": env_password},
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    text = out.decode()
    assert env_password not in text
    assert 'app_password = "**********"  # environment FOOBAR_DB_APP_PASSWORD' in text


def test_mysql_dialect_statements() -> None:
    sql = MYSQL.change_primary("10.0.0.3", 3306, "replication", "p'w", former_primary=True)
    assert sql == (
        "CHANGE REPLICATION SOURCE TO SOURCE_HOST='10.0.0.3', SOURCE_PORT=3306, "
        "SOURCE_USER='replication', SOURCE_PASSWORD='p''w', SOURCE_CONNECT_RETRY=1, "
        "SOURCE_AUTO_POSITION=1, GET_SOURCE_PUBLIC_KEY=1"
    )
    assert (MYSQL.start_replica, MYSQL.stop_replica, MYSQL.replica_status) == (
        "START REPLICA",
        "STOP REPLICA",
        "SHOW REPLICA STATUS",
    )
    assert MYSQL.gtid_wait("uuid:1-5", 0.5) == (
        "SELECT WAIT_FOR_EXECUTED_GTID_SET(%s, %s)",
        ("uuid:1-5", 0.5),
    )
    assert MYSQL.set_read_only(True) == ["SET GLOBAL super_read_only=ON"]
    assert MYSQL.columns.seconds_behind == "Seconds_Behind_Source"
    options = MYSQL.server_options(2000, primary=False)
    assert "--rpl-semi-sync-source-enabled=OFF" in options
    assert "--rpl-semi-sync-source-wait-point=AFTER_SYNC" in options
    assert "--gtid-mode=ON" in options and "--enforce-gtid-consistency=ON" in options


def test_mariadb_dialect_statements() -> None:
    fresh = MARIADB.change_primary("h", 1, "u", "p", former_primary=False)
    assert fresh.endswith("MASTER_USE_GTID=slave_pos")
    assert MARIADB.change_primary("h", 1, "u", "p", former_primary=True).endswith(
        "MASTER_USE_GTID=current_pos"
    )
    assert MARIADB.gtid_wait("0-1-5", 0.5)[0] == "SELECT MASTER_GTID_WAIT(%s, %s)"
