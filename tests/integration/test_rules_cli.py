"""check-rules, plan, status and the REPL against the real PostgreSQL and control plane.

check-rules refuses every hostile edit of rules_dir.HOSTILE with file:line; plan tells
what `run` would do (exit 0 / 2 / 1, table and JSON) and writes nothing; status shows
accounts vs workers vs pods; the REPL answers piped input."""

from __future__ import annotations

import json
import os
import re

import pytest

from operator_harness import run_cli, wait_for
from rules_dir import HOSTILE, PWNED, RULES_SRC, rules_files, write_plain

ACCOUNT_SQL = ("insert into airbnb.accounts(account_id, airbnb_cookie, x_client_version, user_agent, is_active)"
               " values {}")


def cli_env(db: str, kubeconfig: str, namespace: str, **extra) -> dict:
    env = {"DATABASE_URL": db, "KUBECONFIG": kubeconfig, "OPERATOR_NAMESPACE": namespace}
    env.update(extra)
    return env


def plan_json(env: dict) -> tuple[int, dict]:
    p = run_cli("plan", "-o", "json", env=env)
    assert p.returncode in (0, 2), f"plan -o json exited {p.returncode}: {p.stderr}"
    return p.returncode, json.loads(p.stdout)


def deployments(cluster, namespace) -> dict[str, dict]:
    items = cluster.kubectl_json("get", "deployments", namespace=namespace)["items"]
    return {d["metadata"]["name"]: d for d in items}


def write_state(pg, db, cluster, namespace) -> tuple:
    """What a write would change: audit rows, the Deployments (uid, generation, annotations;
    not resourceVersion, which status updates by the controller-manager move), the Events
    the operator posts (not the controller-manager's and scheduler's for its Deployments,
    which can come late on a busy machine)."""
    audit = pg.psql("select count(*) from sync_airbnb_operator.audit_log", url=db).stdout.strip()
    deps = {n: (d["metadata"]["uid"], d["metadata"]["generation"], json.dumps(d["metadata"].get("annotations")))
            for n, d in deployments(cluster, namespace).items()}
    events = len([e for e in cluster.kubectl_json("get", "events", namespace=namespace)["items"]
                  if (e.get("source") or {}).get("component") == "sync-airbnb-operator"])
    return audit, deps, events


# ---- check-rules -------------------------------------------------------------------


def test_check_rules_accepts_the_shipped_rules():
    p = run_cli("check-rules", str(RULES_SRC))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"rules OK: {RULES_SRC} (version ")
    m = re.search(r"(\d+) files linted, (\d+) sample accounts rendered and validated, self_check passed", p.stdout)
    assert m and int(m.group(1)) == len(list(RULES_SRC.glob("*.lua"))) and int(m.group(2)) >= 10


@pytest.mark.parametrize("case", HOSTILE, ids=[c.id for c in HOSTILE])
def test_check_rules_rejects_hostile_rules(tmp_path, case):
    if os.path.exists(PWNED):
        os.unlink(PWNED)
    d = write_plain(tmp_path / "rules", case.files())
    p = run_cli("check-rules", str(d), timeout=120)
    assert p.returncode == 1, f"check-rules accepted {case.id}:\n{p.stdout}{p.stderr}"
    assert p.stdout == ""
    assert re.search(case.check_rules, p.stderr), p.stderr
    lines = p.stderr.strip().splitlines()
    # every problem names file:line; the last line says the rules are rejected
    assert all(re.match(r"check-rules: \w+\.lua:\d+: ", line) for line in lines[:-1]), p.stderr
    assert re.match(rf"check-rules: {re.escape(str(d))}: rejected at \w+ \(\d+ problems?\)", lines[-1]), p.stderr
    assert not os.path.exists(PWNED)


def test_check_rules_usage_and_missing_directory(tmp_path):
    p = run_cli("check-rules", "a", "b")
    assert p.returncode == 2 and "at most one directory" in p.stderr
    p = run_cli("check-rules", str(tmp_path / "nope"))
    assert p.returncode == 1 and "nope" in p.stderr


# ---- plan ------------------------------------------------------------------------------


def test_plan_exit_codes_json_and_no_writes(pg, cluster, kubeconfig, namespace, migrated_db, operator_factory):
    env = cli_env(migrated_db, kubeconfig, namespace)

    # nothing at all: exit 0
    p = run_cli("plan", env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("nothing to do; 0 active accounts, 0 managed Deployments; rules ")
    rc, doc = plan_json(env)
    assert rc == 0 and doc["pending"] is False and doc["actions"] == []
    assert set(doc) == {"rules_version", "namespace", "pending", "summary", "hold_reason", "actions"}
    assert doc["namespace"] == namespace and re.fullmatch(r"[0-9a-f]{64}", doc["rules_version"])

    pg.psql(ACCOUNT_SQL.format("('1001', 'c-1001-Q9vTz', 'v1', 'ua', true), ('ABC', 'c-abc-Q9vTz', 'v1', 'ua', true),"
                               " ('1003', 'c-1003-Q9vTz', 'v1', 'ua', false)"), url=migrated_db)
    before = write_state(pg, migrated_db, cluster, namespace)

    # two creates pending: exit 2, table and JSON
    p = run_cli("plan", env=env)
    assert p.returncode == 2, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["ACTION", "ACCOUNT", "DEPLOYMENT", "REASON"]
    assert lines[1].split()[:3] == ["create", "1001", "sync-airbnb-worker-1001"]
    assert lines[2].split()[:3] == ["create", "ABC", "sync-airbnb-worker-abc-b5d4045c3f"]
    assert lines[-1].startswith("changes pending: 2 to create, 0 to update, 0 to delete; 2 active accounts")
    assert "Q9vTz" not in p.stdout
    rc, doc = plan_json(env)
    assert rc == 2 and doc["pending"] is True
    assert doc["summary"] == {"create": 2, "update": 0, "delete": 0, "hold": 0, "error": 0, "desired": 2, "observed": 0,
                              "paused": 0}
    for action in doc["actions"]:
        assert set(action) == {"action", "account_id", "deployment", "reason", "desired_hash", "object"}
        assert action["object"]["metadata"]["name"] == action["deployment"]
        assert action["object"]["metadata"]["namespace"] == namespace
        assert action["object"]["kind"] == "Deployment"
    assert "Q9vTz" not in json.dumps(doc)
    # plan writes nothing: no Deployment, no audit row, no Event
    assert write_state(pg, migrated_db, cluster, namespace) == before == ("0", {}, 0)

    # what plan said is what run does; then nothing is left to do
    op = operator_factory()
    op.wait_ready()
    wait_for(lambda: set(deployments(cluster, namespace)) ==
             {"sync-airbnb-worker-1001", "sync-airbnb-worker-abc-b5d4045c3f"}, 30, lambda: deployments(cluster, namespace).keys())
    rows = pg.psql("select action, deployment from sync_airbnb_operator.audit_log order by id", url=migrated_db).stdout
    assert sorted(rows.split()) == sorted(f"create|{a['deployment']}" for a in doc["actions"])
    wait_for(lambda: run_cli("plan", env=env).returncode == 0, 20, lambda: run_cli("plan", env=env).stdout)
    op.stop()

    # every account gone at once: run holds the deletes, so plan shows holds and exits 0
    pg.psql("update airbnb.accounts set is_active = false", url=migrated_db)
    before = write_state(pg, migrated_db, cluster, namespace)
    p = run_cli("plan", env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("delete held: no account is active") == 2
    assert "nothing to do; 2 held, 0 errors (listed, not pending" in p.stdout
    rc, doc = plan_json(env)
    assert rc == 0 and doc["pending"] is False and doc["summary"]["hold"] == 2
    assert doc["hold_reason"].startswith("delete held: no account is active")
    # one account back: the other delete is allowed (within DELETE_BUDGET): exit 2
    pg.psql("update airbnb.accounts set is_active = true where account_id = 'ABC'", url=migrated_db)
    rc, doc = plan_json(env)
    assert rc == 2 and [(a["action"], a["deployment"]) for a in doc["actions"]] == [("delete", "sync-airbnb-worker-1001")]
    # DELETE_BUDGET=0: the same delete is held by the budget: not pending
    rc, doc = plan_json(dict(env, DELETE_BUDGET="0"))
    assert rc == 0 and doc["actions"][0]["action"] == "hold"
    assert doc["actions"][0]["reason"] == "delete held: delete budget exhausted (DELETE_BUDGET)"
    assert write_state(pg, migrated_db, cluster, namespace) == before


# Rules that refuse to be handed more accounts than run hands them at once
# (REC_PLAN_CHUNK, core/reconcile.h): plan must chunk as run does, or the
# whole-plan call fails and the core falls back to planning the accounts in halves.
CHUNK = 128
CHUNKED_RULES = {"rules.lua": [("M.plan = plan.plan", f"""M.plan = function(accounts, observed, ctx)
    if #accounts > {CHUNK} then error("handed " .. #accounts .. " accounts in one call") end
    return plan.plan(accounts, observed, ctx)
end""")]}
FALLBACK = "planning the accounts in smaller groups"


def test_plan_hands_the_rules_chunks_as_run_does(pg, cluster, kubeconfig, namespace, migrated_db, operator_factory,
                                                 tmp_path):
    n = 3 * CHUNK + 50  # four chunks
    pg.psql("insert into airbnb.accounts(account_id, airbnb_cookie, x_client_version, user_agent, is_active)"
            f" select 'a' || lpad(g::text, 4, '0'), 'c-' || g, 'v1', 'ua', true from generate_series(1, {n}) g",
            url=migrated_db)
    strict = write_plain(tmp_path / "chunked", rules_files(CHUNKED_RULES))
    env = cli_env(migrated_db, kubeconfig, namespace)
    senv = dict(env, RULES_DIR=str(strict))

    # every account planned once, exactly as one whole-table call of the shipped rules plans it
    p = run_cli("plan", "-o", "json", env=senv, timeout=120)
    assert p.returncode == 2, p.stderr
    assert FALLBACK not in p.stderr, p.stderr[-2000:]
    doc = json.loads(p.stdout)
    creates = [(a["account_id"], a["deployment"], a["desired_hash"]) for a in doc["actions"]]
    assert len(creates) == n and len({c[0] for c in creates}) == n
    assert doc["summary"] == {"create": n, "update": 0, "delete": 0, "hold": 0, "error": 0, "desired": n,
                              "observed": 0, "paused": 0}
    rc, whole = plan_json(env)
    assert sorted(creates) == sorted((a["account_id"], a["deployment"], a["desired_hash"]) for a in whole["actions"])

    # run creates them; then plan over n workers in chunks has nothing to do
    op = operator_factory({"KUBE_QPS": "500", "KUBE_BURST": "500", "RULES_DIR": str(strict)})
    op.wait_ready()
    wait_for(lambda: len(deployments(cluster, namespace)) == n, 120, lambda: len(deployments(cluster, namespace)))
    def plan_tail():
        p = run_cli("plan", env=senv, timeout=120)
        return f"exit {p.returncode}: {p.stdout[-800:]} {p.stderr[-800:]}"
    wait_for(lambda: run_cli("plan", env=senv, timeout=120).returncode == 0, 60, plan_tail)
    op.stop()

    # deactivations in every chunk: the delete budget is spent once over all the chunks
    pg.psql("update airbnb.accounts set is_active = false where right(account_id, 1) in ('1', '2')", url=migrated_db)
    off = sum(1 for i in range(1, n + 1) if i % 10 in (1, 2))
    p = run_cli("plan", "-o", "json", env=dict(senv, DELETE_BUDGET="7"), timeout=120)
    assert p.returncode == 2 and FALLBACK not in p.stderr, p.stderr[-2000:]
    doc = json.loads(p.stdout)
    assert doc["summary"]["delete"] == 7 and doc["summary"]["hold"] == off - 7, doc["summary"]
    assert doc["summary"]["desired"] == n - off and doc["summary"]["observed"] == n
    assert {a["reason"] for a in doc["actions"] if a["action"] == "hold"} == {
        "delete held: delete budget exhausted (DELETE_BUDGET)"}

    # every account inactive: each chunk knows the table has no active account (not "unknown")
    pg.psql("update airbnb.accounts set is_active = false", url=migrated_db)
    p = run_cli("plan", "-o", "json", env=senv, timeout=120)
    assert p.returncode == 0 and FALLBACK not in p.stderr, p.stderr[-2000:]
    doc = json.loads(p.stdout)
    assert doc["summary"]["hold"] == n and doc["summary"]["delete"] == 0
    assert {a["reason"] for a in doc["actions"]} == {
        "delete held: no account is active (set ALLOW_EMPTY_DESIRED=true to allow)"}


def test_plan_errors_exit_1(kubeconfig, namespace, database_url, tmp_path):
    env = cli_env(database_url, kubeconfig, namespace)
    # a fresh database: run would wait for the migrations, plan says so
    p = run_cli("plan", env=env)
    assert p.returncode == 1 and p.stderr.startswith("plan: the database schema is not at head"), p.stderr
    run_cli("migrate", "up", env=dict(env, MIGRATE_CREATE_ACCOUNTS_TABLE="true"), check=True)
    assert run_cli("plan", env=env).returncode == 0
    p = run_cli("plan", env=dict(env, DATABASE_URL="postgresql://nobody@127.0.0.1:1/none"))
    assert p.returncode == 1 and p.stderr.startswith("plan: database: "), p.stderr
    p = run_cli("plan", env=dict(env, DATABASE_URL=""))
    assert p.returncode == 1 and "DATABASE_URL is not set" in p.stderr, p.stderr
    p = run_cli("plan", env=dict(env, KUBECONFIG="/nonexistent/kubeconfig"))
    assert p.returncode == 1 and "/nonexistent/kubeconfig" in p.stderr, p.stderr
    p = run_cli("plan", "--no-such-flag", env=env)
    assert p.returncode == 1, "a usage error must not read as 2 (changes pending)"
    p = run_cli("plan", "extra", env=env)
    assert p.returncode == 1
    broken = write_plain(tmp_path / "broken-rules", HOSTILE[0].files())
    p = run_cli("plan", env=dict(env, RULES_DIR=str(broken)))
    assert p.returncode == 1 and p.stderr.startswith(f"plan: rules in {broken}: deployment.lua:"), p.stderr


# ---- status ---------------------------------------------------------------------------


def test_status_table_and_json(pg, cluster, kubectl, kubeconfig, namespace, migrated_db, operator_factory, tmp_path):
    env = cli_env(migrated_db, kubeconfig, namespace)
    pg.psql(ACCOUNT_SQL.format("('2001', 'c-2001-Q9vTz', 'v1', 'ua', true), ('2002', 'c-2002-Q9vTz', 'v1', 'ua', true),"
                               " ('2003', 'c-2003-Q9vTz', 'v1', 'ua', false)"), url=migrated_db)
    pg.psql("update airbnb.accounts set last_sync_at = '2026-01-02 05:00:00+00' where account_id = '2001'", url=migrated_db)
    op = operator_factory()
    op.wait_ready()
    wait_for(lambda: all(d.get("status", {}).get("readyReplicas") == 1 for d in deployments(cluster, namespace).values())
             and len(deployments(cluster, namespace)) == 2, 120, lambda: deployments(cluster, namespace).keys())
    op.stop()
    # an admin changes 2002's credentials while the operator is down; a stray managed Deployment appears
    pg.psql("update airbnb.accounts set user_agent = 'ua-new' where account_id = '2002'", url=migrated_db)
    kubectl("create", "deployment", "stray", "--image=busybox", namespace=namespace)
    kubectl("label", "deployment", "stray", "app.kubernetes.io/managed-by=sync-airbnb-operator", namespace=namespace)

    p = run_cli("status", env=env)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["ACCOUNT", "ACTIVE", "DEPLOYMENT", "READY", "RESTARTS", "FINGERPRINT", "REASON",
                                "LAST_SYNC_AT"]
    rows = {line.split()[0]: line.split() for line in lines[1:4]}
    assert rows["2001"][:7] == ["2001", "yes", "sync-airbnb-worker-2001", "1/1", "0", "yes", "-"]
    assert " ".join(rows["2001"][7:]) == "2026-01-02 05:00:00+00"
    assert rows["2002"][:7] == ["2002", "yes", "sync-airbnb-worker-2002", "1/1", "0", "no", "-"]
    assert rows["2002"][7] == "never"
    assert rows["2003"] == ["2003", "no", "-", "-", "-", "-", "inactive", "never"]
    assert "Managed Deployments without an account" in p.stdout
    assert re.search(r"^stray\s+-\s+\d/\d\s+\d+$", p.stdout, re.M), p.stdout
    assert lines[-2].startswith("3 accounts (2 active), 2 with a worker (2 ready), 1 managed Deployments without an account")
    assert lines[-1].startswith("rollout: "), lines[-1]  # the rules rollout's line
    assert "Q9vTz" not in p.stdout

    p = run_cli("status", "-o", "json", env=env)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert set(doc) == {"namespace", "rules_version", "accounts", "deployments_without_account"}
    accounts = {a["account_id"]: a for a in doc["accounts"]}
    assert list(accounts) == ["2001", "2002", "2003"]
    a = accounts["2001"]
    assert set(a) == {"account_id", "active", "deleted", "deployment", "ready_pods", "replicas", "restarts",
                      "waiting_reason", "reason", "pod_phase", "last_error", "fingerprint_in_sync", "fingerprint",
                      "account_fingerprint", "last_sync_at",
                      "paused", "last_action", "last_action_reason", "last_action_at", "rules_version_applied"}
    assert a["reason"] is None and a["pod_phase"] == "Running" and a["last_error"] is None
    assert a["active"] is True and a["deployment"] == "sync-airbnb-worker-2001" and a["ready_pods"] == 1
    assert a["paused"] is False and a["last_action"] in ("create", "update")
    assert a["rules_version_applied"] == doc["rules_version"] and a["last_action_at"]
    assert a["fingerprint_in_sync"] is True and a["fingerprint"] == a["account_fingerprint"]
    live = deployments(cluster, namespace)["sync-airbnb-worker-2001"]
    assert a["fingerprint"] == live["spec"]["template"]["metadata"]["annotations"]["sync-airbnb.io/credentials-fingerprint"]
    assert accounts["2002"]["fingerprint_in_sync"] is False
    assert accounts["2002"]["fingerprint"] != accounts["2002"]["account_fingerprint"]
    assert accounts["2003"] == dict(accounts["2003"], active=False, deleted=False, deployment=None,
                                    fingerprint_in_sync=None, last_sync_at=None, reason="inactive", pod_phase=None)
    assert [d["deployment"] for d in doc["deployments_without_account"]] == ["stray"]
    assert doc["deployments_without_account"][0]["account_id"] is None
    assert doc["deployments_without_account"][0]["reason"] in ("no_account", "failing")
    assert "Q9vTz" not in p.stdout

    # rules that do not load cost only the fingerprints: status is what one looks at then
    broken = write_plain(tmp_path / "broken", HOSTILE[0].files())
    p = run_cli("status", "-o", "json", env=dict(env, RULES_DIR=str(broken)))
    assert p.returncode == 0 and re.match(rf"status: rules in {broken}: deployment\.lua:\d+: ", p.stderr), p.stderr
    doc = json.loads(p.stdout)
    assert doc["rules_version"] is None
    assert [a["deployment"] for a in doc["accounts"]] == ["sync-airbnb-worker-2001", "sync-airbnb-worker-2002", None]
    assert all(a["fingerprint_in_sync"] is None and a["account_fingerprint"] is None for a in doc["accounts"])
    p = run_cli("status", env=dict(env, RULES_DIR=str(broken)))
    assert p.returncode == 0 and p.stdout.splitlines()[1].split()[5] == "?", p.stdout
    assert p.stdout.rstrip().splitlines()[-2].endswith("rules (not loaded)"), p.stdout


# ---- repl -------------------------------------------------------------------------------


def test_repl_answers_piped_input(pg, kubeconfig, namespace, migrated_db, tmp_path):
    env = cli_env(migrated_db, kubeconfig, namespace, HOME=str(tmp_path))
    pg.psql(ACCOUNT_SQL.format("('3001', 'c-3001-Q9vTz', 'v1', 'ua', true), ('3002', 'c-3002-Q9vTz', 'v1', 'ua', true)"),
            url=migrated_db)
    _, doc = plan_json(env)

    p = run_cli("repl", env=env, input="print(#plan())\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"{len(doc['actions'])}\n" == "2\n"  # no banner, no prompt
    assert p.stderr == ""

    script = "\n".join([
        "actions, whole = plan()",
        "print(actions[1].action, actions[1].deployment, whole.summary.create)",
        "function twice(x)",      # a chunk over several lines
        "  return x * 2",
        "end",
        "twice(21), 'expr'",      # an expression's values are printed, tab-separated
        "s = status()",
        "print(#s.accounts, s.accounts[1].account_id, s.accounts[1].deployment)",
        "print(db:query('select count(*) as n from airbnb.accounts')[1].n)",
        "st, body = kube:request('GET', '/api/v1/namespaces/' .. ctx().namespace)",
        "print(st, json.decode(body).metadata.name)",
        "print(rules.worker_name('ABC'), hash.sha256(''):sub(1, 8))",
        "reload()",
        "x = nil + 1",
        "print('not reached')",
    ]) + "\n"
    p = run_cli("repl", env=env, input=script)
    assert p.returncode == 1, "a piped script stops at its first error"
    out = p.stdout.splitlines()
    assert out[0] == "create\tsync-airbnb-worker-3001\t2"
    assert out[1] == "42\texpr"
    assert out[2] == "2\t3001\tnil"
    assert out[3] == "2"
    assert out[4] == f"200\t{namespace}"
    assert out[5] == "sync-airbnb-worker-abc-b5d4045c3f\te3b0c442"
    assert re.fullmatch(r"rules [0-9a-f]{12} in effect \(.*\)", out[6]) and out[7] == "true"
    assert "not reached" not in p.stdout
    assert p.stderr.startswith("stdin:1: attempt to perform arithmetic on a nil value"), p.stderr
    assert not (tmp_path / ".sync_airbnb_operator_history").exists()  # history is for terminals only

    # a syntax error stops a script too; plan() without a database raises, clearly
    p = run_cli("repl", env=env, input="print(1\n")
    assert p.returncode == 1 and "<eof>" in p.stderr
    p = run_cli("repl", env=dict(env, DATABASE_URL=""), input="print(pcall(plan))\n")
    assert p.returncode == 0
    assert p.stdout.startswith("false\tplan: database: DATABASE_URL is not set"), p.stdout
    assert "db: not connected (DATABASE_URL is not set)" in p.stderr


def test_repl_reload_keeps_the_previous_rules(kubeconfig, namespace, migrated_db, tmp_path):
    rules = write_plain(tmp_path / "rules", rules_files())
    env = cli_env(migrated_db, kubeconfig, namespace, RULES_DIR=str(rules))
    script = tmp_path / "edit.lua"
    script.write_text(f"""
local path = '{rules}/deployment.lua'
local f = assert(io.open(path)); local good = f:read('a'); f:close()
f = assert(io.open(path, 'w')); f:write((good:gsub('local M = {{}}\\n', 'local M = {{\\n', 1))); f:close()
print('bad', reload())
f = assert(io.open(path, 'w')); f:write((good:gsub('value = "worker"', 'value = "worker", extra = nil', 1))); f:close()
print('good', reload())
""")
    p = run_cli("repl", env=env, input=f"dofile('{script}')\n")
    assert p.returncode == 0, p.stderr
    assert re.search(r"^bad\tfalse\t.*deployment\.lua:\d+:", p.stdout, re.M), p.stdout
    assert "rules rejected, the previous rules stay: " in p.stderr
    assert re.search(r"^rules [0-9a-f]{12} in effect", p.stdout, re.M) and "good\ttrue" in p.stdout
