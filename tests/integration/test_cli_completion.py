"""`completion bash|zsh` loaded into real shells, and `-o yaml` beside `-o json`.

bash: the script is sourced into a real bash and its function is called the way
bash calls it on Tab (COMP_WORDS/COMP_CWORD), so COMPREPLY is what a user sees.
zsh: the script is sourced into a real zsh after compinit; it must register itself
for the command (_comps), and called with words/CURRENT as zsh's completion system
sets them, it must hand _describe/_arguments the commands, flags and values (those
two are replaced by recorders: they only draw the menu)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from operator_harness import run_cli


def script(shell: str) -> str:
    p = run_cli("completion", shell)
    assert p.returncode == 0, p.stderr
    return p.stdout


def help_flag_names() -> set[str]:
    names = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", run_cli("--help").stdout))
    assert len(names) > 20
    return names


def bash_complete(tmp_path, *words: str) -> list[str]:
    f = tmp_path / "c.bash"
    f.write_text(script("bash"))
    words_q = " ".join(f"'{w}'" for w in words)
    prog = (f"source {f}\nCOMP_WORDS=({words_q})\nCOMP_CWORD={len(words) - 1}\n"
            "_sync_airbnb_operator\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")
    p = subprocess.run(["bash", "--norc", "-c", prog], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    return [w for w in p.stdout.splitlines() if w]


def test_bash_completes_commands_subcommands_flags_and_values(tmp_path):
    assert bash_complete(tmp_path, "sync-airbnb-operator", "") == \
        ["run", "migrate", "plan", "status", "check-rules", "repl", "completion", "rollout", "version"]
    assert bash_complete(tmp_path, "sync-airbnb-operator", "pl") == ["plan"]
    assert bash_complete(tmp_path, "sync-airbnb-operator", "migrate", "st") == ["status"]
    assert bash_complete(tmp_path, "sync-airbnb-operator", "completion", "") == ["bash", "zsh"]
    assert bash_complete(tmp_path, "sync-airbnb-operator", "rollout", "") == ["status", "resume", "abort"]
    assert bash_complete(tmp_path, "sync-airbnb-operator", "plan", "-o", "") == ["json", "yaml", "table"]
    assert bash_complete(tmp_path, "sync-airbnb-operator", "status", "--output", "y") == ["yaml"]
    assert bash_complete(tmp_path, "sync-airbnb-operator", "run", "--log-level", "w") == ["warn"]
    assert bash_complete(tmp_path, "sync-airbnb-operator", "plan", "--cont") == ["--context"]
    # every flag of --help is offered
    help_flags = help_flag_names()
    offered = set(bash_complete(tmp_path, "sync-airbnb-operator", "run", "--"))
    assert help_flags and help_flags <= offered, help_flags - offered
    # files for --kubeconfig
    (tmp_path / "kubeconfig-prod").write_text("")
    assert bash_complete(tmp_path, "sync-airbnb-operator", "plan", "--kubeconfig", "kubeconfig-p") == \
        ["kubeconfig-prod"]
    # a flag that takes a free value: no flags offered as its value
    assert bash_complete(tmp_path, "sync-airbnb-operator", "run", "--worker-image", "") == []


ZSH_HARNESS = r"""
autoload -U compinit && compinit -u -D
source {script}
print -r -- "registered=$_comps[sync-airbnb-operator]"
_describe() {{ print -r -- "describe ${{(j:|:)@}}"; for x in ${{(P)${{@[-1]}}}}; do print -r -- "cmd $x"; done }}
_arguments() {{ for x in "$@"; do print -r -- "arg $x"; done }}
words=({words}); CURRENT={current}
_sync_airbnb_operator
"""


def zsh_run(tmp_path, *words: str) -> list[str]:
    f = tmp_path / "c.zsh"
    f.write_text(script("zsh"))
    prog = ZSH_HARNESS.format(script=f, words=" ".join(f"'{w}'" for w in words), current=len(words))
    p = subprocess.run(["zsh", "-f", "-c", prog], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                       env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()


@pytest.mark.skipif(shutil.which("zsh") is None, reason="never: tools/bootstrap installs zsh")
def test_zsh_script_registers_and_offers_commands_flags_and_values(tmp_path):
    out = zsh_run(tmp_path, "sync-airbnb-operator", "")
    assert out[0] == "registered=_sync_airbnb_operator"
    cmds = [line.split(" ", 1)[1] for line in out if line.startswith("cmd ")]
    assert [c.split(":", 1)[0] for c in cmds] == \
        ["run", "migrate", "plan", "status", "check-rules", "repl", "completion", "rollout", "version"]
    assert any(c.startswith("plan:show what `run` would do now") for c in cmds)

    args = [line[4:] for line in zsh_run(tmp_path, "sync-airbnb-operator", "migrate", "") if line.startswith("arg ")]
    assert "1:migrate command:(up status check)" in args
    args = [line[4:] for line in zsh_run(tmp_path, "sync-airbnb-operator", "rollout", "") if line.startswith("arg ")]
    assert "1:rollout command:(status resume abort)" in args
    assert "(-o --output)-o[output format]:format:(json yaml table)" in args
    assert any(a.startswith("--kubeconfig=[") and a.endswith(":kubeconfig:_files") for a in args)
    assert any(a.startswith("--context=[") for a in args)
    assert any(a.startswith("--log-level=[") and a.endswith(":level:(debug info warn error)") for a in args)
    help_flags = help_flag_names()
    offered = {re.sub(r"^\([^)]*\)", "", a).split("=", 1)[0].split("[", 1)[0] for a in args}
    assert help_flags <= offered, help_flags - offered


def test_completion_usage():
    p = run_cli("completion", "fish")
    assert p.returncode == 2 and "completion bash|zsh" in p.stderr
    assert "completion bash|zsh" in run_cli("completion", "--help").stdout


def test_migrate_status_yaml_is_the_json_document(database_url):
    env = {"DATABASE_URL": database_url, "MIGRATE_CREATE_ACCOUNTS_TABLE": "true"}
    assert run_cli("migrate", "up", env=env).returncode == 0
    j = run_cli("migrate", "status", "-o", "json", env=env)
    y = run_cli("migrate", "status", "-o", "yaml", env=env)
    assert j.returncode == 0 and y.returncode == 0, y.stderr
    assert yaml.safe_load(y.stdout) == json.loads(j.stdout)
    assert not y.stdout.lstrip().startswith("{")
    bad = run_cli("migrate", "status", "-o", "xml", env=env)
    assert bad.returncode != 0 and "json, yaml or table" in bad.stderr


def test_plan_and_status_yaml_are_their_json_documents(cluster, kubeconfig, namespace, migrated_db, pg):
    pg.psql("insert into airbnb.accounts(account_id, airbnb_cookie, x_client_version, user_agent, is_active)"
            " values ('501', 'c', 'v', 'ua', true), ('true', 'c', 'v', 'ua', true)", url=migrated_db)
    env = {"DATABASE_URL": migrated_db, "KUBECONFIG": kubeconfig, "OPERATOR_NAMESPACE": namespace}
    for cmd, ok in (("plan", (2,)), ("status", (0,))):
        j = run_cli(cmd, "-o", "json", env=env)
        y = run_cli(cmd, "--output=yaml", env=env)
        assert j.returncode in ok and y.returncode in ok, (cmd, j.stderr, y.stderr)
        doc = json.loads(j.stdout)
        # times (last_sync_at, the last-action-at annotation) differ between two runs
        assert strip_times(yaml.safe_load(y.stdout)) == strip_times(doc), cmd
    # account ids that read as numbers or booleans stay strings
    ids = {a["account_id"] for a in yaml.safe_load(run_cli("status", "-o", "yaml", env=env).stdout)["accounts"]}
    assert ids == {"501", "true"}


def strip_times(v):
    if isinstance(v, dict):
        return {k: strip_times(x) for k, x in v.items() if not re.search(r"[-_]at$|time|age", k)}
    if isinstance(v, list):
        return [strip_times(x) for x in v]
    return v
