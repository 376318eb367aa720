"""Monitoring: the alert rules of deploy/monitoring/prometheusrule.yaml through a real
promtool (tools/gotool, built from the Go module proxy): `promtool check rules` and the unit
tests of tests/monitoring/alerts.test.yaml, which must also fail when a rule is broken;
every alert has its runbook; and every metric the alerts and the Grafana dashboard use is
exported by the real operator (against the real PostgreSQL and kube-apiserver), with the
process_* metrics and the queue-depth gauge.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from harness import REPO
from operator_harness import wait_for

MONITORING = REPO / "deploy" / "monitoring"
ALERT_TESTS = REPO / "tests" / "monitoring" / "alerts.test.yaml"
OPERATIONS = REPO / "docs" / "operations.md"
# Every metric the alerts and the dashboard use is exported.
NOT_YET_EXPORTED: set = set()


@pytest.fixture(scope="session")
def promtool() -> str:
    return subprocess.run([str(REPO / "tools" / "gotool"), "path", "promtool"], check=True,
                          capture_output=True, text=True, timeout=3600).stdout.strip()


def rule_spec() -> dict:
    return yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())["spec"]


def alerts() -> list[dict]:
    return [r for g in rule_spec()["groups"] for r in g["rules"] if "alert" in r]


def write_rules(tmp_path: Path, spec: dict) -> Path:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.copy(ALERT_TESTS, tmp_path / "alerts.test.yaml")
    return tmp_path


def run(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=300)


def test_promtool_check_rules(promtool, tmp_path):
    write_rules(tmp_path, rule_spec())
    p = run(promtool, "check", "rules", "rules.yaml", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in p.stdout, p.stdout


def test_the_required_alerts_exist():
    names = {a["alert"] for a in alerts()}
    assert names == {"SyncAirbnbOperatorDown", "SyncAirbnbOperatorNotLeading", "SyncAirbnbOperatorReconcileErrors",
                     "SyncAirbnbOperatorDeletesHeld", "SyncAirbnbOperatorRulesRejected", "SyncAirbnbRolloutHalted",
                     "SyncAirbnbWorkersNotReady", "SyncAirbnbOperatorResyncStale"}


def test_promtool_unit_tests_pass(promtool, tmp_path):
    write_rules(tmp_path, rule_spec())
    p = run(promtool, "test", "rules", "alerts.test.yaml", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS" in p.stdout + p.stderr
    # Every alert is exercised by the unit tests, firing at least once.
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    fired = {t["alertname"] for case in tests for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert fired == {a["alert"] for a in alerts()}


@pytest.mark.parametrize("alert, broken", [
    ("SyncAirbnbOperatorDeletesHeld", ("> 0", "> 5")),
    ("SyncAirbnbWorkersNotReady", ("> 0", "< 0")),
    ("SyncAirbnbOperatorResyncStale", ("[10m]", "[30m]")),
    ("SyncAirbnbOperatorDown", ("== 1", "== 0")),
])
def test_promtool_unit_tests_catch_a_broken_rule(promtool, tmp_path, alert, broken):
    spec = rule_spec()
    rule = next(r for g in spec["groups"] for r in g["rules"] if r.get("alert") == alert)
    assert broken[0] in rule["expr"]
    rule["expr"] = rule["expr"].replace(broken[0], broken[1])
    write_rules(tmp_path, spec)
    p = run(promtool, "test", "rules", "alerts.test.yaml", cwd=tmp_path)
    assert p.returncode != 0 and alert in p.stdout + p.stderr, p.stdout + p.stderr


def github_anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_has_a_runbook_section():
    anchors = {github_anchor(h) for h in re.findall(r"^#{2,4} (.+)$", OPERATIONS.read_text(), re.M)}
    for a in alerts():
        url = a["annotations"]["runbook_url"]
        assert url.startswith("docs/operations.md#"), url
        assert url.split("#", 1)[1] in anchors, f"{a['alert']}: no section {url} in docs/operations.md"
        assert a["labels"]["severity"] in ("critical", "warning")


def dashboard_exprs() -> list[str]:
    d = json.loads((MONITORING / "dashboard.json").read_text())
    return [t["expr"] for p in d["panels"] for t in p["targets"]]


def test_dashboard_is_valid_and_its_queries_parse(promtool, tmp_path):
    d = json.loads((MONITORING / "dashboard.json").read_text())
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)) and d["uid"] == "sync-airbnb-operator"
    # Grafana's variables replaced by what they stand for, each query as a recording rule.
    rules = [{"record": f"dashboard:query{i}", "expr": e.replace("$__rate_interval", "5m")
              .replace('"$job"', '".*sync-airbnb-operator.*"')} for i, e in enumerate(dashboard_exprs())]
    (tmp_path / "dash.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    p = run(promtool, "check", "rules", "dash.yaml", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr


METRIC = re.compile(r"\b((?:sync_airbnb|process)_[a-z_]+?)(?:_bucket)?\b(?=\s*[{\[)])")


def used_metrics() -> set[str]:
    exprs = [a["expr"] for a in alerts()] + dashboard_exprs()
    return {m for e in exprs for m in METRIC.findall(e)}


def test_the_real_operator_exports_what_alerts_and_dashboard_use(operator_factory):
    t0 = time.time()
    op = operator_factory()
    op.wait_ready()
    wait_for(lambda: 'sync_airbnb_operator_queue_depth{queue="accounts"}' in op.metrics(), 10,
             lambda: op.get("/metrics")[1])
    text = op.get("/metrics")[1]
    exported = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    used = used_metrics()
    assert len(used) >= 12, used
    missing = used - exported - NOT_YET_EXPORTED
    assert not missing, f"used by alerts/dashboard but not exported: {missing}"
    m = op.metrics()
    # The process metrics describe this very process.
    pid = op.proc.pid
    rss = int(re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text()).group(1)) * 1024
    assert 0.5 * rss < m["process_resident_memory_bytes"] < 2 * rss
    assert m["process_open_fds"] == pytest.approx(len(list(Path(f"/proc/{pid}/fd").iterdir())), abs=3)
    assert m["process_max_fds"] > 0 and m["process_cpu_seconds_total"] >= 0
    # Started by this test (the kernel's clock ticks: within a second of the spawn).
    assert t0 - 1 <= m["process_start_time_seconds"] <= time.time()
    assert m['sync_airbnb_operator_queue_depth{queue="writes"}'] >= 0


def test_queue_depth_shows_a_burst_and_drains(pg, cluster, namespace, migrated_db, operator_factory):
    """200 accounts in one transaction: while their Deployments are written the gauge shows
    work waiting (sampled by the operator every second, read here every 50 ms); when all
    exist, both queues are back at 0."""
    op = operator_factory()
    op.wait_ready()
    seen = {"accounts": 0.0, "writes": 0.0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            m = op.metrics()
            for q in seen:
                seen[q] = max(seen[q], m.get(f'sync_airbnb_operator_queue_depth{{queue="{q}"}}', 0))
            time.sleep(0.05)
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        pg.psql("insert into airbnb.accounts (account_id, airbnb_cookie, x_client_version, user_agent, is_active)"
                " select 'burst-' || i, 'c', 'v1', 'ua', true from generate_series(1, 200) i", url=migrated_db)
        wait_for(lambda: len(cluster.kubectl_json("get", "deployments", namespace=namespace)["items"]) == 200, 120,
                 "200 worker Deployments")
        wait_for(lambda: all(op.metrics().get(f'sync_airbnb_operator_queue_depth{{queue="{q}"}}') == 0
                             for q in seen), 30, lambda: op.get("/metrics")[1])
    finally:
        stop.set()
        t.join(timeout=5)
    assert seen["writes"] > 0 or seen["accounts"] > 0, seen
    print(f"\nqueue depth during a 200-account burst: max {seen}")
    # Stop first (it would re-create what is deleted); the namespace fixture removes the rest.
    assert op.stop() == 0
