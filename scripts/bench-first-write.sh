#!/usr/bin/env bash
# First-write benchmark (see BENCHMARKS.md): builds the release binary, then runs
# bench/first_write.py (webhook → UpdateService for one app, next to the floor of its calls).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-venv.sh
# The same targets as bench-receiver.sh: another set would unify dependency features differently
# and rebuild the AWS SDK crates.
cargo build --release --locked --bin fleetsync --example bare_receiver
exec .venv/bin/python bench/first_write.py
