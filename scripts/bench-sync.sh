#!/usr/bin/env bash
# Sync benchmark (see BENCHMARKS.md): builds the release binary, installs ecs-deploy into its own
# virtualenv (.venv-bench: its boto3 pin must not move the emulator's), then runs bench/sync.py.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-venv.sh
if [ ! -x .venv-bench/bin/ecs ]; then
    python3 -m venv .venv-bench
    .venv-bench/bin/python -m pip install --quiet --disable-pip-version-check 'ecs-deploy==1.17.0'
fi
# The same targets as bench-receiver.sh: another set would unify dependency features differently
# and rebuild the AWS SDK crates.
cargo build --release --locked --bin fleetsync --example bare_receiver
exec .venv/bin/python bench/sync.py
