"""What ships in monitoring/: the alert rules pass promtool's checks and their unit tests
(monitoring/alerts_test.yml), the Grafana dashboard parses and its queries are valid PromQL,
and every metric and label either one queries is one the code exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from tests.conftest import REPO
from worker import metrics
from worker.metrics_server import BacklogCollector

MONITORING = REPO / "monitoring"
ALERTS = MONITORING / "alerts.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
# Labels Prometheus adds to every scraped series; a metric's own `job` label arrives renamed.
TARGET_LABELS = {"job", "instance"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is missing: `make system-deps` installs it "
            "(Debian/Ubuntu: apt-get install prometheus)"
        )
    return path


def run_promtool(*args: str, cwd: Path = MONITORING) -> str:
    done = subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


# Series whose own label clashes with a target label: in Prometheus it is `exported_<label>`.
CLASHING: set[str] = set()


def exported() -> dict[str, set[str]]:
    """Every series name the workers and the exporter serve, with its label names."""
    names: dict[str, set[str]] = {"up": set(TARGET_LABELS)}

    def add(name: str, labels: set[str]) -> None:
        renamed = {f"exported_{label}" for label in labels & TARGET_LABELS}
        if renamed:
            CLASHING.add(name)
        names[name] = labels | renamed | TARGET_LABELS

    for metric in vars(metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        base, labels = metric._name, set(metric._labelnames)
        if metric._type == "counter":
            add(f"{base}_total", labels)
        elif metric._type == "histogram":
            add(f"{base}_bucket", labels | {"le"})
            add(f"{base}_sum", labels)
            add(f"{base}_count", labels)
        else:
            add(base, labels)
    for family in BacklogCollector(None).describe():
        add(family.name, set(family._labelnames))
    return names


SELECTOR = re.compile(r"\b(embedder_[a-z0-9_]+|up)\b\s*(\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


def check_expression(expr: str, known: dict[str, set[str]]) -> list[str]:
    """Problems: unknown metrics, label matchers or groupings no queried metric carries."""
    problems = []
    labels_here: set[str] = set()
    used = SELECTOR.findall(expr)
    if not used:
        problems.append(f"queries no Embedder metric: {expr}")
    for name, matchers in used:
        if name not in known:
            problems.append(f"{name} is not exported (in {expr})")
            continue
        labels_here |= known[name]
        for label in MATCHER.findall(matchers or ""):
            if label not in known[name]:
                problems.append(f"{name} has no label {label!r} (in {expr})")
    clashing = {name for name, _ in used} & CLASHING
    for group in GROUPING.findall(expr):
        for label in filter(None, (part.strip() for part in group.split(","))):
            if label not in labels_here:
                problems.append(f"no queried metric has the label {label!r} (in {expr})")
            if label in TARGET_LABELS and clashing:
                problems.append(f"{label!r} is the target's here: use exported_{label} ({expr})")
    return problems


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_targets(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if "expr" in node:
            yield node
        for value in node.values():
            yield from dashboard_targets(value)
    elif isinstance(node, list):
        for value in node:
            yield from dashboard_targets(value)


def test_the_exported_names_include_both_sides() -> None:
    known = exported()
    # Worker counters from the multiprocess files, gauges from the exporter's queries.
    assert "embedder_failures_total" in known
    assert "embedder_tasks_total" in known
    assert "embedder_api_request_seconds_bucket" in known
    assert {"embedder_oldest_in_flight_seconds", "embedder_hnsw_index"} <= known.keys()
    assert {"model", "reason"} <= known["embedder_failures_total"]


def test_alert_rules_pass_promtool_check() -> None:
    out = run_promtool("check", "rules", str(ALERTS))
    assert f"SUCCESS: {len(alert_rules())} rules found" in out


def test_alert_rules_pass_their_unit_tests() -> None:
    out = run_promtool("test", "rules", "alerts_test.yml")
    assert "SUCCESS" in out


def test_every_alert_is_unit_tested_and_documented() -> None:
    tests = (MONITORING / "alerts_test.yml").read_text(encoding="utf-8")
    operations = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    for rule in alert_rules():
        name = rule["alert"]
        assert f"alertname: {name}\n" in tests, f"{name} has no promtool test"
        assert f"`{name}`" in operations, f"{name} is not explained in docs/operations.md"
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert {"summary", "description", "runbook"} <= rule["annotations"].keys()


def test_alert_rules_query_only_what_the_code_exports() -> None:
    known = exported()
    problems = [p for rule in alert_rules() for p in check_expression(rule["expr"], known)]
    assert problems == []


def test_dashboard_parses_and_queries_only_what_the_code_exports(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    targets = list(dashboard_targets(dashboard["panels"]))
    assert len(targets) >= 15
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    known = exported()
    problems = [p for target in targets for p in check_expression(target["expr"], known)]
    assert problems == []
    # Every metric the alerts watch is on the dashboard too.
    on_dashboard = {name for t in targets for name, _ in SELECTOR.findall(t["expr"])}
    alerted = {name for r in alert_rules() for name, _ in SELECTOR.findall(r["expr"])}
    assert alerted <= on_dashboard, alerted - on_dashboard

    # Valid PromQL: promtool parses each query as a recording rule ($model → every model).
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": t["expr"].replace("$model", ".*")}
                    for i, t in enumerate(targets)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    run_promtool("check", "rules", str(path), cwd=tmp_path)


def test_a_misspelt_metric_or_label_is_caught() -> None:
    known = exported()
    assert check_expression("embedder_failure_total", known) != []
    assert check_expression('embedder_tasks_total{status="failure"}', known) != []
    assert check_expression("sum by (reason) (embedder_backlog_items)", known) != []
    assert check_expression('sum by (model) (embedder_jobs{state="failed"})', known) == []
    # embedder_maintenance_seconds{job}: Prometheus keeps the target's job, renames its own.
    assert check_expression("max by (job) (embedder_maintenance_seconds_count)", known) != []
    assert (
        check_expression("max by (exported_job) (embedder_maintenance_seconds_count)", known) == []
    )
