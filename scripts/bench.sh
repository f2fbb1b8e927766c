#!/usr/bin/env bash
# Runs the benchmarks: each prints a table of ratios against the peer measured in the
# same run (nginx, raw Redis, a fixed-threshold policy). Installs wrk and the test servers.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-tools.sh
if ! command -v wrk >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi
cargo bench --locked -p ficus-traffic -p ficus-sessions -p ficus-analysis "$@"
