"""The settings loading order and --check, on a model like the roles' own."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from pydantic import SecretStr

from foobar.errors import ConfigError
from foobar.settings import Address, HostPort, RoleSettings, from_command_line, load, new_parser


class WebLike(RoleSettings):
    role = "web"
    bind: Address = HostPort("127.0.0.1", 8000)
    workers: int = 1
    upstreams: list[Address] = []
    password: SecretStr | None = None


def parser() -> argparse.ArgumentParser:
    result = new_parser(WebLike, "test")
    result.add_argument("--bind")
    result.add_argument("--workers", type=int)
    return result


GOOD = """
[web]
bind = "0.0.0.0:8080"
workers = 4
upstreams = ["10.0.0.2:8000", "[::1]:8001"]
password = "hunter2"

[db]
anything = "belongs to the db role and is left to it"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "foobar.toml"
    path.write_text(text)
    return path


def test_defaults_then_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = write(tmp_path, GOOD)
    settings, origin = load(WebLike, config, environ={})
    assert settings.bind == HostPort("0.0.0.0", 8080) and settings.workers == 4
    assert settings.upstreams == [HostPort("10.0.0.2", 8000), HostPort("::1", 8001)]
    assert origin["workers"] == f"{config} [web]"

    env = {"FOOBAR_WEB_WORKERS": "8", "FOOBAR_WEB_UPSTREAMS": '["10.0.0.9:1"]', "HOME": "/"}
    settings, origin = load(WebLike, config, environ=env)
    assert settings.workers == 8 and settings.upstreams == [HostPort("10.0.0.9", 1)]
    assert origin["workers"] == "environment FOOBAR_WEB_WORKERS"

    settings, origin = load(WebLike, config, environ=env, flags={"workers": 2})
    assert settings.workers == 2 and origin["workers"] == "flag --workers"
    assert settings.bind == HostPort("0.0.0.0", 8080)  # untouched by later sources


def test_unknown_key_in_file(tmp_path: Path) -> None:
    config = write(tmp_path, '[web]\nbind = "127.0.0.1:1"\nworkerz = 3\n')
    with pytest.raises(ConfigError) as caught:
        load(WebLike, config, environ={})
    assert caught.value.problems == [(f"workerz ({config} [web])", "unknown setting")]


def test_unknown_table_and_environment_variable(tmp_path: Path) -> None:
    config = write(tmp_path, "[webb]\nworkers = 3\n")
    with pytest.raises(ConfigError) as caught:
        load(WebLike, config, environ={"FOOBAR_WEB_WORKRES": "3"})
    keys = [key for key, _ in caught.value.problems]
    assert keys == [f"{config} webb", "FOOBAR_WEB_WORKRES"]


def test_every_wrong_type_is_reported(tmp_path: Path) -> None:
    config = write(tmp_path, '[web]\nworkers = "many"\nbind = "nohost"\n')
    with pytest.raises(ConfigError) as caught:
        load(WebLike, config, environ={})
    problems = dict(caught.value.problems)
    assert "unable to parse string as an integer" in problems[f"workers ({config} [web])"]
    assert "expected HOST:PORT" in problems[f"bind ({config} [web])"]


def test_broken_toml_is_reported(tmp_path: Path) -> None:
    config = write(tmp_path, "[web\n")
    with pytest.raises(ConfigError) as caught:
        load(WebLike, config, environ={})
    assert "not valid TOML" in caught.value.problems[0][1]


def test_check_prints_effective_settings_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path, GOOD)
    monkeypatch.setenv("FOOBAR_WEB_WORKERS", "6")
    with pytest.raises(SystemExit) as caught:
        from_command_line(WebLike, parser(), ["--config", str(config), "--check"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert 'bind = "0.0.0.0:8080"' in out
    assert "workers = 6  # environment FOOBAR_WEB_WORKERS" in out
    assert "hunter2" not in out and "**********" in out


def test_check_with_errors_exits_2_listing_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path, '[web]\nworkers = "x"\nextra = 1\n')
    monkeypatch.setenv("FOOBAR_WEB_BIND", "127.0.0.1:99999")
    with pytest.raises(SystemExit) as caught:
        from_command_line(WebLike, parser(), ["--config", str(config), "--check"])
    assert caught.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3
    assert any(
        "bind (environment FOOBAR_WEB_BIND)" in line and "out of range" in line for line in err
    )


def test_bad_setting_stops_a_normal_start_too(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        from_command_line(WebLike, parser(), ["--bind", "no-port"])
    assert caught.value.code == 2
    assert "bind (flag --bind)" in capsys.readouterr().err


def test_settings_are_frozen() -> None:
    settings, _ = load(WebLike, environ={})
    with pytest.raises(ValueError):
        settings.workers = 3  # type: ignore[misc]


def test_admin_token_from_settings_environment_or_file(tmp_path: Path) -> None:
    token = "t0ken-of-twenty-chars"
    settings, _ = load(WebLike, environ={"FOOBAR_WEB_ADMIN_TOKEN": token})
    assert settings.admin_secret() == token
    file = tmp_path / "admin-token"
    file.write_text(token + "\n")
    settings, _ = load(WebLike, environ={}, flags={"admin_token_file": str(file)})
    assert settings.admin_secret() == token
    assert load(WebLike, environ={})[0].admin_secret() is None


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"admin_token_file": "/nonexistent/admin-token"}, "No such file"),
        ({"admin_token": "short"}, "under 16 characters"),
        ({"admin_token": "t0ken-of-twenty-chars", "admin_token_file": __file__}, "not both"),
    ],
)
def test_bad_admin_token_is_one_clear_error_and_exit_2(
    fields: dict[str, str],
    problem: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(WebLike, environ={}, flags=fields)
    assert len(caught.value.problems) == 1 and problem in caught.value.problems[0][1]
    # at start: the token itself only by environment (never on a command line)
    for key, value in fields.items():
        monkeypatch.setenv(f"FOOBAR_WEB_{key.upper()}", value)
    with pytest.raises(SystemExit) as stopped:
        from_command_line(WebLike, parser(), [])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and problem in err[0]
