"""The real sync-airbnb app, for the integration tests: its admin API (FastAPI in
MODE=admin, run by uvicorn in its own process), its worker's database writers
(update_account_cookies, update_last_sync, run in a process that has the worker's
environment, PGAPPNAME included) and its Alembic migrations.

The app's source is not part of this repository: it is read from $SAO_APP_DIR, else
<repo>/../shared/apps/sync-airbnb (where CI puts shared/ beside the clone). Its Python
dependencies are in tests/requirements.txt. Every process gets placeholder values for
the variables the app requires at import (never a real credential) and runs in a
scratch directory, so no .env file is ever loaded.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from operator_harness import ROOT, wait_for

WORKER_APPLICATION_NAME = "sync-airbnb-worker"  # lua/rules/deployment.lua, migration 005


def app_dir() -> Path:
    d = Path(os.environ.get("SAO_APP_DIR") or ROOT.parent / "shared" / "apps" / "sync-airbnb")
    if not (d / "sync_airbnb" / "db" / "writers" / "accounts.py").exists():
        raise RuntimeError(f"the sync-airbnb app is not at {d} (set SAO_APP_DIR)")
    return d


def sqlalchemy_url(database_url: str) -> str:
    """tools/pg's URL as SQLAlchemy wants it (psycopg2, the app's driver)."""
    return database_url.replace("postgresql://", "postgresql+psycopg2://", 1)


def app_env(database_url: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PGAPPNAME",)}
    env.update({
        "DATABASE_URL": sqlalchemy_url(database_url),
        "PYTHONPATH": str(app_dir()),
        "LOG_LEVEL": "WARNING",
        # Required at import by network/http_headers.py; placeholders, as the
        # operator's worker template sets them.
        "AIRBNB_COOKIE": "unused-legacy-placeholder",
        "X_CLIENT_VERSION": "unused-legacy-placeholder",
        "AIRBNB_API_KEY": "test-api-key-placeholder",
    })
    env.update({k: str(v) for k, v in extra.items()})
    return env


_scratch = tempfile.mkdtemp(prefix="sao-app-")

WORKER_SCRIPT = """
import json, sys
from sync_airbnb import config
from sync_airbnb.db.writers.accounts import update_account_cookies, update_last_sync
for step in json.loads(sys.argv[1]):
    if step[0] == "cookies":
        update_account_cookies(config.engine, config.ACCOUNT_ID, step[1])
    elif step[0] == "last_sync":
        update_last_sync(config.engine, config.ACCOUNT_ID)
    else:
        raise SystemExit("unknown step %r" % (step,))
"""


def worker_writes(database_url: str, account_id: str, steps: list, background: bool = False):
    """Runs the worker's own writers in a process with the worker's environment
    (MODE=worker, ACCOUNT_ID, PGAPPNAME=sync-airbnb-worker), in order; each is its own
    commit, as after a sync in services/insights.py. steps: [("cookies", value),
    ("last_sync",)]. Returns the CompletedProcess, or the Popen with background."""
    env = app_env(database_url, MODE="worker", ACCOUNT_ID=account_id, PGAPPNAME=WORKER_APPLICATION_NAME)
    args = [sys.executable, "-c", WORKER_SCRIPT, json.dumps(steps)]
    if background:
        return subprocess.Popen(args, env=env, cwd=_scratch, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    p = subprocess.run(args, env=env, cwd=_scratch, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    return p


def worker_sync(database_url: str, account_id: str, cookie: str):
    """What the worker writes after one sync: the rotated cookie, then last_sync_at."""
    return worker_writes(database_url, account_id, [("cookies", cookie), ("last_sync",)])


def fake_cookie(account_id: str, tag: str) -> str:
    """A fake cookie the admin API accepts (it must name the account in
    _user_attributes and be at least 50 characters)."""
    attrs = urllib.parse.quote(json.dumps({"id_str": account_id}, separators=(",", ":")))
    return f"_airbed_session_id=SECRET-{tag}-zq-0000000000; _user_attributes={attrs}; _aaj=fake"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AdminApi:
    """sync-airbnb's admin API (MODE=admin) on a free local port."""

    def __init__(self, database_url: str, log_dir: str | None = None):
        self.port = _free_port()
        d = Path(log_dir or os.environ.get("TEST_LOG_DIR", "/tmp"))
        d.mkdir(parents=True, exist_ok=True)
        self.log_path = d / f"admin-api-{self.port}-{time.monotonic_ns()}.log"
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "sync_airbnb.main:app", "--host", "127.0.0.1",
             "--port", str(self.port)],
            env=app_env(database_url, MODE="admin"), cwd=_scratch, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for(lambda: self._up(), 60, lambda: f"admin API did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"admin API exited {self.proc.returncode}:\n{self.log()}")
        try:
            return self.request("GET", "/health/ready")[0] == 200
        except OSError:
            return False

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict | None]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                raw = r.read()
                return r.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw) if raw else None
            except ValueError:
                return e.code, {"raw": raw.decode(errors="replace")}

    def create_account(self, account_id: str, cookie: str, **fields) -> dict:
        body = {"account_id": account_id, "airbnb_cookie": cookie, "x_client_version": "fake-client-1",
                "user_agent": "Mozilla/5.0 (fake test agent)", "is_active": True}
        body.update(fields)
        status, doc = self.request("POST", "/api/v1/accounts", body)
        assert status == 201, (status, doc)
        return doc

    def patch_account(self, account_id: str, **fields) -> dict:
        status, doc = self.request("PATCH", f"/api/v1/accounts/{account_id}", fields)
        assert status == 200, (status, doc)
        return doc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def alembic(database_url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The app's own Alembic, run as its image does (entrypoint.sh): the `alembic`
    command in the app's directory (alembic.ini's prepend_sys_path = . finds the app's
    code there; PYTHONPATH must not, or the app's alembic/ would shadow the library)."""
    env = app_env(database_url, MODE="admin")  # as the admin API's image runs it
    env.pop("PYTHONPATH")
    p = subprocess.run([str(Path(sys.executable).parent / "alembic"), *args], env=env, cwd=app_dir(),
                       capture_output=True, text=True, timeout=120)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def first_migration_accounts_sql(database_url: str) -> list[str]:
    """The statements of the app's first Alembic migration (c8fc3d1477cb) that create
    the airbnb schema and the accounts table with its indexes, exactly as Alembic
    renders them (offline mode, --sql): what the app runs on a fresh database, minus
    the TimescaleDB extension and the metric tables (not installable here)."""
    out = alembic(database_url, "upgrade", "c8fc3d1477cb", "--sql").stdout
    wanted = []
    for stmt in out.split(";\n"):
        s = "\n".join(line for line in stmt.splitlines() if not line.startswith("--")).strip()
        if s.startswith("CREATE SCHEMA IF NOT EXISTS airbnb") or s.startswith("CREATE TABLE airbnb.accounts") \
                or (s.startswith("CREATE INDEX ix_airbnb_accounts_")):
            wanted.append(s + ";")
    assert any(s.startswith("CREATE TABLE airbnb.accounts") for s in wanted), out
    return wanted
