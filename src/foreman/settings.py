"""Server and worker settings, read once at the edge (the CLI or a test) and passed down."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_RATE_UNITS_S = {
    "": 1.0,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}
MIN_ACL_SECRET_CHARS = 32
_RATE = re.compile(r"^\s*(?P<count>\d+(?:\.\d+)?)\s*(?:/\s*(?P<unit>[a-z]+))?\s*$")


@dataclass(frozen=True, slots=True)
class Rate:
    """``per_s`` requests per second on average, at most ``burst`` at once."""

    per_s: float
    burst: float


def parse_rate(text: str | None, *, burst: int | None = None) -> Rate | None:
    """``"100/s"``, ``"6000/min"``, ``"10/hour"`` or ``"100"`` (per second); None or 0 = no limit.

    The one parser of FOREMAN_RATE_LIMIT; ValueError names the accepted forms.
    """
    if text is None or not text.strip():
        return None
    match = _RATE.match(text.lower())
    if match is None or (match["unit"] or "") not in _RATE_UNITS_S:
        raise ValueError(f"Invalid rate limit {text!r}: use e.g. 100/s or 6000/min")
    per_s = float(match["count"]) / _RATE_UNITS_S[match["unit"] or ""]
    if per_s <= 0:
        return None
    # One second's worth by default, and never less than one request.
    return Rate(per_s=per_s, burst=float(burst) if burst else max(1.0, per_s))


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    """Foreman settings from FOREMAN_* variables (and the unprefixed names SPEC section 5 uses)."""

    model_config = SettingsConfigDict(
        env_prefix="FOREMAN_", env_file=".env", extra="ignore", populate_by_name=True
    )

    # Database: one URL, or the FOREMAN_DB_* parts; none of them = embedded PostgreSQL in data_dir.
    database_url: str | None = None
    db_host: str | None = None
    db_port: int = 5432
    db_name: str = "foreman"
    db_user: str | None = None
    db_password: str | None = None
    db_pool_min: int = Field(default=2, ge=1)
    db_pool_max: int = Field(default=10, ge=1)
    db_command_timeout_s: float = Field(default=5.0, gt=0)
    db_connect_timeout_s: float = Field(default=3.0, gt=0)
    # The URL is a PgBouncer in transaction mode: no prepared statement cache (docs/deployment.md).
    db_pgbouncer: bool = False
    # A direct PostgreSQL URL for LISTEN (long polls' wake-ups); behind PgBouncer, without it,
    # long polls only poll (every poll_interval_s).
    database_listen_url: str | None = None
    data_dir: Path = Path(".foreman")
    auto_migrate: bool = True

    server_host: str = "127.0.0.1"
    server_port: int = Field(default=3000, validation_alias=_env("FOREMAN_SERVER_PORT", "PORT"))
    server_workers: int = Field(default=1, ge=1)
    environment: str = Field(
        default="development", validation_alias=_env("FOREMAN_ENVIRONMENT", "NODE_ENV")
    )
    version: str = Field(default="1.0.0", validation_alias=_env("FOREMAN_VERSION"))
    log_level: str = Field(default="INFO", validation_alias=_env("FOREMAN_LOG_LEVEL", "LOG_LEVEL"))
    log_json: bool = False
    cors_origin: str | None = Field(
        default=None, validation_alias=_env("FOREMAN_CORS_ORIGIN", "CORS_ORIGIN")
    )
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    allow_test_key: bool = True
    api_key: str | None = None

    # Security (docs/security.md). "format" is SPEC section 3's trusted-environment check;
    # "registered" accepts only keys made by `foreman keys create` that are not revoked.
    auth_mode: Literal["format", "registered"] = "format"
    auth_cache_ttl_s: float = Field(default=5.0, ge=0)  # how long a revoked key may still work
    # Requests per organisation per process: "100/s", "6000/min", "100" (= per second).
    rate_limit: str | None = None  # checked by parse_rate
    rate_limit_burst: int | None = Field(default=None, ge=1)  # default: one second's worth
    max_json_depth: int = Field(default=64, ge=2)  # nesting of a request body, envelope included
    body_timeout_s: float = Field(default=30.0, gt=0)  # a body not received by then gets 408
    # Request line + headers (431 beyond), and the time a connection may take to send them.
    max_header_bytes: int = Field(default=64 * 1024, ge=4096)
    header_timeout_s: float = Field(default=10.0, gt=0)
    # Whether /api/v1/config returns REDIS_PASSWORD: "always" (SPEC section 5, the default),
    # "registered" (only to callers of a registered key), "never".
    expose_redis_password: Literal["always", "registered", "never"] = "always"  # noqa: S105

    queue_backend: Literal["postgres", "bullmq", "rabbitmq", "sqs"] = "postgres"
    redis_host: str = Field(
        default="localhost", validation_alias=_env("FOREMAN_REDIS_HOST", "REDIS_HOST")
    )
    redis_port: int = Field(default=6379, validation_alias=_env("FOREMAN_REDIS_PORT", "REDIS_PORT"))
    redis_password: str | None = Field(
        default=None, validation_alias=_env("FOREMAN_REDIS_PASSWORD", "REDIS_PASSWORD")
    )
    redis_db: int | None = Field(
        default=None, validation_alias=_env("FOREMAN_REDIS_DB", "REDIS_DB")
    )
    task_queue_name: str = Field(
        default="foreman:tasks", validation_alias=_env("FOREMAN_TASK_QUEUE_NAME", "TASK_QUEUE_NAME")
    )
    result_queue_name: str = Field(
        default="foreman:results",
        validation_alias=_env("FOREMAN_RESULT_QUEUE_NAME", "RESULT_QUEUE_NAME"),
    )
    # Broker queues per organisation (queue/naming.py): only acme's workers see acme's task ids.
    # false: one queue named TASK_QUEUE_NAME for everyone, for single-organisation deployments
    # whose old Node workers read the name from their own environment.
    queue_per_org: bool = True
    redis_username: str | None = Field(
        default=None, validation_alias=_env("FOREMAN_REDIS_USERNAME", "REDIS_USERNAME")
    )
    # "per-org": a Redis ACL user per organisation, allowed only its own queues' keys and
    # channels, is what /api/v1/config/redis hands out (queue/redis_acl.py, docs/security.md).
    redis_acl: Literal["off", "per-org"] = "off"
    # Per-organisation passwords are HMACs of this secret (every replica derives the same ones).
    redis_acl_secret: str | None = Field(default=None, repr=False)
    # A per-organisation password is replaced this often; the one before stays valid as long.
    redis_acl_rotate_s: float = Field(default=86_400.0, ge=60)

    # rabbitmq (docs/backends.md): the broker, and the type of the queues the server declares.
    # classic: durable, with priorities (quorum queues order by priority only from RabbitMQ 4.0).
    rabbitmq_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    rabbitmq_queue_type: Literal["classic", "quorum"] = "classic"
    # sqs: credentials come from the standard AWS variables and files (botocore's chain); a
    # local SQS-compatible server is named by its URL.
    sqs_endpoint_url: str | None = None
    sqs_region: str | None = Field(
        default=None,
        validation_alias=_env("FOREMAN_SQS_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
    )

    sweep_enabled: bool = True  # run the sweeper in this process (safe in every replica)
    sweep_interval_s: float = Field(default=1.0, gt=0)
    sweep_batch: int = Field(default=1000, ge=1)  # expired leases / Redis checks per sweep
    # bullmq: a ready task is checked for its job only once it has been ready this long, so
    # that a publish in flight after its commit is not mistaken for a lost one.
    sweep_publish_grace_s: float = Field(default=3.0, ge=0)
    # Retention: ended runs older than this many days are deleted by the sweeper (None: kept).
    retention_days: float | None = Field(default=None, gt=0)
    retention_batch: int = Field(default=5000, ge=1)  # rows per retention transaction (one a sweep)
    # Schedules: how often each server process looks for due ones (a tick fires within about this
    # long after its time), and how many it fires per transaction.
    schedule_enabled: bool = True  # run the firing loop in this process (safe in every replica)
    schedule_interval_s: float = Field(default=1.0, gt=0)
    schedule_batch: int = Field(default=100, ge=1)
    # Long polls (claim, wait) re-check at least this often if no NOTIFY woke them (fallback).
    poll_interval_s: float = Field(default=1.0, gt=0)

    # Live run events (GET /runs/:id/events): each watched run is polled this often per process
    # (sooner after a NOTIFY), showing events older than the settle time (a statement's time is
    # taken before it commits); an idle stream gets a comment line this often.
    events_poll_s: float = Field(default=1.0, gt=0)
    events_settle_ms: int = Field(default=300, ge=0)
    events_heartbeat_s: float = Field(default=15.0, gt=0)

    def listen_url(self, database_url: str) -> str | None:
        """Where the LISTEN connection goes; None: nowhere, long polls poll (PgBouncer)."""
        if self.database_listen_url:
            return self.database_listen_url
        return None if self.db_pgbouncer else database_url

    # /metrics: served only with a token (a bearer the scraper sends); unset = no metrics at all,
    # nothing recorded. Per-organisation labels multiply the series by the organisations.
    metrics_token: str | None = None
    metrics_per_org: bool = False
    # Ready/running tasks read per scrape at most (a bounded scan; a gauge at the bound = "at least").
    metrics_queue_scan: int = Field(default=10_000, ge=1)

    # The web dashboard at /ui. Sessions are signed with ui_secret; unset, the server makes one at
    # start (shared by its --workers processes): sessions then end when the server restarts.
    ui_enabled: bool = True
    ui_secret: str | None = None
    ui_session_s: float = Field(default=8 * 3600, gt=0)

    @field_validator("rate_limit")
    @classmethod
    def _check_rate_limit(cls, value: str | None) -> str | None:
        parse_rate(value)
        return value

    @model_validator(mode="after")
    def _check_redis_acl(self) -> Settings:
        if self.redis_acl == "per-org":
            if self.queue_backend != "bullmq":
                raise ValueError("FOREMAN_REDIS_ACL=per-org is for FOREMAN_QUEUE_BACKEND=bullmq")
            if not self.queue_per_org:
                raise ValueError("FOREMAN_REDIS_ACL=per-org needs FOREMAN_QUEUE_PER_ORG=true")
            if len(self.redis_acl_secret or "") < MIN_ACL_SECRET_CHARS:
                raise ValueError(
                    "FOREMAN_REDIS_ACL=per-org needs FOREMAN_REDIS_ACL_SECRET, at least "
                    f"{MIN_ACL_SECRET_CHARS} characters (e.g. `openssl rand -hex 32`)"
                )
        return self

    def rate(self) -> Rate | None:
        """The rate limit per organisation and process; None for no limit."""
        return parse_rate(self.rate_limit, burst=self.rate_limit_burst)

    def resolved_database_url(self) -> str | None:
        """The configured database URL, built from FOREMAN_DB_* if needed; None means embedded."""
        if self.database_url:
            return self.database_url
        if not (self.db_host or self.db_user or self.db_password):
            return None
        user = quote(self.db_user or "postgres", safe="")
        password = f":{quote(self.db_password, safe='')}" if self.db_password else ""
        host = self.db_host or "localhost"
        database = quote(self.db_name, safe="")
        if host.startswith("/"):
            # A socket directory (libpq's convention, e.g. /var/run/postgresql) goes in the query.
            query = f"host={quote(host, safe='/')}&port={self.db_port}"
            return f"postgresql://{user}{password}@/{database}?{query}"
        return f"postgresql://{user}{password}@{host}:{self.db_port}/{database}"
