"""What a person sees of a worker from kubectl, and the pause annotation (issue 20,
points 6 and 7), against the real kube-apiserver and PostgreSQL.

- Every Event about a worker carries its uid, so `kubectl describe deployment` lists
  DeleteHeld, WorkerPaused, ... (kubectl matches Events by involvedObject.uid).
- Every applied worker carries sync-airbnb.io/last-action, last-action-reason,
  last-action-at and rules-version (in the apply itself).
- sync-airbnb.io/paused: "true" makes the operator leave the worker alone: a pending
  update is not applied, a deactivated account's worker is not deleted; both are
  reported (audit, Event, log), counted (metric) and shown (plan, status); removing
  the annotation resumes, and what is pending applies."""

from __future__ import annotations

import json
import re

from operator_harness import run_cli, wait_for

ACCOUNT_SQL = ("insert into airbnb.accounts(account_id, airbnb_cookie, x_client_version, user_agent, is_active)"
               " values ('{}', 'cookie-{}', 'v1', 'ua', true)")
PAUSED = "sync-airbnb.io/paused"


def name_of(account_id: str) -> str:
    return f"sync-airbnb-worker-{account_id}"


def deployment(cluster, ns, name) -> dict | None:
    p = cluster.kubectl("get", "deployment", name, "-o", "json", namespace=ns, check=False)
    return json.loads(p.stdout) if p.returncode == 0 else None


def annotations(cluster, ns, name) -> dict:
    d = deployment(cluster, ns, name)
    return (d or {}).get("metadata", {}).get("annotations", {})


def audit(pg, url) -> list[dict]:
    out = pg.psql("select coalesce(json_agg(a order by id), '[]') from sync_airbnb_operator.audit_log a",
                  url=url).stdout
    return json.loads(out)


def events_on(cluster, ns, name, reason) -> list[dict]:
    items = cluster.kubectl_json("get", "events", namespace=ns)["items"]
    return [e for e in items if e["reason"] == reason and e["involvedObject"]["name"] == name]


def describe(cluster, ns, name) -> str:
    return cluster.kubectl("describe", "deployment", name, namespace=ns).stdout


def quiet(op):
    """Until no write of the operator is in flight or waiting for its watch echo. (An
    echo the cache missed lapses after EXPECT_TIMEOUT_MS, 60 s: see expect.h.)"""
    wait_for(lambda: (c := op.readyz()["checks"])["expected"] == 0 and c["inflight"] == 0, 90,
             lambda: op.readyz()["checks"])


def fingerprint(d: dict) -> str:
    return d["spec"]["template"]["metadata"]["annotations"]["sync-airbnb.io/credentials-fingerprint"]


def test_pause_update_delete_and_resume(cluster, namespace, migrated_db, pg, operator_factory):
    op = operator_factory()
    op.wait_ready()
    name = name_of("8001")
    pg.psql(ACCOUNT_SQL.format("8001", "a"), url=migrated_db)
    pg.psql(ACCOUNT_SQL.format("8002", "a"), url=migrated_db)  # stays active: no empty-set hold at the end
    d = wait_for(lambda: deployment(cluster, namespace, name), 30, "worker created")
    uid = d["metadata"]["uid"]

    # the worker's state, written with the create itself
    ann = d["metadata"]["annotations"]
    assert ann["sync-airbnb.io/last-action"] == "create"
    assert ann["sync-airbnb.io/last-action-reason"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", ann["sync-airbnb.io/last-action-at"])
    assert ann["sync-airbnb.io/rules-version"] == op.readyz()["checks"]["rules"]["version"]
    created_fp = fingerprint(d)
    quiet(op)

    # pause: reported once, with the uid (so kubectl describe shows it)
    cluster.kubectl("annotate", "deployment", name, f"{PAUSED}=true", namespace=namespace)
    ev = wait_for(lambda: events_on(cluster, namespace, name, "WorkerPaused"), 30, "WorkerPaused Event")
    assert ev[0]["involvedObject"]["uid"] == uid
    assert "WorkerPaused" in describe(cluster, namespace, name)
    wait_for(lambda: op.metrics().get('sync_airbnb_operator_workers{state="paused"}') == 1, 10, "paused gauge")
    wait_for(lambda: [a for a in audit(pg, migrated_db) if a["action"] == "paused"], 10, "pause audited")
    paused_gen = deployment(cluster, namespace, name)["metadata"]["generation"]

    # a change that would roll the worker: held, reported, not applied
    pg.psql("update airbnb.accounts set airbnb_cookie = 'cookie-b' where account_id = '8001'", url=migrated_db)
    held = wait_for(lambda: [a for a in audit(pg, migrated_db)
                             if a["action"] == "paused" and "change is pending" in (a["reason"] or "")], 30,
                    lambda: audit(pg, migrated_db))
    assert held[0]["account_id"] == "8001" and held[0]["deployment"] == name
    p = run_cli("plan", "-o", "json", env={"DATABASE_URL": migrated_db, "KUBECONFIG": cluster.kubeconfig,
                                           "OPERATOR_NAMESPACE": namespace})
    assert p.returncode == 0, p.stderr  # nothing pending that run could execute
    doc = json.loads(p.stdout)
    assert doc["summary"]["paused"] == 1
    assert [a for a in doc["actions"] if a.get("paused")] == \
        [a for a in doc["actions"] if a["deployment"] == name]
    status = json.loads(run_cli("status", "-o", "json", env={
        "DATABASE_URL": migrated_db, "KUBECONFIG": cluster.kubeconfig, "OPERATOR_NAMESPACE": namespace}).stdout)
    assert [a["paused"] for a in status["accounts"] if a["account_id"] == "8001"] == [True]
    after = deployment(cluster, namespace, name)
    assert fingerprint(after) == created_fp and after["metadata"]["generation"] == paused_gen

    # resume: the pending change applies at once (not at the next resync)
    cluster.kubectl("annotate", "deployment", name, f"{PAUSED}-", namespace=namespace)
    wait_for(lambda: fingerprint(deployment(cluster, namespace, name)) != created_fp, 20, "update after resume")
    assert annotations(cluster, namespace, name)["sync-airbnb.io/last-action"] == "update"
    assert events_on(cluster, namespace, name, "WorkerResumed")[0]["involvedObject"]["uid"] == uid
    quiet(op)

    # paused + deactivated: reported, not deleted
    cluster.kubectl("annotate", "deployment", name, f"{PAUSED}=true", namespace=namespace)
    wait_for(lambda: op.metrics().get('sync_airbnb_operator_workers{state="paused"}') == 1, 10, "paused again")
    pg.psql("update airbnb.accounts set is_active = false where account_id = '8001'", url=migrated_db)
    wait_for(lambda: [a for a in audit(pg, migrated_db)
                      if a["action"] == "paused" and "worker is kept" in (a["reason"] or "")], 90,
             lambda: audit(pg, migrated_db))
    assert deployment(cluster, namespace, name)["metadata"]["uid"] == uid
    assert not [a for a in audit(pg, migrated_db) if a["action"] == "delete"]
    assert op.readyz()["checks"]["holds"]["held_deletes"] == 0  # not a held delete: no DeleteHeld alert
    # resume: the delete goes ahead
    cluster.kubectl("annotate", "deployment", name, f"{PAUSED}-", namespace=namespace)
    wait_for(lambda: deployment(cluster, namespace, name) is None, 30, "deleted after resume")


def test_delete_held_is_on_the_deployment_with_its_uid(cluster, namespace, migrated_db, pg,
                                                                 operator_factory):
    op = operator_factory(env={"DELETE_BUDGET": "0"})
    op.wait_ready()
    name = name_of("8101")
    pg.psql(ACCOUNT_SQL.format("8101", "a"), url=migrated_db)
    pg.psql(ACCOUNT_SQL.format("8102", "a"), url=migrated_db)  # one stays active: a budget hold, not an empty set
    d = wait_for(lambda: deployment(cluster, namespace, name), 30, "worker created")
    quiet(op)
    pg.psql("update airbnb.accounts set is_active = false where account_id = '8101'", url=migrated_db)
    ev = wait_for(lambda: events_on(cluster, namespace, name, "DeleteHeld"), 30, "DeleteHeld Event")
    assert ev[0]["involvedObject"]["uid"] == d["metadata"]["uid"]
    assert "DeleteHeld" in describe(cluster, namespace, name)
    # reported once, not once per pass
    passes = lambda: op.metrics().get('sync_airbnb_operator_reconcile_passes_total{kind="full"}', 0)  # noqa: E731
    before = passes()
    pg.psql("notify sync_airbnb_accounts, '*'", url=migrated_db)
    wait_for(lambda: passes() >= before + 1, 30, "another full pass")
    assert len(events_on(cluster, namespace, name, "DeleteHeld")) == 1
    assert ev[0].get("count", 1) == events_on(cluster, namespace, name, "DeleteHeld")[0].get("count", 1)


def test_rules_events_go_on_the_rules_configmap(cluster, namespace, migrated_db, tmp_path, operator_factory):
    """RULES_CONFIGMAP: RulesReloaded / RulesRejected on the ConfigMap a person applied,
    with its uid, so `kubectl describe configmap` shows them (deploy/ sets it)."""
    from rules_dir import ConfigMapDir, rules_files
    cluster.kubectl("create", "configmap", "rules", "--from-literal=rules.lua=-- the files", namespace=namespace)
    cm_uid = cluster.kubectl_json("get", "configmap", "rules", namespace=namespace)["metadata"]["uid"]
    good = rules_files()
    cm = ConfigMapDir(tmp_path / "rules", good)
    op = operator_factory(env={"RULES_DIR": str(cm.path), "RULES_CONFIGMAP": f"{namespace}/rules"})
    op.wait_ready()
    v0 = op.readyz()["checks"]["rules"]["version"]

    touched = dict(good)
    touched["rules.lua"] += "\n-- touched\n"
    cm.update(touched)
    wait_for(lambda: op.readyz()["checks"]["rules"]["version"] != v0, 30, "reload")

    def on_cm(reason):
        return [e for e in cluster.kubectl_json("get", "events", namespace=namespace)["items"]
                if e["reason"] == reason and e["involvedObject"]["kind"] == "ConfigMap"]
    ev = wait_for(lambda: on_cm("RulesReloaded"), 20, "RulesReloaded on the ConfigMap")
    assert ev[0]["involvedObject"]["name"] == "rules" and ev[0]["involvedObject"]["uid"] == cm_uid
    broken = dict(touched)
    broken["rules.lua"] += "\nthis is not Lua\n"
    cm.update(broken)
    ev = wait_for(lambda: on_cm("RulesRejected"), 30, "RulesRejected on the ConfigMap")
    assert ev[0]["type"] == "Warning" and ev[0]["involvedObject"]["uid"] == cm_uid
    out = cluster.kubectl("describe", "configmap", "rules", namespace=namespace).stdout
    assert "RulesReloaded" in out and "RulesRejected" in out
    # nothing on the Lease any more
    assert not [e for e in cluster.kubectl_json("get", "events", namespace=namespace)["items"]
                if e["involvedObject"]["kind"] == "Lease" and e["reason"].startswith("Rules")]
