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
from collections.abc import Iterator
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
# asyncpg gives up on a statement this long after PostgreSQL's statement_timeout would cancel it.
COMMAND_TIMEOUT_GRACE_S = 1.0


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


async def _init_connection(
    conn: asyncpg.Connection, *, app_role: bool, statement_timeout_s: float
) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=_encode_jsonb, decoder=_decode_jsonb, schema="pg_catalog", format="binary"
    )
    await conn.set_type_codec("uuid", encoder=str, decoder=str, schema="pg_catalog", format="text")
    timeout_ms = max(1, round(statement_timeout_s * 1000))
    role = f"SET ROLE {APP_ROLE}; " if app_role else ""
    await conn.execute(f"{role}SET statement_timeout = {timeout_ms}")


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

    A statement may run command_timeout_s: PostgreSQL cancels it then (statement_timeout), so it
    surely did not take effect, and the answer says so (StatementTimeoutError, 504). asyncpg's
    own timeout, a moment later, means PostgreSQL stopped answering (frozen, cut off): an outage
    (503). asyncpg alone was not enough: it cannot be sure its cancel request reaches the server
    (terminating the connection drops a pending one), and a statement it gave up on could commit
    after the client was told it failed.

    Nothing is reset when a connection comes back (asyncpg's RESET ALL would be a round trip
    per request, and would drop the role): requests end their transactions, and the pool
    terminates a connection whose lease ended in doubt (see store/pool.py).
    """

    async def connect() -> Connection:
        with translate_errors():
            conn = await asyncpg.connect(
                dsn,
                timeout=connect_timeout_s,
                command_timeout=command_timeout_s + COMMAND_TIMEOUT_GRACE_S,
                connection_class=Connection,
                server_settings={"application_name": "foreman"},
            )
            try:
                await _init_connection(
                    conn, app_role=app_role, statement_timeout_s=command_timeout_s
                )
            except BaseException:
                conn.terminate()
                raise
            return conn

    pool = Pool(connect, min_size=min_size, max_size=max_size, max_idle_s=IDLE_CLOSE_S)
    await pool.open()
    return pool


class OrgConnection:
    """``async with org_connection(pool, org_id) as conn``: a pooled connection bound to org_id.

    Errors of the pool, of the binding and of the caller's queries come out as Foreman errors.
    A class rather than a generator-based context manager: it is on every request's path.
    """

    __slots__ = ("_conn", "_org_id", "_pool", "_timeout_s")

    def __init__(self, pool: Pool[Connection], org_id: str, timeout_s: float) -> None:
        self._pool = pool
        self._org_id = org_id
        self._timeout_s = timeout_s
        self._conn: Connection | None = None

    async def __aenter__(self) -> Connection:
        try:
            conn = await self._pool.take(self._timeout_s)
        except TimeoutError as exc:
            # Every connection stayed in use: the server is busy, the database may well be fine.
            raise errors.UnavailableError(
                f"Server busy: no database connection was free within {self._timeout_s:g} s"
            ) from exc
        except Exception as exc:
            error = translated(exc)
            if error is exc:
                raise
            raise error from exc
        self._conn = conn
        try:
            await conn.bind_org(self._org_id)
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return conn

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if exc is None:
            self._pool.give_back(conn)
            return
        error = translated(exc) if isinstance(exc, Exception) else exc
        # In doubt (the pool terminates it): a cancelled lease, or an unavailable database — a
        # query outlived the command timeout and would first have its cancellation waited out,
        # or the server went away mid-request and left the connection mid-protocol, its next
        # query failing with InternalClientError.
        # A statement PostgreSQL cancelled itself (StatementTimeoutError) leaves it in step.
        in_doubt = not isinstance(exc, Exception) or (
            isinstance(error, errors.UnavailableError)
            and not isinstance(error, errors.StatementTimeoutError)
        )
        self._pool.give_back(conn, in_doubt=in_doubt)
        if error is not exc:
            raise error from exc


def org_connection(pool: Pool[Connection], org_id: str, *, timeout_s: float = 5.0) -> OrgConnection:
    """A pooled connection bound to org_id (see OrgConnection); waits timeout_s at most for one."""
    return OrgConnection(pool, org_id, timeout_s)


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
# query_canceled (class 57): PostgreSQL's statement_timeout, or a cancel; lock_not_available: its
# lock_timeout. Slow statements, not an outage.
_TIMEOUT_STATES = ("57014", "55P03")


def translated(exc: BaseException) -> BaseException:
    """The Foreman error that a driver error stands for, or exc itself when there is none.

    No SQL or driver text leaks into the Foreman error.
    """
    if isinstance(exc, errors.ForemanError):
        return exc
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", "") or ""
        if sqlstate in _TIMEOUT_STATES:
            return errors.StatementTimeoutError()
        if sqlstate.startswith(_UNAVAILABLE_CLASSES):
            return errors.UnavailableError()
        if sqlstate.startswith("22"):  # data exception: bad text, \u0000 in JSON, out of range
            return errors.ValidationError(_DATA_EXCEPTIONS.get(sqlstate, _DATA_EXCEPTION))
        if sqlstate == "23503":  # foreign key: the referenced row vanished
            return errors.NotFoundError("Referenced resource not found")
        if sqlstate == "40001" or sqlstate == "40P01":
            return errors.ConflictError("Concurrent update, try again")
        return exc
    if isinstance(
        exc, (TimeoutError, OSError, asyncpg.InterfaceError, asyncpg.InternalClientError)
    ):
        # TimeoutError: no answer from PostgreSQL, which cancels a slow statement itself a moment
        # earlier (see create_pool).
        # InternalClientError: a pooled connection that received the server's FATAL shutdown
        # message while idle is left mid-protocol ("cannot switch to state ..."): a lost
        # connection, not a bug of the request.
        return errors.UnavailableError()
    return exc


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Raise driver errors as the Foreman errors they stand for (see translated)."""
    try:
        yield
    except Exception as exc:
        error = translated(exc)
        if error is exc:
            raise
        raise error from exc
