"""The seed's reference design, for side-by-side figures: poll the accounts table
every POLL_SECONDS, GET each active account's Deployment, create it when missing,
delete the Deployments of inactive accounts. Official `kubernetes` client and
psycopg, as a kopf/kubebuilder-era Python operator would be written.

    DATABASE_URL=... KUBECONFIG=... NAMESPACE=... POLL_SECONDS=30 python baseline.py
"""

import os
import signal
import sys
import time

import psycopg
from kubernetes import client, config
from kubernetes.client.rest import ApiException

NS = os.environ["NAMESPACE"]
POLL = float(os.environ.get("POLL_SECONDS", "30"))
IMAGE = os.environ.get("WORKER_IMAGE", "sync-airbnb:latest")
running = True


def stop(*_):
    global running
    running = False


def deployment(account_id: str) -> dict:
    labels = {"app": "sync-airbnb-worker", "account-id": account_id}
    probe = lambda path, delay, period: {  # noqa: E731
        "httpGet": {"path": path, "port": 8000}, "initialDelaySeconds": delay,
        "periodSeconds": period, "timeoutSeconds": 5}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": f"sync-airbnb-worker-{account_id}", "namespace": NS, "labels": labels},
        "spec": {
            "replicas": 1, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{
                "name": "worker", "image": IMAGE,
                "env": [{"name": "MODE", "value": "worker"}, {"name": "ACCOUNT_ID", "value": account_id},
                        {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "sync-airbnb-db", "key": "url"}}}],
                "resources": {"requests": {"memory": "512Mi", "cpu": "250m"},
                              "limits": {"memory": "1Gi", "cpu": "500m"}},
                "readinessProbe": probe("/health/ready", 10, 10),
                "livenessProbe": probe("/health", 30, 30)}]}}}}


def main() -> None:
    signal.signal(signal.SIGTERM, stop)
    config.load_kube_config()
    apps = client.AppsV1Api()
    db = psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)
    while running:
        started = time.monotonic()
        rows = db.execute("SELECT account_id, is_active AND deleted_at IS NULL FROM airbnb.accounts").fetchall()
        for account_id, active in rows:
            name = f"sync-airbnb-worker-{account_id}"
            try:
                apps.read_namespaced_deployment(name, NS)
                exists = True
            except ApiException as e:
                if e.status != 404:
                    print(f"GET {name}: {e.status}", file=sys.stderr)
                    continue
                exists = False
            if active and not exists:
                apps.create_namespaced_deployment(NS, deployment(account_id))
            elif not active and exists:
                apps.delete_namespaced_deployment(name, NS)
        print(f"poll done: {len(rows)} accounts in {time.monotonic() - started:.2f}s", flush=True)
        while running and time.monotonic() - started < POLL:
            time.sleep(0.05)


if __name__ == "__main__":
    main()
