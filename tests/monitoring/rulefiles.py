"""What the tests read from deploy/monitoring: the rule files, and the metric names a
PromQL expression reads (its selectors), found by a small tokenizer rather than a full
parser: strings, label matchers, ranges and grouping clauses are removed first, and what
is left of identifiers not followed by "(" are metric names, keywords aside."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
RULE_FILES = sorted((MONITORING / "rules").glob("*.yml"))

KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "atan2", "inf", "nan",
}  # fmt: skip
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
MATCHERS = re.compile(r"\{[^{}]*\}")
RANGE = re.compile(r"\[[^\[\]]*\]")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
IDENTIFIER = re.compile(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(\s*\()?")


@dataclass(frozen=True)
class Rule:
    file: str
    name: str  # the alert or the recorded series
    expr: str
    records: bool
    data: dict[str, Any]


def rules(path: Path) -> list[Rule]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return [
        Rule(path.name, rule.get("alert") or rule["record"], rule["expr"], "record" in rule, rule)
        for group in groups
        for rule in group["rules"]
    ]


def metric_names(expr: str) -> set[str]:
    """The metric names `expr` selects (a name inside {__name__="..."} is not handled:
    these rules do not use it)."""
    text = STRING.sub('""', expr)
    text = MATCHERS.sub("", text)
    text = RANGE.sub("", text)
    text = GROUPING.sub("", text)
    names = set()
    for match in IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call is None and name.lower() not in KEYWORDS:
            names.add(name)
    return names
