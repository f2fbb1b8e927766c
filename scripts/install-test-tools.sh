#!/usr/bin/env bash
# Installs the real servers and tools the tests run against, when missing: OS packages
# first, then the tools that only exist as Go modules (built at pinned versions by
# scripts/tools/*.sh into a cache outside the checkout, so a second run builds nothing).
# Each tool is checked by the command it provides, so a machine that has them already
# installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

# command -> Debian package
declare -A tools=(
  [redis-server]=redis-server
  [nginx]=nginx
  [prometheus]=prometheus
  [docker-compose]=docker-compose
  [etcd]=etcd-server
  [wrk]=wrk
)

missing=()
for command in "${!tools[@]}"; do
  command -v "$command" >/dev/null 2>&1 || missing+=("${tools[$command]}")
done

if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "missing test tools: ${missing[*]}; install them with your package manager" >&2
    exit 1
  fi
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing test tools: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

scripts/tools/helm.sh
scripts/tools/podinfo.sh
scripts/tools/kube-apiserver.sh
