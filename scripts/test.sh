#!/usr/bin/env bash
# The test command: installs the emulator and cfn-lint into .venv if needed, then runs the whole
# suite. Integration tests start one emulator process per test (tests/it/harness.rs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-venv.sh
# GitHub's OpenAPI description, that tests/it/feedback.rs checks requests against.
.venv/bin/python scripts/github-openapi.py
.venv/bin/cfn-lint deploy/cloudformation.yaml
# Tests run against the release profile the image is built with, and build the release binary
# (target/release/fleetsync, which the integration tests run): the AWS SDK, most of a cold build,
# compiles once. A separate `cargo build --bin` would compile most of it again, because the test
# build's dev-dependencies unify other features into shared crates (19 minutes here).
cargo test --release --locked --all-targets
# A short fault campaign on that binary: the production shape under faults loses nothing.
.venv/bin/python bench/chaos.py
# The image from that binary, built with podman from deploy/Dockerfile and run as a user would.
scripts/image.sh
