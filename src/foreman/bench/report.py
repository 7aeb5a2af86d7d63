"""The bench's table and JSON: figures beside the targets of issue 4 and the original's figures."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table: a JSON key, how to judge it, and the stem of its latency keys."""

    key: str
    label: str
    unit: str
    target: float | None = None
    reference: str = ""  # the original TypeScript Foreman on this machine (issue 4)
    stem: str | None = None  # {stem}_p50_ms, {stem}_p99_ms, {stem}_errors, {stem}_server_cpu_us

    @property
    def higher_is_better(self) -> bool:
        return self.unit not in ("ms", "MB", "µs", "calls")


ROWS = (
    Row("api_post_runs_rps", "POST /api/v1/runs", "req/s", 3000, "≈1,500", "api_post_runs"),
    Row("api_get_task_rps", "GET /api/v1/tasks/:id", "req/s", 4200, "≈2,100", "api_get_task"),
    Row(
        "api_lifecycle_per_s",
        "task lifecycle, 200 runs",
        "tasks/s",
        600,
        "≈300",
        "api_lifecycle",
    ),
    Row(
        "api_lifecycle_one_run_per_s",
        "task lifecycle, one run",
        "tasks/s",
        480,
        "≈160",
        "api_lifecycle_one_run",
    ),
    Row("api_lifecycle_one_run_ratio", "  one run / 200 runs", "ratio", 0.8),
    # The slowest of four ~10 MiB bodies (bench/largebody.py); the target is the statement timeout.
    Row("api_large_body_ms", "largest bodies, slowest", "ms", 5000),
    Row("api_large_body_peak_rss_mb", "  server peak RSS", "MB"),
    Row("e2e_postgres_tasks_per_s", "end to end, postgres backend", "tasks/s", 5000, "≈1,800*"),
    Row("cpu_us_per_task", "  CPU per task (postgres)", "µs", 150),
    Row("drain_postgres_tasks_per_s", "processing only, postgres", "tasks/s"),
    Row("api_batch_enqueue_tasks_per_s", "POST /api/v1/tasks/batch", "tasks/s", 40000),
    Row("e2e_bullmq_tasks_per_s", "end to end, bullmq backend", "tasks/s", 2500),
    Row("e2e_bullmq_cpu_us_per_task", "  CPU per task (bullmq)", "µs"),
    Row("e2e_dag_fanin_tasks_per_s", "fan-in: 10,000 tasks + 1 join", "tasks/s"),
    Row("dag_fanin_ratio", "  fan-in / processing only", "ratio", 0.7),
    Row("dag_fanin_e2e_ratio", "  fan-in / end to end", "ratio"),
    Row("e2e_watched_tasks_per_s", "end to end, 10 run watchers", "tasks/s"),
    Row("e2e_watched_ratio", "  watched / end to end", "ratio", 0.95),
    Row("events_p50_ms", "run event delivery p50", "ms"),
    Row("events_p99_ms", "run event delivery p99", "ms"),
    Row("dag_release_p50_ms", "DAG release p50 (chain)", "ms", 5),
    Row("dag_release_p99_ms", "DAG release p99 (chain)", "ms", 25),
    Row("pickup_p50_ms", "pickup latency p50 (postgres)", "ms", 5),
    Row("pickup_p99_ms", "pickup latency p99 (postgres)", "ms", 25),
    Row("pickup_bullmq_p50_ms", "pickup latency p50 (bullmq)", "ms", 5),
    Row("pickup_bullmq_p99_ms", "pickup latency p99 (bullmq)", "ms", 25),
    # Issue 14: RabbitMQ at least 0.8 x the bullmq figure of the same run (2,500 on a normal day).
    Row("e2e_rabbitmq_tasks_per_s", "end to end, rabbitmq backend", "tasks/s", 2000),
    Row("pickup_rabbitmq_p50_ms", "pickup latency p50 (rabbitmq)", "ms", 5),
    Row("pickup_rabbitmq_p99_ms", "pickup latency p99 (rabbitmq)", "ms", 25),
    # SQS on a local moto_server, whose own speed bounds it: measured, no target but the calls.
    Row("e2e_sqs_tasks_per_s", "end to end, sqs backend", "tasks/s"),
    Row("e2e_sqs_calls_per_task", "  SQS calls per task", "calls", 0.5),
    Row("pickup_sqs_p50_ms", "pickup latency p50 (sqs)", "ms"),
    Row("pickup_sqs_p99_ms", "pickup latency p99 (sqs)", "ms"),
    Row(
        "pg_insert_commits_per_s",
        "PostgreSQL single-row commits",
        "commits/s",
        reference="12,000-17,000",
        stem="pg_insert",
    ),
)

SCALE_QUERIES = ("list_tasks", "get_task", "run_data_latest", "run_data_tags", "run_data_prefix")
SCALE_TARGET_MS = 20.0


def _number(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and (unit == "ratio" or abs(value) < 100):
        return f"{value:,.2f}"
    return f"{value:,.0f}"


def _stem_cells(results: dict[str, Any], row: Row) -> list[str]:
    """p50 ms, p99 ms, errors and server µs/op of a row with latency keys; blank cells otherwise."""
    if row.stem is None:
        return [""] * 4
    suffixes = ("_p50_ms", "_p99_ms", "_errors", "_server_cpu_us")
    return [_number(results.get(row.stem + suffix)) for suffix in suffixes]


def _verdict(value: Any, row: Row) -> str:
    if value is None or row.target is None:
        return ""
    ok = value >= row.target if row.higher_is_better else value <= row.target
    sign = "≥" if row.higher_is_better else "≤"
    return f"{'ok' if ok else 'MISS'} ({sign} {_number(row.target, row.unit)})"


def _table(header: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines, strict=True)]
    rule = "  ".join("-" * w for w in widths)
    render = [
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True))
        for line in [header, *lines]
    ]
    return "\n".join([render[0], rule, *render[1:]])


def format_table(results: dict[str, Any], notes: dict[str, str]) -> str:
    """The figures as a plain-text table, then the scale table and any notes."""
    header = [
        "figure", "value", "unit", "p50 ms", "p99 ms", "errors", "server µs/op", "target", "original",
    ]  # fmt: skip
    lines = []
    for row in ROWS:
        value = results.get(row.key)
        lines.append(
            [
                row.label,
                _number(value, row.unit),
                row.unit,
                *_stem_cells(results, row),
                _verdict(value, row),
                row.reference,
            ]
        )
    parts = [_table(header, lines)]
    if any(f"scale_{q}_p99_ms" in results for q in SCALE_QUERIES):
        parts.append(_scale_table(results))
    parts.append(
        "original = the TypeScript Foreman on this machine; * = a Postgres-native Python queue "
        "enqueueing one job at a time (issue 4)"
    )
    parts.extend(f"note: {name}: {text}" for name, text in notes.items())
    return "\n\n".join(parts)


def _scale_table(results: dict[str, Any]) -> str:
    small, large = _number(results.get("scale_small_rows")), _number(results.get("scale_rows"))
    header = [
        "scale query",
        f"p50/p99 ms @{small}",
        f"p50/p99 ms @{large}",
        "p99 growth",
        "buffers (small → large)",
        f"plan @{large}",
        "target",
    ]
    lines = []
    for query in SCALE_QUERIES:
        p99 = results.get(f"scale_{query}_p99_ms")
        verdict = "" if p99 is None else ("ok" if p99 <= SCALE_TARGET_MS else "MISS") + " (≤ 20)"
        lines.append(
            [
                query,
                f"{_number(results.get(f'scale_{query}_p50_ms_small'))} / {_number(results.get(f'scale_{query}_p99_ms_small'))}",
                f"{_number(p99 and results.get(f'scale_{query}_p50_ms'))} / {_number(p99)}",
                _number(results.get(f"scale_{query}_growth"), "ratio"),
                f"{_number(results.get(f'scale_{query}_buffers_small'))} → {_number(results.get(f'scale_{query}_buffers'))}",
                "; ".join(results.get(f"scale_{query}_plan", [])),
                verdict,
            ]
        )
    seq = results.get("scale_seq_scans")
    footer = f"sequential scans: {'none' if not seq else '; '.join(seq)}"
    return _table(header, lines) + "\n" + footer


def write_json(path: Path, report: dict[str, Any]) -> None:
    """Write the report as indented JSON (parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n", encoding="utf-8")
