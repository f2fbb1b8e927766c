#!/usr/bin/env bash
# Builds the pinned podinfo from its Go module into the tools cache: an HTTP server nobody
# here wrote, with its own random delays and errors, for the real-process A/A tests.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/common.sh"

# podinfo tags its releases without the leading "v" (6.9.2, not v6.9.2) and its module
# path has no /v6, so the Go module proxy knows no release by name; the module version is
# the pseudo-version of the commit the release tag points at.
PODINFO_VERSION=6.9.2
PODINFO_MODULE_VERSION=v1.8.1-0.20250910200901-e86405a8674e

dir="$FICUS_TOOLS_DIR/podinfo-$PODINFO_VERSION"
if [ ! -x "$dir/podinfo" ]; then
  require_go podinfo
  echo "building podinfo $PODINFO_VERSION (a minute or two, once)" >&2
  mkdir -p "$dir"
  GOBIN="$dir" quietly "$dir/build.log" go install -trimpath -ldflags="-s -w" \
    "github.com/stefanprodan/podinfo/cmd/podinfo@$PODINFO_MODULE_VERSION"
fi
ln -sfn "$dir/podinfo" "$FICUS_TOOLS_DIR/bin/podinfo"
