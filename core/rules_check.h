/* rules_check: the one check of a rules directory, for `check-rules`
 * (cli_check.c) and hot reload (rules.c) alike. Four stages; the first that
 * finds a problem ends the check:
 *
 *   1. lint        every *.lua compiles; no undeclared global read, no global
 *                  assignment, no require of a module nobody provides
 *   2. load        require("rules") in a fresh sandbox; the functions the core
 *                  calls exist
 *   3. render      sample accounts (the examples' ids and odd ids) through
 *                  deployment() and plan(); each Deployment passes
 *                  names_validate_deployment and carries no credential
 *   4. self_check  the rules' own self_check(ctx)
 *
 * It knows nothing of the loaded rules (rules.h) or the commands (cli.h):
 * they call it, never the other way round. */
#ifndef RULES_CHECK_H
#define RULES_CHECK_H

#include <lua.h>
#include <stddef.h>

#include "config.h"
#include "luahost.h"
#include "strmap.h"
#include "util.h"

/* Returns the number of problems (0: the rules pass), each a line in
 * problems; *stage names the stage that failed. On 0 with checked != NULL,
 * *checked gets the loaded, self-checked host (the caller frees it). */
int rules_check_dir(const config *cfg, const char *dir, buf *problems, const char **stage, int *nfiles,
                    int *nsamples, luahost **checked);

/* Loads dir into a new host and runs its self-check (stages 2 and 4 without
 * the samples). Returns the host (caller frees) or NULL with err. */
luahost *rules_load_checked(const config *cfg, const char *dir, char *err, size_t errlen);

/* Pushes the ctx table handed to every rule call: namespace, worker_image, now. */
void rules_check_push_ctx(const config *cfg, lua_State *L);

/* Lints every module file of dir. Returns the number of problems (one line
 * each appended to problems) or -1 when dir cannot be read; *nfiles gets
 * the file count. */
int rules_lint_dir(const char *dir, buf *problems, int *nfiles);

/* Static check of one Lua chunk (Lua 5.4 bytecode): appends one line
 * "chunk:line: message\n" to problems per read of a global that is not in
 * globals, per assignment to any global, and per require("literal") of a
 * module that is not in modules (both maps: key → non-NULL). Returns the
 * number of problems, or -1 with a "chunk:line: message" syntax error (or an
 * unreadable bytecode format) appended. */
int rules_lint_chunk(const char *chunk, const char *src, size_t len, const strmap *globals,
                     const strmap *modules, buf *problems);

#endif
