/* rollout: see rollout.h. */
#include "rollout.h"

#include <errno.h>
#include <lauxlib.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "json.h"
#include "log.h"
#include "luahost.h"
#include "metrics.h"

#define STATE_TABLE "sync_airbnb_operator.rollout"
#define REREAD_MS 2000 /* while a rollout is under way: a person's resume/abort */

typedef struct member {
    char *name, *account_id;
    char *admit_hash; /* its applied hash when it was reached; NULL: not reached yet */
    int on_from;      /* at the start it ran what the previous rules render (not a version
                       * a superseded rollout had moved it to): they may plan it */
} member;

typedef struct policy {
    int soak_s, ready_timeout_s, max_restarts, rollback;
} policy;

struct rollout {
    const config *cfg;
    rollout_report_fn report;
    void *ud;

    int loaded, has_row, dirty;
    uint64_t last_read_ms;
    char phase[16]; /* complete | progressing | halted | aborted */
    char *to_version, *to_image, *from_version, *from_image;
    buf to_rules, from_rules; /* luahost_dir_bundle() bytes; len 0: unknown */
    member *members;
    size_t nmembers;
    strmap by_name; /* member name → member (borrowed keys) */
    int *waves;
    size_t nwaves;
    int wave, reached;
    uint64_t wave_started_ms; /* wall clock (it is stored) */
    uint64_t healthy_since_ms; /* monotonic; 0: the wave is not all healthy */
    char *halt_reason;
    policy pol;

    config from_cfg; /* cfg with the previous WORKER_IMAGE */
    rules *from;     /* the previous rules, while a rollout is not complete */
};

static void members_clear(rollout *ro)
{
    for (size_t i = 0; i < ro->nmembers; i++) {
        free(ro->members[i].name);
        free(ro->members[i].account_id);
        free(ro->members[i].admit_hash);
    }
    free(ro->members);
    ro->members = NULL;
    ro->nmembers = 0;
    strmap_free(&ro->by_name);
    ro->by_name = (strmap)STRMAP_BORROWED;
}

static void members_index(rollout *ro)
{
    strmap_free(&ro->by_name);
    ro->by_name = (strmap)STRMAP_BORROWED;
    for (size_t i = 0; i < ro->nmembers; i++)
        strmap_put(&ro->by_name, ro->members[i].name, &ro->members[i]);
}

static void member_add(rollout *ro, const char *name, const char *account_id, const char *admit_hash,
                       int on_from)
{
    ro->members = xrealloc(ro->members, (ro->nmembers + 1) * sizeof *ro->members);
    member *m = &ro->members[ro->nmembers++];
    m->name = xstrdup(name);
    m->account_id = xstrdup(account_id ? account_id : "");
    m->admit_hash = admit_hash ? xstrdup(admit_hash) : NULL;
    m->on_from = on_from;
    members_index(ro); /* the array moved */
}

static void from_unload(rollout *ro)
{
    rules_free(ro->from);
    ro->from = NULL;
}

static void state_clear(rollout *ro)
{
    members_clear(ro);
    free(ro->waves);
    ro->waves = NULL;
    ro->nwaves = 0;
    free(ro->to_version);
    free(ro->to_image);
    free(ro->from_version);
    free(ro->from_image);
    free(ro->halt_reason);
    ro->to_version = ro->to_image = ro->from_version = ro->from_image = ro->halt_reason = NULL;
    buf_free(&ro->to_rules);
    buf_free(&ro->from_rules);
    ro->wave = ro->reached = 0;
    ro->wave_started_ms = ro->healthy_since_ms = 0;
    ro->has_row = 0;
    snprintf(ro->phase, sizeof ro->phase, "complete");
    from_unload(ro);
}

rollout *rollout_new(const config *cfg, rollout_report_fn report, void *ud)
{
    rollout *ro = xcalloc(1, sizeof *ro);
    ro->cfg = cfg;
    ro->report = report;
    ro->ud = ud;
    ro->by_name = (strmap)STRMAP_BORROWED;
    ro->pol = (policy){30, 300, 1, 1};
    snprintf(ro->phase, sizeof ro->phase, "complete");
    return ro;
}

void rollout_free(rollout *ro)
{
    if (ro == NULL)
        return;
    state_clear(ro);
    free(ro);
}

void rollout_invalidate(rollout *ro)
{
    ro->loaded = 0;
}

static int phase_is(const rollout *ro, const char *p)
{
    return strcmp(ro->phase, p) == 0;
}

void rollout_foreach_member(const rollout *ro, void (*fn)(const char *account_id, int waiting, void *ud), void *ud)
{
    if (ro == NULL || !ro->loaded)
        return;
    int done = phase_is(ro, "complete"), aborted = phase_is(ro, "aborted");
    for (size_t i = 0; i < ro->nmembers; i++)
        if (ro->members[i].account_id)
            fn(ro->members[i].account_id, !done && (aborted || (int)i >= ro->reached), ud);
}

int rollout_ready(const rollout *ro, rules *current)
{
    if (!ro->loaded || !ro->has_row)
        return 0;
    return strcmp(ro->to_version, rules_version(current)) == 0 &&
           strcmp(ro->to_image, ro->cfg->worker_image) == 0;
}

/* First member of the current wave. */
static int wave_start(const rollout *ro)
{
    int s = 0;
    for (int i = 0; i < ro->wave && (size_t)i < ro->nwaves; i++)
        s += ro->waves[i];
    return s;
}

void rollout_declare_metrics(void)
{
    metrics_declare("sync_airbnb_operator_rollout_phase", METRICS_GAUGE,
                    "1 for the phase the rules rollout is in (complete, progressing, halted, aborted).");
    metrics_declare("sync_airbnb_operator_rollout_workers", METRICS_GAUGE,
                    "Workers the rollout changes (changed) and has reached so far (reached).");
    metrics_declare("sync_airbnb_operator_rollout_wave", METRICS_GAUGE, "Current wave of the rollout (1 = canary; 0: none).");
    metrics_declare("sync_airbnb_operator_rollout_halts_total", METRICS_COUNTER, "Rollouts halted by a failing wave.");
}

static void publish_metrics(const rollout *ro)
{
    if (ro->report == NULL) /* `plan`: no metrics */
        return;
    static const char *const phases[] = {"complete", "progressing", "halted", "aborted"};
    for (size_t i = 0; i < 4; i++) {
        char labels[48];
        snprintf(labels, sizeof labels, "phase=\"%s\"", phases[i]);
        metrics_set("sync_airbnb_operator_rollout_phase", labels, phase_is(ro, phases[i]));
    }
    metrics_set("sync_airbnb_operator_rollout_workers", "state=\"changed\"", (double)ro->nmembers);
    metrics_set("sync_airbnb_operator_rollout_workers", "state=\"reached\"", ro->reached);
    metrics_set("sync_airbnb_operator_rollout_wave", NULL, ro->nwaves ? ro->wave + 1 : 0);
}

/* ---- the rules' policy ---------------------------------------------------- */

/* t[k] of a table the rules returned, without metamethods. */
static int raw_int(lua_State *L, int idx, const char *k, int lo, int hi, int *out)
{
    lua_pushstring(L, k);
    lua_rawget(L, idx);
    int ok = lua_isinteger(L, -1) && lua_tointeger(L, -1) >= lo && lua_tointeger(L, -1) <= hi;
    if (ok)
        *out = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    return ok;
}

/* The policy of rules r (checked by their self_check; read again here
 * because what rules hand over is untrusted). The default stays on any
 * doubt. */
static policy read_policy(rules *r)
{
    policy p = {30, 300, 1, 1};
    luahost *h = rules_host(r);
    if (h == NULL)
        return p;
    lua_State *L = luahost_state(h);
    int top = lua_gettop(L);
    luahost_push_entry_field(h, "rollout_policy");
    int t = lua_gettop(L);
    if (lua_type(L, t) == LUA_TTABLE && !luahost_metatable_unsafe(L, t) && lua_getmetatable(L, t) == 0) {
        policy q = p;
        int ok = raw_int(L, t, "soak_seconds", 0, 86400, &q.soak_s) &&
                 raw_int(L, t, "ready_timeout_seconds", 1, 86400, &q.ready_timeout_s) &&
                 raw_int(L, t, "max_restarts", 0, 1000, &q.max_restarts);
        lua_pushstring(L, "rollback");
        lua_rawget(L, t);
        ok = ok && lua_type(L, -1) == LUA_TBOOLEAN;
        q.rollback = lua_toboolean(L, -1);
        lua_pop(L, 1);
        if (ok)
            p = q;
        else
            log_warn("rollout policy unreadable; using the defaults", NULL);
    }
    lua_settop(L, top);
    return p;
}

/* Wave sizes from the rules' rollout_waves(total). Falls back to one worker
 * per wave (the slowest, safest order) when the rules' answer is unusable. */
static void read_waves(rollout *ro, rules *r, int total)
{
    free(ro->waves);
    ro->waves = NULL;
    ro->nwaves = 0;
    luahost *h = rules_host(r);
    char err[512] = "";
    int ok = 0;
    if (h) {
        lua_State *L = luahost_state(h);
        int top = lua_gettop(L);
        luahost_push_entry_field(h, "rollout_waves");
        lua_pushinteger(L, total);
        if (luahost_call(h, 1, 1, ro->cfg->rules_budget_ms, err, sizeof err) == 0 &&
            lua_type(L, -1) == LUA_TTABLE && lua_getmetatable(L, -1) == 0) {
            int t = lua_gettop(L);
            size_t n = lua_rawlen(L, t);
            long sum = 0;
            ok = n > 0 && n <= (size_t)total;
            ro->waves = xcalloc(n + 1, sizeof *ro->waves);
            for (size_t i = 1; ok && i <= n; i++) {
                lua_rawgeti(L, t, (lua_Integer)i);
                ok = lua_isinteger(L, -1) && lua_tointeger(L, -1) > 0 && lua_tointeger(L, -1) <= total;
                if (ok) {
                    ro->waves[ro->nwaves++] = (int)lua_tointeger(L, -1);
                    sum += lua_tointeger(L, -1);
                }
                lua_pop(L, 1);
            }
            ok = ok && sum == total;
        }
        lua_settop(L, top);
    }
    if (!ok) {
        log_warn("rollout_waves gave no usable wave sizes; one worker per wave", "error", err, NULL);
        free(ro->waves);
        ro->waves = xcalloc((size_t)total + 1, sizeof *ro->waves);
        for (int i = 0; i < total; i++)
            ro->waves[i] = 1;
        ro->nwaves = (size_t)total;
    }
}

/* ---- the stored state ------------------------------------------------------ */

static char *bytea_param(const buf *b)
{
    if (b->len == 0)
        return NULL;
    static const char hex[] = "0123456789abcdef";
    char *s = xmalloc(b->len * 2 + 3), *p = s;
    *p++ = '\\';
    *p++ = 'x';
    for (size_t i = 0; i < b->len; i++) {
        unsigned char c = (unsigned char)b->data[i];
        *p++ = hex[c >> 4];
        *p++ = hex[c & 15];
    }
    *p = '\0';
    return s;
}

static void bytea_read(const PGresult *res, int col, buf *out)
{
    buf_free(out);
    if (PQgetisnull(res, 0, col))
        return;
    size_t n = 0;
    unsigned char *raw = PQunescapeBytea((const unsigned char *)PQgetvalue(res, 0, col), &n);
    if (raw) {
        buf_append(out, raw, n);
        PQfreemem(raw);
    }
}

static int persist(rollout *ro, pg_conn *db)
{
    buf mem = {0}, wv = {0};
    buf_putc(&mem, '[');
    for (size_t i = 0; i < ro->nmembers; i++) {
        const member *m = &ro->members[i];
        buf_puts(&mem, i ? ",[" : "[");
        buf_json_string(&mem, m->name, strlen(m->name));
        buf_putc(&mem, ',');
        buf_json_string(&mem, m->account_id, strlen(m->account_id));
        buf_putc(&mem, ',');
        if (m->admit_hash)
            buf_json_string(&mem, m->admit_hash, strlen(m->admit_hash));
        else
            buf_puts(&mem, "null");
        buf_puts(&mem, m->on_from ? ",true]" : ",false]");
    }
    buf_putc(&mem, ']');
    buf_putc(&wv, '[');
    for (size_t i = 0; i < ro->nwaves; i++)
        buf_printf(&wv, "%s%d", i ? "," : "", ro->waves[i]);
    buf_putc(&wv, ']');
    char wave[16], reached[16], started[24];
    snprintf(wave, sizeof wave, "%d", ro->wave);
    snprintf(reached, sizeof reached, "%d", ro->reached);
    snprintf(started, sizeof started, "%llu", (unsigned long long)ro->wave_started_ms);
    char *from_rules = bytea_param(&ro->from_rules), *to_rules = bytea_param(&ro->to_rules);
    const char *params[] = {ro->phase, ro->from_version, ro->from_image, from_rules, ro->to_version,
                            ro->to_image, to_rules, mem.data, wv.data, wave, reached,
                            ro->wave_started_ms ? started : NULL, ro->halt_reason};
    char err[512];
    int rc = pg_command(db,
                        "INSERT INTO " STATE_TABLE " AS r (id, phase, from_version, from_image, from_rules, "
                        "to_version, to_image, to_rules, members, waves, wave, reached, wave_started_at, "
                        "halt_reason, started_at, updated_at) VALUES (1, $1, $2, $3, $4::bytea, $5, $6, "
                        "$7::bytea, $8::jsonb, $9::jsonb, $10::int, $11::int, "
                        "to_timestamp($12::bigint / 1000.0), $13, now(), now()) "
                        "ON CONFLICT (id) DO UPDATE SET phase = $1, from_version = $2, from_image = $3, "
                        "from_rules = $4::bytea, to_version = $5, to_image = $6, to_rules = $7::bytea, "
                        "members = $8::jsonb, waves = $9::jsonb, wave = $10::int, reached = $11::int, "
                        "wave_started_at = to_timestamp($12::bigint / 1000.0), halt_reason = $13, "
                        "started_at = CASE WHEN r.to_version IS DISTINCT FROM $5 OR r.to_image IS DISTINCT "
                        "FROM $6 THEN now() ELSE r.started_at END, updated_at = now()",
                        13, params, err, sizeof err);
    if (rc < 0)
        log_warn("cannot store the rollout state; retrying", "error", err, NULL);
    else
        ro->dirty = 0;
    free(from_rules);
    free(to_rules);
    buf_free(&mem);
    buf_free(&wv);
    return rc;
}

/* Loads the previous rules from their stored files, with the previous image. */
static int from_load(rollout *ro)
{
    from_unload(ro);
    if (ro->from_rules.len == 0 || ro->from_version == NULL)
        return -1;
    const char *base = ro->cfg->rules_state_dir && *ro->cfg->rules_state_dir ? ro->cfg->rules_state_dir : "/tmp";
    mkdir(base, 0700);
    char *dir = luahost_bundle_unpack(&ro->from_rules, base);
    if (dir == NULL) {
        log_warn("cannot write the previous rules to a directory", "dir", base, "error", strerror(errno), NULL);
        return -1;
    }
    ro->from_cfg = *ro->cfg;
    ro->from_cfg.worker_image = ro->from_image ? ro->from_image : ro->cfg->worker_image;
    ro->from = rules_new(&ro->from_cfg);
    char err[1024];
    int rc = rules_reload(ro->from, dir, err, sizeof err);
    if (rc == 0 && strcmp(rules_version(ro->from), ro->from_version) != 0) {
        snprintf(err, sizeof err, "version %s instead of %s", rules_version(ro->from), ro->from_version);
        rc = -1;
    }
    luahost_bundle_remove(dir, &ro->from_rules);
    free(dir);
    if (rc < 0) {
        log_warn("cannot load the previous rules of the rollout", "error", err, NULL);
        from_unload(ro);
    }
    return rc;
}

static int load(rollout *ro, pg_conn *db)
{
    char err[512];
    PGresult *res = pg_exec(db,
                            "SELECT phase, from_version, from_image, from_rules, to_version, to_image, to_rules, "
                            "members::text, waves::text, wave, reached, "
                            "coalesce((extract(epoch FROM wave_started_at) * 1000)::bigint, 0), halt_reason "
                            "FROM " STATE_TABLE " WHERE id = 1",
                            0, NULL, err, sizeof err);
    if (res == NULL) {
        log_warn("cannot read the rollout state", "error", err, NULL);
        return -1;
    }
    state_clear(ro);
    if (PQntuples(res) == 1) {
        ro->has_row = 1;
        snprintf(ro->phase, sizeof ro->phase, "%s", PQgetvalue(res, 0, 0));
        ro->from_version = PQgetisnull(res, 0, 1) ? NULL : xstrdup(PQgetvalue(res, 0, 1));
        ro->from_image = PQgetisnull(res, 0, 2) ? NULL : xstrdup(PQgetvalue(res, 0, 2));
        bytea_read(res, 3, &ro->from_rules);
        ro->to_version = xstrdup(PQgetvalue(res, 0, 4));
        ro->to_image = xstrdup(PQgetvalue(res, 0, 5));
        bytea_read(res, 6, &ro->to_rules);
        json_value *mem = json_parse(PQgetvalue(res, 0, 7), (size_t)PQgetlength(res, 0, 7), NULL, 0);
        for (size_t i = 0; i < json_len(mem); i++) {
            const json_value *m = json_at(mem, i);
            const char *name = json_string(json_at(m, 0));
            if (name)
                member_add(ro, name, json_string(json_at(m, 1)), json_string(json_at(m, 2)),
                           json_bool(json_at(m, 3), 1));
        }
        json_free(mem);
        json_value *wv = json_parse(PQgetvalue(res, 0, 8), (size_t)PQgetlength(res, 0, 8), NULL, 0);
        ro->waves = xcalloc(json_len(wv) + 1, sizeof *ro->waves);
        for (size_t i = 0; i < json_len(wv); i++)
            ro->waves[ro->nwaves++] = (int)json_number(json_at(wv, i), 1);
        json_free(wv);
        ro->wave = atoi(PQgetvalue(res, 0, 9));
        ro->reached = atoi(PQgetvalue(res, 0, 10));
        ro->wave_started_ms = strtoull(PQgetvalue(res, 0, 11), NULL, 10);
        ro->halt_reason = PQgetisnull(res, 0, 12) ? NULL : xstrdup(PQgetvalue(res, 0, 12));
        if (!phase_is(ro, "complete") && from_load(ro) < 0)
            log_warn("rollout under way but its previous rules cannot be loaded; workers not reached yet "
                     "are left as they are", "phase", ro->phase, NULL);
    }
    PQclear(res);
    ro->loaded = 1;
    ro->last_read_ms = util_now_ms();
    publish_metrics(ro);
    return 0;
}

/* The rules in effect as a bundle, when the directory still holds them
 * (it may have changed since they loaded: then later). */
static int snapshot_current(rules *current, const config *cfg, buf *out)
{
    buf b = {0};
    char err[256], version[65];
    if (luahost_dir_bundle(cfg->rules_dir, &b, err, sizeof err) < 0) {
        buf_free(&b);
        return -1;
    }
    util_sha256_hex(b.data ? b.data : "", b.len, version);
    if (strcmp(version, rules_version(current)) != 0) {
        buf_free(&b);
        return -1;
    }
    buf_free(out);
    *out = b;
    return 0;
}

/* ---- starting a rollout ---------------------------------------------------- */

/* A plan of the accounts in res against observed, as a partial pass makes
 * it but with nothing settled, deferred or deletable: the rollout's own
 * renders. */
static int plan_accounts(rules *r, const config *cfg, PGresult *res, strmap *observed, plan_result *out,
                         char *err, size_t errlen)
{
    acct_rows rows;
    rows_from_pgresult(&rows, res);
    plan_input in = {.accounts = &rows, .observed = observed, .full = 0, .active_total = -1,
                     .delete_allowance = 0, .settled = NULL, .max_rows = 0, .busy = NULL};
    int rc = rec_plan(r, cfg, &in, out, err, errlen);
    rows_free(&rows);
    return rc;
}

/* account id → desired hash of every active account in res under r. */
static int render_hashes(rules *r, const config *cfg, PGresult *res, strmap *out)
{
    strmap none = STRMAP_INIT;
    plan_result p = {0};
    char err[1024];
    int rc = plan_accounts(r, cfg, res, &none, &p, err, sizeof err);
    if (rc == 0) {
        for (size_t i = 0; i < p.n; i++)
            if (p.actions[i].kind == ACT_CREATE && p.actions[i].account_id && p.actions[i].desired_hash)
                free(strmap_put(out, p.actions[i].account_id, xstrdup(p.actions[i].desired_hash)));
    } else {
        log_warn("rollout: cannot render the workers", "error", err, NULL);
    }
    rec_plan_free(&p);
    strmap_free(&none);
    return rc;
}

static void free_values(strmap *m)
{
    size_t it = 0;
    void *v;
    while (strmap_next(m, &it, NULL, &v))
        free(v);
    strmap_free(m);
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The workers that the new rules render differently from the previous ones
 * (both rendered from the same rows: a credential change is not a rules
 * change), by name. */
static int find_members(rollout *ro, pg_conn *db, rules *current, cache *c)
{
    strmap *deps = cache_deployments(c);
    const char **names = xcalloc(deps->len + 1, sizeof *names);
    const char **ids = xcalloc(deps->len + 1, sizeof *ids);
    size_t n = 0, nids = 0;
    size_t it = 0;
    void *v;
    while (strmap_next(deps, &it, NULL, &v)) {
        const obs_deploy *d = v;
        if (d->managed && d->account_id) {
            names[n++] = d->name;
            ids[nids++] = d->account_id;
        }
    }
    qsort(names, n, sizeof *names, name_cmp);
    int rc = 0;
    if (n > 0) {
        char err[512];
        char *sql = rec_accounts_sql(ro->cfg, 1), *arr = rec_text_array(ids, nids);
        const char *params[] = {arr};
        PGresult *res = pg_exec(db, sql, 1, params, err, sizeof err);
        free(sql);
        free(arr);
        strmap before = STRMAP_INIT, after = STRMAP_INIT;
        if (res == NULL) {
            log_warn("rollout: cannot read the accounts", "error", err, NULL);
            rc = -1;
        } else if (render_hashes(ro->from, &ro->from_cfg, res, &before) < 0 ||
                   render_hashes(current, ro->cfg, res, &after) < 0) {
            rc = -1;
        } else {
            for (size_t i = 0; i < n; i++) {
                const obs_deploy *d = strmap_get(deps, names[i]);
                const char *was = strmap_get(&before, d->account_id), *now = strmap_get(&after, d->account_id);
                if (was == NULL && now == NULL)
                    continue; /* not a live account under either: its delete is not a rules change */
                if (was && now && strcmp(was, now) == 0)
                    continue;
                member_add(ro, d->name, d->account_id, NULL,
                           was && d->applied_hash && strcmp(was, d->applied_hash) == 0);
            }
        }
        if (res)
            PQclear(res);
        free_values(&before);
        free_values(&after);
    }
    free(names);
    free(ids);
    return rc;
}

static void short_version(const char *v, char out[13])
{
    snprintf(out, 13, "%s", v ? v : "?");
}

/* Reaches the members of the current wave: their applied hash now is what
 * "updated" is judged against; their accounts are planned again. */
static void reach_wave(rollout *ro, cache *c, strmap *enqueue)
{
    int start = wave_start(ro);
    int end = start + ((size_t)ro->wave < ro->nwaves ? ro->waves[ro->wave] : 0);
    if ((size_t)end > ro->nmembers)
        end = (int)ro->nmembers;
    for (int i = start; i < end; i++) {
        member *m = &ro->members[i];
        if (m->admit_hash == NULL) {
            const obs_deploy *d = strmap_get(cache_deployments(c), m->name);
            m->admit_hash = xstrdup(d && d->applied_hash ? d->applied_hash : "");
        }
        if (*m->account_id && strmap_get(enqueue, m->account_id) == NULL)
            strmap_put(enqueue, m->account_id, (void *)1);
    }
    ro->reached = end;
    ro->wave_started_ms = util_wall_ms();
    ro->healthy_since_ms = 0;
    ro->dirty = 1;
}

static void complete(rollout *ro, const char *why)
{
    char v[13];
    short_version(ro->to_version, v);
    char *msg = xasprintf("rules %s (image %s): %s", v, ro->to_image, why);
    ro->report(ro->ud, "RolloutComplete", NULL, msg, 0);
    free(msg);
    snprintf(ro->phase, sizeof ro->phase, "complete");
    members_clear(ro);
    free(ro->waves);
    ro->waves = NULL;
    ro->nwaves = 0;
    ro->wave = ro->reached = 0;
    free(ro->from_version);
    free(ro->from_image);
    ro->from_version = ro->from_image = NULL;
    buf_free(&ro->from_rules);
    free(ro->halt_reason);
    ro->halt_reason = NULL;
    from_unload(ro);
    ro->dirty = 1;
}

/* The rules or image in effect differ from the state's target. */
static int start(rollout *ro, pg_conn *db, rules *current, cache *c, strmap *enqueue)
{
    /* From what the workers not reached run: the target of a finished
     * rollout, else the base of the one this supersedes. */
    char *from_version, *from_image;
    buf from_rules = {0};
    if (!ro->has_row) {
        from_version = NULL;
        from_image = NULL;
    } else if (phase_is(ro, "complete")) {
        from_version = xstrdup(ro->to_version);
        from_image = xstrdup(ro->to_image);
        buf_append(&from_rules, ro->to_rules.data, ro->to_rules.len);
    } else {
        from_version = ro->from_version ? xstrdup(ro->from_version) : NULL;
        from_image = ro->from_image ? xstrdup(ro->from_image) : NULL;
        buf_append(&from_rules, ro->from_rules.data, ro->from_rules.len);
    }
    int had_row = ro->has_row;
    state_clear(ro);
    ro->has_row = 1;
    ro->to_version = xstrdup(rules_version(current));
    ro->to_image = xstrdup(ro->cfg->worker_image);
    snapshot_current(current, ro->cfg, &ro->to_rules);
    ro->from_version = from_version;
    ro->from_image = from_image;
    ro->from_rules = from_rules;
    ro->pol = read_policy(current);
    char v[13], fv[13];
    short_version(ro->to_version, v);
    short_version(ro->from_version, fv);

    int rc = 0;
    if (!had_row) {
        /* First start with this table: the rules in effect are the base. */
        snprintf(ro->phase, sizeof ro->phase, "complete");
        log_info("rollout: recording the rules in effect as the base", "version", ro->to_version, NULL);
    } else if (from_load(ro) < 0) {
        char *msg = xasprintf("rules %s (image %s): the previous rules %s are not known; the change is "
                              "applied to every worker at once", v, ro->to_image, fv);
        ro->report(ro->ud, "RolloutSkipped", NULL, msg, 1);
        free(msg);
        complete(ro, "applied without waves");
    } else if (find_members(ro, db, current, c) < 0) {
        /* Cannot tell who changes: try again at the next tick (the pass waits). */
        members_clear(ro);
        free(ro->to_version);
        ro->to_version = xstrdup("");
        ro->loaded = 0;
        publish_metrics(ro);
        return 0;
    } else if (ro->nmembers == 0) {
        snprintf(ro->phase, sizeof ro->phase, "complete");
        char *msg = xasprintf("rules %s (image %s) render no existing worker differently from %s: no rollout",
                              v, ro->to_image, fv);
        ro->report(ro->ud, "RolloutNotNeeded", NULL, msg, 0);
        free(msg);
        buf_free(&ro->from_rules);
        from_unload(ro);
    } else {
        snprintf(ro->phase, sizeof ro->phase, "progressing");
        read_waves(ro, current, (int)ro->nmembers);
        ro->wave = 0;
        reach_wave(ro, c, enqueue);
        char *msg = xasprintf("rules %s (image %s) change %zu workers: %zu waves, canary %s; soak %d s, "
                              "Ready within %d s, at most %d restarts, rollback %s",
                              v, ro->to_image, ro->nmembers, ro->nwaves, ro->members[0].name, ro->pol.soak_s,
                              ro->pol.ready_timeout_s, ro->pol.max_restarts, ro->pol.rollback ? "on" : "off");
        ro->report(ro->ud, "RolloutStarted", NULL, msg, 0);
        free(msg);
    }
    ro->dirty = 1;
    if (persist(ro, db) < 0)
        rc = -1;
    publish_metrics(ro);
    return rc;
}

/* ---- judging a wave -------------------------------------------------------- */

static void halt(rollout *ro, const member *m, const char *why, strmap *enqueue)
{
    char v[13];
    short_version(ro->to_version, v);
    int start = wave_start(ro);
    snprintf(ro->phase, sizeof ro->phase, "halted");
    free(ro->halt_reason);
    ro->halt_reason = xasprintf("wave %d: %s: %s", ro->wave + 1, m->name, why);
    metrics_add("sync_airbnb_operator_rollout_halts_total", NULL, 1);
    if (ro->pol.rollback) {
        /* Not reached any more: the previous rules plan them, and put
         * them back on the Deployment they had. */
        for (int i = start; i < ro->reached; i++)
            if (*ro->members[i].account_id && strmap_get(enqueue, ro->members[i].account_id) == NULL)
                strmap_put(enqueue, ro->members[i].account_id, (void *)1);
        ro->reached = start;
    }
    char *msg = xasprintf("rules %s: rollout halted at %s; %d of %zu workers on the new rules%s; "
                          "resume or abort: sync-airbnb-operator rollout resume|abort",
                          v, ro->halt_reason, ro->reached, ro->nmembers,
                          ro->pol.rollback ? ", the failed wave rolled back" : "");
    ro->report(ro->ud, "RolloutHalted", m->name, msg, 1);
    free(msg);
    ro->dirty = 1;
}

/* Why member m's pods are failing, or NULL. Pods older than the wave (a
 * failed pod of an earlier try stays listed) do not count. */
static const char *pod_failure(const rollout *ro, cache *c, const member *m, char *why, size_t whylen)
{
    size_t it = 0;
    void *v;
    long long since = (long long)(ro->wave_started_ms / 1000) - 1;
    while (strmap_next(cache_pods(c), &it, NULL, &v)) {
        const obs_pod *p = v;
        if (p->instance == NULL || strcmp(p->instance, m->name) != 0)
            continue;
        if (p->created_unix_s != 0 && p->created_unix_s < since)
            continue;
        if (p->phase && strcmp(p->phase, "Failed") == 0)
            snprintf(why, whylen, "pod %s Failed", p->name);
        else if (p->waiting_reason && (strcmp(p->waiting_reason, "CrashLoopBackOff") == 0 ||
                                       strcmp(p->waiting_reason, "ImagePullBackOff") == 0 ||
                                       strcmp(p->waiting_reason, "ErrImagePull") == 0 ||
                                       strcmp(p->waiting_reason, "CreateContainerConfigError") == 0))
            snprintf(why, whylen, "pod %s %s", p->name, p->waiting_reason);
        else if (p->restarts > ro->pol.max_restarts)
            snprintf(why, whylen, "pod %s restarted %d times (at most %d)", p->name, p->restarts,
                     ro->pol.max_restarts);
        else
            continue;
        return why;
    }
    return NULL;
}

static int member_healthy(const rollout *ro, cache *c, const member *m)
{
    const obs_deploy *d = strmap_get(cache_deployments(c), m->name);
    if (d == NULL)
        return 1; /* gone (its account was deactivated): nothing to wait for */
    int updated = d->applied_hash && m->admit_hash && strcmp(d->applied_hash, m->admit_hash) != 0;
    if (!updated) {
        log_debug("rollout: waiting for the update", "deployment", m->name, NULL);
        return 0;
    }
    if (d->observed_generation < d->generation || d->updated_replicas < d->replicas ||
        d->ready_replicas < d->replicas || d->available_replicas < d->replicas) {
        char st[128];
        snprintf(st, sizeof st, "gen %ld observed %ld replicas %d updated %d ready %d available %d", d->generation,
                 d->observed_generation, d->replicas, d->updated_replicas, d->ready_replicas, d->available_replicas);
        log_debug("rollout: waiting for the Deployment", "deployment", m->name, "status", st, NULL);
        return 0;
    }
    /* Ready pods of this template, created since the wave began. */
    size_t it = 0;
    void *v;
    int ready = 0;
    long long since = (long long)(ro->wave_started_ms / 1000) - 1;
    while (strmap_next(cache_pods(c), &it, NULL, &v)) {
        const obs_pod *p = v;
        if (p->instance && strcmp(p->instance, m->name) == 0 && p->ready &&
            (p->created_unix_s == 0 || p->created_unix_s >= since))
            ready++;
    }
    if (ready < d->replicas)
        log_debug("rollout: waiting for Ready pods of the new template", "deployment", m->name, NULL);
    return ready >= d->replicas;
}

static void judge(rollout *ro, cache *c, strmap *enqueue)
{
    int start = wave_start(ro);
    int all = 1;
    char why[256];
    for (int i = start; i < ro->reached; i++) {
        const member *m = &ro->members[i];
        if (pod_failure(ro, c, m, why, sizeof why)) {
            halt(ro, m, why, enqueue);
            return;
        }
        if (!member_healthy(ro, c, m))
            all = 0;
    }
    uint64_t now = util_now_ms();
    if (!all) {
        ro->healthy_since_ms = 0;
        if (util_wall_ms() > ro->wave_started_ms + (uint64_t)ro->pol.ready_timeout_s * 1000u) {
            for (int i = start; i < ro->reached; i++)
                if (!member_healthy(ro, c, &ro->members[i])) {
                    snprintf(why, sizeof why, "not updated and Ready within %d s", ro->pol.ready_timeout_s);
                    halt(ro, &ro->members[i], why, enqueue);
                    return;
                }
        }
        return;
    }
    if (ro->healthy_since_ms == 0)
        ro->healthy_since_ms = now;
    if (now - ro->healthy_since_ms < (uint64_t)ro->pol.soak_s * 1000u)
        return;
    /* The wave held: the next one, or done. */
    if ((size_t)ro->reached >= ro->nmembers) {
        complete(ro, "every changed worker updated and Ready");
        return;
    }
    ro->wave++;
    if ((size_t)ro->wave >= ro->nwaves) { /* members added since (created while halted) */
        ro->waves = xrealloc(ro->waves, (ro->nwaves + 1) * sizeof *ro->waves);
        ro->waves[ro->nwaves++] = (int)ro->nmembers - ro->reached;
    }
    reach_wave(ro, c, enqueue);
    char msg[160];
    snprintf(msg, sizeof msg, "wave %d of %zu: %d workers (%d of %zu reached)", ro->wave + 1, ro->nwaves,
             ro->waves[ro->wave], ro->reached, ro->nmembers);
    log_info("rollout: next wave", "detail", msg, NULL);
}

/* A person's resume or abort (sync-airbnb-operator rollout resume|abort). */
static void take_request(rollout *ro, pg_conn *db, cache *c, strmap *enqueue)
{
    char err[256];
    PGresult *res = pg_exec(db,
                            "UPDATE " STATE_TABLE " r SET request = NULL FROM (SELECT request AS asked FROM "
                            STATE_TABLE " WHERE id = 1 FOR UPDATE) o WHERE r.id = 1 AND o.asked IS NOT NULL "
                            "RETURNING o.asked",
                            0, NULL, err, sizeof err);
    if (res == NULL)
        return;
    char req[16] = "";
    if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
        snprintf(req, sizeof req, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    if (!*req)
        return;
    char v[13];
    short_version(ro->to_version, v);
    if (strcmp(req, "resume") == 0 && (phase_is(ro, "halted") || phase_is(ro, "aborted")) && ro->from) {
        snprintf(ro->phase, sizeof ro->phase, "progressing");
        free(ro->halt_reason);
        ro->halt_reason = NULL;
        reach_wave(ro, c, enqueue);
        char *msg = xasprintf("rules %s: rollout resumed by a person at wave %d of %zu", v, ro->wave + 1, ro->nwaves);
        ro->report(ro->ud, "RolloutResumed", NULL, msg, 0);
        free(msg);
    } else if (strcmp(req, "abort") == 0 && !phase_is(ro, "complete") && ro->from) {
        for (int i = 0; i < ro->reached; i++)
            if (*ro->members[i].account_id && strmap_get(enqueue, ro->members[i].account_id) == NULL)
                strmap_put(enqueue, ro->members[i].account_id, (void *)1);
        ro->reached = 0;
        snprintf(ro->phase, sizeof ro->phase, "aborted");
        char *msg = xasprintf("rules %s: rollout aborted by a person; every changed worker goes back to the "
                              "previous rules until newer rules arrive", v);
        ro->report(ro->ud, "RolloutAborted", NULL, msg, 1);
        free(msg);
    } else {
        log_info("rollout: request ignored in this phase", "request", req, "phase", ro->phase, NULL);
    }
    ro->dirty = 1;
}

int rollout_tick(rollout *ro, pg_conn *db, rules *current, cache *c, strmap *enqueue)
{
    if (rules_host(current) == NULL)
        return 0;
    int fresh = !ro->loaded; /* the passes waited for this read (rollout_ready) */
    if (fresh && load(ro, db) < 0)
        return 0;
    if (!ro->has_row || strcmp(ro->to_version, rules_version(current)) != 0 ||
        strcmp(ro->to_image, ro->cfg->worker_image) != 0) {
        if (start(ro, db, current, c, enqueue) < 0)
            ro->loaded = 0; /* read it again before the next try */
        return rollout_ready(ro, current);
    }
    if (ro->to_rules.len == 0 && snapshot_current(current, ro->cfg, &ro->to_rules) == 0)
        ro->dirty = 1;
    uint64_t now = util_now_ms();
    if (!phase_is(ro, "complete") && now >= ro->last_read_ms + REREAD_MS) {
        ro->last_read_ms = now;
        take_request(ro, db, c, enqueue);
    }
    if (phase_is(ro, "progressing") && ro->from)
        judge(ro, c, enqueue);
    else if (phase_is(ro, "progressing")) /* the previous rules are lost: nothing to hold anyone on */
        complete(ro, "previous rules unavailable; the rest applied at once");
    if (ro->dirty)
        persist(ro, db);
    publish_metrics(ro);
    return fresh;
}

/* ---- planning the workers not reached -------------------------------------- */

void rollout_filter(rollout *ro, pg_conn *db, strmap *observed, plan_result *plan)
{
    if (!ro->loaded || ro->from == NULL || phase_is(ro, "complete"))
        return;
    int creates_too = !phase_is(ro, "progressing");
    strmap reached = STRMAP_BORROWED;
    for (int i = 0; i < ro->reached && (size_t)i < ro->nmembers; i++)
        strmap_put(&reached, ro->members[i].name, (void *)1);
    strmap ids = STRMAP_INIT;
    plan_result dropped = {0};
    size_t keep = 0;
    for (size_t i = 0; i < plan->n; i++) {
        action *a = &plan->actions[i];
        const member *m = a->name ? strmap_get(&ro->by_name, a->name) : NULL;
        int held_back = a->account_id && a->name &&
                        ((a->kind == ACT_UPDATE && m && !strmap_get(&reached, a->name)) ||
                         (a->kind == ACT_CREATE && creates_too));
        if (held_back) {
            /* A member a superseded rollout had already moved is left as it
             * is until its wave: the previous rules would move it back. */
            if (a->kind == ACT_CREATE || m->on_from || m->admit_hash)
                strmap_put(&ids, a->account_id, (void *)1);
            dropped.actions = xrealloc(dropped.actions, (dropped.n + 1) * sizeof *dropped.actions);
            dropped.actions[dropped.n++] = *a;
        } else {
            plan->actions[keep++] = *a;
        }
    }
    plan->n = keep;
    rec_plan_free(&dropped);
    /* Members reached once and not any more (a rolled-back wave, an abort)
     * that still carry what the new rules rendered: the new rules see
     * nothing to do for them, the previous rules put them back. */
    for (size_t i = (size_t)ro->reached; i < ro->nmembers; i++) {
        const member *m = &ro->members[i];
        const obs_deploy *d = m->admit_hash ? strmap_get(observed, m->name) : NULL;
        if (d && *m->account_id && d->applied_hash && strcmp(d->applied_hash, m->admit_hash) != 0)
            strmap_put(&ids, m->account_id, (void *)1);
    }
    strmap_free(&reached);
    if (ids.len == 0) {
        strmap_free(&ids);
        return;
    }
    /* Plan those accounts with the previous rules and image. */
    const char **list = xcalloc(ids.len + 1, sizeof *list);
    size_t n = 0, it = 0;
    const char *k;
    while (strmap_next(&ids, &it, &k, NULL))
        list[n++] = k;
    char err[1024];
    char *sql = rec_accounts_sql(ro->cfg, 1), *arr = rec_text_array(list, n);
    const char *params[] = {arr};
    PGresult *res = pg_exec(db, sql, 1, params, err, sizeof err);
    free(sql);
    free(arr);
    free(list);
    strmap subset = STRMAP_BORROWED;
    plan_result old = {0};
    if (res == NULL) {
        log_warn("rollout: cannot read the accounts to plan with the previous rules; later", "error", err, NULL);
        goto out;
    }
    it = 0;
    void *v;
    while (strmap_next(observed, &it, NULL, &v)) {
        obs_deploy *d = v;
        if (d->account_id && strmap_get(&ids, d->account_id))
            strmap_put(&subset, d->name, d);
    }
    if (plan_accounts(ro->from, &ro->from_cfg, res, &subset, &old, err, sizeof err) < 0) {
        log_warn("rollout: planning with the previous rules failed; nothing sent for those workers", "error", err,
                 NULL);
        goto out;
    }
    for (size_t i = 0; i < old.n; i++) {
        action *a = &old.actions[i];
        if (a->kind != ACT_UPDATE && a->kind != ACT_CREATE && a->kind != ACT_ERROR)
            continue;
        if (a->account_id == NULL || strmap_get(&ids, a->account_id) == NULL)
            continue;
        if (a->kind == ACT_CREATE && a->name && strmap_get(&ro->by_name, a->name) == NULL) {
            /* Born on the previous rules: the rollout reaches it too. */
            member_add(ro, a->name, a->account_id, NULL, 1);
            ro->dirty = 1;
        }
        plan->actions = xrealloc(plan->actions, (plan->n + 1) * sizeof *plan->actions);
        plan->actions[plan->n++] = *a;
        memset(a, 0, sizeof *a); /* moved */
    }
out:
    if (res)
        PQclear(res);
    rec_plan_free(&old);
    strmap_free(&subset);
    strmap_free(&ids);
}

void rollout_plan_filter(const config *cfg, pg_conn *db, rules *current, strmap *observed, plan_result *plan)
{
    rollout *ro = rollout_new(cfg, NULL, NULL);
    if (load(ro, db) == 0 && rollout_ready(ro, current))
        rollout_filter(ro, db, observed, plan);
    rollout_free(ro);
}

void rollout_print_summary(const config *cfg, pg_conn *db, FILE *f)
{
    rollout *ro = rollout_new(cfg, NULL, NULL);
    if (load(ro, db) == 0 && ro->has_row) {
        if (phase_is(ro, "complete"))
            fprintf(f, "rollout: complete (rules %.12s)\n", ro->to_version);
        else
            fprintf(f, "rollout: %s, wave %d of %zu, %d of %zu changed workers on rules %.12s%s%s "
                       "(sync-airbnb-operator rollout status)\n",
                    ro->phase, ro->wave + 1, ro->nwaves, ro->reached, ro->nmembers, ro->to_version,
                    ro->halt_reason ? ": " : "", ro->halt_reason ? ro->halt_reason : "");
    }
    rollout_free(ro);
}

/* ---- reporting --------------------------------------------------------------- */

void rollout_json(const rollout *ro, json_out *o)
{
    jo_object(o);
    jo_kstr(o, "phase", ro->loaded ? ro->phase : NULL);
    jo_kstr(o, "to_version", ro->loaded ? ro->to_version : NULL);
    jo_kint(o, "workers", (long long)ro->nmembers);
    jo_kint(o, "reached", ro->reached);
    jo_kint(o, "wave", ro->nwaves ? ro->wave + 1 : 0);
    jo_kint(o, "waves", (long long)ro->nwaves);
    jo_kbool(o, "halted", ro->loaded && phase_is(ro, "halted"));
    jo_end(o);
}
