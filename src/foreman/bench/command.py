"""The `foreman bench` command: parse options, run the suite, print the table, write JSON.

Only typer is imported at module level: `foreman --help` must not pay for aiohttp and friends.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer


def bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="Shorter windows and a smaller scale set (< 3 min).")
    ] = False,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the figures as JSON here.")
    ] = None,
    endpoint: Annotated[
        str | None,
        typer.Option(help="Measure this running server (loopback) instead of starting one."),
    ] = None,
    only: Annotated[
        str | None,
        typer.Option(
            help="Comma list of figures: api_post_runs, api_get_task, api_lifecycle, "
            "api_lifecycle_one_run, pg_insert, scale, e2e_postgres, e2e_bullmq, e2e_rabbitmq, "
            "e2e_sqs, pickup (every backend); "
            "groups api, e2e."
        ),
    ] = None,
    server_workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Server processes to start (default FOREMAN_SERVER_WORKERS, else one per core).",
        ),
    ] = None,
    server_log_level: Annotated[
        str | None, typer.Option(help="LOG_LEVEL of the started server (default: as configured).")
    ] = None,
    reuse_scale_db: Annotated[
        bool, typer.Option(help="Keep the scale databases and reuse them when present.")
    ] = False,
    api_key: Annotated[
        str | None, typer.Option(help="Key for --endpoint (default: a bench key).")
    ] = None,
    worker_processes: Annotated[
        int | None,
        typer.Option(
            min=1, help="`foreman worker` processes of the end-to-end figures (default 1)."
        ),
    ] = None,
    worker_concurrency: Annotated[
        int | None,
        typer.Option(min=1, help="Handlers at once in each worker process (default 200)."),
    ] = None,
) -> None:
    """Measure API throughput, PostgreSQL's ceiling and scale on this machine; print a table."""
    import asyncio  # heavy imports only when the command runs
    import dataclasses

    from foreman.bench import report as report_module
    from foreman.bench import services, suite
    from foreman.bench.defaults import BENCH_API_KEY, FULL, QUICK
    from foreman.logs import configure_logging
    from foreman.settings import Settings

    settings = Settings()
    configure_logging("INFO")
    if endpoint is not None and not services.is_loopback_host(services.url_host(endpoint)):
        raise typer.BadParameter(
            "the bench only sends load to this machine (loopback)", param_hint="--endpoint"
        )
    try:
        figures = suite.parse_only(only)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--only") from exc
    workers = server_workers or (
        settings.server_workers if "FOREMAN_SERVER_WORKERS" in os.environ else os.cpu_count() or 1
    )
    profile = QUICK if quick else FULL
    profile = dataclasses.replace(
        profile,
        e2e_worker_processes=worker_processes or profile.e2e_worker_processes,
        e2e_worker_concurrency=worker_concurrency or profile.e2e_worker_concurrency,
    )
    options = suite.BenchOptions(
        profile=profile,
        figures=figures,
        endpoint=endpoint,
        api_key=api_key or BENCH_API_KEY,
        server_workers=workers,
        server_log_level=server_log_level,
        reuse_scale_db=reuse_scale_db,
    )
    try:
        import uvloop  # not on Windows
    except ImportError:
        result = asyncio.run(suite.run_bench(settings, options))
    else:
        result = uvloop.run(suite.run_bench(settings, options))
    typer.echo(report_module.format_table(result.results, result.notes))
    typer.echo(
        f"\n{result.meta['cores']} cores, {result.meta['memory_gib']} GiB; "
        f"{options.profile.concurrency} connections, {options.profile.warmup_s:g} s warm-up, "
        f"{options.profile.duration_s:g} s per figure; server processes: {result.meta['server_processes']}; "
        f"worker processes: {profile.e2e_worker_processes} (each {profile.e2e_worker_concurrency} handlers); "
        f"load generator on the same machine; took {result.meta['elapsed_s']:.0f} s"
    )
    if json_path is not None:
        report_module.write_json(json_path, result.as_json())
        typer.echo(f"wrote {json_path}")
