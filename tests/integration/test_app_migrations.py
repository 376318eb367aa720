"""The operator's migrations next to sync-airbnb's own (issue 15), with the app's real
Alembic (../shared/apps/sync-airbnb, see app_harness.py).

sync-airbnb's first migration creates airbnb.accounts without IF NOT EXISTS, so the
operator must never create it ahead of the app: by default `migrate up` applies the
operator's own objects, then waits for the table and attaches its triggers once the
app's migrations created it. Both install orders are tested.

What does not run here: the app's first migration also runs CREATE EXTENSION
timescaledb and creates three hypertables; Debian's PostgreSQL has no TimescaleDB
package, so `alembic upgrade head` on an empty database fails on that extension (the
test asserts exactly that, and that nothing of the operator is in its way). The
accounts part of that migration is run from Alembic's own rendering of it
(`alembic upgrade c8fc3d1477cb --sql`), then `alembic stamp c8fc3d1477cb` and the real
`alembic upgrade head` for the app's later migrations (soft delete, dropping
x_airbnb_client_trace_id), which run for real against the table with the operator's
triggers on it.
"""

from __future__ import annotations

import os
import subprocess

from app_harness import alembic, first_migration_accounts_sql
from operator_harness import Operator, binary, run_cli, wait_for

APP_COLUMNS = ("account_id character varying NO, customer_id uuid YES, airbnb_cookie text NO, "
               "x_client_version character varying NO, user_agent text NO, is_active boolean NO, "
               "last_sync_at timestamp with time zone YES, created_at timestamp with time zone NO, "
               "updated_at timestamp with time zone NO, deleted_at timestamp with time zone YES")
ALL_MIGRATIONS = ["001_operator_schema", "002_audit_log", "003_accounts_table", "004_accounts_notify",
                  "005_credentials_generation", "006_rollout",
                  "007_worker_status", "008_settled"]
TRIGGERS = "sync_airbnb_operator_credentials,sync_airbnb_operator_notify"


def scalar(pg, url, sql) -> str:
    return pg.psql(sql, url=url).stdout.strip()


def applied(pg, url) -> list[str]:
    if scalar(pg, url, "select to_regclass('sync_airbnb_operator.schema_migrations') is null") == "t":
        return []
    out = scalar(pg, url, "select string_agg(id, ',' order by id) from sync_airbnb_operator.schema_migrations")
    return out.split(",") if out else []


def accounts_table(pg, url) -> str:
    """Columns, indexes, constraints and rows of airbnb.accounts, as one string."""
    return scalar(pg, url, """
        select (select string_agg(column_name || ' ' || data_type || ' ' || is_nullable, ', '
                                  order by ordinal_position)
                from information_schema.columns where table_schema = 'airbnb' and table_name = 'accounts')
            || ' | ' || (select string_agg(indexdef, '; ' order by indexname) from pg_indexes
                         where schemaname = 'airbnb' and tablename = 'accounts')
            || ' | ' || (select coalesce(string_agg(conname || ' ' || pg_get_constraintdef(oid), '; '
                                                    order by conname), '')
                         from pg_constraint where conrelid = 'airbnb.accounts'::regclass)
            || ' | ' || (select coalesce(json_agg(a order by account_id)::text, '[]') from airbnb.accounts a)""")


def triggers(pg, url) -> str:
    return scalar(pg, url, "select coalesce(string_agg(tgname, ',' order by tgname), '') from pg_trigger "
                           "where tgrelid = 'airbnb.accounts'::regclass and not tgisinternal")


def app_first_migration_and_the_rest(pg, url):
    """What of the app's migrations runs here (see the module docstring)."""
    pg.psql("\n".join(first_migration_accounts_sql(url)), url=url)
    alembic(url, "stamp", "c8fc3d1477cb")
    alembic(url, "upgrade", "head")


def test_fresh_install_operator_first_waits_for_the_apps_migrations(pg, database_url):
    url = database_url
    env = dict(os.environ, DATABASE_URL=url, MIGRATE_WAIT_SECONDS="120", LOG_FORMAT="json")
    env.pop("MIGRATE_CREATE_ACCOUNTS_TABLE", None)
    job = subprocess.Popen([binary(), "migrate", "up"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        # The operator's own objects at once; then it waits, without creating the app's table.
        wait_for(lambda: applied(pg, url) == ALL_MIGRATIONS[:2], 20, lambda: applied(pg, url))
        check = run_cli("migrate", "check", env={"DATABASE_URL": url})
        assert check.returncode == 3, check.stdout + check.stderr
        assert "waiting for the accounts table airbnb.accounts: sync-airbnb's migrations (alembic upgrade " \
               "head) have not created it yet" in check.stdout
        assert scalar(pg, url, "select to_regclass('airbnb.accounts') is null") == "t"
        assert job.poll() is None, "migrate up must wait, not exit"

        # The app's full Alembic on this database stops at TimescaleDB, which Debian does
        # not package, and at nothing of the operator's.
        p = alembic(url, "upgrade", "head", check=False)
        assert p.returncode != 0
        assert 'extension "timescaledb" is not available' in p.stderr, p.stderr[-2000:]
        assert "already exists" not in p.stderr
        assert job.poll() is None

        # The app's accounts table as its first migration creates it, then its later
        # migrations for real: the waiting runner attaches the triggers and finishes.
        app_first_migration_and_the_rest(pg, url)
        out, _ = job.communicate(timeout=60)
        assert job.returncode == 0, out
        assert "waiting for sync-airbnb's migrations to create the accounts table" in out
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert applied(pg, url) == ALL_MIGRATIONS
    assert triggers(pg, url) == TRIGGERS
    assert accounts_table(pg, url).startswith(APP_COLUMNS + " | ")
    assert alembic(url, "current").stdout.split()[0] == "caf75040fccc"
    assert run_cli("migrate", "check", env={"DATABASE_URL": url}).returncode == 0


def test_existing_install_app_first_is_adopted_untouched(pg, database_url):
    url = database_url
    app_first_migration_and_the_rest(pg, url)
    pg.psql("insert into airbnb.accounts (account_id, airbnb_cookie, x_client_version, user_agent, is_active)"
            " values ('310316675', 'SECRET-cookie-zq', 'SECRET-xcv-zq', 'SECRET-ua-zq', true)", url=url)
    before = accounts_table(pg, url)
    assert before.startswith(APP_COLUMNS + " | ")

    p = run_cli("migrate", "up", env={"DATABASE_URL": url})
    assert p.returncode == 0, p.stderr
    assert applied(pg, url) == ALL_MIGRATIONS
    assert accounts_table(pg, url) == before
    assert triggers(pg, url) == TRIGGERS
    # The app's own history is where it was: a later `alembic upgrade head` has nothing to do.
    alembic(url, "upgrade", "head")
    assert alembic(url, "current").stdout.split()[0] == "caf75040fccc"
    assert accounts_table(pg, url) == before


def test_without_the_table_migrate_up_says_so_and_the_flag_is_what_would_clash(pg, database_url):
    url = database_url
    p = run_cli("migrate", "up", env={"DATABASE_URL": url})
    assert p.returncode == 4, p.stderr
    assert "migrate up: waiting for the accounts table airbnb.accounts" in p.stderr
    assert "MIGRATE_CREATE_ACCOUNTS_TABLE=true creates it instead, for a demo or tests only" in p.stderr
    assert applied(pg, url) == ALL_MIGRATIONS[:2]

    # Told to, the operator creates a compatible table (demo, tests)...
    run_cli("migrate", "up", env={"DATABASE_URL": url, "MIGRATE_CREATE_ACCOUNTS_TABLE": "true"}, check=True)
    assert applied(pg, url) == ALL_MIGRATIONS
    # ...which is exactly what the app's own first migration then trips over.
    stmts = first_migration_accounts_sql(url)
    create = next(s for s in stmts if s.startswith("CREATE TABLE airbnb.accounts"))
    r = pg.psql(create, url=url, check=False)
    assert r.returncode != 0 and 'relation "accounts" already exists' in r.stderr


def test_operator_run_is_not_ready_while_it_waits_for_the_apps_table(pg, database_url, kubeconfig, namespace):
    url = database_url
    assert run_cli("migrate", "up", env={"DATABASE_URL": url}).returncode == 4
    op = Operator.start(database_url=url, kubeconfig=kubeconfig, namespace=namespace)
    try:
        def waiting():
            # /readyz serves a code; the log says it in words.
            r = op.readyz()
            return r["ready"] is False and r["checks"]["schema"]["reason"] == "waiting_for_accounts_table" \
                and "waiting for the accounts table airbnb.accounts" in op.raw_log()
        wait_for(waiting, 20, lambda: op.readyz())
        app_first_migration_and_the_rest(pg, url)
        run_cli("migrate", "up", env={"DATABASE_URL": url}, check=True)
        op.wait_ready(timeout=20)
    finally:
        assert op.stop() == 0, op.raw_log()[-3000:]
