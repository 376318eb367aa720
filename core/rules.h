/* rules: the loaded Lua rules, and hot reload that keeps the last good ones.
 *
 * rules_reload() builds a fresh sandboxed state from a directory, requires
 * rules.lua, runs its self_check(ctx), and only then swaps it in; on any
 * failure the previous state keeps serving and the error is remembered. */
#ifndef RULES_H
#define RULES_H

#include <stddef.h>

#include "config.h"
#include "luahost.h"

typedef struct rules rules;

rules *rules_new(const config *cfg);
void rules_free(rules *r);

/* Loads dir (NULL → cfg->rules_dir). Returns 0 when the new rules are in
 * effect, -1 (err filled, previous rules kept) otherwise. */
int rules_reload(rules *r, const char *dir, char *err, size_t errlen);

/* An extra check run on candidate rules after their self-check and before
 * they are swapped in (the controller plans over the live accounts with
 * them). Returns 0 to accept, -1 with err to refuse. */
typedef int (*rules_check_fn)(rules *r, luahost *candidate, void *ud, char *err, size_t errlen);
void rules_set_check(rules *r, rules_check_fn fn, void *ud);

/* From now on every set that loads is also copied to cfg->rules_state_dir
 * (`run` calls this; check-rules and plan do not). */
void rules_keep_last_good(rules *r);
/* Start-up: RULES_DIR's rules, else the last good copy in
 * cfg->rules_state_dir, else the rules installed with the binary. Returns 0
 * when some rules are in effect (a fallback leaves RULES_DIR's error as the
 * last error), -1 with err when none load. */
int rules_load_at_start(rules *r, char *err, size_t errlen);

/* The current rules' host, or NULL before the first successful load. */
luahost *rules_host(rules *r);
/* KiB the current rules' Lua state holds (0 before the first load). */
int rules_lua_kib(rules *r);
/* sha256 of the current rules' files ("" before the first load). */
const char *rules_version(const rules *r);
/* Last reload error, or NULL if the last reload succeeded. */
const char *rules_last_error(const rules *r);
unsigned long rules_reload_count(const rules *r, int ok);

/* Pushes the ctx table handed to every rule call: namespace, worker_image, now. */
void rules_push_ctx(rules *r, lua_State *L);

#endif
