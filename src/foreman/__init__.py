"""Foreman: workflow orchestration on PostgreSQL.

The SDK: ``Client`` / ``AsyncClient`` call the REST API, ``Worker`` runs task handlers, and every
failure raises a class of ``foreman.errors`` (also exported here).
"""

from foreman import errors
from foreman.client import (
    AsyncClient,
    Client,
    Lease,
    RedisOptions,
    TaskResult,
    TaskSpec,
)
from foreman.errors import (
    ConflictError,
    ForbiddenError,
    ForemanError,
    InputValidationError,
    NotFoundError,
    StatementTimeoutError,
    TransportError,
    UnauthorizedError,
    UnavailableError,
    ValidationError,
)
from foreman.models import (
    Config,
    LeaseStatus,
    Run,
    RunData,
    RunDataList,
    RunList,
    Schedule,
    ScheduleList,
    Task,
    TaskAck,
    TaskList,
)
from foreman.worker import Handlers, TaskContext, Worker, WorkerStats

__all__ = [
    "AsyncClient",
    "Client",
    "Config",
    "ConflictError",
    "ForbiddenError",
    "ForemanError",
    "Handlers",
    "InputValidationError",
    "Lease",
    "LeaseStatus",
    "NotFoundError",
    "RedisOptions",
    "Run",
    "RunData",
    "RunDataList",
    "RunList",
    "Schedule",
    "ScheduleList",
    "StatementTimeoutError",
    "Task",
    "TaskAck",
    "TaskContext",
    "TaskList",
    "TaskResult",
    "TaskSpec",
    "TransportError",
    "UnauthorizedError",
    "UnavailableError",
    "ValidationError",
    "Worker",
    "WorkerStats",
    "errors",
]
