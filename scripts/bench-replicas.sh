#!/usr/bin/env bash
# Receiver replicas benchmark: builds the release binary, then runs bench/replicas.py (jobs per
# push with pushes round robin over 2 receivers against 1, and resolving on a mirror after 1,000
# fetches against a fresh one).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-venv.sh
# The same targets as bench-receiver.sh: another set would unify dependency features differently
# and rebuild the AWS SDK crates.
cargo build --release --locked --bin fleetsync --example bare_receiver
exec .venv/bin/python bench/replicas.py
