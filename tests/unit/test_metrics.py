"""server/metrics.py: the tallies of the request path give what prometheus_client's own calls give."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from foreman.server import metrics
from foreman.worker.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]


def test_added_observations_equal_observe_calls():
    # The contract behind add_observations, which writes prometheus_client's bucket values.
    values = [random.uniform(0, 12) for _ in range(500)] + [0.001, 0.0025, 10.0, 99.0, 0.0]
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    mine = Histogram("h", "h", ("a",), buckets=metrics.HTTP_BUCKETS, registry=ours)
    reference = Histogram("h", "h", ("a",), buckets=metrics.HTTP_BUCKETS, registry=theirs)
    tally = metrics._Observations(metrics.HTTP_BUCKETS)
    for value in values:
        tally.observe(("x",), value)
        reference.labels("x").observe(value)
    for key, row in tally.take().items():
        metrics.add_observations(mine, key, row)
    assert _without_created(generate_latest(ours)) == _without_created(generate_latest(theirs))
    assert tally.take() == {}


def _without_created(text: bytes) -> list[bytes]:
    return [line for line in text.splitlines() if b"_created" not in line]


def test_methods_outside_http_share_one_label():
    server = metrics.ServerMetrics(per_org=False)
    server.request("BREW", "unmatched", 405, 0.0, None)
    server.request("GET", "/health", 200, 0.0, None)
    server.flush()
    text = generate_latest(server.registry).decode()
    assert 'method="other",route="unmatched",status="405"' in text
    assert "BREW" not in text


def test_the_grafana_dashboard_names_only_metrics_that_exist():
    dashboard = json.loads((ROOT / "docs" / "grafana" / "foreman-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"foreman_[a-z_]+", expr)}
    server = metrics.ServerMetrics(per_org=False)
    worker = WorkerMetrics()
    known = {
        family.name + suffix
        for registry in (server.registry, worker.registry)
        for family in registry.collect()
        for suffix in ("", "_total", "_bucket", "_count", "_sum")
    }
    queue = {
        "foreman_queue_ready_tasks",
        "foreman_queue_running_tasks",
        "foreman_queue_blocked_tasks",
    }
    known |= queue | {"foreman_queue_oldest_ready_age_seconds"}
    assert used <= known, used - known
    assert len(used) >= 14
