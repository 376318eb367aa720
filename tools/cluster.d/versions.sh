# shellcheck shell=bash
# Sourced by tools/cluster and tools/cluster.d/build.sh. The pinned versions are
# read from the wrapper go.mod files, which are the single source of truth.
_CLUSTER_D="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

_modver() { awk -v m="$2" '($1==m || ($1=="require" && $2==m)) {print ($1=="require") ? $3 : $2; exit}' "$_CLUSTER_D/$1/go.mod"; }
K8S_VERSION="$(_modver k8s k8s.io/kubernetes)"
ETCD_VERSION="$(_modver etcd go.etcd.io/etcd/server/v3)"
KWOK_VERSION="$(_modver kwok sigs.k8s.io/kwok)"
# Release date of the pinned Kubernetes tag (reported by `kubectl version -o json`).
K8S_BUILD_DATE="2026-02-10T12:53:36Z"

if [ -z "${CLUSTER_CACHE:-}" ]; then
  if mkdir -p /var/cache/sync-airbnb-operator 2>/dev/null && [ -w /var/cache/sync-airbnb-operator ]; then
    CLUSTER_CACHE=/var/cache/sync-airbnb-operator
  else
    CLUSTER_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/sync-airbnb-operator"
  fi
fi

# Bump when build flags in build.sh change, so cached binaries are rebuilt.
CLUSTER_BUILD_REV=2

# cache_dir COMPONENT -> directory holding bin/ for that component; keyed by the
# version and a short hash of the wrapper module (go.mod, go.sum) and CLUSTER_BUILD_REV.
cache_dir() {
  local comp="$1" ver h
  case "$comp" in
    k8s) ver="$K8S_VERSION" ;; etcd) ver="$ETCD_VERSION" ;; kwok) ver="$KWOK_VERSION" ;;
    *) echo "cache_dir: unknown component $comp" >&2; return 2 ;;
  esac
  h="$( { echo "build-rev $CLUSTER_BUILD_REV"; cat "$_CLUSTER_D/$comp/go.mod" "$_CLUSTER_D/$comp/go.sum"; } | sha256sum | cut -c1-10)"
  printf '%s/%s-%s-%s\n' "$CLUSTER_CACHE" "$comp" "$ver" "$h"
}
