"""Figures on the real node (tools/bench --real-node): the operator installed by the README's
steps as in tests/e2e, real worker pods of the real sync-airbnb image.

  COMMIT -> worker Pod Ready   one account at a time (each INSERT committed alone, the next
                               after the previous pod was Ready), p50/p99/max
  ConfigMap edit -> in effect  `kubectl apply -k` of an edited rules copy until the operator
                               logs the reload, and until a worker Deployment shows the edit
  operator memory at rest      the leader pod's memory cgroup (usage, working set = usage -
                               inactive_file, rss) after N workers are Ready and it idled

The workers' resources are shrunk by a rules edit (a user's way to fit many workers on a
two-core node), nothing else. Prints a markdown table and writes it to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "tests" / "e2e"))  # first: its conftest is the one imported

import conftest  # noqa: E402
from harness import Cluster, Postgres  # noqa: E402
import test_real_node as e2e  # noqa: E402


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs) + 0.5) - 1))]


class ReadyWatch:
    """Timestamps (monotonic) of each account's first Ready worker pod, from a pod watch."""

    def __init__(self, node):
        self.proc = subprocess.Popen(
            [node.kubectl_path, "--kubeconfig", node.kubeconfig, "-n", e2e.WORKERS, "get", "pods",
             "-l", "app=sync-airbnb-worker", "--watch", "-o", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.ready_at: dict[str, float] = {}
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for pod in e2e.json_stream(self.proc.stdout):
            if e2e.ready(pod):
                acct = pod["metadata"]["labels"].get("account-id")
                with self.lock:
                    self.ready_at.setdefault(acct, time.monotonic())

    def stop(self):
        self.proc.terminate()


def small_workers(src: str) -> str:
    a = 'requests = { memory = "512Mi", cpu = "250m" },'
    assert a in src, "deployment.lua's resources changed: update tools/bench.d/real_node.py"
    return src.replace(a, 'requests = { memory = "64Mi", cpu = "5m" },', 1)


def leader_pod(env) -> dict:
    names = {p["metadata"]["name"]: p for p in env.operator_pods()}
    for lease in env.kjson("get", "leases", namespace=e2e.WORKERS)["items"]:
        h = lease["spec"].get("holderIdentity")
        if h in names:
            return names[h]
    raise RuntimeError("no leader")


def pod_memory(pod: dict) -> dict:
    uid = pod["metadata"]["uid"]
    cid = pod["status"]["containerStatuses"][0]["containerID"].split("//", 1)[1]
    for qos in ("burstable", "besteffort", ""):
        d = Path("/sys/fs/cgroup/memory/kubepods") / qos / f"pod{uid}" / cid
        if d.is_dir():
            stat = dict(l.split() for l in (d / "memory.stat").read_text().splitlines())
            usage = int((d / "memory.usage_in_bytes").read_text())
            return {"usage": usage, "working_set": usage - int(stat.get("total_inactive_file", 0)),
                    "rss": int(stat.get("total_rss", stat.get("rss", 0)))}
    raise RuntimeError(f"no memory cgroup for pod {uid}")


def process_memory(pod: dict) -> str:
    """VmRSS and VmHWM of the operator process itself (its container's cgroup.procs)."""
    uid = pod["metadata"]["uid"]
    cid = pod["status"]["containerStatuses"][0]["containerID"].split("//", 1)[1]
    for d in Path("/sys/fs/cgroup/memory/kubepods").glob(f"*/pod{uid}/{cid}"):
        for pid in (d / "cgroup.procs").read_text().split():
            st = dict(l.split(":", 1) for l in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in l)
            return f"VmRSS {st['VmRSS'].strip()}, VmHWM {st['VmHWM'].strip()}"
    return "?"


def reload_seen(env, since: str) -> bool:
    for p in env.operator_pods():
        for line in env.kubectl("logs", p["metadata"]["name"], "--since-time", since,
                                namespace=e2e.SYSTEM).stdout.splitlines():
            if line.startswith("{") and json.loads(line).get("msg") == "rules in effect":
                return True
    return False


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency-accounts", type=int, default=20)
    ap.add_argument("--workers", type=int, default=100)
    ap.add_argument("--batch", type=int, default=10, help="accounts per COMMIT past the latency ones")
    ap.add_argument("--reloads", type=int, default=3)
    ap.add_argument("--rest", type=float, default=60, help="seconds of idle before memory is read")
    ap.add_argument("--out", default=str(REPO / "build" / "real-node-bench.md"))
    ap.add_argument("--command", default="tools/bench --real-node")
    a = ap.parse_args()

    os.environ["CLUSTER_NODE"] = "real"
    subprocess.run([str(REPO / "tools" / "cluster"), "down"], env=dict(os.environ, CLUSTER_DIR=conftest.NODE_DIR),
                   capture_output=True)
    t0 = time.monotonic()
    node = Cluster.ensure(conftest.NODE_DIR)
    up_s = time.monotonic() - t0
    os.environ["PG_LISTEN"] = f"127.0.0.1,{conftest.NODE_IP}"
    os.environ["PG_HBA_NETWORK"] = conftest.POD_CIDR
    pg = Postgres.ensure(conftest.NODE_PG_DIR)
    tool = str(REPO / "tools" / "image")
    subprocess.run([tool, "build", "operator", "worker"], check=True)
    subprocess.run([tool, "load", "--address", str(Path(conftest.NODE_DIR) / "node" / "containerd.sock"),
                    "operator", "worker"], check=True)
    names = subprocess.run([tool, "names"], check=True, capture_output=True, text=True).stdout.split()
    images = {"operator": next(n for n in names if "sync-airbnb-operator:" in n),
              "worker": next(n for n in names if "/sync-airbnb:" in n)}
    env = e2e.Env(node, pg, images)
    for q in (f"DROP DATABASE IF EXISTS {e2e.DB_NAME} WITH (FORCE)", f"DROP ROLE IF EXISTS {e2e.DB_ROLE}",
              f"CREATE ROLE {e2e.DB_ROLE} LOGIN PASSWORD '{env.password}'",
              f"CREATE DATABASE {e2e.DB_NAME} OWNER {e2e.DB_ROLE}"):
        pg.psql(q, url=pg.admin_url)
    e2e.test_install_by_the_readme(env)

    tmp = Path(tempfile.mkdtemp())
    lua = e2e.rules_copy(tmp, small_workers)
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
    env.kubectl("apply", "-k", str(lua))
    # In effect before the first account: a worker rendered by the old rules would be
    # rolled, and a rolled worker in the middle of its initial sync drains for up to 330 s.
    e2e.wait_for("the small-workers rules in effect", lambda: reload_seen(env, since), timeout=300)
    watch = ReadyWatch(node)
    rows = []
    try:
        # The first account also proves the small-resources rules are in effect.
        lat = []
        for i in range(a.latency_accounts):
            acct = f"9{i:04d}"
            t = time.monotonic()
            env.add_account(acct)
            e2e.wait_for(f"worker {acct} Ready", lambda: acct in watch.ready_at, timeout=600, interval=0.05)
            lat.append(watch.ready_at[acct] - t)
            if i == 0:
                dep = next(d for d in env.workers() if d["metadata"]["labels"].get("account-id") == acct)
                req = dep["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
                assert req["cpu"] == "5m", req
        rows.append(("COMMIT -> worker Pod Ready (real app, one at a time)",
                     f"n={len(lat)}: p50 {statistics.median(lat):.2f} s, p99 {pct(lat, 99):.2f} s, "
                     f"max {max(lat):.2f} s"))
        # ConfigMap edits: until the operator logs the reload, and until a worker shows it.
        rel, seen = [], []
        for r in range(a.reloads):
            lua2 = e2e.rules_copy(tmp / f"r{r}", lambda s, r=r: small_workers(s).replace(
                '{ name = "MODE", value = "worker" },',
                f'{{ name = "MODE", value = "worker" }}, {{ name = "BENCH_RELOAD", value = "{r}" }},', 1))
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
            t = time.monotonic()
            env.kubectl("apply", "-k", str(lua2))
            e2e.wait_for("the reload in the operator's log", lambda: reload_seen(env, since), timeout=300,
                         interval=0.2)
            rel.append(time.monotonic() - t)
            e2e.wait_for("a worker re-rendered", lambda: any(
                {"name": "BENCH_RELOAD", "value": str(r)} in d["spec"]["template"]["spec"]["containers"][0]["env"]
                for d in env.workers()), timeout=300, interval=0.2)
            seen.append(time.monotonic() - t)
        rows.append(("ConfigMap edit (kubectl apply -k) -> operator reloaded its rules",
                     f"n={len(rel)}: " + ", ".join(f"{x:.1f} s" for x in rel)))
        rows.append(("ConfigMap edit -> first worker Deployment re-rendered",
                     f"n={len(seen)}: " + ", ".join(f"{x:.1f} s" for x in seen)))
        # Many workers, then the operator at rest. In batches: a two-core node cannot start
        # 80 Python workers at once within their startup probe's 120 s (measured: they are
        # killed and restarted over and over), which is no figure of the operator's.
        more = [f"8{i:04d}" for i in range(a.workers - a.latency_accounts)]
        t = time.monotonic()
        for b0 in range(0, len(more), a.batch):
            batch = more[b0:b0 + a.batch]
            env.sql("INSERT INTO airbnb.accounts (account_id, airbnb_cookie, x_client_version, user_agent, "
                    "is_active) SELECT x, 'c0', 'v1', 'bench', true FROM unnest(ARRAY["
                    + ",".join(f"'{m}'" for m in batch) + "]) x")
            e2e.wait_for(f"batch {b0 // a.batch + 1} Ready", lambda batch=batch: all(
                m in watch.ready_at for m in batch), timeout=1800, interval=1)
        rows.append((f"{len(more)} more accounts, {a.batch} per COMMIT -> all their pods Ready",
                     f"{time.monotonic() - t:.0f} s ({a.workers} real workers on the node)"))
        time.sleep(a.rest)  # "at rest": nothing changes for this long
        pod = leader_pod(env)
        m = pod_memory(pod)
        mib = 1024 * 1024
        rows.append((f"operator (leader) pod memory at rest with {a.workers} workers, cgroup",
                     f"working set {m['working_set'] / mib:.1f} MiB, rss (anonymous) {m['rss'] / mib:.1f} MiB, "
                     f"usage {m['usage'] / mib:.1f} MiB; the process: {process_memory(pod)}"))
        other = next(p for p in env.operator_pods() if p["metadata"]["name"] != pod["metadata"]["name"])
        m2 = pod_memory(other)
        rows.append(("standby operator pod memory, cgroup",
                     f"working set {m2['working_set'] / mib:.1f} MiB, rss (anonymous) {m2['rss'] / mib:.1f} MiB; "
                     f"the process: {process_memory(other)}"))
        rows.insert(0, ("tools/cluster up --node real (warm binaries)", f"{up_s:.1f} s"))
    finally:
        watch.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    text = ["# Real-node figures", "", f"Command: `{a.command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"{os.cpu_count()} cores)", "", "| figure | value |", "|---|---|"]
    text += [f"| {k} | {v} |" for k, v in rows]
    out = "\n".join(text) + "\n"
    print(out)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(out)


if __name__ == "__main__":
    main()
