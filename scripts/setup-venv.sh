#!/usr/bin/env bash
# Create/refresh the project's Python virtualenv (.venv at the repo root) with
# the AWS emulator (moto server) used by the tests and the demo.
# Idempotent: pip runs only when requirements-dev.txt changed since the last
# successful install (sha256 recorded in .venv/.requirements-dev.sha256).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
REQS="$ROOT/requirements-dev.txt"
STAMP="$VENV/.requirements-dev.sha256"

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup-venv: creating $VENV" >&2
    python3 -m venv "$VENV"
fi

want="$(sha256sum "$REQS" | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$want" = "$have" ]; then
    exit 0
fi

echo "setup-venv: installing $(basename "$REQS") into $VENV" >&2
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQS"
printf '%s\n' "$want" > "$STAMP"
