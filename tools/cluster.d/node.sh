# shellcheck shell=bash
# The real node of `tools/cluster up --node real`: containerd + runc + the CNI
# plugins from Debian, kubelet and kube-proxy built from the pinned Kubernetes
# module. Sourced by tools/cluster (it uses its BIN, PKI, LOGS, PIDS, kc, spawn,
# wait_ready ...). docs/real-node.md says how it differs from a stock node.
#
# Network: one bridge made here ($NODE_BRIDGE, $NODE_IP/24). Pods get addresses
# of $NODE_POD_CIDR on it; the node's address, which the API server advertises
# and PostgreSQL can listen on, is the bridge's. Services are kube-proxy's
# iptables rules for $SERVICE_CIDR, which DNAT to addresses on that bridge. A
# FORWARD rule drops anything a pod sends off the bridge, and pods resolve no
# names (their resolv.conf names only their own loopback), so a pod never sends
# traffic outside this machine — the real app's initial sync fails fast instead.

NODE_BRIDGE="${NODE_BRIDGE:-saobr0}"
NODE_IP="${NODE_IP:-10.200.0.1}"
NODE_POD_CIDR="${NODE_POD_CIDR:-10.200.0.0/24}"
REAL_NODE_NAME="${REAL_NODE_NAME:-sao-node-0}"
PAUSE_IMAGE="registry.k8s.io/pause:3.10"
NODE_DIR="$CLUSTER_DIR/node"
CTD_SOCK="$NODE_DIR/containerd.sock"
FWD_CHAIN="SAO-NODE-FORWARD"
# One real node per machine: it owns the bridge, host iptables and cgroups.
NODE_LOCK=/run/sync-airbnb-operator-node.lock

ctd() { ctr --address "$CTD_SOCK" -n k8s.io "$@"; }

node_check_host() {
  local c
  for c in containerd runc ctr iptables ip; do
    command -v "$c" >/dev/null || die "$c is required for --node real (run tools/bootstrap)"
  done
  [ -x /usr/lib/cni/bridge ] || die "the CNI plugins are required for --node real (Debian package containernetworking-plugins)"
  [ "$(id -u)" -eq 0 ] || die "--node real needs root (containers, bridges, iptables)"
  if [ -s "$NODE_LOCK" ] && [ "$(cat "$NODE_LOCK")" != "$CLUSTER_DIR" ] && [ -d "$(cat "$NODE_LOCK")/node" ] \
      && pid_alive "$(cat "$NODE_LOCK")/pids/kubelet.pid" "$(cat "$NODE_LOCK")/"; then
    die "a real node already runs for $(cat "$NODE_LOCK"); one per machine (tools/cluster down there first)"
  fi
  echo "$CLUSTER_DIR" >"$NODE_LOCK"
}

node_net_up() {
  if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    ip link add "$NODE_BRIDGE" type bridge
  fi
  local addrs
  addrs="$(ip -4 addr show dev "$NODE_BRIDGE")"
  [[ "$addrs" == *"inet $NODE_IP/"* ]] || ip addr add "$NODE_IP/24" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  # The bridge plugin turns on ip_forward for a gateway; remember the value to restore.
  [ -f "$NODE_DIR/ip_forward.orig" ] || cat /proc/sys/net/ipv4/ip_forward >"$NODE_DIR/ip_forward.orig"
  iptables -w -N "$FWD_CHAIN" 2>/dev/null || iptables -w -F "$FWD_CHAIN"
  iptables -w -A "$FWD_CHAIN" -d "$NODE_POD_CIDR" -j RETURN
  iptables -w -A "$FWD_CHAIN" -j DROP
  iptables -w -C FORWARD -s "$NODE_POD_CIDR" -j "$FWD_CHAIN" 2>/dev/null \
    || iptables -w -I FORWARD 1 -s "$NODE_POD_CIDR" -j "$FWD_CHAIN"
}

node_net_down() {
  while iptables -w -D FORWARD -s "$NODE_POD_CIDR" -j "$FWD_CHAIN" 2>/dev/null; do :; done
  iptables -w -F "$FWD_CHAIN" 2>/dev/null || true
  iptables -w -X "$FWD_CHAIN" 2>/dev/null || true
  ip link del "$NODE_BRIDGE" 2>/dev/null || true
  if [ -f "$NODE_DIR/ip_forward.orig" ]; then
    cat "$NODE_DIR/ip_forward.orig" >/proc/sys/net/ipv4/ip_forward || true
    rm -f "$NODE_DIR/ip_forward.orig"
  fi
}

node_write_configs() {
  mkdir -p "$NODE_DIR/cni" "$NODE_DIR/ipam" "$NODE_DIR/pod-logs" "$NODE_DIR/kubelet"
  # restrict_oom_score_adj: this sandbox refuses to lower oom_score_adj, and runc
  # then dies with "can't get final child's PID from pipe".
  cat >"$NODE_DIR/containerd.toml" <<EOF
version = 2
root = "$NODE_DIR/containerd-root"
state = "$NODE_DIR/containerd-state"
[grpc]
  address = "$CTD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE_DIR/cni"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$NODE_DIR/registries"
EOF
  # Images come from tools/image only: a pull (a wrong tag, imagePullPolicy Always)
  # goes to a closed local port and fails at once, never to a registry.
  local reg
  for reg in _default docker.io registry.k8s.io quay.io ghcr.io gcr.io; do
    mkdir -p "$NODE_DIR/registries/$reg"
    printf 'server = "http://127.0.0.1:9"\n[host."http://127.0.0.1:9"]\n  capabilities = ["pull", "resolve"]\n' \
      >"$NODE_DIR/registries/$reg/hosts.toml"
  done
  cat >"$NODE_DIR/cni/10-sao-pods.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "sao-pods",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$NODE_DIR/ipam",
        "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  # Pods resolve nothing: their DNS server is their own loopback (clusterDNS below)
  # and the node's resolv.conf names only loopback too; no query leaves the machine.
  printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"$NODE_DIR/resolv.conf"
  # Differences from a stock kubelet, each for this machine (docs/real-node.md):
  # cgroups v1 (hybrid) allowed, swap tolerated, cgroupfs driver (no systemd),
  # syncFrequency 10 s (stock 1 min) so ConfigMap edits reach pods sooner,
  # eviction thresholds low (a shared disk), cluster DNS = the pod's own loopback.
  cat >"$NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
failSwapOn: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CTD_SOCK
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $PKI/ca.crt
authorization:
  mode: Webhook
clusterDomain: cluster.local
clusterDNS: ["127.0.0.1"]
resolvConf: $NODE_DIR/resolv.conf
podLogsDir: $NODE_DIR/pod-logs
syncFrequency: 10s
configMapAndSecretChangeDetectionStrategy: Watch
serializeImagePulls: false
maxPods: 250
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
EOF
  cat >"$NODE_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
hostnameOverride: $REAL_NODE_NAME
clientConnection:
  kubeconfig: $CLUSTER_DIR/kube-proxy.kubeconfig
clusterCIDR: $NODE_POD_CIDR
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
nodePortAddresses: ["$NODE_IP/32"]
conntrack:
  maxPerCore: 0
iptables:
  localhostNodePorts: false
EOF
}

# The kubelet's own chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT) and
# whatever kube-proxy --cleanup left: every KUBE-* chain and every jump into one. Only
# the node's owner runs this (NODE_LOCK): no other kubelet runs on this machine.
node_iptables_clean() {
  local ipt t rule chains c
  for ipt in iptables ip6tables; do
    command -v "$ipt-save" >/dev/null || continue
    for t in filter nat mangle; do
      while read -r rule; do
        [ -n "$rule" ] && eval "$ipt -w -t $t ${rule/#-A/-D}" 2>/dev/null || true
      done < <("$ipt-save" -t "$t" 2>/dev/null | grep -E '^-A [A-Z]+ .*-j KUBE-' || true)
      chains="$("$ipt-save" -t "$t" 2>/dev/null | awk '/^:KUBE-/ {print substr($1, 2)}' || true)"
      for c in $chains; do "$ipt" -w -t "$t" -F "$c" 2>/dev/null || true; done
      for c in $chains; do "$ipt" -w -t "$t" -X "$c" 2>/dev/null || true; done
    done
  done
}

# Answering is not enough: the kubelet exits at once if the CRI service is still
# initialising ("server is not initialized yet"), which it marks right after it logs
# that it starts its streaming server (containerd 1.6, pkg/cri/server/service.go Run).
ctd_ok() {
  ctr --address "$CTD_SOCK" version && grep -q "Start streaming server" "$LOGS/containerd.log"
}
kubelet_ok() { curl -fsS --max-time 2 "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz"; }
proxy_ok() { curl -fsS --max-time 2 "http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz"; }
real_node_ready() {
  [ "$(kc get node "$REAL_NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}|{.spec.taints}' 2>/dev/null)" = "True|" ]
}

# node_up: after the API server, controller-manager and scheduler are up.
node_up() {
  node_check_host
  node_write_configs
  node_net_up
  log "starting containerd (socket $CTD_SOCK)"
  start_component containerd containerd --config "$NODE_DIR/containerd.toml" --log-level info
  wait_ready containerd 60 "containerd" ctd_ok
  # The pod sandbox image is built locally (tools/image): nothing is ever pulled.
  "$ROOT/tools/image" load --address "$CTD_SOCK" pause >>"$LOGS/containerd.log" 2>&1 \
    || fail containerd "$LOGS/containerd.log" "could not load the pause image (tools/image load pause)"
  log "starting kubelet $K8S_VERSION (node $REAL_NODE_NAME, $NODE_IP)"
  start_component kubelet "$BIN/kubelet" \
    --config="$NODE_DIR/kubelet.yaml" \
    --kubeconfig="$CLUSTER_DIR/kubelet.kubeconfig" \
    --root-dir="$NODE_DIR/kubelet" --cert-dir="$NODE_DIR/kubelet-pki" \
    --hostname-override="$REAL_NODE_NAME" --node-ip="$NODE_IP" \
    --node-labels="sync-airbnb.io/node=real" \
    --v=1
  wait_ready kubelet 120 "kubelet /healthz" kubelet_ok
  log "starting kube-proxy (iptables mode)"
  start_component kube-proxy "$BIN/kube-proxy" --config="$NODE_DIR/kube-proxy.yaml" --v=1
  wait_ready kube-proxy 60 "kube-proxy /healthz" proxy_ok
  wait_ready kubelet 180 "node $REAL_NODE_NAME to become Ready" real_node_ready
}

# node_down: removes every pod, container, sandbox, network namespace, mount,
# iptables rule and cgroup the node made (also what a killed run left). Best effort at
# each step; tests/e2e's last test checks that nothing is left.
node_down() {
  [ -d "$NODE_DIR" ] || return 0
  local apiserver_up=0
  alive kube-apiserver && apiserver_up=1
  # Controllers first, so nothing recreates the pods we delete.
  stop_pid kube-controller-manager "$PIDS/kube-controller-manager.pid" "$CLUSTER_DIR/"
  stop_pid kube-scheduler "$PIDS/kube-scheduler.pid" "$CLUSTER_DIR/"
  if [ "$apiserver_up" = 1 ] && alive kubelet && alive containerd; then
    # Through the kubelet, so the CNI plugin tears each sandbox's network down.
    log "deleting every pod of the node"
    kc delete pods --all --all-namespaces --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
    # The kubelet stops each sandbox (and its network); it keeps the stopped containers.
    wait_until 60 "pods stopped" bash -c "! ctr --address '$CTD_SOCK' -n k8s.io tasks ls 2>/dev/null | grep -qw RUNNING" \
      || log "some containers outlived their pods; killing them directly"
  fi
  stop_pid kube-proxy "$PIDS/kube-proxy.pid" "$CLUSTER_DIR/"
  [ -x "$BIN/kube-proxy" ] && "$BIN/kube-proxy" --cleanup --v=0 >>"$LOGS/kube-proxy.log" 2>&1 || true
  stop_pid kubelet "$PIDS/kubelet.pid" "$CLUSTER_DIR/"
  if alive containerd; then
    local id netns
    for id in $(ctd tasks ls -q 2>/dev/null); do ctd tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
    for id in $(ctd containers ls -q 2>/dev/null); do
      netns="$(ctd containers info "$id" 2>/dev/null | python3 -c '
import json, sys
try:
    spec = json.load(sys.stdin).get("Spec") or {}
except ValueError:
    sys.exit(0)
for ns in (spec.get("linux") or {}).get("namespaces") or []:
    if ns.get("type") == "network" and ns.get("path"):
        print(ns["path"])' 2>/dev/null || true)"
      wait_until 10 "task $id gone" bash -c "! ctr --address '$CTD_SOCK' -n k8s.io tasks ls -q | grep -qx '$id'" || true
      ctd tasks delete "$id" >/dev/null 2>&1 || true
      ctd containers delete "$id" >/dev/null 2>&1 || true
      [ -n "$netns" ] && ip netns delete "$(basename "$netns")" 2>/dev/null || true
    done
  fi
  stop_pid containerd "$PIDS/containerd.pid" "$CLUSTER_DIR/"
  # Shims of our containerd (started with its socket address) that are left.
  pkill -KILL -f "containerd-shim-runc-v2 .*-address $CTD_SOCK" 2>/dev/null || true
  # Network namespaces that still hold an address of our pod range.
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^cni-' || true); do
    ip -n "$ns" -4 addr 2>/dev/null | grep -q "inet ${NODE_POD_CIDR%.*}\." && ip netns delete "$ns" 2>/dev/null || true
  done
  # Mounts below the node's directories (overlay rootfs, projected volumes, shm), deepest first.
  local m
  while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done < <(awk -v d="$NODE_DIR/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r)
  node_net_down
  node_iptables_clean
  # The kubelet's pod cgroups (cgroupfs driver), deepest first.
  local cg
  for cg in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/kubepods.slice; do
    [ -d "$cg" ] || continue
    find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  [ -s "$NODE_LOCK" ] && [ "$(cat "$NODE_LOCK")" = "$CLUSTER_DIR" ] && rm -f "$NODE_LOCK"
  return 0
}
