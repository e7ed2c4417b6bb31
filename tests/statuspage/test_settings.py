"""The standalone status page's settings: the shipped file loads, bad ones are refused
with their key."""

from __future__ import annotations

from pathlib import Path

import pytest

from foobar.errors import ConfigError
from foobar.settings import HostPort, load
from foobar.statuspage.settings import StatusPageSettings

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "monitoring" / "status.toml"


def test_the_shipped_file_loads() -> None:
    settings, _ = load(StatusPageSettings, SHIPPED, environ={})
    assert settings.bind == HostPort("127.0.0.1", 8280)
    assert [(t.role, t.admin) for t in settings.targets] == [
        ("lb", HostPort("10.0.0.1", 9100)),
        ("web", HostPort("10.0.0.2", 9101)),
        ("app", HostPort("10.0.0.2", 9102)),
        ("db", HostPort("10.0.0.3", 9103)),
    ]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[statuspage]\n", "targets"),
        ('[statuspage]\ntargets = [{role = "cache", name = "c", admin = "h:1"}]\n',
         "targets.0.role"),
        ('[statuspage]\ntargets = [{role = "web", name = "w", admin = "h"}]\n', "targets.0.admin"),
        ('[statuspage]\ninterval = 0\ntargets = [{role = "web", name = "w", admin = "h:1"}]\n',
         "interval"),
    ],
)  # fmt: skip
def test_bad_settings_are_refused_with_their_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "status.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load(StatusPageSettings, path, environ={})
    assert [problem[0].split()[0] for problem in caught.value.problems] == [key]
