"""Smoke: the operator creates a worker for an active account and deletes it when the
account is deactivated (another active account keeps the desired set non-empty)."""

from operator_harness import wait_for



def test_create_then_delete(pg, kubectl, cluster, namespace, migrated_db, operator_factory):
    pg.psql("insert into airbnb.accounts(account_id, airbnb_cookie, x_client_version, user_agent, is_active)"
            " values ('keep', 'c-keep-0001', 'v1', 'ua', true), ('1001', 'c-1001-0001', 'v1', 'ua', true)",
            url=migrated_db)
    op = operator_factory()
    op.wait_ready()

    def names():
        items = cluster.kubectl_json("get", "deployments", namespace=namespace)["items"]
        return sorted(d["metadata"]["name"] for d in items)

    wait_for(lambda: names() == ["sync-airbnb-worker-1001", "sync-airbnb-worker-keep"], 20, names)
    pg.psql("update airbnb.accounts set is_active = false where account_id = '1001'", url=migrated_db)
    wait_for(lambda: names() == ["sync-airbnb-worker-keep"], 10, names)
    rows = pg.psql("select action, account_id from sync_airbnb_operator.audit_log order by id",
                   url=migrated_db).stdout
    assert "create" in rows and "delete" in rows
