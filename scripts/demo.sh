#!/usr/bin/env bash
# The demo: builds fleetsync, installs the emulator into .venv if needed, and runs scripts/demo.py
# (a signed push to a config repo becomes a rollout on the local emulator's ECS).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-venv.sh
cargo build --quiet --bin fleetsync
exec .venv/bin/python scripts/demo.py
