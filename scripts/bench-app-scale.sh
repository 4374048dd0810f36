#!/usr/bin/env bash
# App-of-Apps scale benchmark (see BENCHMARKS.md): builds the release binary, then runs
# bench/app_scale.py (100, 1,000 and 10,000 apps in 3 environments).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-venv.sh
# The same targets as bench-receiver.sh: another set would unify dependency features differently
# and rebuild the AWS SDK crates.
cargo build --release --locked --bin fleetsync --example bare_receiver
exec .venv/bin/python bench/app_scale.py
