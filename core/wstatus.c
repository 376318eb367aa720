/* wstatus: see wstatus.h.
 *
 * Each account has an entry: what the passes and the watch cache told us
 * (the inputs), the row last computed from them (cur) and a digest of the
 * row the table holds (written; row_sum). A change marks the entry dirty; a
 * flush (debounced by FLUSH_DELAY_MS) recomputes the dirty entries and sends
 * the rows whose cur differs from written to the writer thread, at most
 * JOB_MAX_ROWS per job and one job at a time. The table is read back whenever
 * the writer (re)connects or leadership is won, so written is what the table
 * really holds and a restart with nothing changed writes nothing. */
#include "wstatus.h"
#include "worker_state.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "pg.h"
#include "scrub.h"
#include "util.h"

#define FLUSH_DELAY_MS 100  /* gathers what changed together into one batch */
#define RETRY_MIN_MS 500
#define RETRY_MAX_MS 5000
#define JOB_MAX_ROWS 5000   /* rows per job (one transaction) */
#define STMT_ROWS 500       /* rows per INSERT statement */
#define NOTIFY_MAX 7900     /* PostgreSQL payloads stay under 8000 bytes */

/* ---- the model shared with `status` --------------------------------------- */

static const char *const reason_names[WS_NREASONS] = {
    NULL, "paused", "held", "rollout", "failing", "soft_deleted", "inactive", "no_account",
};

const char *wstatus_reason_name(enum wstatus_reason r)
{
    return r > WS_OK && r < WS_NREASONS ? reason_names[r] : NULL;
}

/* How far a pod got: a ready running one is the worker's best news. */
static int pod_rank(const obs_pod *p)
{
    const char *ph = p->phase ? p->phase : "";
    if (strcmp(ph, "Running") == 0)
        return p->ready ? 5 : 4;
    if (strcmp(ph, "Pending") == 0)
        return 3;
    if (strcmp(ph, "Failed") == 0)
        return 1;
    if (strcmp(ph, "Succeeded") == 0)
        return 0;
    return 2; /* Unknown, or no status yet */
}

void wstatus_pods_add(wstatus_pods *s, const obs_pod *p)
{
    int rank = pod_rank(p);
    s->ready += p->ready;
    s->restarts += p->restarts;
    if (s->count++ == 0 || rank > s->rank || (rank == s->rank && s->waiting_reason == NULL)) {
        s->rank = rank;
        s->phase = p->phase;
        s->waiting_reason = p->waiting_reason;
    }
}

/* A pod that is not ready and will not become so by waiting. */
static const char *pod_failure(const wstatus_pods *p)
{
    if (p == NULL || p->count == 0 || p->ready > 0)
        return NULL;
    if (p->waiting_reason && strcmp(p->waiting_reason, "ContainerCreating") != 0 &&
        strcmp(p->waiting_reason, "PodInitializing") != 0)
        return p->waiting_reason; /* CrashLoopBackOff, ImagePullBackOff, CreateContainerConfigError ... */
    if (p->phase && strcmp(p->phase, "Failed") == 0)
        return "pod failed";
    return NULL;
}

enum wstatus_reason wstatus_derive(const wstatus_input *in, const char **failure)
{
    *failure = NULL;
    if (in->paused)
        return WS_PAUSED;
    if (in->held)
        return WS_HELD;
    if (in->rollout)
        return WS_ROLLOUT;
    if (in->error) {
        *failure = in->error;
        return WS_FAILING;
    }
    if (in->d && (*failure = pod_failure(in->pods)) != NULL)
        return WS_FAILING;
    if (!in->account_exists)
        return WS_NO_ACCOUNT;
    if (in->deleted)
        return WS_SOFT_DELETED;
    if (!in->active)
        return WS_INACTIVE;
    return WS_OK;
}

/* ---- entries --------------------------------------------------------------- */

typedef struct ws_row {
    int wanted, ready, restarts;
    enum wstatus_reason reason;
    long gen_applied, gen_wanted; /* -1: NULL */
    int64_t ready_changed_ms;     /* 0: NULL */
    char *deployment, *last_error;
    const char *pod_phase, *rules_version; /* interned (intern()): shared, never freed alone */
} ws_row;

typedef struct ws_entry {
    char *account_id;
    int account; /* the last pass found its row */
    int active, deleted;
    long gen_wanted, gen_applied, gen_sent; /* -1: unknown */
    const char *rules_version, *rv_sent; /* interned */
    int paused, held, rollout;
    char *error;      /* scrubbed, short */
    char *deployment; /* its Deployment in the cache */
    int last_ready;   /* -1: never computed */
    int64_t ready_changed_ms;
    unsigned seen;    /* full pass sweep */
    ws_row cur;
    /* What the table holds for this account, as a digest of its row
     * (row_sum): only ever compared with cur's, so no copy of the row. */
    unsigned char cur_sum[16], written_sum[16];
    int has_cur, has_written;
} ws_entry;

typedef struct ws_snap {
    char *account_id;
    unsigned char sum[16]; /* row_sum of the row sent: written once the job succeeds */
    int del;
} ws_snap;

typedef struct ws_job {
    uv_work_t req;
    wstatus *ws;
    int load;
    char *rows_json, *delete_json, *payload;
    size_t nrows;
    ws_snap *snaps;
    size_t nsnaps;
    int ok, need_load;
    double seconds; /* in the database */
    char err[512];
    PGresult *loaded;
} ws_job;

struct wstatus {
    uv_loop_t *loop;
    const config *cfg;
    cache *cache;
    int (*may_write)(void *);
    void *ud;
    strmap entries;     /* account id → ws_entry (borrowed keys: the entry's account_id) */
    strmap dirty;       /* account ids to recompute */
    strmap unsent;      /* account ids whose cur differs from written */
    strmap dep_account; /* Deployment name → account id (owned copy) */
    /* Rules versions and pod phases: a handful of distinct strings that every
     * row repeats (a 64-character version four times per account). Each is
     * kept once, key and value the same string, until wstatus_free: a reload
     * adds one. The writer thread reads them; only the loop adds. */
    strmap interned;
    unsigned seq;
    int have_accounts;  /* a full pass has run: the model knows every account */
    int need_load;
    int failing;        /* the last job failed (logged once) */
    int retry_ms;
    uv_timer_t timer;
    ws_job *job;        /* in flight */
    pg_conn *conn;      /* the writer thread's only */
};

static void row_clear(ws_row *r)
{
    free(r->deployment);
    free(r->last_error);
    memset(r, 0, sizeof *r);
}

static char *dup_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}


static int same_str(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

static void sum_str(buf *b, const char *s)
{
    if (s == NULL) {
        buf_puts(b, "-;");
        return;
    }
    buf_printf(b, "%zu:", strlen(s));
    buf_puts(b, s);
}

/* A digest of every column a reader sees, changed_at aside: two rows are
 * the same to a reader when their digests are (the first 16 bytes of a
 * sha256 over an unambiguous encoding). */
static void row_sum(const ws_row *r, unsigned char out[16])
{
    buf b = {0};
    buf_printf(&b, "%d,%d,%d,%d,%ld,%ld,%lld,", r->wanted, r->ready, r->restarts, (int)r->reason, r->gen_applied,
               r->gen_wanted, (long long)r->ready_changed_ms);
    sum_str(&b, r->deployment);
    sum_str(&b, r->pod_phase);
    sum_str(&b, r->last_error);
    sum_str(&b, r->rules_version);
    unsigned char md[32];
    util_sha256(b.data ? b.data : "", b.len, md);
    memcpy(out, md, 16);
    buf_free(&b);
}

static void entry_free(ws_entry *e)
{
    free(e->account_id);
    free(e->error);
    free(e->deployment);
    row_clear(&e->cur);
    free(e);
}

static void set_str(char **dst, const char *src)
{
    if (same_str(*dst, src))
        return;
    free(*dst);
    *dst = dup_or_null(src);
}

/* The one copy of s (NULL for NULL) in ws->interned. */
static const char *intern(wstatus *ws, const char *s)
{
    if (s == NULL)
        return NULL;
    char *k = strmap_get(&ws->interned, s);
    if (k == NULL) {
        k = xstrdup(s);
        strmap_put(&ws->interned, k, k);
    }
    return k;
}

static void on_timer(uv_timer_t *t);
static void wstatus_metrics(wstatus *ws);

/* The next flush in ms at the latest. */
static void schedule(wstatus *ws, int ms)
{
    if (uv_is_closing((uv_handle_t *)&ws->timer))
        return;
    if (uv_is_active((uv_handle_t *)&ws->timer) && (uint64_t)ms >= uv_timer_get_due_in(&ws->timer))
        return;
    uv_timer_start(&ws->timer, on_timer, (uint64_t)ms, 0);
}

static void mark(wstatus *ws, ws_entry *e)
{
    if (strmap_get(&ws->dirty, e->account_id) == NULL)
        strmap_put(&ws->dirty, e->account_id, (void *)1);
    schedule(ws, FLUSH_DELAY_MS);
}

static ws_entry *entry_get(wstatus *ws, const char *id, int create)
{
    ws_entry *e = strmap_get(&ws->entries, id);
    if (e == NULL && create) {
        e = xcalloc(1, sizeof *e);
        e->account_id = xstrdup(id);
        e->gen_wanted = e->gen_applied = e->gen_sent = -1;
        e->last_ready = -1;
        strmap_put(&ws->entries, e->account_id, e);
    }
    return e;
}

/* A short, scrubbed copy of an error: at most WSTATUS_ERROR_MAX bytes, cut
 * at a UTF-8 boundary. */
static char *short_error(const char *s)
{
    char *clean = scrub_dup(s);
    size_t n = strlen(clean);
    if (n > WSTATUS_ERROR_MAX) {
        n = WSTATUS_ERROR_MAX;
        while (n > 0 && ((unsigned char)clean[n] & 0xC0) == 0x80)
            n--;
        clean[n] = '\0';
    }
    return clean;
}

/* ---- hooks ---------------------------------------------------------------- */

void wstatus_on_cache(wstatus *ws, enum cache_kind kind, const char *name, const void *old, const void *now)
{
    if (ws == NULL)
        return;
    if (name == NULL) { /* a list completed: everything may have changed */
        size_t it = 0;
        void *v;
        while (strmap_next(&ws->entries, &it, NULL, &v))
            mark(ws, v);
        return;
    }
    if (kind == CACHE_POD) {
        const obs_pod *o = old, *n = now;
        const char *inst[2] = {o ? o->instance : NULL, n ? n->instance : NULL};
        for (int i = 0; i < 2; i++) {
            const char *id = inst[i] ? strmap_get(&ws->dep_account, inst[i]) : NULL;
            ws_entry *e = id ? entry_get(ws, id, 0) : NULL;
            if (e)
                mark(ws, e);
        }
        return;
    }
    const obs_deploy *o = old, *n = now;
    const char *nid = n && n->managed ? n->account_id : NULL;
    char *prev = strmap_get(&ws->dep_account, name);
    if (prev && !same_str(prev, nid)) {
        ws_entry *e = entry_get(ws, prev, 0);
        if (e && same_str(e->deployment, name)) {
            free(e->deployment);
            e->deployment = NULL;
            e->gen_applied = -1; /* a new Deployment starts from what its create sends */
            e->rules_version = NULL;
            mark(ws, e);
        }
        free(strmap_del(&ws->dep_account, name));
        prev = NULL;
    }
    (void)o;
    if (nid) {
        if (prev == NULL)
            strmap_put(&ws->dep_account, name, xstrdup(nid));
        ws_entry *e = entry_get(ws, nid, 1);
        set_str(&e->deployment, name);
        mark(ws, e);
    }
}

static int col_flag(const PGresult *res, int row, int col)
{
    return col >= 0 && !PQgetisnull(res, row, col) && PQgetvalue(res, row, col)[0] == 't';
}

void wstatus_on_pass(wstatus *ws, const PGresult *res, int full, const plan_result *plan, const char *rules_version)
{
    if (ws == NULL || res == NULL)
        return;
    int ci = PQfnumber(res, "account_id"), ca = PQfnumber(res, "is_active");
    int cd = PQfnumber(res, "deleted_at"), cg = PQfnumber(res, "credentials_generation");
    if (ci < 0)
        return;
    strmap acts = STRMAP_BORROWED, deferred = STRMAP_BORROWED;
    for (size_t i = 0; plan && i < plan->n; i++)
        if (plan->actions[i].account_id)
            strmap_put(&acts, plan->actions[i].account_id, &plan->actions[i]);
    for (size_t off = 0; plan && off < plan->deferred_ids_len;) {
        const char *id = plan->deferred_ids + off;
        strmap_put(&deferred, id, (void *)1);
        off += strlen(id) + 1;
    }
    ws->seq++;
    int n = PQntuples(res);
    for (int i = 0; i < n; i++) {
        if (PQgetisnull(res, i, ci))
            continue;
        const char *id = PQgetvalue(res, i, ci);
        ws_entry *e = entry_get(ws, id, 1);
        e->seen = ws->seq;
        int active = col_flag(res, i, ca), deleted = cd >= 0 && !PQgetisnull(res, i, cd);
        long gen = cg >= 0 && !PQgetisnull(res, i, cg) ? atol(PQgetvalue(res, i, cg)) : 0;
        int changed = !e->account || e->active != active || e->deleted != deleted || e->gen_wanted != gen;
        e->account = 1;
        e->active = active;
        e->deleted = deleted;
        e->gen_wanted = gen;
        if (plan && strmap_get(&deferred, id) == NULL) {
            const action *a = strmap_get(&acts, id);
            int held = a && a->kind == ACT_HOLD;
            changed |= e->held != held;
            e->held = held;
            if (a == NULL) {
                /* Nothing to do: the live Deployment is what these rules
                 * render from this row, and no earlier failure stands. */
                if (e->error) {
                    free(e->error);
                    e->error = NULL;
                    changed = 1;
                }
                if (e->deployment && (e->gen_applied != gen || !same_str(e->rules_version, rules_version))) {
                    e->gen_applied = gen;
                    e->rules_version = intern(ws, rules_version);
                    changed = 1;
                }
            } else if (a->kind == ACT_ERROR) {
                char *err = short_error(a->reason ? a->reason : "error");
                changed |= !same_str(e->error, err);
                free(e->error);
                e->error = err;
            } else if (a->kind != ACT_HOLD) {
                e->gen_sent = gen; /* in effect once the write succeeded (wstatus_on_write) */
                e->rv_sent = intern(ws, rules_version);
            }
        }
        if (changed)
            mark(ws, e);
    }
    /* Holds and errors of Deployments whose account has no row. */
    for (size_t i = 0; plan && i < plan->n; i++) {
        const action *a = &plan->actions[i];
        ws_entry *e = a->account_id ? entry_get(ws, a->account_id, 0) : NULL;
        if (e == NULL || e->seen == ws->seq)
            continue;
        /* Planned without a row: the row is gone (a partial pass asked for it). */
        int held = a->kind == ACT_HOLD;
        if (e->held != held || e->account) {
            e->held = held;
            e->account = 0;
            mark(ws, e);
        }
    }
    if (full) {
        size_t it = 0;
        void *v;
        while (strmap_next(&ws->entries, &it, NULL, &v)) {
            ws_entry *e = v;
            if (e->seen != ws->seq && e->account) {
                e->account = 0;
                mark(ws, e);
            }
        }
        if (!ws->have_accounts) {
            ws->have_accounts = 1;
            schedule(ws, 0);
        }
    }
    strmap_free(&acts);
    strmap_free(&deferred);
}

void wstatus_on_write(wstatus *ws, const char *account_id, const char *error)
{
    ws_entry *e = ws && account_id ? entry_get(ws, account_id, 0) : NULL;
    if (e == NULL)
        return;
    if (error) {
        char *err = short_error(error);
        free(e->error);
        e->error = err;
    } else {
        free(e->error);
        e->error = NULL;
        if (e->gen_sent >= 0)
            e->gen_applied = e->gen_sent;
        e->rules_version = e->rv_sent;
    }
    mark(ws, e);
}

void wstatus_set_paused(wstatus *ws, const char *account_id, int paused)
{
    ws_entry *e = ws && account_id ? entry_get(ws, account_id, 1) : NULL;
    if (e && e->paused != !!paused) {
        e->paused = !!paused;
        mark(ws, e);
    }
}

void wstatus_set_rollout(wstatus *ws, const char *account_id, int waiting)
{
    ws_entry *e = ws && account_id ? entry_get(ws, account_id, 1) : NULL;
    if (e && e->rollout != !!waiting) {
        e->rollout = !!waiting;
        mark(ws, e);
    }
}

void wstatus_clear_rollout(wstatus *ws)
{
    if (ws == NULL)
        return;
    size_t it = 0;
    void *v;
    while (strmap_next(&ws->entries, &it, NULL, &v)) {
        ws_entry *e = v;
        if (e->rollout) {
            e->rollout = 0;
            mark(ws, e);
        }
    }
}

void wstatus_leader(wstatus *ws, int is_leader)
{
    if (ws == NULL)
        return;
    if (is_leader) {
        ws->need_load = 1; /* another leader may have written meanwhile */
        schedule(ws, 0);
    }
}

/* ---- computing rows ------------------------------------------------------------ */

/* Its Deployment as the cache has it now. Our own delete leaves the cache
 * without a watch event for it (cache_remove_deployment), so a name the
 * cache no longer has is dropped here. */
static const obs_deploy *live_deployment(wstatus *ws, ws_entry *e)
{
    if (e->deployment == NULL)
        return NULL;
    const obs_deploy *d = strmap_get(cache_deployments(ws->cache), e->deployment);
    if (d == NULL) {
        char *owner = strmap_get(&ws->dep_account, e->deployment);
        if (owner && strcmp(owner, e->account_id) == 0)
            free(strmap_del(&ws->dep_account, e->deployment));
        free(e->deployment);
        e->deployment = NULL;
        e->gen_applied = -1;
        e->rules_version = NULL;
    }
    return d;
}

static void compute(wstatus *ws, ws_entry *e, const strmap *sums, ws_row *out)
{
    const obs_deploy *d = live_deployment(ws, e);
    const wstatus_pods *pods = d ? strmap_get(sums, d->name) : NULL;
    /* paused: the annotation on its Deployment (worker_state.h), as the safety filter reads it */
    wstatus_input in = {e->account, e->active, e->deleted, e->paused || wstate_paused(d), e->held, e->rollout, e->error,
                        d, pods};
    const char *failure;
    memset(out, 0, sizeof *out);
    out->reason = wstatus_derive(&in, &failure);
    out->wanted = e->account && e->active && !e->deleted;
    out->deployment = d ? xstrdup(d->name) : NULL;
    out->gen_wanted = e->account ? e->gen_wanted : -1;
    out->gen_applied = d ? e->gen_applied : -1;
    out->pod_phase = pods && pods->phase ? intern(ws, pods->phase) : NULL;
    out->ready = pods && pods->ready > 0;
    out->restarts = pods ? pods->restarts : 0;
    if (e->last_ready >= 0 && e->last_ready != out->ready)
        e->ready_changed_ms = (int64_t)util_wall_ms();
    e->last_ready = out->ready;
    out->ready_changed_ms = e->ready_changed_ms;
    out->last_error = failure ? short_error(failure) : NULL;
    out->rules_version = d ? e->rules_version : NULL;
}

/* An entry nobody knows any more: no account row, no Deployment. */
static int gone(const ws_entry *e)
{
    return !e->account && e->deployment == NULL && !e->paused && !e->rollout;
}

static void recompute_dirty(wstatus *ws)
{
    if (ws->dirty.len == 0 || ws->cache == NULL)
        return;
    /* The pods of the dirty entries' Deployments, in one walk of the pods. */
    strmap want = STRMAP_BORROWED, sums = STRMAP_BORROWED;
    size_t it = 0;
    const char *k;
    void *v;
    while (strmap_next(&ws->dirty, &it, &k, NULL)) {
        ws_entry *e = strmap_get(&ws->entries, k);
        if (e && e->deployment)
            strmap_put(&want, e->deployment, (void *)1);
    }
    wstatus_pods *slots = xcalloc(want.len + 1, sizeof *slots);
    size_t nslots = 0;
    it = 0;
    while (want.len > 0 && strmap_next(cache_pods(ws->cache), &it, NULL, &v)) {
        const obs_pod *p = v;
        if (p->instance == NULL || strmap_get(&want, p->instance) == NULL)
            continue;
        wstatus_pods *s = strmap_get(&sums, p->instance);
        if (s == NULL) {
            s = &slots[nslots++];
            strmap_put(&sums, p->instance, s);
        }
        wstatus_pods_add(s, p);
    }
    char **drop = xcalloc(ws->dirty.len + 1, sizeof *drop);
    size_t ndrop = 0;
    it = 0;
    while (strmap_next(&ws->dirty, &it, &k, NULL)) {
        ws_entry *e = strmap_get(&ws->entries, k);
        if (e == NULL)
            continue;
        live_deployment(ws, e);
        if (gone(e)) {
            if (e->has_written) {
                if (strmap_get(&ws->unsent, k) == NULL)
                    strmap_put(&ws->unsent, k, (void *)1);
            } else {
                drop[ndrop++] = e->account_id;
            }
            continue;
        }
        ws_row row;
        compute(ws, e, &sums, &row);
        row_clear(&e->cur);
        e->cur = row;
        row_sum(&e->cur, e->cur_sum);
        e->has_cur = 1;
        int differs = !e->has_written || memcmp(e->cur_sum, e->written_sum, 16) != 0;
        if (differs && strmap_get(&ws->unsent, k) == NULL)
            strmap_put(&ws->unsent, k, (void *)1);
        else if (!differs)
            strmap_del(&ws->unsent, k);
    }
    strmap_free(&ws->dirty);
    for (size_t i = 0; i < ndrop; i++) {
        ws_entry *e = strmap_del(&ws->entries, drop[i]);
        strmap_del(&ws->unsent, e->account_id);
        entry_free(e);
    }
    free(drop);
    free(slots);
    strmap_free(&want);
    strmap_free(&sums);
    wstatus_metrics(ws); /* /metrics follows the model as it changes, not a second later */
}

/* ---- the writer thread ------------------------------------------------------------ */

static const char upsert_sql[] =
    "INSERT INTO " WSTATUS_TABLE " AS w (account_key, account_id, wanted, reason, deployment, "
    "credentials_generation_applied, credentials_generation_wanted, pod_phase, ready, restarts, "
    "ready_changed_at, last_error, rules_version, changed_at) "
    "SELECT sha256(convert_to(r.account_id, 'UTF8')), r.account_id, r.wanted, r.reason, r.deployment, "
    "r.gen_applied, r.gen_wanted, r.pod_phase, r.ready, r.restarts, "
    "to_timestamp(r.ready_changed_ms / 1000.0), r.last_error, r.rules_version, now() "
    "FROM jsonb_to_recordset($1::jsonb) AS r(account_id text, wanted boolean, reason text, deployment text, "
    "gen_applied bigint, gen_wanted bigint, pod_phase text, ready boolean, restarts integer, "
    "ready_changed_ms bigint, last_error text, rules_version text) "
    "ON CONFLICT (account_key) DO UPDATE SET account_id = EXCLUDED.account_id, wanted = EXCLUDED.wanted, "
    "reason = EXCLUDED.reason, deployment = EXCLUDED.deployment, "
    "credentials_generation_applied = EXCLUDED.credentials_generation_applied, "
    "credentials_generation_wanted = EXCLUDED.credentials_generation_wanted, pod_phase = EXCLUDED.pod_phase, "
    "ready = EXCLUDED.ready, restarts = EXCLUDED.restarts, ready_changed_at = EXCLUDED.ready_changed_at, "
    "last_error = EXCLUDED.last_error, rules_version = EXCLUDED.rules_version, changed_at = now()";

static const char delete_sql[] =
    "DELETE FROM " WSTATUS_TABLE " WHERE account_key IN "
    "(SELECT sha256(convert_to(x, 'UTF8')) FROM jsonb_array_elements_text($1::jsonb) AS x)";

static const char load_sql[] =
    "SELECT account_id, wanted, reason, deployment, credentials_generation_applied, "
    "credentials_generation_wanted, pod_phase, ready, restarts, "
    "round(extract(epoch FROM ready_changed_at) * 1000)::bigint, last_error, rules_version FROM " WSTATUS_TABLE;

static int run_sql(ws_job *j, const char *sql, const char *param)
{
    const char *params[] = {param};
    return pg_command(j->ws->conn, sql, param ? 1 : 0, params, j->err, sizeof j->err);
}

static void job_write(ws_job *j);

static void job_work(uv_work_t *req)
{
    ws_job *j = req->data;
    uint64_t t0 = util_now_ms();
    job_write(j);
    j->seconds = (double)(util_now_ms() - t0) / 1000.0;
}

static void job_write(ws_job *j)
{
    wstatus *ws = j->ws;
    if (!pg_ok(ws->conn)) {
        int up;
        if (ws->conn == NULL)
            up = (ws->conn = pg_connect(ws->cfg->database_url, ws->cfg->db_timeout_ms, j->err, sizeof j->err)) != NULL;
        else
            up = pg_reconnect(ws->conn, j->err, sizeof j->err) == 0;
        if (!up)
            return;
        if (!j->load) {
            j->need_load = 1; /* a new session: read what the table holds first */
            return;
        }
    }
    if (j->load) {
        j->loaded = pg_exec(ws->conn, load_sql, 0, NULL, j->err, sizeof j->err);
        j->ok = j->loaded != NULL;
        return;
    }
    if (run_sql(j, "BEGIN", NULL) < 0)
        return;
    /* rows_json is STMT_ROWS-row arrays separated by NUL bytes */
    const char *p = j->rows_json;
    for (size_t done = 0; p && done < j->nrows; done += STMT_ROWS) {
        if (run_sql(j, upsert_sql, p) < 0)
            goto rollback;
        p += strlen(p) + 1;
    }
    if (j->delete_json && run_sql(j, delete_sql, j->delete_json) < 0)
        goto rollback;
    if (run_sql(j, "SELECT pg_notify('" WSTATUS_CHANNEL "', $1)", j->payload) < 0)
        goto rollback;
    if (run_sql(j, "COMMIT", NULL) < 0)
        goto rollback;
    j->ok = 1;
    return;
rollback:;
    char ignore[256];
    pg_command(ws->conn, "ROLLBACK", 0, NULL, ignore, sizeof ignore);
}

static void job_free(ws_job *j)
{
    for (size_t i = 0; i < j->nsnaps; i++) {
        free(j->snaps[i].account_id);
    }
    free(j->snaps);
    free(j->rows_json);
    free(j->delete_json);
    free(j->payload);
    if (j->loaded)
        PQclear(j->loaded);
    free(j);
}

static long col_long(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? -1 : atol(PQgetvalue(res, row, col));
}

static char *col_str(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? NULL : xstrdup(PQgetvalue(res, row, col));
}

static enum wstatus_reason reason_of(const char *s)
{
    for (int r = WS_OK + 1; s && r < WS_NREASONS; r++)
        if (strcmp(s, reason_names[r]) == 0)
            return (enum wstatus_reason)r;
    return WS_OK;
}

/* The table as read: becomes written for every entry. */
static void apply_load(wstatus *ws, const PGresult *res)
{
    size_t it = 0;
    void *v;
    while (strmap_next(&ws->entries, &it, NULL, &v)) {
        ws_entry *e = v;
        e->has_written = 0;
    }
    for (int i = 0; i < PQntuples(res); i++) {
        ws_entry *e = entry_get(ws, PQgetvalue(res, i, 0), 1);
        ws_row row = {0}, *w = &row;
        w->wanted = PQgetvalue(res, i, 1)[0] == 't';
        w->reason = PQgetisnull(res, i, 2) ? WS_OK : reason_of(PQgetvalue(res, i, 2));
        w->deployment = col_str(res, i, 3);
        w->gen_applied = col_long(res, i, 4);
        w->gen_wanted = col_long(res, i, 5);
        w->pod_phase = PQgetisnull(res, i, 6) ? NULL : intern(ws, PQgetvalue(res, i, 6));
        w->ready = PQgetvalue(res, i, 7)[0] == 't';
        w->restarts = atoi(PQgetvalue(res, i, 8));
        w->ready_changed_ms = PQgetisnull(res, i, 9) ? 0 : atoll(PQgetvalue(res, i, 9));
        w->last_error = col_str(res, i, 10);
        w->rules_version = PQgetisnull(res, i, 11) ? NULL : intern(ws, PQgetvalue(res, i, 11));
        row_sum(w, e->written_sum);
        e->has_written = 1;
        if (e->last_ready < 0) { /* carry the last transition over a restart */
            e->last_ready = w->ready;
            e->ready_changed_ms = w->ready_changed_ms;
        }
        row_clear(w);
    }
    strmap_free(&ws->unsent);
    it = 0;
    while (strmap_next(&ws->entries, &it, NULL, &v)) /* compare everything again */
        if (strmap_get(&ws->dirty, ((ws_entry *)v)->account_id) == NULL)
            strmap_put(&ws->dirty, ((ws_entry *)v)->account_id, (void *)1);
}

static void job_done(uv_work_t *req, int status)
{
    ws_job *j = req->data;
    wstatus *ws = j->ws;
    (void)status;
    ws->job = NULL;
    if (j->need_load) {
        ws->need_load = 1;
        schedule(ws, 0);
    } else if (!j->ok) {
        metrics_add("sync_airbnb_operator_worker_status_write_failures_total", NULL, 1);
        if (!ws->failing)
            log_warn("worker status not written; retrying (reconciling goes on)", "error", j->err, NULL);
        ws->failing = 1;
        ws->retry_ms = ws->retry_ms ? ws->retry_ms * 2 : RETRY_MIN_MS;
        if (ws->retry_ms > RETRY_MAX_MS)
            ws->retry_ms = RETRY_MAX_MS;
        schedule(ws, ws->retry_ms);
    } else {
        if (ws->failing)
            log_info("worker status written again", NULL);
        ws->failing = 0;
        ws->retry_ms = 0;
        if (j->load) {
            ws->need_load = 0;
            apply_load(ws, j->loaded);
        }
        size_t upserts = 0, deletes = 0;
        for (size_t i = 0; i < j->nsnaps; i++) {
            ws_snap *s = &j->snaps[i];
            ws_entry *e = strmap_get(&ws->entries, s->account_id);
            if (s->del) {
                deletes++;
                if (e && gone(e)) {
                    strmap_del(&ws->entries, s->account_id);
                    strmap_del(&ws->unsent, s->account_id);
                    entry_free(e);
                } else if (e) {
                    e->has_written = 0;
                }
                continue;
            }
            upserts++;
            if (e == NULL)
                continue;
            memcpy(e->written_sum, s->sum, 16);
            e->has_written = 1;
            if (e->has_cur && memcmp(e->cur_sum, e->written_sum, 16) == 0)
                strmap_del(&ws->unsent, s->account_id);
        }
        if (!j->load) {
            metrics_add("sync_airbnb_operator_worker_status_batches_total", NULL, 1);
            metrics_observe("sync_airbnb_operator_worker_status_write_duration_seconds", NULL, j->seconds);
        }
        if (upserts)
            metrics_add("sync_airbnb_operator_worker_status_rows_written_total", "op=\"upsert\"", (double)upserts);
        if (deletes)
            metrics_add("sync_airbnb_operator_worker_status_rows_written_total", "op=\"delete\"", (double)deletes);
        if (ws->unsent.len > 0 || ws->dirty.len > 0)
            schedule(ws, 0);
    }
    wstatus_metrics(ws);
    job_free(j);
}

static void json_field_str(buf *b, const char *k, const char *v)
{
    buf_printf(b, ",\"%s\":", k);
    if (v)
        buf_json_string(b, v, strlen(v));
    else
        buf_puts(b, "null");
}

static void json_field_long(buf *b, const char *k, long long v, int null)
{
    if (null)
        buf_printf(b, ",\"%s\":null", k);
    else
        buf_printf(b, ",\"%s\":%lld", k, v);
}

static void row_json(buf *b, const char *id, const ws_row *r)
{
    buf_puts(b, "{\"account_id\":");
    buf_json_string(b, id, strlen(id));
    buf_printf(b, ",\"wanted\":%s", r->wanted ? "true" : "false");
    json_field_str(b, "reason", wstatus_reason_name(r->reason));
    json_field_str(b, "deployment", r->deployment);
    json_field_long(b, "gen_applied", r->gen_applied, r->gen_applied < 0);
    json_field_long(b, "gen_wanted", r->gen_wanted, r->gen_wanted < 0);
    json_field_str(b, "pod_phase", r->pod_phase);
    buf_printf(b, ",\"ready\":%s,\"restarts\":%d", r->ready ? "true" : "false", r->restarts);
    json_field_long(b, "ready_changed_ms", r->ready_changed_ms, r->ready_changed_ms == 0);
    json_field_str(b, "last_error", r->last_error);
    json_field_str(b, "rules_version", r->rules_version);
    buf_putc(b, '}');
}

static void start_job(wstatus *ws, ws_job *j)
{
    j->ws = ws;
    j->req.data = j;
    ws->job = j;
    if (uv_queue_work(ws->loop, &j->req, job_work, job_done) != 0) {
        ws->job = NULL;
        job_free(j);
        schedule(ws, RETRY_MAX_MS);
    }
}

static void flush(wstatus *ws)
{
    if (ws->job || !ws->have_accounts)
        return;
    int leader = ws->may_write(ws->ud);
    if (leader && ws->need_load) {
        /* Before computing: the table carries ready_changed_at over a restart. */
        ws_job *j = xcalloc(1, sizeof *j);
        j->load = 1;
        start_job(ws, j);
        return;
    }
    recompute_dirty(ws);
    if (!leader)
        return; /* a standby keeps the model (for /metrics), the leader writes */
    if (ws->unsent.len == 0)
        return;
    ws_job *j = xcalloc(1, sizeof *j);
    size_t cap = ws->unsent.len < JOB_MAX_ROWS ? ws->unsent.len : JOB_MAX_ROWS;
    j->snaps = xcalloc(cap, sizeof *j->snaps);
    buf rows = {0}, dels = {0}, ids = {0};
    size_t ndel = 0, in_stmt = 0;
    buf_putc(&ids, '[');
    size_t it = 0;
    const char *k;
    while (j->nsnaps < cap && strmap_next(&ws->unsent, &it, &k, NULL)) {
        ws_entry *e = strmap_get(&ws->entries, k);
        if (e == NULL)
            continue;
        ws_snap *s = &j->snaps[j->nsnaps++];
        s->account_id = xstrdup(k);
        if (ids.len > 1)
            buf_putc(&ids, ',');
        buf_json_string(&ids, k, strlen(k));
        if (gone(e)) {
            s->del = 1;
            buf_puts(&dels, ndel++ ? "," : "[");
            buf_json_string(&dels, k, strlen(k));
            continue;
        }
        memcpy(s->sum, e->cur_sum, 16);
        if (in_stmt == STMT_ROWS) { /* next statement's array */
            buf_putc(&rows, ']');
            buf_putc(&rows, '\0');
            in_stmt = 0;
        }
        buf_putc(&rows, in_stmt++ ? ',' : '[');
        row_json(&rows, k, &e->cur);
        j->nrows++;
    }
    if (j->nrows) {
        buf_putc(&rows, ']');
        j->rows_json = buf_steal(&rows);
    }
    if (ndel) {
        buf_putc(&dels, ']');
        j->delete_json = buf_steal(&dels);
    }
    buf_putc(&ids, ']');
    /* The ids that changed, as a JSON array; "*" (read everything) when they
     * do not fit in one payload. */
    j->payload = ids.len <= NOTIFY_MAX ? buf_steal(&ids) : xstrdup("*");
    buf_free(&rows);
    buf_free(&dels);
    buf_free(&ids);
    start_job(ws, j);
}

static void on_timer(uv_timer_t *t)
{
    flush(t->data);
}

/* ---- life cycle and metrics ----------------------------------------------------------- */

wstatus *wstatus_new(uv_loop_t *loop, const config *cfg, cache *c, int (*may_write)(void *), void *ud)
{
    wstatus *ws = xcalloc(1, sizeof *ws);
    ws->loop = loop;
    ws->cfg = cfg;
    ws->cache = c;
    ws->may_write = may_write;
    ws->ud = ud;
    ws->need_load = 1;
    ws->entries.borrowed_keys = 1;
    ws->interned.borrowed_keys = 1;
    uv_timer_init(loop, &ws->timer);
    ws->timer.data = ws;
    return ws;
}

void wstatus_set_cache(wstatus *ws, cache *c)
{
    ws->cache = c;
}

void wstatus_free(wstatus *ws)
{
    if (ws == NULL)
        return;
    size_t it = 0;
    void *v;
    while (strmap_next(&ws->entries, &it, NULL, &v))
        entry_free(v);
    strmap_free(&ws->entries);
    strmap_free(&ws->dirty);
    strmap_free(&ws->unsent);
    it = 0;
    while (strmap_next(&ws->dep_account, &it, NULL, &v))
        free(v);
    strmap_free(&ws->dep_account);
    it = 0;
    while (strmap_next(&ws->interned, &it, NULL, &v))
        free(v);
    strmap_free(&ws->interned);
    pg_close(ws->conn);
    free(ws);
}

void wstatus_declare_metrics(void)
{
    metrics_declare("sync_airbnb_operator_worker_status", METRICS_GAUGE,
                    "Rows of sync_airbnb_operator.worker_status by reason (ok: nothing in the way).");
    metrics_declare("sync_airbnb_operator_worker_status_ready", METRICS_GAUGE,
                    "Rows of sync_airbnb_operator.worker_status whose worker pod is ready.");
    metrics_declare("sync_airbnb_operator_worker_status_pending", METRICS_GAUGE,
                    "Rows of the worker status model not yet written to the database.");
    metrics_declare("sync_airbnb_operator_worker_status_rows_written_total", METRICS_COUNTER,
                    "Rows of sync_airbnb_operator.worker_status written, by op (upsert, delete).");
    metrics_declare("sync_airbnb_operator_worker_status_batches_total", METRICS_COUNTER,
                    "Batches (transactions) written to sync_airbnb_operator.worker_status.");
    metrics_declare("sync_airbnb_operator_worker_status_write_duration_seconds", METRICS_HISTOGRAM,
                    "Time of one batch in the database (connect, statements, NOTIFY, COMMIT).");
    metrics_declare("sync_airbnb_operator_worker_status_write_failures_total", METRICS_COUNTER,
                    "Batches of worker status that could not be written (retried).");
}

/* The gauges of the model, set after each change of it. */
static void wstatus_metrics(wstatus *ws)
{
    if (ws == NULL || !ws->have_accounts)
        return;
    int counts[WS_NREASONS] = {0}, ready = 0;
    size_t it = 0;
    void *v;
    while (strmap_next(&ws->entries, &it, NULL, &v)) {
        const ws_entry *e = v;
        if (!e->has_cur || gone(e))
            continue;
        counts[e->cur.reason]++;
        ready += e->cur.ready;
    }
    for (int r = 0; r < WS_NREASONS; r++) {
        char labels[48];
        snprintf(labels, sizeof labels, "reason=\"%s\"", r == WS_OK ? "ok" : reason_names[r]);
        metrics_set("sync_airbnb_operator_worker_status", labels, counts[r]);
    }
    metrics_set("sync_airbnb_operator_worker_status_ready", NULL, ready);
    metrics_set("sync_airbnb_operator_worker_status_pending", NULL, (double)(ws->unsent.len + ws->dirty.len));
}
