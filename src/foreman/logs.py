"""Logging set-up for the command line: plain or JSON lines on stderr."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from typing import Any, TextIO

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def printable(text: str) -> str:
    """text with control characters and backslashes escaped (``\\n``, ``\\x1b``, ``\\\\``).

    Request paths and headers reach log lines; a raw newline in one would start a forged line.
    Text that needs no escaping (nearly all of it) is returned as it is, at the cost of one scan.
    """
    if text.isprintable() and "\\" not in text:
        return text
    return text.encode("unicode_escape").decode("ascii")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the record's extra fields (request_id, task_id, ...)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class PlainFormatter(logging.Formatter):
    """Human-readable lines; a request id, when there is one, goes at the end."""

    _second: int = -1
    _stamp: str = ""

    def __init__(self, fmt: str | None = None, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)
        self.fmt = fmt  # what LineWriter checks (logging.Formatter keeps it in a private field)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return self.stamp(record.created)

    def stamp(self, created: float) -> str:
        """The asctime of a record made at created (time.time())."""
        # The date part changes once a second; a busy server logs thousands of lines in it.
        second = int(created)
        if second != self._second:
            self._stamp = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        msecs = int((created - second) * 1000)
        return f"{self._stamp},{msecs:03d}"  # as logging.Formatter writes it

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802
        # The message part is one line, whatever a logged value holds (a traceback follows it).
        return printable(super().formatMessage(record))

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{line} request_id={printable(str(request_id))}" if request_id else line


class BufferedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that writes its lines in batches, every flush_s or max_bytes.

    A busy server logs a line per request, and a write(2) per line costs more than the line is
    worth (benchmarks/README.md, "Notes moved from server/"). WARNING and above go out at once,
    with what waited before them; ``logging.shutdown`` at exit flushes the rest.
    """

    def __init__(self, stream: TextIO, *, flush_s: float = 0.1, max_bytes: int = 64 * 1024) -> None:
        super().__init__(stream)
        self.flush_s = flush_s
        self.max_bytes = max_bytes
        self._lines: list[str] = []
        self._size = 0
        self._flusher: threading.Thread | None = None
        # Not "_closed": logging.Handler.close() sets that attribute to True.
        self._stop = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self.add_line(line, at_once=record.levelno >= logging.WARNING)

    def add_line(self, line: str, *, at_once: bool = False) -> None:
        """Add a formatted line to the batch (LineWriter calls this directly); at_once writes now."""
        with self.lock:  # type: ignore[union-attr]
            self._lines.append(line)
            self._size += len(line)
            if at_once or self._size >= self.max_bytes:
                self._write()
            elif self._flusher is None:
                self._flusher = threading.Thread(
                    target=self._flush_periodically, name="foreman-log-flush", daemon=True
                )
                self._flusher.start()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write()

    def _write(self) -> None:
        if not self._lines:
            return
        text = "".join(self._lines)
        self._lines.clear()
        self._size = 0
        # A closed or broken stderr must not break the code that logs (nor the flusher).
        with contextlib.suppress(OSError, ValueError):
            self.stream.write(text)
            self.stream.flush()

    def close(self) -> None:
        """Write what is left and stop the flusher thread."""
        self._stop.set()
        self.flush()
        super().close()

    def _flush_periodically(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()


class LineWriter:
    """INFO lines of one logger written straight into the plain handler's batch.

    The access log writes a line per request; going through a LogRecord, the logger's handler
    lookup, the formatter and the handler's emit cost more than the request's own JSON. When
    configure_logging's plain handler is the only place the logger's records go, ``info``
    formats the same line itself; otherwise it logs through the logger as usual.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def info(self, message: str, request_id: str, extra: dict[str, Any]) -> None:
        """Log message (formatted already) at INFO with its request id and extra fields."""
        handler = self._plain_handler()
        if handler is None:
            self.logger.info("%s", message, extra={"request_id": request_id, **extra})
            return
        formatter: PlainFormatter = handler.formatter  # type: ignore[assignment]
        stamp = formatter.stamp(time.time())
        handler.add_line(f"{stamp} INFO {self.logger.name}: {message} request_id={request_id}\n")

    def _plain_handler(self) -> BufferedStreamHandler | None:
        logger = self.logger
        if logger.handlers or logger.filters or not logger.propagate:
            return None
        root = logging.getLogger()
        handlers = root.handlers
        if len(handlers) != 1 or root.filters:
            return None
        handler = handlers[0]
        if (
            type(handler) is not BufferedStreamHandler
            or handler.filters
            or handler.level > logging.INFO
            or type(handler.formatter) is not PlainFormatter
            or handler.formatter.fmt != PLAIN_FORMAT
            or handler.formatter.datefmt is not None
        ):
            return None
        return handler


def configure_logging(level: str, *, json_lines: bool = False) -> None:
    """Route every logger to stderr at level (lines written in batches, see above)."""
    # No process id, thread or task names on records: nothing prints them, and os.getpid() is a
    # system call per record.
    logging.logProcesses = False
    logging.logThreads = False
    logging.logMultiprocessing = False
    # No caller lookup (a stack walk per record); nothing prints it. The logging HOWTO's advice,
    # pinned by tests/unit/test_adapters.py.
    logging._srcfile = None
    handler = BufferedStreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else PlainFormatter(PLAIN_FORMAT))
    root = logging.getLogger()
    for previous in root.handlers:
        previous.close()  # configured twice (CLI, then the server process): one flusher left
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Their INFO lines are step-by-step noise (every initdb line, every migration step).
    for noisy in ("pgserver", "yoyo", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
