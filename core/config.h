/* config: the operator's settings, from environment variables with matching
 * command-line flags (flags win). See `sync-airbnb-operator --help` and
 * docs/configuration.md. Strings are owned by the struct; config_free()
 * releases them. */
#ifndef CONFIG_H
#define CONFIG_H

#include <stddef.h>

typedef struct config {
    char *database_url;        /* DATABASE_URL (may be NULL until a command needs it) */
    char *kubeconfig;          /* KUBECONFIG; NULL → in-cluster service account */
    char *namespace;           /* OPERATOR_NAMESPACE; default pod namespace, else sync-airbnb */
    char *rules_dir;           /* RULES_DIR; default <checkout>/lua/rules or installed path */
    char *rules_state_dir;     /* RULES_STATE_DIR: a copy of the last good rules (start-up fallback) */
    char *builtin_rules_dir;   /* the rules installed with the binary (not an option) */
    char *migrations_dir;      /* MIGRATIONS_DIR; default next to the rules */
    char *worker_image;        /* WORKER_IMAGE, default sync-airbnb:0.1.0 */
    int resync_interval_s;     /* RESYNC_INTERVAL_SECONDS, default 30 */
    char *accounts_table;      /* ACCOUNTS_TABLE, default airbnb.accounts (validated identifier) */
    char *accounts_schema;     /* split from accounts_table */
    char *accounts_relname;    /* split from accounts_table */
    char *health_addr;         /* HEALTH_ADDR, default :8080 */
    int log_level;             /* LOG_LEVEL (enum log_level) */
    int log_format;            /* LOG_FORMAT (enum log_format) */
    int rules_budget_ms;       /* RULES_BUDGET_MS, default 500 */
    double kube_qps;           /* KUBE_QPS, default 20 */
    int kube_burst;            /* KUBE_BURST, default 40 */
    int kube_max_inflight;     /* KUBE_MAX_INFLIGHT, default 32 */
    int kube_timeout_ms;       /* KUBE_TIMEOUT_MS, default 10000 */
    int db_timeout_ms;         /* DB_STATEMENT_TIMEOUT_MS, default 10000 */
    int loop_stall_s;          /* LOOP_STALL_SECONDS: /healthz fails, Lease not renewed, default 15 */
    int delete_budget;         /* DELETE_BUDGET: deletes per resync interval, default 5 */
    int allow_empty;           /* ALLOW_EMPTY_DESIRED: 1 lets an empty desired set delete all */
    int delete_hold_percent;   /* DELETE_HOLD_PERCENT: share of workers deletable per window, 0 off */
    int delete_hold_min;       /* DELETE_HOLD_MIN: deletes per window never held by the share */
    int delete_hold_window_s;  /* DELETE_HOLD_WINDOW_SECONDS, default 3600 */
    int leader_elect;          /* LEADER_ELECT, default 1 */
    char *lease_name;          /* LEASE_NAME, default sync-airbnb-operator */
    int lease_duration_s;      /* LEASE_DURATION_SECONDS, default 15 */
    int renew_deadline_s;      /* RENEW_DEADLINE_SECONDS, default 10 */
    int retry_period_s;        /* RETRY_PERIOD_SECONDS, default 2 */
    char *identity;            /* POD_NAME or hostname-pid */
    int migrate_lock_timeout_s;/* MIGRATE_LOCK_TIMEOUT_SECONDS, default 60 */
    int migrate_create_accounts_table; /* MIGRATE_CREATE_ACCOUNTS_TABLE, default 0 */
    int migrate_wait_s;        /* MIGRATE_WAIT_SECONDS: wait for the accounts table, default 0 */
    int output_json;           /* -o json */
} config;

/* Fills defaults, then the environment, then argv flags starting at argv[0]
 * (the subcommand's own arguments). Leftover positional arguments are stored
 * in *rest / *nrest (pointers into argv). Returns 0, or -1 with one clear
 * line in err (unknown flag, bad value). */
int config_load(config *c, int argc, char **argv, char ***rest, int *nrest, char *err,
                size_t errlen);
void config_free(config *c);
/* Checks DATABASE_URL is present and parses (libpq conninfo or URI). */
/* Where lua/<sub> is (rules, migrations, repl): next to the installed binary,
 * else the source checkout it was built from, else the install prefix.
 * Caller frees. */
char *config_lua_dir(const char *sub);
int config_require_database(const config *c, char *err, size_t errlen);
/* Prints the flag/environment reference (used by every subcommand's --help). */
void config_print_help(void *stream);

#endif
