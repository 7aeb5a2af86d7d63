"""The connection pool, the JSON codec and the per-organisation binding of connections.

Request queries run as the role ``foreman_app`` (no BYPASSRLS, owns nothing), so the row-level
security policies of the migrations apply to them. The organisation is a session setting
(``app.current_org_id``) that is set only when a connection changes organisation: that saves a
round trip per request, and it is safe because it is set outside any transaction (a rollback
cannot undo it) and before any query of the request.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import msgspec

from foreman import errors
from foreman.store.pool import Pool

logger = logging.getLogger(__name__)

APP_ROLE = "foreman_app"

_SET_ORG = "SELECT set_config('app.current_org_id', $1, false)"
# A pooled connection idle this long is closed (down to the pool's minimum size).
IDLE_CLOSE_S = 60.0


class Connection(asyncpg.Connection):
    """An asyncpg connection that remembers which organisation it is bound to."""

    __slots__ = ("_foreman_org",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._foreman_org: str | None = None

    async def bind_org(self, org_id: str) -> None:
        """Make org_id the organisation that row-level security lets this connection see."""
        if self._foreman_org != org_id:
            self._foreman_org = None
            await self.execute(_SET_ORG, org_id)
            self._foreman_org = org_id


Db = asyncpg.Connection


def _encode_jsonb(value: Any) -> bytes:
    # jsonb binary format: a version byte, then the JSON text.
    if isinstance(value, msgspec.Raw):
        return b"\x01" + bytes(value)
    return b"\x01" + msgspec.json.encode(value)


def _decode_jsonb(data: bytes) -> msgspec.Raw:
    # Passed through to the response untouched: no parse, no re-encode.
    return msgspec.Raw(data[1:])


async def _init_connection(conn: asyncpg.Connection, *, app_role: bool) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=_encode_jsonb, decoder=_decode_jsonb, schema="pg_catalog", format="binary"
    )
    await conn.set_type_codec("uuid", encoder=str, decoder=str, schema="pg_catalog", format="text")
    if app_role:
        await conn.execute(f"SET ROLE {APP_ROLE}")


async def create_pool(
    dsn: str,
    *,
    min_size: int,
    max_size: int,
    command_timeout_s: float,
    connect_timeout_s: float,
    app_role: bool = True,
) -> Pool[Connection]:
    """Open a pool; with app_role, its connections run as foreman_app under row-level security.

    Nothing is reset when a connection comes back (asyncpg's RESET ALL would be a round trip
    per request, and would drop the role): requests end their transactions, and the pool
    terminates a connection whose lease ended in doubt (see store/pool.py).
    """

    async def connect() -> Connection:
        with translate_errors():
            conn = await asyncpg.connect(
                dsn,
                timeout=connect_timeout_s,
                command_timeout=command_timeout_s,
                connection_class=Connection,
                server_settings={"application_name": "foreman"},
            )
            try:
                await _init_connection(conn, app_role=app_role)
            except BaseException:
                conn.terminate()
                raise
            return conn

    pool = Pool(connect, min_size=min_size, max_size=max_size, max_idle_s=IDLE_CLOSE_S)
    await pool.open()
    return pool


@contextlib.asynccontextmanager
async def org_connection(
    pool: Pool[Connection],
    org_id: str,
    *,
    timeout_s: float = 5.0,
) -> AsyncIterator[Connection]:
    """A pooled connection bound to org_id; errors come out as Foreman errors."""
    with translate_errors():
        async with pool.acquire(timeout_s) as conn:
            try:
                # The caller's queries too, so that an outage raised there ends up below.
                with translate_errors():
                    await conn.bind_org(org_id)
                    yield conn
            except (TimeoutError, errors.UnavailableError):
                # A query outlived the command timeout (a server that no longer answers): giving
                # the connection back would first wait out its cancellation, timeout_s more.
                # Or the database went away mid-request (shut down, crashed): the connection may
                # be left mid-protocol, and its next query would fail with InternalClientError.
                conn.terminate()
                raise


# SQLSTATE 22xxx: the request carried a value PostgreSQL cannot store; say which kind.
_NUL = "Invalid value: text and JSON strings cannot contain NUL (\\u0000) characters"
_DATA_EXCEPTIONS = {
    "22P05": _NUL,  # untranslatable_character: \u0000 inside jsonb
    "22021": _NUL,  # character_not_in_repertoire: a 0x00 byte in a text parameter
    "22003": "Invalid value: a number is out of range",
}
_DATA_EXCEPTION = (
    "Invalid value: the data cannot be stored (e.g. a NUL character or a number out of range)"
)

# SQLSTATE classes that mean the database (not the request) is the problem.
_UNAVAILABLE_CLASSES = ("08", "53", "57", "58")


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn driver errors into Foreman errors, without leaking SQL or driver text."""
    try:
        yield
    except errors.ForemanError:
        raise
    except asyncpg.PostgresError as exc:
        sqlstate = getattr(exc, "sqlstate", "") or ""
        if sqlstate.startswith(_UNAVAILABLE_CLASSES):
            raise errors.UnavailableError() from exc
        if sqlstate.startswith("22"):  # data exception: bad text, \u0000 in JSON, out of range
            raise errors.ValidationError(_DATA_EXCEPTIONS.get(sqlstate, _DATA_EXCEPTION)) from exc
        if sqlstate == "23503":  # foreign key: the referenced row vanished
            raise errors.NotFoundError("Referenced resource not found") from exc
        if sqlstate == "40001" or sqlstate == "40P01":
            raise errors.ConflictError("Concurrent update, try again") from exc
        raise
    except (TimeoutError, OSError, asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
        # InternalClientError: a pooled connection that received the server's FATAL shutdown
        # message while idle is left mid-protocol ("cannot switch to state ..."): a lost
        # connection, not a bug of the request.
        raise errors.UnavailableError() from exc
