"""BufferedStreamHandler and PlainFormatter (logs.py): when lines are written, and how they look."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from foreman.logs import (
    BufferedStreamHandler,
    LineWriter,
    PlainFormatter,
    configure_logging,
    printable,
)


class RecordingStream(io.StringIO):
    """A text stream that keeps each write(2) the handler makes; ``failures`` writes raise first."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__()
        self.writes: list[str] = []
        self.failures = failures

    def write(self, text: str) -> int:
        if self.failures:
            self.failures -= 1
            raise OSError(32, "Broken pipe")
        self.writes.append(text)
        return super().write(text)


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A logger of this test alone, with no handler of the root's."""
    log = logging.getLogger(f"test-logs-{uuid.uuid4().hex}")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log
    log.handlers.clear()


def attach(logger: logging.Logger, stream: io.StringIO, **options: float) -> BufferedStreamHandler:
    handler = BufferedStreamHandler(stream, **options)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    return handler


def wait_until_written(stream: RecordingStream, text: str, timeout_s: float = 2.0) -> float:
    """Seconds until the stream holds text."""
    started = time.monotonic()
    while stream.getvalue() != text:
        assert time.monotonic() - started < timeout_s, f"never written: {stream.getvalue()!r}"
        time.sleep(0.005)
    return time.monotonic() - started


def test_info_lines_wait_and_go_out_together_within_flush_s(logger):
    stream = RecordingStream()
    attach(logger, stream, flush_s=0.1)
    logger.info("one")
    logger.info("two")
    assert stream.writes == []  # held, not written line by line
    waited = wait_until_written(stream, "INFO one\nINFO two\n")
    assert waited < 0.5
    assert stream.writes == ["INFO one\nINFO two\n"]  # one write for both
    logger.info("three")  # the flusher keeps running: later lines go out too
    wait_until_written(stream, "INFO one\nINFO two\nINFO three\n")


@pytest.mark.parametrize("level", [logging.WARNING, logging.ERROR, logging.CRITICAL])
def test_a_warning_goes_out_at_once_after_the_lines_before_it(logger, level):
    stream = RecordingStream()
    attach(logger, stream, flush_s=60)
    logger.info("first")
    logger.debug("second")
    logger.log(level, "alarm")
    name = logging.getLevelName(level)
    assert stream.writes == [f"INFO first\nDEBUG second\n{name} alarm\n"]


def test_flush_writes_everything_held(logger):
    stream = RecordingStream()
    handler = attach(logger, stream, flush_s=60)
    logger.info("a")
    logger.info("b")
    assert stream.writes == []
    handler.flush()
    assert stream.writes == ["INFO a\nINFO b\n"]
    handler.flush()  # nothing held: nothing written
    assert stream.writes == ["INFO a\nINFO b\n"]


def test_lines_reaching_max_bytes_go_out_at_once(logger):
    stream = RecordingStream()
    attach(logger, stream, flush_s=60, max_bytes=20)
    logger.info("short")  # 11 bytes: held
    assert stream.writes == []
    logger.info("long enough")  # 17 more: over 20
    assert stream.writes == ["INFO short\nINFO long enough\n"]


def test_a_broken_stream_never_raises_into_the_caller(logger):
    stream = RecordingStream(failures=2)
    handler = attach(logger, stream, flush_s=60)
    logger.info("lost")
    logger.warning("lost too")  # the write fails: no exception here
    logger.info("kept")
    handler.flush()  # fails too, silently
    assert stream.writes == []
    logger.error("after")  # the stream works again: the handler goes on
    assert stream.writes == ["ERROR after\n"]


def test_the_flusher_survives_a_broken_stream(logger):
    stream = RecordingStream(failures=1)
    attach(logger, stream, flush_s=0.02)
    logger.info("lost")
    deadline = time.monotonic() + 2
    while stream.failures:  # the flusher's write failed
        assert time.monotonic() < deadline
        time.sleep(0.005)
    logger.info("later")
    wait_until_written(stream, "INFO later\n")


# ---------------------------------------------------------------- PlainFormatter


def record_at(created: float, **extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "x", "levelname": "INFO", "msg": "m", **extra})
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0  # as LogRecord computes it
    return record


def test_plain_dates_are_the_stdlib_ones():
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    ours, stdlib = PlainFormatter(fmt), logging.Formatter(fmt)
    base = 1_700_000_000
    # Same second, next seconds, then back (records of other threads arrive out of order).
    for created in (base + 0.25, base + 0.999, base + 1.001, base + 1.0, base + 0.5, base + 61.07):
        record = record_at(created)
        assert ours.format(record) == stdlib.format(record)
    line = ours.format(record_at(base + 0.0075))
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,007 INFO x: m", line)


def test_plain_lines_end_with_the_request_id():
    formatter = PlainFormatter("%(levelname)s %(message)s")
    assert formatter.format(record_at(1.0, request_id="r-1")) == "INFO m request_id=r-1"
    assert formatter.format(record_at(1.0)) == "INFO m"


def test_a_date_format_of_its_own_is_used_as_given():
    ours = PlainFormatter("%(asctime)s", datefmt="%H:%M")
    stdlib = logging.Formatter("%(asctime)s", datefmt="%H:%M")
    record = record_at(1_700_000_000.5)
    assert ours.format(record) == stdlib.format(record)


@contextlib.contextmanager
def configured(*, json_lines: bool) -> Iterator[RecordingStream]:
    """configure_logging's set-up at INFO on a stream of the test's own; pytest's handlers kept."""
    stream = RecordingStream()
    root = logging.getLogger()
    saved_handlers, saved_level, saved_stderr = root.handlers[:], root.level, sys.stderr
    root.handlers[:] = []  # configure_logging closes what it replaces: not pytest's handlers
    sys.stderr = stream
    try:
        configure_logging("INFO", json_lines=json_lines)
        yield stream
    finally:
        sys.stderr = saved_stderr
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


@pytest.fixture
def plain_root() -> Iterator[RecordingStream]:
    with configured(json_lines=False) as stream:
        yield stream


def _undated(text: str) -> list[str]:
    # "2026-11-26 06:00:00,123 " is 24 characters.
    return [line[24:] for line in text.splitlines()]


def test_line_writer_lines_are_the_loggers_own(plain_root):
    log = logging.getLogger(f"test-lines-{uuid.uuid4().hex}")
    log.info("GET /x 200 1.0ms org=a key=b", extra={"request_id": "r1"})
    LineWriter(log).info("GET /x 200 1.0ms org=a key=b", "r1", {"org_id": "a"})
    logging.getLogger().handlers[0].flush()
    through_logger, written = plain_root.getvalue().splitlines()
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO ", written)
    assert _undated(written) == _undated(through_logger)
    assert written.endswith(" request_id=r1")


def test_line_writer_uses_the_logger_when_records_go_elsewhere(plain_root):
    log = logging.getLogger(f"test-lines-{uuid.uuid4().hex}")
    records: list[logging.LogRecord] = []
    collector = logging.Handler()
    collector.emit = records.append  # type: ignore[method-assign]
    log.addHandler(collector)  # a second destination: records must be made
    try:
        LineWriter(log).info("POST /y 201 2.0ms", "r2", {"org_id": "orga"})
    finally:
        log.removeHandler(collector)
    (record,) = records
    assert record.getMessage() == "POST /y 201 2.0ms"
    assert record.request_id == "r2"  # type: ignore[attr-defined]
    assert record.org_id == "orga"  # type: ignore[attr-defined]
    logging.getLogger().handlers[0].flush()
    assert _undated(plain_root.getvalue()) == [
        "INFO " + log.name + ": POST /y 201 2.0ms request_id=r2"
    ]


def test_line_writer_follows_json_lines():
    with configured(json_lines=True) as stream:
        LineWriter(logging.getLogger("test-json-lines")).info("GET /z 200 1.0ms", "r3", {})
        logging.getLogger().handlers[0].flush()
    line = json.loads(stream.getvalue())
    assert line["message"] == "GET /z 200 1.0ms"
    assert line["request_id"] == "r3"


def test_a_handler_closes_twice_without_error():
    handler = BufferedStreamHandler(RecordingStream())
    handler.close()
    handler.close()  # logging.shutdown may close a handler configure_logging closed already


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("/api/v1/runs/abc", "/api/v1/runs/abc"),
        ("/ørg/é", "/ørg/é"),  # printable non-ASCII stays as it is
        ("/x\nFORGED", "/x\\nFORGED"),
        ("/x\r\n", "/x\\r\\n"),
        ("/x\x00\x1b\x7f", "/x\\x00\\x1b\\x7f"),
        ("/x\\n", "/x\\\\n"),  # a real backslash stays distinguishable from an escape
        ("/x\u2028y", "/x\\u2028y"),  # a line separator some viewers break on
    ],
)
def test_printable_escapes_what_could_break_a_line(text, shown):
    assert printable(text) == shown
    assert printable(text).isprintable()


def test_plain_lines_escape_the_message_but_keep_the_traceback():
    formatter = PlainFormatter("%(levelname)s %(message)s")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.makeLogRecord(
            {
                "levelname": "ERROR",
                "msg": "on %s",
                "args": ("/x\nFORGED",),
                "exc_info": sys.exc_info(),
            }
        )
    first, *rest = formatter.format(record).splitlines()
    assert first == "ERROR on /x\\nFORGED"
    assert rest[0] == "Traceback (most recent call last):"
