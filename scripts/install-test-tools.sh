#!/usr/bin/env bash
# Installs the real servers the tests run against, from the OS package manager, when missing.
# Each tool is checked by the command it provides, so a machine that has them already
# (or a second run) installs nothing.
set -euo pipefail

# command -> Debian package
declare -A tools=(
  [redis-server]=redis-server
  [nginx]=nginx
  [prometheus]=prometheus
)

missing=()
for command in "${!tools[@]}"; do
  command -v "$command" >/dev/null 2>&1 || missing+=("${tools[$command]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "missing test tools: ${missing[*]}; install them with your package manager" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing test tools: ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
