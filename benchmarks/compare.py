"""Compare server configurations in alternating rounds (A B, B A, A B, ...).

On a shared 2-core machine the noise between two runs minutes apart (±15-25 %) is larger than
most differences worth measuring, so each round measures every configuration back to back, the
order flips every round, and the verdict is the median over rounds plus each round's ratio.

    python benchmarks/compare.py --rounds 4 --only api_post_runs,api_get_task \\
        --config "w1:workers=1" --config "w2:workers=2"

A configuration is NAME:item,item,... with items workers=N, log=LEVEL, pghost=/var/run/postgresql
(the server reaches PostgreSQL through that Unix socket directory), path=DIR (put first on the
server's PYTHONPATH: a variant copy of src/ to measure a code change without editing the tree), or
any UPPERCASE=value environment variable (FOREMAN_DB_POOL_MAX=10).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from foreman.bench import api, services, suite, sysinfo
from foreman.bench.defaults import FULL, Profile
from foreman.bench.http import open_http
from foreman.logs import configure_logging
from foreman.settings import Settings

logger = logging.getLogger(__name__)

FIGURES = tuple(f for f in suite.API_FIGURES if f != "api_large_body")  # loads only


@dataclass(frozen=True, slots=True)
class Config:
    """One server configuration under comparison."""

    name: str
    workers: int = 1
    log_level: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    pghost: str | None = None  # connect the server to PostgreSQL here (a Unix socket directory)


def with_host(url: str, host: str) -> str:
    """url reaching its server at host instead (a directory: a Unix socket; libpq's ?host=)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = f"{netloc[0]}@" if len(netloc) == 2 else ""
    query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("host="))
    query = "&".join(filter(None, [query, f"host={host}"]))
    return urlunsplit(parts._replace(netloc=userinfo, query=query))


def parse_config(text: str) -> Config:
    """NAME:workers=2,log=WARNING,path=/tmp/variant/src,FOREMAN_DB_POOL_MAX=10."""
    name, _, items = text.partition(":")
    workers, log_level, env, pghost = 1, None, {}, None
    for item in filter(None, (part.strip() for part in items.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r} is not KEY=VALUE")
        if key == "workers":
            workers = int(value)
        elif key == "log":
            log_level = value
        elif key == "pghost":
            pghost = value
        elif key == "path":
            env["PYTHONPATH"] = value
        elif key.isupper():
            env[key] = value
        else:
            raise ValueError(f"unknown item {key!r} (workers, log, path or an UPPERCASE variable)")
    return Config(name or text, workers, log_level, env, pghost)


async def _round(
    database_url: str, config: Config, figures: list[str], profile: Profile
) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    if config.pghost is not None:
        database_url = with_host(database_url, config.pghost)
    async with services.run_server(
        database_url, workers=config.workers, log_level=config.log_level, env=config.env
    ) as server:
        probe = sysinfo.CpuProbe(server.pids, services.BENCH_DATABASE)
        async with open_http(server.endpoint, connections=profile.concurrency) as http:
            for figure in figures:
                result = await api.measure_figure(http, figure, profile, probe)
                s = result.summary
                results[figure] = {
                    "per_s": round(s.per_s, 1),
                    "p50_ms": s.p50_ms,
                    "p99_ms": s.p99_ms,
                    "errors": s.errors,
                    **result.cpu,
                    **{f"{k}_us": v for k, v in result.cpu_us_per_op().items()},
                }
                logger.info(
                    "%s %s: %.0f/s p99 %.1f ms cpu %s",
                    config.name,
                    figure,
                    s.per_s,
                    s.p99_ms or 0,
                    result.cpu,
                )
    return results


async def compare(
    configs: list[Config], *, figures: list[str], rounds: int, profile: Profile
) -> dict[str, Any]:
    """Every configuration once per round, order flipped each round; all values kept."""
    values: dict[str, dict[str, list[dict[str, Any]]]] = {
        c.name: {f: [] for f in figures} for c in configs
    }
    with services.postgres_server(Settings()) as server:
        database_url = await services.fresh_bench_database(server)
        try:
            for index in range(rounds):
                order = configs if index % 2 == 0 else configs[::-1]
                for config in order:
                    measured = await _round(database_url, config, figures, profile)
                    for figure, value in measured.items():
                        values[config.name][figure].append(value)
        finally:
            await services.drop_database(server.admin_url, services.BENCH_DATABASE)
    return {"meta": {**sysinfo.machine(), "rounds": rounds, "duration_s": profile.duration_s,
                     "warmup_s": profile.warmup_s, "concurrency": profile.concurrency,
                     "configs": [dataclasses.asdict(c) for c in configs]},
            "values": values}  # fmt: skip


def summary_table(result: dict[str, Any]) -> str:
    """Median per configuration and figure, and each round's ratio to the first configuration."""
    values = result["values"]
    names = list(values)
    lines = []
    for figure in next(iter(values.values())):
        base = [v["per_s"] for v in values[names[0]][figure]]
        for name in names:
            rates = [v["per_s"] for v in values[name][figure]]
            p99 = [v["p99_ms"] for v in values[name][figure] if v["p99_ms"] is not None]
            server = [v["server_us"] for v in values[name][figure] if v.get("server_us")]
            ratios = [r / b for r, b in zip(rates, base, strict=True) if b]
            lines.append(
                f"{figure:24} {name:14} median {statistics.median(rates):8.0f}/s  "
                f"p99 {statistics.median(p99) if p99 else float('nan'):7.1f} ms  "
                f"server {statistics.median(server) if server else float('nan'):5.0f} us/op  "
                f"rounds {' '.join(f'{r:.0f}' for r in rates)}  "
                f"vs {names[0]} {' '.join(f'{x:.2f}' for x in ratios)}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line of benchmarks/compare.py."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", action="append", required=True, help="NAME:items (repeat)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--only", default=",".join(FIGURES))
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    configure_logging("INFO")
    figures = [f for f in args.only.split(",") if f]
    unknown = set(figures) - set(FIGURES)
    if unknown:
        parser.error(f"unknown figures {sorted(unknown)}; choose from {', '.join(FIGURES)}")
    profile = Profile(
        name="compare",
        warmup_s=args.warmup,
        duration_s=args.duration,
        get_task_pool=FULL.get_task_pool,
    )
    configs = [parse_config(text) for text in args.config]
    try:
        import uvloop  # not on Windows
    except ImportError:
        result = asyncio.run(compare(configs, figures=figures, rounds=args.rounds, profile=profile))
    else:
        result = uvloop.run(compare(configs, figures=figures, rounds=args.rounds, profile=profile))
    sys.stdout.write(summary_table(result) + "\n")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
