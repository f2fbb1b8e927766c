#!/usr/bin/env bash
# Builds the pinned Helm from its Go module into the tools cache, for the chart's tests
# (lint, template, schema refusals, install into the test API server).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/common.sh"

HELM_VERSION=v3.19.5

dir="$FICUS_TOOLS_DIR/helm-$HELM_VERSION"
if [ ! -x "$dir/helm" ]; then
  require_go helm
  echo "building helm $HELM_VERSION (a few minutes, once)" >&2
  mkdir -p "$dir"
  GOBIN="$dir" quietly "$dir/build.log" go install -trimpath -ldflags="-s -w" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi
ln -sfn "$dir/helm" "$FICUS_TOOLS_DIR/bin/helm"
