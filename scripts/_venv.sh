# shellcheck shell=bash
# Sourced by serve and test: make ./.venv with Python 3.11 or newer from a requirements file,
# reinstalling only when it changed. PYTHON=/path/to/python3.11 picks the interpreter; otherwise the
# first of python3, python3.13, python3.12, python3.11 on PATH that is new enough.
# A .venv is rebuilt from scratch when its Python is too old or does not run, when PYTHON names a
# different interpreter from the one that made it, or when its last install failed or was cut short.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
VENV_MIN="3.11"
# Present while a venv is being made or installed into; removed only once the install succeeded.
VENV_UNFINISHED="$VENV/.install-unfinished"
# The interpreter that made the venv (see python_identity), to notice when PYTHON names another one.
VENV_MADE_BY="$VENV/.made-by-python"

# "3.11 /real/path/of/the/base/python3.11" for an interpreter (or a venv's python: the same line as
# its base interpreter's); fails if it does not run.
python_identity() {
  "$1" -c 'import os, sys
base = getattr(sys, "_base_executable", "") or sys.executable
print("%d.%d %s" % (sys.version_info[0], sys.version_info[1], os.path.realpath(base)))' 2>/dev/null
}

# Succeeds if the interpreter runs and is Python $VENV_MIN or newer.
python_suitable() {
  "$1" -c 'import sys; sys.exit(sys.version_info[:2] < tuple(map(int, sys.argv[1].split("."))))' \
    "$VENV_MIN" >/dev/null 2>&1
}

# "3.10", or "?" when it does not run.
python_version() {
  "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo "?"
}

# One line on stderr: what is wrong, and how to point at a suitable Python; then stop.
venv_fail() {
  echo "error: $1; point at one with: PYTHON=/path/to/python$VENV_MIN $0" >&2
  exit 1
}

# The interpreter to make the venv with: $PYTHON if set (checked), else the first suitable one on PATH.
find_python() {
  local candidate version
  if [ -n "${PYTHON:-}" ]; then
    version="$(python_version "$PYTHON")"
    if [ "$version" = "?" ]; then
      venv_fail "PYTHON=$PYTHON does not run (this project needs Python $VENV_MIN or newer)"
    fi
    python_suitable "$PYTHON" || venv_fail "PYTHON=$PYTHON is Python $version, but this project needs $VENV_MIN or newer"
    echo "$PYTHON"
    return
  fi
  for candidate in python3 python3.13 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null 2>&1 && python_suitable "$candidate"; then
      command -v "$candidate"
      return
    fi
  done
  if command -v python3 >/dev/null 2>&1; then
    version="python3 is $(python_version python3)"
  else
    version="there is no python3"
  fi
  venv_fail "this project needs Python $VENV_MIN or newer, but $version and no python3.13, python3.12 or python3.11 runs on PATH"
}

# Why the existing venv must be rebuilt, or nothing if it can be kept.
venv_unusable() {
  local made_by
  if [ ! -e "$VENV" ]; then
    return
  fi
  if [ -e "$VENV_UNFINISHED" ]; then
    echo "its last install failed or was interrupted"
  elif [ "$(python_version "$VENV/bin/python")" = "?" ]; then
    echo "its Python does not run"
  elif ! python_suitable "$VENV/bin/python"; then
    echo "its Python is $(python_version "$VENV/bin/python"), older than $VENV_MIN"
  elif [ -n "${PYTHON:-}" ]; then
    made_by="$(cat "$VENV_MADE_BY" 2>/dev/null || python_identity "$VENV/bin/python")"
    if [ "$made_by" != "$(python_identity "$PYTHON")" ]; then
      echo "it was made by Python ${made_by%% *} at ${made_by#* }, not by PYTHON=$PYTHON"
    fi
  fi
}

make_venv() {
  local python reason
  reason="$(venv_unusable)"
  if [ -e "$VENV" ] && [ -z "$reason" ]; then
    return
  fi
  python="$(find_python)" || exit 1
  if [ -n "$reason" ]; then
    echo "note: rebuilding $VENV: $reason" >&2
    rm -rf "$VENV"
  fi
  mkdir -p "$VENV"
  : > "$VENV_UNFINISHED"
  if ! "$python" -m venv "$VENV"; then
    rm -rf "$VENV"
    echo "error: '$python -m venv' failed; on Debian/Ubuntu run: sudo apt-get install python$(python_version "$python")-venv" >&2
    exit 1
  fi
  python_identity "$python" > "$VENV_MADE_BY"
}

ensure_venv() {
  local requirements="$ROOT/$1" stamp="$VENV/.installed-$1.sha256" sum lock
  # One make/install at a time (serve and test may start together); the lock goes with this fd.
  exec {lock}<"${BASH_SOURCE[0]}"
  if command -v flock >/dev/null 2>&1; then
    flock "$lock"
  fi
  make_venv
  sum="$(cat "$requirements" "$ROOT/requirements.txt" | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$sum" ]; then
    : > "$VENV_UNFINISHED"
    if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"; then
      echo "error: pip could not install $1 into .venv (Python $(python_version "$VENV/bin/python")), see above;" \
        "the next run rebuilds .venv; for another Python: PYTHON=/path/to/python$VENV_MIN $0" >&2
      exit 1
    fi
    echo "$sum" > "$stamp"
    rm -f "$VENV_UNFINISHED"
  fi
  exec {lock}<&-
}
