"""deploy/prometheus: the rules pass promtool, and each alert fires and stays silent on cue."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.deploy.promql import PROMETHEUS_CONFIG, ROOT, RULE_TESTS, RULES, alert_rules
from tests.deploy.tools import run, tool

SOURCES = [ROOT / "services", ROOT / "shared", ROOT / "talkinghead"]


def promtool() -> str:
    return tool("promtool", "Debian package prometheus")


def test_promtool_checks_the_rules() -> None:
    files = sorted(RULES.glob("*.yml"))
    result = run([promtool(), "check", "rules", *map(str, files)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    files = sorted(RULE_TESTS.glob("*.yml"))
    result = run([promtool(), "test", "rules", *map(str, files)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    """Each alert is tested firing on a synthetic series and silent on a healthy one."""
    firing: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS.glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = {rule["alert"] for rule in alert_rules()}
    assert alerts == firing, f"no firing case: {alerts - firing}; unknown: {firing - alerts}"
    assert alerts == silent, f"no silent case: {alerts - silent}; unknown: {silent - alerts}"


def test_every_alert_is_documented_and_graded() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule.get("for"), f"{rule['alert']} fires on a single evaluation"


def test_promtool_checks_the_compose_configuration(tmp_path: Path) -> None:
    """prometheus.yml as compose mounts it, with its rule_files pointed at the repository."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]  # the compose mount
    config["rule_files"] = [str(RULES / "*.yml")]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    result = run([promtool(), "check", "config", str(local)])
    assert result.returncode == 0, result.stdout + result.stderr


def error_codes_in_sources() -> set[str]:
    """Every stable error code a job can fail with (`XError("code", ...)`, `code = "..."`)."""
    pattern = re.compile(r"(?:\w+Error\(\s*|\bcode = )\"([a-z]+_[a-z_]+)\"")
    codes = {"too_many_attempts", "internal_error"}  # set by shared/jobs.py, services/runner.py
    for root in SOURCES:
        for path in root.rglob("*.py"):
            codes |= set(pattern.findall(path.read_text()))
    return codes


def test_input_error_codes_of_the_failure_alerts_exist() -> None:
    """The failure alerts split codes into input errors and platform errors with one list."""
    rules = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    platform = re.search(r'code!~"([^"]+)"', rules["TalkingheadJobFailureRate"])
    rejected = re.search(r'code=~"([^"]+)"', rules["TalkingheadJobRejectionRate"])
    assert platform and rejected and platform.group(1) == rejected.group(1)
    input_codes = set(platform.group(1).split("|"))
    known = error_codes_in_sources()
    assert input_codes <= known, f"not an error code of the code base: {input_codes - known}"
    assert {"internal_error", "renderer_unavailable", "too_many_attempts"} <= known - input_codes
