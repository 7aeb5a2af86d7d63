"""The figures of each fault: collected by the tests, printed at the end, merged into a JSON file.

The file is ``$FOREMAN_FAULT_REPORT``, else ``.foreman/fault-report.json`` at the repository root.
Faults run in this session replace their old entry; the others stay, so one test run alone does
not erase the figures of the rest (docs/reliability.md quotes the file).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ENV_PATH = "FOREMAN_FAULT_REPORT"
# Figures every fault reports (issue 5), in the order they are printed.
HEADLINE = ("requests_sent", "acknowledged", "lost", "recovery_s")


def report_path() -> Path:
    """Where the JSON report goes."""
    configured = os.environ.get(ENV_PATH)
    return Path(configured) if configured else ROOT / ".foreman" / "fault-report.json"


class FaultReport:
    """Figures per fault name, written once at the end of the session."""

    def __init__(self) -> None:
        self.faults: dict[str, dict[str, Any]] = {}
        self.path = report_path()

    def add(self, name: str, figures: dict[str, Any]) -> None:
        """Record a fault's figures (every HEADLINE key must be there)."""
        missing = [key for key in HEADLINE if key not in figures]
        assert not missing, f"fault {name} lacks {missing}"
        self.faults[name] = {
            **figures,
            "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }

    def lines(self) -> list[str]:
        """One line per fault: the headline figures first."""
        lines = []
        for name, figures in self.faults.items():
            head = ", ".join(f"{key}={figures[key]}" for key in HEADLINE)
            rest = ", ".join(
                f"{key}={value}"
                for key, value in figures.items()
                if key not in HEADLINE and key not in ("fault", "measured_at")
                and not isinstance(value, dict | list)
            )  # fmt: skip
            lines.append(f"{name}: {head}; {rest}")
        return lines

    def write(self) -> Path:
        """Merge this session's faults into the JSON file; its path."""
        path = self.path
        old: dict[str, Any] = {}
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except ValueError:
                old = {}
        faults = {**old.get("faults", {}), **self.faults}
        document = {
            "machine": {"cores": os.cpu_count(), "platform": platform.platform()},
            "note": "the load, the services and the tests share this machine (loopback)",
            "faults": dict(sorted(faults.items())),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2) + "\n")
        return path
