"""Field ownership of the workers (issue 15), against the real kube-apiserver.

A create is a POST, which records its fields under an "Update" managedFields entry;
left there, a later apply never removes a field that entry owns. The operator moves
that entry's fields to its apply (core/ownership.c, like client-go's csaupgrade)
before the first update of every worker, whichever version created it. Shown here:
- a worker created the old way (a POST with the operator's field manager, the old
  template: RollingUpdate by default) moves to the new template, RollingUpdate ->
  Recreate included (an apply alone gets 422 there: rollingUpdate stays owned);
- a field the rules render and then stop rendering disappears from every live
  worker, the old one and one the operator created itself;
- the operator's own field manager keeps no Update entry.
"""

from __future__ import annotations

import json

from operator_harness import wait_for
from rules_dir import NO_SOAK, ConfigMapDir, rules_files

EXTRA = [("            replicas = 1,\n", "            replicas = 1,\n            minReadySeconds = 7,\n"),
         ('        { name = "PGAPPNAME", value = M.worker_application_name },\n',
          '        { name = "PGAPPNAME", value = M.worker_application_name },\n'
          '        { name = "EXTRA_SETTING", value = "1" },\n')]

LEGACY = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {
        "name": "sync-airbnb-worker-8101",
        "labels": {"app": "sync-airbnb-worker", "account-id": "8101",
                   "app.kubernetes.io/name": "sync-airbnb-worker",
                   "app.kubernetes.io/instance": "sync-airbnb-worker-8101",
                   "app.kubernetes.io/managed-by": "sync-airbnb-operator",
                   "app.kubernetes.io/part-of": "sync-airbnb"},
        "annotations": {"sync-airbnb.io/account-id": "8101",
                        "sync-airbnb.io/applied-hash": "applied-by-the-old-operator"},
    },
    "spec": {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "sync-airbnb-worker", "account-id": "8101"}},
        "template": {
            "metadata": {"labels": {"app": "sync-airbnb-worker", "account-id": "8101",
                                    "app.kubernetes.io/instance": "sync-airbnb-worker-8101",
                                    "app.kubernetes.io/managed-by": "sync-airbnb-operator"},
                         "annotations": {"sync-airbnb.io/credentials-fingerprint": "old"}},
            "spec": {"containers": [{"name": "worker", "image": "sync-airbnb:latest",
                                     "env": [{"name": "MODE", "value": "worker"},
                                             {"name": "ACCOUNT_ID", "value": "8101"},
                                             {"name": "LEGACY_ONLY", "value": "1"}]}]},
        },
    },
}


def deployment(cluster, ns, name):
    p = cluster.kubectl("get", "deployment", name, "-o", "json", "--show-managed-fields", namespace=ns,
                        check=False)
    return json.loads(p.stdout) if p.returncode == 0 else None


def env_names(d) -> list[str]:
    return [e["name"] for e in d["spec"]["template"]["spec"]["containers"][0].get("env", [])]


def operator_entries(d) -> list[str]:
    return [m["operation"] for m in d["metadata"].get("managedFields", [])
            if m["manager"] == "sync-airbnb-operator" and not m.get("subresource")]


def test_removed_fields_disappear_from_old_and_new_workers(pg, cluster, namespace, migrated_db,
                                                          operator_factory, tmp_path):
    # A worker as the old operator left it: POSTed under our field manager.
    cluster.kubectl("create", "--field-manager=sync-airbnb-operator", "-f", "-", input=json.dumps(LEGACY),
                    namespace=namespace)
    old = deployment(cluster, namespace, "sync-airbnb-worker-8101")
    assert old["spec"]["strategy"]["type"] == "RollingUpdate" and "rollingUpdate" in old["spec"]["strategy"]
    assert operator_entries(old) == ["Update"]

    rules = ConfigMapDir(tmp_path / "rules", rules_files({**NO_SOAK, "deployment.lua": EXTRA}))
    pg.psql("insert into airbnb.accounts (account_id, airbnb_cookie, x_client_version, user_agent, is_active)"
            " values ('8101', 'SECRET-c-8101-zq', 'v1', 'ua', true), ('8102', 'SECRET-c-8102-zq', 'v1', 'ua', true)",
            url=migrated_db)
    op = operator_factory(env={"RULES_DIR": str(rules.path), "RESYNC_INTERVAL_SECONDS": "2"})
    op.wait_ready()

    def moved(name, entries):
        d = deployment(cluster, namespace, name)
        return d and d["spec"].get("minReadySeconds") == 7 and "EXTRA_SETTING" in env_names(d) and \
            d["spec"]["strategy"] == {"type": "Recreate"} and operator_entries(d) == entries and d
    legacy = wait_for(lambda: moved("sync-airbnb-worker-8101", ["Apply"]), 30,
                      lambda: (deployment(cluster, namespace, "sync-airbnb-worker-8101"), op.raw_log()[-3000:]))
    assert "LEGACY_ONLY" not in env_names(legacy), "a field only the old template had stayed"
    # Created by this operator: its POST's entry stays until the first update needs it gone.
    wait_for(lambda: moved("sync-airbnb-worker-8102", ["Update"]), 30,
             lambda: deployment(cluster, namespace, "sync-airbnb-worker-8102"))
    assert not any("422" in r.get("reason", "") or r.get("level") == "error" for r in op.logs()), \
        [r for r in op.logs() if r.get("level") in ("warn", "error")]

    # The rules stop rendering both fields: they go from every live worker.
    rules.update(rules_files(NO_SOAK))  # in waves (1, then 1), without a soak

    def gone(name):
        d = deployment(cluster, namespace, name)
        return d and "minReadySeconds" not in d["spec"] and "EXTRA_SETTING" not in env_names(d) and d
    for name in ("sync-airbnb-worker-8101", "sync-airbnb-worker-8102"):
        wait_for(lambda: gone(name), 180, lambda: deployment(cluster, namespace, name)["spec"])
        assert operator_entries(deployment(cluster, namespace, name)) == ["Apply"]
