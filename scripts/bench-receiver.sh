#!/usr/bin/env bash
# Receiver benchmark (see BENCHMARKS.md): builds release binaries, installs wrk if missing, runs
# bench/receiver.py. Bounded: four wrk runs of BENCH_DURATION (default 10s) each.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-venv.sh
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release --locked --bin fleetsync --example bare_receiver
exec .venv/bin/python bench/receiver.py
