"""Reaching the API server the way kubectl users do: exec credential plugins, merged
KUBECONFIG lists, --context, ~/.kube/config, proxy-url. All against the real
kube-apiserver and PostgreSQL.

The exec plugin is a real program: a shell script that asks the API server for a
ServiceAccount token (`kubectl create token`) and prints it as a
client.authentication.k8s.io/v1 ExecCredential, as `aws eks get-token` prints an IAM
token. It can say its credential expires in a few seconds (the real token lives 10
minutes), hand out an invalid token first (the API server answers 401), or fail.
The HTTP proxy is a real one (tinyproxy, installed by tools/bootstrap)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from operator_harness import Operator, binary, run_cli, wait_for

SA = "op"

RBAC = f"""
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {SA}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: operator}}
rules:
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [create, get, update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: operator}}
subjects: [{{kind: ServiceAccount, name: {SA}}}]
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: operator}}
"""

PLUGIN = r"""#!/bin/sh
# An exec credential plugin: a token of ServiceAccount $SA in $NS, from the API server.
echo run >> "$STATE/runs"  # appended: a reader never sees it half written
n=$(wc -l < "$STATE/runs")
printf '%s\n' "$KUBERNETES_EXEC_INFO" > "$STATE/info.$n"
tok=
case "$(cat "$STATE/mode" 2>/dev/null)" in
  fail) echo "get-token: no login session; run 'get-token login' first" >&2; exit 1 ;;
  bad-first) [ "$n" -eq 1 ] && tok=not-a-valid-token ;;
esac
[ -n "$tok" ] || tok=$("$KUBECTL" --kubeconfig "$ADMIN_KUBECONFIG" -n "$NS" create token "$SA" --duration=10m) || exit 2
echo "$tok" > "$STATE/token.$n"
exp=$(date -u -d "+${TTL:-600} seconds" +%Y-%m-%dT%H:%M:%SZ)
printf '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"%s","expirationTimestamp":"%s"}}\n' "$tok" "$exp"
"""

ACCOUNT_SQL = ("insert into airbnb.accounts(account_id, airbnb_cookie, x_client_version, user_agent, is_active)"
               " values ('{}', 'cookie', 'v1', 'ua', true)")


def admin_parts(cluster) -> tuple[dict, dict]:
    """The admin kubeconfig's cluster entry (CA as data) and user entry."""
    kc = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    ctx = next(c["context"] for c in kc["contexts"] if c["name"] == kc["current-context"])
    cl = dict(next(c["cluster"] for c in kc["clusters"] if c["name"] == ctx["cluster"]))
    if "certificate-authority" in cl:
        ca = Path(cl.pop("certificate-authority"))
        if not ca.is_absolute():
            ca = Path(cluster.kubeconfig).parent / ca
        import base64
        cl["certificate-authority-data"] = base64.b64encode(ca.read_bytes()).decode()
    user = next(u["user"] for u in kc["users"] if u["name"] == ctx["user"])
    return cl, user


def kubeconfig(path: Path, *, cluster: dict, user: dict | None, context: str = "main",
               namespace: str | None = None, extra_contexts: list | None = None) -> str:
    ctx = {"cluster": "c"}
    if user is not None:
        ctx["user"] = "u"
    if namespace:
        ctx["namespace"] = namespace
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": context,
           "contexts": [{"name": context, "context": ctx}] + (extra_contexts or []),
           "clusters": [{"name": "c", "cluster": cluster}],
           "users": [{"name": "u", "user": user}] if user is not None else []}
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.fixture
def plugin(cluster, namespace, tmp_path):
    """(kubeconfig path, state dir): a kubeconfig whose user is the exec plugin."""
    cluster.kubectl("apply", "-f", "-", input=RBAC, namespace=namespace)
    state = tmp_path / "state"
    state.mkdir()
    script = tmp_path / "bin" / "get-token"
    script.parent.mkdir()
    script.write_text(PLUGIN)
    script.chmod(0o755)
    cl, _ = admin_parts(cluster)
    user = {"exec": {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": "./bin/get-token",          # relative: to the kubeconfig's directory
        "args": [],
        "env": [{"name": "STATE", "value": str(state)}, {"name": "NS", "value": namespace},
                {"name": "SA", "value": SA}, {"name": "KUBECTL", "value": cluster.kubectl_path},
                {"name": "ADMIN_KUBECONFIG", "value": cluster.kubeconfig}],
        "interactiveMode": "Never",
        "provideClusterInfo": True,
        "installHint": "get-token is in the test's bin directory",
    }}
    path = kubeconfig(tmp_path / "exec.kubeconfig", cluster=cl, user=user, namespace=namespace)
    return path, state


def runs(state: Path) -> int:
    f = state / "runs"
    return f.read_text().count("\n") if f.exists() else 0


def set_plugin(path: str, state: Path, *, mode: str = "", ttl: int | None = None) -> None:
    (state / "mode").write_text(mode)
    if ttl is not None:
        doc = yaml.safe_load(Path(path).read_text())
        env = doc["users"][0]["user"]["exec"]["env"]
        env[:] = [e for e in env if e["name"] != "TTL"] + [{"name": "TTL", "value": str(ttl)}]
        Path(path).write_text(yaml.safe_dump(doc))


def cli_env(db: str, kc: str, namespace: str, **extra) -> dict:
    env = {"DATABASE_URL": db, "KUBECONFIG": kc, "OPERATOR_NAMESPACE": namespace}
    env.update(extra)
    return env


def whoami(env: dict) -> str:
    script = ("st, body = kube:request('POST', '/apis/authentication.k8s.io/v1/selfsubjectreviews', "
              "json.encode({apiVersion = 'authentication.k8s.io/v1', kind = 'SelfSubjectReview'}))\n"
              "print(st, json.decode(body).status.userInfo.username)\n")
    p = run_cli("repl", env=env, input=script)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def test_exec_plugin_authenticates_plan_status_and_repl(plugin, namespace, migrated_db, pg):
    path, state = plugin
    pg.psql(ACCOUNT_SQL.format("7001"), url=migrated_db)
    env = cli_env(migrated_db, path, namespace)
    p = run_cli("plan", "-o", "json", env=env)
    assert p.returncode == 2, p.stderr  # a create is pending: the list of Deployments was read
    assert json.loads(p.stdout)["actions"][0]["action"] == "create"
    assert runs(state) == 1  # one run, cached for the whole command
    info = json.loads((state / "info.1").read_text())
    assert info["kind"] == "ExecCredential" and info["spec"]["interactive"] is False
    assert info["spec"]["cluster"]["server"] == yaml.safe_load(Path(path).read_text())["clusters"][0]["cluster"]["server"]
    assert info["spec"]["cluster"]["certificate-authority-data"]
    assert run_cli("status", env=env).returncode == 0
    # the API server sees the ServiceAccount, not the admin of the test kubeconfig
    assert whoami(env) == f"201\tsystem:serviceaccount:{namespace}:{SA}"


def test_a_401_runs_the_plugin_again(plugin, namespace, migrated_db):
    path, state = plugin
    set_plugin(path, state, mode="bad-first")
    env = cli_env(migrated_db, path, namespace)
    p = run_cli("status", "-o", "json", env=env)
    assert p.returncode == 0, p.stderr
    assert runs(state) == 2  # the first token got a 401, the second was accepted
    assert (state / "token.1").read_text().strip() == "not-a-valid-token"
    assert "not-a-valid-token" not in p.stderr + p.stdout


def test_run_renews_an_expired_credential_and_never_logs_it(plugin, cluster, namespace, migrated_db, pg):
    path, state = plugin
    set_plugin(path, state, ttl=3)  # "expires" in 3 s; the operator calls the plugin again after
    op = Operator.start(database_url=migrated_db, kubeconfig=path, namespace=namespace)
    try:
        pg.psql(ACCOUNT_SQL.format("7101"), url=migrated_db)
        wait_for(lambda: "sync-airbnb-worker-7101" in cluster.kubectl(
                                     "get", "deployments", "-o", "name", namespace=namespace).stdout, 60, "first worker")
        first = runs(state)
        wait_for(lambda: runs(state) >= first + 2, 60, "the plugin ran again after the expiry")
        pg.psql(ACCOUNT_SQL.format("7102"), url=migrated_db)
        wait_for(lambda: "sync-airbnb-worker-7102" in cluster.kubectl(
                                     "get", "deployments", "-o", "name", namespace=namespace).stdout, 60, "a worker after renewals")
    finally:
        assert op.stop() == 0, op.raw_log()[-3000:]
    log = op.raw_log()
    tokens = [f.read_text().strip() for f in state.glob("token.*")]
    assert len(tokens) >= 3
    assert not any(t in log for t in tokens), "a token reached the log"


def test_a_failing_plugin_is_a_clear_error_and_nothing_is_written(plugin, cluster, namespace, migrated_db, pg):
    path, state = plugin
    set_plugin(path, state, mode="fail")
    pg.psql(ACCOUNT_SQL.format("7201"), url=migrated_db)
    env = cli_env(migrated_db, path, namespace)
    for cmd in ("plan", "status"):
        p = run_cli(cmd, env=env)
        assert p.returncode == 1, (cmd, p.stdout, p.stderr)
        assert "exec plugin" in p.stderr and "get-token: exited with status 1" in p.stderr, p.stderr
        assert "get-token: no login session" in p.stderr  # the plugin's own message, passed through
    p = run_cli("run", env=dict(env, HEALTH_ADDR="127.0.0.1:0", POD_NAME=f"op-{namespace}"), timeout=60)
    assert p.returncode != 0
    assert "exec plugin" in p.stderr and "exited with status 1" in p.stderr, p.stderr
    # nothing written anywhere
    assert cluster.kubectl_json("get", "deployments", namespace=namespace)["items"] == []
    assert cluster.kubectl_json("get", "events", namespace=namespace)["items"] == []
    assert cluster.kubectl_json("get", "leases", namespace=namespace)["items"] == []
    assert pg.psql("select count(*) from sync_airbnb_operator.audit_log", url=migrated_db).stdout.strip() == "0"
    # a plugin that is not installed: the installHint is shown
    doc = yaml.safe_load(Path(path).read_text())
    doc["users"][0]["user"]["exec"]["command"] = "./bin/not-installed"
    Path(path).write_text(yaml.safe_dump(doc))
    p = run_cli("status", env=env)
    assert p.returncode == 1 and "cannot run it" in p.stderr and "get-token is in the test's bin directory" in p.stderr


def test_kubeconfig_list_merge_context_and_home_fallback(cluster, namespace, migrated_db, tmp_path):
    cl, user = admin_parts(cluster)
    # users in one file, clusters and contexts in another, a missing file first:
    # the context "target" exists only in the second file, "main" (current) points nowhere
    users = tmp_path / "users.yaml"
    users.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "users": [{"name": "u", "user": user}],
                                     "current-context": "main"}))
    contexts = tmp_path / "contexts.yaml"
    kubeconfig(contexts, cluster=cl, user=None, context="broken",
               extra_contexts=[{"name": "target", "context": {"cluster": "c", "user": "u", "namespace": namespace}}])
    listing = f"{tmp_path}/missing.yaml:{users}:{contexts}"
    env = cli_env(migrated_db, listing, namespace)
    p = run_cli("status", env=env)
    assert p.returncode == 1 and 'context "main" not found' in p.stderr, p.stderr  # users.yaml's current-context wins
    for extra in ({"KUBE_CONTEXT": "target"}, {}):
        args = () if extra else ("--context", "target")
        p = run_cli("status", "-o", "json", *args, env=dict(env, **extra))
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["namespace"] == namespace
    # no KUBECONFIG, not in a pod: ~/.kube/config
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    kubeconfig(home / ".kube" / "config", cluster=cl, user=user, namespace=namespace)
    env_home = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    env_home.update(HOME=str(home), DATABASE_URL=migrated_db, OPERATOR_NAMESPACE=namespace)
    p = subprocess.run([binary(), "status"], env=env_home, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("tinyproxy") is None, reason="never: tools/bootstrap installs tinyproxy-bin")
def test_proxy_url_carries_every_request(cluster, namespace, migrated_db, tmp_path):
    port = free_port()
    log = tmp_path / "tinyproxy.log"
    conf = tmp_path / "tinyproxy.conf"
    conf.write_text(f"Port {port}\nListen 127.0.0.1\nTimeout 60\nLogLevel Connect\nLogFile \"{log}\"\n"
                    "MaxClients 20\nAllow 127.0.0.1\n")
    proxy = subprocess.Popen(["tinyproxy", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        def listening():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_for(listening, 20, "tinyproxy listening")
        cl, user = admin_parts(cluster)
        server = cl["server"]
        hostport = server.split("://", 1)[1]
        kc = kubeconfig(tmp_path / "proxied", cluster=dict(cl, **{"proxy-url": f"http://127.0.0.1:{port}"}),
                        user=user, namespace=namespace)
        env = cli_env(migrated_db, kc, namespace, NO_PROXY="*", no_proxy="*")  # proxy-url wins over no_proxy
        p = run_cli("status", env=env)
        assert p.returncode == 0, p.stderr
        wait_for(lambda: log.exists() and f"CONNECT {hostport}" in log.read_text(), 10,
                 lambda: log.read_text() if log.exists() else "no proxy log")
        # a proxy-url where no proxy listens: the request fails, it does not go around
        kc2 = kubeconfig(tmp_path / "dead-proxy", cluster=dict(cl, **{"proxy-url": f"http://127.0.0.1:{free_port()}"}),
                         user=user, namespace=namespace)
        p = run_cli("status", env=cli_env(migrated_db, kc2, namespace))
        assert p.returncode == 1 and "kubernetes" in p.stderr.lower(), p.stderr
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
