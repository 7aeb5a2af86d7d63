"""The bench's printed table: the figure names, cells and verdicts users read (no I/O)."""

from __future__ import annotations

from foreman.bench.loadgen import LoadResult
from foreman.bench.report import format_table
from foreman.bench.stats import summarize
from foreman.bench.suite import ALL_KEYS, Report


def _lines(text: str) -> dict[str, str]:
    """The rows of the first table by their label."""
    table = text.split("\n\n")[0].splitlines()[2:]
    return {line[:31].strip(): line[31:] for line in table}


def test_table_names_every_figure_with_its_cells_and_verdict():
    results = dict.fromkeys(ALL_KEYS) | {
        "api_get_task_rps": 4400.4,
        "api_get_task_p50_ms": 6.7,
        "api_get_task_p99_ms": 19.55,
        "api_get_task_errors": 0,
        "api_get_task_server_cpu_us": 156.0,
        "pickup_p50_ms": 7.5,
        "cpu_us_per_task": 180.4,
        "pg_insert_commits_per_s": 8404.2,
        "pg_insert_p50_ms": 3.21,
    }
    text = format_table(results, {"e2e_bullmq": "failed: no Redis"})
    rows = _lines(text)
    assert list(rows) == [
        "POST /api/v1/runs",
        "GET /api/v1/tasks/:id",
        "task lifecycle, 200 runs",
        "task lifecycle, one run",
        "one run / 200 runs",
        "largest bodies, slowest",
        "server peak RSS",
        "end to end, postgres backend",
        "CPU per task (postgres)",
        "processing only, postgres",
        "POST /api/v1/tasks/batch",
        "end to end, bullmq backend",
        "CPU per task (bullmq)",
        "fan-in: 10,000 tasks + 1 join",
        "fan-in / processing only",
        "fan-in / end to end",
        "end to end, 10 run watchers",
        "watched / end to end",
        "run event delivery p50",
        "run event delivery p99",
        "DAG release p50 (chain)",
        "DAG release p99 (chain)",
        "pickup latency p50 (postgres)",
        "pickup latency p99 (postgres)",
        "pickup latency p50 (bullmq)",
        "pickup latency p99 (bullmq)",
        "end to end, rabbitmq backend",
        "pickup latency p50 (rabbitmq)",
        "pickup latency p99 (rabbitmq)",
        "end to end, sqs backend",
        "SQS calls per task",
        "pickup latency p50 (sqs)",
        "pickup latency p99 (sqs)",
        "PostgreSQL single-row commits",
    ]
    assert "MISS (≤ 150)" in rows["CPU per task (postgres)"]
    get_task = rows["GET /api/v1/tasks/:id"].split()
    assert get_task[:6] == ["4,400", "req/s", "6.70", "19.55", "0", "156"]
    assert "ok (≥ 4,200)" in rows["GET /api/v1/tasks/:id"]
    assert "MISS (≤ 5)" in rows["pickup latency p50 (postgres)"]  # lower is better in ms
    assert rows["PostgreSQL single-row commits"].split()[:4] == ["8,404", "commits/s", "3.21", "—"]
    assert "api_large_body_peak_rss_mb" in ALL_KEYS
    assert "note: e2e_bullmq: failed: no Redis" in text


def test_report_add_load_writes_the_json_keys_of_a_figure():
    report = Report()
    summary = summarize([0.001, 0.002, 0.003], errors=1, duration_s=2.0)
    report.add_load("api_post_runs", LoadResult(summary, 32, 2.0, {"server_cores": 0.5}))
    assert report.results == {
        "api_post_runs_rps": 1.5,
        "api_post_runs_p50_ms": 2.0,
        "api_post_runs_p99_ms": 3.0,
        "api_post_runs_max_ms": 3.0,
        "api_post_runs_errors": 1,
        "api_post_runs_operations": 3,
        "api_post_runs_server_cpu_us": 333333.3,
    }
    assert report.details["api_post_runs"]["concurrency"] == 32
