#!/usr/bin/env bash
# PgQueuer side of the comparison in a venv of its own (never the project's): benchmarks/README.md.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
if [ ! -x "$venv/bin/pgq" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "pgqueuer==1.6.0" "asyncpg>=0.30" "psutil>=5.9" "uvloop>=0.20"
fi
exec "$venv/bin/python" "$here/compare.py" "$@"
