#!/usr/bin/env bash
# Fault campaign (see bench/chaos.py and BENCHMARKS.md). The test command runs a short one;
# CHAOS_PUSHES=200 scripts/chaos.sh is the long run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-venv.sh
# The test command's build, which makes target/release/fleetsync: another set of targets would
# unify dependency features differently and compile the AWS SDK crates again.
cargo test --release --locked --all-targets --no-run
exec .venv/bin/python bench/chaos.py
