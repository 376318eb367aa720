/* luahost: the one place where C creates Lua states and calls into Lua.
 *
 * A host state is sandboxed: base library without dofile/loadfile/load/
 * collectgarbage, plus string, table, math, utf8, coroutine. There is no io,
 * os, debug or package. `require(name)` resolves the host modules (hash,
 * json, log, and any registered with luahost_preload) and then <name>.lua in
 * the directory given to luahost_load_dir (flat names [A-Za-z0-9_]; text
 * chunks only, never bytecode). Globals are strict: reading or assigning an
 * undeclared global raises an error naming file:line.
 *
 * Every call from C into Lua goes through luahost_pcall(): a traceback
 * handler, an instruction/time budget (a rule that loops forever is stopped),
 * and a memory cap on the whole state.
 */
#ifndef LUAHOST_H
#define LUAHOST_H

#include <lua.h>
#include <stddef.h>
#include "util.h" /* buf */

#define LUAHOST_DEFAULT_BUDGET_MS 500
/* Per state. The pod's limit is 256 MiB: two states during a reload (96 MiB)
 * plus the C side's bounded share (docs/architecture.md, "Memory"). */
#define LUAHOST_DEFAULT_MEM_LIMIT (48u * 1024u * 1024u)

typedef struct luahost luahost;

/* Creates a sandboxed state. mem_limit 0 → LUAHOST_DEFAULT_MEM_LIMIT.
 * Returns NULL only if Lua itself cannot start. */
luahost *luahost_new(size_t mem_limit);
void luahost_free(luahost *h);
lua_State *luahost_state(luahost *h);

/* Makes `require(name)` return what openf returns (called once, lazily). */
void luahost_preload(luahost *h, const char *name, lua_CFunction openf);

/* Sets the directory `require` loads <name>.lua from, then requires `entry`
 * (e.g. "rules") under the budget and keeps its result in the registry.
 * Returns 0, or -1 with "file:line: message" in err. */
int luahost_load_dir(luahost *h, const char *dir, const char *entry, int budget_ms, char *err,
                     size_t errlen);
/* Pushes the value `entry` returned (nil before a successful load). */
void luahost_push_entry(luahost *h);
/* Pushes entry[field] (nil if absent). */
void luahost_push_entry_field(luahost *h, const char *field);

/* Calls the function below its nargs arguments on the stack, like lua_pcall,
 * with a traceback handler and the budget (ms; <= 0 → default). On success
 * leaves nresults values and returns 0. On error pops everything it was given,
 * writes "file:line: message" (first traceback line for budget stops) to err
 * and returns -1. Never longjmps. */
int luahost_pcall(lua_State *L, int nargs, int nresults, int budget_ms, char *err, size_t errlen);

/* Calls a rule: the function below its nargs arguments, like luahost_pcall
 * with one result, and inside the same protected, budgeted call checks that
 * the result is plain data (no metatable but json.array's marker, bounded
 * depth), so the caller may read it with raw accessors (lua_rawget,
 * lua_rawgeti, lua_rawlen) after the call. Errors name the function's
 * file:line and `what`. */
int luahost_call_rule(lua_State *L, const char *what, int nargs, int budget_ms, char *err, size_t errlen);

/* [may longjmp] For C functions called from Lua: raise the budget error
 * ("file:line: stopped: exceeded the time budget") when the deadline of the
 * call in progress has passed. No-op outside a budgeted call. */
void luahost_check_budget(lua_State *L);
/* [may longjmp] Raise "not enough memory" when extra more bytes would take
 * the state past its cap (for C buffers made on the rules' behalf). */
void luahost_mem_check(lua_State *L, size_t extra);
/* 1 when the table at idx has __gc, __close or __mode (not for rules). */
int luahost_metatable_unsafe(lua_State *L, int idx);

/* Convenience: luahost_pcall on the host's own state. */
int luahost_call(luahost *h, int nargs, int nresults, int budget_ms, char *err, size_t errlen);

/* Returns the luahost owning L (NULL for a state not made here). */
luahost *luahost_from_state(lua_State *L);

/* Hex sha256 over the concatenated contents of every *.lua in dir (sorted by
 * name): the "rules version" shown in /readyz. out must hold 65 bytes. */
int luahost_dir_version(const char *dir, char out[65], char *err, size_t errlen);
/* The bytes that version hashes, appended to *all: for every *.lua in dir,
 * sorted, its name, NUL, its text, NUL (the rollout keeps rules this way).
 * Returns 0 or -1 with err. */
int luahost_dir_bundle(const char *dir, buf *all, char *err, size_t errlen);
/* Writes a bundle's files into a fresh directory base/rollout-from-XXXXXX
 * (names with '/' or a leading '.' end it). Returns the directory (caller
 * frees; luahost_bundle_remove deletes it) or NULL with errno. */
char *luahost_bundle_unpack(const buf *b, const char *base);
/* Removes the files of bundle b from dir, then dir. */
void luahost_bundle_remove(const char *dir, const buf *b);

#endif
