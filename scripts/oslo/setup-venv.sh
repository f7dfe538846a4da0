#!/usr/bin/env bash
# Create (once) a Python venv with oslo.messaging from PyPI for the bus plugin's tests,
# and print the venv's python path on stdout.
#
# The venv lives in $OSLO_VENV (default: <repo>/target/oslo-venv). Idempotent: when the
# venv exists and imports oslo_messaging, nothing is installed again. The version is
# pinned by OSLO_MESSAGING_SPEC (default "oslo.messaging>=14,<19").
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${OSLO_VENV:-$REPO/target/oslo-venv}"
SPEC="${OSLO_MESSAGING_SPEC:-oslo.messaging>=14,<19}"
PY="${PYTHON:-python3}"

log() { printf '[oslo-venv] %s\n' "$*" >&2; }

if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import oslo_messaging' 2>/dev/null; then
    echo "$VENV/bin/python"
    exit 0
fi

log "creating $VENV with $SPEC"
mkdir -p "$(dirname "$VENV")"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$SPEC" >&2
"$VENV/bin/python" -c 'import oslo_messaging' || { log "oslo_messaging does not import"; exit 1; }
log "ready: $("$VENV/bin/python" -m pip show oslo.messaging 2>/dev/null | sed -n 's/^Version: /oslo.messaging /p')"
echo "$VENV/bin/python"
