/* config: see config.h. One table describes every setting: its environment
 * variable, its flag, its type, its default and its help line, so parsing,
 * --help and docs/configuration.md cannot drift apart. */
#include "config.h"

#include <errno.h>
#include <libpq-fe.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "names.h"
#include "pg.h"
#include "scrub.h"
#include "util.h"

enum opt_type { OPT_STRING, OPT_INT, OPT_DOUBLE, OPT_BOOL, OPT_LEVEL, OPT_FORMAT };

typedef struct option_spec {
    const char *env;
    const char *flag;
    enum opt_type type;
    size_t offset;
    const char *dflt; /* NULL: computed or unset */
    int min, max;     /* for OPT_INT */
    const char *help;
} option_spec;

#define OFF(f) offsetof(config, f)

static const option_spec options[] = {
    {"DATABASE_URL", "database-url", OPT_STRING, OFF(database_url), NULL, 0, 0,
     "PostgreSQL connection URL (postgresql://user:pass@host:port/db) or conninfo"},
    {"KUBECONFIG", "kubeconfig", OPT_STRING, OFF(kubeconfig), NULL, 0, 0,
     "kubeconfig file; unset: the in-cluster service account"},
    {"OPERATOR_NAMESPACE", "namespace", OPT_STRING, OFF(namespace), NULL, 0, 0,
     "namespace of the workers (default: the pod's namespace, else sync-airbnb)"},
    {"RULES_DIR", "rules-dir", OPT_STRING, OFF(rules_dir), NULL, 0, 0,
     "directory of the Lua rules (default: lua/rules of the installed copy or the checkout)"},
    {"RULES_STATE_DIR", "rules-state-dir", OPT_STRING, OFF(rules_state_dir),
     "/tmp/sync-airbnb-operator/last-good-rules", 0, 0,
     "where `run` keeps a copy of the last good rules, loaded at start-up when RULES_DIR's do not load"},
    {"MIGRATIONS_DIR", "migrations-dir", OPT_STRING, OFF(migrations_dir), NULL, 0, 0,
     "directory of the Lua migrations (default: lua/migrations of the installed copy or the checkout)"},
    {"WORKER_IMAGE", "worker-image", OPT_STRING, OFF(worker_image), "sync-airbnb:0.1.0", 0, 0,
     "image of the worker Deployments"},
    {"RESYNC_INTERVAL_SECONDS", "resync-interval", OPT_INT, OFF(resync_interval_s), "30", 1,
     86400, "full resync period in seconds (the safety net behind LISTEN/NOTIFY)"},
    {"ACCOUNTS_TABLE", "accounts-table", OPT_STRING, OFF(accounts_table), "airbnb.accounts", 0,
     0, "schema-qualified accounts table"},
    {"HEALTH_ADDR", "health-addr", OPT_STRING, OFF(health_addr), ":8080", 0, 0,
     "address of /healthz, /readyz and /metrics ([host]:port; empty disables)"},
    {"LOG_LEVEL", "log-level", OPT_LEVEL, OFF(log_level), "info", 0, 0,
     "debug, info, warn or error"},
    {"LOG_FORMAT", "log-format", OPT_FORMAT, OFF(log_format), "json", 0, 0, "json or text"},
    {"RULES_BUDGET_MS", "rules-budget-ms", OPT_INT, OFF(rules_budget_ms), "500", 10, 60000,
     "time budget of one call into the rules, in milliseconds"},
    {"KUBE_QPS", "kube-qps", OPT_DOUBLE, OFF(kube_qps), "20", 0, 0,
     "client-side request rate limit to the API server (requests/second)"},
    {"KUBE_BURST", "kube-burst", OPT_INT, OFF(kube_burst), "40", 1, 100000,
     "burst allowed above KUBE_QPS"},
    {"KUBE_MAX_INFLIGHT", "kube-max-inflight", OPT_INT, OFF(kube_max_inflight), "32", 1, 1024,
     "API requests in flight at once (watches not counted)"},
    {"KUBE_TIMEOUT_MS", "kube-timeout-ms", OPT_INT, OFF(kube_timeout_ms), "10000", 100, 600000,
     "timeout of one API request, in milliseconds"},
    {"DB_STATEMENT_TIMEOUT_MS", "db-timeout-ms", OPT_INT, OFF(db_timeout_ms), "10000", 100,
     600000, "PostgreSQL statement timeout, in milliseconds"},
    {"LOOP_STALL_SECONDS", "loop-stall-seconds", OPT_INT, OFF(loop_stall_s), "15", 1, 3600,
     "a main loop stuck this long fails /healthz and stops renewing the leader Lease"},
    {"DELETE_BUDGET", "delete-budget", OPT_INT, OFF(delete_budget), "5", 0, 1000000,
     "worker deletions allowed per RESYNC_INTERVAL_SECONDS; more are held"},
    {"DELETE_HOLD_PERCENT", "delete-hold-percent", OPT_INT, OFF(delete_hold_percent), "50", 0, 100,
     "deleting more than this share of the workers within DELETE_HOLD_WINDOW_SECONDS is held for a person (0: off)"},
    {"DELETE_HOLD_MIN", "delete-hold-min", OPT_INT, OFF(delete_hold_min), "10", 0, 1000000,
     "deletes per window the share never holds (small fleets)"},
    {"DELETE_HOLD_WINDOW_SECONDS", "delete-hold-window", OPT_INT, OFF(delete_hold_window_s), "3600", 1, 604800,
     "window of DELETE_HOLD_PERCENT"},
    {"ALLOW_EMPTY_DESIRED", "allow-empty-desired", OPT_BOOL, OFF(allow_empty), "false", 0, 0,
     "let an empty set of active accounts delete every worker (default: hold)"},
    {"LEADER_ELECT", "leader-elect", OPT_BOOL, OFF(leader_elect), "true", 0, 0,
     "take a coordination.k8s.io Lease before writing"},
    {"LEASE_NAME", "lease-name", OPT_STRING, OFF(lease_name), "sync-airbnb-operator", 0, 0,
     "name of the leader-election Lease"},
    {"LEASE_DURATION_SECONDS", "lease-duration", OPT_INT, OFF(lease_duration_s), "15", 1, 3600,
     "leader lease duration"},
    {"RENEW_DEADLINE_SECONDS", "renew-deadline", OPT_INT, OFF(renew_deadline_s), "10", 1, 3600,
     "leader gives up if it cannot renew within this"},
    {"RETRY_PERIOD_SECONDS", "retry-period", OPT_INT, OFF(retry_period_s), "2", 1, 3600,
     "interval between leader-election attempts"},
    {"POD_NAME", "identity", OPT_STRING, OFF(identity), NULL, 0, 0,
     "leader-election identity (default: hostname_pid)"},
    {"MIGRATE_LOCK_TIMEOUT_SECONDS", "migrate-lock-timeout", OPT_INT, OFF(migrate_lock_timeout_s),
     "60", 1, 86400, "how long `migrate up` waits for another runner's lock"},
    {"MIGRATE_CREATE_ACCOUNTS_TABLE", "create-accounts-table", OPT_BOOL,
     OFF(migrate_create_accounts_table), "false", 0, 0,
     "`migrate up` creates the accounts table when sync-airbnb's migrations have not (demo, tests)"},
    {"MIGRATE_WAIT_SECONDS", "migrate-wait", OPT_INT, OFF(migrate_wait_s), "0", 0, 86400,
     "how long `migrate up` waits for sync-airbnb's migrations to create the accounts table"},
};

#define NOPTIONS (sizeof options / sizeof options[0])

static char **str_field(config *c, const option_spec *o)
{
    return (char **)((char *)c + o->offset);
}

static int *int_field(config *c, const option_spec *o)
{
    return (int *)((char *)c + o->offset);
}

static int parse_bool(const char *s)
{
    if (!strcmp(s, "1") || !strcasecmp(s, "true") || !strcasecmp(s, "yes") || !strcasecmp(s, "on"))
        return 1;
    if (!strcmp(s, "0") || !strcasecmp(s, "false") || !strcasecmp(s, "no") || !strcasecmp(s, "off"))
        return 0;
    return -1;
}

/* Stores value into the option's field; src says where it came from for messages. */
static int set_option(config *c, const option_spec *o, const char *value, const char *src,
                      char *err, size_t errlen)
{
    char *end;
    switch (o->type) {
    case OPT_STRING:
        free(*str_field(c, o));
        *str_field(c, o) = xstrdup(value);
        return 0;
    case OPT_INT: {
        errno = 0;
        long v = strtol(value, &end, 10);
        if (errno || end == value || *end != '\0' || v < o->min || v > o->max) {
            util_seterr(err, errlen, "%s: invalid value \"%s\" (a whole number from %d to %d)",
                        src, value, o->min, o->max);
            return -1;
        }
        *int_field(c, o) = (int)v;
        return 0;
    }
    case OPT_DOUBLE: {
        errno = 0;
        double v = strtod(value, &end);
        if (errno || end == value || *end != '\0' || !(v > 0) || v > 1e6) {
            util_seterr(err, errlen, "%s: invalid value \"%s\" (a positive number)", src, value);
            return -1;
        }
        *(double *)((char *)c + o->offset) = v;
        return 0;
    }
    case OPT_BOOL:
    case OPT_LEVEL:
    case OPT_FORMAT: {
        /* Words mapped to an int field: one parser and one message each. */
        int v = o->type == OPT_BOOL    ? parse_bool(value)
                : o->type == OPT_LEVEL ? log_parse_level(value)
                                       : log_parse_format(value);
        const char *allowed = o->type == OPT_BOOL    ? "true or false"
                              : o->type == OPT_LEVEL ? "debug, info, warn or error"
                                                     : "json or text";
        if (v < 0) {
            util_seterr(err, errlen, "%s: invalid value \"%s\" (%s)", src, value, allowed);
            return -1;
        }
        *int_field(c, o) = v;
        return 0;
    }
    }
    return -1;
}

static int is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Where lua/<sub> is when not configured: next to the binary when it was
 * installed (<prefix>/bin → <prefix>/share/sync-airbnb-operator/lua), else
 * the source checkout it was built from, else the configured install prefix. */
char *config_lua_dir(const char *sub)
{
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            char *p = xasprintf("%s/../share/sync-airbnb-operator/lua/%s", exe, sub);
            if (is_dir(p))
                return p;
            free(p);
        }
    }
    char *src = xasprintf("%s/lua/%s", SAO_SOURCE_DIR, sub);
    if (is_dir(src))
        return src;
    free(src);
    return xasprintf("%s/lua/%s", SAO_DATA_DIR, sub);
}

static int finish(config *c, char *err, size_t errlen)
{
    /* accounts table: schema.table, lowercase identifiers (they are quoted in SQL) */
    const char *t = c->accounts_table;
    const char *dot = strchr(t, '.');
    const char *rel = dot ? dot + 1 : t;
    size_t slen = dot ? (size_t)(dot - t) : 6;
    const char *schema = dot ? t : "public";
    if ((dot && !names_pg_ident_n(t, slen)) || !names_pg_ident_n(rel, strlen(rel))) {
        util_seterr(err, errlen,
                    "ACCOUNTS_TABLE: invalid value \"%s\" (schema.table of lowercase letters, "
                    "digits and _)", t);
        return -1;
    }
    c->accounts_schema = xstrndup(schema, slen);
    c->accounts_relname = xstrdup(rel);

    if (c->namespace == NULL) {
        const char *sa = getenv("KUBE_SA_DIR");
        char *path = xasprintf("%s/namespace", sa ? sa : "/var/run/secrets/kubernetes.io/serviceaccount");
        char *ns = util_read_file(path, NULL);
        free(path);
        if (ns) {
            ns[strcspn(ns, " \t\r\n")] = '\0';
            if (*ns)
                c->namespace = ns;
            else
                free(ns);
        }
        if (c->namespace == NULL)
            c->namespace = xstrdup("sync-airbnb");
    }
    if (c->rules_dir == NULL)
        c->rules_dir = config_lua_dir("rules");
    if (c->migrations_dir == NULL)
        c->migrations_dir = config_lua_dir("migrations");
    c->builtin_rules_dir = config_lua_dir("rules");
    if (c->identity == NULL) {
        char host[256] = "operator";
        gethostname(host, sizeof host - 1);
        host[sizeof host - 1] = '\0';
        c->identity = xasprintf("%s_%d", host, (int)getpid());
    }
    if (c->kubeconfig != NULL) {
        if (*c->kubeconfig == '\0') {
            free(c->kubeconfig);
            c->kubeconfig = NULL;
        } else {
            /* KUBECONFIG may be a list; the first readable entry is used. */
            char *list = xstrdup(c->kubeconfig), *save = NULL, *first = NULL;
            for (char *p = strtok_r(list, ":", &save); p; p = strtok_r(NULL, ":", &save)) {
                if (access(p, R_OK) == 0) {
                    first = p;
                    break;
                }
            }
            if (first == NULL) {
                util_seterr(err, errlen, "KUBECONFIG: cannot read \"%s\": %s", c->kubeconfig,
                            strerror(errno ? errno : ENOENT));
                free(list);
                return -1;
            }
            free(c->kubeconfig);
            c->kubeconfig = xstrdup(first);
            free(list);
        }
    }
    if (c->database_url != NULL && *c->database_url == '\0') {
        free(c->database_url);
        c->database_url = NULL;
    }
    if (c->database_url != NULL && config_require_database(c, err, errlen) < 0)
        return -1;
    if (c->renew_deadline_s >= c->lease_duration_s) {
        util_seterr(err, errlen, "RENEW_DEADLINE_SECONDS (%d) must be less than LEASE_DURATION_SECONDS (%d)",
                    c->renew_deadline_s, c->lease_duration_s);
        return -1;
    }
    return 0;
}

int config_require_database(const config *c, char *err, size_t errlen)
{
    if (c->database_url == NULL) {
        util_seterr(err, errlen, "DATABASE_URL is not set (e.g. postgresql://user@127.0.0.1:5432/sync_airbnb)");
        return -1;
    }
    const char *u = c->database_url;
    int uri = strncmp(u, "postgresql://", 13) == 0 || strncmp(u, "postgres://", 11) == 0;
    if (!uri && strchr(u, '=') == NULL) {
        util_seterr(err, errlen, "DATABASE_URL: malformed (expected postgresql://... or key=value conninfo)");
        return -1;
    }
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(u, &perr);
    if (opts == NULL) {
        char *nl = perr ? strchr(perr, '\n') : NULL;
        if (nl)
            *nl = '\0';
        /* libpq's message quotes the bad part, which can be the password
         * (main registered it with the scrubber) */
        pg_scrub_register(u);
        char *clean = scrub_dup(perr ? perr : "out of memory");
        util_seterr(err, errlen, "DATABASE_URL: malformed (%s)", clean);
        free(clean);
        PQfreemem(perr);
        return -1;
    }
    PQconninfoFree(opts);
    return 0;
}

int config_load(config *c, int argc, char **argv, char ***rest, int *nrest, char *err,
                size_t errlen)
{
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < NOPTIONS; i++)
        if (options[i].dflt && set_option(c, &options[i], options[i].dflt, "default", err, errlen) < 0)
            return -1;
    for (size_t i = 0; i < NOPTIONS; i++) {
        const char *v = getenv(options[i].env);
        if (v != NULL && set_option(c, &options[i], v, options[i].env, err, errlen) < 0)
            return -1;
    }
    int npos = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-o") == 0 || strncmp(a, "--output", 8) == 0) {
            const char *v = NULL;
            if (strncmp(a, "--output=", 9) == 0)
                v = a + 9;
            else if (i + 1 < argc)
                v = argv[++i];
            if (v == NULL || (strcmp(v, "json") && strcmp(v, "table") && strcmp(v, "text"))) {
                util_seterr(err, errlen, "%s: expected json or table", a);
                return -1;
            }
            c->output_json = strcmp(v, "json") == 0;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            while (++i < argc)
                argv[npos++] = argv[i];
            break;
        }
        if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
            if (a[0] == '-' && a[1] != '\0') {
                util_seterr(err, errlen, "unknown flag %s (see --help)", a);
                return -1;
            }
            argv[npos++] = argv[i];
            continue;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const option_spec *o = NULL;
        for (size_t k = 0; k < NOPTIONS; k++)
            if (strlen(options[k].flag) == nlen && strncmp(options[k].flag, name, nlen) == 0)
                o = &options[k];
        if (o == NULL) {
            util_seterr(err, errlen, "unknown flag --%.*s (see --help)", (int)nlen, name);
            return -1;
        }
        const char *v = eq ? eq + 1 : NULL;
        if (v == NULL && o->type == OPT_BOOL)
            v = "true";
        if (v == NULL) {
            if (i + 1 >= argc) {
                util_seterr(err, errlen, "flag --%s needs a value", o->flag);
                return -1;
            }
            v = argv[++i];
        }
        char src[80];
        snprintf(src, sizeof src, "--%s", o->flag);
        if (set_option(c, o, v, src, err, errlen) < 0)
            return -1;
    }
    if (rest)
        *rest = argv;
    if (nrest)
        *nrest = npos;
    return finish(c, err, errlen);
}

void config_free(config *c)
{
    for (size_t i = 0; i < NOPTIONS; i++)
        if (options[i].type == OPT_STRING) {
            free(*str_field(c, &options[i]));
            *str_field(c, &options[i]) = NULL;
        }
    free(c->accounts_schema);
    free(c->accounts_relname);
    free(c->builtin_rules_dir);
    c->accounts_schema = c->accounts_relname = c->builtin_rules_dir = NULL;
}

void config_print_help(void *stream)
{
    FILE *f = stream;
    fprintf(f, "Settings (environment variable, flag, default):\n");
    for (size_t i = 0; i < NOPTIONS; i++) {
        const option_spec *o = &options[i];
        fprintf(f, "  %-30s --%-22s %s\n", o->env, o->flag, o->help);
        if (o->dflt)
            fprintf(f, "  %-30s   %-22s (default: %s)\n", "", "", o->dflt);
    }
    fprintf(f, "  %-30s %-24s %s\n", "", "-o, --output json|table", "output format of status, plan, migrate status");
}
