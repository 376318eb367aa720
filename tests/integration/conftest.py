"""pytest fixtures: a real control plane and PostgreSQL, one per test session, with a
fresh namespace and a fresh database per test. See harness.py for the details.

Session fixtures
  cluster      harness.Cluster  .kubeconfig (path), .kubectl_path, .bin_dir, .env (dict
               with KUBECONFIG/PATH for subprocesses), .server, .kubectl(*args, namespace=,
               token=, input=, check=), .kubectl_json(...)
  kubeconfig   str              path of the admin kubeconfig (token auth)
  kubectl      callable         cluster.kubectl: kubectl("get", "pods", namespace=ns)
  pg           harness.Postgres .url (DATABASE_URL of database sync_airbnb), .admin_url,
               .psql(sql, url=), .create_database(name), .drop_database(name), .psql_path
Per-test fixtures
  namespace    str              a new namespace (its 'default' ServiceAccount exists);
                                deleted after the test
  database_url str              URL of a new, empty database; dropped after the test

Order: tests run in file order, except those marked `@pytest.mark.last` (or a module
with `pytestmark = pytest.mark.last`), which run after all the others, in their own
order (the heavy ones that stop a component).

Environment: CLUSTER_DIR / PG_DIR select (and reuse) running instances; KEEP_CLUSTER=1
keeps what this session started running afterwards.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Cluster, Postgres, unique_name  # noqa: E402

KEEP = os.environ.get("KEEP_CLUSTER", "") not in ("", "0", "false")


def pytest_configure(config):
    config.addinivalue_line("markers", "last: run after every other test of the session (conftest.py)")


def pytest_collection_modifyitems(session, config, items):
    """Moves the tests marked `last` behind the others, keeping both groups' order."""
    items[:] = [i for i in items if i.get_closest_marker("last") is None] + [
        i for i in items if i.get_closest_marker("last") is not None
    ]


@pytest.fixture(scope="session")
def cluster(request):
    # Show `tools/cluster up` live: the first run compiles Kubernetes for a long time.
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        c = Cluster.ensure()
    yield c
    if c.started_here and not KEEP:
        c.down()


@pytest.fixture(scope="session")
def kubeconfig(cluster) -> str:
    return cluster.kubeconfig


@pytest.fixture(scope="session")
def kubectl(cluster):
    return cluster.kubectl


@pytest.fixture(scope="session")
def pg():
    p = Postgres.ensure()
    yield p
    if p.started_here and not KEEP:
        p.down()


@pytest.fixture
def namespace(cluster, request) -> str:
    name = unique_name("t", request.node.name.replace("test_", "", 1), maxlen=50)
    cluster.create_namespace(name)
    yield name
    cluster.delete_namespace(name)


@pytest.fixture
def database_url(pg, request) -> str:
    name = unique_name("t", request.node.name.replace("test_", "", 1), maxlen=50).replace("-", "_")
    url = pg.create_database(name)
    yield url
    pg.drop_database(name)


# ---- the operator ----------------------------------------------------------------

from operator_harness import Operator, run_cli  # noqa: E402


@pytest.fixture
def migrated_db(database_url) -> str:
    """A fresh database with the operator's migrations applied (and the accounts table,
    created by the operator because this test tells it to: MIGRATE_CREATE_ACCOUNTS_TABLE)."""
    run_cli("migrate", "up", env={"DATABASE_URL": database_url, "MIGRATE_CREATE_ACCOUNTS_TABLE": "true"},
            check=True)
    return database_url


@pytest.fixture
def operator_factory(kubeconfig, namespace, migrated_db):
    """start(**env) runs `sync-airbnb-operator run` on this test's namespace and
    database; every operator started is stopped (SIGTERM) after the test, and a
    non-zero exit fails the test."""
    started: list[Operator] = []

    def start(env: dict | None = None, database_url: str | None = None, namespace_: str | None = None):
        op = Operator.start(database_url=database_url or migrated_db, kubeconfig=kubeconfig,
                            namespace=namespace_ or namespace, env=env)
        started.append(op)
        return op

    yield start
    codes = [op.stop() for op in started]
    for op, code in zip(started, codes):
        assert code == 0, f"operator exited {code}:\n{op.raw_log()[-4000:]}"
