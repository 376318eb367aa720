"""Real Kubernetes control plane + PostgreSQL for the integration tests.

Both are started by the project's own scripts (tools/cluster, tools/pg); nothing here
fakes an API server. Used by conftest.py; importable on its own for ad-hoc scripts:

    from harness import Cluster, Postgres
    c = Cluster.ensure(); print(c.kubectl("get", "nodes").stdout)

Reuse: both scripts are idempotent, so if a cluster / database is already running in
$CLUSTER_DIR / $PG_DIR (the values `tools/cluster env` and `tools/pg env` export; defaults
/tmp/sync-airbnb-cluster and /tmp/sync-airbnb-pg) it is reused and left running. What
the harness started itself it stops at the end of the session, unless KEEP_CLUSTER=1.
An unrelated $KUBECONFIG is never used, so tests cannot touch a real cluster by mistake.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"
DEFAULT_CLUSTER_DIR = "/tmp/sync-airbnb-cluster"
DEFAULT_PG_DIR = "/tmp/sync-airbnb-pg"
PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
# A cold `tools/cluster up` compiles Kubernetes (tens of minutes on 2 cores).
UP_TIMEOUT = int(os.environ.get("CLUSTER_UP_TIMEOUT", "5400"))


def pinned_k8s_version() -> str:
    """The Kubernetes version pinned in tools/cluster.d/k8s/go.mod (e.g. 'v1.34.4')."""
    for line in (TOOLS / "cluster.d" / "k8s" / "go.mod").read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["require"] and parts[1:2] == ["k8s.io/kubernetes"]:
            return parts[2]
        if parts[:1] == ["k8s.io/kubernetes"] and len(parts) >= 2:
            return parts[1]
    raise RuntimeError("k8s.io/kubernetes not found in tools/cluster.d/k8s/go.mod")


def _run(cmd, *, env=None, input=None, check=True, timeout=120) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [str(c) for c in cmd], env=env, input=input, text=True,
        capture_output=True, timeout=timeout,
    )
    if check and p.returncode != 0:
        raise RuntimeError(
            f"command failed ({p.returncode}): {' '.join(map(str, cmd))}\n"
            f"--- stdout ---\n{p.stdout}\n--- stderr ---\n{p.stderr}"
        )
    return p


def _cluster_up(env: dict) -> tuple[int, str]:
    """Runs tools/cluster up, passing its output through (a cold start builds
    Kubernetes and prints its progress) and returning its exit code and last lines."""
    p = subprocess.Popen([str(TOOLS / "cluster"), "up"], env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []

    def pump():
        for line in p.stdout:
            print(line, end="", flush=True)
            tail.append(line.rstrip("\n"))
            del tail[:-60]

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = p.wait(timeout=UP_TIMEOUT)
    except BaseException:
        p.kill()
        raise
    reader.join(timeout=10)  # a daemon holding the pipe must not hang the session
    return rc, "\n".join(tail)


def _is_up(tool: str, env: dict) -> bool:
    return subprocess.run([str(TOOLS / tool), "status"], env=env,
                          capture_output=True, timeout=60).returncode == 0


def unique_name(prefix: str, hint: str = "", maxlen: int = 40) -> str:
    """A DNS-label/SQL-identifier-safe unique name like 't-deploy-works-3f9a1c'."""
    hint = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")
    suffix = secrets.token_hex(3)
    base = f"{prefix}-{hint}" if hint else prefix
    base = base[: maxlen - len(suffix) - 1].rstrip("-")
    return f"{base}-{suffix}"


@dataclass
class Cluster:
    dir: Path
    started_here: bool = False

    @property
    def kubeconfig(self) -> str:
        return str(self.dir / "kubeconfig")

    @property
    def bin_dir(self) -> str:
        return str(self.dir / "bin")

    @property
    def kubectl_path(self) -> str:
        return str(self.dir / "bin" / "kubectl")

    @property
    def env(self) -> dict:
        """Environment for subprocesses (the operator, kubectl): KUBECONFIG and PATH set."""
        e = dict(os.environ)
        e["KUBECONFIG"] = self.kubeconfig
        e["CLUSTER_DIR"] = str(self.dir)
        e["PATH"] = self.bin_dir + os.pathsep + e.get("PATH", "")
        return e

    @property
    def server(self) -> str:
        ports = dict(l.split("=", 1) for l in (self.dir / "ports.env").read_text().split())
        return f"https://127.0.0.1:{ports['API_PORT']}"

    @classmethod
    def ensure(cls, cluster_dir: str | None = None) -> "Cluster":
        d = Path(cluster_dir or os.environ.get("CLUSTER_DIR") or DEFAULT_CLUSTER_DIR)
        env = dict(os.environ, CLUSTER_DIR=str(d))
        was_up = _is_up("cluster", env)
        rc, tail = _cluster_up(env)
        if rc != 0:
            # The start of a test cluster, not the operator, failed (a daemon's start-up
            # on a busy machine): its output is printed, then `up` is run once more; a
            # second failure fails the session with both outputs in the message.
            print(f"\nharness: tools/cluster up failed (exit {rc}) in {d}; its last lines:\n"
                  + tail + "\nharness: running tools/cluster up once more", flush=True)
            rc2, tail2 = _cluster_up(env)
            if rc2 != 0:
                raise RuntimeError(f"tools/cluster up failed twice (exit {rc}, then {rc2}); logs in "
                                   f"{d}/logs; first attempt:\n{tail}\nsecond attempt:\n{tail2}")
        return cls(dir=d, started_here=not was_up)

    def down(self) -> None:
        _run([TOOLS / "cluster", "down"], env=dict(os.environ, CLUSTER_DIR=str(self.dir)))

    def kubectl(self, *args, input: str | None = None, check: bool = True,
                timeout: int = 60, namespace: str | None = None,
                token: str | None = None) -> subprocess.CompletedProcess:
        """Run the built kubectl as cluster admin (or with `token`). Returns the
        CompletedProcess (text stdout/stderr); raises on failure when check=True."""
        cmd = [self.kubectl_path, "--kubeconfig", self.kubeconfig]
        if namespace:
            cmd += ["-n", namespace]
        if token:
            cmd += ["--token", token]
        return _run(cmd + list(args), input=input, check=check, timeout=timeout)

    def kubectl_json(self, *args, **kw):
        return json.loads(self.kubectl(*args, "-o", "json", **kw).stdout)

    def create_namespace(self, name: str, wait_for_sa: bool = True) -> str:
        self.kubectl("create", "namespace", name)
        if wait_for_sa:  # pods are rejected until the controller-manager creates it
            deadline = time.monotonic() + 30
            while self.kubectl("get", "serviceaccount", "default", namespace=name,
                               check=False).returncode != 0:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no 'default' ServiceAccount in namespace {name} after 30s")
                time.sleep(0.2)
        return name

    def delete_namespace(self, name: str) -> None:
        self.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@dataclass
class Postgres:
    dir: Path
    url: str  # DATABASE_URL of the default database (sync_airbnb)
    started_here: bool = False
    _admin_url: str = field(default="", repr=False)

    @property
    def psql_path(self) -> str:
        return str(PG_BIN / "psql")

    @property
    def admin_url(self) -> str:
        """URL of the 'postgres' maintenance database (for CREATE/DROP DATABASE)."""
        return self._admin_url

    @classmethod
    def ensure(cls, pg_dir: str | None = None) -> "Postgres":
        d = Path(pg_dir or os.environ.get("PG_DIR") or DEFAULT_PG_DIR)
        env = dict(os.environ, PG_DIR=str(d))
        was_up = _is_up("pg", env)
        _run([TOOLS / "pg", "up"], env=env, timeout=300)
        out = _run([TOOLS / "pg", "env"], env=env).stdout
        m = re.search(r"DATABASE_URL='([^']+)'", out)
        if not m:
            raise RuntimeError(f"tools/pg env printed no DATABASE_URL:\n{out}")
        url = m.group(1)
        return cls(dir=d, url=url, started_here=not was_up,
                   _admin_url=url.rsplit("/", 1)[0] + "/postgres")

    def down(self) -> None:
        _run([TOOLS / "pg", "down"], env=dict(os.environ, PG_DIR=str(self.dir)))

    def url_for(self, dbname: str) -> str:
        return self.url.rsplit("/", 1)[0] + "/" + dbname

    def psql(self, sql: str, url: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """Run SQL with psql (-X -At, ON_ERROR_STOP); stdout is unaligned, tuples only."""
        return _run([self.psql_path, "-X", "-At", "-v", "ON_ERROR_STOP=1",
                     url or self.url, "-c", sql], check=check)

    def create_database(self, name: str) -> str:
        """CREATE DATABASE name; returns its URL."""
        self.psql(f'CREATE DATABASE "{name}"', url=self.admin_url)
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', url=self.admin_url, check=False)
