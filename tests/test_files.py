"""Secrets at rest: private directories, loose secret files tightened, the self-signed
certificate renewed before it expires."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import pytest

from foobar.db.settings import DbSettings
from foobar.db.supervisor import load_secrets
from foobar.files import private_directory, tighten, write_private
from foobar.up import Plan, admin_token, certificate, certificate_valid, make_certificate


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_private_directory_made_and_tightened(tmp_path: Path) -> None:
    made = private_directory(tmp_path / "var" / "db")
    assert mode(made) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    assert mode(private_directory(loose)) == 0o700


def test_write_private_is_0600_and_whole(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    write_private(path, "one")
    write_private(path, "two")
    assert (path.read_text(), mode(path)) == ("two", 0o600)
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]


def test_loose_secrets_json_is_tightened_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"app_password": "a" * 24, "replication_password": "r" * 24}))
    path.chmod(0o644)
    settings = DbSettings.model_validate({"state_dir": str(tmp_path)})
    with caplog.at_level(logging.WARNING, logger="foobar.files"):
        assert load_secrets(settings) == ("a" * 24, "r" * 24)
    assert mode(path) == 0o600 and mode(tmp_path) == 0o700
    assert "event=secret_file_tightened" in caplog.text and "0o644" in caplog.text
    caplog.clear()
    assert tighten(path) is False and caplog.text == ""


def test_generated_secrets_and_admin_token_are_0600(tmp_path: Path) -> None:
    settings = DbSettings.model_validate({"state_dir": str(tmp_path / "db")})
    load_secrets(settings)
    assert mode(tmp_path / "db" / "secrets.json") == 0o600
    plan = Plan(tmp_path, 20000, 1, 1, True)
    token = admin_token(plan)
    assert mode(token) == 0o600 and len(token.read_text().strip()) >= 32
    assert admin_token(plan).read_text() == token.read_text()  # made once


def end_date(cert: Path) -> str:
    return subprocess.run(
        ["openssl", "x509", "-enddate", "-noout", "-in", str(cert)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def test_certificate_renewed_when_under_30_days_left(tmp_path: Path) -> None:
    plan = Plan(tmp_path, 20000, 1, 1, True)
    folder = tmp_path / "tls"
    folder.mkdir()
    cert, key = folder / "cert.pem", folder / "key.pem"
    make_certificate(cert, key, days=29)
    key.chmod(0o644)
    old_end = end_date(cert)
    assert not certificate_valid(cert)
    assert certificate(plan) == (cert, key)
    assert end_date(cert) != old_end and certificate_valid(cert)
    assert mode(key) == 0o600 and mode(folder) == 0o700
    renewed = cert.read_bytes()
    certificate(plan)  # far from expiry: kept
    assert cert.read_bytes() == renewed
