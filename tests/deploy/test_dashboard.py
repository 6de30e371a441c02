"""The Grafana dashboard parses, has the panels operators need, and every PromQL expression
names metrics that the code defines (a renamed metric would leave a panel silently empty)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "sightline.json"
METRIC_NAME = re.compile(r"\bsightline_[a-z0-9_]+\b")
DEFINED = re.compile(r"""["'](sightline_[a-z0-9_]+)["']""")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def defined_metrics() -> set[str]:
    """Every metric name the code registers (string literals in service/ and worker/)."""
    names: set[str] = set()
    for folder in ("service", "worker"):
        for path in (REPO / folder).rglob("*.py"):
            names.update(DEFINED.findall(path.read_text(encoding="utf-8")))
    return names


def known(name: str, defined: set[str]) -> bool:
    if name in defined:
        return True
    return any(name.endswith(suffix) and name.removesuffix(suffix) in defined for suffix in HISTOGRAM_SUFFIXES)


@pytest.fixture(scope="module")
def panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] and dashboard["title"]
    found: list[dict[str, Any]] = dashboard["panels"]
    return found


def test_every_panel_queries_metrics_the_code_defines(panels: list[dict[str, Any]]) -> None:
    defined = defined_metrics()
    assert {"sightline_job_seconds", "sightline_job_failures_total", "sightline_queue_depth"} <= defined
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = METRIC_NAME.findall(target["expr"])
            assert names, (panel["title"], target["expr"])
            unknown = [name for name in names if not known(name, defined)]
            assert not unknown, f"panel {panel['title']!r} queries undefined metrics {unknown}"


def test_dashboard_has_the_operator_panels(panels: list[dict[str, Any]]) -> None:
    exprs = " ".join(target["expr"] for panel in panels for target in panel["targets"])
    assert "rate(sightline_job_seconds_count" in exprs  # throughput
    assert "histogram_quantile(0.5, sum by (le) (rate(sightline_job_seconds_bucket" in exprs
    assert "histogram_quantile(0.95, sum by (le) (rate(sightline_job_seconds_bucket" in exprs
    assert "sightline_queue_depth" in exprs
    assert "sum by (code) (rate(sightline_job_failures_total" in exprs
    assert "sum by (route) (rate(sightline_http_requests_total" in exprs
    assert "sightline_http_request_seconds_bucket" in exprs
    # Queue depth comes from the beat alone: never summed over API replicas.
    assert "sum(sightline_jobs" not in exprs
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
