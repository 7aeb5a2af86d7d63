"""The Foreman client SDK: ``Client`` (blocking) and ``AsyncClient`` (asyncio), same methods."""

from foreman.client._async import AsyncClient
from foreman.client._base import (
    ClientOptions,
    Lease,
    RedisOptions,
    TaskResult,
    TaskSpec,
    chunks,
    encode_json,
    retry_delay_s,
)
from foreman.client._sync import Client

__all__ = [
    "AsyncClient",
    "Client",
    "ClientOptions",
    "Lease",
    "RedisOptions",
    "TaskResult",
    "TaskSpec",
    "chunks",
    "encode_json",
    "retry_delay_s",
]
