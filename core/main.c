/* main: the command-line entry point. Parses the subcommand and its settings
 * and hands over to the subsystem that implements it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "completion.h"
#include "config.h"
#include "controller.h"
#include "log.h"
#include "migrate.h"
#include "pg.h"
#include "repl.h"
#include "rollout.h"
#include "util.h"

typedef int (*command_fn)(const config *cfg, int argc, char **argv);

static int version_main(const config *cfg, int argc, char **argv);
static int completion_main(const config *cfg, int argc, char **argv);

typedef struct command {
    const char *name;
    const char *usage;
    const char *summary;
    const char *details;
    command_fn fn;
} command;

static const command commands[] = {
    {"run", "run [flags]", "watch the accounts table and keep one worker Deployment per active account",
     "Connects to PostgreSQL and the Kubernetes API, waits until the schema is at head,\n"
     "takes the leader Lease, then reconciles on every account change (LISTEN/NOTIFY)\n"
     "and every RESYNC_INTERVAL_SECONDS. Serves /healthz, /readyz and /metrics on\n"
     "HEALTH_ADDR. Reloads the rules when RULES_DIR changes. SIGTERM stops it cleanly.\n",
     run_main},
    {"migrate", "migrate up|status|check [flags]", "create or check the operator's database objects",
     "  up      apply pending migrations (advisory lock: concurrent runners wait)\n"
     "  status  list applied and pending migrations (-o json or -o yaml)\n"
     "  check   exit 0 at head, 3 when migrations are pending, 1 on error\n",
     migrate_main},
    {"plan", "plan [flags]", "show what `run` would do now (exit 0: nothing, 2: changes pending, 1: error)",
     "Reads the accounts and the managed Deployments as a full pass of `run` does, runs\n"
     "the rules with the same safety checks (empty-set hold, a full DELETE_BUDGET), and\n"
     "prints the actions without executing them (-o json or -o yaml). Writes nothing.\n"
     "Exit 2 when a create, update or delete would be sent; holds and per-account\n"
     "errors are listed but are not pending changes, as `run` cannot execute them.\n",
     plan_main},
    {"status", "status [flags]", "accounts vs worker Deployments vs pods, one row per account",
     "Columns: account, active, deployment, ready pods, restarts, fingerprint in sync,\n"
     "reason (what stands in the worker's way, as in sync_airbnb_operator.worker_status),\n"
     "last_sync_at (-o json or -o yaml).\n",
     status_main},
    {"check-rules", "check-rules [DIR] [flags]", "check a rules directory before shipping it (exit 1 with file:line)",
     "Checks DIR (default RULES_DIR) before it ships: every file compiles and reads or\n"
     "sets no undeclared global and requires no unknown module (file:line, also in code\n"
     "no example reaches); rules.lua loads in the same sandbox and time budget as `run`;\n"
     "the example accounts and a list of odd ids render, through deployment() and plan(),\n"
     "to Deployments that JSON-encode and pass checks made in C (DNS-1123 name, label\n"
     "keys and values, selector a subset of the pod labels, containers with images, no\n"
     "credential values); self_check passes. Exits 1 with file:line on any failure.\n",
     cli_check_rules_main},
    {"repl", "repl [flags]", "a Lua prompt with the operator's bindings, for debugging",
     "A full (unsandboxed, unbudgeted) Lua 5.4 state for an admin: libedit line editing\n"
     "and history (~/.sync_airbnb_operator_history); a chunk may span lines. Globals:\n"
     "db (a connection to DATABASE_URL), kube (an API client from KUBECONFIG and\n"
     "KUBE_CONTEXT, else in-cluster, else ~/.kube/config), rules (the rules table),\n"
     "json, hash, log, clock; plan() and status()\n"
     "return what `plan -o json` and `status -o json` print, computed exactly as they\n"
     "are; reload() reloads RULES_DIR as hot reload does; ctx(); show(v).\n"
     "Piped stdin: no banner or prompts, stops at the first error with exit 1:\n"
     "  echo 'print(#plan())' | sync-airbnb-operator repl\n",
     repl_main},
    {"completion", "completion bash|zsh", "print a shell completion script",
     "Completes commands, flags, -o values, files and kubeconfig contexts (--context,\n"
     "read with kubectl when it is installed).\n"
     "  bash:  source <(sync-airbnb-operator completion bash)\n"
     "         or save it in /etc/bash_completion.d/sync-airbnb-operator\n"
     "  zsh:   source <(sync-airbnb-operator completion zsh)\n"
     "         or save it as _sync-airbnb-operator in a directory of $fpath\n",
     completion_main},
    {"rollout", "rollout [status|resume|abort] [flags]", "show, resume or abort the rules rollout in waves",
     "  status  the rollout's phase, waves and reached workers (default; -o json for JSON)\n"
     "  resume  start the halted (or aborted) wave again\n"
     "  abort   put every reached worker back on the previous rules until newer rules arrive\n"
     "The leader acts on resume/abort within a few seconds (docs/rules.md, Rollouts).\n",
     rollout_main},
    {"version", "version", "print the version", "", version_main},
};

#define NCOMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *f)
{
    fprintf(f,
            "sync-airbnb-operator keeps one worker Deployment per active sync-airbnb account.\n\n"
            "Usage: sync-airbnb-operator <command> [flags]\n\nCommands:\n");
    for (size_t i = 0; i < NCOMMANDS; i++)
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nRun 'sync-airbnb-operator <command> --help' for a command's details.\n\n");
    config_print_help(f);
}

static void command_help(const command *c)
{
    printf("Usage: sync-airbnb-operator %s\n\n%s.\n\n%s%s", c->usage, c->summary, c->details,
           *c->details ? "\n" : "");
    config_print_help(stdout);
}

static int version_main(const config *cfg, int argc, char **argv)
{
    (void)cfg, (void)argc, (void)argv;
    printf("sync-airbnb-operator %s (%s)\n", SAO_VERSION, LUA_RELEASE);
    return 0;
}

static int completion_main(const config *cfg, int argc, char **argv)
{
    (void)cfg;
    completion_command list[NCOMMANDS];
    for (size_t i = 0; i < NCOMMANDS; i++)
        list[i] = (completion_command){commands[i].name, commands[i].summary};
    if (argc != 1 || completion_write(stdout, argv[0], list, NCOMMANDS) < 0) {
        fprintf(stderr, "usage: sync-airbnb-operator completion bash|zsh\n");
        return 2;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        return version_main(NULL, 0, NULL);
    }
    const command *cmd = NULL;
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (!strcmp(argv[1], commands[i].name))
            cmd = &commands[i];
    if (cmd == NULL) {
        fprintf(stderr, "sync-airbnb-operator: unknown command \"%s\" (see --help)\n", argv[1]);
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--"))
            break;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            command_help(cmd);
            return 0;
        }
    }

    config cfg;
    char err[512];
    char **rest = NULL;
    int nrest = 0;
    if (config_load(&cfg, argc - 2, argv + 2, &rest, &nrest, err, sizeof err) < 0) {
        fprintf(stderr, "sync-airbnb-operator %s: %s\n", cmd->name, err);
        config_free(&cfg);
        return strcmp(cmd->name, "plan") == 0 ? 1 : 2; /* plan's 2 means "changes pending" */
    }
    log_init(cfg.log_level, cfg.log_format);
    pg_scrub_register(cfg.database_url); /* before anything can print it */

    int rc = cmd->fn(&cfg, nrest, rest);
    config_free(&cfg);
    return rc;
}
