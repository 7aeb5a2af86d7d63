#!/usr/bin/env bash
# Start the Foreman server: creates .venv if needed, installs foreman[embedded,redis,rabbitmq,sqs], then runs
# `foreman server` with the arguments given (see `foreman server --help`). With no database
# configured it starts an embedded PostgreSQL whose data lives in ./.foreman/pgdata.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/venv.sh
source scripts/venv.sh
ensure_venv "embedded,redis,rabbitmq,sqs"
exec "$VENV/bin/foreman" server "$@"
