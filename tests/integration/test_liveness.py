"""Liveness (issue 16, DESIGN.md §5.9): a wedged operator fails /healthz and gives up
its Lease.

The leader's loop is frozen the way a silent database freezes it: the PostgreSQL
backend serving it is stopped (SIGSTOP), so the next query waits with the connection
open and the kernel acknowledging what libpq sends. The loop's heartbeat goes stale,
/healthz answers 503, the election thread stops renewing the Lease, and the standby
takes over within LOOP_STALL_SECONDS + LEASE_DURATION_SECONDS; it then does the work
(a new account gets its worker, created by the standby alone). The stopped query is
bounded (DB_STATEMENT_TIMEOUT_MS + 5 s): the frozen operator comes back as a standby.
"""

from __future__ import annotations

import os
import signal
import time

from operator_harness import wait_for

LEASE = {"LEASE_DURATION_SECONDS": "4", "RENEW_DEADLINE_SECONDS": "3", "RETRY_PERIOD_SECONDS": "1",
         "LOOP_STALL_SECONDS": "2", "RESYNC_INTERVAL_SECONDS": "1"}


def add_accounts(pg, url, ids):
    values = ",".join(f"('{i}', 'cookie-{i}-zz', 'v1', 'ua', true)" for i in ids)
    pg.psql("insert into airbnb.accounts(account_id, airbnb_cookie, x_client_version, user_agent, is_active)"
            f" values {values}", url=url)


def deployments(cluster, namespace):
    return {d["metadata"]["name"]: d for d in cluster.kubectl_json("get", "deployments", namespace=namespace)["items"]}


def holder(cluster, namespace):
    p = cluster.kubectl("get", "lease", "sync-airbnb-operator", "-o", "jsonpath={.spec.holderIdentity}",
                        namespace=namespace, check=False)
    return p.stdout.strip() if p.returncode == 0 else ""


def is_leader(op):
    try:
        status, body = op.get("/readyz")
        return '"is_leader":true' in body
    except OSError:
        return False


def with_app_name(url: str, name: str) -> str:
    return url + ("&" if "?" in url else "?") + f"application_name={name}"


def test_frozen_leader_gives_up_its_lease(pg, cluster, namespace, migrated_db, operator_factory):
    url = migrated_db
    add_accounts(pg, url, ["f1", "f2"])
    a = operator_factory({**LEASE, "POD_NAME": "op-frozen", "DB_STATEMENT_TIMEOUT_MS": "20000"},
                         database_url=with_app_name(url, "sao-frozen"))
    wait_for(lambda: is_leader(a), 20, lambda: a.get("/readyz")[1])
    wait_for(lambda: {"sync-airbnb-worker-f1", "sync-airbnb-worker-f2"} <= set(deployments(cluster, namespace)), 30,
             lambda: sorted(deployments(cluster, namespace)))
    b = operator_factory({**LEASE, "POD_NAME": "op-live"})
    b.wait_ready()
    assert holder(cluster, namespace) == "op-frozen" and not is_leader(b)

    pids = [int(p) for p in pg.psql("select pid from pg_stat_activity where application_name = 'sao-frozen'",
                                    url=url).stdout.split()]
    # the reconcile loop's connection and the worker-status writer's (its own thread)
    assert 1 <= len(pids) <= 2, pids
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    t_freeze = time.monotonic()
    try:
        # the next pass (resync every second) blocks on the stopped backend
        wait_for(lambda: a.get("/healthz")[0] == 503, 10, lambda: a.get("/healthz"))
        t_stale = time.monotonic()
        assert a.proc.poll() is None
        assert a.get("/readyz")[0] == 503
        wait_for(lambda: holder(cluster, namespace) == "op-live", 15,
                 lambda: (holder(cluster, namespace), b.get("/readyz")[1]))
        t_takeover = time.monotonic()
        wait_for(lambda: is_leader(b), 5, lambda: b.get("/readyz")[1])
        stall, lease = int(LEASE["LOOP_STALL_SECONDS"]), int(LEASE["LEASE_DURATION_SECONDS"])
        print(f"\n[frozen leader] /healthz 503 after {t_stale - t_freeze:.1f}s; standby leader "
              f"{t_takeover - t_freeze:.1f}s after the freeze ({t_takeover - t_stale:.1f}s after the stall was seen)")
        # within the lease time of the stall being noticed (plus one retry period of slack)
        assert t_takeover - t_stale <= lease + stall + 1, (t_stale - t_freeze, t_takeover - t_freeze)
        assert any(r.get("msg") == "leader election: the main loop is stalled; not renewing the lease"
                   for r in a.logs())

        # the new leader does the work, alone
        add_accounts(pg, url, ["f3"])
        wait_for(lambda: "sync-airbnb-worker-f3" in deployments(cluster, namespace), 20,
                 lambda: sorted(deployments(cluster, namespace)))
        actors = pg.psql("select actor from sync_airbnb_operator.audit_log where account_id = 'f3'"
                         " and action = 'create'", url=url).stdout.split()
        assert actors == ["op-live"], actors
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)

    # the frozen one comes back live, as a standby (its query was bounded or answered)
    wait_for(lambda: a.get("/healthz")[0] == 200, 40, lambda: a.raw_log()[-2000:])
    wait_for(lambda: holder(cluster, namespace) == "op-live" and not is_leader(a), 10)
    assert not [r for r in a.logs() if r.get("msg") == "create" and r.get("account_id") == "f3"]


def probe(port: int, source: str = "127.0.0.2", family=None, host: str = "127.0.0.1", timeout: float = 2):
    """GET /healthz from a given source address (a kubelet probes from the node's address)."""
    import socket
    fam = family or socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        if fam == socket.AF_INET:
            s.bind((source, 0))
        s.connect((host, port))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        return int(data.split()[1]) if data.startswith(b"HTTP/") else None
    except OSError:
        return None
    finally:
        s.close()


def test_idle_connections_do_not_fail_healthz(operator_factory):
    """70 idle connections (more than the old global limit of 64) from one address: the
    probe from another address still gets 200 at once; the idle ones are closed after a
    few seconds, so the same address is served again; the default HEALTH_ADDR (":port")
    listens on IPv6 and IPv4 alike."""
    import socket
    op = operator_factory({"HEALTH_ADDR": ":0"})
    port = op.port
    idle = []
    try:
        for _ in range(70):
            c = socket.create_connection(("127.0.0.1", port), timeout=2)
            idle.append(c)
        t0 = time.monotonic()
        assert probe(port) == 200
        assert time.monotonic() - t0 < 1.5
        if socket.has_ipv6:
            assert probe(port, family=socket.AF_INET6, host="::1") == 200
        # idle connections are closed (5 s), so the same address is served again
        wait_for(lambda: probe(port, source="127.0.0.1") == 200, 15)
    finally:
        for c in idle:
            c.close()


def test_notify_star_is_rate_limited(pg, migrated_db, operator_factory):
    """Any database role can NOTIFY '*' (issue 16): a loop of them starts at most one
    full pass per 5 s, the rest are folded into the next one."""
    op = operator_factory({"RESYNC_INTERVAL_SECONDS": "3600"})
    op.wait_ready()

    def full_passes():
        return op.metrics().get('sync_airbnb_operator_reconcile_passes_total{kind="full"}', 0)

    before = full_passes()
    t0 = time.monotonic()
    pg.psql("select pg_notify('sync_airbnb_accounts', '*') from generate_series(1, 200)", url=migrated_db)
    for _ in range(20):
        pg.psql("notify sync_airbnb_accounts, '*'", url=migrated_db)
    wait_for(lambda: op.metrics().get("sync_airbnb_operator_full_notifications_deferred_total", 0) >= 1, 10)
    elapsed = time.monotonic() - t0
    # one at once, then at most one per 5 s: the deferred one lands after the window
    wait_for(lambda: full_passes() >= before + 2, 10, lambda: op.get("/metrics")[1])
    # (+1: a pass start-up had still queued)
    assert full_passes() <= before + 3 + int(elapsed // 5), (before, full_passes(), elapsed)
    assert op.metrics()["sync_airbnb_operator_notifications_total"] >= 21
