"""Rules directories for the tests: copies of lua/rules, laid out the way the kubelet
mounts a ConfigMap volume, and the hostile edits that check-rules and hot reload must
both refuse.

    d = ConfigMapDir(tmp_path / "rules", rules_files())
    t_swap = d.update(rules_files({"deployment.lua": [(old, new)]}))   # atomic ..data swap
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

RULES_SRC = Path(__file__).resolve().parents[2] / "lua" / "rules"
MODULE_FILE = re.compile(r"^[A-Za-z0-9_]+\.lua$")


def rules_files(edits: dict[str, list[tuple[str, str]]] | None = None) -> dict[str, str]:
    """The shipped rules as {file name: text}, with each (old, new) replacement of edits
    applied once; a missing anchor fails loudly rather than testing unmodified rules."""
    files = {p.name: p.read_text() for p in sorted(RULES_SRC.glob("*.lua"))}
    for name, replacements in (edits or {}).items():
        for old, new in replacements:
            assert old in files[name], f"anchor {old!r} not in lua/rules/{name}: update the test's edit"
            files[name] = files[name].replace(old, new, 1)
    return files


# Rules changes go out in waves, each soaked for rollout.lua's soak_seconds (30 s)
# after its pods are Ready. Tests that change the rendered workers but are not about
# rollouts give their rules no soak: the waves still run, gated on Ready pods.
NO_SOAK = {"rollout.lua": [("    soak_seconds = 30,", "    soak_seconds = 0,")]}


def rules_version(files: dict[str, str]) -> str:
    """The version the operator reports (luahost_dir_version): sha256 over every module
    file sorted by name, as name NUL contents NUL."""
    h = hashlib.sha256()
    for name in sorted(n for n in files if MODULE_FILE.match(n)):
        h.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    return h.hexdigest()


def write_plain(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


class ConfigMapDir:
    """A directory laid out as the kubelet's AtomicWriter lays out a ConfigMap volume:

        ..2026_01_01_00_00_00.1/rules.lua ...   the files of one version
        ..data -> ..2026_01_01_00_00_00.1       swapped by rename(2) on update
        rules.lua -> ..data/rules.lua           one symlink per key, never rewritten
    """

    def __init__(self, path: Path, files: dict[str, str]):
        self.path = path
        self.serial = 0
        path.mkdir(parents=True)
        version_dir = self._write_version(files)
        os.symlink(version_dir, path / "..data")
        self._link_keys(files)

    def _write_version(self, files: dict[str, str]) -> str:
        self.serial += 1
        name = time.strftime("..%Y_%m_%d_%H_%M_%S.") + f"{os.getpid()}{self.serial}"
        write_plain(self.path / name, files)
        return name

    def _link_keys(self, files: dict[str, str]) -> None:
        for key in files:
            link = self.path / key
            if not link.is_symlink():
                os.symlink(f"..data/{key}", link)

    def update(self, files: dict[str, str]) -> float:
        """Swaps in a new version like a ConfigMap update: new timestamped directory,
        ..data_tmp symlink renamed over ..data, new keys linked, old version removed.
        Returns time.time() right before the rename (the moment the change is visible)."""
        old = os.readlink(self.path / "..data")
        new = self._write_version(files)
        os.symlink(new, self.path / "..data_tmp")
        t = time.time()
        os.rename(self.path / "..data_tmp", self.path / "..data")
        self._link_keys(files)
        for key in os.listdir(self.path):
            if not key.startswith("..") and key not in files:
                os.unlink(self.path / key)
        shutil.rmtree(self.path / old)
        return t


@dataclass(frozen=True)
class Hostile:
    """A broken or hostile edit of the shipped rules.

    check_rules: regex that `check-rules` stderr must match (always with file:line)
    reload:      regex that the operator's rules.last_error must match"""
    id: str
    edits: dict
    check_rules: str
    reload: str

    def files(self) -> dict[str, str]:
        return rules_files(self.edits)


PWNED = "/tmp/sync-airbnb-rules-pwned"
LOOP = "function() while true do end end"
ACTION_ANCHOR = "                action.account_id, action.name = id, name\n"
LABELS_ANCHOR = "    local labels = assert(naming.labels(id))\n"
ENV_ANCHOR = "function M.env(account)\n"
MODE_ENV_ANCHOR = '        { name = "MODE", value = "worker" },\n'
# What check-rules and a reload both say when a rule runs past its time budget.
BUDGET = r"deployment\.lua:\d+: stopped: exceeded the time budget"

HOSTILE = [
    Hostile("syntax-error", {"deployment.lua": [("local M = {}\n", "local M = {\n")]},
            r"deployment\.lua:\d+: .*expected", r"deployment\.lua:\d+: .*expected"),
    Hostile("runtime-error-at-load", {"naming.lua": [("local M = {}\n", "local M = {}\nerror('boom at load')\n")]},
            r"naming\.lua:\d+: boom at load", r"naming\.lua:\d+: boom at load"),
    Hostile("runtime-error-in-rule",
            {"deployment.lua": [("function M.env(account)\n", "function M.env(account)\n    error('env exploded')\n")]},
            r"deployment\.lua:\d+: env exploded", r"deployment\.lua:\d+: env exploded"),
    Hostile("infinite-loop-in-rule",
            {"deployment.lua": [("function M.deployment(account, ctx)\n",
                                 "function M.deployment(account, ctx)\n    while true do end\n")]},
            r"deployment\.lua:\d+: stopped: exceeded the time budget", r"exceeded the time budget"),
    Hostile("infinite-loop-at-load", {"plan.lua": [("local M = {}\n", "local M = {}\nwhile true do end\n")]},
            r"plan\.lua:\d+: stopped: exceeded the time budget", r"plan\.lua:\d+: stopped: exceeded the time budget"),
    Hostile("enormous-string",
            {"deployment.lua": [("function M.env(account)\n",
                                 "function M.env(account)\n    local huge = string.rep('x', 1 << 30)\n")]},
            r"deployment\.lua:\d+: not enough memory", r"not enough memory"),
    Hostile("enormous-table",
            {"deployment.lua": [("function M.env(account)\n",
                                 "function M.env(account)\n    local t = {}\n"
                                 "    for i = 1, 1e9 do t[i] = { i, i } end\n")]},
            r"deployment\.lua:\d+: (not enough memory|stopped: exceeded the time budget)",
            r"not enough memory|exceeded the time budget"),
    Hostile("invalid-name", {"deployment.lua": [("            name = name,\n", "            name = 'Worker_' .. id,\n")]},
            r"deployment\.lua:\d+: account \"[^\"]*\": deployment\(\): invalid Deployment: metadata\.name",
            r"metadata\.name .* is not a DNS-1123 label"),
    Hostile("selector-not-matching-labels",
            {"deployment.lua": [("selector = { matchLabels = assert(naming.selector(id)) },",
                                 "selector = { matchLabels = { app = 'other-app' } },")]},
            r"deployment\.lua:\d+: account \"[^\"]*\": deployment\(\): invalid Deployment: "
            r"spec\.selector\.matchLabels\[\"app\"\]",
            # hot reload makes check-rules' check (issue 16): the same message
            r"deployment\.lua:\d+: account \"[^\"]*\": deployment\(\): invalid Deployment: "
            r"spec\.selector\.matchLabels\[\"app\"\]"),
    Hostile("io-library",
            {"deployment.lua": [("function M.deployment(account, ctx)\n",
                                 "function M.deployment(account, ctx)\n"
                                 "    local f = io.open('/etc/passwd')\n")]},
            r"deployment\.lua:\d+: undeclared global 'io'", r"deployment\.lua:\d+: undeclared global 'io'"),
    Hostile("os-execute",
            {"deployment.lua": [("function M.env(account)\n",
                                 f"function M.env(account)\n    os.execute('touch {PWNED}')\n")]},
            r"deployment\.lua:\d+: undeclared global 'os'", r"deployment\.lua:\d+: undeclared global 'os'"),
    Hostile("c-module-require",
            {"deployment.lua": [('local json = require("json")', 'local json = require("cjson")')]},
            # hot reload runs the same lint as check-rules first, so the same file:line message
            r"deployment\.lua:\d+: require of unknown module 'cjson'", r"deployment\.lua:\d+: require of unknown module 'cjson'"),
    Hostile("c-module-loadlib",
            {"naming.lua": [("local M = {}\n",
                             "local M = {}\nlocal open = package.loadlib('liblua5.4-cjson.so.0', 'luaopen_cjson')\n")]},
            r"naming\.lua:\d+: undeclared global 'package'", r"naming\.lua:\d+: undeclared global 'package'"),
    Hostile("set-global-at-load", {"rules.lua": [("local M = {}\n", "local M = {}\nshared_cache = {}\n")]},
            r"rules\.lua:\d+: assignment to global 'shared_cache'",
            r"rules\.lua:\d+: assignment to global 'shared_cache'"),
    Hostile("set-global-in-rule",
            {"deployment.lua": [("function M.env(account)\n",
                                 "function M.env(account)\n    calls = (calls or 0) + 1\n")]},
            r"deployment\.lua:\d+: assignment to global 'calls'",
            r"deployment\.lua:\d+: (assignment to|undeclared) global 'calls'"),
    # --- the untrusted boundary (issue 16): metatables, finalizers, C loops, smuggling ---
    Hostile("module-metatable-index-raises",
            {"rules.lua": [("\nreturn M\n", "\nreturn setmetatable(M, { __index = function() error('boom') end })\n")]},
            r"rules\.lua:\d+: the table rules\.lua returns has a metatable",
            r"rules\.lua:\d+: the table rules\.lua returns has a metatable"),
    Hostile("action-index-raises",
            {"plan.lua": [(ACTION_ANCHOR, ACTION_ANCHOR + "                setmetatable(action, { __index = function() error('index boom') end })\n")]},
            r"plan\.lua:\d+: plan\(\) returned a table with a metatable", r"plan\.lua:\d+: plan\(\) returned a table with a metatable"),
    Hostile("action-index-loops",
            {"plan.lua": [(ACTION_ANCHOR, ACTION_ANCHOR + f"                setmetatable(action, {{ __index = {LOOP} }})\n")]},
            r"plan\.lua:\d+: plan\(\) returned a table with a metatable", r"plan\.lua:\d+: plan\(\) returned a table with a metatable"),
    Hostile("gc-finalizer-loops",
            {"naming.lua": [("local M = {}\n", f"local M = {{}}\nlocal keep = setmetatable({{}}, {{ __gc = {LOOP} }})\n")]},
            r"naming\.lua:\d+: setmetatable: a metatable with __gc is not allowed",
            r"naming\.lua:\d+: setmetatable: a metatable with __gc is not allowed"),
    Hostile("array-marker-gc",
            {"naming.lua": [("local M = {}\n", f"local M = {{}}\nrawset(require('json').array_mt, '__gc', {LOOP})\n")]},
            r"\.lua:\d+: json: json\.array_mt was given __gc", r"\.lua:\d+: json: json\.array_mt was given __gc"),
    Hostile("labels-newindex-drops-managed-by",
            {"deployment.lua": [(LABELS_ANCHOR, "    local labels = setmetatable(assert(naming.labels(id)), { __newindex = function() end })\n")]},
            r"deployment\.lua:\d+: deployment\(\) returned a table with a metatable at \.metadata\.labels",
            r"deployment\.lua:\d+: deployment\(\) returned a table with a metatable at \.metadata\.labels"),
    Hostile("name-via-index",
            {"deployment.lua": [("            name = name,\n", "")],
             "plan.lua": [(ACTION_ANCHOR, ACTION_ANCHOR + "                if action.object then setmetatable(action.object.metadata, "
                                                          "{ __index = { name = name } }) end\n")]},
            r"deployment\.lua:\d+: .*metadata\.name", r"deployment\.lua:\d+: .*metadata\.name"),
    Hostile("backtracking-pattern",
            {"deployment.lua": [(ENV_ANCHOR, ENV_ANCHOR + "    string.find(string.rep('a', 50000), '.-.-.-.-.-.-.-.-b')\n")]},
            BUDGET, BUDGET),
    Hostile("gsub-backtracking",
            {"deployment.lua": [(ENV_ANCHOR, ENV_ANCHOR + "    string.gsub(string.rep('a', 20000), '.-.-.-.-.-b', 'x')\n")]},
            BUDGET, BUDGET),
    Hostile("empty-rep-forever",
            {"deployment.lua": [(ENV_ANCHOR, ENV_ANCHOR + "    for _ = 1, 1e12 do string.rep('', 1 << 60) end\n")]},
            BUDGET, BUDGET),
    Hostile("table-move-endless",
            {"deployment.lua": [(ENV_ANCHOR, ENV_ANCHOR + "    table.move({}, 1, 1 << 50, 1)\n")]},
            BUDGET, BUDGET),
    Hostile("table-remove-lying-len",
            {"deployment.lua": [(ENV_ANCHOR, ENV_ANCHOR + "    table.remove(setmetatable({}, { __len = function() return 1 << 50 end }), 1)\n")]},
            BUDGET, BUDGET),
    Hostile("concat-c-metamethod",
            {"deployment.lua": [(ENV_ANCHOR, ENV_ANCHOR + "    table.concat(setmetatable({}, { __index = rawlen }), '', 1, 1 << 40)\n")]},
            r"deployment\.lua:\d+: (stopped: exceeded the time budget|not enough memory)",
            r"deployment\.lua:\d+: (stopped: exceeded the time budget|not enough memory)"),
    Hostile("coroutine-c-loop",
            {"deployment.lua": [(ENV_ANCHOR, ENV_ANCHOR + "    coroutine.wrap(function() table.move({}, 1, 1 << 50, 1) end)()\n")]},
            r"deployment\.lua:\d+: .*stopped: exceeded the time budget", r"deployment\.lua:\d+: .*stopped: exceeded the time budget"),
    Hostile("sort-comparator-loops",
            {"deployment.lua": [(ENV_ANCHOR, ENV_ANCHOR + f"    table.sort({{3, 2, 1}}, {LOOP})\n")]},
            BUDGET, BUDGET),
    Hostile("json-encode-shared-subtables",
            {"deployment.lua": [(ENV_ANCHOR, ENV_ANCHOR + "    local t = {} for _ = 1, 64 do t = { t, t } end\n"
                                             "    require('json').encode(t)\n")]},
            r"deployment\.lua:\d+: .*(not enough memory|exceeded the time budget)",
            r"deployment\.lua:\d+: .*(not enough memory|exceeded the time budget)"),
    Hostile("error-object-tostring-loops",
            {"deployment.lua": [(ENV_ANCHOR, ENV_ANCHOR + f"    error(setmetatable({{}}, {{ __tostring = {LOOP} }}))\n")]},
            r"\.lua:\d+: .*exceeded the time budget", r"\.lua:\d+: .*exceeded the time budget"),
    Hostile("error-action-smuggles-credential",
            {"plan.lua": [(ACTION_ANCHOR, ACTION_ANCHOR + "                action = { action = 'error', account_id = account.airbnb_cookie,"
                                                          " name = account.airbnb_cookie, reason = 'leak ' .. account.airbnb_cookie }\n")]},
            r"plan\.lua:\d+: account \"[^\"]*\": plan\(\) gives an error", r"plan\.lua:\d+: account \"[^\"]*\": plan\(\) gives an error"),
    Hostile("credential-with-quote-into-env",
            {"deployment.lua": [(MODE_ENV_ANCHOR, MODE_ENV_ANCHOR + "        { name = \"COOKIE\", value = account.airbnb_cookie:find('\"', 1, true)"
                                                 " and account.airbnb_cookie or \"none\" },\n")]},
            r"deployment\.lua:\d+: account \"[^\"]*\": deployment\(\): the Deployment contains the value of airbnb_cookie",
            r"deployment\.lua:\d+: account \"[^\"]*\": deployment\(\): the Deployment contains the value of airbnb_cookie"),
]

