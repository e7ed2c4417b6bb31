"""Prometheus and Alertmanager for `python -m foobar up --monitoring`: Debian's binaries on
loopback ports, with deploy/monitoring's rule files and Alertmanager file as they are. Only
the Prometheus configuration is written here, because its targets (the local site's admin
listeners) and intervals differ from deploy/monitoring/prometheus.yml; its jobs and
relabelling are the same (tests/monitoring checks that they stay so).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foobar.errors import FoobarError

# deploy/ sits next to the package in a checkout of the repository, where `make up` runs
MONITORING_DIR = Path(__file__).resolve().parent.parent / "deploy" / "monitoring"
# Debian names Alertmanager's binary prometheus-alertmanager; upstream's tarball alertmanager
ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")
INSTALL_HINT = "apt-get install prometheus prometheus-alertmanager"
# foobar's own `instance` label (a database node, a VRRP instance) clashes with the
# target's; Prometheus renames it exported_instance, and each job gives it a clear name
EXPORTED_INSTANCE = {"lb": "vrrp_instance", "db": "node"}


class MonitoringError(FoobarError):
    """Prometheus or Alertmanager cannot be started; the message says why in one line."""


@dataclass(frozen=True)
class Tools:
    prometheus: str
    alertmanager: str
    directory: Path  # deploy/monitoring: rules/ and alertmanager.yml


def find_tools(directory: Path = MONITORING_DIR) -> Tools:
    """The binaries and the files, or one line saying what is missing."""
    prometheus = shutil.which("prometheus")
    alertmanager = next(filter(None, map(shutil.which, ALERTMANAGER_BINARIES)), None)
    if prometheus is None or alertmanager is None:
        raise MonitoringError(f"Prometheus and Alertmanager are not installed: {INSTALL_HINT}")
    if not (directory / "alertmanager.yml").is_file() or not (directory / "rules").is_dir():
        raise MonitoringError(f"{directory} holds no alertmanager.yml and rules/ (a checkout?)")
    return Tools(prometheus, alertmanager, directory)


def duration(seconds: float) -> str:
    """Prometheus's duration syntax for a whole number of milliseconds."""
    return f"{round(seconds * 1000)}ms"


def relabelling(job: str) -> list[dict[str, Any]]:
    if job not in EXPORTED_INSTANCE:
        return []
    return [
        {
            "source_labels": ["exported_instance"],
            "regex": "(.+)",
            "target_label": EXPORTED_INSTANCE[job],
        },
        {"regex": "exported_instance", "action": "labeldrop"},
    ]


def prometheus_config(
    targets: Mapping[str, Sequence[str]], interval: float, alertmanager: str, rules: Path
) -> dict[str, Any]:
    """A configuration scraping `targets` ({job: ["host:port", ...]}) every `interval`
    seconds, evaluating the rule files in `rules` as often, alerting `alertmanager`."""
    jobs = []
    for job, addresses in targets.items():
        scrape: dict[str, Any] = {"job_name": job, "static_configs": [{"targets": addresses}]}
        if relabel := relabelling(job):
            scrape["metric_relabel_configs"] = relabel
        jobs.append(scrape)
    return {
        "global": {
            "scrape_interval": duration(interval),
            "scrape_timeout": duration(interval),
            "evaluation_interval": duration(interval),
            "external_labels": {"site": "localhost"},
        },
        "rule_files": [str(rules / "*.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": jobs,
    }


def write_prometheus_config(path: Path, config: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML, as Prometheus reads it
    return path


def prometheus_command(tools: Tools, config: Path, data: Path, listen: str) -> list[str]:
    return [
        tools.prometheus,
        f"--config.file={config}",
        f"--storage.tsdb.path={data}",
        "--storage.tsdb.retention.time=7d",  # a laptop's disk, not a server's
        f"--web.listen-address={listen}",
    ]


def alertmanager_command(tools: Tools, data: Path, listen: str) -> list[str]:
    return [
        tools.alertmanager,
        f"--config.file={tools.directory / 'alertmanager.yml'}",
        f"--storage.path={data}",
        f"--web.listen-address={listen}",
        "--cluster.listen-address=",  # no gossip port on 0.0.0.0:9094: one Alertmanager here
    ]
