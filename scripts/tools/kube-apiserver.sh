#!/usr/bin/env bash
# Builds kube-apiserver from the Kubernetes Go module at the version pinned in
# scripts/tools/kube-apiserver/go.mod, and fetches the published Gateway API, Istio and
# Prometheus Operator (ServiceMonitor) CRDs, into the tools cache. The Kubernetes tests
# run it with etcd as a real API server, the way envtest does; nothing happens when the
# cache already holds this version.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/common.sh"

KUBERNETES_VERSION=v1.36.3
GATEWAY_API_VERSION=v1.4.1
ISTIO_API_VERSION=v1.30.8
PROMETHEUS_OPERATOR_VERSION=v0.80.1

dir="$FICUS_TOOLS_DIR/kube-apiserver-$KUBERNETES_VERSION"
# The version the server reports (/version), which clients such as helm check charts against.
minor="${KUBERNETES_VERSION#v1.}"
minor="${minor%%.*}"
version_flags="-X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
if [ ! -x "$dir/kube-apiserver" ]; then
  require_go kube-apiserver
  echo "building kube-apiserver $KUBERNETES_VERSION (several minutes, once)" >&2
  mkdir -p "$dir"
  (cd "$here/kube-apiserver" && quietly "$dir/build.log" go build -trimpath -ldflags="-s -w $version_flags" -o "$dir/kube-apiserver.partial" .)
  mv "$dir/kube-apiserver.partial" "$dir/kube-apiserver"
fi
ln -sfn "$dir/kube-apiserver" "$FICUS_TOOLS_DIR/bin/kube-apiserver"

# crds/<name>/: the CRDs one Go module publishes, copied from the module cache.
fetch_crds() {
  local name="$1" module="$2" version="$3" source="$4"
  local target="$FICUS_TOOLS_DIR/crds/$name-$version"
  if [ ! -d "$target" ]; then
    require_go "the $name CRDs"
    local module_dir
    module_dir="$(cd "$here/kube-apiserver" && GOFLAGS=-mod=mod go mod download -json "$module@$version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
    mkdir -p "$target.partial"
    cp "$module_dir"/$source "$target.partial/"
    chmod -R u+w "$target.partial"
    mv "$target.partial" "$target"
  fi
  ln -sfn "$target" "$FICUS_TOOLS_DIR/crds/$name"
}
mkdir -p "$FICUS_TOOLS_DIR/crds"
fetch_crds gateway-api sigs.k8s.io/gateway-api "$GATEWAY_API_VERSION" 'config/crd/standard/*.yaml'
fetch_crds istio istio.io/api "$ISTIO_API_VERSION" 'kubernetes/customresourcedefinitions.gen.yaml'
fetch_crds prometheus-operator github.com/prometheus-operator/prometheus-operator "$PROMETHEUS_OPERATOR_VERSION" \
  'example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml'
