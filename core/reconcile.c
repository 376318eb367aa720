/* reconcile: see reconcile.h. */
#include "reconcile.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "cache.h"
#include "cli.h"
#include "json.h"
#include "log.h"
#include "pg.h"
#include "scrub.h"
#include "util.h"

#define BOOLOID 16
/* Shorter values (a version like "1.0") would match innocent text such as
 * the container name; credentials that short are not worth hiding anyway. */
#define MIN_SECRET_LEN SCRUB_MIN_LEN

static const char *const account_columns[] = {"account_id", "customer_id", "airbnb_cookie",
                                              "x_client_version", "user_agent", "is_active",
                                              "last_sync_at", "updated_at", "deleted_at"};
#define NCOLUMNS (sizeof account_columns / sizeof account_columns[0])
static const char *const credential_columns[] = {"airbnb_cookie", "x_client_version", "user_agent"};

/* credentials_generation: credential changes made by anyone but the worker
 * (migration 005_credentials_generation), read in the same statement as the
 * row so the two are one snapshot. */
char *rec_accounts_sql(const config *cfg, int partial)
{
    char *s = pg_quote_ident(cfg->accounts_schema), *t = pg_quote_ident(cfg->accounts_relname);
    char *sql = xasprintf(
        "SELECT a.account_id::text AS account_id, a.customer_id::text AS customer_id, a.airbnb_cookie, "
        "a.x_client_version, a.user_agent, a.is_active, a.last_sync_at::text AS last_sync_at, "
        "a.updated_at::text AS updated_at, a.deleted_at::text AS deleted_at, "
        "coalesce(g.generation, 0)::text AS credentials_generation FROM %s.%s a "
        "LEFT JOIN sync_airbnb_operator.credentials_generation g "
        "ON g.account_key = sha256(convert_to(a.account_id::text, 'UTF8'))%s",
        s, t, partial ? " WHERE a.account_id::text = ANY($1::text[])" : "");
    free(s);
    free(t);
    return sql;
}

char *rec_active_count_sql(const config *cfg)
{
    char *s = pg_quote_ident(cfg->accounts_schema), *t = pg_quote_ident(cfg->accounts_relname);
    char *sql = xasprintf("SELECT count(*) FROM %s.%s WHERE is_active AND deleted_at IS NULL", s, t);
    free(s);
    free(t);
    return sql;
}

char *rec_text_array(const char *const *ids, size_t n)
{
    buf b = {0};
    buf_putc(&b, '{');
    for (size_t i = 0; i < n; i++) {
        if (i)
            buf_putc(&b, ',');
        buf_putc(&b, '"');
        for (const char *p = ids[i]; *p; p++) {
            if (*p == '"' || *p == '\\')
                buf_putc(&b, '\\');
            buf_putc(&b, *p);
        }
        buf_putc(&b, '"');
    }
    buf_putc(&b, '}');
    return buf_steal(&b);
}

const char *rec_action_name(act_kind k)
{
    static const char *const names[] = {"create", "update", "delete", "hold", "error"};
    return names[k];
}

static void action_free(action *a)
{
    free(a->account_id);
    free(a->name);
    free(a->reason);
    free(a->body);
    free(a->desired_hash);
    free(a->uid);
}

void rec_plan_free(plan_result *p)
{
    for (size_t i = 0; i < p->n; i++)
        action_free(&p->actions[i]);
    free(p->actions);
    free(p->hold_reason);
    free(p->deferred_ids);
    memset(p, 0, sizeof *p);
}

static action *push_action(plan_result *p, act_kind kind, const char *account_id, const char *name,
                           const char *reason)
{
    p->actions = xrealloc(p->actions, (p->n + 1) * sizeof *p->actions);
    action *a = &p->actions[p->n++];
    memset(a, 0, sizeof *a);
    a->kind = kind;
    a->account_id = account_id ? xstrdup(account_id) : NULL;
    a->name = name ? xstrdup(name) : NULL;
    a->reason = xstrdup(reason ? reason : "");
    return a;
}

/* ---- credential scrubbing ------------------------------------------------ */

typedef struct row_index {
    const plan_input *in;
    int col[NCOLUMNS];
    strmap by_id;        /* account_id → row + 1 (as a pointer-sized int) */
    unsigned char *skip; /* per row: settled, not handed to the rules */
    unsigned char (*keys)[16]; /* per row: settle digest (NULL without in->settled) */
    unsigned char *has_key;    /* per row: keys[i] is set */
    unsigned char *deferred; /* per row: left for a later pass (skip is set too) */
    unsigned char *in_sync;  /* per row: has a Deployment carrying an applied hash and not
                              * drifted: planning it most likely only settles it */
    struct secret_set *secrets; /* credential values of the rows handed to the rules */
} row_index;

static void index_rows(row_index *ri, const plan_input *in)
{
    memset(ri, 0, sizeof *ri);
    ri->by_id.borrowed_keys = 1; /* the PGresult's values */
    ri->in = in;
    for (size_t c = 0; c < NCOLUMNS; c++)
        ri->col[c] = PQfnumber(in->accounts, account_columns[c]);
    int n = PQntuples(in->accounts);
    for (int i = 0; i < n; i++)
        if (ri->col[0] >= 0 && !PQgetisnull(in->accounts, i, ri->col[0]))
            strmap_put(&ri->by_id, PQgetvalue(in->accounts, i, ri->col[0]), (void *)(intptr_t)(i + 1));
}

/* The credential values of the accounts handed to the rules in this call.
 * Rendered objects and reasons are searched for every one of them (a rule
 * may copy any account's value anywhere), with scrub.h's scanner (a rolling
 * hash per distinct value length: linear in the text, whatever the number of
 * accounts). */
struct secret_set {
    scrub_set *values;
};
typedef struct secret_set secret_set;

static void secrets_build(secret_set *ss, const row_index *ri)
{
    ss->values = scrub_set_new();
    PGresult *res = ri->in->accounts;
    int n = PQntuples(res);
    for (size_t k = 0; k < 3; k++) {
        int col = PQfnumber(res, credential_columns[k]);
        for (int i = 0; col >= 0 && i < n; i++) {
            if ((ri->skip && ri->skip[i]) || PQgetisnull(res, i, col))
                continue;
            const char *v = PQgetvalue(res, i, col);
            size_t len = (size_t)PQgetlength(res, i, col);
            /* Every credential handed to the rules is known to the scrubber
             * for good: a rule may keep one and print it in a later call. */
            if (scrub_set_add(ss->values, v, len, MIN_SECRET_LEN))
                scrub_add(v, len, MIN_SECRET_LEN);
        }
    }
}

static void secrets_free(secret_set *ss)
{
    scrub_set_free(ss->values);
}

/* First credential value in text[0..n): its offset in *pos and length in *mlen. */
static int secrets_findn(const secret_set *ss, const char *text, size_t n, size_t *pos, size_t *mlen)
{
    return scrub_set_find(ss->values, text, n, pos, mlen);
}

static int secrets_find(const secret_set *ss, const char *text, size_t *pos, size_t *mlen)
{
    return secrets_findn(ss, text, strlen(text), pos, mlen);
}

/* Replaces every credential value found in *s. */
static void scrub(const secret_set *ss, char **s)
{
    size_t pos, len;
    while (*s && secrets_find(ss, *s, &pos, &len)) {
        char *fixed = xasprintf("%.*s[REDACTED]%s", (int)pos, *s, *s + pos + len);
        free(*s);
        *s = fixed;
    }
}

static int string_leaks(const char *s, size_t len, void *ud)
{
    size_t pos, mlen;
    return secrets_findn(ud, s, len, &pos, &mlen);
}

/* Searches the decoded strings (keys and values) of the final object: a
 * value JSON-escapes differently in the body than in the row. */
static int body_leaks(const secret_set *ss, const json_value *doc)
{
    return json_walk_strings(doc, string_leaks, (void *)ss);
}

/* ---- Lua inputs ---------------------------------------------------------- */

void rec_push_account(lua_State *L, const PGresult *res, int row)
{
    lua_createtable(L, 0, (int)NCOLUMNS);
    int nf = PQnfields(res);
    for (int c = 0; c < nf; c++) {
        if (PQgetisnull(res, row, c))
            continue;
        const char *v = PQgetvalue(res, row, c);
        if (PQftype(res, c) == BOOLOID)
            lua_pushboolean(L, v[0] == 't');
        else
            lua_pushstring(L, v);
        lua_setfield(L, -2, PQfname(res, c));
    }
}

void rec_push_observed(lua_State *L, const obs_deploy *d)
{
    lua_createtable(L, 0, 8);
    lua_pushstring(L, d->name);
    lua_setfield(L, -2, "name");
    if (d->account_id) {
        lua_pushstring(L, d->account_id);
        lua_setfield(L, -2, "account_id");
    }
    if (d->applied_hash) {
        lua_pushstring(L, d->applied_hash);
        lua_setfield(L, -2, "applied_hash");
    }
    if (d->fingerprint) {
        lua_pushstring(L, d->fingerprint);
        lua_setfield(L, -2, "fingerprint");
    }
    lua_createtable(L, 0, d->nann);
    for (int i = 0; i < d->nann; i++) {
        lua_pushstring(L, d->ann_values[i]);
        lua_setfield(L, -2, d->ann_keys[i]);
    }
    lua_setfield(L, -2, "annotations");
    lua_pushinteger(L, d->generation);
    lua_setfield(L, -2, "generation");
    lua_pushboolean(L, d->applied_generation > 0 && d->generation > d->applied_generation);
    lua_setfield(L, -2, "drifted");
    lua_pushinteger(L, d->replicas);
    lua_setfield(L, -2, "replicas");
    lua_pushinteger(L, d->ready_replicas);
    lua_setfield(L, -2, "ready_replicas");
}

/* Pushes observed filtered to one account id (NULL: all). */
static void push_observed(lua_State *L, strmap *observed, const char *only_account, int orphans_only,
                          const row_index *ri)
{
    lua_newtable(L);
    size_t it = 0;
    void *v;
    while (strmap_next(observed, &it, NULL, &v)) {
        const obs_deploy *d = v;
        if (!d->managed)
            continue;
        if (only_account && (d->account_id == NULL || strcmp(d->account_id, only_account) != 0))
            continue;
        if (orphans_only && d->account_id && strmap_get(&ri->by_id, d->account_id))
            continue;
        if (ri->skip && d->account_id) {
            intptr_t row = (intptr_t)strmap_get(&ri->by_id, d->account_id);
            if (row > 0 && ri->skip[row - 1])
                continue;
        }
        rec_push_observed(L, d);
        lua_setfield(L, -2, d->name);
    }
}

/* ---- reading the actions ------------------------------------------------- */

/* The actions passed luahost_call_rule's check (plain data): raw reads. */
static int raw_field(lua_State *L, int idx, const char *key)
{
    idx = lua_absindex(L, idx);
    lua_pushstring(L, key);
    return lua_rawget(L, idx);
}

static const char *field_string(lua_State *L, int idx, const char *key, char *tmp, size_t tmplen)
{
    raw_field(L, idx, key);
    const char *s = NULL;
    if (lua_type(L, -1) == LUA_TSTRING) {
        snprintf(tmp, tmplen, "%s", lua_tostring(L, -1));
        s = tmp;
    }
    lua_pop(L, 1);
    return s;
}

/* A string field of any length (account ids are arbitrary strings), copied:
 * the caller frees it. NULL when the field is not a string. */
static char *field_dup(lua_State *L, int idx, const char *key)
{
    raw_field(L, idx, key);
    char *s = lua_type(L, -1) == LUA_TSTRING ? xstrdup(lua_tostring(L, -1)) : NULL;
    lua_pop(L, 1);
    return s;
}

static int valid_dns_label(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 63)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        if (!alnum && !(c == '-' && i > 0 && i < n - 1))
            return 0;
    }
    return 1;
}

/* ---- the final object -------------------------------------------------------- */

#define MAX_BODY (512u * 1024u) /* a rendered Deployment; etcd's limit is 1.5 MiB */

typedef struct member {
    const char *key;
    const json_value *value; /* NULL: text instead */
    const char *text;        /* JSON text of an override */
} member;

static int member_cmp(const void *a, const void *b)
{
    return strcmp(((const member *)a)->key, ((const member *)b)->key);
}

/* Writes obj (an object, or NULL for {}) with the members named in keys
 * replaced by (or added as) the JSON texts in texts, keys sorted as the
 * canonical encoder sorts them. */
static void write_merged(buf *b, const json_value *obj, size_t nover, const char *const *keys,
                         const char *const *texts)
{
    size_t n = json_len(obj), m = 0;
    member *all = xcalloc(n + nover + 1, sizeof *all);
    for (size_t i = 0; i < n; i++) {
        const char *k = json_key_at(obj, i);
        size_t j = 0;
        while (j < nover && strcmp(keys[j], k) != 0)
            j++;
        if (j == nover)
            all[m++] = (member){k, json_at(obj, i), NULL};
    }
    for (size_t j = 0; j < nover; j++)
        all[m++] = (member){keys[j], NULL, texts[j]};
    qsort(all, m, sizeof *all, member_cmp);
    buf_putc(b, '{');
    for (size_t i = 0; i < m; i++) {
        if (i)
            buf_putc(b, ',');
        buf_json_string(b, all[i].key, strlen(all[i].key));
        buf_putc(b, ':');
        if (all[i].value)
            json_write(b, all[i].value);
        else
            buf_puts(b, all[i].text);
    }
    buf_putc(b, '}');
    free(all);
}

static char *json_text(const char *s)
{
    buf b = {0};
    buf_json_string(&b, s, strlen(s));
    return buf_steal(&b);
}

/* The object as it is sent: the rules' encoding (body, from the protected
 * call), parsed in C, with the fields we own set on the parsed document
 * (namespace, managed-by label, applied-hash annotation) and then checked on
 * the final text: name, those fields, the Deployment checks check-rules
 * makes (cli_validate_deployment) and no credential in any decoded string.
 * Lua is out of the way: no metatable can hide or veto a field here.
 * Returns the final JSON (malloc'd) or NULL with err. */
static char *final_object(const char *body, size_t len, const config *cfg, const char *name,
                          const char *desired_hash, const secret_set *secrets, char *err, size_t errlen)
{
    char perr[160];
    char *out = NULL, *ns = NULL, *labels_txt = NULL, *ann_txt = NULL, *hash_txt = NULL, *mv = NULL;
    json_value *doc = NULL, *fin = NULL;
    buf lb = {0}, ab = {0}, mb = {0}, ob = {0};
    if (len > MAX_BODY) {
        util_seterr(err, errlen, "the rendered Deployment is %zu bytes (at most %u)", len, MAX_BODY);
        goto out;
    }
    doc = json_parse(body, len, perr, sizeof perr);
    const json_value *meta = json_get(doc, "metadata");
    if (json_typeof(doc) != JSON_OBJECT || json_typeof(meta) != JSON_OBJECT) {
        util_seterr(err, errlen, "the rendered Deployment has no metadata object");
        goto out;
    }
    const json_value *labels = json_get(meta, "labels"), *ann = json_get(meta, "annotations");
    if ((labels && json_typeof(labels) != JSON_OBJECT) || (ann && json_typeof(ann) != JSON_OBJECT)) {
        util_seterr(err, errlen, "the rendered Deployment's metadata.labels/annotations must be objects");
        goto out;
    }
    mv = json_text(MANAGED_BY_VALUE);
    hash_txt = json_text(desired_hash);
    const char *lk[] = {MANAGED_BY_LABEL}, *lv[] = {mv};
    write_merged(&lb, labels, 1, lk, lv);
    const char *ak[] = {APPLIED_HASH_ANNOTATION}, *av[] = {hash_txt};
    write_merged(&ab, ann, 1, ak, av);
    ns = json_text(cfg->namespace);
    labels_txt = buf_steal(&lb);
    ann_txt = buf_steal(&ab);
    const char *mk[] = {"annotations", "labels", "namespace"}, *mt[] = {ann_txt, labels_txt, ns};
    write_merged(&mb, meta, 3, mk, mt);
    const char *ok[] = {"metadata"};
    char *meta_txt = buf_steal(&mb);
    const char *ot[] = {meta_txt};
    write_merged(&ob, doc, 1, ok, ot);
    free(meta_txt);

    /* Checked on what is sent. */
    fin = json_parse(ob.data, ob.len, perr, sizeof perr);
    const json_value *fname = json_path(fin, "metadata", "name", NULL);
    const char *fns = json_string(json_path(fin, "metadata", "namespace", NULL));
    const char *fmb = json_string(json_path(fin, "metadata", "labels", MANAGED_BY_LABEL, NULL));
    const char *fh = json_string(json_path(fin, "metadata", "annotations", APPLIED_HASH_ANNOTATION, NULL));
    if (json_typeof(fname) != JSON_STRING || json_string_len(fname) != strlen(name) ||
        strcmp(json_string(fname), name) != 0) {
        util_seterr(err, errlen, "the rendered Deployment's metadata.name differs from the action's name");
        goto out;
    }
    if (!fns || strcmp(fns, cfg->namespace) || !fmb || strcmp(fmb, MANAGED_BY_VALUE) || !fh ||
        strcmp(fh, desired_hash)) {
        util_seterr(err, errlen, "the final Deployment lacks the namespace, managed-by label or applied hash");
        goto out;
    }
    if (cli_validate_deployment(fin, err, errlen) < 0)
        goto out;
    if (secrets && body_leaks(secrets, fin)) {
        util_seterr(err, errlen, "refusing to apply: the rendered Deployment contains a credential value");
        goto out;
    }
    out = buf_steal(&ob);
out:
    buf_free(&ob);
    json_free(doc);
    json_free(fin);
    free(ns);
    free(labels_txt);
    free(ann_txt);
    free(hash_txt);
    free(mv);
    return out;
}

/* The account id an action may carry into a report: the input row's own
 * value, or the observed Deployment's annotation for a Deployment the rules
 * were shown; never a string only the rules made up. */
static const char *input_id(const row_index *ri, const obs_deploy *obs, const char *id)
{
    if (id == NULL)
        return obs ? obs->account_id : NULL;
    intptr_t row = (intptr_t)strmap_get(&ri->by_id, id);
    if (row > 0)
        return PQgetvalue(ri->in->accounts, (int)row - 1, ri->col[0]);
    if (obs && obs->account_id && strcmp(obs->account_id, id) == 0)
        return obs->account_id;
    return NULL;
}

/* An action the core refused (not an error the rules reported). */
static void refuse(plan_result *out, const char *id, const char *name, const char *reason)
{
    push_action(out, ACT_ERROR, id, name, reason);
    out->refused++;
}

/* A name the rules gave a hold or an error: kept only when it is a valid
 * Deployment name with no credential in it (it becomes an Event's object). */
static const char *report_name(const secret_set *ss, const char *name)
{
    size_t pos, len;
    if (name == NULL || !valid_dns_label(name) || (ss && secrets_find(ss, name, &pos, &len)))
        return NULL;
    return name;
}

/* Reads the actions array at the top of the stack into out (pops it). The
 * array came out of luahost_call_rule, so it is plain data: raw reads only.
 * The JSON encoding of an object runs in its own protected, budgeted call;
 * what is sent is final_object()'s. */
static void read_actions(lua_State *L, const config *cfg, const plan_input *in, const row_index *ri,
                         plan_result *out)
{
    int arr = lua_gettop(L);
    if (!lua_istable(L, arr)) {
        refuse(out, NULL, NULL, "rules: plan() did not return a table of actions");
        lua_pop(L, 1);
        return;
    }
    lua_Integer n = (lua_Integer)lua_rawlen(L, arr);
    char *rid = NULL; /* the rules' account id, freed at the next action and after the loop */
    size_t body_bytes = 0;
    for (lua_Integer i = 1; i <= n; i++) {
        char kbuf[32], nbuf[256], rbuf[512], hbuf[128], err[512];
        free(rid);
        rid = NULL;
        if (lua_rawgeti(L, arr, i) != LUA_TTABLE) {
            lua_pop(L, 1);
            refuse(out, NULL, NULL, "rules: an action is not a table");
            continue;
        }
        int t = lua_gettop(L);
        const char *kind = field_string(L, t, "action", kbuf, sizeof kbuf);
        rid = field_dup(L, t, "account_id");
        const char *name = field_string(L, t, "name", nbuf, sizeof nbuf);
        const char *reason = field_string(L, t, "reason", rbuf, sizeof rbuf);
        const char *hash = field_string(L, t, "desired_hash", hbuf, sizeof hbuf);
        obs_deploy *obs = name ? strmap_get(in->observed, name) : NULL;
        if (obs && !obs->managed)
            obs = NULL;
        const char *id = input_id(ri, obs, rid);
        const char *rname = report_name(ri->secrets, name);
        act_kind k;
        if (kind == NULL) {
            refuse(out, id, rname, "rules: an action has no 'action' field");
            lua_pop(L, 1);
            continue;
        } else if (!strcmp(kind, "create")) {
            k = ACT_CREATE;
        } else if (!strcmp(kind, "update")) {
            k = ACT_UPDATE;
        } else if (!strcmp(kind, "delete")) {
            k = ACT_DELETE;
        } else if (!strcmp(kind, "error")) {
            k = ACT_ERROR;
        } else if (!strcmp(kind, "hold") || !strcmp(kind, "noop") || !strcmp(kind, "none")) {
            k = ACT_HOLD;
        } else {
            refuse(out, id, rname, "rules: unknown action");
            lua_pop(L, 1);
            continue;
        }
        if (k == ACT_HOLD && (!strcmp(kind, "noop") || !strcmp(kind, "none"))) {
            lua_pop(L, 1);
            continue;
        }
        if (k != ACT_ERROR && k != ACT_HOLD && (name == NULL || !valid_dns_label(name))) {
            snprintf(err, sizeof err, "rules: invalid Deployment name \"%.80s\" (a DNS-1123 label of at most 63 characters)",
                     name ? name : "");
            refuse(out, id, NULL, err);
            lua_pop(L, 1);
            continue;
        }
        if ((k == ACT_CREATE || k == ACT_UPDATE) && (rid == NULL || id == NULL)) {
            refuse(out, NULL, rname,
                        "rules: a create/update names no account id of the input rows");
            lua_pop(L, 1);
            continue;
        }
        if (obs && k != ACT_DELETE && id && obs->account_id && strcmp(obs->account_id, id) != 0) {
            snprintf(err, sizeof err, "refusing to %s %s: it belongs to another account (name collision)",
                     k == ACT_CREATE ? "create" : "update", name);
            push_action(out, ACT_ERROR, id, name, err);
            lua_pop(L, 1);
            continue;
        }
        if (k == ACT_CREATE && obs)
            k = ACT_UPDATE; /* it exists and is ours: apply instead */
        if ((k == ACT_UPDATE || k == ACT_DELETE) && obs == NULL) {
            snprintf(err, sizeof err, "refusing to %s %s: not a Deployment managed by this operator",
                     k == ACT_UPDATE ? "update" : "delete", name);
            push_action(out, ACT_ERROR, id, name, err);
            lua_pop(L, 1);
            continue;
        }
        if (k == ACT_DELETE) {
            action *a = push_action(out, ACT_DELETE, id ? id : obs->account_id, name,
                                    reason ? reason : "account not active");
            a->uid = obs->uid ? xstrdup(obs->uid) : NULL;
            lua_pop(L, 1);
            continue;
        }
        if (k == ACT_ERROR || k == ACT_HOLD) {
            push_action(out, k, id, rname, reason ? reason : "rules reported an error");
            lua_pop(L, 1);
            continue;
        }
        /* create / update: encode the object in a protected, budgeted call */
        if (raw_field(L, t, "object") != LUA_TTABLE) {
            lua_pop(L, 2);
            refuse(out, id, name, "rules: a create/update action has no object table");
            continue;
        }
        lua_pushcfunction(L, json_lua_encode);
        lua_insert(L, -2);
        if (luahost_pcall(L, 1, 1, cfg->rules_budget_ms, err, sizeof err) < 0) {
            lua_pop(L, 1);
            refuse(out, id, name, err);
            continue;
        }
        size_t len;
        const char *encoded = lua_tolstring(L, -1, &len);
        char computed[65];
        if (hash == NULL) { /* no desired_hash from the rules: hash the object as rendered */
            util_sha256_hex(encoded, len, computed);
            hash = computed;
        }
        char *body = NULL;
        if (body_bytes + len > LUAHOST_DEFAULT_MEM_LIMIT / 2)
            /* What C keeps for the rules counts too: one plan's bodies stay
             * below half a Lua state's cap. */
            util_seterr(err, sizeof err, "rules: this plan's rendered objects exceed %u bytes in all; "
                        "the rest wait for a later pass", LUAHOST_DEFAULT_MEM_LIMIT / 2);
        else
            body = final_object(encoded, len, cfg, name, hash, ri->secrets, err, sizeof err);
        lua_pop(L, 2); /* the encoding, the action */
        if (body == NULL) {
            refuse(out, id, name, err);
            continue;
        }
        body_bytes += strlen(body);
        action *a = push_action(out, k, id, name, reason ? reason : (k == ACT_CREATE ? "account active" : "spec changed"));
        a->body = body;
        a->desired_hash = xstrdup(hash);
    }
    free(rid);
    lua_pop(L, 1);
}

/* Calls rules.plan(accounts, observed, ctx) with the given subset. row < 0:
 * all rows and all observed; else only that row and its Deployments; row ==
 * nrows: no rows, only the orphaned Deployments. Leaves the actions table on
 * the stack and returns 0, or -1 with err (stack unchanged). */
static int call_plan(rules *r, luahost *h, const config *cfg, const plan_input *in, const row_index *ri,
                     int row, char *err, size_t errlen)
{
    lua_State *L = luahost_state(h);
    int nrows = PQntuples(in->accounts);
    luahost_push_entry_field(h, "plan");
    if (row < 0) {
        int handed = nrows;
        for (int i = 0; ri->skip && i < nrows; i++)
            handed -= ri->skip[i];
        lua_createtable(L, handed, 0);
        int n = 0;
        for (int i = 0; i < nrows; i++) {
            if (ri->skip && ri->skip[i])
                continue;
            rec_push_account(L, in->accounts, i);
            lua_rawseti(L, -2, ++n);
        }
        push_observed(L, in->observed, NULL, 0, ri);
    } else if (row < nrows) {
        lua_createtable(L, 1, 0);
        rec_push_account(L, in->accounts, row);
        lua_rawseti(L, -2, 1);
        const char *id = ri->col[0] >= 0 ? PQgetvalue(in->accounts, row, ri->col[0]) : "";
        push_observed(L, in->observed, id, 0, ri);
    } else {
        lua_newtable(L);
        push_observed(L, in->observed, NULL, 1, ri);
    }
    rules_push_ctx(r, L);
    /* The budget stops runaway rules; it grows with the work handed over. */
    int budget = cfg->rules_budget_ms + (row < 0 ? nrows : 1);
    return luahost_call_rule(L, "plan", 3, budget, err, errlen);
}

static int is_active_row(const plan_input *in, const row_index *ri, int i)
{
    int a = ri->col[5], d = ri->col[8];
    if (a < 0 || PQgetisnull(in->accounts, i, a))
        return 0;
    if (PQftype(in->accounts, a) != BOOLOID || PQgetvalue(in->accounts, i, a)[0] != 't')
        return 0;
    return d < 0 || PQgetisnull(in->accounts, i, d);
}

/* ---- settled accounts ------------------------------------------------------ */

static const unsigned char no_digest[16]; /* all-zero: an empty slot, never a digest */

static size_t settled_slot(const rec_settled *s, const unsigned char d[16], int *found)
{
    uint64_t h;
    memcpy(&h, d, sizeof h);
    size_t mask = s->cap - 1, i = (size_t)h & mask;
    for (;;) {
        if (memcmp(s->slots[i], d, 16) == 0) {
            *found = 1;
            return i;
        }
        if (memcmp(s->slots[i], no_digest, 16) == 0) {
            *found = 0;
            return i;
        }
        i = (i + 1) & mask;
    }
}

static int settled_has(const rec_settled *s, const unsigned char d[16])
{
    int found = 0;
    if (s->cap)
        settled_slot(s, d, &found);
    return found;
}

static void settled_add(rec_settled *s, const unsigned char d[16])
{
    if ((s->len + 1) * 4 > s->cap * 3) { /* load <= 3/4: the digests are uniform */
        rec_settled bigger = {xcalloc(s->cap ? s->cap * 2 : 64, 16), s->cap ? s->cap * 2 : 64, 0};
        for (size_t i = 0; i < s->cap; i++) {
            if (memcmp(s->slots[i], no_digest, 16) != 0)
                settled_add(&bigger, s->slots[i]);
        }
        free(s->slots);
        *s = bigger;
    }
    int found;
    size_t i = settled_slot(s, d, &found);
    if (!found) {
        memcpy(s->slots[i], d, 16);
        s->len++;
    }
}

void rec_settled_free(rec_settled *settled)
{
    free(settled->slots);
    memset(settled, 0, sizeof *settled);
}

/* The settle digest of row i: everything the rules see of this account.
 * Returns 0, or -1 when the account is never settled (several Deployments). */
static int settle_key(rules *r, const config *cfg, const plan_input *in, int i, strmap *deploy_by_account,
                      unsigned char out[16])
{
    buf b = {0};
    buf_puts(&b, rules_version(r));
    buf_putc(&b, '\0');
    buf_puts(&b, cfg->worker_image);
    buf_putc(&b, '\0');
    buf_puts(&b, cfg->namespace);
    buf_putc(&b, '\0');
    int nf = PQnfields(in->accounts);
    for (int c = 0; c < nf; c++) {
        if (PQgetisnull(in->accounts, i, c))
            buf_puts(&b, "\x01NULL");
        else
            buf_puts(&b, PQgetvalue(in->accounts, i, c));
        buf_putc(&b, '\0');
    }
    const char *id = PQgetvalue(in->accounts, i, 0);
    const obs_deploy *d = strmap_get(deploy_by_account, id);
    if (d == (const obs_deploy *)deploy_by_account) { /* several Deployments: never settled */
        buf_free(&b);
        return -1;
    }
    if (d) { /* plain appends: this runs for every row of every full pass */
        const char *parts[] = {d->name, d->applied_hash ? d->applied_hash : "",
                               d->fingerprint ? d->fingerprint : ""};
        for (size_t k = 0; k < 3; k++) {
            buf_puts(&b, parts[k]);
            buf_putc(&b, '\x02');
        }
        char num[48];
        int n = snprintf(num, sizeof num, "%ld\x02%ld", d->generation, d->applied_generation);
        buf_append(&b, num, (size_t)n);
        for (int k = 0; k < d->nann; k++) {
            buf_putc(&b, '\x02');
            buf_puts(&b, d->ann_keys[k]);
            buf_putc(&b, '=');
            buf_puts(&b, d->ann_values[k]);
        }
    }
    unsigned char md[32];
    util_sha256(b.data, b.len, md);
    buf_free(&b);
    memcpy(out, md, 16);
    if (memcmp(out, no_digest, 16) == 0)
        out[15] = 1;
    return 0;
}

static void settle_prepare(rules *r, const config *cfg, const plan_input *in, row_index *ri)
{
    int nrows = PQntuples(in->accounts);
    ri->skip = xcalloc((size_t)nrows + 1, 1);
    ri->keys = xcalloc((size_t)nrows + 1, sizeof *ri->keys);
    ri->has_key = xcalloc((size_t)nrows + 1, 1);
    ri->in_sync = xcalloc((size_t)nrows + 1, 1);
    strmap by_account = STRMAP_BORROWED;
    size_t it = 0;
    void *v;
    while (strmap_next(in->observed, &it, NULL, &v)) {
        obs_deploy *d = v;
        if (!d->managed || d->account_id == NULL)
            continue;
        if (strmap_get(&by_account, d->account_id))
            strmap_put(&by_account, d->account_id, &by_account); /* marker: several */
        else
            strmap_put(&by_account, d->account_id, d);
    }
    for (int i = 0; i < nrows; i++) {
        if (ri->col[0] < 0 || PQgetisnull(in->accounts, i, ri->col[0]))
            continue;
        ri->has_key[i] = settle_key(r, cfg, in, i, &by_account, ri->keys[i]) == 0;
        const obs_deploy *d = strmap_get(&by_account, PQgetvalue(in->accounts, i, ri->col[0]));
        ri->in_sync[i] = d && d != (const obs_deploy *)&by_account && d->applied_hash &&
                         !(d->applied_generation > 0 && d->generation > d->applied_generation);
        ri->skip[i] = ri->has_key[i] && settled_has(in->settled, ri->keys[i]);
    }
    strmap_free(&by_account);
}

/* After a plan: accounts that got no action are settled at their digest. A
 * full pass rebuilds the set from the live rows (forgetting accounts that
 * are gone and digests of earlier states); a partial pass only adds. */
static void settle_commit(const plan_input *in, row_index *ri, const plan_result *out)
{
    strmap acted = STRMAP_BORROWED;
    for (size_t i = 0; i < out->n; i++)
        if (out->actions[i].account_id)
            strmap_put(&acted, out->actions[i].account_id, (void *)1);
    int nrows = PQntuples(in->accounts);
    rec_settled fresh = {0};
    rec_settled *into = in->full ? &fresh : in->settled;
    for (int i = 0; i < nrows; i++) {
        if (ri->col[0] < 0 || PQgetisnull(in->accounts, i, ri->col[0]) || !ri->has_key[i])
            continue;
        const char *id = PQgetvalue(in->accounts, i, ri->col[0]);
        int was_settled = ri->skip[i] && !(ri->deferred && ri->deferred[i]);
        int settles_now = !ri->skip[i] && !strmap_get(&acted, id);
        if (was_settled || settles_now)
            settled_add(into, ri->keys[i]);
    }
    if (in->full) {
        rec_settled_free(in->settled);
        *in->settled = fresh;
    }
    strmap_free(&acted);
}

int rec_plan(rules *r, const config *cfg, const plan_input *in, plan_result *out, char *err,
             size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (rules_host(r) == NULL) {
        util_seterr(err, errlen, "no rules loaded");
        return -1;
    }
    for (size_t c = 0; c < NCOLUMNS; c++) {
        if (PQfnumber(in->accounts, account_columns[c]) < 0) {
            util_seterr(err, errlen, "accounts query has no column %s", account_columns[c]);
            return -1;
        }
    }
    row_index ri;
    index_rows(&ri, in);
    lua_State *L = luahost_state(rules_host(r));
    int nrows = PQntuples(in->accounts);
    for (int i = 0; i < nrows; i++)
        out->desired += is_active_row(in, &ri, i);
    size_t it = 0;
    void *v;
    while (strmap_next(in->observed, &it, NULL, &v))
        out->observed += ((obs_deploy *)v)->managed;

    if (in->settled)
        settle_prepare(r, cfg, in, &ri);
    out->planned = nrows;
    for (int i = 0; ri.skip && i < nrows; i++)
        out->planned -= ri.skip[i];
    if (in->busy && in->busy->len > 0) {
        /* Accounts with a write in flight are planned when it has finished. */
        if (ri.skip == NULL)
            ri.skip = xcalloc((size_t)nrows + 1, 1);
        ri.deferred = xcalloc((size_t)nrows + 1, 1);
        for (int i = 0; i < nrows; i++) {
            if (ri.skip[i] || ri.col[0] < 0 || PQgetisnull(in->accounts, i, ri.col[0]))
                continue;
            if (strmap_get(in->busy, PQgetvalue(in->accounts, i, ri.col[0]))) {
                ri.skip[i] = ri.deferred[i] = 1;
                out->deferred++;
                out->planned--;
            }
        }
    }
    if (in->max_rows > 0 && out->planned > in->max_rows) {
        /* Defer the rest: treated like settled rows for this call (their
         * Deployments are not shown to the rules, so they are not orphans),
         * but not settled afterwards. */
        unsigned char *deferred = ri.deferred ? ri.deferred : xcalloc((size_t)nrows + 1, 1);
        if (ri.skip == NULL)
            ri.skip = xcalloc((size_t)nrows + 1, 1);
        int taken = 0, planned_in_sync = 0;
        for (int i = 0; i < nrows; i++) {
            if (ri.skip[i])
                continue;
            if (ri.in_sync && ri.in_sync[i] && planned_in_sync < 8 * in->max_rows) {
                /* Most likely only settles (no write): a wider allowance, so
                 * that the writes of a pass are not crowded out by the
                 * accounts the previous pass just created. */
                planned_in_sync++;
            } else if (taken < in->max_rows) {
                taken++;
            } else {
                ri.skip[i] = 1;
                deferred[i] = 1;
                out->deferred++;
            }
        }
        out->planned = taken + planned_in_sync;
        ri.deferred = deferred;
    }
    if (out->deferred > 0) { /* so the caller can continue with exactly these */
        buf ids = {0};
        for (int i = 0; i < nrows; i++)
            if (ri.deferred[i])
                buf_append(&ids, PQgetvalue(in->accounts, i, ri.col[0]),
                           (size_t)PQgetlength(in->accounts, i, ri.col[0]) + 1);
        out->deferred_ids = ids.data;
        out->deferred_ids_len = ids.len;
    }

    secret_set secrets;
    secrets_build(&secrets, &ri);
    ri.secrets = &secrets;

    char perr[1024];
    if (call_plan(r, rules_host(r), cfg, in, &ri, -1, perr, sizeof perr) == 0) {
        read_actions(L, cfg, in, &ri, out);
    } else {
        /* The plan as a whole failed: plan each account alone so the error
         * stays with the account that causes it. */
        char *why = xstrdup(perr); /* a rule's error can quote what it was given */
        scrub(&secrets, &why);
        log_warn("rules: plan failed; planning each account on its own", "error", why, NULL);
        free(why);
        for (int i = 0; i <= nrows; i++) {
            char aerr[1024];
            if (i < nrows && ri.skip && ri.skip[i])
                continue;
            if (call_plan(r, rules_host(r), cfg, in, &ri, i, aerr, sizeof aerr) == 0) {
                read_actions(L, cfg, in, &ri, out);
            } else {
                const char *id = i < nrows ? PQgetvalue(in->accounts, i, ri.col[0]) : NULL;
                push_action(out, ACT_ERROR, id, NULL, aerr);
            }
        }
    }

    /* Safety: the empty-set hold and the delete budget (DESIGN.md §5.2). */
    long active = in->full ? out->desired : in->active_total;
    int ndeletes = 0;
    for (size_t i = 0; i < out->n; i++)
        ndeletes += out->actions[i].kind == ACT_DELETE;
    if (ndeletes > 0) {
        int empty_hold = !cfg->allow_empty && out->observed > 0 && active <= 0;
        int allowed = empty_hold ? 0 : in->delete_allowance;
        for (size_t i = 0; i < out->n; i++) {
            action *a = &out->actions[i];
            if (a->kind != ACT_DELETE)
                continue;
            if (allowed > 0) {
                allowed--;
                continue;
            }
            a->kind = ACT_HOLD;
            free(a->reason);
            a->reason = xstrdup(empty_hold ? (active < 0 ? "delete held: the number of active accounts is unknown"
                                                          : "delete held: no account is active (set ALLOW_EMPTY_DESIRED=true to allow)")
                                           : "delete held: delete budget exhausted (DELETE_BUDGET)");
            out->held_deletes++;
            if (out->hold_reason == NULL)
                out->hold_reason = xstrdup(a->reason);
        }
    }
    for (size_t i = 0; i < out->n; i++)
        scrub(&secrets, &out->actions[i].reason);
    secrets_free(&secrets);
    if (in->settled)
        settle_commit(in, &ri, out);
    /* Give the rendered objects back now: the next pass may be a while away
     * and a steady RSS is a goal (docs/benchmarks.md). */
    if (out->planned > 0)
        lua_gc(L, LUA_GCCOLLECT);
    free(ri.keys);
    free(ri.has_key);
    free(ri.skip);
    free(ri.deferred);
    free(ri.in_sync);
    strmap_free(&ri.by_id);
    return 0;
}

int rec_check_plan(rules *r, luahost *candidate, const config *cfg, const plan_input *in, char *err,
                   size_t errlen)
{
    row_index ri;
    index_rows(&ri, in);
    int nrows = PQntuples(in->accounts);
    if (in->max_rows > 0 && nrows > in->max_rows) { /* a sample is enough to prove it runs */
        ri.skip = xcalloc((size_t)nrows + 1, 1);
        for (int i = in->max_rows; i < nrows; i++)
            ri.skip[i] = 1;
    }
    secret_set secrets;
    secrets_build(&secrets, &ri);
    ri.secrets = &secrets;
    lua_State *L = luahost_state(candidate);
    char perr[1024];
    int rc = call_plan(r, candidate, cfg, in, &ri, -1, perr, sizeof perr);
    if (rc < 0) {
        char *why = xstrdup(perr); /* a rule's error can quote what it was given */
        scrub(&secrets, &why);
        util_seterr(err, errlen, "plan over the current accounts failed: %s", why);
        free(why);
    } else {
        /* Renders and checks every object as `run` would: an object the core
         * would refuse for a live account refuses the rules. */
        plan_result scratch = {0};
        read_actions(L, cfg, in, &ri, &scratch);
        for (size_t i = 0; i < scratch.n && scratch.refused > 0; i++) {
            if (scratch.actions[i].kind != ACT_ERROR)
                continue;
            scrub(&secrets, &scratch.actions[i].reason);
            util_seterr(err, errlen, "plan over the current accounts: account \"%s\": %s",
                        scratch.actions[i].account_id ? scratch.actions[i].account_id : "?",
                        scratch.actions[i].reason);
            rc = -1;
            break;
        }
        rec_plan_free(&scratch);
        lua_gc(L, LUA_GCCOLLECT);
    }
    secrets_free(&secrets);
    free(ri.skip);
    strmap_free(&ri.by_id);
    return rc;
}
