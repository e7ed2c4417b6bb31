"""The tokenizer the exported-metrics test relies on: a table of expressions and the
metric names in them."""

from __future__ import annotations

import pytest

from tests.monitoring.rulefiles import RULE_FILES, metric_names, rules


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('up{job="web"} == 0', {"up"}),
        ("foobar_lb_server_up == 0", {"foobar_lb_server_up"}),
        (
            "max by (job, instance, backend) (foobar_lb_server_up) == 0",
            {"foobar_lb_server_up"},
        ),
        (
            'sum by (job) (rate(foobar_lb_requests_total{status=~"5.."}[5m])) / on (job) '
            "group_left sum by (job) (rate(foobar_web_requests_total[5m] offset 1h))",
            {"foobar_lb_requests_total", "foobar_web_requests_total"},
        ),
        (
            "histogram_quantile(0.99, sum by (le) (rate(foobar_app_request_seconds_bucket[5m])))",
            {"foobar_app_request_seconds_bucket"},
        ),
        (
            "foobar_lb_tls_cert_not_after_timestamp_seconds - time() < 14 * 86400",
            {"foobar_lb_tls_cert_not_after_timestamp_seconds"},
        ),
        ("job:foobar_requests:rate5m * 0 and bool 1e3", {"job:foobar_requests:rate5m"}),
        ('label_replace(foo, "dst", "$1", "src", "(.*)")', {"foo"}),
        ("count by (vrrp_instance) (foobar_lb_vrrp_state == 2) > 1", {"foobar_lb_vrrp_state"}),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_every_rule_file_is_read() -> None:
    assert "foobar.yml" in [path.name for path in RULE_FILES]
    for path in RULE_FILES:
        assert all(metric_names(rule.expr) for rule in rules(path)), path
