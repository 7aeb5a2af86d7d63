"""A thin aiohttp client for the load: keep-alive connections, pre-encoded bodies, no extras.

aiohttp costs the load generator far less CPU per request than httpx, which matters because the
generator shares this machine's two cores with the server and PostgreSQL.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiohttp
import msgspec

from foreman.bench.defaults import BENCH_API_KEY

REQUEST_TIMEOUT_S = 30.0


class _Id(msgspec.Struct):
    id: str


_decode_id = msgspec.json.Decoder(_Id).decode


def response_id(body: bytes) -> str:
    """The "id" field of a JSON answer (the other fields are skipped, not parsed into objects)."""
    return _decode_id(body).id


class BenchHttp:
    """Requests against one Foreman endpoint through one session (see open_http)."""

    def __init__(self, session: aiohttp.ClientSession, endpoint: str) -> None:
        self.base = endpoint.rstrip("/")
        self._session = session

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """Status and body of one request; path starts with /."""
        async with self._session.request(method, self.base + path, data=body) as response:
            return response.status, await response.read()


@contextlib.asynccontextmanager
async def open_http(
    endpoint: str, *, connections: int, api_key: str = BENCH_API_KEY
) -> AsyncIterator[BenchHttp]:
    """A BenchHttp with at most `connections` open connections, closed on exit."""
    connector = aiohttp.TCPConnector(
        limit=connections, limit_per_host=connections, ttl_dns_cache=None
    )
    session = aiohttp.ClientSession(
        connector=connector,
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
    )
    async with session:
        yield BenchHttp(session, endpoint)
