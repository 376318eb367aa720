"""The install path of the README, command by command, on a real node, then the operator's
job with real worker pods of the real sync-airbnb app. Tests run in file order and build on
each other (one install per session); each asserts on what the cluster and the database show.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import NODE_DIR, NODE_IP, REPO

WORKERS = "sync-airbnb"
SYSTEM = "sync-airbnb-system"
DB_NAME = "sync_airbnb_e2e"
DB_ROLE = "sync_airbnb_e2e"


# ---- helpers -------------------------------------------------------------------------

def wait_for(what: str, check, timeout: float = 120, interval: float = 0.25):
    """Polls check() until it returns a truthy value; returns it, or fails saying `what`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (subprocess.CalledProcessError, RuntimeError, KeyError, IndexError, ValueError) as e:
            last = e
        else:
            if last:
                return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def readme_install_steps() -> dict[int, str]:
    """The shell commands of each numbered step of the README's 'Install in a cluster'."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Install in a cluster", 1)[1].split("\n## ", 1)[0]
    steps: dict[int, list[str]] = {}
    cur = None
    for line in section.splitlines():
        m = re.match(r"^(\d+)\. ", line)
        if m:
            cur = int(m.group(1))
            steps[cur] = []
        elif cur is not None and line.startswith("       ") and line.strip():
            steps[cur].append(line[7:])
    return {k: "\n".join(v) for k, v in steps.items() if v}


class Env:
    """What the install made: the node, the database, and how to reach them."""

    def __init__(self, node, pg, images):
        self.node, self.pg, self.images = node, pg, images
        self.password = secrets.token_hex(16)
        port = pg.url.rsplit(":", 1)[1].split("/", 1)[0]
        # What the pods use: the node's bridge address, a password login.
        self.pod_db_url = (f"postgresql://{DB_ROLE}:{self.password}@{NODE_IP}:{port}/{DB_NAME}"
                           "?sslmode=disable")
        self.admin_url = pg.url_for(DB_NAME)  # loopback, trust: the "admin" side of these tests

    def kubectl(self, *args, **kw):
        return self.node.kubectl(*args, **kw)

    def kjson(self, *args, **kw):
        return self.node.kubectl_json(*args, **kw)

    def sql(self, q: str) -> str:
        return self.pg.psql(q, url=self.admin_url).stdout.strip()

    def bash(self, script: str, stdin: str = "", timeout: int = 1200) -> subprocess.CompletedProcess:
        env = dict(self.node.env)
        return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=REPO, env=env,
                              input=stdin, text=True, capture_output=True, timeout=timeout)

    def workers(self) -> list[dict]:
        return self.kjson("get", "deployments", "-l", "app=sync-airbnb-worker", namespace=WORKERS)["items"]

    def pods(self, account_id: str) -> list[dict]:
        return self.kjson("get", "pods", "-l", f"account-id={account_id}", namespace=WORKERS)["items"]

    def operator_pods(self) -> list[dict]:
        return self.kjson("get", "pods", "-l", "app.kubernetes.io/component=operator",
                          namespace=SYSTEM)["items"]

    def add_account(self, account_id: str, cookie: str = "c0") -> None:
        self.sql("INSERT INTO airbnb.accounts (account_id, airbnb_cookie, x_client_version, user_agent,"
                 f" is_active) VALUES ('{account_id}', '{cookie}', 'v1', 'e2e-agent', true)")


def ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in pod.get("status", {}).get("conditions", []))


def ready_pod(env: Env, account_id: str) -> dict | None:
    pods = [p for p in env.pods(account_id) if not p["metadata"].get("deletionTimestamp")]
    return pods[0] if len(pods) == 1 and ready(pods[0]) else None


def json_stream(stream):
    """The JSON documents `kubectl get -w -o json` writes one after another, as they come."""
    dec = json.JSONDecoder()
    buf = ""
    for chunk in iter(lambda: stream.read(1), ""):
        buf += chunk
        while True:
            buf = buf.lstrip()
            try:
                doc, end = dec.raw_decode(buf)
            except ValueError:
                break
            buf = buf[end:]
            yield doc


class PodWatch:
    """`kubectl get pods -w` for one account: every pod seen, and how many existed at once."""

    def __init__(self, env: Env, account_id: str):
        self.proc = subprocess.Popen(
            [env.node.kubectl_path, "--kubeconfig", env.node.kubeconfig, "-n", WORKERS, "get", "pods",
             "-l", f"account-id={account_id}", "--watch", "--output-watch-events", "-o", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.live: set[str] = set()
        self.seen: set[str] = set()
        self.max_live = 0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for ev in json_stream(self.proc.stdout):
            uid = ev["object"]["metadata"]["uid"]
            self.seen.add(uid)
            if ev["type"] == "DELETED":
                self.live.discard(uid)
            else:
                self.live.add(uid)
            self.max_live = max(self.max_live, len(self.live))

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def env(node, node_pg, images):
    e = Env(node, node_pg, images)
    node_pg.psql(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)", url=node_pg.admin_url)
    node_pg.psql(f"DROP ROLE IF EXISTS {DB_ROLE}", url=node_pg.admin_url)
    node_pg.psql(f"CREATE ROLE {DB_ROLE} LOGIN PASSWORD '{e.password}'", url=node_pg.admin_url)
    node_pg.psql(f"CREATE DATABASE {DB_NAME} OWNER {DB_ROLE}", url=node_pg.admin_url)
    return e


# ---- the install path ----------------------------------------------------------------

def create_app_table(env: Env) -> None:
    """What the app's own Alembic does first (its later tables need TimescaleDB, which Debian
    does not ship): the airbnb.accounts table from the app's own SQLAlchemy model, created by
    the real worker image in a one-off Pod, as the database role the app uses."""
    script = ("from sqlalchemy import create_engine, text\n"
              "from sync_airbnb import config\n"
              "from sync_airbnb.models.account import Account\n"
              "engine = create_engine(config.DATABASE_URL)\n"
              "with engine.begin() as c:\n"
              "    c.execute(text('CREATE SCHEMA IF NOT EXISTS airbnb'))\n"
              "Account.__table__.create(engine, checkfirst=True)\n"
              "print('accounts table ready')\n")
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "app-schema", "namespace": WORKERS},
        "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                 "containers": [{"name": "app", "image": env.images["worker"],
                                 "imagePullPolicy": "Never",
                                 "command": ["python3", "-c", script],
                                 "env": [{"name": "MODE", "value": "admin"},
                                         {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {
                                             "name": "sync-airbnb-db", "key": "url"}}}]}]},
    }
    env.kubectl("apply", "-f", "-", input=json.dumps(pod))
    phase = wait_for("the app-schema pod to finish", lambda: env.kjson(
        "get", "pod", "app-schema", namespace=WORKERS)["status"].get("phase") in ("Succeeded", "Failed")
        and env.kjson("get", "pod", "app-schema", namespace=WORKERS)["status"]["phase"], timeout=300)
    log = env.kubectl("logs", "app-schema", namespace=WORKERS, check=False).stdout
    assert phase == "Succeeded", log
    assert "accounts table ready" in log
    env.kubectl("delete", "pod", "app-schema", namespace=WORKERS)


def test_install_by_the_readme(env):
    steps = readme_install_steps()
    # Step 1 builds and pushes the image with Docker; here tools/image built the same
    # Dockerfile without a daemon and loaded it into the node (the `images` fixture).
    assert "docker build" in steps[1] and env.images["operator"].endswith(
        "sync-airbnb-operator:0.1.0"), steps[1]
    # Step 2, as written: namespaces, then each Secret read from the terminal.
    secrets_in = {"DB_URL": env.pod_db_url, "API_KEY": "e2e-api-key"}
    reads = re.findall(r"read -rs (\w+)", steps[2])
    assert reads and reads[0] == "DB_URL", steps[2]
    stdin = "".join(secrets_in[name] + "\n" for name in reads)
    p = env.bash(steps[2], stdin=stdin)
    assert p.returncode == 0, p.stdout + p.stderr
    for ns in (WORKERS, SYSTEM):
        env.kubectl("get", "secret", "sync-airbnb-db", namespace=ns)
    # The app's migrations run before the operator's on a real install (docs/migrations.md).
    create_app_table(env)
    # Step 3, as written: dry run, apply, the migration Job, the operator's rollout.
    p = env.bash(steps[3])
    assert p.returncode == 0, p.stdout + p.stderr
    job = env.kjson("get", "jobs", "-l", "app.kubernetes.io/component=migrate", namespace=WORKERS)["items"][0]
    assert job["status"].get("succeeded") == 1
    ops = env.operator_pods()
    assert len(ops) == 2 and all(ready(p) for p in ops)
    # The operator reconciles only after the Job applied the last migration.
    last_applied = env.sql("SELECT to_char(max(applied_at) AT TIME ZONE 'UTC', "
                           "'YYYY-MM-DD\"T\"HH24:MI:SS.MS') FROM sync_airbnb_operator.schema_migrations")
    assert last_applied
    for p in ops:
        assert p["spec"]["nodeName"] == "sao-node-0"
        lines = [json.loads(l) for l in env.kubectl("logs", p["metadata"]["name"], namespace=SYSTEM)
                 .stdout.splitlines() if l.startswith("{")]
        at_head = [l["ts"] for l in lines if l.get("msg", "").startswith("schema at head")]
        assert at_head and at_head[0][:23] >= last_applied, (at_head, last_applied)
    # Pod Security "restricted" is enforced by the API server in the operator's namespace.
    bad = env.kubectl("run", "rootpod", "--image", env.images["worker"], "--restart=Never",
                      "--dry-run=server", namespace=SYSTEM, check=False)
    assert bad.returncode != 0 and "PodSecurity" in bad.stderr, bad.stderr
    # Step 4, as written.
    p = env.bash(steps[4])
    assert p.returncode == 0, p.stdout + p.stderr


def test_operator_reconciles_from_inside_its_pod(env):
    # Leader election with the ServiceAccount token, from inside the pod.
    names = {p["metadata"]["name"] for p in env.operator_pods()}
    # The Lease lives beside the workers it guards (OPERATOR_NAMESPACE).
    holder = wait_for("a leader", lambda: next(
        (l["spec"].get("holderIdentity") for l in env.kjson("get", "leases", namespace=WORKERS)["items"]
         if l["spec"].get("holderIdentity") in names), None))
    assert holder in names
    p = env.kubectl("exec", "deploy/sync-airbnb-operator", "--", "sync-airbnb-operator", "status",
                    "-o", "json", namespace=SYSTEM)
    json.loads(p.stdout)


# ---- real workers --------------------------------------------------------------------

def test_active_account_runs_the_real_app(env):
    # Two accounts: deactivating the only active one would be an empty desired set,
    # which the operator holds (DESIGN §5.2).
    env.add_account("310316675")
    env.add_account("4242")
    pod = wait_for("the worker pod to pass its readiness probe", lambda: ready_pod(env, "310316675"),
                   timeout=300)
    wait_for("worker 4242 Ready", lambda: ready_pod(env, "4242"), timeout=300)
    c = pod["spec"]["containers"][0]
    assert c["image"] == env.images["worker"].removeprefix("docker.io/library/")
    st = pod["status"]["containerStatuses"][0]
    assert st["ready"] and st["restartCount"] == 0, st
    # The real readiness endpoint, asked directly: it ran SELECT 1 on PostgreSQL.
    ip = pod["status"]["podIP"]
    with urllib.request.urlopen(f"http://{ip}:8000/health/ready", timeout=10) as r:
        assert r.status == 200
    # last_sync_at IS NULL: the worker attempts its initial sync at once (it fails here:
    # no name resolves on this node, so nothing leaves the machine).
    name = pod["metadata"]["name"]
    wait_for("the initial sync attempt in the worker's log", lambda: "First sync for account 310316675"
             in env.kubectl("logs", name, namespace=WORKERS).stdout, timeout=120)
    log = env.kubectl("logs", name, namespace=WORKERS).stdout
    assert "c0" not in re.findall(r"cookie\S*", log)


def test_credential_change_rolls_with_never_two_workers(env):
    before = ready_pod(env, "310316675")
    assert before
    watch = PodWatch(env, "310316675")
    try:
        wait_for("the watch to see the running pod", lambda: before["metadata"]["uid"] in watch.seen, timeout=30)
        env.sql("UPDATE airbnb.accounts SET airbnb_cookie = 'c1-admin' WHERE account_id = '310316675'")
        after = wait_for("a new worker pod, Ready", lambda: (lambda p: p if p and p["metadata"]["uid"]
                         != before["metadata"]["uid"] else None)(ready_pod(env, "310316675")), timeout=420)
        # The watch reads its stream on its own thread: let it catch up with what `get` saw.
        wait_for("the watch to see the new pod", lambda: after["metadata"]["uid"] in watch.seen, timeout=60)
    finally:
        watch.stop()
    assert after["metadata"]["annotations"]["sync-airbnb.io/credentials-fingerprint"] != \
        before["metadata"]["annotations"]["sync-airbnb.io/credentials-fingerprint"]
    assert watch.max_live == 1, f"{watch.max_live} pods of one account existed at once"
    assert len(watch.seen) >= 2


def test_deactivation_stops_the_worker_within_its_grace_period(env):
    pod = ready_pod(env, "310316675")
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    t0 = time.monotonic()
    env.sql("UPDATE airbnb.accounts SET is_active = false WHERE account_id = '310316675'")
    wait_for("the worker Deployment to go", lambda: not [d for d in env.workers()
             if d["metadata"]["annotations"].get("sync-airbnb.io/account-id") == "310316675"], timeout=60)
    wait_for("the worker pod to stop", lambda: not env.pods("310316675"), timeout=grace + 30)
    assert time.monotonic() - t0 <= grace + 30


# ---- rules through the ConfigMap -----------------------------------------------------

def rules_copy(tmp_path: Path, edit) -> Path:
    """A copy of lua/ (its kustomization and rules) with deployment.lua edited."""
    dst = tmp_path / "lua"
    shutil.copytree(REPO / "lua", dst)
    f = dst / "rules" / "deployment.lua"
    f.write_text(edit(f.read_text()))
    return dst


def add_env_var(src: str) -> str:
    marker = '{ name = "MODE", value = "worker" },'
    assert marker in src
    return src.replace(marker, marker + ' { name = "E2E_RULES_EDIT", value = "1" },', 1)


def env_names(dep: dict) -> set[str]:
    return {e["name"] for e in dep["spec"]["template"]["spec"]["containers"][0].get("env", [])}


def test_rules_edit_by_kubectl_apply_reaches_the_workers(env, tmp_path):
    assert ready_pod(env, "4242")
    lua = rules_copy(tmp_path, add_env_var)
    t0 = time.monotonic()
    env.kubectl("apply", "-k", str(lua))
    dep = wait_for("the edited rules to reach the worker Deployment", lambda: next(
        (d for d in env.workers() if "E2E_RULES_EDIT" in env_names(d)), None), timeout=180)
    took = time.monotonic() - t0
    print(f"\nConfigMap edit -> worker Deployment re-rendered: {took:.1f} s")
    wait_for("the re-rendered worker Ready", lambda: (lambda p: p and "E2E_RULES_EDIT" in
             {e["name"] for e in p["spec"]["containers"][0].get("env", [])})(ready_pod(env, "4242")),
             timeout=420)
    assert dep["metadata"]["annotations"]["sync-airbnb.io/account-id"] == "4242"


def test_broken_rules_edit_is_refused_and_no_worker_changes(env, tmp_path):
    before = {d["metadata"]["name"]: d["metadata"]["generation"] for d in env.workers()}
    assert before
    t0 = env.kjson("get", "events", namespace=SYSTEM)["items"]
    seen = {e["metadata"]["uid"] for e in t0}
    lua = rules_copy(tmp_path, lambda s: s + "\nthis is not Lua(\n")
    env.kubectl("apply", "-k", str(lua))

    def rejected():
        for ns in (SYSTEM, WORKERS):
            for e in env.kjson("get", "events", namespace=ns)["items"]:
                if e["metadata"]["uid"] not in seen and e.get("reason") == "RulesRejected":
                    return e
        return None
    ev = wait_for("a RulesRejected Event", rejected, timeout=180)
    assert "deployment.lua" in ev["message"]
    # The operator stays live and ready on its last good rules.
    assert all(ready(p) for p in env.operator_pods())
    after = {d["metadata"]["name"]: d["metadata"]["generation"] for d in env.workers()}
    assert after == before
    # Put the shipped rules back (the next test needs good rules).
    env.kubectl("apply", "-k", str(REPO / "lua"))
    wait_for("the shipped rules back on the workers", lambda: all(
        "E2E_RULES_EDIT" not in env_names(d) for d in env.workers()), timeout=180)


def break_the_app(src: str) -> str:
    """deployment.lua with a worker command that really exits 1 in the real worker image."""
    marker = 'command = array({ "uvicorn", "sync_airbnb.main:app",'
    assert marker in src
    return src.replace(marker, 'command = array({ "python3", "-c", '
                       '"raise SystemExit(\'e2e: a rules edit that breaks the app\')", "sync_airbnb.main:app",', 1)


def quick_policy(lua: Path) -> None:
    """rollout.lua with a short soak and deadline (the shipped 30 s / 300 s work too, slower)."""
    f = lua / "rules" / "rollout.lua"
    text = f.read_text()
    for old, new in (("soak_seconds = 30,", "soak_seconds = 5,"),
                     ("ready_timeout_seconds = 300,", "ready_timeout_seconds = 150,")):
        assert old in text, old
        text = text.replace(old, new, 1)
    f.write_text(text)


def rollout_status(env: Env, *args: str) -> str:
    return env.kubectl("exec", "deploy/sync-airbnb-operator", "--", "sync-airbnb-operator", "rollout",
                       "status", *args, namespace=SYSTEM).stdout


def command_of(dep: dict) -> list[str]:
    return dep["spec"]["template"]["spec"]["containers"][0]["command"]


def test_broken_change_halts_after_the_canary_and_rolls_it_back(env, tmp_path):
    """DESIGN.md §5.10 with real pods: a rules edit whose worker command exits 1 reaches the
    canary only; the other workers keep their Deployment and their Ready pods; the policy's
    rollback puts the canary back on its previous template, Ready again."""
    for i in ("7001", "7002", "7003"):
        env.add_account(i)
    for i in ("7001", "7002", "7003"):
        wait_for(f"worker {i} Ready", lambda i=i: ready_pod(env, i), timeout=420)
    wait_for("no rollout under way", lambda: json.loads(rollout_status(env, "-o", "json"))["phase"] == "complete",
             timeout=180)
    before = {d["metadata"]["name"]: d for d in env.workers()}
    assert len(before) >= 3, sorted(before)
    names = sorted(before)
    canary, others = names[0], names[1:]
    pods_before = {n: ready_pod(env, before[n]["metadata"]["annotations"]["sync-airbnb.io/account-id"])
                   for n in others}
    assert all(pods_before.values()), pods_before
    seen = {e["metadata"]["uid"] for e in env.kjson("get", "events", namespace=SYSTEM)["items"]}
    since = env.sql("SELECT now()")

    lua = rules_copy(tmp_path, break_the_app)
    quick_policy(lua)
    t0 = time.monotonic()
    env.kubectl("apply", "-k", str(lua))
    broken = wait_for("the canary to get the failing command", lambda: (lambda d: d if d and "python3" in
                      command_of(d) else None)(next((d for d in env.workers() if d["metadata"]["name"] == canary),
                                                    None)), timeout=180)
    assert broken["metadata"]["generation"] > before[canary]["metadata"]["generation"]
    st = wait_for("the rollout to halt", lambda: (lambda s: s if s["phase"] == "halted" else None)(
        json.loads(rollout_status(env, "-o", "json"))), timeout=300)
    print(f"\nrules edit -> rollout halted: {time.monotonic() - t0:.1f} s")
    assert canary in st["halt_reason"] and st["wave"] == 1 and st["reached"] == 0, st
    text = rollout_status(env)
    print(text)
    assert "phase:        halted" in text and canary in text, text

    # Rolled back: the canary's template is the one it had, and a pod of it is Ready again.
    back = wait_for("the canary back on its previous template", lambda: (lambda d: d if d and
                    d["spec"]["template"] == before[canary]["spec"]["template"] else None)(
                    next((d for d in env.workers() if d["metadata"]["name"] == canary), None)), timeout=120)
    assert "uvicorn" in command_of(back)
    canary_id = before[canary]["metadata"]["annotations"]["sync-airbnb.io/account-id"]
    pod = wait_for("the canary Ready again", lambda: ready_pod(env, canary_id), timeout=420)
    assert "uvicorn" in pod["spec"]["containers"][0]["command"]

    # Every other worker untouched: same generation and template, the same pod, still Ready.
    now = {d["metadata"]["name"]: d for d in env.workers()}
    for n in others:
        assert now[n]["metadata"]["generation"] == before[n]["metadata"]["generation"], n
        assert now[n]["spec"]["template"] == before[n]["spec"]["template"], n
        p = ready_pod(env, before[n]["metadata"]["annotations"]["sync-airbnb.io/account-id"])
        assert p and p["metadata"]["uid"] == pods_before[n]["metadata"]["uid"], (n, p)
    audit = env.sql("SELECT string_agg(deployment, ' ') FROM sync_airbnb_operator.audit_log "
                    f"WHERE action = 'update' AND at > '{since}'")
    assert not set((audit or "").split()) & set(others), audit

    # Reported where users look: on the rules ConfigMap (beside RulesReloaded) and the canary.
    def halted_events():
        cm = [e for e in env.kjson("get", "events", namespace=SYSTEM)["items"]
              if e["metadata"]["uid"] not in seen and e.get("reason") == "RolloutHalted"]
        dep = [e for e in env.kjson("get", "events", namespace=WORKERS)["items"]
               if e.get("reason") == "RolloutHalted" and e["involvedObject"]["name"] == canary]
        return cm and dep and (cm, dep)
    cm_ev, _ = wait_for("RolloutHalted Events", halted_events, timeout=30)
    assert cm_ev[0]["involvedObject"]["kind"] == "ConfigMap"
    assert cm_ev[0]["involvedObject"]["name"] == "sync-airbnb-operator-rules"

    # The shipped rules back: they render what the workers run, so no rollout is needed.
    env.kubectl("apply", "-k", str(REPO / "lua"))
    wait_for("the rollout resolved by the shipped rules", lambda: json.loads(
        rollout_status(env, "-o", "json"))["phase"] == "complete", timeout=180)
    assert all("uvicorn" in command_of(d) for d in env.workers())


def test_deleting_the_leader_pod_hands_over(env):
    def holder():
        for l in env.kjson("get", "leases", namespace=WORKERS)["items"]:
            h = l["spec"].get("holderIdentity")
            if h and h in {p["metadata"]["name"] for p in env.operator_pods()}:
                return h
        return None
    old = wait_for("a leader", holder)
    env.kubectl("delete", "pod", old, "--wait=false", namespace=SYSTEM)
    new = wait_for("another replica to take the Lease", lambda: (lambda h: h if h and h != old else None)(
        holder()), timeout=120)
    assert new != old
    env.add_account("5151")
    wait_for("the new leader to create worker 5151", lambda: any(
        d["metadata"]["annotations"].get("sync-airbnb.io/account-id") == "5151" for d in env.workers()),
        timeout=60)


# ---- and nothing is left --------------------------------------------------------------

def test_down_removes_everything_the_node_made(env):
    node_dir = Path(NODE_DIR) / "node"
    sock = str(node_dir / "containerd.sock")
    p = subprocess.run([str(REPO / "tools" / "cluster"), "down"], env=dict(os.environ, CLUSTER_DIR=NODE_DIR),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    left = []
    me = os.getpid()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"{NODE_DIR}/" in cmd or sock in cmd:
            left.append(f"process {d.name}: {cmd[:120]}")
    for line in Path("/proc/self/mounts").read_text().splitlines():
        if line.split()[1].startswith(f"{NODE_DIR}/"):
            left.append(f"mount {line.split()[1]}")
    if subprocess.run(["ip", "link", "show", "saobr0"], capture_output=True).returncode == 0:
        left.append("bridge saobr0")
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    left += [f"iptables {l}" for l in rules.splitlines() if "KUBE-" in l or "SAO-NODE" in l]
    for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n"):
        name = ns.split(" ")[0]
        if name.startswith("cni-"):
            addrs = subprocess.run(["ip", "-n", name, "-4", "addr"], capture_output=True, text=True).stdout
            if "inet 10.200.0." in addrs:
                left.append(f"netns {name}")
    for cg in Path("/sys/fs/cgroup").glob("*/kubepods*"):
        left.append(f"cgroup {cg}")
    assert not left, "left behind by tools/cluster down:\n" + "\n".join(left)
