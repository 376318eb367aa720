"""The reconcile loop end to end (issue 5): the real operator binary against the real
control plane (kwok nodes) and PostgreSQL, one fresh namespace and database per test.

Covers the seed's acceptance criteria and more: create / delete / soft delete / restore,
credential rollout, the worker's own cookie rotation (told apart by its application_name),
no update for last_sync_at alone,
pods Ready, unmanaged look-alikes left alone, hand-deleted and hand-edited workers
restored, odd account ids, 200 accounts in one transaction, NOTIFY latency, a no-op
resync, log + audit + Event per action, no credential anywhere, bad input (NULL/empty
credentials, missing table or column, wrong column type, a rule failing for one
account), the empty-set hold and the delete budget, restarts (adoption, edits made
while down, a new WORKER_IMAGE) and a lost database connection.

To know that the operator has *processed* a change that must have no visible effect,
the tests commit a sentinel change after it (a new account whose worker appears):
notifications arrive in commit order and a pass reads the database as it is, so once
the sentinel's worker exists the earlier change was planned too. Measured numbers
(latency, convergence time) are printed.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shutil
import ssl
import statistics
import subprocess
import time
import urllib.parse

import pytest

from operator_harness import ROOT, run_cli, wait_for
from rules_dir import NO_SOAK, rules_files, write_plain

MANAGED_BY = "app.kubernetes.io/managed-by"
FINGERPRINT = "sync-airbnb.io/credentials-fingerprint"
ACCOUNT_ANN = "sync-airbnb.io/account-id"
DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")
WRITE_VERBS = ("POST", "PATCH", "PUT", "DELETE")


# ---- helpers -------------------------------------------------------------------------

class Api:
    """A keep-alive HTTPS client for the API server (reads only), for polling fast
    enough to measure latency; kubectl takes ~100 ms per call."""

    def __init__(self, cluster):
        cfg = cluster.kubectl_json("config", "view", "--raw")
        cl = cfg["clusters"][0]["cluster"]
        u = urllib.parse.urlparse(cl["server"])
        self.host, self.port = u.hostname, u.port
        self.ctx = ssl.create_default_context(
            cadata=base64.b64decode(cl["certificate-authority-data"]).decode())
        self.token = cfg["users"][0]["user"]["token"]
        self.conn = None

    def get(self, path: str):
        for attempt in (0, 1):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=10)
                self.conn.request("GET", path, headers={"Authorization": f"Bearer {self.token}"})
                r = self.conn.getresponse()
                body = r.read()
                return r.status, json.loads(body) if body else None
            except (OSError, http.client.HTTPException):
                self.conn = None
                if attempt:
                    raise

    def deployments(self, ns: str) -> dict:
        status, doc = self.get(f"/apis/apps/v1/namespaces/{ns}/deployments")
        assert status == 200, doc
        return {d["metadata"]["name"]: d for d in doc["items"]}

    def deployment(self, ns: str, name: str):
        status, doc = self.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}")
        return doc if status == 200 else None


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory) -> str:
    """A snapshot of lua/rules: the operator hot-reloads its rules directory, so a
    test must not see someone's half-saved edit of the checkout."""
    d = tmp_path_factory.mktemp("rules") / "rules"
    shutil.copytree(ROOT / "lua" / "rules", d)
    return str(d)


@pytest.fixture(scope="module")
def api(cluster) -> Api:
    return Api(cluster)


@pytest.fixture
def start(operator_factory, rules_dir):
    """start(**env) -> a ready Operator on this test's namespace and database."""
    def go(database_url=None, **env):
        env = {k: str(v) for k, v in env.items()}
        env.setdefault("RULES_DIR", rules_dir)
        op = operator_factory(env=env, database_url=database_url)
        op.wait_ready()
        return op
    return go


@pytest.fixture
def other_db(pg, request):
    """A second empty database (for a custom ACCOUNTS_TABLE made before `migrate up`)."""
    made = []

    def make() -> str:
        name = f"t_other_{len(made)}_{int(time.time() * 1000) % 10**9}"
        made.append(name)
        return pg.create_database(name)
    yield make
    for name in made:
        pg.drop_database(name)


def q(v) -> str:
    """An SQL literal."""
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "true" if v else "false"
    return "'" + str(v).replace("'", "''") + "'"


def cookie(account_id: str, n: int = 1) -> str:
    """A distinctive fake credential, easy to grep for."""
    return f"SECRET-cookie-{account_id}-{n:04d}-zq"


def values_sql(accounts) -> str:
    rows = []
    for a in accounts:
        a = {"id": a} if isinstance(a, str) else a
        aid = a["id"]
        rows.append("(" + ", ".join(q(x) for x in (
            aid, a.get("cookie", cookie(aid)), a.get("xcv", f"SECRET-xcv-{aid}-zq"),
            a.get("ua", f"SECRET-ua-{aid}-zq"), a.get("active", True))) + ")")
    return ", ".join(rows)


def insert(pg, url, *accounts, table="airbnb.accounts"):
    pg.psql(f"insert into {table} (account_id, airbnb_cookie, x_client_version, user_agent, is_active)"
            f" values {values_sql(accounts)}", url=url)


def sql(pg, url, statement) -> str:
    return pg.psql(statement, url=url).stdout


def audit(pg, url) -> list[dict]:
    out = sql(pg, url, "select coalesce(json_agg(a order by id), '[]') from sync_airbnb_operator.audit_log a")
    return json.loads(out)


def audit_of(pg, url, account_id, action=None) -> list[dict]:
    return [r for r in audit(pg, url)
            if r["account_id"] == account_id and (action is None or r["action"] == action)]


def events(cluster, ns) -> list[dict]:
    return cluster.kubectl_json("get", "events", namespace=ns)["items"]


def name_of(account_id: str) -> str:
    """The worker name the shipped rules give an id that is a valid DNS label."""
    return f"sync-airbnb-worker-{account_id}"


def replicasets_of(cluster, ns, deployment) -> list[dict]:
    items = cluster.kubectl_json("get", "replicasets", namespace=ns)["items"]
    return [rs for rs in items
            if any(o.get("name") == deployment for o in rs["metadata"].get("ownerReferences", []))]


def ready_pods(cluster, ns, deployment) -> list[dict]:
    pods = cluster.kubectl_json("get", "pods", "-l", f"app.kubernetes.io/instance={deployment}",
                                namespace=ns)["items"]
    return [p for p in pods if p["metadata"].get("deletionTimestamp") is None and any(
        c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", []))]


def settled(cluster, api, ns, name, replicas=1):
    """Waits until the worker's rollout is complete, so that the Deployment's status
    (and resourceVersion) stops changing on its own."""
    def done():
        d = api.deployment(ns, name)
        st = d and d.get("status", {})
        conditions = {c["type"]: c for c in st.get("conditions", [])} if d else {}
        return d and st.get("observedGeneration") == d["metadata"]["generation"] and \
            st.get("readyReplicas", 0) == st.get("updatedReplicas", 0) == st.get("replicas", 0) == replicas and \
            conditions.get("Available", {}).get("status") == "True" and \
            conditions.get("Progressing", {}).get("reason") == "NewReplicaSetAvailable"
    wait_for(done, 40, lambda: f"{name} never settled: {(api.deployment(ns, name) or {}).get('status')}")


def sentinel(pg, url, api, ns, tag: str, timeout=15, table="airbnb.accounts"):
    """Commits a new active account and waits for its worker: every change committed
    before it has been through a reconcile pass by then."""
    insert(pg, url, tag, table=table)
    wait_for(lambda: api.deployment(ns, name_of(tag)), timeout, f"sentinel {tag} got no worker")


def api_requests(op) -> dict[str, float]:
    """sync_airbnb_operator_api_requests_total by verb (all codes summed)."""
    out: dict[str, float] = {}
    for k, v in op.metrics().items():
        m = re.match(r'sync_airbnb_operator_api_requests_total\{verb="([A-Z]+)",code="(-?\d+)"\}', k)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0) + v
    return out


def metric(op, name: str, labels: str = "") -> float:
    key = f"{name}{{{labels}}}" if labels else name
    return op.metrics().get(key, 0.0)


def full_passes(op) -> float:
    return metric(op, "sync_airbnb_operator_reconcile_passes_total", 'kind="full"')


def wait_full_passes(op, n: int, timeout: float = 15):
    """Waits until n more full passes (resyncs) have completed."""
    target = full_passes(op) + n
    wait_for(lambda: full_passes(op) >= target, timeout, f"{n} full passes")


def show(capsys, msg: str):
    with capsys.disabled():
        print(f"\n    [measured] {msg}")


def alive(op):
    assert op.proc.poll() is None, f"operator exited {op.proc.returncode}:\n{op.raw_log()[-4000:]}"
    status, _ = op.get("/healthz")
    assert status == 200


def action_logs(op, action: str, account_id: str | None = None) -> list[dict]:
    return [r for r in op.logs() if r.get("msg") == action
            and (account_id is None or r.get("account_id") == account_id)]


# ---- create, delete, soft delete, restore -------------------------------------------

def test_create_on_active_matches_the_seed_template_and_pods_become_ready(pg, cluster, api, namespace,
                                                                          migrated_db, start):
    op = start()
    insert(pg, migrated_db, "310316675", {"id": "off", "active": False})
    name = name_of("310316675")
    d = wait_for(lambda: api.deployment(namespace, name), 10, "no worker for the active account")

    meta, spec = d["metadata"], d["spec"]
    labels = meta["labels"]
    assert labels["app"] == "sync-airbnb-worker" and labels["account-id"] == "310316675"
    assert labels[MANAGED_BY] == "sync-airbnb-operator"
    assert labels["app.kubernetes.io/part-of"] == "sync-airbnb"
    assert labels["app.kubernetes.io/name"] == "sync-airbnb-worker"
    assert meta["annotations"][ACCOUNT_ANN] == "310316675"
    assert spec["replicas"] == 1
    assert spec["selector"]["matchLabels"] == {"app": "sync-airbnb-worker", "account-id": "310316675"}
    tmpl = spec["template"]
    assert {"app": "sync-airbnb-worker", "account-id": "310316675"}.items() <= tmpl["metadata"]["labels"].items()
    assert re.fullmatch(r"[0-9a-f]{64}", tmpl["metadata"]["annotations"][FINGERPRINT])
    (c,) = tmpl["spec"]["containers"]
    assert c["image"] == "sync-airbnb:0.1.0"
    assert c["command"][0] == "uvicorn", "the image's migrating entrypoint must be bypassed"
    env = {e["name"]: e for e in c["env"]}
    assert env["MODE"]["value"] == "worker" and env["ACCOUNT_ID"]["value"] == "310316675"
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "sync-airbnb-db", "key": "url"}
    assert c["resources"] == {"requests": {"memory": "512Mi", "cpu": "250m"},
                              "limits": {"memory": "1Gi", "cpu": "500m"}}
    # Probes on 8000 (issue 15: a startup probe gives the Python start up to 120 s).
    rp, lp, sp = c["readinessProbe"], c["livenessProbe"], c["startupProbe"]
    assert (rp["httpGet"]["path"], rp["httpGet"]["port"], rp["periodSeconds"], rp["timeoutSeconds"]) == \
        ("/health/ready", 8000, 10, 5)
    assert (lp["httpGet"]["path"], lp["httpGet"]["port"], lp["periodSeconds"], lp["timeoutSeconds"]) == \
        ("/health", 8000, 30, 5)
    assert (sp["httpGet"]["path"], sp["periodSeconds"] * sp["failureThreshold"]) == ("/health", 120)
    assert not (tmpl["spec"].get("securityContext") or {}).get("runAsNonRoot")
    # One worker per account at a time, the 300 s drain covered, no token, few ReplicaSets.
    assert spec["strategy"] == {"type": "Recreate"}
    assert tmpl["spec"]["terminationGracePeriodSeconds"] == 330
    assert tmpl["spec"]["automountServiceAccountToken"] is False
    assert spec["revisionHistoryLimit"] == 2
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert tmpl["spec"]["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    assert env["AIRBNB_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "sync-airbnb-api", "key": "api-key"}
    assert env["PGAPPNAME"]["value"] == "sync-airbnb-worker"

    # The inactive account gets nothing; the pods of the created worker turn Ready (kwok).
    assert set(api.deployments(namespace)) == {name}
    wait_for(lambda: ready_pods(cluster, namespace, name), 30, "worker pod never Ready")
    wait_for(lambda: (api.deployment(namespace, name)["status"].get("readyReplicas") == 1), 30,
             "Deployment never reported readyReplicas 1")
    (row,) = audit_of(pg, migrated_db, "310316675")
    assert (row["action"], row["deployment"]) == ("create", name)
    alive(op)


def test_delete_on_inactive_and_soft_delete_then_restore_recreates(pg, api, namespace, migrated_db, start):
    insert(pg, migrated_db, "keep", "2001", "2002")
    start()
    wait_for(lambda: set(api.deployments(namespace)) == {name_of(i) for i in ("keep", "2001", "2002")}, 15,
             lambda: sorted(api.deployments(namespace)))
    uid_2002 = api.deployment(namespace, name_of("2002"))["metadata"]["uid"]

    sql(pg, migrated_db, "update airbnb.accounts set is_active = false where account_id = '2001'")
    wait_for(lambda: api.deployment(namespace, name_of("2001")) is None, 10, "inactive account's worker kept")
    sql(pg, migrated_db, "update airbnb.accounts set deleted_at = now() where account_id = '2002'")
    wait_for(lambda: api.deployment(namespace, name_of("2002")) is None, 10, "soft-deleted account's worker kept")
    assert api.deployment(namespace, name_of("keep")) is not None

    deletes = {r["account_id"]: r["reason"] for r in audit(pg, migrated_db) if r["action"] == "delete"}
    assert deletes == {"2001": "account inactive", "2002": "account soft-deleted"}

    # Restore: deleted_at back to NULL (is_active still true) → a new worker.
    sql(pg, migrated_db, "update airbnb.accounts set deleted_at = NULL where account_id = '2002'")
    d = wait_for(lambda: api.deployment(namespace, name_of("2002")), 10, "restored account got no worker")
    assert d["metadata"]["uid"] != uid_2002
    sql(pg, migrated_db, "update airbnb.accounts set is_active = true where account_id = '2001'")
    wait_for(lambda: api.deployment(namespace, name_of("2001")), 10, "re-activated account got no worker")
    assert [r["action"] for r in audit_of(pg, migrated_db, "2002")] == ["create", "delete", "create"]

    # A hard DELETE of the row removes the worker too ("account not found").
    sql(pg, migrated_db, "delete from airbnb.accounts where account_id = '2001'")
    wait_for(lambda: api.deployment(namespace, name_of("2001")) is None, 10, "deleted row's worker kept")
    assert audit_of(pg, migrated_db, "2001", "delete")[-1]["reason"] == "account not found"


# ---- credentials ----------------------------------------------------------------------

def fingerprint_of(d) -> str:
    return d["spec"]["template"]["metadata"]["annotations"][FINGERPRINT]


def wait_rolled_out(cluster, api, ns, name, fp, n_rs):
    """Waits for n_rs ReplicaSets with one Ready pod running fingerprint fp."""
    def done():
        rss = replicasets_of(cluster, ns, name)
        new = [rs for rs in rss if rs["spec"]["template"]["metadata"]["annotations"].get(FINGERPRINT) == fp]
        old_empty = all(rs["spec"].get("replicas", 0) == 0 for rs in rss if rs not in new)
        return len(rss) == n_rs and len(new) == 1 and old_empty and \
            (new[0].get("status", {}).get("readyReplicas") or 0) == 1
    wait_for(done, 40, lambda: f"rollout to {fp[:12]} not complete: "
             f"{[(rs['metadata']['name'], rs['spec'].get('replicas')) for rs in replicasets_of(cluster, ns, name)]}")


@pytest.mark.parametrize("column", ["airbnb_cookie", "x_client_version", "user_agent"])
def test_admin_credential_change_rolls_the_worker(pg, cluster, api, namespace, migrated_db, start, column):
    insert(pg, migrated_db, "keep", "3001")
    start()
    name = name_of("3001")
    d0 = wait_for(lambda: api.deployment(namespace, name), 10, "no worker")
    fp0 = fingerprint_of(d0)
    wait_rolled_out(cluster, api, namespace, name, fp0, 1)

    # An admin change: the credential alone, last_sync_at untouched (updated_at moves).
    sql(pg, migrated_db, f"update airbnb.accounts set {column} = {q('SECRET-new-' + column + '-zq')},"
                         " updated_at = now() where account_id = '3001'")
    d1 = wait_for(lambda: (d := api.deployment(namespace, name)) and fingerprint_of(d) != fp0 and d, 10,
                  "fingerprint did not change")
    assert d1["metadata"]["generation"] == d0["metadata"]["generation"] + 1
    wait_rolled_out(cluster, api, namespace, name, fingerprint_of(d1), 2)
    (upd,) = audit_of(pg, migrated_db, "3001", "update")
    assert "rolls the worker" in upd["reason"]
    # keep was not touched
    assert not audit_of(pg, migrated_db, "keep", "update")


def test_only_last_sync_at_and_updated_at_change_nothing(pg, cluster, api, namespace, migrated_db, start):
    insert(pg, migrated_db, "keep", "3101")
    op = start(RESYNC_INTERVAL_SECONDS=1)
    name = name_of("3101")
    wait_for(lambda: api.deployment(namespace, name), 10, "no worker")
    settled(cluster, api, namespace, name)
    before = api.deployment(namespace, name)

    for _ in range(3):
        sql(pg, migrated_db, "update airbnb.accounts set last_sync_at = now(), updated_at = now()"
                             " where account_id = '3101'")
    sql(pg, migrated_db, "update airbnb.accounts set updated_at = now() where account_id = '3101'")
    sentinel(pg, migrated_db, api, namespace, "s1")
    wait_full_passes(op, 2)

    after = api.deployment(namespace, name)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert [r["action"] for r in audit_of(pg, migrated_db, "3101")] == ["create"]
    assert len(replicasets_of(cluster, namespace, name)) == 1


def test_workers_own_cookie_rotation_does_not_roll_but_an_admin_change_then_does(
        pg, cluster, api, namespace, migrated_db, start):
    """fingerprint.lua / docs/rules.md: the worker's sessions carry application_name
    sync-airbnb-worker (PGAPPNAME); its cookie and last_sync_at commits are not counted
    by the credentials trigger and change nothing at all. The same cookie change made
    by any other session (here psql) is an admin's and rolls. (test_app_credentials.py
    drives the same with the app's own code.)"""
    insert(pg, migrated_db, "keep", "3201")
    op = start(RESYNC_INTERVAL_SECONDS=1)
    name = name_of("3201")
    d0 = wait_for(lambda: api.deployment(namespace, name), 10, "no worker")
    fp0 = fingerprint_of(d0)
    wait_rolled_out(cluster, api, namespace, name, fp0, 1)
    (pod,) = ready_pods(cluster, namespace, name)
    settled(cluster, api, namespace, name)
    before = api.deployment(namespace, name)

    worker = dict(os.environ, PGAPPNAME="sync-airbnb-worker")
    for n in (2, 3):  # two daily syncs: the rotated cookie, then last_sync_at, two commits
        for statement in (f"update airbnb.accounts set airbnb_cookie = {q(cookie('3201', n))},"
                          " updated_at = now() where account_id = '3201'",
                          "update airbnb.accounts set last_sync_at = now(), updated_at = now()"
                          " where account_id = '3201'"):
            subprocess.run([pg.psql_path, "-X", "-v", "ON_ERROR_STOP=1", migrated_db, "-c", statement],
                           env=worker, check=True, capture_output=True)
    sentinel(pg, migrated_db, api, namespace, "s1")
    wait_full_passes(op, 2)

    d1 = api.deployment(namespace, name)
    assert fingerprint_of(d1) == fp0, "the worker's own rotation rolled it"
    assert d1["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert len(replicasets_of(cluster, namespace, name)) == 1
    assert [p["metadata"]["uid"] for p in ready_pods(cluster, namespace, name)] == [pod["metadata"]["uid"]]
    assert not audit_of(pg, migrated_db, "3201", "update")

    # Now an admin sets a new cookie: that rolls.
    sql(pg, migrated_db, f"update airbnb.accounts set airbnb_cookie = {q(cookie('3201', 9))},"
                         " updated_at = now() where account_id = '3201'")
    d2 = wait_for(lambda: (d := api.deployment(namespace, name)) and fingerprint_of(d) != fp0 and d, 10,
                  "admin cookie change did not roll")
    wait_rolled_out(cluster, api, namespace, name, fingerprint_of(d2), 2)
    assert "rolls the worker" in audit_of(pg, migrated_db, "3201", "update")[-1]["reason"]


# ---- what the operator must not touch, and what it restores ---------------------------

UNMANAGED = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: sync-airbnb-worker-4001
  labels: {app: sync-airbnb-worker, account-id: "4001"}
spec:
  replicas: 0
  selector:
    matchLabels: {app: sync-airbnb-worker, account-id: "4001"}
  template:
    metadata:
      labels: {app: sync-airbnb-worker, account-id: "4001"}
    spec:
      containers:
      - name: hand-made
        image: example.invalid/hand-made:1
"""


def test_unmanaged_lookalike_is_untouched_and_the_account_gets_an_error(pg, cluster, api, namespace,
                                                                        migrated_db, start, capsys):
    cluster.kubectl("apply", "-f", "-", input=UNMANAGED, namespace=namespace)
    settled(cluster, api, namespace, "sync-airbnb-worker-4001", replicas=0)
    before = api.deployment(namespace, "sync-airbnb-worker-4001")
    insert(pg, migrated_db, "keep", "4001")
    op = start(RESYNC_INTERVAL_SECONDS=1)

    wait_for(lambda: api.deployment(namespace, name_of("keep")), 10, "keep got no worker")
    err = wait_for(lambda: audit_of(pg, migrated_db, "4001", "error"), 10, "no error audited for 4001")
    assert "not managed" in err[0]["reason"] and err[0]["deployment"] == "sync-airbnb-worker-4001"
    assert any("not managed" in r.get("reason", "") for r in action_logs(op, "error", "4001"))
    wait_for(lambda: any(e["reason"] == "ReconcileFailed" and e["involvedObject"]["name"] == "sync-airbnb-worker-4001"
                         for e in events(cluster, namespace)), 10, "no Warning event for 4001")

    # Resyncs and retries later: still untouched, still one error row (not one per pass).
    wait_full_passes(op, 3)
    sql(pg, migrated_db, "update airbnb.accounts set is_active = false where account_id = '4001'")
    sentinel(pg, migrated_db, api, namespace, "s1")
    after = api.deployment(namespace, "sync-airbnb-worker-4001")
    assert after is not None, "the operator deleted a Deployment it does not manage"
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"], \
        (before["metadata"].get("managedFields"), before["status"], after["metadata"].get("managedFields"), after["status"])
    assert MANAGED_BY not in after["metadata"].get("labels", {})
    assert not any(m.get("manager") == "sync-airbnb-operator" for m in after["metadata"].get("managedFields", []))
    assert len(audit_of(pg, migrated_db, "4001", "error")) == 1
    assert not [r for r in audit_of(pg, migrated_db, "4001") if r["action"] in ("create", "update", "delete")]
    alive(op)
    assert op.readyz()["ready"]

    # Once the look-alike is gone (its owner removed it), the account gets a real worker.
    cluster.kubectl("delete", "deployment", "sync-airbnb-worker-4001", namespace=namespace)
    t0 = time.monotonic()
    sql(pg, migrated_db, "update airbnb.accounts set is_active = true where account_id = '4001'")
    # A NOTIFY resets the account's write backoff: no waiting out the failures before.
    d = wait_for(lambda: api.deployment(namespace, "sync-airbnb-worker-4001"), 5, "no worker after the conflict ended")
    assert d["metadata"]["labels"][MANAGED_BY] == "sync-airbnb-operator"
    show(capsys, f"worker created {time.monotonic() - t0:.2f} s after a name conflict ended")


def test_hand_deleted_worker_comes_back(pg, api, cluster, namespace, migrated_db, start):
    insert(pg, migrated_db, "keep", "4101")
    start()
    name = name_of("4101")
    uid = wait_for(lambda: api.deployment(namespace, name), 10, "no worker")["metadata"]["uid"]
    cluster.kubectl("delete", "deployment", name, "--wait=false", namespace=namespace)
    d = wait_for(lambda: (d := api.deployment(namespace, name)) and d["metadata"]["uid"] != uid and d, 10,
                 "hand-deleted worker not re-created")
    assert d["metadata"]["labels"][MANAGED_BY] == "sync-airbnb-operator"
    assert [r["action"] for r in audit_of(pg, migrated_db, "4101")] == ["create", "create"]


def test_hand_edited_worker_is_restored(pg, api, cluster, namespace, migrated_db, start):
    insert(pg, migrated_db, "keep", "4201")
    start()
    name = name_of("4201")
    wait_for(lambda: api.deployment(namespace, name), 10, "no worker")

    cluster.kubectl("scale", "deployment", name, "--replicas=3", namespace=namespace)
    wait_for(lambda: (d := api.deployment(namespace, name))["spec"]["replicas"] == 1
             and d["metadata"]["generation"] > 2, 10, "scale to 3 not undone")

    cluster.kubectl("set", "image", f"deployment/{name}", "worker=example.invalid/evil:1", namespace=namespace)
    wait_for(lambda: api.deployment(namespace, name)["spec"]["template"]["spec"]["containers"][0]["image"]
             == "sync-airbnb:0.1.0", 10, "image change not undone")

    # The applied-hash annotation edited by hand (metadata only, no new generation).
    cluster.kubectl("annotate", "--overwrite", "deployment", name, "sync-airbnb.io/applied-hash=tampered",
                    namespace=namespace)
    wait_for(lambda: api.deployment(namespace, name)["metadata"]["annotations"]["sync-airbnb.io/applied-hash"]
             != "tampered", 10, "tampered applied-hash not restored")

    updates = audit_of(pg, migrated_db, "4201", "update")
    assert len(updates) >= 3 and any("drifted" in u["reason"] for u in updates), updates
    assert not audit_of(pg, migrated_db, "keep", "update")


def operator_fields(d) -> list:
    """What the operator's own writes left in managedFields: changes with any write of it."""
    return [(m.get("operation"), m.get("subresource"), m.get("time"), json.dumps(m.get("fieldsV1"), sort_keys=True))
            for m in d["metadata"].get("managedFields", []) if m.get("manager") == "sync-airbnb-operator"]


def test_hand_edits_made_while_the_operator_was_down_are_restored_on_start(pg, api, cluster, namespace,
                                                                          migrated_db, start):
    insert(pg, migrated_db, "keep", "4301", "4302")
    op = start()
    for aid in ("keep", "4301", "4302"):
        wait_for(lambda: api.deployment(namespace, name_of(aid)), 10, f"no worker for {aid}")
        settled(cluster, api, namespace, name_of(aid))
    untouched = api.deployment(namespace, name_of("keep"))
    assert op.stop() == 0

    cluster.kubectl("scale", "deployment", name_of("4301"), "--replicas=3", namespace=namespace)
    cluster.kubectl("set", "image", f"deployment/{name_of('4302')}", "worker=example.invalid/evil:1",
                    namespace=namespace)
    op = start(RESYNC_INTERVAL_SECONDS=1)
    wait_for(lambda: api.deployment(namespace, name_of("4301"))["spec"]["replicas"] == 1, 10,
             "scale made while down not undone")
    wait_for(lambda: api.deployment(namespace, name_of("4302"))["spec"]["template"]["spec"]["containers"][0]["image"]
             == "sync-airbnb:0.1.0", 10, "image change made while down not undone")
    wait_full_passes(op, 2)
    # The worker nobody edited was not written to by the operator (its spec
    # generation and the operator's managed fields are as they were; the
    # resourceVersion is not compared: kube-controller-manager may still write
    # its status); each edited one was written once.
    now = api.deployment(namespace, name_of("keep"))
    assert now["metadata"]["generation"] == untouched["metadata"]["generation"]
    assert operator_fields(now) == operator_fields(untouched), (operator_fields(untouched), operator_fields(now))
    assert not [r for r in audit_of(pg, migrated_db, "keep") if r["action"] != "create"]
    assert [r["account_id"] for r in audit(pg, migrated_db) if r["action"] == "update"] in (
        ["4301", "4302"], ["4302", "4301"])


# ---- names ------------------------------------------------------------------------------

# Long ids: 2000 bytes (longer than any fixed buffer for an id should be) and 9000
# (too long for a NOTIFY payload: the trigger sends '*', a full resync).
ODD_IDS = ["ABC", "abc!", "abc", "7" * 70, "ünïcødé-账户", "a/b", "", "o'brien \"q\\uote\"", "-x-",
           "L" * 2000, "n" * 9000]


def test_odd_account_ids_get_valid_distinct_names(pg, cluster, api, namespace, migrated_db, start):
    insert(pg, migrated_db, "keep")
    # deactivating 11 of 12 workers at once is what DELETE_HOLD_PERCENT holds for a person (issue 16)
    op = start(DELETE_BUDGET=100, DELETE_HOLD_PERCENT=0)
    insert(pg, migrated_db, *ODD_IDS)  # through NOTIFY: a partial pass of these ids

    def by_id():
        return {d["metadata"]["annotations"].get(ACCOUNT_ANN): d for d in api.deployments(namespace).values()}
    wait_for(lambda: set(ODD_IDS) <= set(by_id()), 15,
             lambda: f"missing: {set(ODD_IDS) - set(by_id())}; audit {audit(pg, migrated_db)}")
    got = by_id()
    names, labels = set(), set()
    for aid in ODD_IDS:
        d = got[aid]
        name = d["metadata"]["name"]
        assert DNS_LABEL.match(name) and len(name) <= 63, name
        label = d["metadata"]["labels"]["account-id"]
        assert LABEL_VALUE.match(label), label
        assert d["spec"]["selector"]["matchLabels"]["account-id"] == label
        env = {e["name"]: e.get("value", "") for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["ACCOUNT_ID"] == aid  # the API server omits an empty value
        names.add(name)
        labels.add(label)
    assert len(names) == len(ODD_IDS) and len(labels) == len(ODD_IDS), "two ids share a name or label"
    assert got["ABC"]["metadata"]["name"] == "sync-airbnb-worker-abc-b5d4045c3f"  # docs/rules.md
    assert got[""]["metadata"]["name"] == "sync-airbnb-worker-x-e3b0c44298"
    assert got["a/b"]["metadata"]["name"] == "sync-airbnb-worker-a-b-c14cddc033"
    assert got["abc"]["metadata"]["name"] == "sync-airbnb-worker-abc"
    assert not [r for r in audit(pg, migrated_db) if r["action"] == "error"]
    # (The audit row is written when the API's answer is in: a moment after the object exists.)
    wait_for(lambda: sorted(r["account_id"] for r in audit(pg, migrated_db) if r["action"] == "create")
             == sorted(ODD_IDS + ["keep"]), 10,
             lambda: f"audit rows must carry the whole id: {audit(pg, migrated_db)}\n{op.raw_log()[-6000:]}")

    # An admin credential change reaches each of them (an update, not an error).
    sql(pg, migrated_db, "update airbnb.accounts set user_agent = 'SECRET-ua-2-zq' where account_id <> 'keep'")
    wait_for(lambda: sorted(r["account_id"] for r in audit(pg, migrated_db) if r["action"] == "update")
             == sorted(ODD_IDS), 15, lambda: [r for r in audit(pg, migrated_db) if r["action"] != "create"])
    assert not [r for r in audit(pg, migrated_db) if r["action"] == "error"]

    # Deactivate them all (keep stays): each one's worker goes, through the same ids.
    sql(pg, migrated_db, "update airbnb.accounts set is_active = false where account_id <> 'keep'")
    wait_for(lambda: set(api.deployments(namespace)) == {name_of("keep")}, 15,
             lambda: sorted(api.deployments(namespace)))
    wait_for(lambda: sorted(r["account_id"] for r in audit(pg, migrated_db) if r["action"] == "delete")
             == sorted(ODD_IDS), 10, lambda: f"{audit(pg, migrated_db)}\n{op.raw_log()[-6000:]}")


# ---- scale and speed ---------------------------------------------------------------------

def test_200_accounts_in_one_transaction_all_get_workers(pg, cluster, api, namespace, migrated_db, start, capsys):
    insert(pg, migrated_db, "keep")
    op = start(RESYNC_INTERVAL_SECONDS=2, RETRY_PERIOD_SECONDS=120, LEASE_DURATION_SECONDS=300,
               RENEW_DEADLINE_SECONDS=200)
    wait_for(lambda: api.deployment(namespace, name_of("keep")), 10, "no keep worker")
    t0 = time.monotonic()
    sql(pg, migrated_db,
        "insert into airbnb.accounts (account_id, airbnb_cookie, x_client_version, user_agent, is_active)"
        " select 'bulk-' || i, 'SECRET-cookie-bulk-' || i, 'v1', 'ua', true from generate_series(1, 200) i")
    want = {name_of(f"bulk-{i}") for i in range(1, 201)}
    wait_for(lambda: want <= set(api.deployments(namespace)), 90,
             lambda: f"{len(want - set(api.deployments(namespace)))} of 200 still missing")
    elapsed = time.monotonic() - t0
    show(capsys, f"200 accounts in one transaction: all 200 worker Deployments after {elapsed:.2f} s")
    # (Their pods do not all fit: the one kwok node has 32 CPUs, a worker requests 250m.)
    wait_for(lambda: len([r for r in audit(pg, migrated_db) if r["action"] == "create"]) == 201, 10,
             "create rows missing")
    creates = [r for r in audit(pg, migrated_db) if r["action"] == "create" and r["account_id"].startswith("bulk-")]
    assert len(creates) == 200 and len({r["account_id"] for r in creates}) == 200
    assert not [r for r in audit(pg, migrated_db) if r["action"] == "error"]

    # Converged: resyncs over 201 accounts send nothing at all.
    wait_for(lambda: op.readyz()["checks"]["inflight"] == 0 and api_requests(op).get("POST", 0) >= 1 + 2 * 201,
             30, lambda: f"not settled: {api_requests(op)}")
    wait_full_passes(op, 1)
    before = api_requests(op)
    wait_full_passes(op, 2)
    assert api_requests(op) == before, f"requests during idle resyncs of 201 accounts: {before} -> {api_requests(op)}"
    alive(op)
    # Give the node back to the tests that follow: stop, and remove the workers now.
    assert op.stop() == 0
    t0 = time.monotonic()
    cluster.kubectl("delete", "deployments", "--all", "--wait=false", namespace=namespace)
    wait_for(lambda: not cluster.kubectl_json("get", "pods", namespace=namespace)["items"], 60, "pods not gone",
             interval=0.5)
    show(capsys, f"cleanup of 201 workers' pods took {time.monotonic() - t0:.2f} s")


def test_committed_change_reaches_the_api_server_fast(pg, api, namespace, migrated_db, start, capsys):
    """Not the poll: the resync is 10 minutes away; NOTIFY drives it."""
    insert(pg, migrated_db, "keep")
    start(RESYNC_INTERVAL_SECONDS=600)
    wait_for(lambda: api.deployment(namespace, name_of("keep")), 10, "no keep worker")
    created, deleted = [], []
    for i in range(5):
        aid = f"lat-{i}"
        t0 = time.monotonic()  # before psql starts: the latency is an upper bound
        insert(pg, migrated_db, aid)
        wait_for(lambda: api.deployment(namespace, name_of(aid)), 3, f"{aid}: no worker within 3 s of COMMIT",
                 interval=0.005)
        created.append(time.monotonic() - t0)
        t0 = time.monotonic()
        sql(pg, migrated_db, f"update airbnb.accounts set is_active = false where account_id = {q(aid)}")
        wait_for(lambda: api.deployment(namespace, name_of(aid)) is None, 3,
                 f"{aid}: worker not deleted within 3 s of COMMIT", interval=0.005)
        deleted.append(time.monotonic() - t0)
    show(capsys, "COMMIT → Deployment in the API server (incl. psql start-up): create median "
         f"{statistics.median(created) * 1000:.0f} ms, max {max(created) * 1000:.0f} ms; delete median "
         f"{statistics.median(deleted) * 1000:.0f} ms, max {max(deleted) * 1000:.0f} ms")
    assert max(created) < 3 and max(deleted) < 3


def test_resync_with_nothing_to_do_sends_no_request(pg, api, namespace, migrated_db, start, capsys):
    insert(pg, migrated_db, "keep", "5001", "5002")
    # Lease renewals are PUTs too: renew rarely so that they cannot hide in the window.
    op = start(RESYNC_INTERVAL_SECONDS=1, RETRY_PERIOD_SECONDS=120, LEASE_DURATION_SECONDS=300,
               RENEW_DEADLINE_SECONDS=200)
    wait_for(lambda: len(api.deployments(namespace)) == 3, 10, "workers not created")
    # Settled: every create answered and its Event posted.
    wait_for(lambda: op.readyz()["checks"]["inflight"] == 0 and api_requests(op).get("POST", 0) >= 1 + 3 + 3,
             10, lambda: f"not settled: {api_requests(op)}")
    wait_full_passes(op, 1)
    before = api_requests(op)
    wait_full_passes(op, 4)
    after = api_requests(op)
    show(capsys, f"API requests over 4 idle resyncs: before {before}, after {after}")
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)}
    assert all(delta.get(v, 0) == 0 for v in WRITE_VERBS), f"writes during idle resyncs: {delta}"
    assert delta.get("GET", 0) == 0, f"GETs during idle resyncs: {delta}"
    assert [r["action"] for r in audit(pg, migrated_db)] == ["create"] * 3


# ---- the trail: log + audit + Event, and no credential anywhere ----------------------------

def test_every_action_is_logged_audited_and_evented_without_credentials(pg, cluster, api, namespace,
                                                                        migrated_db, start):
    insert(pg, migrated_db, "keep", "6001", "6002",
           {"id": "6003", "cookie": ""})  # an error: empty credential
    op = start()
    wait_for(lambda: len(api.deployments(namespace)) == 3, 10, lambda: sorted(api.deployments(namespace)))
    sql(pg, migrated_db, f"update airbnb.accounts set user_agent = {q('SECRET-ua-6001-new-zq')} "
                         "where account_id = '6001'")
    sql(pg, migrated_db, "update airbnb.accounts set is_active = false where account_id = '6002'")
    wait_for(lambda: {r["action"] for r in audit(pg, migrated_db)} >= {"create", "update", "delete", "error"},
             10, lambda: audit(pg, migrated_db))
    wait_for(lambda: api.deployment(namespace, name_of("6002")) is None, 10, "6002 not deleted")

    rows = [r for r in audit(pg, migrated_db) if r["action"] in ("create", "update", "delete", "error")]
    reasons = {"create": "WorkerCreated", "update": "WorkerUpdated", "delete": "WorkerDeleted",
               "error": "ReconcileFailed"}

    def has_event(r):
        return any(e["reason"] == reasons[r["action"]] and e["involvedObject"]["name"] == r["deployment"]
                   and r["account_id"] in e["message"] for e in events(cluster, namespace))
    for r in rows:
        assert r["deployment"] and r["reason"] and r["actor"], r
        assert [ln for ln in action_logs(op, r["action"], r["account_id"]) if ln.get("deployment") == r["deployment"]
                and ln.get("reason") == r["reason"]], f"no log line for {r}"
        wait_for(lambda: has_event(r), 10, f"no Event for {r}")
    assert len([r for r in rows if r["action"] != "error"]) == 5  # 3 creates, 1 update, 1 delete
    assert "credentials changed" in audit_of(pg, migrated_db, "6001", "update")[0]["reason"]
    assert "airbnb_cookie is empty" in audit_of(pg, migrated_db, "6003", "error")[0]["reason"]

    # No credential value anywhere: every Kubernetes object in the namespace, every
    # Event, every log line, every audit row, the metrics and /readyz.
    secrets = [v for v in sql(pg, migrated_db, "select airbnb_cookie || E'\\n' || x_client_version || E'\\n' ||"
                                               " user_agent from airbnb.accounts").split() if v]
    secrets += ["SECRET-ua-6001-zq"]  # the user agent before the admin changed it
    assert len(secrets) >= 10
    dump = "\n".join([
        cluster.kubectl("get", "deployments,replicasets,pods,events", "-o", "json", namespace=namespace).stdout,
        op.raw_log(),
        json.dumps(audit(pg, migrated_db)),
        op.get("/metrics")[1],
        op.get("/readyz")[1],
    ])
    assert "SECRET" not in dump, [ln for ln in dump.splitlines() if "SECRET" in ln][:5]


# ---- bad input ------------------------------------------------------------------------------

NULLABLE_TABLE = """
create schema ops;
create table ops.accounts (
    account_id varchar primary key, customer_id uuid, airbnb_cookie text, x_client_version varchar,
    user_agent text, is_active boolean not null, last_sync_at timestamptz,
    created_at timestamptz not null default now(), updated_at timestamptz not null default now(),
    deleted_at timestamptz)
"""


def test_null_or_empty_credentials_are_an_error_for_that_account_only(pg, api, namespace, other_db, start):
    url = other_db()
    pg.psql(NULLABLE_TABLE, url=url)
    run_cli("migrate", "up", env={"DATABASE_URL": url, "ACCOUNTS_TABLE": "ops.accounts"}, check=True)
    insert(pg, url, "keep", "7002", {"id": "7001", "cookie": None}, {"id": "7003", "ua": ""},
           {"id": "7004", "xcv": None}, table="ops.accounts")
    pg.psql("alter table ops.accounts alter column is_active drop not null", url=url)
    insert(pg, url, {"id": "7005", "active": None}, table="ops.accounts")
    op = start(database_url=url, ACCOUNTS_TABLE="ops.accounts", RESYNC_INTERVAL_SECONDS=1)

    wait_for(lambda: set(api.deployments(namespace)) == {name_of("keep"), name_of("7002")}, 10,
             lambda: sorted(api.deployments(namespace)))
    expect = {"7001": "airbnb_cookie is NULL", "7003": "user_agent is empty", "7004": "x_client_version is NULL",
              "7005": "is_active must be a boolean"}
    for aid, why in expect.items():
        rows = wait_for(lambda: audit_of(pg, url, aid, "error"), 10, f"no error for {aid}")
        assert why in rows[0]["reason"], rows
        assert [ln for ln in action_logs(op, "error", aid) if why in ln["reason"]]
    wait_full_passes(op, 2)
    for aid in expect:
        assert len(audit_of(pg, url, aid, "error")) == 1, "an error repeated every pass"

    # Fixed: the account gets its worker. Broken again: the worker is kept, not deleted.
    sql(pg, url, f"update ops.accounts set airbnb_cookie = {q(cookie('7001'))} where account_id = '7001'")
    wait_for(lambda: api.deployment(namespace, name_of("7001")), 10, "fixed account got no worker")
    sql(pg, url, "update ops.accounts set airbnb_cookie = NULL where account_id = '7002'")
    wait_for(lambda: audit_of(pg, url, "7002", "error"), 10, "no error for 7002")
    sentinel(pg, url, api, namespace, "s1", table="ops.accounts")
    wait_full_passes(op, 2)
    assert api.deployment(namespace, name_of("7002")) is not None, "a bad account's worker was deleted"
    assert not audit_of(pg, url, "7002", "delete")
    alive(op)


def test_missing_accounts_table_is_a_clear_error_and_deletes_nothing(pg, api, namespace, migrated_db, start):
    insert(pg, migrated_db, "keep", "8001")
    op = start(RESYNC_INTERVAL_SECONDS=1)
    wait_for(lambda: len(api.deployments(namespace)) == 2, 10, "workers not created")
    sql(pg, migrated_db, "alter table airbnb.accounts rename to accounts_gone")

    r = wait_for(lambda: (r := op.readyz())["checks"]["last_reconcile"]["error"] and r, 10,
                 lambda: op.readyz())
    # /readyz gives a short code (issue 16: no raw error text there); the text is logged and audited
    assert r["checks"]["last_reconcile"]["error"] == "accounts_unreadable", r
    assert [ln for ln in op.logs() if ln.get("level") == "error" and "airbnb.accounts" in json.dumps(ln)
            and "does not exist" in json.dumps(ln)]
    assert [row for row in audit(pg, migrated_db) if row["action"] == "error" and "does not exist" in row["reason"]]
    wait_full_passes(op, 3)
    assert len(api.deployments(namespace)) == 2, "workers deleted while the table was missing"
    assert len([row for row in audit(pg, migrated_db) if row["action"] == "error"]) == 1, "error repeated per pass"
    alive(op)

    # Back: reconciling resumes (the resync finds it; the trigger came back with it).
    sql(pg, migrated_db, "alter table airbnb.accounts_gone rename to accounts")
    wait_for(lambda: op.readyz()["checks"]["last_reconcile"]["error"] is None, 10, lambda: op.readyz())
    sentinel(pg, migrated_db, api, namespace, "s1")
    assert not [row for row in audit(pg, migrated_db) if row["action"] == "delete"]


def test_missing_column_is_a_clear_error_and_deletes_nothing(pg, api, namespace, migrated_db, start):
    insert(pg, migrated_db, "keep", "8101")
    op = start(RESYNC_INTERVAL_SECONDS=1)
    wait_for(lambda: len(api.deployments(namespace)) == 2, 10, "workers not created")
    sql(pg, migrated_db, "alter table airbnb.accounts drop column deleted_at")
    err = wait_for(lambda: op.readyz()["checks"]["last_reconcile"]["error"], 10, lambda: op.readyz())
    assert err == "accounts_unreadable", err  # a short code (issue 16); the text is in the audit row below
    assert [row for row in audit(pg, migrated_db) if row["action"] == "error" and "deleted_at" in row["reason"]]
    sql(pg, migrated_db, "update airbnb.accounts set is_active = false where account_id = '8101'")
    wait_full_passes(op, 3)
    assert len(api.deployments(namespace)) == 2
    assert not [row for row in audit(pg, migrated_db) if row["action"] == "delete"]
    alive(op)


TEXT_ACTIVE_TABLE = """
create schema ops;
create table ops.accounts (
    account_id varchar primary key, customer_id uuid, airbnb_cookie text not null,
    x_client_version varchar not null, user_agent text not null, is_active text not null,
    last_sync_at timestamptz, created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(), deleted_at timestamptz)
"""


def test_wrong_column_type_is_a_clear_error_and_fixing_it_resumes(pg, api, namespace, other_db, start):
    url = other_db()
    pg.psql(TEXT_ACTIVE_TABLE, url=url)
    run_cli("migrate", "up", env={"DATABASE_URL": url, "ACCOUNTS_TABLE": "ops.accounts"}, check=True)
    insert(pg, url, "keep", "9001", table="ops.accounts")
    op = start(database_url=url, ACCOUNTS_TABLE="ops.accounts", RESYNC_INTERVAL_SECONDS=1)

    for aid in ("keep", "9001"):
        rows = wait_for(lambda: audit_of(pg, url, aid, "error"), 10, f"no error for {aid}")
        assert "is_active must be a boolean" in rows[0]["reason"], rows
        assert [ln for ln in action_logs(op, "error", aid) if "is_active" in ln["reason"]]
    insert(pg, url, "9002", table="ops.accounts")  # a partial pass too
    wait_for(lambda: audit_of(pg, url, "9002", "error"), 10, "no error for 9002")
    wait_full_passes(op, 2)
    for aid in ("keep", "9001", "9002"):  # once each, full and partial passes alike
        assert len(audit_of(pg, url, aid, "error")) == 1, audit_of(pg, url, aid)
    assert api.deployments(namespace) == {}
    alive(op)
    assert op.readyz()["ready"]

    sql(pg, url, "alter table ops.accounts alter column is_active type boolean using is_active::boolean")
    wait_for(lambda: len(api.deployments(namespace)) == 3, 10, lambda: sorted(api.deployments(namespace)))


def test_column_type_changed_under_running_workers_deletes_nothing(pg, api, namespace, migrated_db, start):
    insert(pg, migrated_db, "keep", "9101")
    op = start(RESYNC_INTERVAL_SECONDS=1)
    wait_for(lambda: len(api.deployments(namespace)) == 2, 10, "workers not created")
    sql(pg, migrated_db, "alter table airbnb.accounts alter column is_active type text")
    sql(pg, migrated_db, "update airbnb.accounts set is_active = 'false' where account_id = '9101'")
    wait_for(lambda: audit_of(pg, migrated_db, "9101", "error"), 10, "no error for 9101")
    wait_full_passes(op, 3)
    assert len(api.deployments(namespace)) == 2, "workers deleted on a column of the wrong type"
    assert not [r for r in audit(pg, migrated_db) if r["action"] == "delete"]
    alive(op)


# ---- the empty-set hold ------------------------------------------------------------------

def test_empty_active_set_holds_deletes_until_allowed(pg, cluster, api, namespace, migrated_db, start):
    insert(pg, migrated_db, "h1", "h2")
    op = start(RESYNC_INTERVAL_SECONDS=1)
    wait_for(lambda: len(api.deployments(namespace)) == 2, 10, "workers not created")

    sql(pg, migrated_db, "update airbnb.accounts set is_active = false")
    r = wait_for(lambda: (r := op.readyz())["checks"]["holds"]["active"] and r, 10, lambda: op.readyz())
    assert r["checks"]["holds"]["held_deletes"] == 2
    assert "no account is active" in r["checks"]["holds"]["reason"]
    wait_for(lambda: {x["account_id"] for x in audit(pg, migrated_db) if x["action"] == "hold"} == {"h1", "h2"},
             10, lambda: audit(pg, migrated_db))
    assert metric(op, "sync_airbnb_operator_deletes_held") == 2
    wait_full_passes(op, 3)
    assert len(api.deployments(namespace)) == 2, "an empty active set deleted workers"
    assert op.readyz()["checks"]["holds"]["active"]
    assert not [x for x in audit(pg, migrated_db) if x["action"] == "delete"]
    assert len([x for x in audit(pg, migrated_db) if x["action"] == "hold"]) == 2, "hold audited every pass"
    for aid in ("h1", "h2"):  # a hold is an action too: log line and Event
        assert [ln for ln in action_logs(op, "hold", aid) if "no account is active" in ln["reason"]]
    wait_for(lambda: {e["involvedObject"]["name"] for e in events(cluster, namespace) if e["reason"] == "DeleteHeld"}
             == {name_of("h1"), name_of("h2")}, 10, "no DeleteHeld Events")
    assert op.stop() == 0

    start(ALLOW_EMPTY_DESIRED="true")
    wait_for(lambda: api.deployments(namespace) == {}, 10, "ALLOW_EMPTY_DESIRED=true did not delete")
    assert {x["account_id"] for x in audit(pg, migrated_db) if x["action"] == "delete"} == {"h1", "h2"}


# ---- more: budget, renames, restarts, lost database, collisions ----------------------------

def test_delete_budget_paces_a_mass_deactivation(pg, api, namespace, migrated_db, start):
    """DELETE_BUDGET deletes per RESYNC_INTERVAL_SECONDS: over any stretch of t seconds
    at most budget + t * budget / interval deletes; the rest are held, then done."""
    budget, interval = 2, 3
    ids = [f"b{i}" for i in range(7)]
    insert(pg, migrated_db, "keep", *ids)
    op = start(DELETE_BUDGET=budget, RESYNC_INTERVAL_SECONDS=interval)
    wait_for(lambda: len(api.deployments(namespace)) == 8, 15, "workers not created")
    wait_full_passes(op, 1, timeout=10)  # a full bucket

    sql(pg, migrated_db, "update airbnb.accounts set is_active = false where account_id <> 'keep'")
    r = wait_for(lambda: (r := op.readyz())["checks"]["holds"]["active"] and r, 10, lambda: op.readyz())
    assert "budget" in r["checks"]["holds"]["reason"]
    wait_for(lambda: set(api.deployments(namespace)) == {name_of("keep")}, 30,
             lambda: sorted(api.deployments(namespace)))

    rows = audit(pg, migrated_db)
    held = {x["account_id"] for x in rows if x["action"] == "hold"}
    assert held and held <= set(ids) and all("budget" in x["reason"] for x in rows if x["action"] == "hold")
    times = sorted(
        float(sql(pg, migrated_db, f"select extract(epoch from at) from sync_airbnb_operator.audit_log where id = {x['id']}"))
        for x in rows if x["action"] == "delete")
    assert len(times) == len(ids)
    for i in range(len(times)):
        for j in range(i, len(times)):
            allowed = budget + (times[j] - times[i]) * budget / interval + 0.5
            assert j - i + 1 <= allowed, f"{j - i + 1} deletes in {times[j] - times[i]:.2f} s: {times}"
    wait_for(lambda: not op.readyz()["checks"]["holds"]["active"], 10, "hold not cleared once all were deleted")


def test_renamed_account_id_moves_the_worker(pg, api, namespace, migrated_db, start):
    insert(pg, migrated_db, "keep", "r-old")
    start()
    wait_for(lambda: api.deployment(namespace, name_of("r-old")), 10, "no worker")
    sql(pg, migrated_db, "update airbnb.accounts set account_id = 'r-new' where account_id = 'r-old'")
    wait_for(lambda: set(api.deployments(namespace)) == {name_of("keep"), name_of("r-new")}, 10,
             lambda: sorted(api.deployments(namespace)))
    assert audit_of(pg, migrated_db, "r-old", "delete")[0]["reason"] == "account not found"


def test_restart_adopts_existing_workers_and_applies_what_changed_meanwhile(pg, cluster, api, namespace,
                                                                             migrated_db, start):
    insert(pg, migrated_db, "keep", "s-same", "s-cred", "s-gone")
    op = start()
    wait_for(lambda: len(api.deployments(namespace)) == 4, 10, "workers not created")
    for n in ("keep", "s-same", "s-cred", "s-gone"):
        settled(cluster, api, namespace, name_of(n))
    before = api.deployments(namespace)
    assert op.stop() == 0
    n_audit = len(audit(pg, migrated_db))

    # While no operator runs: a credential change, a deactivation, a new account.
    sql(pg, migrated_db, f"update airbnb.accounts set airbnb_cookie = {q(cookie('s-cred', 2))} "
                         "where account_id = 's-cred'")
    sql(pg, migrated_db, "update airbnb.accounts set is_active = false where account_id = 's-gone'")
    insert(pg, migrated_db, "s-new")
    op = start(RESYNC_INTERVAL_SECONDS=1)
    wait_for(lambda: set(api.deployments(namespace)) == {name_of(n) for n in ("keep", "s-same", "s-cred", "s-new")},
             10, lambda: sorted(api.deployments(namespace)))
    wait_for(lambda: fingerprint_of(api.deployment(namespace, name_of("s-cred"))) !=
             fingerprint_of(before[name_of("s-cred")]), 10, "credential change made while down not applied")
    wait_full_passes(op, 2)
    after = api.deployments(namespace)
    for n in ("keep", "s-same"):  # adopted as they are: no write at all
        assert after[name_of(n)]["metadata"]["resourceVersion"] == before[name_of(n)]["metadata"]["resourceVersion"]
    new_rows = audit(pg, migrated_db)[n_audit:]
    assert sorted((x["action"], x["account_id"]) for x in new_rows) == [
        ("create", "s-new"), ("delete", "s-gone"), ("update", "s-cred")]


def test_restart_plans_only_the_accounts_whose_input_changed(pg, api, namespace, migrated_db, start):
    """The settled set is saved (table settled, migration 008) and read back by the next
    operator: a restart hands the rules only the accounts that changed while it was down,
    not every account (two minutes of Lua work at 100,000 accounts). A set saved under
    another tag (operator version, rules version, image, namespace, accounts table) is
    not used: then every account is planned, as before the table existed."""
    ids = [f"st{i:03d}" for i in range(300)]  # more than one chunk (REC_PLAN_CHUNK 128)
    insert(pg, migrated_db, *ids)
    op = start(RESYNC_INTERVAL_SECONDS=1)
    wait_for(lambda: len(api.deployments(namespace)) == len(ids), 60, lambda: len(api.deployments(namespace)))
    wait_for(lambda: metric(op, "sync_airbnb_operator_settled_accounts") == len(ids), 30,
             lambda: metric(op, "sync_airbnb_operator_settled_accounts"))
    assert op.stop() == 0
    saved = sql(pg, migrated_db, "select length(digests) / 16 || ' ' || length(tag) "
                                 "from sync_airbnb_operator.settled").split()
    assert saved == [str(len(ids)), "64"], saved
    n_audit = len(audit(pg, migrated_db))

    sql(pg, migrated_db, f"update airbnb.accounts set airbnb_cookie = {q(cookie('st007', 2))} "
                         "where account_id = 'st007'")
    op = start(RESYNC_INTERVAL_SECONDS=1)
    wait_full_passes(op, 2)
    assert metric(op, "sync_airbnb_operator_accounts_planned_total") <= 3, \
        metric(op, "sync_airbnb_operator_accounts_planned_total")
    assert "settled set read" in op.raw_log()
    assert [(r["action"], r["account_id"]) for r in audit(pg, migrated_db)[n_audit:]] == [("update", "st007")]
    assert op.stop() == 0

    # A set made under another tag is not used.
    sql(pg, migrated_db, "update sync_airbnb_operator.settled set tag = 'another operator version'")
    op = start(RESYNC_INTERVAL_SECONDS=1)
    wait_full_passes(op, 1)
    wait_for(lambda: metric(op, "sync_airbnb_operator_accounts_planned_total") >= len(ids), 30,
             lambda: metric(op, "sync_airbnb_operator_accounts_planned_total"))
    assert [(r["action"], r["account_id"]) for r in audit(pg, migrated_db)[n_audit:]] == [("update", "st007")]


def test_a_backlog_of_accounts_that_need_nothing_does_not_stall_the_rest(pg, api, namespace, migrated_db, start):
    """A full pass plans REC_PLAN_CHUNK (128) accounts per rules call and continues with the
    rest as a backlog, chunk after chunk. A chunk that writes nothing (here: inactive
    accounts without a worker; at a restart: every worker already in place) must still be
    followed by the next one: the active accounts stored after 1,000 such rows get their
    workers long before the next resync (an hour here)."""
    insert(pg, migrated_db, *({"id": f"idle{i:04d}", "active": False} for i in range(1000)))
    insert(pg, migrated_db, "late1", "late2")  # stored last: read in the last chunk
    op = start(RESYNC_INTERVAL_SECONDS=3600)
    wait_for(lambda: set(api.deployments(namespace)) == {name_of("late1"), name_of("late2")}, 60,
             lambda: (sorted(api.deployments(namespace)), op.readyz()["checks"]["last_reconcile"]))
    assert op.readyz()["checks"]["last_reconcile"]["passes"] > 2, "the accounts were not planned in chunks"


def test_new_worker_image_on_restart_updates_every_worker(pg, cluster, api, namespace, migrated_db, start,
                                                          tmp_path):
    """A new WORKER_IMAGE is a rollout (issue 18): in waves, the canary first; with no
    soak here (rules_dir.NO_SOAK), each wave waits only for the previous one's Ready pod."""
    rules = write_plain(tmp_path / "rules", rules_files(NO_SOAK))
    insert(pg, migrated_db, "keep", "i1")
    op = start(RULES_DIR=rules)
    wait_for(lambda: len(api.deployments(namespace)) == 2, 10, "workers not created")
    for aid in ("keep", "i1"):
        settled(cluster, api, namespace, name_of(aid))
    assert op.stop() == 0
    start(WORKER_IMAGE="sync-airbnb:2.0", RULES_DIR=rules)

    def images():
        return {n: d["spec"]["template"]["spec"]["containers"][0]["image"] for n, d in api.deployments(namespace).items()}
    wait_for(lambda: set(images().values()) == {"sync-airbnb:2.0"}, 120, images)
    updates = [r for r in audit(pg, migrated_db) if r["action"] == "update"]
    assert [r["deployment"] for r in updates] == sorted(name_of(a) for a in ("keep", "i1")), "canary first, by name"
    for aid in ("keep", "i1"):  # rolled out: a second ReplicaSet, done
        wait_for(lambda: len(replicasets_of(cluster, namespace, name_of(aid))) == 2, 10, "no new ReplicaSet")
        settled(cluster, api, namespace, name_of(aid))
    assert sorted(r["account_id"] for r in audit(pg, migrated_db) if r["action"] == "update") == ["i1", "keep"]


def test_managed_lookalikes_in_other_namespaces_are_never_touched(pg, cluster, api, namespace, migrated_db, start):
    """Invariant 3: only Deployments in the operator's namespace. A Deployment in another
    namespace with the managed-by label, named like a worker of an inactive account, stays."""
    other = cluster.create_namespace(namespace[:40] + "-other")
    try:
        manifest = UNMANAGED.replace("sync-airbnb-worker-4001", name_of("x1")).replace(
            "labels: {app: sync-airbnb-worker, account-id: \"4001\"}\nspec",
            "labels: {app: sync-airbnb-worker, account-id: \"x1\", app.kubernetes.io/managed-by: sync-airbnb-operator}\n"
            "  annotations: {sync-airbnb.io/account-id: x1}\nspec")
        assert "managed-by" in manifest
        cluster.kubectl("apply", "-f", "-", input=manifest, namespace=other)
        before = api.deployment(other, name_of("x1"))
        insert(pg, migrated_db, "keep", {"id": "x1", "active": False})
        op = start(RESYNC_INTERVAL_SECONDS=1, ALLOW_EMPTY_DESIRED="true")
        wait_for(lambda: api.deployment(namespace, name_of("keep")), 10, "no keep worker")
        wait_full_passes(op, 2)
        after = api.deployment(other, name_of("x1"))
        assert after and after["metadata"]["uid"] == before["metadata"]["uid"]
        assert not any(m.get("manager") == "sync-airbnb-operator" for m in after["metadata"].get("managedFields", []))
        assert not [r for r in audit(pg, migrated_db) if r["action"] in ("delete", "update", "error")]
    finally:
        cluster.delete_namespace(other)


class TcpProxy:
    """A TCP proxy in front of PostgreSQL that the test can cut and restore."""

    def __init__(self, target_host: str, target_port: int):
        import socket
        import threading
        self.socket, self.threading = socket, threading
        self.target = (target_host, target_port)
        self.conns: list = []
        self.lock = threading.Lock()
        self.port = None
        self.listener = None
        self.open()

    def open(self):
        s = self.socket.socket()
        s.setsockopt(self.socket.SOL_SOCKET, self.socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port or 0))
        s.listen(16)
        self.port = s.getsockname()[1]
        self.listener = s
        self.threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = self.socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                self.threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(self.socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        """Refuses new connections and breaks the open ones."""
        try:
            self.listener.shutdown(self.socket.SHUT_RDWR)  # wakes the accept() (Linux)
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(self.socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def restore(self):
        self.open()


def test_lost_database_pauses_then_reconnects_relistens_and_resyncs(pg, api, namespace, migrated_db, start):
    u = urllib.parse.urlparse(migrated_db)
    proxy = TcpProxy(u.hostname, u.port)
    try:
        via_proxy = migrated_db.replace(f":{u.port}/", f":{proxy.port}/")
        insert(pg, migrated_db, "keep", "d1", "d2")
        op = start(database_url=via_proxy, RESYNC_INTERVAL_SECONDS=600)
        wait_for(lambda: len(api.deployments(namespace)) == 3, 10, "workers not created")

        proxy.cut()
        wait_for(lambda: not op.readyz()["checks"]["database"]["ok"], 10, "database loss not noticed")
        # Committed while the operator cannot hear: its NOTIFY is lost for good.
        sql(pg, migrated_db, "update airbnb.accounts set is_active = false where account_id = 'd1'")
        assert not op.readyz()["ready"]
        assert [ln for ln in op.logs() if ln.get("msg", "").startswith("database unavailable")]
        assert api.deployment(namespace, name_of("d1")) is not None

        proxy.restore()
        # The reconnect resyncs (the timer is 10 minutes away) and LISTENs again.
        wait_for(lambda: api.deployment(namespace, name_of("d1")) is None, 20,
                 lambda: f"missed change not applied after reconnect: {op.readyz()}")
        assert op.readyz()["checks"]["database"]["ok"]
        sql(pg, migrated_db, "update airbnb.accounts set is_active = false where account_id = 'd2'")
        wait_for(lambda: api.deployment(namespace, name_of("d2")) is None, 5, "NOTIFY not heard after reconnect")
        alive(op)
    finally:
        proxy.cut()


def test_id_spelling_anothers_hashed_name_does_not_take_its_worker(pg, api, namespace, migrated_db, start):
    """'ABC' is named sync-airbnb-worker-abc-b5d4045c3f; the id 'abc-b5d4045c3f' spells the
    same name plainly. The second account must not take over the first one's worker."""
    insert(pg, migrated_db, "keep", "ABC")
    op = start(RESYNC_INTERVAL_SECONDS=1)
    name = "sync-airbnb-worker-abc-b5d4045c3f"
    d0 = wait_for(lambda: api.deployment(namespace, name), 10, "no worker for ABC")
    insert(pg, migrated_db, "abc-b5d4045c3f")
    wait_for(lambda: audit_of(pg, migrated_db, "abc-b5d4045c3f", "error"), 10, "no error for the look-alike")
    wait_full_passes(op, 2)
    d1 = api.deployment(namespace, name)
    assert d1["metadata"]["uid"] == d0["metadata"]["uid"]
    assert d1["metadata"]["annotations"][ACCOUNT_ANN] == "ABC"
    env = {e["name"]: e.get("value", "") for e in d1["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ACCOUNT_ID"] == "ABC"
    assert not [x for x in audit(pg, migrated_db) if x["action"] in ("update", "delete")]
    alive(op)


def test_a_rule_that_fails_for_one_account_affects_only_it_and_quotes_no_credential(
        pg, cluster, api, namespace, migrated_db, start, rules_dir, tmp_path):
    """Rules edited badly: plan() raises for any account whose cookie contains EXPLODE,
    quoting the cookie; the template raises for user agents containing KABOOM, quoting
    it. Each failure is that account's error, its worker is kept, the others carry on,
    and neither value shows up anywhere."""
    bad = tmp_path / "rules"
    shutil.copytree(rules_dir, bad)
    plan = (bad / "plan.lua").read_text()
    plan = plan.replace("    observed = observed or {}\n", """    observed = observed or {}
    for _, a in ipairs(accounts) do
        if type(a.airbnb_cookie) == "string" and string.find(a.airbnb_cookie, "EXPLODE", 1, true) then
            error("cannot plan with cookie " .. a.airbnb_cookie)
        end
    end
""", 1)
    assert "EXPLODE" in plan
    (bad / "plan.lua").write_text(plan)
    dep = (bad / "deployment.lua").read_text()
    dep = dep.replace("function M.env(account)\n", """function M.env(account)
    if string.find(account.user_agent, "KABOOM", 1, true) then
        error("bad user agent " .. account.user_agent)
    end
""", 1)
    assert "KABOOM" in dep
    (bad / "deployment.lua").write_text(dep)

    insert(pg, migrated_db, "keep", "e1", "e2")
    op = start(RULES_DIR=str(bad), RESYNC_INTERVAL_SECONDS=1)
    wait_for(lambda: len(api.deployments(namespace)) == 3, 10, "workers not created")
    sql(pg, migrated_db, "update airbnb.accounts set airbnb_cookie = 'SECRET-EXPLODE-cookie-zq' where account_id = 'e1'")
    sql(pg, migrated_db, "update airbnb.accounts set user_agent = 'SECRET-KABOOM-ua-zq' where account_id = 'e2'")
    for aid in ("e1", "e2"):
        wait_for(lambda: audit_of(pg, migrated_db, aid, "error"), 10, lambda: audit(pg, migrated_db))
    insert(pg, migrated_db, "e3")  # others keep reconciling, in partial and full passes
    wait_for(lambda: api.deployment(namespace, name_of("e3")), 10, "e3 got no worker")
    wait_full_passes(op, 2)
    sentinel(pg, migrated_db, api, namespace, "s1")
    assert {name_of(i) for i in ("keep", "e1", "e2", "e3", "s1")} == set(api.deployments(namespace))
    assert not [x for x in audit(pg, migrated_db) if x["action"] in ("update", "delete")]
    assert "rule error" in audit_of(pg, migrated_db, "e2", "error")[0]["reason"]

    dump = "\n".join([op.raw_log(), json.dumps(audit(pg, migrated_db)),
                      json.dumps(events(cluster, namespace)), op.get("/readyz")[1]])
    assert "EXPLODE" not in dump and "KABOOM" not in dump, \
        [ln for ln in dump.splitlines() if "EXPLODE" in ln or "KABOOM" in ln][:3]
    alive(op)
