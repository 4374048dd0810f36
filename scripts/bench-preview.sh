#!/usr/bin/env bash
# Preview benchmark (see BENCHMARKS.md): builds the release binary, then runs bench/preview.py
# (PR opened → preview running, next to push → running, in one run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-venv.sh
# The same targets as bench-receiver.sh: another set would unify dependency features differently
# and rebuild the AWS SDK crates.
cargo build --release --locked --bin fleetsync --example bare_receiver
exec .venv/bin/python bench/preview.py
