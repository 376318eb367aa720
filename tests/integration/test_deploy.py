"""deploy/ against the real kube-apiserver, the operator with exactly deploy/'s RBAC
through the in-cluster configuration, and the install layout the Dockerfile expects
(issue 8).

deploy/ names two namespaces (sync-airbnb-system for the operator, sync-airbnb for the
workers). The tests render it with kustomize and move both to fresh names, so they
never touch (or depend on) namespaces of those names in the shared test cluster.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import REPO, unique_name
from operator_harness import Operator, binary, run_cli, wait_for

DEPLOY = REPO / "deploy"
RULES = REPO / "lua" / "rules"
MIGRATIONS = REPO / "lua" / "migrations"
SYS, WORKERS = "sync-airbnb-system", "sync-airbnb"
OPERATOR = "sync-airbnb-operator"
RULES_CM = "sync-airbnb-operator-rules"
RULES_EVENTS = "sync-airbnb-operator-rules-events"

# What the operator calls, and nothing more (README of deploy/rbac.yaml).
EXPECTED_RULES = sorted([
    ("apps", "deployments", (), ("create", "delete", "get", "list", "patch", "watch")),
    ("", "pods", (), ("get", "list", "watch")),
    ("", "events", (), ("create",)),
    ("coordination.k8s.io", "leases", (), ("create",)),
    ("coordination.k8s.io", "leases", ("sync-airbnb-operator",), ("get", "update")),
])


# ---- rendering deploy/ ----------------------------------------------------------------

def _json_stream(text: str) -> list[dict]:
    dec, i, out = json.JSONDecoder(), 0, []
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return out
        obj, i = dec.raw_decode(text, i)
        out.extend(obj["items"] if obj.get("kind") == "List" else [obj])


def render(cluster) -> list[dict]:
    """`kubectl kustomize deploy/` as a list of objects (kubectl converts it to JSON,
    so the tests need no YAML library)."""
    yaml_text = cluster.kubectl("kustomize", str(DEPLOY)).stdout
    return _json_stream(cluster.kubectl("create", "--dry-run=client", "-o", "json", "-f", "-",
                                        input=yaml_text).stdout)


def find(objs, kind, name=None) -> dict:
    hits = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def env_of(container) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def relocate(objs, nsmap: dict) -> list[dict]:
    """The same objects with deploy/'s namespaces renamed (Namespace names, object
    namespaces, RoleBinding subjects, the operator's OPERATOR_NAMESPACE)."""
    out = []
    for o in copy.deepcopy(objs):
        md = o["metadata"]
        if o["kind"] == "Namespace":
            md["name"] = nsmap[md["name"]]
            md.get("labels", {}).pop("kubernetes.io/metadata.name", None)
        if "namespace" in md:
            md["namespace"] = nsmap[md["namespace"]]
        for s in o.get("subjects", []):
            if "namespace" in s:
                s["namespace"] = nsmap[s["namespace"]]
        for c in pod_spec(o)["containers"] if pod_spec(o) else []:
            for e in c.get("env", []):
                if e["name"] == "OPERATOR_NAMESPACE":
                    e["value"] = nsmap[e["value"]]
                if e["name"] == "RULES_CONFIGMAP":
                    ns, name = e["value"].split("/", 1)
                    e["value"] = f"{nsmap[ns]}/{name}"
        out.append(o)
    return out


def pod_spec(o) -> dict | None:
    if o["kind"] in ("Deployment", "Job"):
        return o["spec"]["template"]["spec"]
    return None


def as_pod(o, name: str) -> dict:
    """A Pod with the pod template of a Deployment or Job, to put through Pod Security
    admission (which judges pods; for workload objects it only warns)."""
    t = o["spec"]["template"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": o["metadata"]["namespace"],
                         "labels": t["metadata"].get("labels", {})},
            "spec": copy.deepcopy(t["spec"])}


def apply(cluster, objs, *args, check=True) -> subprocess.CompletedProcess:
    doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": objs})
    return cluster.kubectl("apply", "-f", "-", *args, input=doc, check=check)


def create_pod_dry_run(cluster, pod) -> subprocess.CompletedProcess:
    return cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)


@pytest.fixture(scope="module")
def rendered(cluster):
    return render(cluster)


@pytest.fixture
def deploy_ns(cluster, rendered):
    """deploy/'s two Namespaces under fresh names, created with deploy/'s labels.
    Yields {deploy name: test name}."""
    nsmap = {SYS: unique_name("t-sys"), WORKERS: unique_name("t-wk")}
    apply(cluster, relocate([o for o in rendered if o["kind"] == "Namespace"], nsmap))
    for ns in nsmap.values():  # pods are rejected until the 'default' ServiceAccount exists
        wait_for(lambda ns=ns: cluster.kubectl("get", "serviceaccount", "default", namespace=ns,
                                               check=False).returncode == 0, 30, f"no SA in {ns}")
    yield nsmap
    for ns in nsmap.values():
        cluster.delete_namespace(ns)


# ---- what deploy/ renders -------------------------------------------------------------

def test_renders_the_expected_objects_and_no_secret(rendered):
    got = sorted((o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in rendered)
    assert got == sorted([
        ("Namespace", "", SYS), ("Namespace", "", WORKERS),
        ("ServiceAccount", SYS, OPERATOR),
        ("Role", WORKERS, OPERATOR), ("RoleBinding", WORKERS, OPERATOR),
        ("Role", SYS, RULES_EVENTS), ("RoleBinding", SYS, RULES_EVENTS),
        ("ConfigMap", SYS, RULES_CM),
        ("Deployment", SYS, OPERATOR),
        ("Job", WORKERS, find(rendered, "Job")["metadata"]["name"]),
        ("Service", SYS, f"{OPERATOR}-metrics"),
        ("PodDisruptionBudget", SYS, OPERATOR), ("NetworkPolicy", SYS, OPERATOR),
    ])
    # the Secret is the user's: referenced, never shipped (not even a placeholder)
    assert not [o for o in rendered if o["kind"] == "Secret"]
    assert "kind: Secret" in (DEPLOY / "secret.example.yaml").read_text()


def test_pod_security_labels(rendered):
    def levels(name):
        labels = find(rendered, "Namespace", name)["metadata"]["labels"]
        return {m: labels.get(f"pod-security.kubernetes.io/{m}") for m in ("enforce", "audit", "warn")}
    assert levels(SYS) == {"enforce": "restricted", "audit": "restricted", "warn": "restricted"}
    # workers run the app image as root (DESIGN.md §2): baseline enforced, restricted reported
    assert levels(WORKERS) == {"enforce": "baseline", "audit": "restricted", "warn": "restricted"}


def test_rbac_is_exactly_what_the_operator_uses(rendered):
    kinds = {o["kind"] for o in rendered}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
    role = find(rendered, "Role", OPERATOR)
    got = sorted((g, r, tuple(sorted(rule.get("resourceNames", []))), tuple(sorted(rule["verbs"])))
                 for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"])
    assert got == EXPECTED_RULES
    binding = find(rendered, "RoleBinding", OPERATOR)
    sa = find(rendered, "ServiceAccount")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": sa["metadata"]["namespace"]}]
    # the Lease name the Role allows is the one the operator uses
    dep = find(rendered, "Deployment")
    lease = env_of(dep["spec"]["template"]["spec"]["containers"][0]).get("LEASE_NAME", {}).get(
        "value", "sync-airbnb-operator")
    assert ("coordination.k8s.io", "leases", (lease,), ("get", "update")) in got
    # in the operator's own namespace: the rules ConfigMap's uid and Events on it (RULES_CONFIGMAP)
    ev_role = find(rendered, "Role", RULES_EVENTS)
    assert ev_role["metadata"]["namespace"] == SYS
    got = sorted((g, r, tuple(sorted(rule.get("resourceNames", []))), tuple(sorted(rule["verbs"])))
                 for rule in ev_role["rules"] for g in rule["apiGroups"] for r in rule["resources"])
    assert got == sorted([("", "configmaps", (RULES_CM,), ("get",)), ("", "events", (), ("create",))])
    ev_binding = find(rendered, "RoleBinding", RULES_EVENTS)
    assert ev_binding["roleRef"]["name"] == RULES_EVENTS and ev_binding["subjects"] == binding["subjects"]
    assert env_of(dep["spec"]["template"]["spec"]["containers"][0])["RULES_CONFIGMAP"]["value"] == f"{SYS}/{RULES_CM}"


def test_operator_deployment(rendered):
    dep = find(rendered, "Deployment", OPERATOR)
    role = find(rendered, "Role", OPERATOR)
    spec = dep["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == find(rendered, "ServiceAccount")["metadata"]["name"]
    assert dep["metadata"]["namespace"] == find(rendered, "ServiceAccount")["metadata"]["namespace"]
    (c,) = spec["containers"]
    env = env_of(c)
    assert c["args"] == ["run"]
    # configuration from the downward API, the Secret and the ConfigMap
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "sync-airbnb-db", "key": "url"}
    assert env["OPERATOR_NAMESPACE"]["value"] == role["metadata"]["namespace"] == WORKERS
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in spec["volumes"]}
    rules_vol = [n for n, v in vols.items() if v.get("configMap", {}).get("name") == RULES_CM]
    assert len(rules_vol) == 1
    m = mounts[rules_vol[0]]
    assert m["mountPath"] == env["RULES_DIR"]["value"] == "/etc/sync-airbnb-operator/rules"
    assert m.get("readOnly") and "subPath" not in m  # a subPath mount never sees updates
    # the Job and the operator agree on what the migrations' SQL names
    job = find(rendered, "Job")
    (jc,) = job["spec"]["template"]["spec"]["containers"]
    assert env_of(jc)["ACCOUNTS_TABLE"]["value"] == env["ACCOUNTS_TABLE"]["value"]
    assert jc["image"] == c["image"]
    # health endpoints and probes
    port = int(env["HEALTH_ADDR"]["value"].rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    def probe_port(p):
        v = p["httpGet"]["port"]
        return ports[v] if isinstance(v, str) else v
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" and probe_port(c["livenessProbe"]) == port == 8080
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and probe_port(c["readinessProbe"]) == port
    # hardening
    sc, psc = c["securityContext"], spec["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 65532
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert c["resources"]["limits"]["memory"]


def test_rules_configmap_is_lua_rules_without_name_hash(rendered):
    cm = find(rendered, "ConfigMap")
    assert cm["metadata"]["name"] == RULES_CM  # no hash suffix: edits reach the same mount
    files = {p.name: p.read_text() for p in RULES.glob("*.lua")}
    assert files, "no lua/rules/*.lua"
    missing = sorted(set(files) - set(cm["data"]))
    assert not missing, f"lua/kustomization.yaml does not list {missing}"
    assert cm["data"] == files


# ---- the real API server --------------------------------------------------------------

def test_dry_run_server_and_pod_security_admission(cluster, rendered, deploy_ns):
    objs = relocate(rendered, deploy_ns)
    rest = [o for o in objs if o["kind"] != "Namespace"]
    p = apply(cluster, rest, "--dry-run=server")
    assert "(server dry run)" in p.stdout
    # warn=restricted on both namespaces: any non-hardened pod template would warn here
    assert "PodSecurity" not in p.stderr and "Warning" not in p.stderr, p.stderr

    # Pod Security judges pods, so put the operator's and the Job's pod templates
    # through admission as pods (their ServiceAccount must exist for that).
    apply(cluster, [find(objs, "ServiceAccount")])
    dep, job = find(objs, "Deployment"), find(objs, "Job")
    for o in (dep, job):
        r = create_pod_dry_run(cluster, as_pod(o, "admission-check"))
        assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    # ... and the check is not vacuous: the same pod without its hardening is refused
    weak = as_pod(dep, "weak")
    weak["spec"].pop("securityContext")
    weak["spec"]["containers"][0].pop("securityContext")
    r = create_pod_dry_run(cluster, weak)
    assert r.returncode != 0 and 'violates PodSecurity "restricted' in r.stderr, r.stderr


def test_apply_for_real_admits_the_operator_and_job_pods(cluster, rendered, deploy_ns):
    """Applied for real, the ReplicaSet and Job controllers create the pods (kwok runs
    them), which passes Pod Security for real pods; and editing a rule file then
    re-applying updates the same ConfigMap in place."""
    objs = relocate(rendered, deploy_ns)
    apply(cluster, [o for o in objs if o["kind"] != "Namespace"])
    sys_ns, wk_ns = deploy_ns[SYS], deploy_ns[WORKERS]

    def pods(ns, sel):
        return cluster.kubectl_json("get", "pods", "-l", sel, namespace=ns)["items"]
    wait_for(lambda: len(pods(sys_ns, "app.kubernetes.io/component=operator")) == 2, 60,
             lambda: cluster.kubectl("get", "events", namespace=sys_ns).stdout)
    wait_for(lambda: len(pods(wk_ns, "app.kubernetes.io/component=migrate")) >= 1, 60,
             lambda: cluster.kubectl("get", "events", namespace=wk_ns).stdout)
    rs_events = cluster.kubectl("get", "events", "--field-selector", "reason=FailedCreate",
                                namespace=sys_ns).stdout
    assert "PodSecurity" not in rs_events
    cm = cluster.kubectl_json("get", "configmap", RULES_CM, namespace=sys_ns)
    assert set(cm["data"]) == {p.name for p in RULES.glob("*.lua")}


def _ca_pem(cluster) -> bytes:
    data = cluster.kubectl("config", "view", "--raw", "--minify", "-o",
                           "jsonpath={.clusters[0].cluster.certificate-authority-data}").stdout
    return base64.b64decode(data)


def _events_for(cluster, ns, name) -> list[dict]:
    """The operator's Events about object `name` (the deployment controller posts some too)."""
    return [e for e in cluster.kubectl_json("get", "events", namespace=ns)["items"]
            if e["involvedObject"].get("name") == name
            and e.get("source", {}).get("component") == OPERATOR]


def test_in_cluster_config_with_exactly_deploy_rbac(cluster, rendered, deploy_ns, migrated_db, pg,
                                                    tmp_path):
    """The operator run with a token of deploy/'s ServiceAccount through the in-cluster
    files (token, ca.crt, namespace under KUBE_SA_DIR; KUBERNETES_SERVICE_HOST/PORT;
    no kubeconfig) creates, updates and deletes workers, posts Events and holds the
    Lease; the same token can read no Secret and touch no other namespace."""
    sys_ns, wk_ns = deploy_ns[SYS], deploy_ns[WORKERS]
    objs = relocate(rendered, deploy_ns)
    apply(cluster, [o for o in objs if o["kind"] in ("ServiceAccount", "Role", "RoleBinding")])
    token = cluster.kubectl("create", "token", OPERATOR, "--duration=1h", namespace=sys_ns).stdout.strip()
    assert token

    sa_dir = tmp_path / "serviceaccount"
    sa_dir.mkdir()
    (sa_dir / "token").write_text(token + "\n")
    (sa_dir / "ca.crt").write_bytes(_ca_pem(cluster))
    (sa_dir / "namespace").write_text(sys_ns)  # the pod's own namespace, as in a pod
    host, port = re.match(r"https://([^:/]+):(\d+)", cluster.server).groups()

    pg.psql("insert into airbnb.accounts(account_id, airbnb_cookie, x_client_version, user_agent, is_active)"
            " values ('2001', 'c-2001', 'v1', 'ua', true), ('2002', 'c-2002', 'v1', 'ua', true)",
            url=migrated_db)
    dep_env = env_of(find(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0])
    op = Operator.start(database_url=migrated_db, kubeconfig="", namespace=dep_env["OPERATOR_NAMESPACE"]["value"],
                        env={"KUBE_SA_DIR": str(sa_dir), "KUBERNETES_SERVICE_HOST": host,
                             "KUBERNETES_SERVICE_PORT": port, "RESYNC_INTERVAL_SECONDS": "2"})
    try:
        assert op.wait_ready(timeout=60)["checks"]["kubernetes"]["synced"]

        def names():
            return sorted(d["metadata"]["name"] for d in
                          cluster.kubectl_json("get", "deployments", namespace=wk_ns)["items"])
        w1, w2 = "sync-airbnb-worker-2001", "sync-airbnb-worker-2002"
        wait_for(lambda: names() == [w1, w2], 30, lambda: f"{names()}\n{op.raw_log()[-3000:]}")
        # update (server-side apply patch): an admin credential change rolls the worker
        fp = "sync-airbnb.io/credentials-fingerprint"

        def fingerprint():
            d = cluster.kubectl_json("get", "deployment", w1, namespace=wk_ns)
            return d["spec"]["template"]["metadata"]["annotations"][fp]
        before = fingerprint()
        pg.psql("update airbnb.accounts set user_agent = 'ua-2' where account_id = '2001'", url=migrated_db)
        wait_for(lambda: fingerprint() != before, 30, lambda: op.raw_log()[-3000:])
        # delete
        pg.psql("update airbnb.accounts set is_active = false where account_id = '2002'", url=migrated_db)
        wait_for(lambda: names() == [w1], 30, lambda: op.raw_log()[-3000:])

        # Events, in the workers' namespace, about the Deployments
        wait_for(lambda: _events_for(cluster, wk_ns, w1) and _events_for(cluster, wk_ns, w2), 20,
                 lambda: cluster.kubectl("get", "events", namespace=wk_ns).stdout)
        reasons = {e["reason"] for e in _events_for(cluster, wk_ns, w1) + _events_for(cluster, wk_ns, w2)}
        assert len(reasons) >= 3, reasons  # created, updated, deleted
        assert {e["involvedObject"]["kind"] for e in _events_for(cluster, wk_ns, w1)} == {"Deployment"}
        # the Lease, held by this operator
        lease = cluster.kubectl_json("get", "lease", OPERATOR, namespace=wk_ns)
        assert lease["spec"]["holderIdentity"] == op.readyz()["checks"]["leader"]["identity"]
        # the worker's pod passes the workers' namespace's Pod Security level...
        wait_for(lambda: cluster.kubectl_json("get", "pods", "-l", "account-id=2001", namespace=wk_ns)["items"],
                 30, lambda: cluster.kubectl("get", "events", namespace=wk_ns).stdout)
        # ... and would not pass the operator's (the reason for two namespaces)
        worker = cluster.kubectl_json("get", "deployment", w1, namespace=wk_ns)
        worker["metadata"]["namespace"] = sys_ns
        r = create_pod_dry_run(cluster, as_pod(worker, "worker-in-restricted"))
        assert r.returncode != 0 and 'violates PodSecurity "restricted' in r.stderr, r.stderr

        problems = [rec for rec in op.logs()
                    if re.search(r"forbidden|\b403\b|unauthori[sz]ed|\b401\b", json.dumps(rec), re.I)]
        assert not problems, problems
    finally:
        code = op.stop()
    assert code == 0, op.raw_log()[-4000:]
    # SIGTERM released the Lease
    lease = cluster.kubectl_json("get", "lease", OPERATOR, namespace=wk_ns)
    assert not lease["spec"].get("holderIdentity"), lease["spec"]

    # The same token: what it may do, and what it may not.
    def can_i(*args):
        r = cluster.kubectl("auth", "can-i", *args, token=token, check=False)
        return r.stdout.strip()
    for verb, res in [("list", "deployments.apps"), ("watch", "deployments.apps"),
                      ("create", "deployments.apps"), ("patch", "deployments.apps"),
                      ("delete", "deployments.apps"), ("watch", "pods"), ("create", "events"),
                      ("create", "leases.coordination.k8s.io")]:
        assert can_i(verb, res, "-n", wk_ns) == "yes", (verb, res)
    assert can_i("update", f"leases.coordination.k8s.io/{OPERATOR}", "-n", wk_ns) == "yes"
    assert can_i("get", f"configmaps/{RULES_CM}", "-n", sys_ns) == "yes"  # rules Events (RULES_CONFIGMAP)
    assert can_i("create", "events", "-n", sys_ns) == "yes"
    for args in [("get", "secrets", "-n", wk_ns), ("list", "secrets", "-n", wk_ns),
                 ("get", "secrets", "-n", sys_ns), ("update", "deployments.apps", "-n", wk_ns),
                 ("update", "leases.coordination.k8s.io/another-lease", "-n", wk_ns),
                 ("create", "pods", "-n", wk_ns), ("create", "pods/exec", "-n", wk_ns),
                 ("delete", "pods", "-n", wk_ns), ("get", "configmaps", "-n", sys_ns),
                 ("list", "deployments.apps", "-n", sys_ns), ("list", "deployments.apps", "-n", "default"),
                 ("create", "deployments.apps", "-n", "default"), ("list", "pods", "--all-namespaces"),
                 ("list", "namespaces"), ("create", "clusterroles.rbac.authorization.k8s.io"),
                 ("create", "rolebindings.rbac.authorization.k8s.io", "-n", wk_ns)]:
        assert can_i(*args) == "no", args
    # and the API server says 403 when it tries
    for args in [("get", "secrets", "-n", wk_ns), ("get", "secrets", "-n", sys_ns),
                 ("get", "deployments", "-n", "default"), ("get", "pods", "-n", sys_ns)]:
        r = cluster.kubectl(*args, token=token, check=False)
        assert r.returncode != 0 and "Forbidden" in r.stderr and "(Forbidden)" in r.stderr, (args, r.stderr)
    r = cluster.kubectl("get", "--raw", f"/api/v1/namespaces/{wk_ns}/secrets", token=token, check=False)
    assert r.returncode != 0 and "Forbidden" in r.stderr


OPERATOR_ROLE_GRANTS = """
GRANT CONNECT ON DATABASE {db} TO {role};
GRANT USAGE ON SCHEMA airbnb, sync_airbnb_operator TO {role};
GRANT SELECT ON airbnb.accounts, sync_airbnb_operator.schema_migrations, sync_airbnb_operator.credentials_generation TO {role};
GRANT INSERT ON sync_airbnb_operator.audit_log TO {role};
GRANT USAGE ON SEQUENCE sync_airbnb_operator.audit_log_id_seq TO {role};
GRANT SELECT, INSERT, UPDATE ON sync_airbnb_operator.rollout TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON sync_airbnb_operator.worker_status TO {role};
GRANT SELECT, INSERT, UPDATE ON sync_airbnb_operator.settled TO {role};
"""


@pytest.fixture
def operator_role(pg, migrated_db):
    """A login role with exactly OPERATOR_ROLE_GRANTS on the test database; its URL.
    Set up before operator_factory, so it is dropped after the operator stopped."""
    db = migrated_db.rsplit("/", 1)[1]
    role = "op_" + db[-12:]
    pg.psql(f"CREATE ROLE {role} LOGIN", url=pg.admin_url)
    pg.psql(OPERATOR_ROLE_GRANTS.format(db=db, role=role), url=migrated_db)
    yield re.sub(r"//[^@/]*@", f"//{role}@", migrated_db)
    pg.psql(f"DROP OWNED BY {role}", url=migrated_db, check=False)
    pg.psql(f"DROP ROLE IF EXISTS {role}", url=pg.admin_url, check=False)


def test_operator_runs_with_the_documented_least_privilege_role(pg, cluster, namespace, migrated_db,
                                                               operator_role, operator_factory):
    """docs/operations.md: the operator's Secret may use a role with only these grants
    (the migration Job keeps the owner's)."""
    doc = (REPO / "docs" / "operations.md").read_text()
    for line in OPERATOR_ROLE_GRANTS.strip().splitlines():
        assert line.format(db="DBNAME", role="sync_airbnb_operator_rw") in doc, line
    pg.psql("insert into airbnb.accounts(account_id, airbnb_cookie, x_client_version, user_agent, is_active)"
            " values ('3001', 'c', 'v1', 'ua', true), ('3002', 'c', 'v1', 'ua', true)", url=migrated_db)
    op = operator_factory(database_url=operator_role, env={"RESYNC_INTERVAL_SECONDS": "2"})  # saves the settled set
    op.wait_ready()

    def names():
        return sorted(d["metadata"]["name"] for d in
                      cluster.kubectl_json("get", "deployments", namespace=namespace)["items"])
    wait_for(lambda: names() == ["sync-airbnb-worker-3001", "sync-airbnb-worker-3002"], 20, names)
    pg.psql("update airbnb.accounts set is_active = false where account_id = '3002'", url=migrated_db)
    wait_for(lambda: names() == ["sync-airbnb-worker-3001"], 20, names)
    rows = pg.psql("select action from sync_airbnb_operator.audit_log order by id", url=migrated_db).stdout
    assert rows.split() == ["create", "create", "delete"]
    wait_for(lambda: pg.psql("select string_agg(account_id || ':' || coalesce(reason, 'ok'), ',' order by account_id)"
                             " from sync_airbnb_operator.worker_status", url=migrated_db).stdout.strip()
             == "3001:ok,3002:inactive", 10, "worker_status rows not written with the documented grants")
    wait_for(lambda: pg.psql("select length(digests) / 16 from sync_airbnb_operator.settled",
                             url=migrated_db).stdout.strip() not in ("", "0"), 30,
             "the settled set not saved with the documented grants")
    assert not [r for r in op.logs() if r.get("level") in ("warn", "error")]
    env = {"DATABASE_URL": operator_role, "KUBECONFIG": cluster.kubeconfig, "OPERATOR_NAMESPACE": namespace}
    assert run_cli("status", env=env).returncode == 0
    assert run_cli("plan", env=env).returncode == 0
    assert run_cli("migrate", "check", env=env).returncode == 0
    assert run_cli("rollout", "status", env=env).returncode == 0
    # and it cannot change what it only reads
    r = pg.psql("update airbnb.accounts set is_active = true", url=operator_role, check=False)
    assert r.returncode != 0 and "permission denied" in r.stderr


# ---- what the Dockerfile expects after `cmake --install` --------------------------------

def _build_dir() -> Path:
    d = Path(binary()).resolve().parent
    assert (d / "cmake_install.cmake").exists(), f"{d} is not a CMake build directory"
    return d


def _dockerfile_runtime() -> tuple[dict, str, list[str], str]:
    """(ENV of the runtime stage, the install prefix it copies, its apt packages, ENTRYPOINT)."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    stages = re.split(r"^FROM\s+", text, flags=re.M)
    runtime = stages[-1]
    assert runtime.startswith("debian:bookworm-slim"), runtime[:40]
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(re.findall(r"^ENV\s+(.*)$", runtime, re.M))))
    prefix = re.search(r"^ARG\s+PREFIX=(\S+)", text, re.M).group(1)
    apt = re.search(r"apt-get install[^&]*", runtime).group(0).split()
    packages = [w for w in apt if not w.startswith("-") and w not in ("apt-get", "install")]
    entry = json.loads(re.search(r"^ENTRYPOINT\s+(\[.*\])", runtime, re.M).group(1))[0]
    assert re.search(r"^USER\s+65532", runtime, re.M)
    return env, prefix, packages, entry


def test_cmake_install_has_what_the_image_runs(tmp_path, database_url):
    prefix = tmp_path / "prefix"
    subprocess.run(["cmake", "--install", str(_build_dir()), "--prefix", str(prefix)],
                   check=True, capture_output=True, text=True)
    exe = prefix / "bin" / "sync-airbnb-operator"
    data = prefix / "share" / "sync-airbnb-operator" / "lua"
    assert os.access(exe, os.X_OK)
    assert {p.name for p in (data / "rules").glob("*.lua")} == {p.name for p in RULES.glob("*.lua")}
    assert {p.name for p in (data / "migrations").glob("*.lua")} == {p.name for p in MIGRATIONS.glob("*.lua")}

    # The installed binary runs the installed rules and migrations. RULES_DIR and
    # MIGRATIONS_DIR are set explicitly, as the image does: the compiled-in default
    # prefers this checkout's lua/ and the configure-time prefix (not this one).
    env = dict(os.environ, RULES_DIR=str(data / "rules"), MIGRATIONS_DIR=str(data / "migrations"),
               DATABASE_URL=database_url, MIGRATE_CREATE_ACCOUNTS_TABLE="true")
    env.pop("KUBECONFIG", None)
    r = subprocess.run([str(exe), "check-rules"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and str(data / "rules") in r.stdout, r.stdout + r.stderr
    r = subprocess.run([str(exe), "migrate", "up"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(exe), "migrate", "check"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_paths_and_runtime_libraries(tmp_path):
    env, prefix, packages, entry = _dockerfile_runtime()
    stage = tmp_path / "stage"
    subprocess.run(["cmake", "--install", str(_build_dir()), "--prefix", prefix],
                   env=dict(os.environ, DESTDIR=str(stage)), check=True, capture_output=True, text=True)
    staged = lambda p: stage / p.lstrip("/")  # noqa: E731
    assert entry.startswith(prefix + "/") and os.access(staged(entry), os.X_OK), entry
    assert env["RULES_DIR"].startswith(prefix + "/") and (staged(env["RULES_DIR"]) / "rules.lua").is_file()
    assert (staged(env["MIGRATIONS_DIR"]) / "init.lua").is_file()
    # The staged binary runs its staged rules the way the image will.
    r = subprocess.run([str(staged(entry)), "check-rules"], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, RULES_DIR=str(staged(env["RULES_DIR"]))))
    assert r.returncode == 0, r.stderr

    # Every shared library the binary needs comes from a package the runtime stage installs.
    if not shutil.which("dpkg") or not shutil.which("readelf"):
        pytest.skip("no dpkg/readelf to map libraries to packages")
    needed = re.findall(r"\(NEEDED\).*\[(.+)\]", subprocess.run(
        ["readelf", "-d", str(staged(entry))], capture_output=True, text=True, check=True).stdout)
    ldconfig = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True).stdout
    missing = []
    for lib in needed:
        if re.match(r"lib(a|ub|t|l)san\.", lib):
            continue  # the sanitizer build's runtime; the image is built without SANITIZE
        m = re.search(rf"^\s*{re.escape(lib)} .*=> (\S+)$", ldconfig, re.M)
        assert m, f"{lib} not found by ldconfig"
        owner = subprocess.run(["dpkg", "-S", os.path.realpath(m.group(1))], capture_output=True, text=True)
        if owner.returncode != 0:
            owner = subprocess.run(["dpkg", "-S", m.group(1)], capture_output=True, text=True)
        pkg = owner.stdout.split(":")[0]
        if pkg != "libc6" and pkg not in packages:  # libc6 is in every Debian image
            missing.append((lib, pkg))
    assert not missing, f"runtime stage lacks packages for {missing}"
