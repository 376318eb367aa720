/* test_pipeline: the planner (reconcile.h), the safety filter (safety.h),
 * the expectations (expect.h) and the writer's leadership gate (writer.h)
 * with in-memory rows and observed objects: no database, no API server.
 * One case per DESIGN.md §5 invariant these stages can show, named after
 * it, plus the pin that the C canonical encoder and the spec fake
 * (spec/fakes/json.lua) give the same desired_hash. */
#include <lauxlib.h>
#include <stdint.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache.h"
#include "check.h"
#include "config.h"
#include "expect.h"
#include "log.h"
#include "metrics.h"
#include "trail.h"
#include "json.h"
#include "reconcile.h"
#include "rows.h"
#include "rules.h"
#include "safety.h"
#include "scrub.h"
#include "util.h"
#include "writer.h"

#define NS "sao-unit"
#define COOKIE "unit-cookie-5ecret-value"

static config cfg;
static rules *real_rules; /* lua/rules, as shipped */

/* ---- in-memory input ------------------------------------------------------------ */

static const char *const columns[] = {"account_id",   "customer_id", "airbnb_cookie", "x_client_version",
                                      "user_agent",   "is_active",   "last_sync_at",  "updated_at",
                                      "deleted_at",   "credentials_generation"};
#define NCOLS 10
static const char *const bool_columns[] = {"is_active", NULL};

typedef struct input {
    const char *cells[16 * NCOLS];
    int nrows;
    acct_rows rows;
    strmap observed; /* name → obs_deploy (owned) */
} input;

static void add_row(input *in, const char *id, int active, const char *cookie)
{
    const char **r = &in->cells[in->nrows++ * NCOLS];
    r[0] = id;
    r[1] = "00000000-0000-4000-8000-00000000c0de";
    r[2] = cookie;
    r[3] = "unit-client-version-2024";
    r[4] = "Mozilla/5.0 (unit test agent)";
    r[5] = active ? "t" : "f";
    r[6] = "2025-10-23 05:00:00+00";
    r[7] = "2025-10-23 05:00:00+00";
    r[8] = NULL;
    r[9] = "0";
}

/* An observed Deployment as the watch would bring it. */
static obs_deploy *deploy(const char *name, const char *account_id, int managed, const char *rv)
{
    char *doc = xasprintf("{\"metadata\":{\"name\":\"%s\",\"uid\":\"uid-%s\",\"generation\":2,"
                          "\"resourceVersion\":\"%s\",\"labels\":{%s},"
                          "\"annotations\":{\"sync-airbnb.io/account-id\":\"%s\","
                          "\"sync-airbnb.io/applied-hash\":\"old\"}},\"status\":{}}",
                          name, name, rv, managed ? "\"app.kubernetes.io/managed-by\":\"sync-airbnb-operator\"" : "",
                          account_id);
    json_value *v = json_parse(doc, strlen(doc), NULL, 0);
    obs_deploy *d = cache_parse_deployment(v);
    json_free(v);
    free(doc);
    return d;
}

static void observe(input *in, obs_deploy *d)
{
    strmap_put(&in->observed, d->name, d);
}

static void input_done(input *in)
{
    rows_from_cells(&in->rows, in->nrows, NCOLS, columns, in->cells, bool_columns);
}

static void input_free(input *in)
{
    rows_free(&in->rows);
    cache_free_deployments(&in->observed);
}

static int plan(rules *r, input *in, int full, long active_total, int allowance, plan_result *out)
{
    char err[512] = "";
    plan_input pi = {&in->rows, &in->observed, full, active_total, allowance, NULL, 0, NULL, 0};
    int rc = rec_plan(r, &cfg, &pi, out, err, sizeof err);
    if (rc < 0)
        fprintf(stderr, "  rec_plan: %s\n", err);
    return rc;
}

static int count(const plan_result *p, act_kind k)
{
    int n = 0;
    for (size_t i = 0; i < p->n; i++)
        n += p->actions[i].kind == k;
    return n;
}

static const action *find(const plan_result *p, act_kind k, const char *account_id)
{
    for (size_t i = 0; i < p->n; i++)
        if (p->actions[i].kind == k && p->actions[i].account_id && strcmp(p->actions[i].account_id, account_id) == 0)
            return &p->actions[i];
    return NULL;
}

/* The safety filter over in's rows and observed objects, as the planner sets it up. */
typedef struct filter {
    strmap by_id;
    scrub_set *secrets;
    safety_ctx ctx;
} filter;

static void filter_init(filter *f, input *in)
{
    memset(f, 0, sizeof *f);
    f->by_id.borrowed_keys = 1;
    for (int i = 0; i < in->nrows; i++)
        strmap_put(&f->by_id, in->cells[i * NCOLS], (void *)(intptr_t)(i + 1));
    f->secrets = safety_secrets(&in->rows, NULL);
    f->ctx = (safety_ctx){.cfg = &cfg, .rows = &in->rows, .id_col = 0, .by_id = &f->by_id,
                          .observed = &in->observed, .secrets = f->secrets};
}

static void filter_free(filter *f)
{
    scrub_set_free(f->secrets);
    strmap_free(&f->by_id);
}

/* ---- §5.1: a database error never causes a delete --------------------------------- */

/* A partial pass whose count of active accounts failed (active_total -1):
 * the inactive account's delete is held, not sent. */
static void test_invariant_1_database_error_never_deletes(void)
{
    input in = {0};
    add_row(&in, "1001", 0, COOKIE);
    observe(&in, deploy("sync-airbnb-worker-1001", "1001", 1, "10"));
    input_done(&in);
    plan_result p;
    CHECK(plan(real_rules, &in, 0, -1, 5, &p) == 0);
    CHECK(count(&p, ACT_DELETE) == 0);
    const action *h = find(&p, ACT_HOLD, "1001");
    CHECK(h != NULL);
    CHECK_CONTAINS(h ? h->reason : NULL, "unknown");
    rec_plan_free(&p);
    input_free(&in);
}

/* ---- §5.2: a sudden vanish does not wipe the workers -------------------------------- */

static void test_invariant_2_empty_desired_set_is_held(void)
{
    input in = {0}; /* no account at all: the table looks empty */
    observe(&in, deploy("sync-airbnb-worker-1", "1", 1, "10"));
    observe(&in, deploy("sync-airbnb-worker-2", "2", 1, "11"));
    input_done(&in);
    plan_result p;
    CHECK(plan(real_rules, &in, 1, -1, 5, &p) == 0);
    CHECK(count(&p, ACT_DELETE) == 0);
    CHECK(count(&p, ACT_HOLD) == 2 && p.held_deletes == 2);
    CHECK_CONTAINS(p.hold_reason, "no account is active");
    rec_plan_free(&p);
    input_free(&in);
}

static void test_invariant_2_deletes_are_budgeted(void)
{
    input in = {0};
    add_row(&in, "1", 1, COOKIE);
    for (int i = 2; i <= 4; i++) {
        char id[8], name[64];
        snprintf(id, sizeof id, "%d", i);
        snprintf(name, sizeof name, "sync-airbnb-worker-%d", i);
        observe(&in, deploy(name, id, 1, id));
    }
    input_done(&in);
    plan_result p;
    CHECK(plan(real_rules, &in, 1, -1, 1, &p) == 0);
    CHECK(count(&p, ACT_DELETE) == 1);
    CHECK(p.held_deletes == 2);
    CHECK_CONTAINS(p.hold_reason, "delete budget exhausted");
    rec_plan_free(&p);
    input_free(&in);
}

static void test_invariant_2_mass_deletes_wait_for_a_person(void)
{
    config c = cfg;
    c.delete_hold_percent = 50;
    c.delete_hold_min = 1;
    safety_window w = {0};
    plan_result p = {0};
    for (int i = 0; i < 5; i++)
        action_push(&p, ACT_DELETE, NULL, "sync-airbnb-worker-x", "account not active");
    /* 4 workers: 50% = 2 deletes in the window, the other 3 held */
    CHECK(safety_hold_mass_deletes(&w, &c, &p, 4, "", 0, 1000) == 0);
    CHECK(count(&p, ACT_DELETE) == 2 && p.held_deletes == 3);
    CHECK_CONTAINS(p.hold_reason, "a person releases it");
    safety_window_add(&w, 1000);
    safety_window_add(&w, 1000);
    rec_plan_free(&p);
    action_push(&p, ACT_DELETE, NULL, "sync-airbnb-worker-y", "account not active");
    CHECK(safety_hold_mass_deletes(&w, &c, &p, 4, "", 3, 2000) == 0);
    CHECK(count(&p, ACT_DELETE) == 0); /* the share is used up */
    rec_plan_free(&p);
    action_push(&p, ACT_DELETE, NULL, "sync-airbnb-worker-y", "account not active");
    CHECK(safety_hold_mass_deletes(&w, &c, &p, 4, "released-by-alice", 1, 3000) == 1); /* a person */
    CHECK(count(&p, ACT_DELETE) == 1);
    rec_plan_free(&p);
    safety_window_free(&w);
}

/* ---- §5.3: only our managed Deployments in our namespace change ------------------------ */

static int fixed_object(void *ud, const char **json, size_t *len, char *err, size_t errlen)
{
    (void)err, (void)errlen;
    *json = ud;
    *len = strlen(ud);
    return 0;
}

#define OBJECT(name, extra_meta)                                                                          \
    "{\"apiVersion\":\"apps/v1\",\"kind\":\"Deployment\",\"metadata\":{\"name\":\"" name "\","            \
    "\"namespace\":\"kube-system\",\"labels\":{\"app\":\"w\"}" extra_meta "},\"spec\":{\"selector\":"     \
    "{\"matchLabels\":{\"app\":\"w\"}},\"template\":{\"metadata\":{\"labels\":{\"app\":\"w\"}},\"spec\":" \
    "{\"containers\":[{\"name\":\"w\",\"image\":\"sync-airbnb:1\"}]}}}}"

static void test_invariant_3_only_managed_deployments_in_our_namespace(void)
{
    input in = {0};
    add_row(&in, "1", 1, COOKIE);
    add_row(&in, "2", 1, COOKIE "2");
    observe(&in, deploy("hand-made", "1", 0, "5"));          /* not labelled managed-by */
    observe(&in, deploy("sync-airbnb-worker-2", "2", 1, "6")); /* account 2's */
    input_done(&in);
    filter f;
    filter_init(&f, &in);
    safety_ctx *s = &f.ctx;
    plan_result out = {0};
    safety_admit(s, &(proposal){.kind = "delete", .account_id = "1", .name = "hand-made"}, &out);
    safety_admit(s, &(proposal){.kind = "update", .account_id = "1", .name = "nobody-knows-me",
                                 .encode = fixed_object, .encode_ud = OBJECT("nobody-knows-me", "")},
                 &out);
    safety_admit(s, &(proposal){.kind = "create", .account_id = "1", .name = "sync-airbnb-worker-2",
                                 .encode = fixed_object, .encode_ud = OBJECT("sync-airbnb-worker-2", "")},
                 &out);
    safety_admit(s, &(proposal){.kind = "create", .account_id = "1", .name = "Bad_Name"}, &out);
    CHECK(out.n == 4);
    CHECK(count(&out, ACT_ERROR) == 4);
    CHECK_CONTAINS(out.actions[0].reason, "not a Deployment managed by this operator");
    CHECK_CONTAINS(out.actions[1].reason, "not a Deployment managed by this operator");
    CHECK_CONTAINS(out.actions[2].reason, "belongs to another account");
    CHECK_CONTAINS(out.actions[3].reason, "invalid Deployment name");
    rec_plan_free(&out);
    /* A create the filter admits: namespace and managed-by are ours, whatever the rules said. */
    safety_admit(s, &(proposal){.kind = "create", .account_id = "1", .name = "sync-airbnb-worker-1",
                                 .desired_hash = "h1", .encode = fixed_object,
                                 .encode_ud = OBJECT("sync-airbnb-worker-1", "")},
                 &out);
    CHECK(out.n == 1 && out.actions[0].kind == ACT_CREATE);
    json_value *v = out.n ? json_parse(out.actions[0].body, strlen(out.actions[0].body), NULL, 0) : NULL;
    CHECK_STR(json_string(json_path(v, "metadata", "namespace", NULL)), NS);
    CHECK_STR(json_string(json_path(v, "metadata", "labels", MANAGED_BY_LABEL, NULL)), MANAGED_BY_VALUE);
    CHECK_STR(json_string(json_path(v, "metadata", "annotations", APPLIED_HASH_ANNOTATION, NULL)), "h1");
    json_free(v);
    rec_plan_free(&out);
    filter_free(&f);
    input_free(&in);
}

/* ---- §5.4: credential values never leave ---------------------------------------------- */

static void test_invariant_4_credentials_never_leave(void)
{
    input in = {0};
    add_row(&in, "1", 1, COOKIE);
    input_done(&in);
    filter f;
    filter_init(&f, &in);
    safety_ctx *s = &f.ctx;
    plan_result out = {0};
    /* in an annotation, JSON-escaped differently than in the row: found on the decoded strings */
    safety_admit(s, &(proposal){.kind = "create", .account_id = "1", .name = "sync-airbnb-worker-1",
                                 .encode = fixed_object,
                                 .encode_ud = OBJECT("sync-airbnb-worker-1", ",\"annotations\":{\"c\":\"x" COOKIE "y\"}")},
                 &out);
    /* in a name a hold would post an Event about: the name is dropped */
    safety_admit(s, &(proposal){.kind = "hold", .account_id = "1", .name = "x" COOKIE, .reason = "held"}, &out);
    CHECK(out.n == 2);
    CHECK(out.n >= 1 && out.actions[0].kind == ACT_ERROR && out.actions[0].body == NULL);
    CHECK_CONTAINS(out.n >= 1 ? out.actions[0].reason : NULL, "contains a credential value");
    CHECK(out.n >= 2 && out.actions[1].kind == ACT_HOLD && out.actions[1].name == NULL);
    /* in a reason: scrubbed */
    char *reason = xstrdup("the cookie " COOKIE " expired");
    safety_scrub(f.secrets, &reason);
    CHECK_STR(reason, "the cookie " SCRUB_MARK " expired");
    free(reason);
    rec_plan_free(&out);
    filter_free(&f);
    input_free(&in);
}

/* ---- §5.6: every create, update and delete is logged, audited and posted ------------ */

static int hold_events(void *ud)
{
    (void)ud;
    return 1; /* no API server: every Event stays queued, to be counted */
}

static pg_conn *no_db(void *ud)
{
    (void)ud;
    return NULL;
}

static void test_invariant_6_every_write_is_logged_audited_and_posted(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    trail t;
    trail_init(&t, &loop, &cfg, NULL, hold_events, no_db, NULL);
    int fds[2];
    CHECK(pipe(fds) == 0);
    log_set_fd(fds[1]);
    double before = metrics_get("sync_airbnb_operator_reconcile_actions_total", "result=\"create\"");
    static const write_result done[] = {WRITE_CREATED, WRITE_UPDATED, WRITE_DELETED, WRITE_ALREADY_OURS};
    static const act_kind kinds[] = {ACT_CREATE, ACT_UPDATE, ACT_DELETE, ACT_CREATE};
    for (size_t i = 0; i < 4; i++) {
        write_outcome o = {.result = done[i], .kind = kinds[i], .account_id = "1",
                           .name = "sync-airbnb-worker-1", .reason = "unit"};
        trail_write(&t, &o);
    }
    /* a failure is reported too, once per reason (it repeats every pass) */
    write_outcome fail = {.result = WRITE_FAILED, .kind = ACT_UPDATE, .account_id = "1",
                          .name = "sync-airbnb-worker-1", .reason = "update failed: 500"};
    trail_write(&t, &fail);
    trail_write(&t, &fail);
    log_set_fd(2);
    close(fds[1]);
    char out[8192] = "";
    ssize_t n = read(fds[0], out, sizeof out - 1);
    close(fds[0]);
    out[n > 0 ? n : 0] = '\0';
    CHECK(t.audit.n == 5);     /* 4 writes + 1 error row */
    CHECK(t.events.held == 5); /* one Event each */
    CHECK(metrics_get("sync_airbnb_operator_reconcile_actions_total", "result=\"create\"") == before + 2);
    CHECK(metrics_get("sync_airbnb_operator_reconcile_actions_total", "result=\"delete\"") >= 1);
    CHECK_CONTAINS(out, "\"msg\":\"create\"");
    CHECK_CONTAINS(out, "\"msg\":\"update\"");
    CHECK_CONTAINS(out, "\"msg\":\"delete\"");
    CHECK_CONTAINS(out, "\"msg\":\"error\"");
    trail_flush(&t); /* no database: the rows count as audit failures */
    trail_free(&t);
    uv_close((uv_handle_t *)&t.audit_timer, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
}

/* ---- §5.5 / §5.8: a rule error affects only its account; rules cannot make it write ---- */

static char poison_dir[256];

/* lua/rules with a plan() that fails on one account ("poison"). */
static rules *poisoned_rules(void)
{
    snprintf(poison_dir, sizeof poison_dir, "/tmp/sao-test-pipeline-%d", (int)getpid());
    mkdir(poison_dir, 0700);
    const char *files[] = {"deployment", "examples", "fingerprint", "naming", "plan", "rollout", "validate"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char *src = xasprintf("%s/lua/rules/%s.lua", SAO_SOURCE_DIR, files[i]);
        char *dst = xasprintf("%s/%s.lua", poison_dir, files[i]);
        size_t len = 0;
        char *text = util_read_file(src, &len);
        FILE *f = fopen(dst, "w");
        if (text && f)
            fwrite(text, 1, len, f);
        if (f)
            fclose(f);
        free(text);
        free(src);
        free(dst);
    }
    char *base = xasprintf("%s/lua/rules/rules.lua", SAO_SOURCE_DIR), *dst = xasprintf("%s/base.lua", poison_dir);
    size_t len = 0;
    char *text = util_read_file(base, &len);
    FILE *f = fopen(dst, "w");
    if (text && f)
        fwrite(text, 1, len, f);
    if (f)
        fclose(f);
    free(text);
    free(base);
    free(dst);
    dst = xasprintf("%s/rules.lua", poison_dir);
    f = fopen(dst, "w");
    if (f) {
        fputs("local base = require(\"base\")\n"
              "local M = {}\n"
              "for k, v in pairs(base) do M[k] = v end\n"
              "function M.plan(accounts, observed, ctx)\n"
              "    for _, a in ipairs(accounts) do\n"
              "        if a.account_id == \"poison\" then error(\"poisoned row\") end\n"
              "    end\n"
              "    return base.plan(accounts, observed, ctx)\n"
              "end\n"
              "return M\n", f);
        fclose(f);
    }
    free(dst);
    rules *r = rules_new(&cfg);
    char err[1024];
    if (rules_reload(r, poison_dir, err, sizeof err) < 0) {
        fprintf(stderr, "  poisoned rules: %s\n", err);
        rules_free(r);
        return NULL;
    }
    return r;
}

static void test_invariant_5_rule_error_affects_only_its_account(void)
{
    rules *r = poisoned_rules();
    CHECK(r != NULL);
    if (r == NULL)
        return;
    input in = {0};
    add_row(&in, "1", 1, COOKIE);
    add_row(&in, "poison", 1, COOKIE "p");
    add_row(&in, "3", 1, COOKIE "3");
    input_done(&in);
    plan_result p;
    CHECK(plan(r, &in, 1, -1, 5, &p) == 0);
    CHECK(find(&p, ACT_CREATE, "1") != NULL);
    CHECK(find(&p, ACT_CREATE, "3") != NULL);
    const action *e = find(&p, ACT_ERROR, "poison");
    CHECK(e != NULL);
    CHECK_CONTAINS(e ? e->reason : NULL, "poisoned row");
    CHECK(count(&p, ACT_CREATE) == 2 && count(&p, ACT_ERROR) == 1);
    rec_plan_free(&p);
    input_free(&in);
    rules_free(r);
}

/* The fallback plans in halves: every healthy account gets exactly its one
 * action, and an orphaned Deployment is planned once (not once per half). */
static void test_invariant_5_split_fallback_plans_each_once(void)
{
    rules *r = poisoned_rules();
    CHECK(r != NULL);
    if (r == NULL)
        return;
    static const char *const ids[] = {"1", "2", "3", "4", "5", "6", "poison", "8", "9", "10", "11", "12"};
    static const char *const cookies[] = {COOKIE "a", COOKIE "b", COOKIE "c", COOKIE "d", COOKIE "e", COOKIE "f",
                                          COOKIE "g", COOKIE "h", COOKIE "i", COOKIE "j", COOKIE "k", COOKIE "l"};
    input in = {0};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
        add_row(&in, ids[i], 1, cookies[i]);
    input_done(&in);
    observe(&in, deploy("sync-airbnb-worker-2", "2", 1, "5"));
    observe(&in, deploy("sync-airbnb-worker-gone", "gone", 1, "6"));
    plan_result p;
    CHECK(plan(r, &in, 1, -1, 5, &p) == 0);
    CHECK(count(&p, ACT_CREATE) == 10);
    CHECK(count(&p, ACT_UPDATE) == 1 && find(&p, ACT_UPDATE, "2") != NULL);
    CHECK(count(&p, ACT_ERROR) == 1 && find(&p, ACT_ERROR, "poison") != NULL);
    int orphan = 0;
    for (size_t i = 0; i < p.n; i++)
        orphan += p.actions[i].name && strcmp(p.actions[i].name, "sync-airbnb-worker-gone") == 0;
    CHECK(orphan == 1);
    CHECK(count(&p, ACT_DELETE) == 1);
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        int n = 0;
        for (size_t k = 0; k < p.n; k++)
            n += p.actions[k].account_id && strcmp(p.actions[k].account_id, ids[i]) == 0;
        CHECK(n == 1);
    }
    rec_plan_free(&p);
    input_free(&in);
    rules_free(r);
}

/* What the rules render is checked in C: a create with a credential in its
 * object never reaches the writer, whatever rules made it (§5.8). */
static void test_invariant_8_rules_cannot_make_it_write_a_credential(void)
{
    input in = {0};
    add_row(&in, "1", 1, COOKIE);
    input_done(&in);
    filter f;
    filter_init(&f, &in);
    safety_ctx *s = &f.ctx;
    plan_result out = {0};
    safety_admit(s, &(proposal){.kind = "create", .account_id = "made-up-id", .name = "sync-airbnb-worker-9",
                                 .encode = fixed_object, .encode_ud = OBJECT("sync-airbnb-worker-9", "")},
                 &out);
    safety_admit(s, &(proposal){.kind = "create", .account_id = "1", .name = "sync-airbnb-worker-1",
                                 .encode = fixed_object, .encode_ud = OBJECT("another-name", "")},
                 &out);
    safety_admit(s, &(proposal){.kind = "rm -rf", .account_id = "1", .name = "sync-airbnb-worker-1"}, &out);
    CHECK(out.n == 3 && count(&out, ACT_ERROR) == 3 && out.refused == 3);
    CHECK_CONTAINS(out.n > 0 ? out.actions[0].reason : NULL, "names no account id of the input rows");
    CHECK_CONTAINS(out.n > 1 ? out.actions[1].reason : NULL, "metadata.name differs");
    CHECK_CONTAINS(out.n > 2 ? out.actions[2].reason : NULL, "unknown action");
    rec_plan_free(&out);
    filter_free(&f);
    input_free(&in);
}

/* ---- §5.7: leadership is checked before every send ------------------------------------ */

static int never_leader(void *ud)
{
    (void)ud;
    return 0;
}

static void no_outcome(const write_outcome *o, void *ud)
{
    (void)o;
    (*(int *)ud)++;
}

static void test_invariant_7_no_send_without_leadership(void)
{
    int outcomes = 0;
    /* No client at all: a writer that is not the leader must not touch it. */
    writer *w = writer_new(NULL, &cfg, never_leader, no_outcome, &outcomes);
    plan_result p = {0};
    action *a = action_push(&p, ACT_DELETE, "1", "sync-airbnb-worker-1", "account not active");
    a->uid = xstrdup("uid-1");
    CHECK(writer_send(w, a, NULL) == 0);
    CHECK(writer_inflight(w) == 0 && !writer_busy(w, "sync-airbnb-worker-1"));
    CHECK(outcomes == 0);
    rec_plan_free(&p);
    writer_free(w);
}

/* ---- expectations: no write is sent twice for one change -------------------------------- */

static void test_write_is_expected_until_its_echo(void)
{
    expect e = {0};
    obs_deploy *before = deploy("sync-airbnb-worker-1", "1", 1, "100");
    /* our update answered with resourceVersion 105, generation 3 */
    CHECK(expect_write(&e, "sync-airbnb-worker-1", "1", 105, 3, 0, before, 0) == 1);
    CHECK(expect_pending(&e, "sync-airbnb-worker-1"));
    strmap ids = STRMAP_BORROWED;
    expect_accounts(&e, &ids);
    CHECK(strmap_get(&ids, "1") != NULL); /* a pass leaves account 1 alone */
    strmap_free(&ids);
    char *account = NULL;
    int was_delete = -1;
    obs_deploy *stale = deploy("sync-airbnb-worker-1", "1", 1, "103"); /* a status update from before */
    CHECK(expect_observe(&e, "sync-airbnb-worker-1", stale, &account, &was_delete) == EXPECT_STALE);
    CHECK(expect_pending(&e, "sync-airbnb-worker-1"));
    obs_deploy *echo = deploy("sync-airbnb-worker-1", "1", 1, "105");
    CHECK(expect_observe(&e, "sync-airbnb-worker-1", echo, &account, &was_delete) == EXPECT_MET);
    CHECK_STR(account, "1");
    CHECK(was_delete == 0);
    CHECK(echo->applied_generation == 3);
    CHECK(!expect_pending(&e, "sync-airbnb-worker-1"));
    free(account);
    /* the echo came before the answer: nothing to wait for */
    CHECK(expect_write(&e, "sync-airbnb-worker-1", "1", 105, 3, 0, echo, 0) == 0);
    /* a delete is met by the deletion */
    CHECK(expect_write(&e, "sync-airbnb-worker-1", "1", 0, 0, 1, echo, 0) == 1);
    CHECK(expect_observe(&e, "sync-airbnb-worker-1", echo, &account, &was_delete) == EXPECT_STALE);
    CHECK(expect_observe(&e, "sync-airbnb-worker-1", NULL, &account, &was_delete) == EXPECT_MET);
    CHECK(was_delete == 1);
    free(account);
    /* the echo and a later status update both came before the answer */
    obs_deploy *later = deploy("sync-airbnb-worker-1", "1", 1, "111");
    expect_seen(&e, "sync-airbnb-worker-1", 110);
    expect_seen(&e, "sync-airbnb-worker-1", 111);
    CHECK(expect_write(&e, "sync-airbnb-worker-1", "1", 110, 4, 0, later, 0) == 0);
    CHECK(later->applied_generation == 4);
    expect_write_done(&e, "sync-airbnb-worker-1");
    CHECK(expect_write(&e, "sync-airbnb-worker-1", "1", 110, 4, 0, later, 0) == 1); /* forgotten: now waited for */
    CHECK(expect_observe(&e, "sync-airbnb-worker-1", NULL, &account, &was_delete) == EXPECT_MET);
    free(account);
    obs_deploy_free(later);
    /* one that never comes lapses */
    CHECK(expect_write(&e, "sync-airbnb-worker-2", NULL, 7, 0, 0, NULL, 1000) == 1);
    CHECK(expect_expire(&e, 1000 + EXPECT_TIMEOUT_MS - 1, NULL, NULL) == 0);
    CHECK(expect_expire(&e, 1000 + EXPECT_TIMEOUT_MS, NULL, NULL) == 1);
    CHECK(expect_count(&e) == 0);
    obs_deploy_free(before);
    obs_deploy_free(stale);
    obs_deploy_free(echo);
    expect_free(&e);
}

/* The planner defers an account with a write in flight or expected
 * (plan_input.busy): it is not planned, so nothing is sent for it. */
static void test_busy_account_is_not_planned_again(void)
{
    input in = {0};
    add_row(&in, "1", 1, COOKIE);
    add_row(&in, "2", 1, COOKIE "2");
    input_done(&in);
    strmap busy = STRMAP_BORROWED;
    strmap_put(&busy, "1", (void *)1);
    char err[512];
    plan_input pi = {&in.rows, &in.observed, 1, -1, 5, NULL, 0, &busy, 0};
    plan_result p;
    CHECK(rec_plan(real_rules, &cfg, &pi, &p, err, sizeof err) == 0);
    CHECK(find(&p, ACT_CREATE, "1") == NULL);
    CHECK(find(&p, ACT_CREATE, "2") != NULL);
    CHECK(p.deferred == 1);
    CHECK(p.deferred_ids && strcmp(p.deferred_ids, "1") == 0);
    rec_plan_free(&p);
    strmap_free(&busy);
    input_free(&in);
}

/* The planner: an account whose input did not change since a plan left it
 * alone is settled (not handed to the rules again); max_rows defers the rest,
 * by id, in row order. */
static void test_planner_settles_and_chunks(void)
{
    input in = {0};
    for (int i = 0; i < 5; i++) {
        static const char *const ids[] = {"1", "2", "3", "4", "5"};
        add_row(&in, ids[i], 0, COOKIE); /* inactive, no worker: nothing to do */
    }
    input_done(&in);
    rec_settled settled = {0};
    char err[512];
    plan_input pi = {&in.rows, &in.observed, 1, -1, 5, &settled, 2, NULL, 0};
    plan_result p;
    CHECK(rec_plan(real_rules, &cfg, &pi, &p, err, sizeof err) == 0);
    CHECK(p.n == 0 && p.planned == 2 && p.deferred == 3);
    CHECK(p.deferred_ids_len == 6 && memcmp(p.deferred_ids, "3\0004\0005\0", 6) == 0);
    rec_plan_free(&p);
    pi.max_rows = 0;
    CHECK(rec_plan(real_rules, &cfg, &pi, &p, err, sizeof err) == 0);
    CHECK(p.planned == 3 && p.deferred == 0); /* the first two are settled */
    rec_plan_free(&p);
    CHECK(rec_plan(real_rules, &cfg, &pi, &p, err, sizeof err) == 0);
    CHECK(p.planned == 0); /* an idle resync: no Lua work */
    rec_plan_free(&p);
    in.cells[2 * NCOLS + 5] = "t"; /* account 3 turns active: its digest changes */
    CHECK(rec_plan(real_rules, &cfg, &pi, &p, err, sizeof err) == 0);
    CHECK(p.planned == 1 && find(&p, ACT_CREATE, "3") != NULL);
    rec_plan_free(&p);
    rec_settled_free(&settled);
    input_free(&in);
}

/* Workers that are fine (active, applied, not drifted) have their own
 * allowance per pass and never take the other accounts' places: after a
 * restart, an inactive account's delete goes out in the first pass, not
 * after every in-sync row before it. */
static void test_in_sync_rows_do_not_crowd_out_a_delete(void)
{
    input in = {0};
    static const char *const ids[] = {"1", "2", "3", "4", "5", "6", "7", "8", "9", "10"};
    static const char *const names[] = {"sync-airbnb-worker-1", "sync-airbnb-worker-2", "sync-airbnb-worker-3",
                                        "sync-airbnb-worker-4", "sync-airbnb-worker-5", "sync-airbnb-worker-6",
                                        "sync-airbnb-worker-7", "sync-airbnb-worker-8", "sync-airbnb-worker-9",
                                        "sync-airbnb-worker-10"};
    for (int i = 0; i < 10; i++) {
        add_row(&in, ids[i], 1, COOKIE);
        observe(&in, deploy(names[i], ids[i], 1, "5"));
    }
    add_row(&in, "11", 0, COOKIE); /* deactivated while the operator was down */
    observe(&in, deploy("sync-airbnb-worker-11", "11", 1, "5"));
    input_done(&in);
    rec_settled settled = {0}; /* a restart: nothing settled yet */
    char err[512];
    plan_input pi = {&in.rows, &in.observed, 1, -1, 5, &settled, 1, NULL, 0}; /* in-sync allowance: 4 */
    plan_result p;
    CHECK(rec_plan(real_rules, &cfg, &pi, &p, err, sizeof err) == 0);
    CHECK(find(&p, ACT_DELETE, "11") != NULL);
    CHECK(p.planned == 5 && p.deferred == 6);
    CHECK(p.deferred_ids_len == 13 && memcmp(p.deferred_ids, "5\0006\0007\0008\0009\00010\000", 13) == 0);
    rec_plan_free(&p);
    rec_settled_free(&settled);
    input_free(&in);
}

/* A full pass reads no credentials (rec_accounts_light_sql): its rows carry
 * only id, is_active, deleted_at and the database's digest of the whole row.
 * No row is handed to the rules; a row whose digest is settled is skipped,
 * every other is deferred (read again, whole, by id), the in-sync ones last;
 * a Deployment without a row is still planned (its delete). */
static void test_a_light_full_pass_hands_no_row_to_the_rules(void)
{
    static const char *const dcols[] = {"account_id", "customer_id", "airbnb_cookie", "x_client_version",
                                        "user_agent", "is_active",   "last_sync_at",  "updated_at",
                                        "deleted_at", "credentials_generation", REC_DIGEST_COLUMN};
    /* whole rows: 1 active with a worker, 2 inactive without one (nothing to do: settles) */
    const char *whole[] = {
        "1", "c", COOKIE, "v", "ua", "t", "2025-10-23", "2025-10-23", NULL, "0", "digest-1",
        "2", "c", COOKIE, "v", "ua", "f", "2025-10-23", "2025-10-23", NULL, "0", "digest-2",
    };
    /* light rows: the same two, and 3 inactive with a worker (its delete) */
    const char *light[] = {
        "1", NULL, NULL, NULL, NULL, "t", NULL, NULL, NULL, "0", "digest-1",
        "2", NULL, NULL, NULL, NULL, "f", NULL, NULL, NULL, "0", "digest-2",
        "3", NULL, NULL, NULL, NULL, "f", NULL, NULL, NULL, "0", "digest-3",
    };
    input in = {0};
    observe(&in, deploy("sync-airbnb-worker-1", "1", 1, "5"));
    observe(&in, deploy("sync-airbnb-worker-3", "3", 1, "5"));
    observe(&in, deploy("sync-airbnb-worker-9", "9", 1, "5")); /* its row is gone */
    acct_rows rows;
    rows_from_cells(&rows, 2, 11, dcols, whole, bool_columns);
    rec_settled settled = {0};
    char err[512];
    plan_result p;
    plan_input pi = {&rows, &in.observed, 0, 1, 5, &settled, 0, NULL, 0};
    CHECK(rec_plan(real_rules, &cfg, &pi, &p, err, sizeof err) == 0);
    CHECK(p.planned == 2 && find(&p, ACT_CREATE, "2") == NULL && find(&p, ACT_DELETE, "2") == NULL);
    rec_plan_free(&p);
    rows_free(&rows);

    rows_from_cells(&rows, 3, 11, dcols, light, bool_columns);
    pi = (plan_input){&rows, &in.observed, 1, -1, 5, &settled, REC_PLAN_CHUNK, NULL, 1};
    CHECK(rec_plan(real_rules, &cfg, &pi, &p, err, sizeof err) == 0);
    CHECK(p.planned == 0 && p.deferred == 2);
    CHECK(p.deferred_ids_len == 4 && memcmp(p.deferred_ids, "3\0001\0", 4) == 0); /* the delete first */
    CHECK(p.n == 1 && p.actions[0].kind == ACT_DELETE && strcmp(p.actions[0].name, "sync-airbnb-worker-9") == 0);
    rec_plan_free(&p);
    /* the full pass rebuilt the settled set: 2 is still in it */
    CHECK(rec_plan(real_rules, &cfg, &pi, &p, err, sizeof err) == 0);
    CHECK(p.deferred == 2);
    rec_plan_free(&p);
    light[1 * 11 + 10] = "digest-2-changed"; /* its row changed: read again */
    CHECK(rec_plan(real_rules, &cfg, &pi, &p, err, sizeof err) == 0);
    CHECK(p.deferred == 3 && p.planned == 0);
    rec_plan_free(&p);
    rows_free(&rows);
    rec_settled_free(&settled);
    input_free(&in);
}

/* ---- the desired_hash of the C encoder is the spec fake's ------------------------------- */

static void test_desired_hash_c_encoder_equals_spec_fake(void)
{
    input in = {0};
    add_row(&in, "310316675", 1, COOKIE);
    add_row(&in, "Odd Id/with \"quotes\" and ünïcödé", 1, COOKIE "u");
    input_done(&in);
    plan_result p;
    CHECK(plan(real_rules, &in, 1, -1, 5, &p) == 0);
    /* The same rules under stock Lua with spec/fakes/{json,hash}.lua (pure Lua). */
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    char *code = xasprintf(
        "package.path = '%s/spec/fakes/?.lua;%s/lua/rules/?.lua'\n"
        "package.loaded.json = require('json'); package.loaded.hash = require('hash')\n"
        "local rules = require('rules')\n"
        "local id, ns, image = ...\n"
        "local row = {account_id = id, customer_id = '00000000-0000-4000-8000-00000000c0de',\n"
        "  airbnb_cookie = 'x', x_client_version = 'unit-client-version-2024',\n"
        "  user_agent = 'Mozilla/5.0 (unit test agent)', is_active = true,\n"
        "  last_sync_at = '2025-10-23 05:00:00+00', updated_at = '2025-10-23 05:00:00+00',\n"
        "  credentials_generation = '0'}\n"
        "return row",
        SAO_SOURCE_DIR, SAO_SOURCE_DIR);
    for (int i = 0; i < in.nrows; i++) {
        const char *id = in.cells[i * NCOLS];
        const action *a = find(&p, ACT_CREATE, id);
        CHECK(a != NULL && a->desired_hash != NULL);
        lua_settop(L, 0);
        int ok = luaL_loadstring(L, code) == LUA_OK;
        lua_pushstring(L, id);
        lua_pushstring(L, cfg.namespace);
        lua_pushstring(L, cfg.worker_image);
        ok = ok && lua_pcall(L, 3, 1, 0) == LUA_OK;
        CHECK(ok);
        if (!ok) {
            fprintf(stderr, "  lua: %s\n", lua_tostring(L, -1));
            continue;
        }
        /* the row's credentials as the C side had them */
        lua_pushstring(L, in.cells[i * NCOLS + 2]);
        lua_setfield(L, -2, "airbnb_cookie");
        int row = lua_gettop(L);
        const char *chunk = "local row, ns, image = ...\n"
                            "local rules, json, hash = require('rules'), require('json'), require('hash')\n"
                            "local actions = rules.plan({row}, {}, {namespace = ns, worker_image = image, now = 0})\n"
                            "local obj = actions[1].object\n"
                            "return actions[1].desired_hash, hash.sha256(json.encode(obj))";
        ok = luaL_loadstring(L, chunk) == LUA_OK;
        lua_pushvalue(L, row);
        lua_pushstring(L, cfg.namespace);
        lua_pushstring(L, cfg.worker_image);
        ok = ok && lua_pcall(L, 3, 2, 0) == LUA_OK;
        CHECK(ok);
        if (!ok) {
            fprintf(stderr, "  lua: %s\n", lua_tostring(L, -1));
            continue;
        }
        CHECK_STR(lua_tostring(L, -2), a ? a->desired_hash : NULL);
        CHECK_STR(lua_tostring(L, -1), a ? a->desired_hash : NULL);
    }
    free(code);
    lua_close(L);
    rec_plan_free(&p);
    input_free(&in);
}

int main(void)
{
    setenv("OPERATOR_NAMESPACE", NS, 1);
    setenv("WORKER_IMAGE", "sync-airbnb:unit", 1);
    char *dir = xasprintf("%s/lua/rules", SAO_SOURCE_DIR);
    setenv("RULES_DIR", dir, 1);
    unsetenv("DATABASE_URL");
    char err[1024];
    if (config_load(&cfg, 0, NULL, NULL, NULL, err, sizeof err) < 0) {
        fprintf(stderr, "config: %s\n", err);
        return 1;
    }
    real_rules = rules_new(&cfg);
    if (rules_reload(real_rules, dir, err, sizeof err) < 0) {
        fprintf(stderr, "rules: %s\n", err);
        return 1;
    }
    free(dir);
    RUN(test_a_light_full_pass_hands_no_row_to_the_rules);
    RUN(test_invariant_1_database_error_never_deletes);
    RUN(test_invariant_2_empty_desired_set_is_held);
    RUN(test_invariant_2_deletes_are_budgeted);
    RUN(test_invariant_2_mass_deletes_wait_for_a_person);
    RUN(test_invariant_3_only_managed_deployments_in_our_namespace);
    RUN(test_invariant_4_credentials_never_leave);
    RUN(test_invariant_5_rule_error_affects_only_its_account);
    RUN(test_invariant_5_split_fallback_plans_each_once);
    RUN(test_invariant_6_every_write_is_logged_audited_and_posted);
    RUN(test_invariant_7_no_send_without_leadership);
    RUN(test_invariant_8_rules_cannot_make_it_write_a_credential);
    RUN(test_write_is_expected_until_its_echo);
    RUN(test_busy_account_is_not_planned_again);
    RUN(test_planner_settles_and_chunks);
    RUN(test_in_sync_rows_do_not_crowd_out_a_delete);
    RUN(test_desired_hash_c_encoder_equals_spec_fake);
    rules_free(real_rules);
    config_free(&cfg);
    char *cmd = xasprintf("rm -rf '%s'", poison_dir);
    if (poison_dir[0] && system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", poison_dir);
    free(cmd);
    return check_summary();
}
