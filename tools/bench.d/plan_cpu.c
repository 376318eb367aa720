/* plan_cpu: CPU time of one full plan pass over N new accounts (all handed
 * to the rules, every Deployment rendered, encoded and checked): the cost of
 * the rules' time budget on the plan path (docs/architecture.md).
 *
 *   cmake --build build --target bench_plan_cpu
 *   DATABASE_URL=... RULES_DIR=lua/rules build/bench_plan_cpu [accounts=10000] [passes=7]
 *
 * The rows come from generate_series (no table needed); there are no
 * observed Deployments, so every account is a create. A pass plans the
 * accounts REC_PLAN_CHUNK (128) at a time, as `run` does (core/reconcile.h).
 * Prints the CPU time of each pass (rec_plan only) and the median. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "config.h"
#include "pg.h"
#include "reconcile.h"
#include "rules.h"
#include "strmap.h"
#include "util.h"

#define CHUNK REC_PLAN_CHUNK

static double cpu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    int accounts = argc > 1 ? atoi(argv[1]) : 10000, passes = argc > 2 ? atoi(argv[2]) : 7;
    config cfg;
    char err[1024];
    if (config_load(&cfg, 0, NULL, NULL, NULL, err, sizeof err) < 0) {
        fprintf(stderr, "config: %s\n", err);
        return 1;
    }
    pg_conn *db = pg_connect(cfg.database_url, 0, err, sizeof err);
    if (db == NULL) {
        fprintf(stderr, "database: %s\n", err);
        return 1;
    }
    int chunks = (accounts + CHUNK - 1) / CHUNK;
    PGresult **res = xcalloc((size_t)chunks, sizeof *res);
    for (int k = 0; k < chunks; k++) {
    char lo[32], hi[32];
    snprintf(lo, sizeof lo, "%d", k * CHUNK + 1);
    snprintf(hi, sizeof hi, "%d", (k + 1) * CHUNK < accounts ? (k + 1) * CHUNK : accounts);
    const char *params[] = {lo, hi};
    res[k] = pg_exec(db,
                            "SELECT (310000000 + i)::text AS account_id, NULL::text AS customer_id, "
                            "'cookie-' || i || '-Q9vTz\"x' AS airbnb_cookie, 'v1.2.' || i AS x_client_version, "
                            "'Mozilla/5.0 bench ' || i AS user_agent, true AS is_active, "
                            "'2025-01-01 05:00:00+00'::text AS last_sync_at, '2025-01-01 05:00:00+00'::text AS updated_at, "
                            "NULL::text AS deleted_at FROM generate_series($1::int, $2::int) AS i",
                            2, params, err, sizeof err);
    if (res[k] == NULL) {
        fprintf(stderr, "query: %s\n", err);
        return 1;
    }
    }
    rules *r = rules_new(&cfg);
    if (rules_reload(r, NULL, err, sizeof err) < 0) {
        fprintf(stderr, "rules: %s\n", err);
        return 1;
    }
    strmap observed = STRMAP_INIT;
    double *ms = xcalloc((size_t)passes, sizeof *ms);
    for (int p = 0; p < passes; p++) {
        size_t creates = 0;
        for (int k = 0; k < chunks; k++) {
            acct_rows rows;
            rows_from_pgresult(&rows, res[k]);
            plan_input in = {&rows, &observed, 0, accounts, 0, NULL, CHUNK, NULL, 0};
            plan_result out;
            double t0 = cpu_ms();
            if (rec_plan(r, &cfg, &in, &out, err, sizeof err) < 0) {
                fprintf(stderr, "plan: %s\n", err);
                return 1;
            }
            ms[p] += cpu_ms() - t0;
            rows_free(&rows);
            for (size_t i = 0; i < out.n; i++)
                creates += out.actions[i].kind == ACT_CREATE;
            rec_plan_free(&out);
        }
        printf("pass %d: %.0f ms CPU, %zu creates of %d accounts\n", p + 1, ms[p], creates, accounts);
    }
    qsort(ms, (size_t)passes, sizeof *ms, cmp_double);
    printf("median CPU of a full plan pass over %d accounts: %.0f ms\n", accounts, ms[passes / 2]);
    free(ms);
    strmap_free(&observed);
    rules_free(r);
    for (int k = 0; k < chunks; k++)
        PQclear(res[k]);
    free(res);
    pg_close(db);
    config_free(&cfg);
    return 0;
}
