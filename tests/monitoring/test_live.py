"""Monitoring against the running site: `python -m foobar up --monitoring` with Prometheus
scraping and evaluating every second. Its targets are all up; every rule file names only
metrics the roles export; a stopped web server's alert fires through Prometheus's API,
reaches Alertmanager and is resolved after the restart; the status page shows the nodes
in a real browser and turns a stopped web server red within seconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from foobar.up import free_base_port, port_free
from tests.monitoring.rulefiles import RULE_FILES, Rule, metric_names, rules

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(240)

# series Prometheus makes itself, for every target and alerting rule
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS"}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
}


def role_of(name: str) -> str:
    """The role (Prometheus job) of a `foobar up` child: the witness is the database's."""
    return "db" if name == "witness" else name.rstrip("0123456789")


@dataclass
class LiveSite:
    base: int
    state: Path
    process: subprocess.Popen[bytes]
    restarted: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def url(self, offset: int, path: str = "") -> str:
        return f"http://127.0.0.1:{self.base + offset}{path}"

    @property
    def admins(self) -> dict[str, int]:
        """Each role's admin port, as `foobar up` lays them out (one app server, the
        database as two agents and a witness)."""
        return {
            "lb1": 100,
            "web1": 101,
            "web2": 102,
            "app1": 111,
            "db1": 121,
            "db2": 122,
            "witness": 123,
        }

    def child(self, name: str) -> tuple[int, list[str]]:
        """The pid and command line of `foobar up`'s child started with --name NAME."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes().decode().split("\0")[:-1]
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            named = "--name" in command and command[command.index("--name") + 1] == name
            if parent == self.process.pid and named:
                return int(entry.name), command
        raise AssertionError(f"no child named {name} under foobar up ({self.process.pid})")

    def stop(self, name: str) -> list[str]:
        """SIGTERM the server `name` (foobar up notices and leaves it stopped)."""
        pid, command = self.child(name)
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not any_child_named(self, name), 15, f"{name} to stop")
        return command

    def restart(self, command: list[str]) -> None:
        log = (self.state / "logs" / "restarted.log").open("ab")
        self.restarted.append(
            subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log, start_new_session=True)
        )
        log.close()


def any_child_named(site: LiveSite, name: str) -> bool:
    try:
        pid, _ = site.child(name)
    except AssertionError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.25)
    raise AssertionError(f"waited {timeout:.0f}s for {what}")


def free_base() -> int:
    while True:
        base = free_base_port(webs=2, apps=1, tls=False)
        if all(port_free(base + offset) for offset in (200, 201, 202)):
            return base


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSite]:
    state = tmp_path_factory.mktemp("site")
    base = free_base()
    output = state / "up.out"
    with output.open("wb") as out:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "foobar", "up", "--state-dir", str(state)),
                *("--base-port", str(base), "--web", "2", "--app", "1", "--no-tls"),
                *("--monitoring", "--monitoring-interval", "1"),
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    live = LiveSite(base, state, process)
    try:
        wait_for(
            lambda: process.poll() is not None or b"www.foobar.com is up" in output.read_bytes(),
            150,
            "foobar up --monitoring",
        )
        assert process.poll() is None, output.read_text()[-3000:]
        yield live
    finally:
        for restarted in live.restarted:
            restarted.terminate()
            restarted.wait(30)
        process.send_signal(signal.SIGINT)
        try:
            process.wait(90)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def prometheus(site: LiveSite, path: str, **params: str) -> Any:
    response = httpx.get(site.url(201, path), params=params, timeout=5)
    response.raise_for_status()
    return response.json()["data"]


def alerts(site: LiveSite, name: str, **labels: str) -> list[dict[str, Any]]:
    """Prometheus's alerts named `name` whose labels include `labels`."""
    return [
        alert
        for alert in prometheus(site, "/api/v1/alerts")["alerts"]
        if alert["labels"]["alertname"] == name
        and all(alert["labels"].get(key) == value for key, value in labels.items())
    ]


def received(site: LiveSite, name: str, **labels: str) -> list[dict[str, Any]]:
    """The active alerts Alertmanager holds named `name` with `labels`."""
    response = httpx.get(site.url(202, "/api/v2/alerts"), timeout=5)
    response.raise_for_status()
    return [
        alert
        for alert in response.json()
        if alert["labels"]["alertname"] == name
        and all(alert["labels"].get(key) == value for key, value in labels.items())
    ]


def test_prometheus_and_alertmanager_run_with_every_target_up(site: LiveSite) -> None:
    def all_up() -> list[dict[str, Any]] | None:
        targets = prometheus(site, "/api/v1/targets")["activeTargets"]
        return targets if targets and all(t["health"] == "up" for t in targets) else None

    targets = wait_for(all_up, 30, "every target up")
    scraped = sorted((t["labels"]["job"], t["labels"]["instance"]) for t in targets)
    expected = sorted(
        (role_of(name), f"127.0.0.1:{site.base + offset}") for name, offset in site.admins.items()
    )
    assert scraped == expected
    groups = prometheus(site, "/api/v1/rules")["groups"]
    loaded = [rule for group in groups for rule in group["rules"]]
    assert {rule["health"] for rule in loaded} == {"ok"}
    assert len(loaded) == sum(len(rules(path)) for path in RULE_FILES)
    managers = prometheus(site, "/api/v1/alertmanagers")["activeAlertmanagers"]
    assert [manager["url"] for manager in managers] == [site.url(202, "/api/v2/alerts")]


def exported_names(text: str) -> set[str]:
    """Every series name a /metrics page can produce, including those of families that
    have no sample yet (a labelled counter before its first event)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def unexported(checked: list[Rule], exported: set[str], recorded: set[str]) -> dict[str, set[str]]:
    """The rules that name a metric nobody exports (nor records), with those names."""
    known = exported | recorded | PROMETHEUS_OWN
    missing = {rule.name: metric_names(rule.expr) - known for rule in checked}
    return {name: names for name, names in missing.items() if names}


@pytest.fixture(scope="module")
def exported(site: LiveSite) -> set[str]:
    """What every running role exports, scraped from each admin listener."""
    names: set[str] = set()
    for name, offset in site.admins.items():
        response = httpx.get(site.url(offset, "/metrics"), timeout=5)
        assert response.status_code == 200, name
        names |= exported_names(response.text)
    return names


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda path: path.name)
def test_rules_name_only_exported_metrics(path: Path, exported: set[str]) -> None:
    recorded = {
        rule.name for rules_file in RULE_FILES for rule in rules(rules_file) if rule.records
    }
    assert unexported(rules(path), exported, recorded) == {}


def test_a_rule_naming_an_unexported_metric_is_caught(exported: set[str]) -> None:
    typo = Rule("x.yml", "Typo", 'rate(foobar_web_request_total{status="500"}[5m]) > 0', False, {})
    real = Rule("x.yml", "Real", 'rate(foobar_web_requests_total{status="500"}[5m]) > 0', False, {})
    assert unexported([typo, real], exported, set()) == {"Typo": {"foobar_web_request_total"}}


def test_a_stopped_web_server_fires_its_alert_and_the_restart_resolves_it(
    site: LiveSite,
) -> None:
    instance = f"127.0.0.1:{site.base + site.admins['web1']}"
    stopped = time.monotonic()  # before: the server stops answering while stop() waits
    command = site.stop("web1")
    wait_for(
        lambda: [a for a in alerts(site, "FoobarWebServerDown", instance=instance)
                 if a["state"] == "firing"],
        60,
        "FoobarWebServerDown firing",
    )  # fmt: skip
    fired = time.monotonic() - stopped
    wait_for(
        lambda: [a for a in alerts(site, "FoobarLbServerDown", server="web1")
                 if a["state"] == "firing"],
        20,
        "FoobarLbServerDown firing",
    )  # fmt: skip
    wait_for(lambda: received(site, "FoobarWebServerDown", instance=instance), 20, "Alertmanager")
    site.restart(command)
    restarted = time.monotonic()
    wait_for(lambda: not alerts(site, "FoobarWebServerDown", instance=instance), 30, "resolution")
    resolved = time.monotonic() - restarted
    wait_for(
        lambda: not received(site, "FoobarWebServerDown", instance=instance),
        30,
        "Alertmanager to see it resolved",
    )
    wait_for(lambda: not alerts(site, "FoobarLbServerDown", server="web1"), 30, "lb resolution")
    print(f"\nFoobarWebServerDown: firing {fired:.1f}s after the stop, resolved {resolved:.1f}s "
          "after the restart")  # fmt: skip
    assert 30 <= fired < 45  # the rule's `for: 30s`, then one scrape and one evaluation


def test_alertmanager_inhibits_server_down_while_the_whole_backend_is_down(
    site: LiveSite,
) -> None:
    """alertmanager.yml's inhibition, in the running Alertmanager: alerts posted as
    Prometheus posts them, for a balancer on another address than the site's."""
    labels = {"job": "lb", "instance": "192.0.2.1:9100", "backend": "web"}
    posted = [
        {"labels": {**labels, "alertname": "FoobarLbBackendDown", "severity": "critical"}},
        {"labels": {**labels, "alertname": "FoobarLbServerDown", "server": "web1",
                    "severity": "warning"}},
        {"labels": {**labels, "instance": "192.0.2.2:9100", "alertname": "FoobarLbServerDown",
                    "server": "web1", "severity": "warning"}},
    ]  # fmt: skip
    response = httpx.post(site.url(202, "/api/v2/alerts"), json=posted, timeout=5)
    assert response.status_code == 200

    def states() -> dict[str, str] | None:
        found = {
            f"{a['labels']['alertname']}@{a['labels']['instance']}": a["status"]["state"]
            for a in httpx.get(site.url(202, "/api/v2/alerts"), timeout=5).json()
            if a["labels"]["instance"].startswith("192.0.2.")
        }
        return found if "suppressed" in found.values() else None

    assert wait_for(states, 10, "the inhibition") == {
        "FoobarLbBackendDown@192.0.2.1:9100": "active",
        "FoobarLbServerDown@192.0.2.1:9100": "suppressed",  # same balancer and backend
        "FoobarLbServerDown@192.0.2.2:9100": "active",  # another balancer's
    }


def test_the_status_page_on_its_own(site: LiveSite, tmp_path: Path) -> None:
    """`python -m foobar.statuspage` as on the monitoring host, from a settings file."""
    port = next(p for p in range(site.base + 250, site.base + 300) if port_free(p))
    targets = "".join(
        f'[[statuspage.targets]]\nrole = "{role_of(name)}"\nname = "{name}"\n'
        f'admin = "127.0.0.1:{site.base + offset}"\n\n'
        for name, offset in site.admins.items()
    )
    config = tmp_path / "status.toml"
    config.write_text(f'[statuspage]\nbind = "127.0.0.1:{port}"\n\n{targets}')
    page = subprocess.Popen(
        [sys.executable, "-m", "foobar.statuspage", "--config", str(config)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )
    try:

        def all_up() -> dict[str, str] | None:
            try:
                nodes = httpx.get(f"http://127.0.0.1:{port}/api/site", timeout=5).json()["nodes"]
            except httpx.HTTPError:
                return None
            health = {node["id"]: node["health"] for node in nodes}
            return health if set(health.values()) == {"up"} else None

        assert set(wait_for(all_up, 20, "the standalone page")) == {
            "lb:lb1", "web:web1", "web:web2", "app:app1", "db:db1", "db:db2"
        }  # fmt: skip
        page_html = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert page_html.status_code == 200 and b'src="/status.js"' in page_html.content
    finally:
        page.send_signal(signal.SIGTERM)
        _, errors = page.communicate(timeout=30)
    assert page.returncode == 0, errors.decode()[-2000:]


def test_the_status_page_in_a_browser(site: LiveSite, tmp_path: Path) -> None:
    screenshot = tmp_path / "status.png"
    browser = subprocess.Popen(
        [sys.executable, "-m", "tests.monitoring.browser", site.url(200, "/"), str(screenshot)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert browser.stdin is not None and browser.stdout is not None
    try:
        first = json.loads(browser.stdout.readline() or "null")
        assert first is not None, browser.communicate(timeout=30)[1][-2000:]
        assert first["nodes"] == dict.fromkeys(
            ["lb:lb1", "web:web1", "web:web2", "app:app1", "db:db1", "db:db2"], "up"
        )
        assert screenshot.stat().st_size > 10_000

        command = site.stop("web2")
        stopped = time.monotonic()
        browser.stdin.write("web:web2 down\n")
        browser.stdin.flush()
        red = json.loads(browser.stdout.readline())
        seconds = time.monotonic() - stopped
        assert red["nodes"]["web:web2"] == "down" and red["nodes"]["web:web1"] == "up"
        print(f"\nstatus page: web2 red {seconds:.1f}s after it stopped")
        assert seconds < 6

        site.restart(command)
        browser.stdin.write("web:web2 up\n")
        browser.stdin.flush()
        assert json.loads(browser.stdout.readline())["nodes"]["web:web2"] == "up"
        browser.stdin.close()
        assert browser.wait(30) == 0
    finally:
        if browser.poll() is None:
            browser.kill()
            browser.wait()
