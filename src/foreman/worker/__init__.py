"""Workers: run task handlers for the tasks that the Foreman server hands out."""

from foreman.worker.context import TaskContext
from foreman.worker.handlers import Handlers
from foreman.worker.worker import Handler, Worker, WorkerStats

__all__ = ["Handler", "Handlers", "TaskContext", "Worker", "WorkerStats"]
