#!/usr/bin/env bash
# The test command: installs the emulator and cfn-lint into .venv if needed, then runs the whole
# suite. Integration tests start one emulator process per test (tests/it/harness.rs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-venv.sh
.venv/bin/cfn-lint deploy/cloudformation.yaml
cargo test --all-targets
# The release binary exactly as deploy/Dockerfile builds it, so the image's build cannot rot
# where no Docker engine runs.
cargo build --release --locked --bin fleetsync
