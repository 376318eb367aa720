/* safety: see safety.h. */
#include "safety.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache.h"
#include "json.h"
#include "leader.h"
#include "luahost.h"
#include "names.h"
#include "util.h"
#include "worker_state.h"

static const char *const credential_columns[] = {"airbnb_cookie", "x_client_version", "user_agent"};

#define MAX_BODY (512u * 1024u) /* a rendered Deployment; etcd's limit is 1.5 MiB */

/* ---- credentials ----------------------------------------------------------- */

/* Rendered objects and reasons are searched for every credential value of
 * the rows handed to the rules (a rule may copy any account's value
 * anywhere), with scrub.h's scanner: linear in the text, whatever the
 * number of accounts. */
scrub_set *safety_secrets(const acct_rows *rows, const unsigned char *skip)
{
    scrub_set *ss = scrub_set_new();
    for (size_t k = 0; k < sizeof credential_columns / sizeof *credential_columns; k++) {
        int col = rows_column(rows, credential_columns[k]);
        for (int i = 0; col >= 0 && i < rows->nrows; i++) {
            const char *v = skip && skip[i] ? NULL : rows_value(rows, i, col);
            if (v == NULL)
                continue;
            size_t len = strlen(v);
            if (scrub_set_add(ss, v, len, SCRUB_MIN_LEN))
                scrub_add(v, len, SCRUB_MIN_LEN);
        }
    }
    return ss;
}

static int secrets_find(const scrub_set *ss, const char *text, size_t *pos, size_t *mlen)
{
    return ss && scrub_set_find(ss, text, strlen(text), pos, mlen);
}

void safety_scrub(const scrub_set *ss, char **s)
{
    size_t pos, len;
    while (*s && secrets_find(ss, *s, &pos, &len)) {
        char *fixed = xasprintf("%.*s" SCRUB_MARK "%s", (int)pos, *s, *s + pos + len);
        free(*s);
        *s = fixed;
    }
}

static int string_leaks(const char *s, size_t len, void *ud)
{
    size_t pos, mlen;
    return scrub_set_find(ud, s, len, &pos, &mlen);
}

/* ---- the final object -------------------------------------------------------- */

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

/* The object as it is sent: the rules' encoding, parsed in C, with the
 * fields we own set on the parsed document (namespace, managed-by label,
 * applied-hash annotation) and then checked on the final text: name, those
 * fields, names_validate_deployment and no credential in any decoded string
 * (a value JSON-escapes differently in the body than in the row). Lua is
 * out of the way: no metatable can hide or veto a field here. Returns the
 * final JSON (malloc'd) or NULL with err. */
static char *final_object(const char *body, size_t len, const config *cfg, const char *name,
                          const char *desired_hash, const scrub_set *secrets, const char *what,
                          const char *reason, const char *rules_version, char *err, size_t errlen)
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
    /* The worker's state for kubectl (worker_state.h), in the apply itself. */
    char at[21];
    wstate_now_rfc3339(at);
    /* The reason comes from the rules: scrubbed as for the audit row (a
     * credential in it would otherwise refuse the whole object below). */
    char *safe_reason = xstrdup(reason ? reason : "");
    safety_scrub(secrets, &safe_reason);
    char *what_txt = json_text(what), *reason_txt = json_text(safe_reason), *at_txt = json_text(at);
    free(safe_reason);
    char *version_txt = json_text(rules_version ? rules_version : "");
    const char *ak[] = {APPLIED_HASH_ANNOTATION, LAST_ACTION_ANNOTATION, LAST_REASON_ANNOTATION, LAST_AT_ANNOTATION,
                        RULES_VERSION_ANNOTATION};
    const char *av[] = {hash_txt, what_txt, reason_txt, at_txt, version_txt};
    write_merged(&ab, ann, rules_version ? 5 : 1, ak, av);
    free(what_txt);
    free(reason_txt);
    free(at_txt);
    free(version_txt);
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
    if (names_validate_deployment(fin, err, errlen) < 0)
        goto out;
    if (secrets && json_walk_strings(fin, string_leaks, (void *)secrets)) {
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

/* ---- one proposal ------------------------------------------------------------ */

/* The account id an action may carry into a report: the input row's own
 * value, or the observed Deployment's annotation for a Deployment the rules
 * were shown; never a string only the rules made up. */
static const char *input_id(const safety_ctx *s, const obs_deploy *obs, const char *id)
{
    if (id == NULL)
        return obs ? obs->account_id : NULL;
    intptr_t row = (intptr_t)strmap_get(s->by_id, id);
    if (row > 0)
        return rows_value(s->rows, (int)row - 1, s->id_col);
    if (obs && obs->account_id && strcmp(obs->account_id, id) == 0)
        return obs->account_id;
    return NULL;
}

/* An action the core refused (not an error the rules reported). */
static void refuse(plan_result *out, const char *id, const char *name, const char *reason)
{
    action_push(out, ACT_ERROR, id, name, reason);
    out->refused++;
}

/* A name the rules gave a hold or an error: kept only when it is a valid
 * Deployment name with no credential in it (it becomes an Event's object). */
static const char *report_name(const scrub_set *ss, const char *name)
{
    size_t pos, len;
    if (!names_dns_label(name) || secrets_find(ss, name, &pos, &len))
        return NULL;
    return name;
}

static int parse_kind(const char *kind, act_kind *k)
{
    static const struct { const char *name; act_kind kind; } kinds[] = {
        {"create", ACT_CREATE}, {"update", ACT_UPDATE}, {"delete", ACT_DELETE}, {"error", ACT_ERROR},
        {"hold", ACT_HOLD},     {"noop", ACT_HOLD},     {"none", ACT_HOLD},
    };
    for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++)
        if (strcmp(kinds[i].name, kind) == 0) {
            *k = kinds[i].kind;
            return strcmp(kind, "noop") == 0 || strcmp(kind, "none") == 0 ? 0 : 1;
        }
    return -1;
}

void safety_admit(safety_ctx *s, const proposal *p, plan_result *out)
{
    char err[512];
    const char *name = p->name, *reason = p->reason, *hash = p->desired_hash;
    const obs_deploy *obs = name ? strmap_get(s->observed, name) : NULL;
    if (obs && !obs->managed)
        obs = NULL;
    const char *id = input_id(s, obs, p->account_id);
    const char *rname = report_name(s->secrets, name);
    act_kind k;
    if (p->kind == NULL) {
        refuse(out, id, rname, "rules: an action has no 'action' field");
        return;
    }
    int known = parse_kind(p->kind, &k);
    if (known < 0) {
        refuse(out, id, rname, "rules: unknown action");
        return;
    }
    if (known == 0) /* noop / none */
        return;
    if (k != ACT_ERROR && k != ACT_HOLD && !names_dns_label(name)) {
        snprintf(err, sizeof err, "rules: invalid Deployment name \"%.80s\" (a DNS-1123 label of at most 63 characters)",
                 name ? name : "");
        refuse(out, id, NULL, err);
        return;
    }
    if ((k == ACT_CREATE || k == ACT_UPDATE) && (p->account_id == NULL || id == NULL)) {
        refuse(out, NULL, rname, "rules: a create/update names no account id of the input rows");
        return;
    }
    if (obs && k != ACT_DELETE && id && obs->account_id && strcmp(obs->account_id, id) != 0) {
        snprintf(err, sizeof err, "refusing to %s %s: it belongs to another account (name collision)",
                 k == ACT_CREATE ? "create" : "update", name);
        action_push(out, ACT_ERROR, id, name, err);
        return;
    }
    if (k == ACT_CREATE && obs)
        k = ACT_UPDATE; /* it exists and is ours: apply instead */
    if ((k == ACT_UPDATE || k == ACT_DELETE) && obs == NULL) {
        snprintf(err, sizeof err, "refusing to %s %s: not a Deployment managed by this operator",
                 k == ACT_UPDATE ? "update" : "delete", name);
        action_push(out, ACT_ERROR, id, name, err);
        return;
    }
    if (obs && wstate_paused(obs)) {
        /* A person paused this worker: nothing is updated, rolled or
         * deleted until the annotation goes; the change is reported. */
        char *why = wstate_paused_reason(k == ACT_DELETE, name);
        action *a = action_push(out, ACT_HOLD, id ? id : obs->account_id, name, why);
        a->paused = 1;
        a->uid = obs->uid ? xstrdup(obs->uid) : NULL;
        free(why);
        return;
    }
    if (k == ACT_DELETE) {
        action *a = action_push(out, ACT_DELETE, id ? id : obs->account_id, name, reason ? reason : "account not active");
        a->uid = obs->uid ? xstrdup(obs->uid) : NULL;
        return;
    }
    if (k == ACT_ERROR || k == ACT_HOLD) {
        action_push(out, k, id, rname, reason ? reason : "rules reported an error");
        return;
    }
    /* create / update: the object */
    const char *encoded = NULL;
    size_t len = 0;
    if (p->encode == NULL || p->encode(p->encode_ud, &encoded, &len, err, sizeof err) < 0) {
        refuse(out, id, name, p->encode ? err : "rules: a create/update action has no object table");
        return;
    }
    char computed[65];
    if (hash == NULL) { /* no desired_hash from the rules: hash the object as rendered */
        util_sha256_hex(encoded, len, computed);
        hash = computed;
    }
    char *body = NULL;
    if (s->body_bytes + len > LUAHOST_DEFAULT_MEM_LIMIT / 2)
        /* What C keeps for the rules counts too: one plan's bodies stay
         * below half a Lua state's cap. */
        util_seterr(err, sizeof err, "rules: this plan's rendered objects exceed %u bytes in all; "
                    "the rest wait for a later pass", LUAHOST_DEFAULT_MEM_LIMIT / 2);
    else
        body = final_object(encoded, len, s->cfg, name, hash, s->secrets, k == ACT_CREATE ? "create" : "update",
                            reason ? reason : (k == ACT_CREATE ? "account active" : "spec changed"),
                            s->rules_version, err, sizeof err);
    if (body == NULL) {
        refuse(out, id, name, err);
        return;
    }
    s->body_bytes += strlen(body);
    action *a = action_push(out, k, id, name, reason ? reason : (k == ACT_CREATE ? "account active" : "spec changed"));
    a->body = body;
    a->desired_hash = xstrdup(hash);
}

/* ---- budgets and holds (DESIGN.md §5.2) ------------------------------------------ */

void safety_hold_deletes(const config *cfg, plan_result *out, long active, int allowance)
{
    int ndeletes = 0;
    for (size_t i = 0; i < out->n; i++)
        ndeletes += out->actions[i].kind == ACT_DELETE;
    if (ndeletes == 0)
        return;
    int empty_hold = !cfg->allow_empty && out->observed > 0 && active <= 0;
    int allowed = empty_hold ? 0 : allowance;
    for (size_t i = 0; i < out->n; i++) {
        action *a = &out->actions[i];
        if (a->kind != ACT_DELETE)
            continue;
        if (allowed > 0) {
            allowed--;
            continue;
        }
        action_hold(out, a, empty_hold ? (active < 0 ? "delete held: the number of active accounts is unknown"
                                                     : "delete held: no account is active (set ALLOW_EMPTY_DESIRED=true to allow)")
                                       : "delete held: delete budget exhausted (DELETE_BUDGET)");
    }
}

/* On top of the delete budget (a rate): deleting more than
 * DELETE_HOLD_PERCENT of the managed workers within the window is held until
 * a person releases it by annotating the Lease (LEADER_RELEASE_ANNOTATION).
 * A budget of 5 per 30 s would otherwise delete everything within the hour. */
int safety_hold_mass_deletes(safety_window *w, const config *cfg, plan_result *plan, size_t workers,
                             const char *token, int held_now, uint64_t now_ms)
{
    if (cfg->delete_hold_percent <= 0)
        return 0;
    uint64_t window = (uint64_t)cfg->delete_hold_window_s * 1000u;
    size_t keep = 0;
    for (size_t i = 0; i < w->n; i++)
        if (w->deleted_at[i] + window > now_ms)
            w->deleted_at[keep++] = w->deleted_at[i];
    w->n = keep;
    int released = 0;
    if (strcmp(token ? token : "", w->release_seen) != 0) {
        released = w->n > 0 || held_now > 0;
        snprintf(w->release_seen, sizeof w->release_seen, "%s", token ? token : "");
        w->n = 0; /* a fresh share */
    }
    size_t share = workers * (size_t)cfg->delete_hold_percent / 100u;
    size_t allowed = share > (size_t)cfg->delete_hold_min ? share : (size_t)cfg->delete_hold_min;
    size_t left = allowed > w->n ? allowed - w->n : 0;
    for (size_t i = 0; i < plan->n; i++) {
        action *a = &plan->actions[i];
        if (a->kind != ACT_DELETE)
            continue;
        if (left > 0) {
            left--;
            continue;
        }
        char *why = xasprintf("delete held: more than %d%% of the workers (%zu of %zu) deleted within %d s; "
                              "a person releases it: kubectl annotate lease %s %s=<new value> --overwrite",
                              cfg->delete_hold_percent, allowed, workers, cfg->delete_hold_window_s,
                              cfg->lease_name, LEADER_RELEASE_ANNOTATION);
        action_hold(plan, a, why);
        free(why);
    }
    return released;
}

void safety_window_add(safety_window *w, uint64_t now_ms)
{
    w->deleted_at = xrealloc(w->deleted_at, (w->n + 1) * sizeof *w->deleted_at);
    w->deleted_at[w->n++] = now_ms;
}

void safety_window_free(safety_window *w)
{
    free(w->deleted_at);
    memset(w, 0, sizeof *w);
}
