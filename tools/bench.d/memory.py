"""The operator's memory at N accounts (issue 19's target: peak RSS <= 64 MiB at
100,000), alone, without the rest of the scale bench: N accounts inserted, the
operator started (release build with the static libraries, as the image) and
left until a watcher has seen N Deployments, then two idle resync periods; the
peak is the kernel's (VmHWM). Run by `tools/bench --memory [--accounts N]` on the private control plane
and PostgreSQL of tools/bench (kube-controller-manager paused: Deployments, no
pods; see docs/benchmarks.md). Prints a table."""

from __future__ import annotations

import argparse
import os
import time

from bench import System, one_system_setup, proc_mem, proc_mem_split

RESYNC = 10
EXTRA = {"KUBE_QPS": "5000", "KUBE_BURST": "5000", "RESYNC_INTERVAL_SECONDS": str(RESYNC),
         "LEADER_ELECT": "false", "DELETE_BUDGET": "1000000",
         "LOG_LEVEL": os.environ.get("BENCH_SYSTEM_LOG_LEVEL", "warn")}  # debug: a "memory" line per full pass


def main() -> int:
    ap = argparse.ArgumentParser(prog="tools/bench --memory")
    ap.add_argument("--binary", default=None)
    ap.add_argument("--accounts", type=int, default=100000)
    ap.add_argument("--cap", type=float, default=1800, help="seconds to wait for the convergence")
    ap.add_argument("--command", default=None)
    args = ap.parse_args()
    n = args.accounts
    env, db, ns, watcher = one_system_setup(args, "bench-memory", [f"acct{i:06d}" for i in range(n)])
    s = System("operator", env, db, ns, EXTRA)
    pid = s.proc.pid
    try:
        conv_s = watcher.wait_count(n, args.cap) - s.started
        rss_conv = proc_mem(pid)[0]
        time.sleep(2 * RESYNC + 2)  # two full passes with nothing to do
        rss_idle, hwm = proc_mem(pid)
        files, anon = proc_mem_split(pid)
    finally:
        s.stop()
        watcher.stop()
    mib = lambda k: f"{k / 1024:.1f} MiB"  # noqa: E731
    print(f"""
## Operator memory, {n} accounts

`{args.command or 'tools/bench --memory'}`

| figure | value |
|---|---|
| convergence (all {n} Deployments seen) | {conv_s:.0f} s |
| peak RSS (VmHWM) | {mib(hwm)} |
| RSS when the last Deployment was seen | {mib(rss_conv)} |
| RSS after two idle full passes ({RESYNC} s resync) | {mib(rss_idle)} ({mib(anon)} anonymous, {mib(files)} file-backed: the binary and shared libraries) |
| anonymous RSS per account after idle | {anon * 1024 / n:.0f} bytes |
""", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
