# Sourced by run.sh and test.sh: `ensure_venv EXTRAS` makes .venv (Python 3.11+) and installs
# this project into it with those extras, skipping pip when nothing changed since the last install.
# Set PYTHON=/path/to/python3.x to choose the interpreter.

VENV="${FOREMAN_VENV:-.venv}"

python_ok() {
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3 python3.11 python3.12 python3.13; do
        if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
            echo "$candidate"
            return 0
        fi
    done
    echo "error: Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)" >&2
    return 1
}

# The install is redone only when pyproject.toml changes (or the venv is new): the editable
# install already picks up source changes, and pip's resolver costs seconds on every call.
install_stamp() {
    local extras=$1
    echo "$extras $(sha256sum pyproject.toml | cut -d' ' -f1)"
}

ensure_venv() {
    local extras=$1 stamp_file="$VENV/.foreman-install"
    if [ ! -x "$VENV/bin/python" ] || ! python_ok "$VENV/bin/python"; then
        local python
        python=$(find_python)
        echo "==> creating $VENV with $("$python" --version 2>&1)" >&2
        rm -rf "$VENV"
        "$python" -m venv "$VENV"
        "$VENV/bin/python" -m pip install --quiet --upgrade pip
    fi
    # An install with [all] also covers any narrower set of extras.
    if [ -f "$stamp_file" ] && [ -x "$VENV/bin/foreman" ] && {
        grep -qxF "$(install_stamp "$extras")" "$stamp_file" ||
            grep -qxF "$(install_stamp all)" "$stamp_file"
    }; then
        return 0
    fi
    echo "==> installing foreman[$extras] into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --editable ".[$extras]"
    install_stamp "$extras" >"$stamp_file"
}
