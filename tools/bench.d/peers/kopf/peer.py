"""Benchmark fixture, not a product: the sync-airbnb worker operator written as a
competent Kopf user would, for tools/bench's side-by-side figures. One worker
Deployment per active account of the accounts table, the same object as
sync-airbnb-operator's rules render, rolled when the credentials fingerprint
changes, deleted when the account is deactivated or soft-deleted.

Kopf handles Kubernetes resources; the accounts live in PostgreSQL, so the
database side runs as background tasks started by @kopf.on.startup, feeding
an asyncio work queue drained by CONCURRENCY workers that call the API
through the official kubernetes client in threads (Kopf brings no client).

Two variants (PEER_VARIANT):
  seed  the seed's design: every POLL_SECONDS (30) enqueue every account of
        the table; each reconcile GETs the live Deployment.
  best  LISTEN sync_airbnb_accounts (the operator's NOTIFY trigger) into the
        queue; Deployments from an in-memory cache kept by @kopf.on.event
        (Kopf's watch: list, then watch), filled by one LIST at start; a
        full pass every RESYNC_INTERVAL_SECONDS enqueues every account and
        every cached worker.

Run: kopf run --standalone --namespace NS peer.py, with DATABASE_URL,
KUBECONFIG, NAMESPACE, WORKER_IMAGE, CONCURRENCY (default 16; also the
client's connection pool size, raised from urllib3's 4 the way tools/bench
raises the operator's client limit), ACCOUNTS_TABLE.
"""

import asyncio
import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import kopf
import psycopg
from kubernetes import client, config

NS = os.environ.get("NAMESPACE", "sync-airbnb")
VARIANT = os.environ.get("PEER_VARIANT", "best")
IMAGE = os.environ.get("WORKER_IMAGE", "sync-airbnb:0.1.0")
TABLE = os.environ.get("ACCOUNTS_TABLE", "airbnb.accounts")
CONCURRENCY = int(os.environ.get("CONCURRENCY", "16"))
PERIOD = float(os.environ.get("POLL_SECONDS" if VARIANT == "seed" else "RESYNC_INTERVAL_SECONDS", "30"))
PREFIX = "sync-airbnb-worker-"
APP = "sync-airbnb-worker"
FP = "sync-airbnb.io/credentials-fingerprint"
QUERY = ("SELECT a.is_active AND a.deleted_at IS NULL, a.x_client_version, a.user_agent,"
         " coalesce(g.generation, 0)::text FROM " + TABLE + " a LEFT JOIN"
         " sync_airbnb_operator.credentials_generation g"
         " ON g.account_key = sha256(convert_to(a.account_id::text, 'UTF8')) WHERE a.account_id = %s")

# name -> credentials fingerprint of the live Deployment (best variant only)
CACHE: dict[str, str] = {}
state: dict = {}


def fingerprint(account_id: str, generation: str, client_version: str, user_agent: str) -> str:
    """lua/rules/fingerprint.lua's digest: length-prefixed pieces."""
    pieces = ["sync-airbnb/credentials/v2", account_id, generation,
              "x_client_version", client_version, "user_agent", user_agent]
    return hashlib.sha256("".join(f"{len(p.encode())}:{p}," for p in pieces).encode()).hexdigest()


def deployment(account_id: str, fp: str) -> dict:
    """The object lua/rules/deployment.lua renders (the bench's ids are valid
    DNS labels, so the name and labels are the plain forms)."""
    name = PREFIX + account_id

    def labels():
        return {"app": APP, "account-id": account_id, "app.kubernetes.io/name": APP,
                "app.kubernetes.io/instance": name, "app.kubernetes.io/managed-by": "sync-airbnb-operator",
                "app.kubernetes.io/part-of": "sync-airbnb"}

    def probe(path, period, timeout, failures):
        return {"httpGet": {"path": path, "port": 8000}, "periodSeconds": period,
                "timeoutSeconds": timeout, "failureThreshold": failures}

    def secret(name_, secret_, key):
        return {"name": name_, "valueFrom": {"secretKeyRef": {"name": secret_, "key": key}}}

    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS, "labels": labels(),
                     "annotations": {"sync-airbnb.io/account-id": account_id}},
        "spec": {
            "replicas": 1, "strategy": {"type": "Recreate"}, "revisionHistoryLimit": 2,
            "selector": {"matchLabels": {"app": APP, "account-id": account_id}},
            "template": {
                "metadata": {"labels": labels(), "annotations": {FP: fp}},
                "spec": {
                    "terminationGracePeriodSeconds": 330, "automountServiceAccountToken": False,
                    "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "worker", "image": IMAGE,
                        "command": ["uvicorn", "sync_airbnb.main:app", "--host", "0.0.0.0", "--port", "8000"],
                        "env": [{"name": "MODE", "value": "worker"}, {"name": "ACCOUNT_ID", "value": account_id},
                                secret("DATABASE_URL", "sync-airbnb-db", "url"),
                                secret("AIRBNB_API_KEY", "sync-airbnb-api", "api-key"),
                                {"name": "AIRBNB_COOKIE", "value": "unused-legacy-placeholder"},
                                {"name": "X_CLIENT_VERSION", "value": "unused-legacy-placeholder"},
                                {"name": "PGAPPNAME", "value": "sync-airbnb-worker"}],
                        "ports": [{"name": "http", "containerPort": 8000}],
                        "resources": {"requests": {"memory": "512Mi", "cpu": "250m"},
                                      "limits": {"memory": "1Gi", "cpu": "500m"}},
                        "startupProbe": probe("/health", 5, 5, 24),
                        "readinessProbe": probe("/health/ready", 10, 5, 3),
                        "livenessProbe": probe("/health", 30, 5, 3),
                        "securityContext": {"allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]}},
                    }],
                },
            },
        },
    }


if VARIANT != "seed":
    @kopf.on.event("apps", "v1", "deployments", labels={"app": APP})
    async def deployment_event(type, name, spec, **_):  # noqa: A002 - kopf's keyword
        if type == "DELETED":
            CACHE.pop(name, None)
        else:
            CACHE[name] = ((spec.get("template") or {}).get("metadata") or {}).get("annotations", {}).get(FP, "")


def live_fingerprint(apps: client.AppsV1Api, name: str):
    """The live Deployment's fingerprint, None when there is none."""
    if VARIANT != "seed":
        return CACHE.get(name)
    try:
        d = apps.read_namespaced_deployment(name, NS)
    except client.ApiException as e:
        if e.status == 404:
            return None
        raise
    return ((d.spec.template.metadata.annotations or {}).get(FP, ""))


def reconcile(db: psycopg.Connection, apps: client.AppsV1Api, account_id: str) -> None:
    row = db.execute(QUERY, (account_id,)).fetchone()
    name = PREFIX + account_id
    live = live_fingerprint(apps, name)
    if row and row[0]:
        fp = fingerprint(account_id, row[3], row[1], row[2])
        if live is None:
            try:
                apps.create_namespaced_deployment(NS, deployment(account_id, fp), field_manager="sync-airbnb-peer-kopf")
                live = fp
            except client.ApiException as e:
                if e.status != 409:
                    raise
                # there already (the cache is behind): compare with the live one
                d = apps.read_namespaced_deployment(name, NS)
                live = (d.spec.template.metadata.annotations or {}).get(FP, "")
            if VARIANT != "seed":
                CACHE[name] = live  # until the watch confirms it: no second create
        if live != fp:
            apps.patch_namespaced_deployment(name, NS, {"spec": {"template": {"metadata": {"annotations": {FP: fp}}}}},
                                             field_manager="sync-airbnb-peer-kopf")
            if VARIANT != "seed":
                CACHE[name] = fp
    elif live is not None:
        try:
            apps.delete_namespaced_deployment(name, NS, propagation_policy="Background")
        except client.ApiException as e:
            if e.status != 404:
                raise
        CACHE.pop(name, None)


async def worker(queue: asyncio.Queue, pending: set, logger) -> None:
    """One of CONCURRENCY workers; each has its own database connection and
    runs the blocking client in a thread."""
    db = await asyncio.to_thread(psycopg.connect, os.environ["DATABASE_URL"], autocommit=True)
    apps = state["apps"]
    while True:
        account_id = await queue.get()
        pending.discard(account_id)
        try:
            await asyncio.to_thread(reconcile, db, apps, account_id)
        except Exception as e:  # noqa: BLE001 - retried, never a delete on error
            logger.warning(f"reconcile {account_id}: {e}; retrying")
            await asyncio.sleep(1)
            enqueue(queue, pending, account_id)
        finally:
            queue.task_done()


def enqueue(queue: asyncio.Queue, pending: set, account_id: str) -> None:
    """A work queue with de-duplication, as client-go's."""
    if account_id not in pending:
        pending.add(account_id)
        queue.put_nowait(account_id)


async def full_pass(queue: asyncio.Queue, pending: set, logger) -> None:
    async with await psycopg.AsyncConnection.connect(os.environ["DATABASE_URL"], autocommit=True) as db:
        while True:
            seen = set()
            async for (account_id,) in await db.execute("SELECT account_id FROM " + TABLE):
                seen.add(account_id)
                enqueue(queue, pending, account_id)
            for name in list(CACHE):
                if name[len(PREFIX):] not in seen:
                    enqueue(queue, pending, name[len(PREFIX):])
            await asyncio.sleep(PERIOD)


async def listen(queue: asyncio.Queue, pending: set, logger) -> None:
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(os.environ["DATABASE_URL"], autocommit=True) as db:
                await db.execute("LISTEN sync_airbnb_accounts")
                async for n in db.notifies():
                    if n.payload != "*":
                        enqueue(queue, pending, n.payload)
        except psycopg.OperationalError as e:
            logger.warning(f"listen: {e}; reconnecting")
            await asyncio.sleep(1)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, logger, **_):
    settings.posting.enabled = False  # no Kopf Events for the Deployments it watches
    logging.getLogger("kopf").setLevel(logging.WARNING)
    # asyncio.to_thread's default pool is min(32, cores + 4) threads: 6 here.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(CONCURRENCY + 4))
    config.load_kube_config()
    conf = client.Configuration.get_default_copy()
    conf.connection_pool_maxsize = CONCURRENCY + 4
    apps = client.AppsV1Api(client.ApiClient(conf))
    state["apps"] = apps
    if VARIANT != "seed":
        lst = await asyncio.to_thread(apps.list_namespaced_deployment, NS, label_selector=f"app={APP}")
        for d in lst.items:
            CACHE[d.metadata.name] = (d.spec.template.metadata.annotations or {}).get(FP, "")
    queue: asyncio.Queue = asyncio.Queue()
    pending: set = set()
    tasks = [asyncio.create_task(worker(queue, pending, logger)) for _ in range(CONCURRENCY)]
    if VARIANT != "seed":
        tasks.append(asyncio.create_task(listen(queue, pending, logger)))
    tasks.append(asyncio.create_task(full_pass(queue, pending, logger)))
    state["tasks"] = tasks  # kept for the process's life


@kopf.on.cleanup()
async def cleanup(**_):
    for t in state.get("tasks", []):
        t.cancel()
