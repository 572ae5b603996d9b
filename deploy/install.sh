#!/usr/bin/env bash
# Install or upgrade ai-image-generator on a Debian/Ubuntu host, as root:
#   sudo deploy/install.sh            # from a checkout of the project: the web and 1 job worker
#   sudo deploy/install.sh --workers 3   # job workers ai-image-generator-worker@1..3 (0: none here)
#   deploy/install.sh --dry-run       # print the steps, change nothing (no root needed)
# Idempotent: a second run changes only what differs, keeps /etc/ai-image-generator/aig.env,
# reloads gunicorn gracefully (in-flight generations finish) instead of killing it, and restarts
# the workers, each letting its running jobs finish first.
set -euo pipefail

APP_NAME=ai-image-generator
APP_USER=aig
APP_DIR=/opt/${APP_NAME}
ENV_DIR=/etc/${APP_NAME}
UNIT=/etc/systemd/system/${APP_NAME}.service
WORKER=${APP_NAME}-worker
WORKER_UNIT=/etc/systemd/system/${WORKER}@.service
SITE_AVAILABLE=/etc/nginx/sites-available/${APP_NAME}.conf
SITE_ENABLED=/etc/nginx/sites-enabled/${APP_NAME}.conf
SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

DRY_RUN=0
# Job worker instances on this host (ai-image-generator-worker@1..N); 0 for a web-only host.
WORKERS=1
usage() { echo "usage: $0 [--dry-run] [--workers N]" >&2; exit 2; }
while [ "$#" -gt 0 ]; do
    case "$1" in
        --dry-run|-n) DRY_RUN=1 ;;
        --workers) [ "$#" -ge 2 ] || usage; WORKERS=$2; shift ;;
        --workers=*) WORKERS=${1#--workers=} ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) usage ;;
    esac
    shift
done
# 0..64: each worker runs AIG_WORKER_JOBS jobs at once; more than 64 on one host is a typo.
if ! [[ "$WORKERS" =~ ^[0-9]+$ ]] || [ "$WORKERS" -gt 64 ]; then
    echo "--workers must be a whole number from 0 to 64, not '${WORKERS}'" >&2
    exit 2
fi
WORKERS=$((10#$WORKERS))
WORKER_INSTANCES=()
for ((i = 1; i <= WORKERS; i++)); do
    WORKER_INSTANCES+=("${WORKER}@${i}.service")
done

step() { printf '\n==> %s\n' "$*"; }
# Print a command, then run it unless --dry-run.
run() {
    printf '+ %s\n' "$*"
    if [ "$DRY_RUN" -eq 0 ]; then "$@"; fi
}

if [ "$DRY_RUN" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
    echo "run as root (or with --dry-run)" >&2
    exit 1
fi

step "1/9 apt packages: python3-venv, nginx, rsync, curl, fonts"
run apt-get update -q
# The fonts: offline placeholder captions in any script (backends/placeholder_fonts.py).
run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv nginx rsync curl \
    fonts-dejavu-core fonts-droid-fallback fonts-unifont

step "2/9 system user ${APP_USER}"
if getent passwd "${APP_USER}" >/dev/null; then
    echo "user ${APP_USER} exists"
else
    run useradd --system --user-group --home-dir "/var/lib/${APP_NAME}" --no-create-home \
        --shell /usr/sbin/nologin --comment "${APP_NAME} service" "${APP_USER}"
fi

step "3/9 copy the app to ${APP_DIR} (root-owned, read-only for ${APP_USER})"
if [ "${SRC_DIR}" = "${APP_DIR}" ]; then
    echo "running from ${APP_DIR} itself: nothing to copy"
else
    run install -d -m 0755 -o root -g root "${APP_DIR}"
    # --delete removes files gone from the source; excluded paths (the venv) are left alone.
    run rsync -a --delete --chown=root:root --chmod=D755,F644 \
        --exclude=.venv/ --exclude=.git/ --exclude=tests/ --exclude=bench/ --exclude=.ci/ \
        --exclude=var/ --exclude=__pycache__/ --exclude='*.pyc' --exclude=.pytest_cache/ \
        --exclude=.ruff_cache/ "${SRC_DIR}/" "${APP_DIR}/"
    run chmod 0755 "${APP_DIR}/deploy/install.sh"
fi

step "4/9 virtualenv and requirements"
if [ -x "${APP_DIR}/.venv/bin/python" ]; then
    echo "venv exists"
else
    run python3 -m venv "${APP_DIR}/.venv"
fi
run "${APP_DIR}/.venv/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir \
    -r "${APP_DIR}/requirements.txt"
# The unit sets PYTHONDONTWRITEBYTECODE and /opt is read-only to the service: compile now.
run "${APP_DIR}/.venv/bin/python" -m compileall -q -x '/\.venv/' "${APP_DIR}"

step "5/9 settings in ${ENV_DIR}/aig.env (kept if present)"
# 2750: group aig reads the settings; setgid so files added later (API keys) get group aig too.
run install -d -m 2750 -o root -g "${APP_USER}" "${ENV_DIR}"
if [ -e "${ENV_DIR}/aig.env" ]; then
    echo "${ENV_DIR}/aig.env exists; left as it is (compare with ${APP_DIR}/deploy/env/aig.env.example)"
else
    run install -m 0640 -o root -g "${APP_USER}" "${SRC_DIR}/deploy/env/aig.env.example" "${ENV_DIR}/aig.env"
    # Image URLs are built from this, never from a Host header a caller wrote (README, security notes).
    public_url="${AIG_PUBLIC_BASE_URL:-http://$(hostname -f 2>/dev/null || hostname)}"
    run sed -i "s|^AIG_PUBLIC_BASE_URL=\$|AIG_PUBLIC_BASE_URL=${public_url}|" "${ENV_DIR}/aig.env"
fi

step "6/9 systemd units ${UNIT} and ${WORKER_UNIT}"
run install -m 0644 -o root -g root "${SRC_DIR}/deploy/systemd/${APP_NAME}.service" "${UNIT}"
# The worker's template: instance N is ai-image-generator-worker@N.service.
run install -m 0644 -o root -g root "${SRC_DIR}/deploy/systemd/${WORKER}@.service" "${WORKER_UNIT}"

step "7/9 nginx site ${SITE_AVAILABLE} (enabled; default site disabled)"
run install -m 0644 -o root -g root "${SRC_DIR}/deploy/nginx/${APP_NAME}.conf" "${SITE_AVAILABLE}"
run ln -sfn "${SITE_AVAILABLE}" "${SITE_ENABLED}"
run rm -f /etc/nginx/sites-enabled/default
run nginx -t

# Numbered worker instances above --workers (this host scaled down), enabled by an earlier run or
# running now; instances with other names are the operator's own and left alone.
surplus_workers() {
    local unit name number
    {
        for unit in /etc/systemd/system/*.wants/"${WORKER}"@*.service; do
            [ -L "$unit" ] && basename "$unit"
        done
        if command -v systemctl >/dev/null; then
            systemctl list-units --all --plain --no-legend "${WORKER}@*.service" 2>/dev/null | awk '{print $1}'
        fi
    } | sort -u | while read -r name; do
        number=${name#"${WORKER}"@}
        number=${number%.service}
        if [[ "$number" =~ ^[0-9]+$ ]] && [ "$((10#$number))" -gt "$WORKERS" ]; then
            echo "$name"
        fi
    done
}

step "8/9 systemd: daemon-reload, enable, start or reload gracefully; ${WORKERS} job worker(s)"
run systemctl daemon-reload
run systemctl enable "${APP_NAME}.service" nginx.service
# reload-or-restart: starts a stopped service, else HUPs gunicorn (new workers, old ones
# drain). A changed ExecStart or sandbox line needs `systemctl restart` once, by hand.
run systemctl reload-or-restart "${APP_NAME}.service"
run systemctl reload-or-restart nginx.service
if [ "$WORKERS" -gt 0 ]; then
    run systemctl enable "${WORKER_INSTANCES[@]}"
    # restart (a worker has no reload): new code and settings. Each stops receiving and lets its
    # running jobs finish (up to TimeoutStopSec, 130 s) before it starts again. One after another,
    # so the others keep taking jobs meanwhile (`systemctl restart` waits for its unit to stop).
    for instance in "${WORKER_INSTANCES[@]}"; do
        run systemctl restart "$instance"
    done
fi
mapfile -t surplus < <(surplus_workers || true)
if [ "${#surplus[@]}" -gt 0 ]; then
    # --now: stopped as gracefully as a restart stops them.
    run systemctl disable --now "${surplus[@]}"
fi

step "9/9 check: GET /healthz through nginx"
# Up to 30 tries, 1 s apart: gunicorn says ready in a few seconds, its workers load the app after.
healthy() {
    local _
    for _ in $(seq 1 30); do
        curl -fsS http://127.0.0.1/healthz && return 0
        sleep 1
    done
    return 1
}
printf '+ %s\n' "curl -fsS http://127.0.0.1/healthz (up to 30 tries)"
if [ "$DRY_RUN" -eq 0 ]; then
    healthy || { echo "not healthy: see journalctl -u ${APP_NAME} -n 50" >&2; exit 1; }
    echo
fi
if [ "$WORKERS" -gt 0 ]; then
    printf '+ %s\n' "systemctl is-active ${WORKER_INSTANCES[*]}"
    if [ "$DRY_RUN" -eq 0 ]; then
        systemctl is-active "${WORKER_INSTANCES[@]}" ||
            { echo "a job worker is not running: see journalctl -u '${WORKER}@*' -n 50" >&2; exit 1; }
    fi
fi
if [ "$DRY_RUN" -eq 1 ]; then
    echo "dry run: nothing was changed"
else
    echo "done: ${APP_NAME} installed in ${APP_DIR} with ${WORKERS} job worker(s); settings in ${ENV_DIR}/aig.env"
fi
