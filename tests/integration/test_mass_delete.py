"""Mass deletes are held for a person (issue 16, DESIGN.md §5.2), on top of the delete
budget: deleting more than DELETE_HOLD_PERCENT of the managed workers within
DELETE_HOLD_WINDOW_SECONDS is held — audited, in /readyz — until someone annotates
the Lease with sync-airbnb.io/release-deletes (a new value releases one more share)."""

from __future__ import annotations

from operator_harness import wait_for

ENV = {"DELETE_HOLD_PERCENT": "50", "DELETE_HOLD_MIN": "1", "DELETE_BUDGET": "100",
       "RESYNC_INTERVAL_SECONDS": "1"}


def deployments(cluster, namespace):
    return set(d["metadata"]["name"] for d in cluster.kubectl_json("get", "deployments", namespace=namespace)["items"])


def test_deleting_most_workers_waits_for_a_person(pg, cluster, namespace, migrated_db, operator_factory):
    ids = ["m1", "m2", "m3", "m4"]
    values = ",".join(f"('{i}', 'cookie-{i}-xx', 'v1', 'ua', true)" for i in ids)
    pg.psql("insert into airbnb.accounts(account_id, airbnb_cookie, x_client_version, user_agent, is_active)"
            f" values {values}", url=migrated_db)
    op = operator_factory(ENV)
    op.wait_ready()
    workers = {f"sync-airbnb-worker-{i}" for i in ids}
    wait_for(lambda: deployments(cluster, namespace) == workers, 30, lambda: deployments(cluster, namespace))

    pg.psql("update airbnb.accounts set is_active = false where account_id in ('m1', 'm2', 'm3')", url=migrated_db)
    # 50 % of 4 workers: two deletes go out, the third is held
    r = wait_for(lambda: (r := op.readyz())["checks"]["holds"]["held_deletes"] >= 1 and r, 20,
                 lambda: op.get("/readyz")[1])
    assert "more than 50%" in r["checks"]["holds"]["reason"], r
    wait_for(lambda: len(deployments(cluster, namespace)) == 2, 20, lambda: deployments(cluster, namespace))
    holds = pg.psql("select count(*) from sync_airbnb_operator.audit_log where action = 'hold'"
                    " and reason like '%more than 50%'", url=migrated_db).stdout.strip()
    assert int(holds) >= 1
    # still held a few passes later
    passes = op.readyz()["checks"]["last_reconcile"]["passes"]
    wait_for(lambda: op.readyz()["checks"]["last_reconcile"]["passes"] >= passes + 3, 15)
    assert len(deployments(cluster, namespace)) == 2

    # a person releases it
    cluster.kubectl("annotate", "lease", "sync-airbnb-operator", "sync-airbnb.io/release-deletes=1", "--overwrite",
                    namespace=namespace)
    wait_for(lambda: deployments(cluster, namespace) == {"sync-airbnb-worker-m4"}, 30,
             lambda: (deployments(cluster, namespace), op.get("/readyz")[1]))
    assert [r for r in op.logs() if r.get("msg") == "deletes released by the Lease annotation"]
