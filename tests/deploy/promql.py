"""The PromQL of the dashboards and alert rules under deploy/, for the deploy tests."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
RULES = DEPLOY / "prometheus" / "rules"
RULE_TESTS = DEPLOY / "prometheus" / "tests"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"

# Grafana's built-in interval variables, as the tests evaluate them: windows that cover a
# whole test run, so every counter that moved during it has a rate.
GRAFANA_VARIABLES = {"__rate_interval": "5m", "__interval": "15s", "__range": "5m"}
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_]\w*)(?::\w+)?\}|([A-Za-z_]\w*))")


@dataclass(frozen=True)
class Query:
    """One PromQL expression: a dashboard panel's target or an alert rule."""

    source: str  # dashboard uid, or the rules file name
    title: str  # panel title, or alert name
    expr: str
    gpu: bool = False  # about GPU hardware: no data without GPUs

    def __str__(self) -> str:
        return f"{self.source} / {self.title}"


def dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard JSON by file name."""
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Panels, including those nested in collapsed rows; rows themselves are skipped."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def dashboard_queries() -> list[Query]:
    """Every target of every panel; GPU dashboards (tag `gpu`) are marked."""
    out = []
    for dashboard in dashboards().values():
        gpu = "gpu" in dashboard.get("tags", [])
        for panel in iter_panels(dashboard):
            for target in panel.get("targets", []):
                out.append(Query(dashboard["uid"], panel["title"], target["expr"], gpu))
    return out


def rule_groups() -> list[dict[str, Any]]:
    """The rule groups of every file under deploy/prometheus/rules/."""
    groups: list[dict[str, Any]] = []
    for path in sorted(RULES.glob("*.yml")):
        groups += yaml.safe_load(path.read_text())["groups"]
    return groups


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def rule_queries() -> list[Query]:
    return [Query("rules", rule["alert"], rule["expr"]) for rule in alert_rules()]


def substitute(expr: str) -> str:
    """`expr` with Grafana's variables replaced; KeyError names an unknown variable."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in GRAFANA_VARIABLES:
            raise KeyError(f"unknown dashboard variable ${name} in {expr!r}")
        return GRAFANA_VARIABLES[name]

    return _VARIABLE.sub(value, expr)


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (identifiers followed by `{`, `[` or a space/paren
    that are not functions, keywords or label names)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # drop string literals (regexes, labels)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\{[^}]*\}", "{}", text)  # drop matchers: label names are not metrics
    names = set()
    for match in re.finditer(r"\b([A-Za-z_:][A-Za-z0-9_:]*)\b(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word in _KEYWORDS or re.fullmatch(r"\d+[smhdwy]|e\d*|inf|nan", word):
            continue
        names.add(word)
    return names


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
             "unless", "bool", "offset"}  # fmt: skip
