# Sourced by serve and test: make ./.venv from a requirements file, reinstalling only when it changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"

ensure_venv() {
  local requirements="$ROOT/$1" stamp="$VENV/.installed-$1.sha256" sum
  if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -m venv "$VENV"; then
      echo "error: '$PYTHON -m venv' failed; on Debian/Ubuntu run: sudo apt-get install python3-venv" >&2
      exit 1
    fi
  fi
  sum="$(cat "$requirements" "$ROOT/requirements.txt" | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$sum" ]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    echo "$sum" > "$stamp"
  fi
}
