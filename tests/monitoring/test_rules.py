"""deploy/monitoring checked by the real tools: promtool validates the configuration and
every rule file and runs their unit tests, amtool validates Alertmanager's file; and the
house rules for alerts: a severity, a summary and a runbook each, and a unit test that
sees each alert fire and one that sees it stay quiet."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from foobar import monitoring
from tests.monitoring.rulefiles import MONITORING, RULE_FILES, rules

SEVERITIES = {"critical", "warning"}
TESTS = sorted((MONITORING / "tests").glob("*_test.yml"))


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (apt-get install prometheus prometheus-alertmanager)")
    return path


def run(*command: str | Path) -> str:
    done = subprocess.run(
        [str(part) for part in command], cwd=MONITORING, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_promtool_checks_the_configuration_and_rules() -> None:
    output = run(tool("promtool"), "check", "config", "prometheus.yml")
    assert f"{len(RULE_FILES)} rule files found" in output
    run(tool("promtool"), "check", "rules", *RULE_FILES)


def test_promtool_unit_tests_pass() -> None:
    output = run(tool("promtool"), "test", "rules", *TESTS)
    assert output.count("SUCCESS") == len(TESTS)


def test_alertmanager_configuration() -> None:
    output = run(tool("amtool"), "check-config", "alertmanager.yml")
    assert "SUCCESS" in output


@pytest.mark.parametrize(("severity", "receiver"), [("critical", "pager"), ("warning", "ops")])
def test_alertmanager_routes_by_severity(severity: str, receiver: str) -> None:
    output = run(
        tool("amtool"), "config", "routes", "test", "--config.file", "alertmanager.yml",
        f"severity={severity}", "alertname=FoobarWebServerDown", "job=web",
    )  # fmt: skip
    assert output.split()[0] == receiver


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda path: path.name)
def test_every_alert_is_documented_and_unit_tested(path: Path) -> None:
    tests = yaml.safe_load((MONITORING / "tests" / f"{path.stem}_test.yml").read_text())
    assert tests["rule_files"] == [f"../rules/{path.name}"]
    fired, quiet = set(), set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    for rule in rules(path):
        if rule.records:
            continue
        assert rule.data["labels"]["severity"] in SEVERITIES, rule.name
        assert {"summary", "runbook"} <= set(rule.data["annotations"]), rule.name
        assert rule.name in fired, f"{rule.name}: no unit test sees it fire"
        assert rule.name in quiet, f"{rule.name}: no unit test sees it stay quiet"


def test_a_broken_unit_test_fails(tmp_path: Path) -> None:
    """promtool really compares: a test expecting another severity fails."""
    tests = yaml.safe_load((MONITORING / "tests" / "foobar_test.yml").read_text())
    tests["rule_files"] = [str(MONITORING / "rules" / "foobar.yml")]
    case = next(case for case in tests["tests"] if case["name"] == "FoobarWebServerDown")
    case["alert_rule_test"][-1]["exp_alerts"][0]["exp_labels"]["severity"] = "critical"
    tests["tests"] = [case]
    broken = tmp_path / "broken_test.yml"
    broken.write_text(yaml.safe_dump(tests))
    done = subprocess.run(
        [tool("promtool"), "test", "rules", broken], capture_output=True, text=True
    )
    assert done.returncode != 0 and "FAILED" in done.stdout + done.stderr


def test_the_local_configuration_matches_the_deployed_one(tmp_path: Path) -> None:
    """`foobar up --monitoring` writes its own targets and intervals, and otherwise what
    deploy/monitoring/prometheus.yml says: same jobs, same relabelling, valid for promtool."""
    deployed = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    targets = {job["job_name"]: ["127.0.0.1:1"] for job in deployed["scrape_configs"]}
    local = monitoring.prometheus_config(targets, 1.0, "127.0.0.1:2", MONITORING / "rules")
    for mine, theirs in zip(local["scrape_configs"], deployed["scrape_configs"], strict=True):
        assert mine["job_name"] == theirs["job_name"]
        assert mine.get("metric_relabel_configs") == theirs.get("metric_relabel_configs")
    path = monitoring.write_prometheus_config(tmp_path / "prometheus.yml", local)
    assert json.loads(path.read_text()) == local
    output = run(tool("promtool"), "check", "config", path)
    assert f"{len(RULE_FILES)} rule files found" in output


def test_missing_tools_are_named_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(monitoring.MonitoringError, match="apt-get install prometheus "):
        monitoring.find_tools()
