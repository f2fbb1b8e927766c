#!/usr/bin/env bash
# Runs the benchmarks: each prints a table of ratios against the peer measured in the
# same run (nginx, raw Redis, a fixed-threshold policy). Installs wrk and the test servers.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-tools.sh
cargo bench --locked -p ficus-traffic -p ficus-sessions -p ficus-analysis -p ficus "$@"
