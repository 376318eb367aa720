"""Production hardening (issue 7): the safety invariants of DESIGN.md §5 under real
faults, with the real operator binary, a real control plane and real PostgreSQL.

- PostgreSQL stopped for 30 s mid-run (a private instance, so the shared one other
  tests use is never touched): no delete, /readyz says the database is down, and
  after it returns the operator reconnects, resyncs (a change made while it was
  away is applied) and LISTENs again (a NOTIFY-driven change works).     §5.1
- Two operators at once: only the Lease holder writes; `kill -9` of the leader →
  the standby takes over within the lease time; SIGTERM → the Lease is released
  and the standby takes over within seconds; SIGTERM during a burst of writes finishes
  and audits them within the bound. Takeover times are printed.             §5.7
- All accounts deactivated in one transaction: nothing is deleted and the hold is
  reported (/readyz, metric, audit_log); with a delete budget only that many
  deletes happen per interval.                                              §5.2
- Secret leak: distinctive credential values never appear in any Kubernetes object
  of the namespace, Event, log line, metric, /readyz or audit row, also when a
  hostile rules edit tries to put them into an env var, a reason or an error. §5.4

The apiserver restart test is test_apiserver_restart.py (private control plane).
Measured figures are printed (run pytest with -s to see them).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from harness import TOOLS
from operator_harness import ROOT, Operator, run_cli, wait_for

LEASE_ENV = {"LEASE_DURATION_SECONDS": "4", "RENEW_DEADLINE_SECONDS": "3", "RETRY_PERIOD_SECONDS": "1"}
WRITE_VERBS = ("POST", "PATCH", "PUT", "DELETE")


# ---- helpers ---------------------------------------------------------------------------

def add_accounts(pg, url: str, ids, active: bool = True, cookie: str = "cookie-{id}",
                 xcv: str = "v1", ua: str = "ua") -> None:
    values = ",".join(
        "('{0}', '{1}', '{2}', '{3}', {4})".format(
            i, cookie.format(id=i), xcv, ua, "true" if active else "false") for i in ids)
    pg.psql("insert into airbnb.accounts(account_id, airbnb_cookie, x_client_version, user_agent,"
            f" is_active) values {values}", url=url)


def deployments(cluster, namespace: str) -> dict[str, dict]:
    items = cluster.kubectl_json("get", "deployments", namespace=namespace)["items"]
    return {d["metadata"]["name"]: d for d in items}


def uids(cluster, namespace: str) -> dict[str, str]:
    return {n: d["metadata"]["uid"] for n, d in deployments(cluster, namespace).items()}


def worker(account_id: str) -> str:
    return f"sync-airbnb-worker-{account_id}"


def audit(pg, url: str) -> list[tuple[str, str, str, str, str]]:
    """(action, account_id, deployment, reason, actor) rows in order."""
    out = pg.psql("select action, coalesce(account_id,''), coalesce(deployment,''),"
                  " coalesce(reason,''), coalesce(actor,'') from sync_airbnb_operator.audit_log"
                  " order by id", url=url).stdout
    return [tuple(line.split("|", 4)) for line in out.splitlines() if line]


def write_requests(metrics: dict[str, float]) -> float:
    """Kubernetes write requests counted in /metrics (any status)."""
    total = 0.0
    for key, value in metrics.items():
        if key.startswith("sync_airbnb_operator_api_requests_total{") and \
                any(f'verb="{v}"' in key for v in WRITE_VERBS):
            total += value
    return total


def actions_logged(op: Operator, kinds=("create", "update", "delete")) -> list[dict]:
    return [r for r in op.logs() if r.get("msg") in kinds]


def lease(cluster, namespace: str) -> dict:
    p = cluster.kubectl("get", "lease", "sync-airbnb-operator", "-o", "json",
                        namespace=namespace, check=False)
    return json.loads(p.stdout)["spec"] if p.returncode == 0 else {}


def is_leader(op: Operator) -> bool:
    try:
        return bool(op.readyz()["checks"]["leader"]["is_leader"])
    except OSError:
        return False


def assert_new_account_created_by(pg, cluster, namespace: str, url: str, account: str, identity: str) -> None:
    """Adds an active account; its worker appears, created (audited) by identity alone."""
    add_accounts(pg, url, [account])
    wait_for(lambda: worker(account) in deployments(cluster, namespace), 20,
             lambda: sorted(deployments(cluster, namespace)))
    creates = [r for r in audit(pg, url) if r[0] == "create" and r[1] == account]
    assert [r[4] for r in creates] == [identity], audit(pg, url)


def start_operator(kubeconfig, namespace, url, env) -> Operator:
    """An operator not owned by operator_factory (which requires exit code 0)."""
    return Operator.start(database_url=url, kubeconfig=kubeconfig, namespace=namespace, env=env)


# ---- a private PostgreSQL ------------------------------------------------------------------

class PrivatePostgres:
    """A second PostgreSQL (tools/pg with its own PG_DIR and port), so a test can stop it
    without disturbing the shared one."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="sao-pg-outage-", dir="/tmp")
        os.chmod(self.dir, 0o755)  # the server runs as 'postgres' when we are root
        self.env = dict(os.environ, PG_DIR=self.dir)
        self.env.pop("PG_PORT", None)
        self.up()
        out = subprocess.run([str(TOOLS / "pg"), "env"], env=self.env, capture_output=True,
                             text=True, check=True).stdout
        self.url = out.split("DATABASE_URL='", 1)[1].split("'", 1)[0]

    def _tool(self, cmd: str) -> None:
        p = subprocess.run([str(TOOLS / "pg"), cmd], env=self.env, capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0, f"tools/pg {cmd} failed:\n{p.stdout}\n{p.stderr}"

    def up(self) -> None:
        self._tool("up")

    def down(self) -> None:
        self._tool("down")

    def destroy(self) -> None:
        subprocess.run([str(TOOLS / "pg"), "down"], env=self.env, capture_output=True, timeout=120)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_pg():
    p = PrivatePostgres()
    yield p
    p.destroy()


# ---- §5.1: a database outage never causes a delete ----------------------------------------

OUTAGE_SECONDS = 30


def test_database_outage_no_delete_then_resync_and_relisten(pg, cluster, kubeconfig, namespace,
                                                              private_pg):
    url = private_pg.url
    run_cli("migrate", "up", env={"DATABASE_URL": url, "MIGRATE_CREATE_ACCOUNTS_TABLE": "true"}, check=True)
    add_accounts(pg, url, ["o1", "o2", "o3"])
    # A long resync interval: after the outage, only the reconnect's own full resync
    # (or a NOTIFY) can explain a reconciled change.
    op = start_operator(kubeconfig, namespace, url, {"RESYNC_INTERVAL_SECONDS": "600", **LEASE_ENV})
    try:
        op.wait_ready()
        wait_for(lambda: set(deployments(cluster, namespace)) == {worker("o1"), worker("o2"), worker("o3")},
                 30, lambda: sorted(deployments(cluster, namespace)))
        before = uids(cluster, namespace)
        deletes_before = op.metrics().get('sync_airbnb_operator_reconcile_actions_total{result="delete"}', 0)

        private_pg.down()
        t_down = time.monotonic()
        wait_for(lambda: op.readyz()["checks"]["database"]["ok"] is False, 10,
                 lambda: op.get("/readyz")[1])
        detect = time.monotonic() - t_down
        # The whole outage: every poll, the Deployments are exactly as they were and
        # /readyz keeps saying the database is down.
        polls = 0
        while time.monotonic() - t_down < OUTAGE_SECONDS:
            r = op.readyz()
            assert r["checks"]["database"]["ok"] is False and r["ready"] is False, r
            assert uids(cluster, namespace) == before, "a Deployment changed while the database was down"
            polls += 1
            time.sleep(0.5)
        assert op.proc.poll() is None, op.raw_log()[-3000:]

        private_pg.up()
        t_up = time.monotonic()
        # Made right after the database returns, before the operator reconnects: its
        # NOTIFY is lost, so only the full resync after the reconnect can apply it.
        pg.psql("update airbnb.accounts set is_active = false where account_id = 'o2'", url=url)
        wait_for(lambda: op.readyz()["checks"]["database"]["ok"] is True, 45,
                 lambda: op.get("/readyz")[1])
        reconnect = time.monotonic() - t_up
        wait_for(lambda: set(deployments(cluster, namespace)) == {worker("o1"), worker("o3")}, 20,
                 lambda: sorted(deployments(cluster, namespace)))
        resync = time.monotonic() - t_up
        assert op.metrics().get('sync_airbnb_operator_reconcile_actions_total{result="delete"}', 0) \
            == deletes_before + 1

        # LISTEN again: a new account is reconciled at once, long before any resync.
        t_notify = time.monotonic()
        add_accounts(pg, url, ["o4"])
        wait_for(lambda: worker("o4") in deployments(cluster, namespace), 10,
                 lambda: sorted(deployments(cluster, namespace)))
        notify_latency = time.monotonic() - t_notify

        rows = audit(pg, url)
        deletes = [r for r in rows if r[0] == "delete"]
        assert [r[1] for r in deletes] == ["o2"], rows
        assert uids(cluster, namespace)[worker("o1")] == before[worker("o1")]
        logs = op.logs()
        assert any(r.get("msg", "").startswith("database unavailable") for r in logs)
        print(f"\n[db outage] loss seen by /readyz after {detect:.2f}s; {polls} polls over "
              f"{OUTAGE_SECONDS}s: no change; reconnected {reconnect:.2f}s after the database "
              f"returned; change made during reconnect applied after {resync:.2f}s; NOTIFY-driven "
              f"create after re-LISTEN in {notify_latency:.2f}s")
    finally:
        code = op.stop()
    assert code == 0, op.raw_log()[-3000:]


# ---- §5.7: one active operator at a time ---------------------------------------------------

def test_two_operators_only_leader_writes_and_takeovers(pg, cluster, kubeconfig, namespace, migrated_db,
                                                        operator_factory):
    url = migrated_db
    add_accounts(pg, url, ["l1", "l2"])
    a = start_operator(kubeconfig, namespace, url, {**LEASE_ENV, "POD_NAME": "op-a"})
    b = c = None
    try:
        wait_for(lambda: is_leader(a), 20, lambda: a.get("/readyz")[1])
        b = operator_factory({**LEASE_ENV, "POD_NAME": "op-b"})
        b.wait_ready()
        wait_for(lambda: set(deployments(cluster, namespace)) == {worker("l1"), worker("l2")}, 30,
                 lambda: sorted(deployments(cluster, namespace)))
        # Changes while both run: a create and a delete, done by the leader alone.
        add_accounts(pg, url, ["l3"])
        pg.psql("update airbnb.accounts set is_active = false where account_id = 'l1'", url=url)
        wait_for(lambda: set(deployments(cluster, namespace)) == {worker("l2"), worker("l3")}, 20,
                 lambda: sorted(deployments(cluster, namespace)))
        rb = b.readyz()
        assert rb["ready"] is True and rb["checks"]["leader"]["is_leader"] is False, rb
        assert rb["checks"]["leader"]["holder"] == "op-a", rb
        assert lease(cluster, namespace).get("holderIdentity") == "op-a"
        assert actions_logged(b) == [], actions_logged(b)
        assert write_requests(b.metrics()) == 0, b.get("/metrics")[1]
        assert b.metrics().get("sync_airbnb_operator_leader") == 0
        assert a.metrics().get("sync_airbnb_operator_leader") == 1
        assert {r[4] for r in audit(pg, url)} == {"op-a"}, audit(pg, url)

        # kill -9 of the leader: no release; b takes over when the lease expires.
        a.proc.kill()
        t_kill = time.monotonic()
        a.proc.wait()
        wait_for(lambda: is_leader(b), 15, lambda: b.get("/readyz")[1])
        takeover_kill = time.monotonic() - t_kill
        lease_s = int(LEASE_ENV["LEASE_DURATION_SECONDS"])
        retry_s = int(LEASE_ENV["RETRY_PERIOD_SECONDS"])
        assert takeover_kill <= lease_s + 2 * retry_s + 1, takeover_kill
        wait_for(lambda: lease(cluster, namespace).get("holderIdentity") == "op-b", 5, lambda: lease(cluster, namespace))
        assert_new_account_created_by(pg, cluster, namespace, url, "l4", "op-b")

        # SIGTERM of the leader: it releases the Lease, the standby takes over at its
        # next retry instead of waiting out the lease.
        c = operator_factory({**LEASE_ENV, "POD_NAME": "op-c"})
        c.wait_ready()
        assert not is_leader(c)
        b.proc.send_signal(signal.SIGTERM)
        t_term = time.monotonic()
        assert b.proc.wait(timeout=15) == 0, b.raw_log()[-3000:]
        exited = time.monotonic() - t_term
        wait_for(lambda: is_leader(c), 10, lambda: c.get("/readyz")[1])
        takeover_term = time.monotonic() - t_term
        assert takeover_term < lease_s, takeover_term  # not waiting for the lease to expire
        assert any(r.get("msg", "").startswith("stopping: releasing the lease") for r in b.logs())
        wait_for(lambda: lease(cluster, namespace).get("holderIdentity") == "op-c", 5, lambda: lease(cluster, namespace))
        assert_new_account_created_by(pg, cluster, namespace, url, "l5", "op-c")
        print(f"\n[leader] LEASE_DURATION=4s RENEW_DEADLINE=3s RETRY_PERIOD=1s: takeover after "
              f"kill -9 in {takeover_kill:.2f}s; after SIGTERM the leader exited in {exited:.2f}s "
              f"and the standby led {takeover_term:.2f}s after the signal")
    finally:
        if a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait()


def test_sigterm_finishes_inflight_writes_then_releases_the_lease(pg, cluster, kubeconfig, namespace,
                                                                 migrated_db):
    """SIGTERM while a burst of creates is being sent (client-side QPS keeps most of
    them queued): the operator stops planning, finishes what it has started within its
    bound (10 s), audits every write it made, releases the Lease and exits 0."""
    url = migrated_db
    ids = [f"t{i:02d}" for i in range(30)]
    add_accounts(pg, url, ids)
    op = start_operator(kubeconfig, namespace, url, {**LEASE_ENV, "KUBE_QPS": "10", "KUBE_BURST": "1"})
    try:
        wait_for(lambda: deployments(cluster, namespace), 30, "a first worker")
        op.proc.send_signal(signal.SIGTERM)
        t_term = time.monotonic()
        at_signal = len(deployments(cluster, namespace))
        code = op.proc.wait(timeout=20)
        took = time.monotonic() - t_term
    finally:
        if op.proc.poll() is None:
            op.proc.kill()
            op.proc.wait()
    assert code == 0, op.raw_log()[-3000:]
    assert took < 10 + 3, took
    names = set(deployments(cluster, namespace))
    creates = {r[2] for r in audit(pg, url) if r[0] == "create"}
    assert names == creates, (sorted(names - creates), sorted(creates - names))  # none unaudited
    assert len(names) > at_signal, "writes it had started (sent or queued) at SIGTERM were finished"
    assert not lease(cluster, namespace).get("holderIdentity"), lease(cluster, namespace)
    msgs = [r.get("msg") for r in op.logs()]
    assert "signal received; finishing in-flight work" in msgs and "stopped" in msgs
    print(f"\n[sigterm] {at_signal} workers at the signal, {len(names)} created and audited when it "
          f"exited {took:.2f}s later (bound 10s); Lease released")


# ---- §5.2: the empty-set hold and the delete budget ----------------------------------------

def test_all_deactivated_at_once_is_held_and_reported(pg, cluster, namespace, migrated_db, operator_factory):
    url = migrated_db
    ids = [f"h{i}" for i in range(6)]
    add_accounts(pg, url, ids)
    op = operator_factory({"RESYNC_INTERVAL_SECONDS": "2"})
    op.wait_ready()
    wait_for(lambda: len(deployments(cluster, namespace)) == 6, 30, lambda: sorted(deployments(cluster, namespace)))
    before = uids(cluster, namespace)

    pg.psql("update airbnb.accounts set is_active = false", url=url)  # one transaction
    r = wait_for(lambda: (r := op.readyz())["checks"]["holds"]["held_deletes"] == 6 and r, 15,
                 lambda: op.get("/readyz")[1])
    assert r["checks"]["holds"]["active"] is True
    assert "no account is active" in r["checks"]["holds"]["reason"]
    wait_for(lambda: op.metrics().get("sync_airbnb_operator_deletes_held") == 6, 10, lambda: op.get("/metrics")[1])
    # Several full resyncs later, still held and nothing deleted.
    passes = r["checks"]["last_reconcile"]["passes"]
    wait_for(lambda: op.readyz()["checks"]["last_reconcile"]["passes"] >= passes + 3, 15,
             lambda: op.get("/readyz")[1])
    assert uids(cluster, namespace) == before
    rows = audit(pg, url)
    holds = [row for row in rows if row[0] == "hold"]
    assert sorted(row[2] for row in holds) == sorted(worker(i) for i in ids), rows
    assert all("no account is active" in row[3] for row in holds)
    assert not [row for row in rows if row[0] == "delete"], rows
    assert op.metrics().get('sync_airbnb_operator_reconcile_actions_total{result="delete"}', 0) == 0
    assert [x for x in op.logs() if x.get("msg") == "hold"], "holds are logged"


def test_delete_budget_limits_deletes_per_interval(pg, cluster, namespace, migrated_db, operator_factory):
    url = migrated_db
    keep = [f"k{i}" for i in range(4)]
    drop = [f"d{i}" for i in range(6)]
    add_accounts(pg, url, keep + drop)
    # 2 deletes per 120 s: within this test the budget cannot refill.
    op = operator_factory({"DELETE_BUDGET": "2", "RESYNC_INTERVAL_SECONDS": "120"})
    op.wait_ready()
    wait_for(lambda: len(deployments(cluster, namespace)) == 10, 30, lambda: sorted(deployments(cluster, namespace)))

    t0 = time.monotonic()
    pg.psql("update airbnb.accounts set is_active = false where account_id like 'd%'", url=url)
    wait_for(lambda: len(deployments(cluster, namespace)) == 8, 15, lambda: sorted(deployments(cluster, namespace)))
    r = wait_for(lambda: (r := op.readyz())["checks"]["holds"]["held_deletes"] == 4 and r, 10,
                 lambda: op.get("/readyz")[1])
    assert "delete budget" in r["checks"]["holds"]["reason"], r
    # More passes (each touch of the held accounts NOTIFYs one): still only two deletes.
    passes = r["checks"]["last_reconcile"]["passes"]
    for _ in range(3):
        pg.psql("update airbnb.accounts set updated_at = now() where account_id like 'd%'", url=url)
    wait_for(lambda: op.readyz()["checks"]["last_reconcile"]["passes"] >= passes + 2, 10,
             lambda: op.get("/readyz")[1])
    names = set(deployments(cluster, namespace))
    assert len(names) == 8 and {worker(k) for k in keep} <= names, sorted(names)
    rows = audit(pg, url)
    assert len([row for row in rows if row[0] == "delete"]) == 2, rows
    held = {row[2] for row in rows if row[0] == "hold"}
    assert held == {worker(d) for d in drop} & names, rows
    assert op.metrics().get("sync_airbnb_operator_deletes_held") == 4
    print(f"\n[budget] DELETE_BUDGET=2 per 120s: 6 deactivated → 2 deleted, 4 held, "
          f"{time.monotonic() - t0:.1f}s observed")


# ---- §5.4: credentials never leak ---------------------------------------------------------

COOKIE = "sao-COOKIE-7f3a9c1e5b2d"
XCV = "sao-XCV-4d2e8b61"
UA = "sao-UA-Mozilla-9a7c3e15"
COOKIE2 = "sao-COOKIE-rotated-0b5e77aa"
SECRETS = (COOKIE, XCV, UA, COOKIE2)

HOSTILE_RULES = r'''
-- Hostile edit (test only): tries to leak credentials every way a rule can.
local original_plan = M.plan
M.plan = function(accounts, observed, ctx)
    local actions, summary = original_plan(accounts, observed, ctx)
    local by_id, other = {}, nil
    for _, account in ipairs(accounts) do
        by_id[account.account_id] = account
        if account.account_id == "other" then other = account end
    end
    for _, action in ipairs(actions) do
        local account = by_id[action.account_id]
        if account then
            action.reason = "leaking " .. account.airbnb_cookie .. " / " .. account.x_client_version ..
                " / " .. account.user_agent
            if action.object and action.account_id == "envleak" then
                local container = action.object.spec.template.spec.containers[1]
                container.env[#container.env + 1] = { name = "LEAKED_COOKIE", value = account.airbnb_cookie }
            end
            if action.object and action.account_id == "crossleak" and other then
                -- another account's credential, not this one's
                action.object.metadata.annotations["leak"] = "x" .. other.airbnb_cookie .. "x"
            end
        end
    end
    for _, account in ipairs(accounts) do
        if account.account_id == "errleak" then
            actions[#actions + 1] = { action = "error", account_id = "errleak",
                reason = "bad cookie " .. account.airbnb_cookie }
        end
        if account.account_id == "raiseleak" and RAISE then
            error("rule blew up on " .. account.airbnb_cookie .. " " .. account.user_agent)
        end
    end
    return actions, summary
end
M.self_check = function() return true end
'''


def hostile_rules_dir(tmp_path: Path, raising: bool) -> str:
    d = tmp_path / "rules"
    shutil.copytree(ROOT / "lua" / "rules", d)
    src = (d / "rules.lua").read_text()
    marker = "\nreturn M"
    assert src.rstrip().endswith("return M"), "rules.lua no longer ends with 'return M'"
    head = src[: src.rstrip().rfind(marker)]
    flag = f"local RAISE = {'true' if raising else 'false'}\n"
    (d / "rules.lua").write_text(head + "\n" + flag + HOSTILE_RULES + "\nreturn M\n")
    return str(d)


def everything_visible(pg, cluster, namespace: str, url: str, op: Operator) -> dict[str, str]:
    """Every place a credential could leak to, as text."""
    out = {
        "kubernetes": cluster.kubectl("get", "all,events,leases,configmaps,secrets,serviceaccounts",
                                      "-o", "json", namespace=namespace).stdout,
        "log": op.raw_log(),
        "metrics": op.get("/metrics")[1],
        "readyz": op.get("/readyz")[1],
        "audit": pg.psql("select * from sync_airbnb_operator.audit_log", url=url).stdout,
    }
    return out


def assert_no_secret(places: dict[str, str]) -> None:
    for where, text in places.items():
        for secret in SECRETS:
            assert secret not in text, f"credential {secret!r} found in {where}"


def test_credentials_never_leak_with_stock_rules(pg, cluster, namespace, migrated_db, operator_factory):
    url = migrated_db
    add_accounts(pg, url, ["s1", "s2"], cookie=COOKIE, xcv=XCV, ua=UA)
    op = operator_factory({"RESYNC_INTERVAL_SECONDS": "2", "LOG_LEVEL": "debug"})
    op.wait_ready()
    wait_for(lambda: set(deployments(cluster, namespace)) == {worker("s1"), worker("s2")}, 30,
             lambda: sorted(deployments(cluster, namespace)))
    # An admin credential change rolls the worker (an update), then a delete.
    pg.psql(f"update airbnb.accounts set airbnb_cookie = '{COOKIE2}' where account_id = 's1'", url=url)
    wait_for(lambda: any(r[0] == "update" and r[1] == "s1" for r in audit(pg, url)), 15, lambda: audit(pg, url))
    pg.psql("update airbnb.accounts set is_active = false where account_id = 's2'", url=url)
    wait_for(lambda: set(deployments(cluster, namespace)) == {worker("s1")}, 15,
             lambda: sorted(deployments(cluster, namespace)))
    wait_for(lambda: len([e for e in cluster.kubectl_json("get", "events", namespace=namespace)["items"]
                          if e.get("reason") in ("WorkerCreated", "WorkerUpdated", "WorkerDeleted")]) >= 4,
             15, "Events for the actions")
    assert_no_secret(everything_visible(pg, cluster, namespace, url, op))


@pytest.mark.parametrize("raising", [False, True], ids=["actions", "raise"])
def test_credentials_never_leak_with_hostile_rules(pg, cluster, namespace, migrated_db, operator_factory,
                                                   tmp_path, raising):
    """A rules edit that copies credentials into an env var, an annotation (another
    account's), reasons and an error action; with raising=True plan() also raises
    with a credential in the message, so every pass falls back to planning each
    account alone (where the cross-account copy cannot happen)."""
    url = migrated_db
    ids = ["plain", "envleak", "crossleak", "errleak", "raiseleak"]
    add_accounts(pg, url, ids, cookie=COOKIE + "-{id}", xcv=XCV, ua=UA)
    add_accounts(pg, url, ["other"], cookie=COOKIE2, xcv=XCV, ua=UA)
    op = operator_factory({"RULES_DIR": hostile_rules_dir(tmp_path, raising), "RESYNC_INTERVAL_SECONDS": "2",
                           "LOG_LEVEL": "debug"})
    op.wait_ready()
    refused = {"envleak", "errleak"} | ({"raiseleak"} if raising else {"crossleak"})
    # The passes that matter: the rules ran and their actions were reported.
    wait_for(lambda: {r[1] for r in audit(pg, url) if r[0] == "error"} >= refused, 30, lambda: audit(pg, url))
    wait_for(lambda: op.readyz()["checks"]["last_reconcile"]["passes"] >= 3, 15, lambda: op.get("/readyz")[1])
    names = set(deployments(cluster, namespace))
    # The leaking objects were refused; the others were applied. (crossleak may get a
    # clean worker in a pass whose input lacks the other account: nothing to copy.)
    assert worker("envleak") not in names, sorted(names)
    assert {worker("plain"), worker("other")} <= names, sorted(names)
    refusals = [r for r in audit(pg, url) if r[0] == "error" and r[1] in ("envleak", "crossleak")]
    assert all(r[3] == "refusing to apply: the rendered Deployment contains a credential value"
               for r in refusals), refusals
    places = everything_visible(pg, cluster, namespace, url, op)
    for secret in (COOKIE + "-" + i for i in ids):
        for where, text in places.items():
            assert secret not in text, f"credential {secret!r} found in {where}"
    assert_no_secret(places)
    assert "[REDACTED]" in places["audit"] or "<redacted>" in places["audit"], places["audit"]
