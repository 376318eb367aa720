"""End-to-end on a real node: the operator image and the real sync-airbnb worker image run
as containers on a kubelet (tools/cluster up --node real), installed by the README's own
steps. Nothing here is faked: containerd runs the images tools/image built, the kubelet
runs the real probes, PostgreSQL is reached from the pods over the node's bridge.

Session fixtures
  node     NodeCluster  the real-node cluster (tools/cluster up --node real in
                        $E2E_CLUSTER_DIR, default /tmp/sync-airbnb-node)
  node_pg  Postgres     a PostgreSQL that also listens on the node's bridge address, with a
                        password login for the pods ($E2E_PG_DIR, /tmp/sync-airbnb-node-pg)
  images   dict         the image references built by tools/image and loaded into the
                        node's containerd

Both services are stopped at the end of the session unless KEEP_CLUSTER=1; the last test of
test_real_node.py takes the node down itself and checks nothing of it is left.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(HERE))

from harness import Cluster, Postgres  # noqa: E402

KEEP = os.environ.get("KEEP_CLUSTER", "") not in ("", "0", "false")
NODE_DIR = os.environ.get("E2E_CLUSTER_DIR", "/tmp/sync-airbnb-node")
NODE_PG_DIR = os.environ.get("E2E_PG_DIR", "/tmp/sync-airbnb-node-pg")
NODE_IP = os.environ.get("NODE_IP", "10.200.0.1")
POD_CIDR = os.environ.get("NODE_POD_CIDR", "10.200.0.0/24")


@pytest.fixture(scope="session")
def node(request):
    capman = request.config.pluginmanager.getplugin("capturemanager")
    os.environ["CLUSTER_NODE"] = "real"
    with capman.global_and_fixture_disabled():
        c = Cluster.ensure(NODE_DIR)
    yield c
    if c.started_here and not KEEP:
        subprocess.run([str(REPO / "tools" / "cluster"), "down"],
                       env=dict(os.environ, CLUSTER_DIR=NODE_DIR), check=False, timeout=300)


@pytest.fixture(scope="session")
def node_pg(node):
    # After the node: PostgreSQL binds the bridge's address, which `up` creates.
    os.environ["PG_LISTEN"] = f"127.0.0.1,{NODE_IP}"
    os.environ["PG_HBA_NETWORK"] = POD_CIDR
    p = Postgres.ensure(NODE_PG_DIR)
    yield p
    if p.started_here and not KEEP:
        p.down()


@pytest.fixture(scope="session")
def images(node, request):
    """Builds (cached by content) and loads the operator and worker images."""
    capman = request.config.pluginmanager.getplugin("capturemanager")
    tool = str(REPO / "tools" / "image")
    sock = str(Path(NODE_DIR) / "node" / "containerd.sock")
    with capman.global_and_fixture_disabled():
        subprocess.run([tool, "build", "operator", "worker"], check=True, timeout=3600)
        subprocess.run([tool, "load", "--address", sock, "operator", "worker"], check=True, timeout=900)
    names = subprocess.run([tool, "names"], check=True, capture_output=True, text=True).stdout.split()
    return {"operator": next(n for n in names if "sync-airbnb-operator:" in n),
            "worker": next(n for n in names if "/sync-airbnb:" in n)}
