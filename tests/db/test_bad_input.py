"""Bad input gets one clear line and a non-zero exit, and no data is lost."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import pytest

from foobar.db import instance
from foobar.db.errors import DbError
from foobar.db.settings import DbSettings, InstanceSettings
from foobar.db.supervisor import Supervisor
from tests.dbcluster import Cluster, cluster_settings, free_port, running_cluster

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


async def serve(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run `python -m foobar.db serve ...` to its end; (exit code, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "foobar.db",
        "serve",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, err.decode()


def test_missing_server_binary_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(instance, "SEARCH_PATH", ())
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(DbError) as caught:
        instance.find_server()
    assert "apt-get install mariadb-server" in str(caught.value)
    with pytest.raises(DbError, match="/opt/none/mysqld not found"):
        instance.find_server(Path("/opt/none/mysqld"))


async def test_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = await serve(
            "--state-dir",
            str(tmp_path),
            "--primary-port",
            str(port),
            "--replica-port",
            str(free_port()),
        )
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: instance primary: port {port} on 127.0.0.1 is already in use"]
    # checked before anything started: no data directory was created
    assert not (tmp_path / "primary" / "data").exists()


async def test_foreign_data_directory_is_refused_and_kept(tmp_path: Path) -> None:
    datadir = tmp_path / "replica" / "data"
    datadir.mkdir(parents=True)
    (datadir / "thesis.txt").write_text("four years of work")
    code, err = await serve(
        "--state-dir",
        str(tmp_path),
        "--primary-port",
        str(free_port()),
        "--replica-port",
        str(free_port()),
    )
    assert code == 1
    assert f"error: {datadir} is not empty and is not a MySQL data directory" in err
    assert (datadir / "thesis.txt").read_text() == "four years of work"
    assert not (tmp_path / "primary" / "data").exists()  # checked before anything started


async def test_bad_settings_exit_2_with_their_keys(tmp_path: Path) -> None:
    code, err = await serve("--state-dir", str(tmp_path), "--primary-port", "70000")
    assert code == 2
    assert "primary_port (flag --primary-port): Input should be less than or equal to 65535" in err
    env = {**os.environ, "FOOBAR_DB_MODE": "external"}
    code, err = await serve("--state-dir", str(tmp_path), env=env)
    assert code == 2 and "external mode needs [[db.instances]]" in err


async def test_wrong_credentials_for_external_servers(db_cluster: Cluster, tmp_path: Path) -> None:
    settings = DbSettings(
        mode="external",
        state_dir=tmp_path / "external",
        instances=[db_cluster.primary, db_cluster.replica],
        admin_user="foobar",
        admin_password="not-the-password",  # type: ignore[arg-type]
    )
    supervisor = Supervisor(settings)
    with pytest.raises(DbError) as caught:
        await supervisor.start()
    assert "Access denied for user 'foobar'" in str(caught.value)
    assert f"primary ({db_cluster.primary.host}:{db_cluster.primary.port})" in str(caught.value)


async def test_restart_keeps_data_and_does_not_reinitialise(tmp_path: Path) -> None:
    settings = cluster_settings(tmp_path / "db")
    async with running_cluster(settings) as cluster:
        await cluster.app_query("primary", "CREATE TABLE kept (id INT PRIMARY KEY)")
        await cluster.app_query("primary", "INSERT INTO kept VALUES (42)")
        await cluster.wait_until("replica", "SELECT id FROM kept", 42)
        password = cluster.supervisor.app_password
    secrets = settings.state_dir / "secrets.json"
    assert secrets.stat().st_mode & 0o777 == 0o600
    async with running_cluster(settings) as cluster:
        assert cluster.supervisor.app_password == password  # generated once, reused
        for name in ("primary", "replica"):
            assert not await cluster.supervisor.instances[name].initialize()
            assert await cluster.app_query(name, "SELECT id FROM kept") == [(42,)]


def test_instances_must_differ() -> None:
    with pytest.raises(ValueError, match="different server_ids"):
        DbSettings(
            instances=[
                InstanceSettings(name="primary", port=1, server_id=1),
                InstanceSettings(name="replica", port=2, server_id=1),
            ]
        )
