"""The bench's table and JSON: figures beside the targets of issue 4 and the original's figures."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table: a JSON key and how to judge it."""

    key: str
    label: str
    unit: str
    target: float | None = None
    higher_is_better: bool = True
    reference: str = ""  # the original TypeScript Foreman on this machine (issue 4)
    p50_key: str | None = None
    p99_key: str | None = None
    errors_key: str | None = None


def _api(stem: str, key: str, label: str, unit: str, target: float, reference: str) -> Row:
    return Row(
        key,
        label,
        unit,
        target,
        True,
        reference,
        f"{stem}_p50_ms",
        f"{stem}_p99_ms",
        f"{stem}_errors",
    )


ROWS = (
    _api("api_post_runs", "api_post_runs_rps", "POST /api/v1/runs", "req/s", 3000, "≈1,500"),
    _api("api_get_task", "api_get_task_rps", "GET /api/v1/tasks/:id", "req/s", 4200, "≈2,100"),
    _api(
        "api_lifecycle", "api_lifecycle_per_s", "task lifecycle, 200 runs", "tasks/s", 600, "≈300"
    ),
    _api(
        "api_lifecycle_one_run",
        "api_lifecycle_one_run_per_s",
        "task lifecycle, one run",
        "tasks/s",
        480,
        "≈160",
    ),
    Row("api_lifecycle_one_run_ratio", "  one run / 200 runs", "ratio", 0.8),
    # The slowest of four ~10 MiB bodies (bench/largebody.py); the target is the statement timeout.
    Row("api_large_body_ms", "largest bodies, slowest", "ms", 5000, higher_is_better=False),
    Row("api_large_body_peak_rss_mb", "  server peak RSS", "MB", higher_is_better=False),
    Row(
        "e2e_postgres_tasks_per_s",
        "end to end, postgres backend",
        "tasks/s",
        5000,
        reference="≈1,800*",
    ),
    Row("e2e_bullmq_tasks_per_s", "end to end, bullmq backend", "tasks/s", 2500),
    Row("pickup_p50_ms", "pickup latency p50 (postgres)", "ms", 5, higher_is_better=False),
    Row("pickup_p99_ms", "pickup latency p99 (postgres)", "ms", 25, higher_is_better=False),
    Row("pickup_bullmq_p50_ms", "pickup latency p50 (bullmq)", "ms", 5, higher_is_better=False),
    Row("pickup_bullmq_p99_ms", "pickup latency p99 (bullmq)", "ms", 25, higher_is_better=False),
    Row(
        "pg_insert_commits_per_s",
        "PostgreSQL single-row commits",
        "commits/s",
        reference="12,000-17,000",
        p50_key="pg_insert_p50_ms",
        p99_key="pg_insert_p99_ms",
        errors_key="pg_insert_errors",
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


def _server_cpu(results: dict[str, Any], row: Row) -> str:
    if row.p50_key is None:
        return ""
    return _number(results.get(row.p50_key.removesuffix("_p50_ms") + "_server_cpu_us"))


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
                _number(results.get(row.p50_key)) if row.p50_key else "",
                _number(results.get(row.p99_key)) if row.p99_key else "",
                _number(results.get(row.errors_key)) if row.errors_key else "",
                _server_cpu(results, row),
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
