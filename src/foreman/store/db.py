"""The connection pool, the JSON codec and the binding of connections to an organisation.

Request queries run as the role ``foreman_app`` (no BYPASSRLS, owns nothing), so the row-level
security policies of the migrations apply to them, and see one organisation
(``app.current_org_id``). How that is bound depends on what sits between us and PostgreSQL:

* **Directly** (the default), role and statement timeout are session settings made when a
  connection opens, and the organisation is a session setting too, changed only when the
  connection changes organisation: a request of the organisation the connection served last
  pays nothing. The change travels in front of the next statement, in its round trip, and only
  outside a transaction block; a connection whose last change may have rolled back forgets what
  it holds and sends it again. Inside a transaction block a pending change is made for that
  transaction only (``set_config(..., true)``).
* **Behind PgBouncer in transaction mode** (FOREMAN_DB_PGBOUNCER), nothing may be session
  state: the next transaction may run on a server connection another client used. Every
  statement's transaction first sets the role, the organisation and the statement timeout with
  ``set_config(..., true)`` (``SET LOCAL``), so they hold for exactly that transaction.

Either way the settings travel in the statement's own round trip: a Bind and an Execute of the
setter are written to the socket just before asyncpg's own messages for the statement, and the
one Sync at their end makes the two one implicit transaction (see ``Connection._do_execute``).
"""

from __future__ import annotations

import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import asyncpg
import msgspec

from foreman import errors
from foreman.settings import Settings
from foreman.store.pool import Pool

logger = logging.getLogger(__name__)

APP_ROLE = "foreman_app"
# set_config(..., "none", ...) is RESET ROLE: the session's own login (the sweeper, the owner).
OWNER_ROLE = "none"

# Returns no row (each set_config returns its new value, never NULL), so that no DataRow of its
# own reaches asyncpg; the OR makes PostgreSQL evaluate all three to know that.
_SET_LOCAL = (
    "SELECT WHERE set_config('role', $1, true) IS NULL"
    " OR set_config('app.current_org_id', $2, true) IS NULL"
    " OR set_config('statement_timeout', $3, true) IS NULL"
)
# The organisation alone, for a session ($2 false) or for the transaction block ($2 true).
_SET_ORG = "SELECT WHERE set_config('app.current_org_id', $1, $2::bool) IS NULL"
ORG_SETTER_NAME = "foreman_set_org"
_PREPARE_ORG_SETTER = f"PREPARE {ORG_SETTER_NAME}(text, bool) AS {_SET_ORG}"
_TEXT_OID = 25
# Statements asyncpg's Transaction sends without parameters: they stay simple queries.
_TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")
# A pooled connection idle this long is closed (down to the pool's minimum size).
IDLE_CLOSE_S = 60.0
# asyncpg gives up on a statement this long after PostgreSQL's statement_timeout would cancel it.
COMMAND_TIMEOUT_GRACE_S = 1.0
# Organisations whose setter messages are kept ready (per pool); beyond, the cache starts again.
_PREFIX_CACHE_MAX = 4096


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def _cstr(value: str) -> bytes:
    return value.encode() + b"\x00"


class Binder:
    """The protocol messages that bind a connection's statements to an organisation, ready to be
    written before a statement's own.

    ``per_transaction`` (PgBouncer): every statement carries role, organisation and statement
    timeout for its own transaction; the setter is parsed again, as the unnamed statement, in
    front of each (no statement outlives a transaction there; with its cache off asyncpg parses
    its own statements again in every Bind too). Otherwise role and statement timeout are set for
    the session when the connection opens (``open_session``), which also prepares the named
    organisation setter that ``prefix`` binds.
    """

    __slots__ = ("_cache", "_parse", "_role", "_timeout", "per_transaction")

    def __init__(self, *, role: str, statement_timeout_ms: int, per_transaction: bool) -> None:
        self._role = role
        self._timeout = statement_timeout_ms
        self.per_transaction = per_transaction
        self._parse = _message(
            b"P", _cstr("") + _cstr(_SET_LOCAL) + struct.pack("!hiii", 3, *[_TEXT_OID] * 3)
        )
        self._cache: dict[tuple[str, bool], bytes] = {}

    def prefix(self, org_id: str, *, local: bool) -> bytes:
        """The setter's messages for org_id ("": no org), ready to write. Per transaction: Parse,
        Bind and Execute of the whole setter (local always). Otherwise Bind and Execute of the
        prepared organisation setter, for the session or (local) for the transaction block."""
        key = (org_id, local)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        if len(self._cache) >= _PREFIX_CACHE_MAX:
            self._cache.clear()
        if self.per_transaction:
            values = (self._role.encode(), org_id.encode(), str(self._timeout).encode())
            prefix = self._parse + _bind_execute("", values)
        else:
            prefix = _bind_execute(ORG_SETTER_NAME, (org_id.encode(), b"t" if local else b"f"))
        self._cache[key] = prefix
        return prefix

    async def open_session(self, conn: asyncpg.Connection) -> None:
        """Session settings of a new connection (nothing when every statement carries them)."""
        if self.per_transaction:
            return
        role = f"SET ROLE {self._role}; " if self._role != OWNER_ROLE else ""
        await conn.execute(f"{role}SET statement_timeout = {self._timeout}; {_PREPARE_ORG_SETTER}")


def _bind_execute(statement: str, values: tuple[bytes, ...]) -> bytes:
    # Bind: unnamed portal, the statement, every parameter in text format, results in text.
    params = b"".join(struct.pack("!i", len(v)) + v for v in values)
    bind = _cstr("") + _cstr(statement) + struct.pack("!hh", 1, 0)
    bind += struct.pack("!h", len(values)) + params + struct.pack("!h", 0)
    return _message(b"B", bind) + _message(b"E", _cstr("") + struct.pack("!i", 0))


class Connection(asyncpg.Connection):
    """An asyncpg connection whose statements see the organisation it is bound to (Binder)."""

    __slots__ = ("_foreman_binder", "_foreman_org", "_foreman_session_org")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._foreman_binder: Binder | None = None
        self._foreman_org = ""  # the organisation its statements must see ("": none)
        # What the session holds (direct connections); None: unknown, a change may have rolled back.
        self._foreman_session_org: str | None = ""

    def use_binder(self, binder: Binder) -> None:
        """From now on every statement runs with binder's settings, and no organisation."""
        self._foreman_binder = binder

    def bind_org(self, org_id: str) -> None:
        """Make org_id the organisation row-level security lets the next statements see."""
        if self._foreman_binder is None:
            raise errors.ForemanError("bind_org needs a connection of an app pool")
        self._foreman_org = org_id

    def unbind_org(self) -> None:
        """Statements see no organisation again (the connection goes back to its pool)."""
        self._foreman_org = ""

    def _foreman_prefix(self) -> bytes | None:
        binder = self._foreman_binder
        if binder is None:
            return None
        if binder.per_transaction:
            return binder.prefix(self._foreman_org, local=True)
        if self._foreman_session_org == self._foreman_org:
            return None
        return binder.prefix(self._foreman_org, local=self.is_in_transaction())

    async def _do_execute(
        self,
        query: str,
        executor: Callable[..., Any],
        timeout: Any,  # noqa: ASYNC109
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        # Every extended-protocol statement of asyncpg (fetch*, execute with arguments,
        # executemany) passes here with the executor that writes its Bind/Execute/Sync: the
        # setter's messages go out first, on the same socket, in the same round trip. asyncpg
        # reads their answers (BindComplete, CommandComplete, no row) as part of the
        # statement's. Fenced by asyncpg's upper bound and tests/integration/test_pgbouncer.py.
        prefix = self._foreman_prefix()
        if prefix is None:
            return await super()._do_execute(query, executor, timeout, *args, **kwargs)  # type: ignore[misc]
        write = self._transport.write  # type: ignore[attr-defined]

        def bound(statement: Any, timeout: Any) -> Any:
            write(prefix)
            return executor(statement, timeout)

        binder = self._foreman_binder
        session = binder is not None and not binder.per_transaction and not self.is_in_transaction()
        org = self._foreman_org
        if session:
            # Until the answer: the statement may fail and roll the setting back with it.
            self._foreman_session_org = None
        result = await super()._do_execute(query, bound, timeout, *args, **kwargs)  # type: ignore[misc]
        if session:
            self._foreman_session_org = org
        return result

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:  # noqa: ASYNC109
        """asyncpg's execute; a statement without arguments that must carry a setting is sent as
        an extended-protocol one too, so that it does (one statement only)."""
        if (
            args
            or self._foreman_prefix() is None
            or query.lstrip().upper().startswith(_TRANSACTION_CONTROL)
        ):
            return await super().execute(query, *args, timeout=timeout)
        _, status, _ = await self._execute(  # type: ignore[attr-defined]
            query, (), 0, timeout, return_status=True
        )
        return str(status.decode())


Db = asyncpg.Connection

T = TypeVar("T")
# A statement (or transaction) that PostgreSQL rolled back whole to break a deadlock, or that lost
# a serialisation race, is run again this many times in all before the caller hears "Concurrent
# update, try again" (409).
DEADLOCK_ATTEMPTS = 3
_RUN_AGAIN = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)


async def run_again_on_deadlock(conn: asyncpg.Connection, work: Callable[[], Awaitable[T]]) -> T:
    """work(), again when PostgreSQL rolled it back to break a deadlock. work is one statement or
    a transaction of its own: nothing of it committed. Inside a caller's transaction block the
    block is aborted, so the error goes to the caller at once."""
    for attempt in range(1, DEADLOCK_ATTEMPTS + 1):
        try:
            return await work()
        except _RUN_AGAIN:
            if attempt == DEADLOCK_ATTEMPTS or conn.is_in_transaction():
                raise
    raise AssertionError("unreachable")


def _encode_jsonb(value: Any) -> bytes:
    # jsonb binary format: a version byte, then the JSON text.
    if isinstance(value, msgspec.Raw):
        return b"\x01" + bytes(value)
    return b"\x01" + msgspec.json.encode(value)


def _decode_jsonb(data: bytes) -> msgspec.Raw:
    # Passed through to the response untouched: no parse, no re-encode.
    return msgspec.Raw(data[1:])


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=_encode_jsonb, decoder=_decode_jsonb, schema="pg_catalog", format="binary"
    )
    await conn.set_type_codec("uuid", encoder=str, decoder=str, schema="pg_catalog", format="text")


async def create_pool(
    dsn: str,
    *,
    min_size: int,
    max_size: int,
    command_timeout_s: float,
    connect_timeout_s: float,
    app_role: bool = True,
    pgbouncer: bool = False,
) -> Pool[Connection]:
    """Open a pool; with app_role, its statements run as foreman_app under row-level security.

    A statement may run command_timeout_s: PostgreSQL cancels it then (statement_timeout), so it
    surely did not take effect, and the answer says so (StatementTimeoutError, 504). asyncpg's
    own timeout, a moment later, means PostgreSQL stopped answering (frozen, cut off): an outage
    (503). asyncpg alone was not enough: it cannot be sure its cancel request reaches the server
    (terminating the connection drops a pending one), and a statement it gave up on could commit
    after the client was told it failed.

    pgbouncer: dsn is a PgBouncer in transaction mode (FOREMAN_DB_PGBOUNCER). No statement is
    kept prepared then (statement_cache_size=0: asyncpg parses each statement again, an extra
    round trip each; PgBouncer 1.18 cannot keep prepared statements of transaction-pooled
    clients).

    Without pgbouncer the settings are the session's (see the module docstring), and a dsn that
    leads to a pooler in transaction mode is refused. Nothing is reset when a connection comes
    back; the pool terminates a connection whose lease ended in doubt (see store/pool.py).
    """
    timeout_ms = max(1, round(command_timeout_s * 1000))
    binder = Binder(
        role=APP_ROLE if app_role else OWNER_ROLE,
        statement_timeout_ms=timeout_ms,
        per_transaction=pgbouncer,
    )

    async def connect() -> Connection:
        with translate_errors():
            conn = await asyncpg.connect(
                dsn,
                timeout=connect_timeout_s,
                command_timeout=command_timeout_s + COMMAND_TIMEOUT_GRACE_S,
                connection_class=Connection,
                server_settings={"application_name": "foreman"},
                statement_cache_size=0 if pgbouncer else 100,
            )
            try:
                await _init_connection(conn)
                await binder.open_session(conn)
                conn.use_binder(binder)
            except BaseException:
                conn.terminate()
                raise
            return conn

    if not pgbouncer and dsn not in _direct_dsns:
        await _refuse_a_transaction_pooler(dsn, connect_timeout_s)
        _direct_dsns.add(dsn)
    pool = Pool(connect, min_size=min_size, max_size=max_size, max_idle_s=IDLE_CLOSE_S)
    await pool.open()
    return pool


# The database URLs seen to reach PostgreSQL directly (or through a pooler in session mode).
_direct_dsns: set[str] = set()


async def _refuse_a_transaction_pooler(dsn: str, connect_timeout_s: float) -> None:
    """Session settings are only safe on a connection that keeps its server session: two
    connections answered by one server process are a pooler in transaction (or statement) mode,
    where an organisation bound by one client would be seen by another's statements."""
    with translate_errors():
        first = await asyncpg.connect(dsn, timeout=connect_timeout_s, statement_cache_size=0)
        try:
            second = await asyncpg.connect(dsn, timeout=connect_timeout_s, statement_cache_size=0)
            try:
                pid = await first.fetchval("SELECT pg_backend_pid()")
                same = await second.fetchval("SELECT pg_backend_pid()") == pid
            finally:
                await second.close()
        finally:
            await first.close()
    if same:
        raise errors.ForemanError(
            "The database URL leads to a connection pooler in transaction mode (two connections"
            " share one PostgreSQL session): set FOREMAN_DB_PGBOUNCER=true"
        )


async def open_owner_pool(
    settings: Settings, database_url: str, *, min_size: int = 1
) -> Pool[Connection]:
    """One connection of the table owner (every organisation's rows), for a background loop of
    a server process (sweeper, scheduler, metrics): the pool settings of the request pool."""
    return await create_pool(
        database_url,
        min_size=min_size,
        max_size=1,
        command_timeout_s=settings.db_command_timeout_s,
        connect_timeout_s=settings.db_connect_timeout_s,
        app_role=False,
        pgbouncer=settings.db_pgbouncer,
    )


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
        conn.bind_org(self._org_id)
        self._conn = conn
        return conn

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.unbind_org()
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
