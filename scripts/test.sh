#!/usr/bin/env bash
# Runs every test: installs the real servers the tests need, then the whole workspace suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-tools.sh
cargo test --workspace --locked "$@"
