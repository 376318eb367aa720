/* cli: the read-only commands that show what the operator sees and would do
 * — `plan`, `status`, `check-rules` — and what the REPL shares with them.
 *
 *   cli.c        plan_main, status_main and the cli_view they and the REPL
 *                read through: the database, the cluster and the rules,
 *                exactly as `run` reads them (never writing anything)
 *   cli_check.c  cli_check_rules_main: lint, load, render sample accounts
 *                and validate their Deployments in C, self-check
 *
 * plan_main and status_main are the weak entry points declared in main.c;
 * main.c points `check-rules` at cli_check_rules_main. */
#ifndef CLI_H
#define CLI_H

#include <stddef.h>

#include "config.h"
#include "json.h"
#include "rules.h"
#include "strmap.h"
#include "util.h"

/* Exit codes of `plan` (DESIGN.md §4). */
#define CLI_PLAN_NOTHING 0
#define CLI_PLAN_ERROR 1
#define CLI_PLAN_PENDING 2

/* ---- the view: what `run` would read (cli.c) ------------------------------ */

typedef struct cli_view cli_view;

/* Nothing is opened yet: each piece connects or loads on first use and is
 * kept (a broken database connection is re-established). cfg is borrowed. */
cli_view *cli_view_new(const config *cfg);
void cli_view_free(cli_view *v);

/* The rules, loaded from cfg->rules_dir on first use. NULL with err when
 * they cannot be loaded. Owned by v. */
rules *cli_view_rules(cli_view *v, char *err, size_t errlen);

/* Reloads the rules from cfg->rules_dir like `run`'s hot reload: the new
 * rules are loaded and self-checked first and swapped in only then; on
 * failure the previous ones stay. Returns 0 or -1 with err. */
int cli_view_reload(cli_view *v, char *err, size_t errlen);

/* Plans exactly as a full pass of `run` would now (all accounts, the listed
 * managed Deployments, a full delete budget) and appends the JSON of
 * `plan -o json` to out:
 *   {"rules_version", "namespace", "pending",
 *    "summary": {"create","update","delete","hold","error","desired","observed"},
 *    "hold_reason",
 *    "actions": [{"action","account_id","deployment","reason"
 *                 [,"desired_hash","object"]}]}
 * *pending (may be NULL) is 1 when a create, update or delete would be sent.
 * Returns 0, or -1 with err (out untouched). */
int cli_plan_json(cli_view *v, buf *out, int *pending, char *err, size_t errlen);

/* Appends the JSON of `status -o json` to out:
 *   {"namespace", "rules_version",
 *    "accounts": [{"account_id","active","deleted","deployment","ready_pods",
 *                  "replicas","restarts","waiting_reason","fingerprint_in_sync",
 *                  "fingerprint","account_fingerprint","last_sync_at"}],
 *    "deployments_without_account": [{"deployment","account_id","ready_pods",
 *                  "replicas","restarts","waiting_reason"}]}
 * When the rules do not load, rules_version and every fingerprint field are
 * null (the reason goes to stderr). Returns 0 or -1 with err. */
int cli_status_json(cli_view *v, buf *out, char *err, size_t errlen);

/* One-shot commands raise the log level to warn (unless it is debug) so
 * that stdout/stderr carry results, not the core's progress lines. */
void cli_quiet_logs(const config *cfg);

/* ---- check-rules (cli_check.c) -------------------------------------------- */

int cli_check_rules_main(const config *cfg, int argc, char **argv);
/* The one rules check, for `check-rules` and hot reload alike: lint, load,
 * render the samples (C validation, no credential), self_check. Returns the
 * number of problems (0: the rules pass), each a line in problems; *stage
 * names the stage that failed. On 0 with checked != NULL, *checked gets the
 * loaded, self-checked host (the caller frees it). */
struct luahost;
int cli_check_dir(const config *cfg, const char *dir, buf *problems, const char **stage, int *nfiles,
                  int *nsamples, struct luahost **checked);

/* Lints every module file of dir (undeclared globals, global assignments,
 * unknown requires). Returns the number of problems (one line each appended
 * to problems) or -1 when dir cannot be read; *nfiles gets the file count.
 * Hot reload runs it too (rules.c). */
int cli_lint_dir(const char *dir, buf *problems, int *nfiles);

/* Checks one rendered Deployment (decoded JSON): name a DNS-1123 label of at
 * most 63 characters, apiVersion apps/v1 and kind Deployment, valid label
 * keys and values (object and pod template), a non-empty
 * spec.selector.matchLabels that is a subset of the pod template's labels,
 * at least one container, each with a name and an image. Returns 0, or -1
 * with the first problem in err. */
int cli_validate_deployment(const json_value *obj, char *err, size_t errlen);

/* Static check of one Lua chunk (Lua 5.4 bytecode): appends one line
 * "chunk:line: message\n" to problems per read of a global that is not in
 * globals, per assignment to any global, and per require("literal") of a
 * module that is not in modules (both maps: key → non-NULL). Returns the
 * number of problems, or -1 with a "chunk:line: message" syntax error (or an
 * unreadable bytecode format) appended. chunk is the name shown, e.g.
 * "deployment.lua". */
int cli_lint_chunk(const char *chunk, const char *src, size_t len, const strmap *globals,
                   const strmap *modules, buf *problems);

#endif
