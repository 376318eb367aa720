"""Worker health flows back to the database (issue 21): sync_airbnb_operator.worker_status,
one row per account, written by the leader in batches, only when a column changed, with
NOTIFY sync_airbnb_worker_status; `status` and /metrics derive the same reasons.

Real PostgreSQL, kube-apiserver and kwok. A pod's failing readiness is reported the way
the kubelet reports it: a write to the pod's status subresource (Ready False, the
container waiting in CrashLoopBackOff); kwok's stages leave a running pod's status alone."""

from __future__ import annotations

import json
import time
import urllib.parse
import uuid

import psycopg2
import psycopg2.extensions

from operator_harness import run_cli, wait_for
from test_reconcile import Api, TcpProxy, insert, name_of, settled

BOUND_S = 2.0  # the bound: a change shows in its row within 2 s
COLUMNS = ("account_id, wanted, reason, deployment, credentials_generation_applied AS gen_applied, "
           "credentials_generation_wanted AS gen_wanted, pod_phase, ready, restarts, ready_changed_at, "
           "last_error, rules_version, changed_at")


def rows(pg, url) -> dict:
    out = pg.psql(f"select coalesce(json_agg(w), '[]') from (select {COLUMNS} "
                  "from sync_airbnb_operator.worker_status) w", url=url).stdout
    return {r["account_id"]: r for r in json.loads(out)}


def pod_of(api, ns, account_id):
    status, doc = api.get(f"/api/v1/namespaces/{ns}/pods?labelSelector=app.kubernetes.io/instance%3D"
                          f"{name_of(account_id)}")
    assert status == 200, doc
    live = [p for p in doc["items"] if not p["metadata"].get("deletionTimestamp")]
    return live[0] if len(live) == 1 else None


def pod_ready(pod) -> bool:
    return bool(pod) and any(c["type"] == "Ready" and c["status"] == "True"
                             for c in pod.get("status", {}).get("conditions", []))


def set_pod_health(cluster, ns, pod, ready: bool, restarts: int):
    """What the kubelet writes when a readiness probe fails / passes again."""
    container = pod["spec"]["containers"][0]["name"]
    state = {"running": {"startedAt": "2026-01-01T00:00:00Z"}} if ready else \
        {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting failed container"}}
    flag = "True" if ready else "False"
    status = {"phase": "Running",
              "conditions": [{"type": t, "status": s} for t, s in
                             (("Initialized", "True"), ("PodScheduled", "True"), ("Ready", flag),
                              ("ContainersReady", flag))],
              "containerStatuses": [{"name": container, "image": pod["spec"]["containers"][0]["image"],
                                     "ready": ready, "restartCount": restarts, "started": ready,
                                     "state": state, "imageID": "", "containerID": ""}]}
    cluster.kubectl("patch", "pod", pod["metadata"]["name"], "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": status}), namespace=ns)


def row_within(pg, url, account_id, cond, since: float, what: str) -> dict:
    """Waits for the row to meet cond, and asserts it did within BOUND_S of since."""
    row = wait_for(lambda: (r := rows(pg, url).get(account_id)) and cond(r) and r, 15,
                   lambda: f"{what}: {rows(pg, url).get(account_id)}", interval=0.05)
    took = time.time() - since
    assert took < BOUND_S, f"{what} took {took:.2f} s (bound {BOUND_S} s)"
    return row


def metric(op, name, labels="") -> float:
    return op.metrics().get(f"{name}{{{labels}}}" if labels else name, 0.0)


def full_passes(op) -> float:
    return metric(op, "sync_airbnb_operator_reconcile_passes_total", 'kind="full"')


# ---- the tests ------------------------------------------------------------------------


def test_rows_follow_ready_failing_and_held_within_2s(pg, cluster, namespace, migrated_db, operator_factory):
    api = Api(cluster)
    insert(pg, migrated_db, "ws2", {"id": "ws3", "active": False}, "ws4")
    pg.psql("update airbnb.accounts set deleted_at = now() where account_id = 'ws4'", url=migrated_db)
    op = operator_factory({"RESYNC_INTERVAL_SECONDS": "2"})
    op.wait_ready()

    # A worker becoming Ready: the API first, then the row, within the bound. ws1 is inserted
    # only now, so its pod is seen not ready at least once. Each poll reads the API before the
    # row; the pod can turn Ready (and the row follow) between the two reads, so the bound is
    # taken from the last read that saw the pod not ready: an upper bound on the delay.
    insert(pg, migrated_db, "ws1")
    last_not_ready = seen_row = None
    deadline = time.time() + 60
    while time.time() < deadline and seen_row is None:
        t = time.time()
        if not pod_ready(pod_of(api, namespace, "ws1")):
            last_not_ready = t
        r = rows(pg, migrated_db).get("ws1")
        if r and r["ready"]:
            seen_row = time.time()
        time.sleep(0.03)
    assert seen_row, f"ws1's row never showed ready; pod ready: {pod_ready(pod_of(api, namespace, 'ws1'))}; " \
                     f"rows: {rows(pg, migrated_db)}"
    assert pod_ready(pod_of(api, namespace, "ws1")), "the row says ready, the API does not"
    assert seen_row - last_not_ready < BOUND_S, \
        f"ready showed {seen_row - last_not_ready:.2f} s after the API last had the pod not ready"

    version = op.readyz()["checks"]["rules"]["version"]
    wait_for(lambda: (r := rows(pg, migrated_db)).get("ws2", {}).get("ready") and r, 30)
    r = rows(pg, migrated_db)
    assert set(r) == {"ws1", "ws2", "ws3", "ws4"}, r
    ws1 = r["ws1"]
    assert ws1["wanted"] is True and ws1["reason"] is None and ws1["deployment"] == name_of("ws1"), ws1
    assert ws1["pod_phase"] == "Running" and ws1["restarts"] == 0 and ws1["last_error"] is None, ws1
    assert ws1["gen_applied"] == ws1["gen_wanted"] == 1, ws1  # one INSERT by a non-worker session
    # ready_changed_at: NULL when the pod was ready before the operator first saw it
    assert ws1["rules_version"] == version, ws1
    assert r["ws3"] == dict(r["ws3"], wanted=False, reason="inactive", deployment=None, ready=False,
                            gen_applied=None), r["ws3"]
    assert r["ws4"] == dict(r["ws4"], wanted=False, reason="soft_deleted", deployment=None), r["ws4"]

    # Failing readiness: the container crash-loops, the pod is not ready.
    pod = pod_of(api, namespace, "ws1")
    before = ws1["ready_changed_at"]
    set_pod_health(cluster, namespace, pod, ready=False, restarts=3)
    t0 = time.time()
    failing = row_within(pg, migrated_db, "ws1", lambda x: not x["ready"] and x["reason"] == "failing", t0,
                         "failing readiness")
    assert failing["last_error"] == "CrashLoopBackOff" and failing["restarts"] == 3, failing
    assert failing["ready_changed_at"] is not None and (before is None or failing["ready_changed_at"] > before), failing
    # status reads the same derivation, /metrics the same model
    doc = json.loads(run_cli("status", "-o", "json", env=status_env(migrated_db, cluster, namespace),
                             check=True).stdout)
    by_id = {a["account_id"]: a for a in doc["accounts"]}
    assert by_id["ws1"]["reason"] == "failing" and by_id["ws1"]["last_error"] == "CrashLoopBackOff", by_id["ws1"]
    wait_for(lambda: metric(op, "sync_airbnb_operator_worker_status", 'reason="failing"') == 1, 5,
             lambda: op.get("/metrics")[1])

    # ... and recovers
    set_pod_health(cluster, namespace, pod_of(api, namespace, "ws1"), ready=True, restarts=3)
    t0 = time.time()
    row_within(pg, migrated_db, "ws1", lambda x: x["ready"] and x["reason"] is None, t0, "ready again")

    # Held: every account inactive at once is an empty desired set; the deletes are held.
    t0 = time.time()
    pg.psql("update airbnb.accounts set is_active = false", url=migrated_db)
    for aid in ("ws1", "ws2"):
        held = row_within(pg, migrated_db, aid, lambda x: x["reason"] == "held", t0, f"{aid} held")
        assert held["wanted"] is False and held["deployment"] == name_of(aid), held

    # The three agree: the table, /metrics, `status`.
    wait_for(lambda: metric(op, "sync_airbnb_operator_worker_status_pending") == 0, 10)
    table = rows(pg, migrated_db)
    by_reason: dict = {}
    for row in table.values():
        by_reason[row["reason"] or "ok"] = by_reason.get(row["reason"] or "ok", 0) + 1
    assert by_reason == {"held": 2, "inactive": 1, "soft_deleted": 1}, table
    for reason in ("ok", "held", "inactive", "soft_deleted", "failing", "paused", "rollout", "no_account"):
        assert metric(op, "sync_airbnb_operator_worker_status", f'reason="{reason}"') == by_reason.get(reason, 0), \
            (reason, op.get("/metrics")[1])
    assert metric(op, "sync_airbnb_operator_worker_status_ready") == sum(r["ready"] for r in table.values())
    doc = json.loads(run_cli("status", "-o", "json", env=status_env(migrated_db, cluster, namespace),
                             check=True).stdout)
    assert {a["account_id"]: a["reason"] for a in doc["accounts"]} == \
        {k: v["reason"] for k, v in table.items()}, doc


def status_env(url, cluster, namespace) -> dict:
    return {"DATABASE_URL": url, "KUBECONFIG": cluster.kubeconfig, "OPERATOR_NAMESPACE": namespace}


def test_a_resync_or_restart_with_nothing_changed_writes_no_row(pg, cluster, namespace, migrated_db,
                                                                operator_factory):
    insert(pg, migrated_db, "q1", "q2", {"id": "q3", "active": False})
    env = {"RESYNC_INTERVAL_SECONDS": "1"}
    op = operator_factory(env)
    op.wait_ready()
    api = Api(cluster)
    for aid in ("q1", "q2"):  # the workers' rollouts are complete: the cluster stops changing
        settled(cluster, api, namespace, name_of(aid))
    wait_for(lambda: (r := rows(pg, migrated_db)) and r.get("q1", {}).get("ready") and r.get("q2", {}).get("ready")
             and len(r) == 3, 60, lambda: rows(pg, migrated_db))
    wait_for(lambda: metric(op, "sync_airbnb_operator_worker_status_pending") == 0, 10)
    # Count every row written from here on, whatever writes it.
    pg.psql("""
        create table public.ws_writes (at timestamptz default clock_timestamp(), op text, old jsonb, new jsonb);
        create function public.ws_count() returns trigger language plpgsql as
          $$ begin insert into public.ws_writes (op, old, new)
                   values (TG_OP, to_jsonb(OLD), to_jsonb(NEW)); return null; end $$;
        create trigger ws_count after insert or update or delete on sync_airbnb_operator.worker_status
          for each row execute function public.ws_count();""", url=migrated_db)

    def writes() -> int:
        return int(pg.psql("select count(*) from public.ws_writes", url=migrated_db).stdout)

    def check_no_write_without_a_pod_change():
        """Nothing the operator plans changed: no row may be written. The pods are the
        cluster's: on this busy 2-core machine the kwok node's heartbeat can lag and the
        node lifecycle controller then turns a pod's Ready condition False (a real change,
        which the row must show). So: no write without a visible change, and none for a
        column a resync or a restart could touch."""
        changed = pg.psql("select coalesce(json_agg(x), '[]') from (select op, "
                          "(select coalesce(array_agg(k), '{}') from jsonb_each(new) AS n(k, v) "
                          " where k <> 'changed_at' and (old -> k) is distinct from v) AS keys "
                          "from public.ws_writes) x", url=migrated_db).stdout
        for w in json.loads(changed):
            assert w["op"] == "UPDATE" and w["keys"], written()  # no insert, delete or no-op update
            assert set(w["keys"]) <= {"ready", "ready_changed_at", "pod_phase", "restarts", "reason",
                                      "last_error"}, written()

    def written() -> str:  # what changed (and the pods), for the failure message
        pods = [(p["metadata"]["name"], p["metadata"].get("deletionTimestamp"), p["status"])
                for p in cluster.kubectl_json("get", "pods", namespace=namespace)["items"]]
        return pg.psql("select at, op, old, new from public.ws_writes", url=migrated_db).stdout + repr(pods)

    passes = full_passes(op)
    wait_for(lambda: full_passes(op) >= passes + 3, 20, "no full passes")
    check_no_write_without_a_pod_change()

    # A restart reads the table back: still nothing to write.
    assert op.stop() == 0
    op = operator_factory(env)
    op.wait_ready()
    passes = full_passes(op)
    wait_for(lambda: full_passes(op) >= passes + 3, 20, "no full passes after the restart")
    check_no_write_without_a_pod_change()

    # The counter does count: a change writes exactly its row.
    before = writes()
    pg.psql("update airbnb.accounts set is_active = true where account_id = 'q3'", url=migrated_db)
    wait_for(lambda: rows(pg, migrated_db)["q3"]["ready"], 30, lambda: rows(pg, migrated_db)["q3"])
    assert writes() > before
    q3 = pg.psql("select count(*) from public.ws_writes where new ->> 'account_id' = 'q3' "
                 "and new ->> 'wanted' = 'true'", url=migrated_db).stdout
    assert int(q3) >= 1


def test_a_stalled_or_lost_database_never_blocks_reconciling_and_rows_catch_up(pg, cluster, namespace,
                                                                               migrated_db, operator_factory):
    api = Api(cluster)
    u = urllib.parse.urlparse(migrated_db)
    proxy = TcpProxy(u.hostname, u.port)
    try:
        via_proxy = migrated_db.replace(f":{u.port}/", f":{proxy.port}/")
        insert(pg, migrated_db, "s1")
        op = operator_factory({"RESYNC_INTERVAL_SECONDS": "600"}, database_url=via_proxy)
        op.wait_ready()
        wait_for(lambda: rows(pg, migrated_db).get("s1", {}).get("ready"), 60, lambda: rows(pg, migrated_db))

        # The table is locked against writes (reads still work): reconciling goes on.
        lock = psycopg2.connect(migrated_db)
        cur = lock.cursor()
        cur.execute("lock table sync_airbnb_operator.worker_status in exclusive mode")
        insert(pg, migrated_db, "s2")
        wait_for(lambda: api.deployment(namespace, name_of("s2")) is not None, 10,
                 "a stalled worker_status write blocked reconciling")
        wait_for(lambda: pod_ready(pod_of(api, namespace, "s2")), 30)
        assert "s2" not in rows(pg, migrated_db)
        assert op.readyz()["ready"] and op.get("/healthz")[0] == 200
        lock.rollback()
        lock.close()
        wait_for(lambda: rows(pg, migrated_db).get("s2", {}).get("ready"), 15,
                 lambda: rows(pg, migrated_db))

        # The database is gone: the watch goes on, the model notes the change, the row
        # catches up when the database is back.
        proxy.cut()
        wait_for(lambda: not op.readyz()["checks"]["database"]["ok"], 10, "database loss not noticed")
        set_pod_health(cluster, namespace, pod_of(api, namespace, "s1"), ready=False, restarts=1)
        wait_for(lambda: metric(op, "sync_airbnb_operator_worker_status_pending") >= 1, 10,
                 lambda: op.get("/metrics")[1])
        assert rows(pg, migrated_db)["s1"]["ready"] is True  # not written while away
        proxy.restore()
        wait_for(lambda: (r := rows(pg, migrated_db)["s1"]) and not r["ready"] and r["reason"] == "failing", 15,
                 lambda: rows(pg, migrated_db)["s1"])
        assert metric(op, "sync_airbnb_operator_worker_status_write_failures_total") >= 1
    finally:
        proxy.cut()


def test_select_is_granted_to_the_admin_role_alone_and_notify_reaches_it(pg, namespace, migrated_db,
                                                                         operator_factory):
    role = f"sao_admin_{uuid.uuid4().hex[:8]}"
    pg.psql(f"create role {role} login password 'admin-pw'", url=migrated_db)
    try:
        # The GRANT of docs/operations.md, as written there.
        pg.psql(f"grant usage on schema sync_airbnb_operator to {role}; "
                f"grant select on sync_airbnb_operator.worker_status to {role}", url=migrated_db)
        u = urllib.parse.urlparse(migrated_db)
        admin = psycopg2.connect(host=u.hostname, port=u.port, dbname=u.path.lstrip("/"), user=role,
                                 password="admin-pw")
        admin.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
        cur = admin.cursor()
        cur.execute("listen sync_airbnb_worker_status")

        insert(pg, migrated_db, "g1")
        op = operator_factory({})
        op.wait_ready()

        def heard():
            admin.poll()
            return [json.loads(n.payload) for n in admin.notifies if n.channel == "sync_airbnb_worker_status"]
        wait_for(lambda: any("g1" in p for p in heard()), 30, "no NOTIFY with the account id")
        cur.execute("select account_id, wanted from sync_airbnb_operator.worker_status")
        assert ("g1", True) in cur.fetchall()
        for denied in ("select * from sync_airbnb_operator.audit_log",
                       "select * from sync_airbnb_operator.credentials_generation",
                       "select * from sync_airbnb_operator.schema_migrations",
                       "select * from airbnb.accounts",
                       "delete from sync_airbnb_operator.worker_status",
                       "insert into sync_airbnb_operator.worker_status (account_key, account_id, wanted, ready, "
                       "restarts) values ('\\x00', 'x', true, true, 0)"):
            try:
                cur.execute(denied)
                raise AssertionError(f"the admin role may run: {denied}")
            except psycopg2.errors.InsufficientPrivilege:
                pass
        admin.close()
    finally:
        pg.psql(f"drop owned by {role}; drop role {role}", url=migrated_db, check=False)
