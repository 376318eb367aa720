"""kube-apiserver stopped and restarted under a running operator (issue 7).

A private control plane (tools/cluster with its own CLUSTER_DIR, ~15 s to start from
the cached binaries) so that stopping its apiserver disturbs no other test; it is
marked `last` (conftest.py) so that, in one session, it runs after the others anyway
(it is the heaviest). The apiserver is stopped by its pid and started again with the exact
command line it had (read from /proc), logging to the same file and recording its
new pid where `tools/cluster down` looks for it; etcd keeps the state.

While it is down an account is activated and another deactivated. After it returns
the operator must re-establish its watch (/readyz kubernetes), lead again, and do
each of those two actions exactly once: one Deployment and one 'create' audit row
for the new account, one 'delete' for the old one, nothing else touched. Recovery
times are printed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from harness import Cluster
from operator_harness import Operator, wait_for
from test_hardening import LEASE_ENV, add_accounts, audit, deployments, is_leader, uids, worker

pytestmark = pytest.mark.last

DOWN_SECONDS = 12  # longer than LEASE_DURATION_SECONDS: the operator loses the lease too


@pytest.fixture(scope="module")
def private_cluster():
    d = tempfile.mkdtemp(prefix="sao-apiserver-restart-", dir="/tmp")
    c = Cluster.ensure(d)
    yield c
    c.down()
    shutil.rmtree(d, ignore_errors=True)


def apiserver_pid(c: Cluster) -> int:
    return int((c.dir / "pids" / "kube-apiserver.pid").read_text().strip())


def stop_apiserver(c: Cluster) -> list[str]:
    """Stops the apiserver: SIGTERM, and SIGKILL if it still runs after 3 s (its graceful
    shutdown waits up to a minute for long requests, such as watches, to end; tools/cluster
    down kills after 15 s). Returns its argv."""
    pid = apiserver_pid(c)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    argv = [a.decode() for a in argv]
    assert any(a.startswith("--secure-port=") for a in argv), argv
    assert any(str(c.dir) in a for a in argv), "not this cluster's apiserver"
    def gone() -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
        except OSError:
            return True

    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 3
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not gone():
        os.kill(pid, signal.SIGKILL)
    wait_for(gone, 10, "apiserver to exit")
    return argv


def start_apiserver(c: Cluster, argv: list[str]) -> None:
    """Starts argv detached like tools/cluster's spawn (own session, pid file, log)."""
    pidfile = c.dir / "pids" / "kube-apiserver.pid"
    logfile = c.dir / "logs" / "kube-apiserver.log"
    pidfile.unlink(missing_ok=True)
    subprocess.run(["bash", "-c",
                    'pf=$1 log=$2; shift 2; '
                    'setsid bash -c \'echo $$ >"$0"; exec "$@"\' "$pf" "$@" </dev/null >>"$log" 2>&1 &',
                    "_", str(pidfile), str(logfile), *argv], check=True)
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, "apiserver pid file")


def apiserver_ready(c: Cluster) -> bool:
    return c.kubectl("get", "--raw", "/readyz", check=False, timeout=10).stdout.strip() == "ok"


def test_apiserver_restart_recovers_without_duplicate_or_lost_action(pg, migrated_db, private_cluster):
    c = private_cluster
    url = migrated_db
    namespace = c.create_namespace(f"apiserver-restart-{os.getpid()}")
    add_accounts(pg, url, ["r1", "r2"])
    op = Operator.start(database_url=url, kubeconfig=c.kubeconfig, namespace=namespace,
                        env={**LEASE_ENV, "POD_NAME": "op-restart"})
    argv = None
    try:
        op.wait_ready()
        wait_for(lambda: is_leader(op), 20, lambda: op.get("/readyz")[1])
        wait_for(lambda: set(deployments(c, namespace)) == {worker("r1"), worker("r2")}, 30,
                 lambda: sorted(deployments(c, namespace)))
        before = uids(c, namespace)

        argv = stop_apiserver(c)
        t_down = time.monotonic()
        # The operator notices: its watch is gone and, past the renew deadline, the lease.
        wait_for(lambda: op.readyz()["checks"]["kubernetes"]["watching"] is False, 20,
                 lambda: op.get("/readyz")[1])
        wait_for(lambda: not is_leader(op), 10, lambda: op.get("/readyz")[1])
        # Changes while it is down: one account activated, one deactivated.
        add_accounts(pg, url, ["r3"])
        pg.psql("update airbnb.accounts set is_active = false where account_id = 'r2'", url=url)
        while time.monotonic() - t_down < DOWN_SECONDS:
            assert op.proc.poll() is None, op.raw_log()[-3000:]
            time.sleep(0.5)

        start_apiserver(c, argv)
        argv = None
        t_start = time.monotonic()
        wait_for(lambda: apiserver_ready(c), 120, "kube-apiserver /readyz after the restart")
        t_ready = time.monotonic()
        wait_for(lambda: (k := op.readyz()["checks"]["kubernetes"])["watching"] is True and k["synced"], 60,
                 lambda: op.get("/readyz")[1])
        t_watch = time.monotonic()
        wait_for(lambda: is_leader(op), 30, lambda: op.get("/readyz")[1])
        t_lead = time.monotonic()
        wait_for(lambda: set(deployments(c, namespace)) == {worker("r1"), worker("r3")}, 60,
                 lambda: sorted(deployments(c, namespace)))
        t_done = time.monotonic()

        rows = audit(pg, url)
        # Exactly one create per account (r3's once, though it was asked for while the
        # apiserver was away) and exactly the one delete.
        assert sorted(r[1] for r in rows if r[0] == "create") == ["r1", "r2", "r3"], rows
        assert [r[1] for r in rows if r[0] == "delete"] == ["r2"], rows
        assert uids(c, namespace)[worker("r1")] == before[worker("r1")]
        assert op.readyz()["ready"] is True
        # And it keeps working: a NOTIFY-driven change right after.
        add_accounts(pg, url, ["r4"])
        wait_for(lambda: worker("r4") in deployments(c, namespace), 20, lambda: sorted(deployments(c, namespace)))
        print(f"\n[apiserver restart] down {DOWN_SECONDS}s; apiserver ready {t_ready - t_start:.1f}s after "
              f"its start; operator watching again {t_watch - t_ready:.2f}s after that, leading "
              f"{t_lead - t_ready:.2f}s, changes made while down applied {t_done - t_ready:.2f}s after "
              f"the apiserver was ready; errors audited meanwhile: "
              f"{len([r for r in rows if r[0] == 'error'])}")
    finally:
        if argv is not None:  # the test failed while the apiserver was down
            start_apiserver(c, argv)
        code = op.stop()
        c.delete_namespace(namespace)
    assert code == 0, op.raw_log()[-3000:]
