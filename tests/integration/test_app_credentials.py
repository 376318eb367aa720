"""Credential rolls decided by who made the change (issue 15), driven by the real app:
its admin API (MODE=admin, its own process) and its worker's writers
update_account_cookies and update_last_sync (two commits, in a process with the
worker's PGAPPNAME), on a database whose accounts table comes from the app's own
migrations (see app_harness.py and test_app_migrations.py).

The operator's trigger (migration 005) counts credential changes made by any session
that is not the worker's into sync_airbnb_operator.credentials_generation; the
fingerprint hashes that count. So the worker's rotation never rolls it, in whatever
order or timing its two commits land, and an admin's change always does: after a sync
that left the cookie unchanged, concurrently with the worker's writes, and while the
operator was down.
"""

from __future__ import annotations

import shutil
import threading

import pytest

from app_harness import AdminApi, fake_cookie, worker_sync, worker_writes
from operator_harness import ROOT, run_cli, wait_for
from test_app_migrations import app_first_migration_and_the_rest

FINGERPRINT = "sync-airbnb.io/credentials-fingerprint"


@pytest.fixture
def app_db(pg, database_url) -> str:
    """A fresh database as a real install has it: the app's accounts table from its
    own migrations, then the operator's (without MIGRATE_CREATE_ACCOUNTS_TABLE)."""
    app_first_migration_and_the_rest(pg, database_url)
    run_cli("migrate", "up", env={"DATABASE_URL": database_url}, check=True)
    return database_url


@pytest.fixture
def admin(app_db):
    api = AdminApi(app_db)
    yield api
    api.stop()


def generation(pg, url, account_id) -> int:
    out = pg.psql("select coalesce((select generation from sync_airbnb_operator.credentials_generation"
                  f" where account_id = '{account_id}'), 0)", url=url).stdout.strip()
    return int(out)


def row(pg, url, account_id) -> tuple[str, str]:
    """(airbnb_cookie, last_sync_at) as stored."""
    out = pg.psql("select airbnb_cookie || '|' || coalesce(last_sync_at::text, '') from airbnb.accounts"
                  f" where account_id = '{account_id}'", url=url).stdout.strip()
    cookie, last = out.split("|")
    return cookie, last


# ---- the counter, with the app's own code paths -----------------------------------------

def test_generation_counts_the_admins_changes_and_never_the_workers(pg, app_db, admin):
    url = app_db
    admin.create_account("310316675", fake_cookie("310316675", "admin-1"))
    assert generation(pg, url, "310316675") == 1  # created by the admin API

    for n in range(3):  # three syncs: rotated cookie, then last_sync_at, two commits each
        worker_sync(url, "310316675", fake_cookie("310316675", f"rotated-{n}"))
        assert row(pg, url, "310316675")[0] == fake_cookie("310316675", f"rotated-{n}")
    assert row(pg, url, "310316675")[1] != ""
    assert generation(pg, url, "310316675") == 1

    # A sync that left the cookie as it was (the same value written back), then an
    # admin's cookie PATCH: counted.
    worker_sync(url, "310316675", fake_cookie("310316675", "rotated-2"))
    assert generation(pg, url, "310316675") == 1
    admin.patch_account("310316675", airbnb_cookie=fake_cookie("310316675", "admin-2"))
    assert generation(pg, url, "310316675") == 2

    # Admin changes that change no credential are not counted; each credential is.
    admin.patch_account("310316675", is_active=True)
    admin.patch_account("310316675", airbnb_cookie=fake_cookie("310316675", "admin-2"))
    assert generation(pg, url, "310316675") == 2
    admin.patch_account("310316675", x_client_version="fake-client-2")
    admin.patch_account("310316675", user_agent="Mozilla/5.0 (fake test agent 2)")
    assert generation(pg, url, "310316675") == 4
    # The worker's cookie commit alone (a sync interrupted before update_last_sync).
    worker_writes(url, "310316675", [("cookies", fake_cookie("310316675", "rotated-9"))])
    assert generation(pg, url, "310316675") == 4
    # The trigger stores who, never a credential.
    stored = pg.psql("select row_to_json(g)::text from sync_airbnb_operator.credentials_generation g",
                     url=url).stdout
    assert "SECRET" not in stored and "fake-client" not in stored


def test_concurrent_admin_and_worker_writes_count_exactly_the_admins(pg, app_db, admin):
    url = app_db
    admin.create_account("420000001", fake_cookie("420000001", "admin-0"))
    steps = []
    for n in range(15):
        steps += [("cookies", fake_cookie("420000001", f"rotated-{n}")), ("last_sync",)]
    worker = worker_writes(url, "420000001", steps, background=True)
    patches = 0
    try:
        while worker.poll() is None or patches < 10:
            patches += 1
            admin.patch_account("420000001", airbnb_cookie=fake_cookie("420000001", f"admin-{patches}"))
    finally:
        out, _ = worker.communicate(timeout=120)
    assert worker.returncode == 0, out
    assert patches >= 10
    assert generation(pg, url, "420000001") == 1 + patches


# ---- the operator, end to end --------------------------------------------------------------

@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("rules") / "rules"
    shutil.copytree(ROOT / "lua" / "rules", d)
    return str(d)


@pytest.fixture
def operator(kubeconfig, namespace, app_db, rules_dir):
    from operator_harness import Operator
    started = []

    def start():
        op = Operator.start(database_url=app_db, kubeconfig=kubeconfig, namespace=namespace,
                            env={"RULES_DIR": rules_dir, "RESYNC_INTERVAL_SECONDS": "1"})
        started.append(op)
        op.wait_ready()
        return op
    yield start
    for op in started:
        assert op.stop() == 0, op.raw_log()[-4000:]


def deployment(cluster, ns, name):
    p = cluster.kubectl("get", "deployment", name, "-o", "json", namespace=ns, check=False)
    if p.returncode != 0:
        return None
    import json
    return json.loads(p.stdout)


def fingerprint_of(d) -> str:
    return d["spec"]["template"]["metadata"]["annotations"][FINGERPRINT]


def audit_actions(pg, url, account_id) -> list[tuple[str, str]]:
    out = pg.psql("select coalesce(string_agg(action || '|' || reason, E'\\n' order by id), '')"
                  f" from sync_airbnb_operator.audit_log where account_id = '{account_id}'", url=url).stdout
    return [tuple(line.split("|", 1)) for line in out.strip().splitlines() if line]


def sentinel(admin, cluster, ns, account_id):
    """An account created through the admin API after the changes under test, whose
    worker then appears: every change committed before it has been planned."""
    admin.create_account(account_id, fake_cookie(account_id, "sentinel"))
    wait_for(lambda: deployment(cluster, ns, f"sync-airbnb-worker-{account_id}"), 20,
             f"sentinel {account_id} got no worker")


def test_worker_rotation_never_rolls_an_admin_patch_always_does(pg, cluster, namespace, app_db, admin, operator):
    url = app_db
    operator()
    name = "sync-airbnb-worker-310316675"
    admin.create_account("310316675", fake_cookie("310316675", "admin-1"))
    d0 = wait_for(lambda: deployment(cluster, namespace, name), 20, "no worker")
    fp0 = fingerprint_of(d0)

    for n in range(5):  # five syncs, each two commits (the 1-in-5 roll of the issue)
        worker_sync(url, "310316675", fake_cookie("310316675", f"rotated-{n}"))
    sentinel(admin, cluster, namespace, "900000001")
    d1 = deployment(cluster, namespace, name)
    assert fingerprint_of(d1) == fp0, "the worker's own rotation rolled it"
    assert d1["metadata"]["generation"] == d0["metadata"]["generation"]
    assert [a for a, _ in audit_actions(pg, url, "310316675")] == ["create"]

    # A sync that left the cookie unchanged, then an admin's cookie PATCH: rolls.
    cookie, _ = row(pg, url, "310316675")
    worker_sync(url, "310316675", cookie)
    admin.patch_account("310316675", airbnb_cookie=fake_cookie("310316675", "admin-2"))
    d2 = wait_for(lambda: (d := deployment(cluster, namespace, name)) and fingerprint_of(d) != fp0 and d, 20,
                  lambda: f"the admin's PATCH did not roll: {audit_actions(pg, url, '310316675')}")
    assert audit_actions(pg, url, "310316675")[-1] == ("update", "credentials changed (rolls the worker)")

    # Another sync after the roll: nothing again.
    worker_sync(url, "310316675", fake_cookie("310316675", "rotated-after"))
    sentinel(admin, cluster, namespace, "900000002")
    assert fingerprint_of(deployment(cluster, namespace, name)) == fingerprint_of(d2)
    assert [a for a, _ in audit_actions(pg, url, "310316675")] == ["create", "update"]
    # No credential in the object.
    text = cluster.kubectl("get", "deployment", name, "-o", "yaml", namespace=namespace).stdout
    assert "SECRET" not in text and "_user_attributes" not in text


def test_changes_made_while_the_operator_is_down_roll_once_on_start(pg, cluster, namespace, app_db, admin,
                                                                     operator):
    url = app_db
    op = operator()
    name = "sync-airbnb-worker-530000002"
    admin.create_account("530000002", fake_cookie("530000002", "admin-1"))
    fp0 = fingerprint_of(wait_for(lambda: deployment(cluster, namespace, name), 20, "no worker"))
    assert op.stop() == 0

    # While it is down: the worker syncs, an admin changes the cookie, the worker syncs again
    # (its rotation now overwrites nothing of the count).
    worker_sync(url, "530000002", fake_cookie("530000002", "rotated-1"))
    admin.patch_account("530000002", airbnb_cookie=fake_cookie("530000002", "admin-2"))
    worker_sync(url, "530000002", fake_cookie("530000002", "rotated-2"))
    operator()
    d = wait_for(lambda: (d := deployment(cluster, namespace, name)) and fingerprint_of(d) != fp0 and d, 20,
                 "the change made while down did not roll")
    sentinel(admin, cluster, namespace, "900000003")
    assert fingerprint_of(deployment(cluster, namespace, name)) == fingerprint_of(d)
    assert [a for a, _ in audit_actions(pg, url, "530000002")] == ["create", "update"]


def test_concurrent_admin_patches_and_worker_syncs_end_on_the_admins_generation(pg, cluster, namespace, app_db,
                                                                                 admin, operator):
    url = app_db
    operator()
    name = "sync-airbnb-worker-640000004"
    admin.create_account("640000004", fake_cookie("640000004", "admin-0"))
    wait_for(lambda: deployment(cluster, namespace, name), 20, "no worker")
    errors = []

    def syncs():
        try:
            for n in range(8):
                worker_sync(url, "640000004", fake_cookie("640000004", f"rotated-{n}"))
        except AssertionError as e:  # reported below
            errors.append(e)
    t = threading.Thread(target=syncs)
    t.start()
    for n in range(1, 6):
        admin.patch_account("640000004", airbnb_cookie=fake_cookie("640000004", f"admin-{n}"))
    t.join(timeout=300)
    assert not errors, errors
    assert generation(pg, url, "640000004") == 6
    sentinel(admin, cluster, namespace, "900000004")
    # Whatever interleaving of rolls the operator saw, the worker ends on the last
    # admin generation, and there are no more updates than admin changes.
    want = run_cli("plan", "-o", "json", env={"DATABASE_URL": url, "OPERATOR_NAMESPACE": namespace,
                                               "KUBECONFIG": cluster.kubeconfig, "RULES_DIR": ROOT / "lua" / "rules"})
    assert want.returncode == 0, want.stdout + want.stderr
    updates = [a for a, _ in audit_actions(pg, url, "640000004") if a == "update"]
    assert 1 <= len(updates) <= 5
