#!/usr/bin/env bash
# The browser the dashboard tests (tests/ui) drive: the OS's chromium and its chromium-driver,
# installed with apt-get when missing (as root on Debian/Ubuntu), never a browser download of its
# own. Sourced by scripts/test.sh; run it alone to install them: `bash scripts/browser.sh`.

browser_on_path() {
    command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1
}

ensure_browser() {
    if browser_on_path && command -v chromedriver >/dev/null 2>&1; then
        return 0
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "==> installing chromium and chromium-driver for the dashboard tests" >&2
        apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                chromium chromium-driver >/dev/null && return 0
    fi
    echo "warning: no chromium/chromedriver: the dashboard tests will skip (fail with CI=true)" >&2
    return 0
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    ensure_browser
fi
