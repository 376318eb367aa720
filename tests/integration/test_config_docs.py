"""docs/configuration.md and `sync-airbnb-operator --help` list the same settings (issue 8).

Both ways: every environment variable and flag that `--help` (of the binary and of
each command) prints is in the settings table of docs/configuration.md with the same
flag and default; every variable and flag the page names is one `--help` prints, apart
from the in-cluster variables the page documents as not being settings. Ranges the
page states are the ones the binary enforces. Needs only the binary.
"""

from __future__ import annotations

import re

import pytest

from operator_harness import ROOT, run_cli

DOC = ROOT / "docs" / "configuration.md"
COMMANDS = ["run", "migrate", "plan", "status", "check-rules", "repl", "rollout", "completion", "version"]
# Read from the environment but not settings (docs/configuration.md, "In-cluster
# configuration"): Kubernetes sets them; KUBE_SA_DIR is for tests.
NOT_SETTINGS = {"KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "KUBE_SA_DIR"}

HELP_ROW = re.compile(r"^  ([A-Z][A-Z0-9_]+)\s+--([a-z][a-z0-9-]*)\s")
HELP_DEFAULT = re.compile(r"^\s+\(default: (.*)\)\s*$")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
# how the page names a variable: `NAME`, `NAME=value`, $NAME
ENVISH = re.compile(r"(?:`|\$)([A-Z][A-Z0-9_]{2,})\b")


def help_settings(text: str) -> dict[str, dict]:
    """{ENV: {flag, default}} from a --help text."""
    out, last = {}, None
    for line in text.splitlines():
        m = HELP_ROW.match(line)
        if m:
            last = m.group(1)
            out[last] = {"flag": "--" + m.group(2), "default": None}
            continue
        d = HELP_DEFAULT.match(line)
        if d and last:  # the line right after a setting
            out[last]["default"] = d.group(1)
        last = None
    return out


def help_flags(text: str) -> set[str]:
    return set(FLAG.findall(text))


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    out = {"": run_cli("--help", check=True).stdout}
    for cmd in COMMANDS:
        p = run_cli(cmd, "--help")
        assert p.returncode == 0, f"{cmd} --help exited {p.returncode}: {p.stderr}"
        out[cmd] = p.stdout
    return out


@pytest.fixture(scope="module")
def doc_table() -> list[dict]:
    """The rows of the settings table: {env, flags, default, values, meaning}."""
    text = DOC.read_text()
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith("| Variable") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        assert len(cells) == 5, f"settings row without 5 cells: {line}"
        env = re.fullmatch(r"`([A-Z][A-Z0-9_]*)`", cells[0])
        rows.append({"env": env.group(1) if env else None, "flags": FLAG.findall(cells[1]),
                     "default": cells[2], "values": cells[3], "meaning": cells[4]})
    assert rows, "no settings table in docs/configuration.md"
    return rows


def test_every_setting_in_help_is_documented_with_its_flag_and_default(helps, doc_table):
    settings = help_settings(helps[""])
    assert len(settings) >= 20, helps[""]
    by_env = {r["env"]: r for r in doc_table if r["env"]}
    missing = sorted(set(settings) - set(by_env))
    assert not missing, f"in --help, not in docs/configuration.md: {missing}"
    for env, s in settings.items():
        row = by_env[env]
        assert row["flags"] == [s["flag"]], (env, row["flags"], s["flag"])
        if s["default"] is not None:
            assert f"`{s['default']}`" in row["default"], (env, row["default"], s["default"])


def test_every_documented_setting_is_in_help(helps, doc_table):
    settings = help_settings(helps[""])
    extra = sorted(r["env"] for r in doc_table if r["env"] and r["env"] not in settings)
    assert not extra, f"documented, but not in --help: {extra}"
    assert len({r["env"] for r in doc_table if r["env"]}) == len([r for r in doc_table if r["env"]]), \
        "a variable is documented twice"


def test_commands_print_the_same_settings(helps):
    base = help_settings(helps[""])
    for cmd in COMMANDS:
        s = help_settings(helps[cmd])
        # a command may print fewer settings, never other ones
        assert set(s) <= set(base), (cmd, sorted(set(s) - set(base)))
        for env in s:
            assert s[env] == base[env], (cmd, env)


def test_flags_both_ways(helps):
    printed = set().union(*(help_flags(h) for h in helps.values()))
    documented = help_flags(DOC.read_text())
    assert not sorted(printed - documented), f"in --help, not in docs: {sorted(printed - documented)}"
    assert not sorted(documented - printed), f"in docs, not in --help: {sorted(documented - printed)}"


def test_environment_variables_both_ways(helps):
    printed = set(help_settings(helps[""]))
    text = DOC.read_text()
    named = set(ENVISH.findall(text))
    # variables the page names anywhere are settings or the documented in-cluster ones
    assert not sorted(named - printed - NOT_SETTINGS), sorted(named - printed - NOT_SETTINGS)
    assert not sorted(printed - named)
    section = text.split("\n## In-cluster configuration\n", 1)[1].split("\n## ", 1)[0]
    for v in NOT_SETTINGS:
        assert v in section, f"{v} is not described under 'In-cluster configuration'"


def test_documented_ranges_are_enforced(doc_table):
    checked = 0
    for row in doc_table:
        m = re.fullmatch(r"(\d+)\s*[–-]\s*(\d+)", row["values"])
        if not (row["env"] and m):
            continue
        lo, hi = m.groups()
        for bad in (str(int(lo) - 1), str(int(hi) + 1)):
            p = run_cli("version", env={row["env"]: bad})
            assert p.returncode == 2, (row["env"], bad, p.stdout, p.stderr)
            assert f"a whole number from {lo} to {hi}" in p.stderr, (row["env"], p.stderr)
        for good in (lo, hi):
            env = {row["env"]: good}
            # RENEW_DEADLINE_SECONDS must stay below LEASE_DURATION_SECONDS: test
            # each end of one against a value of the other that allows it
            if row["env"] == "LEASE_DURATION_SECONDS":
                env["RENEW_DEADLINE_SECONDS"] = str(max(int(good) - 1, 1))
            if row["env"] == "RENEW_DEADLINE_SECONDS":
                env["LEASE_DURATION_SECONDS"] = str(int(good) + 1)
            lease, renew = int(env.get("LEASE_DURATION_SECONDS", 15)), int(env.get("RENEW_DEADLINE_SECONDS", 10))
            if not renew < lease <= 3600:
                continue  # no valid partner (a 1 s lease, a 3600 s renew deadline)
            p = run_cli("version", env=env)
            assert p.returncode == 0, (row["env"], env, p.stderr)
        checked += 1
    assert checked >= 10, "ranges not found in the settings table"
