"""The real ``foreman`` command in a child process, for tests of what only a process shows.

Start-up, signals, exit codes, ports and log lines cannot be seen through the in-process test
client, so these tests run the console script with a chosen environment and talk HTTP to it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from tests.services import free_port

# Variables the server reads (Settings and its unprefixed aliases): a test starts from none of
# them, so the developer's shell or CI cannot change what a test sees.
_SERVER_VARIABLES = (
    "PORT",
    "LOG_LEVEL",
    "CORS_ORIGIN",
    "NODE_ENV",
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_PASSWORD",
    "REDIS_DB",
    "TASK_QUEUE_NAME",
    "RESULT_QUEUE_NAME",
)


def server_env(**variables: str) -> dict[str, str]:
    """This process's environment without any Foreman setting, plus variables."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("FOREMAN_") and name not in _SERVER_VARIABLES
    }
    env.update(variables)
    return env


def foreman_command() -> list[str]:
    """The installed console script of the interpreter running the tests."""
    script = shutil.which("foreman", path=str(Path(sys.executable).parent))
    if script is not None:
        return [script]
    return [sys.executable, "-c", "from foreman.cli import main; main()"]


def run_foreman(
    args: Sequence[str], *, env: Mapping[str, str], cwd: Path, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a foreman command to completion and capture its output."""
    return subprocess.run(
        [*foreman_command(), *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


class ServerProcess:
    """`foreman server` on a free port, its stdout and stderr in a log file."""

    def __init__(
        self,
        cwd: Path,
        *,
        env: Mapping[str, str],
        port: int | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.cwd = cwd
        self.port = port or free_port()
        self.env = {"FOREMAN_SERVER_PORT": str(self.port), **env}
        self.worker_env: dict[str, str] = {}  # what a worker of this server needs (broker URLs)
        self.args = list(args)
        self.log_path = cwd / f"server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, *, ready_timeout_s: float = 90) -> ServerProcess:
        """Start the server and wait until /health answers (with any status)."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*foreman_command(), "server", *self.args],
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_listening(ready_timeout_s)
        return self

    def wait_listening(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.exit_code() is not None:
                raise AssertionError(f"foreman server exited early:\n{self.log()}")
            try:
                httpx.get(f"{self.url}/health", timeout=5)
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            return
        raise AssertionError(f"foreman server did not listen within {timeout_s}s:\n{self.log()}")

    def exit_code(self) -> int | None:
        assert self.process is not None
        return self.process.poll()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def send(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, *, timeout_s: float = 40) -> int:
        """Send signum and wait for the exit code."""
        self.send(signum)
        return self.wait(timeout_s)

    def wait(self, timeout_s: float) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"foreman server still running {timeout_s}s after the signal:\n{self.log()}"
            ) from None

    def kill(self) -> None:
        """Teardown: make sure nothing is left running."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
