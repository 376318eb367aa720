"""Database cost of the worker status rows (sync_airbnb_operator.worker_status, issue 21)
at N workers: rows written per minute during a convergence and in steady state, and the
time of a full status refresh (a new leader facing an empty table). Run by
`tools/bench --worker-status` on the private control plane and PostgreSQL of tools/bench
(kube-controller-manager paused: Deployments, no pods; see docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import time

import psycopg

from bench import System, log, one_system_setup

EXTRA = {"KUBE_QPS": "5000", "KUBE_BURST": "5000", "RESYNC_INTERVAL_SECONDS": "30", "LEADER_ELECT": "false"}


def table_writes(url: str) -> int:
    """Rows inserted, updated and deleted in worker_status, as PostgreSQL counts them."""
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("SELECT pg_stat_force_next_flush()")
        return c.execute("SELECT n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables "
                         "WHERE schemaname = 'sync_airbnb_operator' AND relname = 'worker_status'").fetchone()[0]


def caught_up_writes(url: str, s: System, base_pg: int, base_metric: float, timeout: float = 90) -> int:
    """table_writes once PostgreSQL's count shows every row the operator says it wrote since
    (base_pg, base_metric). A backend flushes its table statistics only when idle, up to
    10 s late (PGSTAT_IDLE_INTERVAL; pg_stat_force_next_flush flushes only the caller's
    own), so a short run read at once showed 0 rows for 200 workers."""
    want = base_pg + int(m(s, "sync_airbnb_operator_worker_status_rows_written_total") - base_metric)
    deadline = time.time() + timeout
    while True:
        got = table_writes(url)
        if got >= want or time.time() > deadline:
            return got
        time.sleep(0.5)


def rows(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as c:
        return c.execute("SELECT count(*) FROM sync_airbnb_operator.worker_status "
                         "WHERE deployment IS NOT NULL").fetchone()[0]


def m(s: System, name: str) -> float:
    return sum(v for k, v in s.metrics().items() if k == name or k.startswith(name + "{"))


def until(cond, timeout: float, what: str, interval: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return time.time()
        time.sleep(interval)
    raise SystemExit(f"timed out: {what}")


def main() -> int:
    ap = argparse.ArgumentParser(prog="tools/bench --worker-status")
    ap.add_argument("--binary", default=None)
    ap.add_argument("--workers", type=int, default=10000)
    ap.add_argument("--steady-seconds", type=float, default=120)
    ap.add_argument("--command", default=None)
    args = ap.parse_args()
    n = args.workers
    env, db, ns, watcher = one_system_setup(args, "bench-wstatus", [f"ws{i:06d}" for i in range(n)])
    out = {}
    s = System("operator", env, db, ns, EXTRA)
    try:
        # Convergence: N new accounts, N Deployments created, every row written.
        wc0, rc0 = table_writes(db), m(s, "sync_airbnb_operator_worker_status_rows_written_total")
        samples = [(time.time(), wc0)]
        deadline = time.time() + 1800
        while time.time() < deadline:
            time.sleep(1)
            samples.append((time.time(), table_writes(db)))
            if rows(db) >= n and m(s, "sync_airbnb_operator_worker_status_pending") == 0:
                break
        t_end = samples[-1][0]
        watcher.wait_count(n, 60)
        conv_s = t_end - s.started
        conv_rows = caught_up_writes(db, s, wc0, rc0) - wc0
        peak = max((b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(samples, samples[1:]))
        out["conv"] = dict(seconds=conv_s, rows=conv_rows, per_min=conv_rows / conv_s * 60, peak_per_s=peak,
                           batches=m(s, "sync_airbnb_operator_worker_status_batches_total"),
                           db_s=m(s, "sync_airbnb_operator_worker_status_write_duration_seconds_sum"))
        log(f"convergence: {out['conv']}")

        # Steady state: full resyncs every 30 s, nothing changes.
        p0 = s.passes()
        until(lambda: s.passes() >= p0 + 2, 120, "two full passes")
        r0 = m(s, "sync_airbnb_operator_worker_status_rows_written_total")
        w0, t0, b0 = caught_up_writes(db, s, wc0, rc0), time.time(), m(s, "sync_airbnb_operator_worker_status_batches_total")
        p0 = s.passes()
        time.sleep(args.steady_seconds)
        t1 = time.time()
        w1 = caught_up_writes(db, s, w0, r0)
        out["steady"] = dict(seconds=t1 - t0, rows=w1 - w0, per_min=(w1 - w0) / (t1 - t0) * 60,
                             passes=s.passes() - p0,
                             batches=m(s, "sync_airbnb_operator_worker_status_batches_total") - b0)
        log(f"steady: {out['steady']}")
    finally:
        s.stop()

    # A full refresh: a new leader with an empty table writes every row.
    with psycopg.connect(db, autocommit=True) as c:
        c.execute("TRUNCATE sync_airbnb_operator.worker_status")
    s = System("operator", env, db, ns, EXTRA)
    try:
        t_done = until(lambda: rows(db) >= n, 600, "refilled table", interval=0.1)
        out["refresh"] = dict(seconds=t_done - s.started,
                              db_s=m(s, "sync_airbnb_operator_worker_status_write_duration_seconds_sum"),
                              batches=m(s, "sync_airbnb_operator_worker_status_batches_total"))
        log(f"full refresh: {out['refresh']}")
    finally:
        s.stop()
    # And a restart with the table in place: read back, nothing written.
    w0 = table_writes(db)
    s = System("operator", env, db, ns, EXTRA)
    try:
        until(lambda: s.passes() >= 1, 300, "first full pass")
        time.sleep(3)
        out["restart_rows"] = caught_up_writes(db, s, w0, 0) - w0
    finally:
        s.stop()
        watcher.stop()
        env.drop_ns(ns)

    c, st, r = out["conv"], out["steady"], out["refresh"]
    # PostgreSQL's counts move when the operator's backend flushes them (each second at best):
    # a convergence of a few seconds has no meaningful per-second peak.
    peak = (f"at most {c['peak_per_s']:.0f} rows/s (one-second samples)" if c["seconds"] >= 10
            else "too short for a per-second peak")
    print(f"""
## Worker status rows: database cost at {n} workers

`{args.command or 'tools/bench --worker-status'}`

| phase | figure |
|---|---|
| convergence ({n} new accounts -> {n} Deployments, {c['seconds']:.0f} s) | {c['rows']} rows written ({c['rows'] / n:.2f} per worker) in {c['batches']:.0f} batches, {c['per_min']:.0f} rows/min on average, {peak}; {c['db_s']:.2f} s spent in the database |
| steady state ({st['seconds']:.0f} s, {st['passes']:.0f} full resyncs) | {st['rows']} rows written ({st['per_min']:.1f} rows/min), {st['batches']:.0f} batches |
| full refresh (new leader, empty table) | {n} rows in {r['seconds']:.1f} s from process start (list, first full pass, {r['batches']:.0f} batches, {r['db_s']:.2f} s in the database) |
| restart with the table in place | {out['restart_rows']} rows written |
""")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
