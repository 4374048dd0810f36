#!/usr/bin/env bash
# The test command: installs the emulator into .venv if needed, then runs the whole suite.
# Integration tests start one emulator process per test (tests/it/harness.rs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-venv.sh
cargo test --all-targets
