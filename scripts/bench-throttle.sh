#!/usr/bin/env bash
# Account budget benchmark (see BENCHMARKS.md): 100 changed apps with 1, 4 and 8 workers against
# an ECS that throttles like one account (bench/throttle.py).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-venv.sh
# The test command's build, which makes target/release/fleetsync: another set of targets would
# unify dependency features differently and compile the AWS SDK crates again.
cargo test --release --locked --all-targets --no-run
exec .venv/bin/python bench/throttle.py
