"""The Helm chart (deploy/chart/) with a real helm binary (tools/gotool, built from the Go
module proxy) against the real kube-apiserver of the kwok cluster.

- It renders the same objects as `kubectl kustomize deploy/` and deploy/monitoring/ (the
  chart reads those files; this catches any value, helper or file edit that breaks that).
- Each value changes what it says, bad values fail with a clear message.
- The rendered objects pass the API server's validation (server-side dry run, with the
  Prometheus Operator's CRDs installed from its Go module).
- install, upgrade, rollback and uninstall of a release: the migration Job is a hook with
  its own name per revision, created before the operator Deployment changes; uninstall
  leaves the workers. kwok suffices here because what is checked is Helm's and the API
  server's bookkeeping (objects, order, revisions); on kwok the Job's pod is marked
  Succeeded without running. That the Job really migrates a database, before the new
  operator reconciles, is checked on the real node (tests/e2e/test_helm.py).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from harness import REPO, unique_name
from operator_harness import wait_for

CHART = REPO / "deploy" / "chart"
DEPLOY = REPO / "deploy"
SYS, WORKERS = "sync-airbnb-system", "sync-airbnb"
HELM_LABELS = ("helm.sh/chart", "app.kubernetes.io/instance")


@pytest.fixture(scope="session")
def helm() -> str:
    """The helm binary, built once into the cache if missing (never skipped)."""
    return subprocess.run([str(REPO / "tools" / "gotool"), "path", "helm"], check=True,
                          capture_output=True, text=True, timeout=3600).stdout.strip()


def run_helm(helm: str, cluster, *args, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """helm against `cluster` (None: no cluster, e.g. `helm template`)."""
    env = dict(cluster.env if cluster else os.environ, HELM_CACHE_HOME="/tmp/helm-cache",
               HELM_CONFIG_HOME="/tmp/helm-config", HELM_DATA_HOME="/tmp/helm-data")
    p = subprocess.run([helm, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def template(helm, *sets: str, release: str = "sao", check: bool = True):
    args = ["template", release, str(CHART), "--namespace", SYS]
    for s in sets:
        args += ["--set", s]
    p = run_helm(helm, None, *args, check=check)
    if not check:
        return p
    return [o for o in yaml.safe_load_all(p.stdout) if o]


def kustomize(cluster, path: Path) -> list[dict]:
    return [o for o in yaml.safe_load_all(cluster.kubectl("kustomize", str(path)).stdout) if o]


def key(o: dict) -> tuple:
    return (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])


def without_helm_bookkeeping(o: dict) -> dict:
    """An object minus what only Helm adds: its two labels, and for the migration Job its
    per-revision name and hook annotations."""
    o = copy.deepcopy(o)
    labels = o["metadata"].get("labels", {})
    for k in HELM_LABELS:
        labels.pop(k, None)
    if o["kind"] == "Job":
        o["metadata"]["name"] = "<migrate job>"
        o["metadata"].pop("annotations", None)
    return o


def by_key(objs) -> dict:
    out = {}
    for o in map(without_helm_bookkeeping, objs):
        assert key(o) not in out, f"rendered twice: {key(o)}"
        out[key(o)] = o
    return out


def find(objs, kind, name=None) -> dict:
    hits = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {[key(h) for h in hits]}"
    return hits[0]


def container(o) -> dict:
    return o["spec"]["template"]["spec"]["containers"][0]


def env_of(o) -> dict:
    return {e["name"]: e.get("value") for e in container(o).get("env", [])}


# ---- the chart and kustomize render the same objects ---------------------------------

def test_defaults_render_what_kustomize_renders(helm, cluster):
    kust = [o for o in kustomize(cluster, DEPLOY) if o["kind"] != "Namespace"]
    chart = template(helm)
    assert by_key(chart) == by_key(kust)
    # Helm's additions are exactly the documented ones.
    job = find(chart, "Job")
    assert job["metadata"]["name"] == "sao-migrate-1"
    assert job["metadata"]["annotations"] == {
        "helm.sh/hook": "pre-install,pre-upgrade", "helm.sh/hook-weight": "0",
        "helm.sh/hook-delete-policy": "before-hook-creation"}
    for o in chart:
        assert o["metadata"]["labels"]["app.kubernetes.io/instance"] == "sao"


def test_monitoring_renders_what_kustomize_renders(helm, cluster):
    kust = kustomize(cluster, DEPLOY / "monitoring")
    podmonitor = yaml.safe_load((DEPLOY / "monitoring" / "podmonitor.yaml").read_text())
    chart = template(helm, "monitoring.serviceMonitor.enabled=true", "monitoring.podMonitor.enabled=true",
                     "monitoring.prometheusRule.enabled=true", "monitoring.dashboard.enabled=true")
    extra = {k: v for k, v in by_key(chart).items() if k[0] in ("ServiceMonitor", "PodMonitor", "PrometheusRule")
             or (k[0] == "ConfigMap" and k[2].endswith("-dashboard"))}
    assert extra == by_key(kust + [podmonitor])
    dash = find(chart, "ConfigMap", "sync-airbnb-operator-dashboard")
    assert json.loads(dash["data"]["sync-airbnb-operator.json"])["uid"] == "sync-airbnb-operator"


def test_packaged_chart_is_self_contained(helm, tmp_path):
    """`helm package` resolves the links: the .tgz renders the same objects on its own."""
    run_helm(helm, None, "package", str(CHART), "-d", str(tmp_path))
    (tgz,) = tmp_path.glob("sync-airbnb-operator-*.tgz")
    p = run_helm(helm, None, "template", "sao", str(tgz), "--namespace", SYS)
    assert [o for o in yaml.safe_load_all(p.stdout) if o] == template(helm)


def test_helm_lint_strict(helm):
    p = run_helm(helm, None, "lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in p.stdout, p.stdout


def test_chart_version_follows_the_kustomize_image_tag():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    kust = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    tag = next(i["newTag"] for i in kust["images"] if i["name"] == "sync-airbnb-operator")
    assert chart["appVersion"] == tag


def test_chart_files_are_links_to_deploy_not_copies():
    files = CHART / "files"
    for f in files.iterdir():
        assert f.is_symlink(), f"{f} is a copy: the chart must read deploy/ and lua/rules/ themselves"
        assert f.resolve().is_relative_to(REPO), f


def test_service_pdb_and_networkpolicy_select_the_operator_pods(helm):
    objs = template(helm)
    dep = find(objs, "Deployment")
    selector = dep["spec"]["selector"]["matchLabels"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    svc, pdb, np = find(objs, "Service"), find(objs, "PodDisruptionBudget"), find(objs, "NetworkPolicy")
    assert pdb["spec"]["selector"]["matchLabels"] == selector == np["spec"]["podSelector"]["matchLabels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    ports = {p["name"]: p["containerPort"] for p in container(dep)["ports"]}
    assert svc["spec"]["ports"][0]["targetPort"] in ports
    assert int(env_of(dep)["HEALTH_ADDR"].rsplit(":", 1)[1]) == ports["http"]
    assert [p["port"] for r in np["spec"]["ingress"] for p in r["ports"]] == [ports["http"]]
    egress = {(p["protocol"], p["port"]) for r in np["spec"]["egress"] for p in r["ports"]}
    assert egress == {("TCP", 443), ("TCP", 6443), ("TCP", 5432), ("UDP", 53), ("TCP", 53)}
    assert set(np["spec"]["policyTypes"]) == {"Ingress", "Egress"}


# ---- values -------------------------------------------------------------------------

def test_values_change_what_they_say(helm):
    objs = template(
        helm,
        "namespaces.operator=ops", "namespaces.workers=wk",
        "image.repository=registry.example/sao", "image.tag=9.9.9", "image.pullPolicy=Always",
        "workerImage=registry.example/sync-airbnb:2.0.0", "replicas=3", "logLevel=debug",
        "accountsTable=app.accounts", "resources.limits.memory=1Gi", "migrate.resources.limits.memory=300Mi",
        "rules.files.plan\\.lua=return {}", "rules.files.extra\\.lua=-- mine",
        "podDisruptionBudget.maxUnavailable=0",
        "networkPolicy.apiServer.cidrs={10.0.0.1/32}", "networkPolicy.postgres.cidrs={10.1.0.0/16}",
        "networkPolicy.postgres.port=6432",
        "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.team=monitoring",
        "monitoring.serviceMonitor.enabled=true", "monitoring.serviceMonitor.labels.release=prom",
        "monitoring.serviceMonitor.interval=15s", "monitoring.dashboard.enabled=true",
        "monitoring.dashboard.namespace=grafana", "imagePullSecrets[0].name=regcred",
        "extraEnv[0].name=MIGRATIONS_DIR", "extraEnv[0].value=/m",
        release="rel")
    assert {o["metadata"].get("namespace") for o in objs} == {"ops", "wk", "grafana"}
    dep, job = find(objs, "Deployment"), find(objs, "Job")
    assert job["metadata"]["name"] == "rel-migrate-1" and job["metadata"]["namespace"] == "wk"
    assert dep["spec"]["replicas"] == 3
    for o in (dep, job):
        assert container(o)["image"] == "registry.example/sao:9.9.9"
        assert container(o)["imagePullPolicy"] == "Always"
        assert o["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
        assert env_of(o)["ACCOUNTS_TABLE"] == "app.accounts"
        assert env_of(o)["MIGRATIONS_DIR"] == "/m"
    assert job["metadata"]["labels"]["app.kubernetes.io/version"] == "9.9.9"
    assert env_of(dep)["OPERATOR_NAMESPACE"] == "wk"
    assert env_of(dep)["WORKER_IMAGE"] == "registry.example/sync-airbnb:2.0.0"
    assert env_of(dep)["LOG_LEVEL"] == "debug"
    assert container(dep)["resources"] == {"limits": {"memory": "1Gi"}}
    assert container(job)["resources"] == {"limits": {"memory": "300Mi"}}
    binding = find(objs, "RoleBinding", "sync-airbnb-operator")
    assert binding["metadata"]["namespace"] == "wk" and binding["subjects"][0]["namespace"] == "ops"
    events = find(objs, "RoleBinding", "sync-airbnb-operator-rules-events")
    assert events["metadata"]["namespace"] == "ops" and events["subjects"][0]["namespace"] == "ops"
    assert env_of(dep)["RULES_CONFIGMAP"] == "ops/sync-airbnb-operator-rules"
    cm = find(objs, "ConfigMap", "sync-airbnb-operator-rules")
    assert cm["data"]["plan.lua"] == "return {}" and cm["data"]["extra.lua"] == "-- mine"
    assert cm["data"]["naming.lua"] == (REPO / "lua" / "rules" / "naming.lua").read_text()
    assert find(objs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 0
    np = find(objs, "NetworkPolicy")["spec"]
    api = next(r for r in np["egress"] if any(p["port"] == 6443 for p in r["ports"]))
    db = next(r for r in np["egress"] if any(p["port"] == 6432 for p in r["ports"]))
    assert api["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    assert db["to"] == [{"ipBlock": {"cidr": "10.1.0.0/16"}}]
    assert np["ingress"][0]["from"] == [{"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}]
    sm = find(objs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prom" and sm["spec"]["endpoints"][0]["interval"] == "15s"
    assert find(objs, "ConfigMap", "sync-airbnb-operator-dashboard")["metadata"]["namespace"] == "grafana"


def test_existing_rules_configmap_and_switches(helm):
    objs = template(helm, "rules.existingConfigMap=my-rules", "networkPolicy.enabled=false",
                    "podDisruptionBudget.enabled=false", "monitoring.service.enabled=false")
    kinds = {o["kind"] for o in objs}
    assert kinds == {"ServiceAccount", "Role", "RoleBinding", "Deployment", "Job"}
    vol = next(v for v in find(objs, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "rules")
    assert vol["configMap"]["name"] == "my-rules"
    assert env_of(find(objs, "Deployment"))["RULES_CONFIGMAP"] == "sync-airbnb-system/my-rules"
    role = find(objs, "Role", "sync-airbnb-operator-rules-events")
    assert role["rules"][0]["resourceNames"] == ["my-rules"]


@pytest.mark.parametrize("sets, message", [
    (["rules.files.plan\\.txt=x"], "is not a rule file name"),
    (["rules.shipped=false"], "no rule files"),
    # values.schema.json: a misspelt value is refused rather than silently ignored
    (["replicass=3"], "additional properties 'replicass' not allowed"),
    (["namespaces.workers=Bad_NS"], "/namespaces/workers"),
    (["networkPolicy.postgres.cidrs={10.0.0.1}"], "/networkPolicy/postgres/cidrs/0"),
])
def test_bad_values_fail_clearly(helm, sets, message):
    p = template(helm, *sets, check=False)
    assert p.returncode != 0 and message in p.stderr, p.stderr


# ---- against the API server ---------------------------------------------------------

@pytest.fixture(scope="module")
def monitoring_crds(cluster):
    crds = subprocess.run([str(REPO / "tools" / "gotool"), "crds"], check=True, capture_output=True,
                          text=True, timeout=600).stdout.strip()
    cluster.kubectl("apply", "--server-side", "-f", crds)
    # Polled rather than `kubectl wait`: a CRD read before the API server has written
    # its first status has no conditions, which kubectl (wait, and a jsonpath filter
    # over them) takes for an error; that read counts as "not yet".
    for crd in ("servicemonitors", "podmonitors", "prometheusrules"):
        wait_for(lambda: cluster.kubectl(
            "get", f"crd/{crd}.monitoring.coreos.com", "-o",
            "jsonpath={.status.conditions[?(@.type==\"Established\")].status}", check=False).stdout.strip() == "True",
            60, f"CRD {crd} not Established")


@pytest.fixture
def release_ns(cluster):
    """Two fresh namespaces with deploy/namespaces.yaml's Pod Security labels."""
    nss = yaml.safe_load_all((DEPLOY / "namespaces.yaml").read_text())
    names = {SYS: unique_name("h-sys"), WORKERS: unique_name("h-wk")}
    for ns in nss:
        ns["metadata"]["name"] = names[ns["metadata"]["name"]]
        cluster.kubectl("apply", "-f", "-", input=json.dumps(ns))
    for n in names.values():
        wait_for(lambda n=n: cluster.kubectl("get", "serviceaccount", "default", namespace=n,
                                             check=False).returncode == 0, 30, f"no SA in {n}")
    yield names
    for n in names.values():
        cluster.delete_namespace(n)


def test_server_side_dry_run_accepts_every_object(helm, cluster, monitoring_crds, release_ns):
    objs = template(helm, f"namespaces.operator={release_ns[SYS]}", f"namespaces.workers={release_ns[WORKERS]}",
                    "monitoring.serviceMonitor.enabled=true", "monitoring.podMonitor.enabled=true",
                    "monitoring.prometheusRule.enabled=true", "monitoring.dashboard.enabled=true",
                    "networkPolicy.apiServer.cidrs={10.0.0.1/32}")
    doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": objs})
    p = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=doc)
    assert p.stdout.count("(server dry run)") == len(objs), p.stdout
    assert "Warning" not in p.stderr, p.stderr
    # The CRDs' schemas do validate: a misspelled field is refused.
    bad = copy.deepcopy(find(objs, "PrometheusRule"))
    bad["spec"]["groups"][0]["rules"][0]["expresion"] = bad["spec"]["groups"][0]["rules"][0].pop("expr")
    r = cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=json.dumps(bad),
                        check=False)
    assert r.returncode != 0, r.stdout


def helm_sets(ns: dict, *more: str) -> list[str]:
    out = ["--set", f"namespaces.operator={ns[SYS]}", "--set", f"namespaces.workers={ns[WORKERS]}"]
    for m in more:
        out += ["--set", m]
    return out


def pdb_status(cluster, ns) -> dict:
    """The PDB's status once the disruption controller has seen its current spec."""
    def current():
        p = cluster.kubectl_json("get", "pdb", "sync-airbnb-operator", namespace=ns)
        st = p.get("status", {})
        return st if st.get("observedGeneration") == p["metadata"]["generation"] and st.get("currentHealthy") == 2 \
            else None
    return wait_for(current, 60, "PDB status")


def evict_dry_run(cluster, ns, pod) -> subprocess.CompletedProcess:
    body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": ns},
            "deleteOptions": {"dryRun": ["All"]}}
    return cluster.kubectl("create", "--raw", f"/api/v1/namespaces/{ns}/pods/{pod}/eviction", "-f", "-",
                           input=json.dumps(body), check=False)


def test_install_upgrade_rollback_uninstall(helm, cluster, release_ns):
    sys_ns, wk_ns = release_ns[SYS], release_ns[WORKERS]
    rel = unique_name("rel", maxlen=20)
    # A worker the operator would have made: uninstall must leave it alone.
    worker = {"apiVersion": "apps/v1", "kind": "Deployment",
              "metadata": {"name": "sync-airbnb-worker-1", "namespace": wk_ns,
                           "labels": {"app": "sync-airbnb-worker", "app.kubernetes.io/managed-by": "sync-airbnb-operator"}},
              "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "sync-airbnb-worker"}},
                       "template": {"metadata": {"labels": {"app": "sync-airbnb-worker"}},
                                    "spec": {"containers": [{"name": "w", "image": "sync-airbnb:0.1.0"}]}}}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(worker))

    run_helm(helm, cluster, "install", rel, str(CHART), "-n", sys_ns, *helm_sets(release_ns), "--wait",
             "--timeout", "5m")
    job1 = cluster.kubectl_json("get", "job", f"{rel}-migrate-1", namespace=wk_ns)
    dep = cluster.kubectl_json("get", "deployment", "sync-airbnb-operator", namespace=sys_ns)
    assert job1["status"].get("succeeded") == 1
    # The hook ran first: the Job finished before the Deployment was created.
    assert job1["status"]["completionTime"] <= dep["metadata"]["creationTimestamp"]
    assert dep["metadata"]["annotations"]["meta.helm.sh/release-name"] == rel
    # The metrics Service and the PDB find the operator's pods (the endpoint-slice and
    # disruption controllers of kube-controller-manager; kwok makes the pods Ready).
    ready_endpoints = wait_for(lambda: [
        e for s in cluster.kubectl_json("get", "endpointslices", "-l",
                                        "kubernetes.io/service-name=sync-airbnb-operator-metrics",
                                        namespace=sys_ns)["items"]
        for e in (s.get("endpoints") or []) if e.get("conditions", {}).get("ready")], 60, "metrics endpoints")
    assert len(ready_endpoints) == 2
    assert all(e["targetRef"]["name"].startswith("sync-airbnb-operator-") for e in ready_endpoints)
    assert pdb_status(cluster, sys_ns)["disruptionsAllowed"] == 1
    pod = cluster.kubectl_json("get", "pods", "-l", "app.kubernetes.io/component=operator", namespace=sys_ns)["items"][0]
    assert evict_dry_run(cluster, sys_ns, pod["metadata"]["name"]).returncode == 0

    run_helm(helm, cluster, "upgrade", rel, str(CHART), "-n", sys_ns,
             *helm_sets(release_ns, "logLevel=debug", "podDisruptionBudget.maxUnavailable=0"), "--timeout", "5m")
    # The API server enforces the PDB the chart rendered: no eviction allowed now.
    cluster.kubectl("rollout", "status", "deployment/sync-airbnb-operator", "--timeout=120s", namespace=sys_ns)
    assert pdb_status(cluster, sys_ns)["disruptionsAllowed"] == 0
    pod = next(p for p in cluster.kubectl_json("get", "pods", "-l", "app.kubernetes.io/component=operator",
                                               namespace=sys_ns)["items"] if not p["metadata"].get("deletionTimestamp"))
    r = evict_dry_run(cluster, sys_ns, pod["metadata"]["name"])
    assert r.returncode != 0 and "disruption budget" in r.stderr, r.stderr
    job2 = cluster.kubectl_json("get", "job", f"{rel}-migrate-2", namespace=wk_ns)
    dep2 = cluster.kubectl_json("get", "deployment", "sync-airbnb-operator", namespace=sys_ns)
    assert env_of(dep2)["LOG_LEVEL"] == "debug"
    rs = [r for r in cluster.kubectl_json("get", "replicasets", namespace=sys_ns)["items"]
          if r["spec"]["template"]["spec"]["containers"][0]["env"] and
          {e["name"]: e.get("value") for e in r["spec"]["template"]["spec"]["containers"][0]["env"]}
          .get("LOG_LEVEL") == "debug"]
    assert len(rs) == 1
    # The upgrade's Job completed before the Deployment's new ReplicaSet existed.
    assert job2["status"]["completionTime"] <= rs[0]["metadata"]["creationTimestamp"]

    run_helm(helm, cluster, "rollback", rel, "1", "-n", sys_ns, "--timeout", "5m")
    dep3 = cluster.kubectl_json("get", "deployment", "sync-airbnb-operator", namespace=sys_ns)
    assert env_of(dep3)["LOG_LEVEL"] == "info"
    # A rollback runs no migration (pre-rollback is not a hook of the Job: migrations only go forward).
    jobs = {j["metadata"]["name"] for j in cluster.kubectl_json("get", "jobs", namespace=wk_ns)["items"]}
    assert jobs == {f"{rel}-migrate-1", f"{rel}-migrate-2"}
    hist = json.loads(run_helm(helm, cluster, "history", rel, "-n", sys_ns, "-o", "json").stdout)
    assert [h["revision"] for h in hist] == [1, 2, 3] and hist[-1]["status"] == "deployed"

    run_helm(helm, cluster, "uninstall", rel, "-n", sys_ns, "--wait", "--timeout", "5m")
    for kind, name, ns in (("deployment", "sync-airbnb-operator", sys_ns), ("configmap", "sync-airbnb-operator-rules", sys_ns),
                           ("serviceaccount", "sync-airbnb-operator", sys_ns), ("role", "sync-airbnb-operator", wk_ns),
                           ("networkpolicy", "sync-airbnb-operator", sys_ns), ("service", "sync-airbnb-operator-metrics", sys_ns),
                           ("poddisruptionbudget", "sync-airbnb-operator", sys_ns)):
        assert cluster.kubectl("get", kind, name, namespace=ns, check=False).returncode != 0, f"{kind} {name} left"
    # The workers stay (documented): uninstall removes the operator, not what it made.
    assert cluster.kubectl_json("get", "deployment", "sync-airbnb-worker-1", namespace=wk_ns)["metadata"]["name"]
