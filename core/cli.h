/* cli: the read-only commands that show what the operator sees and would do
 * — `plan`, `status`, `check-rules` — and what the REPL shares with them.
 *
 *   cli.c        plan_main, status_main and the cli_view they and the REPL
 *                read through: the database, the cluster and the rules,
 *                exactly as `run` reads them (never writing anything)
 *   cli_check.c  cli_check_rules_main: prints rules_check_dir's verdict
 *                (rules_check.h)
 *
 * main.c dispatches `plan`, `status` and `check-rules` to plan_main,
 * status_main and cli_check_rules_main. */
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

/* The entry points of `plan` and `status`; return the exit code. */
int plan_main(const config *cfg, int argc, char **argv);
int status_main(const config *cfg, int argc, char **argv);

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

#endif
