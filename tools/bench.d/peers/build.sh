#!/usr/bin/env bash
# Builds the controller-runtime peer (peers/kubebuilder) from the Go module
# proxy, once per content: cached in $CACHE/peer-kubebuilder-<controller-runtime
# version>-<hash of go.mod, go.sum, main.go>/. Prints the binary's path.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
SRC="$HERE/kubebuilder"
CACHE=/var/cache/sync-airbnb-operator
if ! { mkdir -p "$CACHE" 2>/dev/null && [ -w "$CACHE" ]; }; then
  CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/sync-airbnb-operator"
fi
export PATH=/usr/local/go/bin:$PATH GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
command -v go >/dev/null || { echo "peers/build.sh: go not found (tools/bootstrap installs it)" >&2; exit 1; }
ver=$(awk '$1=="sigs.k8s.io/controller-runtime" {print $2}' "$SRC/go.mod")
h=$(cat "$SRC/go.mod" "$SRC/go.sum" "$SRC/main.go" | sha256sum | cut -c1-10)
dir="$CACHE/peer-kubebuilder-$ver-$h"
bin="$dir/bin/peer-kubebuilder"
if [ ! -x "$bin" ]; then
  echo "peers/build.sh: building the controller-runtime peer ($ver) into $dir" >&2
  mkdir -p "$dir/bin"
  (cd "$SRC" && nice go build -trimpath -o "$bin.partial" .) >&2
  mv "$bin.partial" "$bin"
fi
echo "$bin"
