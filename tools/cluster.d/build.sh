#!/usr/bin/env bash
# Builds the control-plane binaries from the wrapper modules beside this file
# into a cache directory outside the clone. Called by tools/cluster; can be run
# on its own:  tools/cluster.d/build.sh [k8s|etcd|kwok|all]
#
# Cache layout: $CLUSTER_CACHE/<component>-<version>-<hash of wrapper>/bin/...
# plus a .complete stamp written only after a successful build, so an
# interrupted build is redone rather than trusted.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.sh
. "$HERE/versions.sh"

usage() {
  cat <<EOF
usage: tools/cluster.d/build.sh [k8s|etcd|kwok|all] [--print-dir]

Builds (once) and caches:
  k8s   kube-apiserver kube-controller-manager kube-scheduler kubectl
        kubelet kube-proxy (for the real node)                       ($K8S_VERSION)
  etcd  etcd                                                         ($ETCD_VERSION)
  kwok  kwok                                                         ($KWOK_VERSION)
Cache root: \$CLUSTER_CACHE (now: $CLUSTER_CACHE)
--print-dir prints the component's cache directory and exits.
EOF
}

log() { printf '[build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

build_one() {
  local comp="$1" dir; dir="$(cache_dir "$comp")"
  local outputs="" f ok=1
  case "$comp" in
    k8s) outputs="kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy" ;;
    etcd) outputs="etcd" ;;
    kwok) outputs="kwok stages.yaml" ;;
  esac
  mkdir -p "$CLUSTER_CACHE"
  # One build per cache entry at a time (parallel test runs, two clusters starting).
  exec 8>"$dir.lock"
  if command -v flock >/dev/null && ! flock -n 8; then
    log "$comp: another build of $dir is running; waiting for it"
    flock 8
  fi
  for f in $outputs; do [ -s "$dir/bin/$f" ] || ok=0; done
  if [ -f "$dir/.complete" ] && [ "$ok" = 1 ]; then
    log "$comp: cached in $dir"
    exec 8>&-
    return 0
  fi
  command -v go >/dev/null || { log "ERROR: go is not installed (need Go >= 1.26)"; exit 1; }
  local pkgs=() ldflags="-s -w" version
  case "$comp" in
    k8s)
      version="$K8S_VERSION"
      pkgs=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
            k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
            k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy)
      local major minor rest
      major="${K8S_VERSION#v}"; major="${major%%.*}"
      rest="${K8S_VERSION#v*.}"; minor="${rest%%.*}"
      for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
        ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=$K8S_BUILD_DATE"
      done
      ;;
    etcd) version="$ETCD_VERSION"; pkgs=(go.etcd.io/etcd/server/v3) ;;
    kwok)
      version="$KWOK_VERSION"; pkgs=(sigs.k8s.io/kwok/cmd/kwok)
      ldflags+=" -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}"
      ;;
    *) log "unknown component $comp"; exit 2 ;;
  esac

  mkdir -p "$dir"
  local src="$dir/src" out="$dir/bin.partial" blog="$dir/build.log"
  rm -rf "$src" "$out"; mkdir -p "$src" "$out"
  cp "$HERE/$comp/go.mod" "$HERE/$comp/go.sum" "$src/"
  export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
  local start=$SECONDS total
  log "$comp $version: resolving packages (first run downloads modules through the Go module proxy)"
  total=$(cd "$src" && go list -deps "${pkgs[@]}" 2>>"$blog" | wc -l) || {
    log "ERROR: $comp: go list failed; tail of $blog:"; tail -n 30 "$blog" >&2; exit 1; }
  log "$comp $version: compiling ~$total packages into $dir (log: $blog)"
  : >"$blog.v"
  (cd "$src" && exec go build -v -trimpath -ldflags "$ldflags" -o "$out/" "${pkgs[@]}") \
      2>"$blog.v" &
  local pid=$! last=-1 n
  while kill -0 "$pid" 2>/dev/null; do
    n=$(grep -vc -e '^go: ' -e '^#' "$blog.v" 2>/dev/null || true)
    if [ "$n" != "$last" ] && [ $(( (SECONDS - start) % 30 )) -lt 5 ]; then
      log "$comp: $n/$total packages compiled, $(( (SECONDS - start) / 60 ))m$(( (SECONDS - start) % 60 ))s elapsed"
      last="$n"
    fi
    sleep 5
  done
  if ! wait "$pid"; then
    cat "$blog.v" >>"$blog"
    log "ERROR: $comp build failed; tail of $blog:"
    grep -v '^[a-z0-9.]*\.[a-z]*/' "$blog.v" | tail -n 40 >&2 || tail -n 40 "$blog.v" >&2
    exit 1
  fi
  cat "$blog.v" >>"$blog"; rm -f "$blog.v"
  if [ "$comp" = etcd ]; then
    for f in "$out/server" "$out/v3"; do [ -f "$f" ] && mv "$f" "$out/etcd"; done
  fi
  if [ "$comp" = kwok ]; then
    # kwok itself has no built-in stages; take the release's default "fast"
    # node/pod stages (pods become Running+Ready) plus the opt-in chaos stage
    # (label pod-container-running-failed.stage.kwok.x-k8s.io=true).
    local kdir
    kdir="$(cd "$src" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
    local s first=1
    for s in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
             pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete \
             pod/chaos/pod-container-running-failed; do
      [ "$first" = 1 ] || echo "---"
      first=0
      cat "$kdir/kustomize/stage/$s.yaml"
    done >"$out/stages.yaml"
  fi
  rm -rf "$dir/bin"; mv "$out" "$dir/bin"
  printf '%s %s built in %ss with %s\n' "$comp" "$version" "$((SECONDS - start))" "$(go version)" >"$dir/.complete"
  exec 8>&-
  log "$comp $version: done in $(( (SECONDS - start) / 60 ))m$(( (SECONDS - start) % 60 ))s: $(ls "$dir/bin" | tr '\n' ' ')"
}

main() {
  local what=all print=0
  for a in "$@"; do
    case "$a" in
      -h|--help) usage; exit 0 ;;
      --print-dir) print=1 ;;
      k8s|etcd|kwok|all) what="$a" ;;
      *) usage >&2; exit 2 ;;
    esac
  done
  if [ "$print" = 1 ]; then cache_dir "$what"; exit 0; fi
  if [ "$what" = all ]; then
    for c in etcd k8s kwok; do build_one "$c"; done
  else
    build_one "$what"
  fi
}

main "$@"
