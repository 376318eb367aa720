"""Runs the real operator binary for integration tests.

    op = Operator.start(database_url=..., kubeconfig=..., namespace=..., env={...})
    op.wait_ready()                 # /readyz says ready
    op.readyz() / op.metrics()      # the endpoints, parsed
    op.logs()                       # everything it logged (JSON lines, parsed)
    op.stop()                       # SIGTERM, returns the exit code

The binary is $SAO_BINARY (tools/test points it at the ASan build), else build/.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def binary() -> str:
    b = os.environ.get("SAO_BINARY") or str(ROOT / "build" / "sync-airbnb-operator")
    if not os.path.exists(b):
        raise RuntimeError(f"operator binary {b} not found: build first (tools/test does)")
    return b


def run_cli(*args, env: dict | None = None, input: str | None = None, timeout: float = 60,
            check: bool = False) -> subprocess.CompletedProcess:
    """Runs a one-shot subcommand (migrate, plan, status, check-rules, repl...)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    p = subprocess.run([binary(), *args], env=full_env, input=input, capture_output=True, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} exited {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


class Operator:
    def __init__(self, proc: subprocess.Popen, log_path: Path):
        self.proc = proc
        self.log_path = log_path
        self.port: int | None = None

    @classmethod
    def start(cls, *, database_url: str, kubeconfig: str, namespace: str, env: dict | None = None,
              log_dir: str | None = None, args: tuple = (), start_timeout: float = 20) -> "Operator":
        full_env = dict(os.environ)
        full_env.update({
            "DATABASE_URL": database_url,
            "KUBECONFIG": kubeconfig,
            "OPERATOR_NAMESPACE": namespace,
            "HEALTH_ADDR": "127.0.0.1:0",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": os.environ.get("SAO_TEST_LOG_LEVEL", "info"),
            "RESYNC_INTERVAL_SECONDS": "30",
            "POD_NAME": f"op-{namespace}-{time.monotonic_ns()}",
        })
        # each operator its own copy of the last good rules (the default is shared /tmp)
        full_env["RULES_STATE_DIR"] = str(Path(log_dir or os.environ.get("TEST_LOG_DIR", "/tmp"))
                                          / f"rules-state-{namespace}-{time.monotonic_ns()}")
        full_env.update(env or {})
        d = Path(log_dir or os.environ.get("TEST_LOG_DIR", "/tmp"))
        d.mkdir(parents=True, exist_ok=True)
        log_path = d / f"operator-{namespace}-{time.monotonic_ns()}.log"
        f = open(log_path, "wb")
        proc = subprocess.Popen([binary(), "run", *args], env=full_env, stdout=f, stderr=subprocess.STDOUT)
        f.close()
        op = cls(proc, log_path)
        op._wait_port(start_timeout)
        return op

    def _wait_port(self, timeout: float = 20) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for rec in self.logs():
                if rec.get("msg") == "health endpoints listening":
                    self.port = int(rec["port"])
                    return
            if self.proc.poll() is not None:
                raise AssertionError(f"operator exited {self.proc.returncode}:\n{self.raw_log()}")
            time.sleep(0.05)
        raise AssertionError(f"operator did not start its health server:\n{self.raw_log()}")

    def raw_log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def logs(self) -> list[dict]:
        out = []
        for line in self.raw_log().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"msg": line, "raw": True})
        return out

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def readyz(self) -> dict:
        return json.loads(self.get("/readyz")[1])

    def metrics(self) -> dict[str, float]:
        out = {}
        for line in self.get("/metrics")[1].splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                out[k] = float(v)
        return out

    def wait_ready(self, timeout: float = 30) -> dict:
        return wait_for(lambda: (r := self.readyz()).get("ready") and r, timeout,
                        lambda: f"operator not ready: {self.get('/readyz')[1]}\n{self.raw_log()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"operator did not stop within {timeout}s:\n{self.raw_log()[-4000:]}")
        return self.proc.returncode


def wait_for(fn, timeout: float, message=None, interval: float = 0.1):
    """Polls fn until it returns something truthy; fails with message (str or callable)."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    msg = message() if callable(message) else (message or "condition not met")
    raise AssertionError(f"timed out after {timeout}s: {msg} (last: {last!r})")
