"""`run` started before the migrations waits (readiness false, a clear log line),
neither crashing nor racing the migration Job, and reconciles once they land."""

from operator_harness import Operator, run_cli, wait_for


def test_run_waits_for_migrations_then_reconciles(pg, cluster, kubeconfig, namespace, database_url):
    op = Operator.start(database_url=database_url, kubeconfig=kubeconfig, namespace=namespace)
    try:
        wait_for(lambda: any("waiting for the database migrations" in r.get("msg", "") for r in op.logs()), 20,
                 op.raw_log)
        ready = op.readyz()
        assert ready["ready"] is False
        assert ready["checks"]["schema"]["at_head"] is False
        assert ready["checks"]["database"]["ok"] is True
        assert op.proc.poll() is None, "the operator must keep waiting, not exit"

        run_cli("migrate", "up", env={"DATABASE_URL": database_url, "MIGRATE_CREATE_ACCOUNTS_TABLE": "true"},
                check=True)
        pg.psql("insert into airbnb.accounts(account_id, airbnb_cookie, x_client_version, user_agent, is_active)"
                " values ('w1', 'cookie-w1-0000', 'v1', 'ua', true)", url=database_url)
        op.wait_ready(timeout=20)

        def names():
            return [d["metadata"]["name"] for d in cluster.kubectl_json("get", "deployments", namespace=namespace)["items"]]

        wait_for(lambda: names() == ["sync-airbnb-worker-w1"], 20, names)
    finally:
        assert op.stop() == 0, op.raw_log()[-3000:]


def test_run_with_unreachable_database_stays_up_not_ready(kubeconfig, namespace):
    op = Operator.start(database_url="postgresql://nobody@127.0.0.1:1/none?connect_timeout=2",
                        kubeconfig=kubeconfig, namespace=namespace)
    try:
        wait_for(lambda: op.readyz()["checks"]["database"]["error"], 20, op.raw_log)
        r = op.readyz()
        assert r["ready"] is False and r["checks"]["database"]["ok"] is False
        # a short code in /readyz (issue 16); the text is in the log
        assert r["checks"]["database"]["error"] == "unavailable", r
        assert any("database unavailable" in x.get("msg", "") and "127.0.0.1" in x.get("error", "") for x in op.logs())
    finally:
        assert op.stop() == 0, op.raw_log()[-3000:]


def test_bad_database_url_is_a_clear_usage_error(kubeconfig):
    p = run_cli("run", env={"DATABASE_URL": "not a url", "KUBECONFIG": kubeconfig})
    assert p.returncode == 2
    assert "DATABASE_URL: malformed" in p.stderr
    p = run_cli("migrate", "up", env={"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"})
    assert p.returncode == 1
    assert p.stderr.strip(), "a clear error line"
