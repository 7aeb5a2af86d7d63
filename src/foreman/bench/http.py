"""A thin aiohttp client for the load: keep-alive connections, pre-encoded bodies, no extras.

aiohttp costs the load generator far less CPU per request than httpx, which matters because the
generator shares this machine's two cores with the server and PostgreSQL.
"""

from __future__ import annotations

from types import TracebackType

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
    """Requests against one Foreman endpoint with at most `connections` open connections."""

    def __init__(self, endpoint: str, *, connections: int, api_key: str = BENCH_API_KEY) -> None:
        self.base = endpoint.rstrip("/")
        self._connections = connections
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> BenchHttp:
        connector = aiohttp.TCPConnector(
            limit=self._connections, limit_per_host=self._connections, ttl_dns_cache=None
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """Status and body of one request; path starts with /."""
        assert self._session is not None, "use BenchHttp as an async context manager"
        async with self._session.request(method, self.base + path, data=body) as response:
            return response.status, await response.read()
