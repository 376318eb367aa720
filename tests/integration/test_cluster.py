"""The local control plane and PostgreSQL work the way the operator's tests need
(issue 3, "Done when")."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from harness import TOOLS, Cluster, Postgres, pinned_k8s_version

NODE = "kwok-node-0"


def test_kubectl_version_shows_pinned_server_version(kubectl):
    v = json.loads(kubectl("version", "-o", "json").stdout)
    pinned = pinned_k8s_version()
    assert v["serverVersion"]["gitVersion"] == pinned
    assert v["clientVersion"]["gitVersion"] == pinned


DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: sync-airbnb:latest
        ports: [{containerPort: 8000}]
        readinessProbe:
          httpGet: {path: /health/ready, port: 8000}
"""


def test_deployment_gets_replicaset_and_ready_pod_on_kwok_node(cluster, namespace):
    start = time.monotonic()
    cluster.kubectl("apply", "-f", "-", input=DEPLOYMENT, namespace=namespace)
    pod = None
    while time.monotonic() - start < 30:
        pods = cluster.kubectl_json("get", "pods", "-l", "app=web", namespace=namespace)["items"]
        ready = [p for p in pods
                 if any(c["type"] == "Ready" and c["status"] == "True"
                        for c in p.get("status", {}).get("conditions", []))]
        if ready:
            pod = ready[0]
            break
        time.sleep(0.5)
    elapsed = time.monotonic() - start
    assert pod is not None, f"no Ready pod after {elapsed:.1f}s"
    assert pod["spec"]["nodeName"] == NODE
    assert pod["status"]["phase"] == "Running"
    owner = pod["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "ReplicaSet"
    rs = cluster.kubectl_json("get", "replicaset", owner["name"], namespace=namespace)
    assert rs["metadata"]["ownerReferences"][0]["name"] == "web"
    cluster.kubectl("wait", "--for=condition=Available", "deployment/web", "--timeout=20s",
                    namespace=namespace)


RBAC = """
apiVersion: v1
kind: ServiceAccount
metadata: {name: reader}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-reader}
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader-pods}
subjects: [{kind: ServiceAccount, name: reader}]
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}
"""


def test_serviceaccount_token_authenticates_and_rbac_is_enforced(cluster, namespace):
    cluster.kubectl("apply", "-f", "-", input=RBAC, namespace=namespace)
    token = cluster.kubectl("create", "token", "reader", "--duration=10m",
                            namespace=namespace).stdout.strip()
    assert token.count(".") == 2  # a signed JWT

    who = json.loads(cluster.kubectl("auth", "whoami", "-o", "json", token=token).stdout)
    assert who["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:reader"

    # Granted by the Role:
    cluster.kubectl("get", "pods", namespace=namespace, token=token)
    # Not granted: another resource, another verb, another namespace.
    for args, ns in ((("get", "secrets"), namespace),
                     (("create", "configmap", "x", "--from-literal=a=b"), namespace),
                     (("get", "pods"), "default")):
        p = cluster.kubectl(*args, namespace=ns, token=token, check=False)
        assert p.returncode != 0 and "forbidden" in p.stderr.lower(), (args, ns, p.stderr)

    # A garbage token is not authenticated at all.
    p = cluster.kubectl("get", "pods", namespace=namespace, token="not-a-token", check=False)
    assert p.returncode != 0 and "Unauthorized" in p.stderr, p.stderr


def test_postgres_answers_through_database_url(pg, database_url):
    assert pg.psql("select 1").stdout.strip() == "1"  # the default sync_airbnb database
    assert pg.url.endswith("/sync_airbnb")
    p = subprocess.run([pg.psql_path, "-X", "-At", database_url, "-c", "select 1"],
                       capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "1"
    # Each test gets its own empty database.
    assert pg.psql("select count(*) from pg_tables where schemaname='public'",
                   url=database_url).stdout.strip() == "0"


def _pids_of(run_dir: Path) -> list[int]:
    """Pids of every process whose command line mentions run_dir."""
    found = []
    needle = str(run_dir) + "/"
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmd:
            found.append(int(d.name))
    return found


def test_second_cluster_coexists_and_down_leaves_no_process(cluster, tmp_path):
    """A second cluster in its own CLUSTER_DIR starts next to the session one (free
    ports, cached binaries), and `down` leaves none of its processes behind."""
    d = tmp_path / "cluster2"
    env = dict(os.environ, CLUSTER_DIR=str(d))
    try:
        up = subprocess.run([str(TOOLS / "cluster"), "up"], env=env, capture_output=True,
                            text=True, timeout=600)
        assert up.returncode == 0, up.stderr
        other = Cluster(dir=d)
        assert other.server != cluster.server
        pids = [int((d / "pids" / f"{c}.pid").read_text()) for c in
                ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")]
        assert all(Path(f"/proc/{p}").exists() for p in pids)
        again = subprocess.run([str(TOOLS / "cluster"), "up"], env=env, capture_output=True,
                               text=True, timeout=60)
        assert again.returncode == 0 and "already up" in again.stderr
        nodes = other.kubectl_json("get", "nodes")["items"]
        assert [n["metadata"]["name"] for n in nodes] == [NODE]
    finally:
        down = subprocess.run([str(TOOLS / "cluster"), "down"], env=env, capture_output=True,
                              text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert _pids_of(d) == []
    # The session cluster is untouched.
    cluster.kubectl("get", "--raw", "/readyz")


def test_second_postgres_coexists_and_down_stops_it(pg):
    # Not under pytest's tmp_path: its parents are private to root, and the server
    # runs as the 'postgres' user when the tests run as root.
    d = Path(tempfile.mkdtemp(prefix="sync-airbnb-pg-test-", dir="/tmp")) / "pg"
    d.parent.chmod(0o755)
    env = dict(os.environ, PG_DIR=str(d))
    try:
        other = Postgres.ensure(str(d))
        assert other.url != pg.url
        assert other.psql("select 1").stdout.strip() == "1"
    finally:
        subprocess.run([str(TOOLS / "pg"), "down"], env=env, check=True, capture_output=True)
    assert _pids_of(d) == []
    assert pg.psql("select 1").stdout.strip() == "1"
    shutil.rmtree(d.parent, ignore_errors=True)
