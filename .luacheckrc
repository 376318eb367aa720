-- luacheck (Debian lua-check) over the rules, the stubs and the specs:
-- `luacheck lua spec` (tools/test runs it with the specs). The operator
-- lints a rules directory itself, in C, at every reload (core/rules_check.c;
-- why it has a linter of its own: docs/architecture.md, "Linting the
-- rules"); this is the contributor's second opinion, with luacheck's wider
-- checks (unused and shadowed locals, unreachable code).
std = "lua54"
max_line_length = false -- the C style has a width; the Lua files wrap where it reads best
-- Rule signatures document their arguments even where a rule ignores one
-- (deployment.resources(account) is the per-account hook).
unused_args = false

-- The sandbox has no io, os, debug, package, load, loadfile or dofile
-- (core/luahost.c): the rules and the migrations must not reach for them.
local sandboxed = { "io", "os", "debug", "package", "load", "loadfile", "dofile", "collectgarbage" }
files["lua/rules"] = { not_globals = sandboxed }
files["lua/migrations"] = { not_globals = sandboxed }
files["lua/core"] = { not_globals = sandboxed, ignore = { "212", "241" } } -- the stubs: signatures, empty bodies
files["spec"] = { std = "+busted" }
-- The REPL's prelude runs in the REPL's full Lua state, not the sandbox, and
-- sets the globals its banner lists.
files["lua/repl"] = { globals = { "json", "hash", "log", "clock", "db", "kube", "package" } }
