"""The Helm chart on a real node: the README's Helm install commands, run as written (with
the locally built images for REGISTRY), a migration Job that really runs `migrate up`
against PostgreSQL before the operator pods start, an upgrade that brings a new migration
(it is applied before any new operator pod starts), a rollback, and an uninstall that leaves
the real worker pod running. Everything is removed again at the end (namespaces, database),
so test_real_node.py can install by the kustomize steps afterwards.

Like a new operator version with a new migration, the upgrade points MIGRATIONS_DIR (of the
Job and the operator alike, the chart's extraEnv/extraVolumes) at a ConfigMap holding the
shipped migrations plus one more: the same binary, the same code path, without building a
second image.
"""

from __future__ import annotations

import calendar
import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import NODE_IP, REPO
from test_real_node import Env, create_app_table, readme_install_steps, ready, ready_pod, wait_for

WORKERS = "sync-airbnb"
SYSTEM = "sync-airbnb-system"
REL = "sync-airbnb-operator"
DB_NAME = "sync_airbnb_helm_e2e"
DB_ROLE = "sync_airbnb_helm_e2e"
MIGRATIONS = REPO / "lua" / "migrations"
NEW_MIGRATION = "900_e2e_helm_upgrade"


def readme_helm_commands() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Install with Helm", 1)[1].split("\n## ", 1)[0]
    lines = [l[4:] for l in section.splitlines() if l.startswith("    ") and l.strip()]
    assert lines and lines[0].startswith("helm install"), section
    return "\n".join(lines)


class HelmEnv(Env):
    def __init__(self, node, pg, images, helm: str):
        super().__init__(node, pg, images)
        port = pg.url.rsplit(":", 1)[1].split("/", 1)[0]
        self.pod_db_url = (f"postgresql://{DB_ROLE}:{self.password}@{NODE_IP}:{port}/{DB_NAME}"
                           "?sslmode=disable")
        self.admin_url = pg.url_for(DB_NAME)
        self.helm_path = helm

    def bash(self, script: str, stdin: str = "", timeout: int = 1200) -> subprocess.CompletedProcess:
        env = dict(self.node.env)
        env["PATH"] = f"{Path(self.helm_path).parent}:{env['PATH']}"
        env.update(HELM_CACHE_HOME="/tmp/helm-e2e/cache", HELM_CONFIG_HOME="/tmp/helm-e2e/config",
                   HELM_DATA_HOME="/tmp/helm-e2e/data")
        return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=REPO, env=env,
                              input=stdin, text=True, capture_output=True, timeout=timeout)

    def helm(self, *args: str, timeout: int = 1200) -> str:
        p = self.bash(" ".join(f"'{a}'" for a in ("helm", *args)), timeout=timeout)
        assert p.returncode == 0, f"helm {args}:\n{p.stdout}\n{p.stderr}"
        return p.stdout

    def applied(self) -> dict[str, str]:
        rows = self.sql("SELECT id || '|' || to_char(applied_at AT TIME ZONE 'UTC', "
                        "'YYYY-MM-DD\"T\"HH24:MI:SS.MS') FROM sync_airbnb_operator.schema_migrations")
        return dict(r.split("|") for r in rows.splitlines() if r)

    def delete_namespaces(self) -> None:
        for ns in (WORKERS, SYSTEM):
            self.kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=true", "--timeout=600s",
                         check=False)


def k8s_time(ts: str) -> float:
    return float(calendar.timegm(time.strptime(ts, "%Y-%m-%dT%H:%M:%SZ")))


def pg_time(ts: str) -> float:
    return k8s_time(ts[:19] + "Z") + float("0" + ts[19:])


@pytest.fixture(scope="module")
def henv(node, node_pg, images):
    helm = subprocess.run([str(REPO / "tools" / "gotool"), "path", "helm"], check=True,
                          capture_output=True, text=True, timeout=3600).stdout.strip()
    e = HelmEnv(node, node_pg, images, helm)
    e.delete_namespaces()  # a run killed half-way may have left them
    node_pg.psql(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)", url=node_pg.admin_url)
    node_pg.psql(f"DROP ROLE IF EXISTS {DB_ROLE}", url=node_pg.admin_url)
    node_pg.psql(f"CREATE ROLE {DB_ROLE} LOGIN PASSWORD '{e.password}'", url=node_pg.admin_url)
    node_pg.psql(f"CREATE DATABASE {DB_NAME} OWNER {DB_ROLE}", url=node_pg.admin_url)
    yield e
    e.bash(f"helm uninstall {REL} -n {SYSTEM} --wait --timeout 5m || true")
    e.delete_namespaces()
    node_pg.psql(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)", url=node_pg.admin_url)
    node_pg.psql(f"DROP ROLE IF EXISTS {DB_ROLE}", url=node_pg.admin_url)


def operator_pods(env) -> list[dict]:
    return [p for p in env.operator_pods() if not p["metadata"].get("deletionTimestamp")]


def head_times(env, pod: dict) -> list[str]:
    lines = [json.loads(l) for l in env.kubectl("logs", pod["metadata"]["name"], namespace=SYSTEM)
             .stdout.splitlines() if l.startswith("{")]
    return [l["ts"] for l in lines if l.get("msg", "").startswith("schema at head")]


def test_helm_install_by_the_readme(henv):
    env = henv
    # Namespaces and Secrets: step 2 of the README's install, as written.
    p = env.bash(readme_install_steps()[2], stdin=f"{env.pod_db_url}\ne2e-api-key\n")
    assert p.returncode == 0, p.stdout + p.stderr
    create_app_table(env)
    # The README's Helm commands, with the locally built images for REGISTRY/.
    cmds = readme_helm_commands()
    assert "REGISTRY/sync-airbnb-operator" in cmds and "REGISTRY/sync-airbnb:" in cmds
    cmds = cmds.replace("REGISTRY/", "docker.io/library/")
    assert f"image.repository={env.images['operator'].split(':')[0]}" in cmds
    assert f"workerImage={env.images['worker']}" in cmds
    p = env.bash(cmds, timeout=1800)
    assert p.returncode == 0, p.stdout + p.stderr

    job = env.kjson("get", "job", f"{REL}-migrate-1", namespace=WORKERS)
    assert job["status"].get("succeeded") == 1
    log = env.kubectl("logs", f"job/{REL}-migrate-1", namespace=WORKERS).stdout
    shipped = re.findall(r'"(\d{3}_[a-z0-9_]+)"', (MIGRATIONS / "init.lua").read_text())
    applied = env.applied()
    assert sorted(applied) == sorted(shipped), (applied, log)
    # Helm waited for the hook: the operator pods were created after the Job finished,
    # and found the schema at head.
    done = k8s_time(job["status"]["completionTime"])
    ops = operator_pods(env)
    assert len(ops) == 2 and all(ready(p) for p in ops)
    for pod in ops:
        assert k8s_time(pod["metadata"]["creationTimestamp"]) >= done
        assert pod["spec"]["containers"][0]["image"] == env.images["operator"]
        assert head_times(env, pod)
    dep = env.kjson("get", "deployment", "sync-airbnb-operator", namespace=SYSTEM)
    assert dep["metadata"]["annotations"]["meta.helm.sh/release-name"] == REL
    # The operator works: an active account gets a real worker pod, Ready.
    env.add_account("777001")
    pod = wait_for("the worker of 777001 Ready", lambda: ready_pod(env, "777001"), timeout=420)
    assert pod["spec"]["containers"][0]["image"] == env.images["worker"].removeprefix("docker.io/library/") \
        or pod["spec"]["containers"][0]["image"] == env.images["worker"]


def migrations_configmap(env) -> None:
    """The shipped migrations plus NEW_MIGRATION, as ConfigMap e2e-migrations in both
    namespaces (the Job runs in the workers', the operator in its own)."""
    data = {f.name: f.read_text() for f in MIGRATIONS.glob("*.lua")}
    data[f"{NEW_MIGRATION}.lua"] = (
        "return {\n"
        f'  id = "{NEW_MIGRATION}",\n'
        '  description = "e2e: a table the upgrade adds",\n'
        "  up = function(ctx)\n"
        '    return "CREATE TABLE IF NOT EXISTS " .. ctx.schema .. ".e2e_helm_upgrade (id int PRIMARY KEY)"\n'
        "  end,\n"
        "}\n")
    init = data["init.lua"]
    last = re.findall(r'"(\d{3}_[a-z0-9_]+)",?', init)[-1]
    data["init.lua"] = re.sub(rf'"{last}",?', f'"{last}",\n  "{NEW_MIGRATION}",', init, count=1)
    for ns in (WORKERS, SYSTEM):
        cm = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": "e2e-migrations", "namespace": ns}, "data": data}
        env.kubectl("apply", "-f", "-", input=json.dumps(cm))


def test_helm_upgrade_migrates_before_the_new_operator_reconciles(henv):
    env = henv
    migrations_configmap(env)
    before = {p["metadata"]["uid"] for p in operator_pods(env)}
    t_upgrade = time.time()
    env.helm("upgrade", REL, "deploy/chart", "-n", SYSTEM, "--reuse-values",
             "--set", "extraEnv[0].name=MIGRATIONS_DIR", "--set", "extraEnv[0].value=/etc/e2e-migrations",
             "--set", "extraVolumes[0].name=e2e-migrations", "--set", "extraVolumes[0].configMap.name=e2e-migrations",
             "--set", "extraVolumeMounts[0].name=e2e-migrations",
             "--set", "extraVolumeMounts[0].mountPath=/etc/e2e-migrations",
             "--wait", "--timeout", "15m")
    job = env.kjson("get", "job", f"{REL}-migrate-2", namespace=WORKERS)
    assert job["status"].get("succeeded") == 1
    applied = env.applied()
    assert NEW_MIGRATION in applied, applied
    t_new = pg_time(applied[NEW_MIGRATION])
    assert t_new >= t_upgrade - 5
    assert env.sql("SELECT to_regclass('sync_airbnb_operator.e2e_helm_upgrade') IS NOT NULL") == "t"
    ops = operator_pods(env)
    assert len(ops) == 2 and all(ready(p) for p in ops)
    assert not before & {p["metadata"]["uid"] for p in ops}, "the operator pods were not replaced"
    for pod in ops:
        env_names = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env_names["MIGRATIONS_DIR"] == "/etc/e2e-migrations"
        # Created after the migration was applied, and at head (which includes it) from the start.
        assert k8s_time(pod["metadata"]["creationTimestamp"]) >= int(t_new)
        heads = head_times(env, pod)
        assert heads and pg_time(heads[0][:23]) >= t_new, (heads, applied[NEW_MIGRATION])
    # The upgraded operator still reconciles.
    env.add_account("777002")
    wait_for("the worker of 777002 Ready", lambda: ready_pod(env, "777002"), timeout=420)


def test_helm_rollback(henv):
    env = henv
    env.helm("upgrade", REL, "deploy/chart", "-n", SYSTEM, "--reuse-values", "--set", "logLevel=debug",
             "--wait", "--timeout", "10m")
    dep = env.kjson("get", "deployment", "sync-airbnb-operator", namespace=SYSTEM)
    assert {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}[
        "LOG_LEVEL"] == "debug"
    jobs_before = {j["metadata"]["name"] for j in env.kjson("get", "jobs", namespace=WORKERS)["items"]}
    env.helm("rollback", REL, "2", "-n", SYSTEM, "--wait", "--timeout", "10m")
    dep = env.kjson("get", "deployment", "sync-airbnb-operator", namespace=SYSTEM)
    assert {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}[
        "LOG_LEVEL"] == "info"
    wait_for("two Ready operator pods on revision 2's template", lambda: (lambda ps: len(ps) == 2 and all(
        ready(p) and {e["name"]: e.get("value") for e in p["spec"]["containers"][0]["env"]}["LOG_LEVEL"] == "info"
        for p in ps))(operator_pods(env)), timeout=300)
    # No migration ran for the rollback.
    jobs_after = {j["metadata"]["name"] for j in env.kjson("get", "jobs", namespace=WORKERS)["items"]}
    assert jobs_after == jobs_before
    hist = json.loads(env.helm("history", REL, "-n", SYSTEM, "-o", "json"))
    assert [h["revision"] for h in hist][-1] == 4 and hist[-1]["status"] == "deployed"


def test_helm_rollback_across_a_migration_stays_unready_then_rolls_forward(henv):
    """Revision 1 does not know NEW_MIGRATION: its pods refuse the newer schema (unready,
    reason in the log) while the running pods keep serving; rolling forward recovers."""
    env = henv
    before = {p["metadata"]["uid"] for p in operator_pods(env)}
    last = json.loads(env.helm("history", REL, "-n", SYSTEM, "-o", "json"))[-1]["revision"]
    env.helm("rollback", REL, "1", "-n", SYSTEM, "--timeout", "5m")

    def refusing_pod():
        for p in operator_pods(env):
            if p["metadata"]["uid"] in before or p["status"].get("phase") != "Running":
                continue
            log = env.kubectl("logs", p["metadata"]["name"], namespace=SYSTEM, check=False).stdout
            if NEW_MIGRATION in log and "does not know" in log:
                return p
        return None
    new = wait_for("a revision-1 pod refusing the newer schema", refusing_pod, timeout=300)
    assert not ready(env.kjson("get", "pod", new["metadata"]["name"], namespace=SYSTEM))
    # The pods of the previous revision still run, Ready: nothing stopped reconciling.
    old = [p for p in operator_pods(env) if p["metadata"]["uid"] in before]
    assert old and all(ready(p) for p in old)
    env.helm("rollback", REL, str(last), "-n", SYSTEM, "--wait", "--timeout", "10m")
    wait_for("two Ready operator pods after rolling forward", lambda: (lambda ps: len(ps) == 2 and all(
        ready(p) for p in ps))(operator_pods(env)), timeout=300)


def test_helm_uninstall_leaves_the_workers_running(henv):
    env = henv
    worker = ready_pod(env, "777001")
    assert worker
    env.helm("uninstall", REL, "-n", SYSTEM, "--wait", "--timeout", "5m")
    for kind, name, ns in (("deployment", "sync-airbnb-operator", SYSTEM),
                           ("configmap", "sync-airbnb-operator-rules", SYSTEM),
                           ("role", "sync-airbnb-operator", WORKERS)):
        assert env.kubectl("get", kind, name, namespace=ns, check=False).returncode != 0, f"{kind} {name} left"
    wait_for("the operator pods to go", lambda: not env.operator_pods(), timeout=120)
    # The worker: the same pod, still Ready, still serving its readiness endpoint.
    still = ready_pod(env, "777001")
    assert still and still["metadata"]["uid"] == worker["metadata"]["uid"]
    # Namespaces, Secrets and the database stay.
    env.kubectl("get", "secret", "sync-airbnb-db", namespace=WORKERS)
    assert env.sql("SELECT count(*) FROM sync_airbnb_operator.schema_migrations") != "0"
