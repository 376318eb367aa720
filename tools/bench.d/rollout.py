"""Rules rollout figures (issue 18): on a private kwok control plane and PostgreSQL,
N workers (default 1,000), the shipped rollout policy (lua/rules/rollout.lua):

1. a good change (an extra env var): time from the ConfigMap swap to the rollout
   complete (every changed worker updated and Ready, last wave soaked), with the
   time each wave started;
2. a bad change (pods fail: kwok's chaos stage label on the pod template): the
   number of workers that ever got the bad template, and the time to the halt and
   to the rollback.

Prints a table. Run by `tools/bench --rollout [--workers N]` (docs/rules.md#rollouts-measured).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from harness import Cluster, Postgres  # noqa: E402
from operator_harness import Operator, run_cli, wait_for  # noqa: E402
from rules_dir import ConfigMapDir, rules_files, rules_version  # noqa: E402

MODE_ENV = '        { name = "MODE", value = "worker" },\n'
POD_LABELS = "    local pod_labels = assert(naming.labels(id))\n"
CHAOS = POD_LABELS + '    pod_labels["pod-container-running-failed.stage.kwok.x-k8s.io"] = "true"\n'


def good_rules(value: str) -> dict[str, str]:
    return rules_files({"deployment.lua": [(MODE_ENV, MODE_ENV + f'        {{ name = "BENCH", value = "{value}" }},\n')]})


def bad_rules() -> dict[str, str]:
    return rules_files({"deployment.lua": [(MODE_ENV, MODE_ENV + '        { name = "BENCH", value = "bad" },\n'),
                                           (POD_LABELS, CHAOS)]})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=1000)
    ap.add_argument("--command", default="tools/bench --rollout")
    args = ap.parse_args()
    n = args.workers
    # killed (a timeout, ^C from a wrapper): the finally below still stops the operator
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    pg, cluster = Postgres.ensure(), Cluster.ensure()
    stamp = time.strftime("%H%M%S")
    ns = cluster.create_namespace(f"bench-rollout-{stamp}")
    dbname = f"bench_rollout_{stamp}"
    db = pg.create_database(dbname)
    run_cli("migrate", "up", env={"DATABASE_URL": db, "MIGRATE_CREATE_ACCOUNTS_TABLE": "true"}, check=True)
    work = Path(os.environ.get("TEST_LOG_DIR", "/tmp")) / f"bench-rollout-{stamp}"
    cm = ConfigMapDir(work / "rules", rules_files())
    env = {"DATABASE_URL": db, "KUBECONFIG": cluster.kubeconfig, "OPERATOR_NAMESPACE": ns, "RULES_DIR": str(cm.path)}
    op = None
    try:
        op = Operator.start(database_url=db, kubeconfig=cluster.kubeconfig, namespace=ns,
                            env={"RULES_DIR": str(cm.path)}, log_dir=str(work),
                            start_timeout=120)
        # the accounts after the start: the start-up check of the rules plans over at most a sample
        pg.psql("insert into airbnb.accounts(account_id, airbnb_cookie, x_client_version, user_agent, is_active) "
                f"select 'b' || g, 'cookie-' || g || '-Zq8', 'v1', 'ua', true from generate_series(1, {n}) g",
                url=db)
        def ready_count() -> int:
            items = cluster.kubectl_json("get", "deployments", namespace=ns, timeout=120)["items"]
            return sum(1 for d in items if d.get("status", {}).get("readyReplicas") == 1)

        t = time.time()
        wait_for(lambda: ready_count() == n, 1800, lambda: f"{ready_count()} of {n} ready", interval=5)
        print(f"{n} workers created and Ready in {time.time() - t:.0f} s", flush=True)

        def status() -> dict:
            return json.loads(run_cli("rollout", "status", "-o", "json", env=env, check=True).stdout)
        wait_for(lambda: status()["phase"] == "complete", 60)

        # 1. a good change
        good = good_rules("v2")
        t0 = cm.update(good)
        waves = []
        def done() -> bool:
            s = status()
            if s["to_version"] != rules_version(good):
                return False
            if s["wave"] and (not waves or waves[-1][0] != s["wave"]):
                waves.append((s["wave"], time.time() - t0, s["reached"]))
            return s["phase"] == "complete"
        wait_for(done, 7200, lambda: status(), interval=0.5)
        good_s = time.time() - t0
        s = status()
        assert s["phase"] == "complete", s
        updated = int(pg.psql("select count(*) from sync_airbnb_operator.audit_log where action = 'update' "
                              f"and at >= to_timestamp({t0})", url=db).stdout)
        print(f"good change: {updated} workers updated in {good_s:.0f} s "
              f"({len(waves)} waves)", flush=True)

        # 2. a bad change
        t1 = cm.update(bad_rules())
        touched: set[str] = set()
        def chaos_names() -> set[str]:
            items = cluster.kubectl_json("get", "deployments", namespace=ns, timeout=120)["items"]
            return {d["metadata"]["name"] for d in items
                    if "pod-container-running-failed.stage.kwok.x-k8s.io" in d["spec"]["template"]["metadata"]["labels"]}
        def halted() -> bool:
            touched.update(chaos_names())
            return status()["phase"] == "halted"
        wait_for(halted, 1800, lambda: status(), interval=0.5)
        halt_s = time.time() - t1
        wait_for(lambda: not chaos_names(), 600, lambda: sorted(chaos_names()), interval=1)
        rollback_s = time.time() - t1
        # every update since the swap is the bad template or its rollback, of the same workers;
        # the audit trail sees a canary that a poll of every Deployment can miss (here it was
        # bad for about 2 s)
        bad_updated = pg.psql("select string_agg(distinct deployment, ', ') from sync_airbnb_operator.audit_log "
                              f"where action = 'update' and at >= to_timestamp({t1})", url=db).stdout.strip()
        bad_names = [x for x in bad_updated.split(", ") if x]
        print(f"\n## Rules rollout, {n} kwok workers, shipped policy\n\n"
              f"Command: `{args.command}`\n\n"
              "| figure | value |\n|---|---|\n"
              f"| good change: swap -> rollout complete | {good_s:.0f} s |\n"
              f"| good change: workers updated | {updated} of {n} |\n"
              f"| good change: waves (start s after swap, reached) | "
              + ", ".join(f"{w}@{at:.0f}s/{r}" for w, at, r in waves) + " |\n"
              f"| bad change: workers that got the bad template (audit trail: updated since the swap) | "
              f"{len(bad_names)} ({', '.join(bad_names)}) |\n"
              f"| bad change: of them seen with it by polling every Deployment | {len(touched)} |\n"
              f"| bad change: swap -> halted | {halt_s:.0f} s |\n"
              f"| bad change: swap -> canary rolled back | {rollback_s:.0f} s |\n", flush=True)
    finally:
        if op:
            op.stop()
        cluster.delete_namespace(ns)
        pg.drop_database(dbname)
    return 0


if __name__ == "__main__":
    sys.exit(main())
