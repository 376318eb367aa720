/* test_rollout: the rollout's wave state machine (rollout_wave.c) between
 * the real planner and the shipped rules, with in-memory rows, Deployments
 * and Pods: no database, no API server. DESIGN.md §5 invariant 10: a rules
 * change that breaks the app reaches at most its canary wave.
 *
 * The change is a new WORKER_IMAGE under lua/rules as shipped: the
 * "previous" config renders the workers as they run, the "new" one renders
 * every worker differently, so the planner wants to update all of them and
 * only the rollout stands between that plan and the fleet. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"
#include "check.h"
#include "config.h"
#include "json.h"
#include "reconcile.h"
#include "rollout_int.h"
#include "rows.h"
#include "rules.h"
#include "util.h"

#define NS "sao-unit"
#define NWORKERS 5

static config cfg_prev, cfg_new; /* WORKER_IMAGE sync-airbnb:unit / sync-airbnb:broken */
static rules *shipped;            /* lua/rules under cfg_new (the rules host renders with its own config) */
static rules *shipped_prev;       /* lua/rules under cfg_prev */
static rules *no_rollback;        /* lua/rules with rollback = false, soak_seconds = 0 */
static char tmp_dir[64];

static const char *const columns[] = {"account_id",   "customer_id", "airbnb_cookie", "x_client_version",
                                      "user_agent",   "is_active",   "last_sync_at",  "updated_at",
                                      "deleted_at",   "credentials_generation"};
#define NCOLS 10
static const char *const bool_columns[] = {"is_active", NULL};
static const char *const ids[] = {"101", "102", "103", "104", "105", "106"};

/* ---- the fleet ------------------------------------------------------------------- */

typedef struct fleet {
    const char *cells[8 * NCOLS];
    int nrows;
    acct_rows rows;
    strmap deployments;   /* name → obs_deploy (owned) */
    strmap pods;          /* name → obs_pod (owned) */
    char *prev_hash[8];   /* what the previous config renders, by row */
    char *name[8];        /* Deployment name, by row */
} fleet;

static void add_row(fleet *f, const char *id)
{
    const char **r = &f->cells[f->nrows++ * NCOLS];
    r[0] = id;
    r[1] = "00000000-0000-4000-8000-00000000c0de";
    r[2] = "unit-cookie-value";
    r[3] = "unit-client-version-2024";
    r[4] = "Mozilla/5.0 (unit test agent)";
    r[5] = "t";
    r[6] = "2025-10-23 05:00:00+00";
    r[7] = "2025-10-23 05:00:00+00";
    r[8] = NULL;
    r[9] = "0";
}

/* A worker Deployment as the watch brings it: rolled out, replicas Ready. */
static void observe_deployment(fleet *f, const char *name, const char *account_id, const char *applied_hash,
                               long generation)
{
    char *doc = xasprintf("{\"metadata\":{\"name\":\"%s\",\"namespace\":\"" NS "\",\"uid\":\"uid-%s\","
                          "\"generation\":%ld,\"resourceVersion\":\"%ld\",\"labels\":{"
                          "\"app.kubernetes.io/managed-by\":\"sync-airbnb-operator\"},\"annotations\":{"
                          "\"sync-airbnb.io/account-id\":\"%s\",\"sync-airbnb.io/applied-hash\":\"%s\"}},"
                          "\"status\":{\"observedGeneration\":%ld,\"replicas\":1,\"readyReplicas\":1,"
                          "\"updatedReplicas\":1,\"availableReplicas\":1}}",
                          name, name, generation, generation * 10, account_id, applied_hash, generation);
    json_value *v = json_parse(doc, strlen(doc), NULL, 0);
    obs_deploy *d = cache_parse_deployment(v);
    json_free(v);
    free(doc);
    obs_deploy *old = strmap_put(&f->deployments, d->name, d);
    if (old)
        obs_deploy_free(old);
}

/* A pod of worker `instance`, created now. waiting: e.g. "CrashLoopBackOff"
 * (not Ready), NULL: Ready. */
static void observe_pod(fleet *f, const char *pod, const char *instance, const char *waiting, int restarts)
{
    char created[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", &tm);
    char state[96] = "{\"running\":{}}";
    if (waiting)
        snprintf(state, sizeof state, "{\"waiting\":{\"reason\":\"%s\"}}", waiting);
    char *doc = xasprintf("{\"metadata\":{\"name\":\"%s\",\"creationTimestamp\":\"%s\",\"labels\":{"
                          "\"app.kubernetes.io/instance\":\"%s\"}},\"status\":{\"phase\":\"Running\","
                          "\"conditions\":[{\"type\":\"Ready\",\"status\":\"%s\"}],"
                          "\"containerStatuses\":[{\"restartCount\":%d,\"state\":%s}]}}",
                          pod, created, instance, waiting ? "False" : "True", restarts, state);
    json_value *v = json_parse(doc, strlen(doc), NULL, 0);
    obs_pod *p = cache_parse_pod(v);
    json_free(v);
    free(doc);
    obs_pod *old = strmap_put(&f->pods, p->name, p);
    if (old)
        obs_pod_free(old);
}

static int plan(rules *r, const config *cfg, fleet *f, plan_result *out)
{
    char err[512] = "";
    plan_input in = {.accounts = &f->rows, .observed = &f->deployments, .full = 1, .active_total = f->nrows,
                     .delete_allowance = 0, .settled = NULL, .max_rows = 0, .busy = NULL};
    int rc = rec_plan(r, cfg, &in, out, err, sizeof err);
    if (rc < 0)
        fprintf(stderr, "  rec_plan: %s\n", err);
    return rc;
}

static const action *find(const plan_result *p, act_kind kind, const char *account_id)
{
    for (size_t i = 0; i < p->n; i++)
        if (p->actions[i].kind == kind && p->actions[i].account_id &&
            strcmp(p->actions[i].account_id, account_id) == 0)
            return &p->actions[i];
    return NULL;
}

/* NWORKERS workers running what the previous config renders (row nworkers
 * onwards: accounts without a worker yet). */
static void fleet_init(fleet *f, int nrows, int nworkers)
{
    memset(f, 0, sizeof *f);
    f->deployments = (strmap)STRMAP_INIT;
    f->pods = (strmap)STRMAP_INIT;
    for (int i = 0; i < nrows; i++)
        add_row(f, ids[i]);
    rows_from_cells(&f->rows, f->nrows, NCOLS, columns, f->cells, bool_columns);
    plan_result born = {0};
    CHECK(plan(shipped_prev, &cfg_prev, f, &born) == 0);
    for (int i = 0; i < nrows; i++) {
        const action *a = find(&born, ACT_CREATE, ids[i]);
        CHECK(a != NULL);
        if (a == NULL)
            continue;
        f->prev_hash[i] = xstrdup(a->desired_hash);
        f->name[i] = xstrdup(a->name);
    }
    rec_plan_free(&born);
    for (int i = 0; i < nworkers; i++)
        if (f->name[i]) {
            observe_deployment(f, f->name[i], ids[i], f->prev_hash[i], 2);
            char *pod = xasprintf("%s-old", f->name[i]);
            observe_pod(f, pod, f->name[i], NULL, 0);
            free(pod);
        }
}

static void fleet_free(fleet *f)
{
    rows_free(&f->rows);
    cache_free_deployments(&f->deployments);
    cache_free_pods(&f->pods);
    for (int i = 0; i < 8; i++) {
        free(f->prev_hash[i]);
        free(f->name[i]);
    }
}

/* The writer sent action a and the Deployment controller rolled it out:
 * the object carries its hash, a new pod of it exists (waiting: see
 * observe_pod). */
static void rolled_out(fleet *f, const action *a, const char *waiting, int restarts)
{
    observe_deployment(f, a->name, a->account_id, a->desired_hash, 3);
    char *pod = xasprintf("%s-new", a->name);
    observe_pod(f, pod, a->name, waiting, restarts);
    free(pod);
}

/* ---- the rollout --------------------------------------------------------------- */

typedef struct reports {
    char event[8][32], name[8][96];
    int n;
} reports;

static void record(void *ud, const char *event, const char *name, const char *message, int warning)
{
    reports *r = ud;
    if (r->n < 8) {
        snprintf(r->event[r->n], sizeof r->event[r->n], "%s", event);
        snprintf(r->name[r->n], sizeof r->name[r->n], "%s", name ? name : "");
        r->n++;
    }
}

/* A rollout of the new config over the fleet's workers, as
 * rollout.c's start makes it (members by name, waves and policy from the
 * rules r), its canary reached. */
static rollout *begin(fleet *f, rules *r, reports *rep, strmap *enqueue)
{
    rollout *ro = rollout_new(&cfg_new, record, rep);
    ro->loaded = ro->has_row = 1;
    snprintf(ro->phase, sizeof ro->phase, "progressing");
    ro->to_version = xstrdup("new");
    ro->to_image = xstrdup(cfg_new.worker_image);
    ro->from_version = xstrdup("previous");
    ro->from_image = xstrdup(cfg_prev.worker_image);
    for (int i = 0; i < NWORKERS; i++) /* names sort as ids here */
        rollout_member_add(ro, f->name[i], ids[i], NULL, 1);
    ro->pol = rollout_read_policy(r);
    rollout_read_waves(ro, r, NWORKERS);
    rollout_reach_wave(ro, &f->deployments, enqueue);
    return ro;
}

/* Names of the workers that the actions in p write to. */
static int touches(const plan_result *p, const char *name)
{
    for (size_t i = 0; i < p->n; i++)
        if ((p->actions[i].kind == ACT_UPDATE || p->actions[i].kind == ACT_CREATE ||
             p->actions[i].kind == ACT_DELETE) && p->actions[i].name && strcmp(p->actions[i].name, name) == 0)
            return 1;
    return 0;
}

/* One pass: the new config plans everything; the rollout takes out what
 * waits for the previous rules; replan gets the accounts those must plan. */
static void pass(rollout *ro, fleet *f, plan_result *out, strmap *replan)
{
    CHECK(plan(shipped, &cfg_new, f, out) == 0);
    rollout_partition(ro, &f->deployments, out, replan);
}

/* ---- cases ------------------------------------------------------------------- */

static void test_invariant_10_broken_change_reaches_at_most_its_canary(void)
{
    fleet f;
    fleet_init(&f, NWORKERS + 1, NWORKERS); /* account 106 has no worker yet */
    reports rep = {0};
    strmap enqueue = STRMAP_INIT, replan = STRMAP_INIT;
    rollout *ro = begin(&f, shipped, &rep, &enqueue);

    /* The shipped policy: canary 1, then doubling; rollback on. */
    CHECK(ro->nwaves == 3 && ro->waves[0] == 1 && ro->waves[1] == 2 && ro->waves[2] == 2);
    CHECK(ro->pol.rollback == 1);
    CHECK(ro->reached == 1);
    CHECK(enqueue.len == 1 && strmap_get(&enqueue, "101") != NULL);

    /* The new config wants every worker updated; only the canary's goes. */
    plan_result p = {0};
    CHECK(plan(shipped, &cfg_new, &f, &p) == 0);
    for (int i = 0; i < NWORKERS; i++)
        CHECK(find(&p, ACT_UPDATE, ids[i]) != NULL);
    rollout_partition(ro, &f.deployments, &p, &replan);
    const action *canary = find(&p, ACT_UPDATE, "101");
    CHECK(canary != NULL);
    for (int i = 1; i < NWORKERS; i++)
        CHECK(!touches(&p, f.name[i]));
    CHECK(find(&p, ACT_CREATE, "106") != NULL); /* progressing: creates use the new rules */

    /* The canary's new pods crash. */
    if (canary)
        rolled_out(&f, canary, "CrashLoopBackOff", 3);
    rec_plan_free(&p);
    strmap_free(&enqueue);
    enqueue = (strmap)STRMAP_INIT;
    rollout_judge(ro, &f.deployments, &f.pods, &enqueue);
    CHECK_STR(ro->phase, "halted");
    CHECK_CONTAINS(ro->halt_reason, f.name[0]);
    CHECK_CONTAINS(ro->halt_reason, "CrashLoopBackOff");
    CHECK(rep.n >= 1 && strcmp(rep.event[rep.n - 1], "RolloutHalted") == 0 &&
          strcmp(rep.name[rep.n - 1], f.name[0]) == 0);
    /* Rolled back: not reached any more, planned again. */
    CHECK(ro->reached == 0);
    CHECK(strmap_get(&enqueue, "101") != NULL);
    CHECK(ro->wave == 0); /* no next wave */

    /* Every later pass while halted: no worker gets the new render, the
     * canary goes to the previous rules, and so does the create of 106. */
    strmap_free(&replan);
    replan = (strmap)STRMAP_INIT;
    pass(ro, &f, &p, &replan);
    for (int i = 0; i < NWORKERS; i++)
        CHECK(!touches(&p, f.name[i]));
    CHECK(!touches(&p, f.name[5]));
    CHECK(strmap_get(&replan, "101") != NULL);
    CHECK(strmap_get(&replan, "106") != NULL);
    rec_plan_free(&p);

    /* What the previous rules make of the canary: its Deployment as it was. */
    plan_result back = {0};
    CHECK(plan(shipped_prev, &cfg_prev, &f, &back) == 0);
    const action *undo = find(&back, ACT_UPDATE, "101");
    CHECK(undo != NULL && strcmp(undo->desired_hash, f.prev_hash[0]) == 0);
    CHECK(undo != NULL && ro->members[0].admit_hash && strcmp(undo->desired_hash, ro->members[0].admit_hash) == 0);
    rec_plan_free(&back);

    rollout_free(ro);
    strmap_free(&enqueue);
    strmap_free(&replan);
    fleet_free(&f);
}

static void test_invariant_10_halt_without_rollback_keeps_the_canary(void)
{
    CHECK(no_rollback != NULL);
    if (no_rollback == NULL)
        return;
    fleet f;
    fleet_init(&f, NWORKERS, NWORKERS);
    reports rep = {0};
    strmap enqueue = STRMAP_INIT, replan = STRMAP_INIT;
    rollout *ro = begin(&f, no_rollback, &rep, &enqueue);
    CHECK(ro->pol.rollback == 0 && ro->pol.soak_s == 0);

    plan_result p = {0};
    pass(ro, &f, &p, &replan);
    const action *canary = find(&p, ACT_UPDATE, "101");
    CHECK(canary != NULL);
    if (canary)
        rolled_out(&f, canary, NULL, 4); /* Ready, but restarted more than max_restarts (1) */
    rec_plan_free(&p);
    strmap_free(&enqueue);
    enqueue = (strmap)STRMAP_INIT;
    rollout_judge(ro, &f.deployments, &f.pods, &enqueue);
    CHECK_STR(ro->phase, "halted");
    CHECK_CONTAINS(ro->halt_reason, "restarted 4 times");
    CHECK(ro->reached == 1); /* the canary stays on the new rules */
    CHECK(enqueue.len == 0);

    strmap_free(&replan);
    replan = (strmap)STRMAP_INIT;
    pass(ro, &f, &p, &replan);
    for (int i = 1; i < NWORKERS; i++)
        CHECK(!touches(&p, f.name[i]));
    CHECK(strmap_get(&replan, "101") == NULL);
    CHECK(find(&p, ACT_UPDATE, "101") == NULL); /* already on the new render: nothing to do */
    rec_plan_free(&p);

    rollout_free(ro);
    strmap_free(&enqueue);
    strmap_free(&replan);
    fleet_free(&f);
}

static void test_invariant_10_canary_not_ready_by_the_deadline_halts(void)
{
    fleet f;
    fleet_init(&f, NWORKERS, NWORKERS);
    reports rep = {0};
    strmap enqueue = STRMAP_INIT;
    rollout *ro = begin(&f, shipped, &rep, &enqueue);
    /* The update never arrived; the wave began longer ago than the deadline. */
    ro->wave_started_ms = util_wall_ms() - (uint64_t)(ro->pol.ready_timeout_s + 5) * 1000u;
    rollout_judge(ro, &f.deployments, &f.pods, &enqueue);
    CHECK_STR(ro->phase, "halted");
    CHECK_CONTAINS(ro->halt_reason, "not updated and Ready within");
    CHECK(ro->reached == 0);
    rollout_free(ro);
    strmap_free(&enqueue);
    fleet_free(&f);
}

/* A reason the kubelet retries by itself (seen on the real node: "failed to
 * sync secret cache" on a canary Ready 3 s later) fails the wave only once
 * it lasted waiting_seconds; a back-off fails it at once. */
static void test_transient_config_error_halts_only_when_it_lasts(void)
{
    fleet f;
    fleet_init(&f, NWORKERS, NWORKERS);
    reports rep = {0};
    strmap enqueue = STRMAP_INIT, replan = STRMAP_INIT;
    rollout *ro = begin(&f, shipped, &rep, &enqueue);
    CHECK(ro->pol.waiting_s == 30); /* the shipped policy */
    plan_result p = {0};
    pass(ro, &f, &p, &replan);
    const action *canary = find(&p, ACT_UPDATE, "101");
    CHECK(canary != NULL);
    if (canary)
        rolled_out(&f, canary, "CreateContainerConfigError", 0);
    rec_plan_free(&p);
    rollout_judge(ro, &f.deployments, &f.pods, &enqueue);
    CHECK_STR(ro->phase, "progressing");
    CHECK(ro->reached == 1);
    /* The same reason, first seen longer ago than waiting_seconds. */
    char *pod = xasprintf("%s-new", f.name[0]);
    obs_pod *op = strmap_get(&f.pods, pod);
    CHECK(op != NULL && op->waiting_since_ms != 0);
    if (op)
        op->waiting_since_ms = util_now_ms() - 31000u;
    free(pod);
    rollout_judge(ro, &f.deployments, &f.pods, &enqueue);
    CHECK_STR(ro->phase, "halted");
    CHECK_CONTAINS(ro->halt_reason, "CreateContainerConfigError for 31 s");
    rollout_free(ro);
    strmap_free(&enqueue);
    strmap_free(&replan);
    fleet_free(&f);
}

/* The control: the same steps with a healthy canary go on to wave 2, so the
 * halts above come from the failure, not from the rollout standing still. */
static void test_healthy_canary_opens_the_next_wave(void)
{
    CHECK(no_rollback != NULL); /* soak_seconds = 0 */
    if (no_rollback == NULL)
        return;
    fleet f;
    fleet_init(&f, NWORKERS, NWORKERS);
    reports rep = {0};
    strmap enqueue = STRMAP_INIT, replan = STRMAP_INIT;
    rollout *ro = begin(&f, no_rollback, &rep, &enqueue);
    plan_result p = {0};
    pass(ro, &f, &p, &replan);
    const action *canary = find(&p, ACT_UPDATE, "101");
    CHECK(canary != NULL);
    if (canary)
        rolled_out(&f, canary, NULL, 0);
    rec_plan_free(&p);
    /* Updated but not judged yet: the first look starts the soak (0 s). */
    rollout_judge(ro, &f.deployments, &f.pods, &enqueue);
    if (ro->reached == 1)
        rollout_judge(ro, &f.deployments, &f.pods, &enqueue);
    CHECK_STR(ro->phase, "progressing");
    CHECK(ro->wave == 1 && ro->reached == 3);
    CHECK(strmap_get(&enqueue, "102") && strmap_get(&enqueue, "103") && !strmap_get(&enqueue, "104"));
    strmap_free(&replan);
    replan = (strmap)STRMAP_INIT;
    pass(ro, &f, &p, &replan);
    CHECK(find(&p, ACT_UPDATE, "102") && find(&p, ACT_UPDATE, "103"));
    CHECK(!touches(&p, f.name[3]) && !touches(&p, f.name[4]));
    rec_plan_free(&p);
    rollout_free(ro);
    strmap_free(&enqueue);
    strmap_free(&replan);
    fleet_free(&f);
}

/* ---- setup ------------------------------------------------------------------- */

/* lua/rules copied to tmp_dir with rollback off and no soak. */
static rules *rules_without_rollback(void)
{
    static const char *const files[] = {"deployment.lua", "examples.lua", "fingerprint.lua", "naming.lua",
                                        "plan.lua", "rollout.lua", "rules.lua", "validate.lua"};
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/sao-test-rollout-XXXXXX");
    if (mkdtemp(tmp_dir) == NULL)
        return NULL;
    int ok = 1;
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char *src = xasprintf("%s/lua/rules/%s", SAO_SOURCE_DIR, files[i]);
        char *dst = xasprintf("%s/%s", tmp_dir, files[i]);
        size_t len = 0;
        char *text = util_read_file(src, &len);
        buf out = {0};
        if (text && strcmp(files[i], "rollout.lua") == 0) {
            char *a = strstr(text, "rollback = true,"), *b = strstr(text, "soak_seconds = 30,");
            ok = ok && a && b;
            if (a && b) {
                /* In place, same length: the comment's padding takes the ','. */
                memcpy(a, "rollback = false,", 17);
                memcpy(b, "soak_seconds = 0, ", 18);
            }
        }
        if (text)
            buf_append(&out, text, len);
        FILE *fp = fopen(dst, "w");
        ok = ok && text && fp && fwrite(out.data, 1, out.len, fp) == out.len;
        if (fp)
            fclose(fp);
        buf_free(&out);
        free(text);
        free(src);
        free(dst);
    }
    if (!ok)
        return NULL;
    rules *r = rules_new(&cfg_new);
    char err[1024];
    if (rules_reload(r, tmp_dir, err, sizeof err) < 0) {
        fprintf(stderr, "  rules without rollback: %s\n", err);
        rules_free(r);
        return NULL;
    }
    return r;
}

static int load_config(config *c, const char *image, char *err, size_t errlen)
{
    setenv("WORKER_IMAGE", image, 1);
    return config_load(c, 0, NULL, NULL, NULL, err, errlen);
}

int main(void)
{
    setenv("OPERATOR_NAMESPACE", NS, 1);
    char *dir = xasprintf("%s/lua/rules", SAO_SOURCE_DIR);
    setenv("RULES_DIR", dir, 1);
    unsetenv("DATABASE_URL");
    char err[1024];
    if (load_config(&cfg_prev, "sync-airbnb:unit", err, sizeof err) < 0 ||
        load_config(&cfg_new, "sync-airbnb:broken", err, sizeof err) < 0) {
        fprintf(stderr, "config: %s\n", err);
        return 1;
    }
    shipped = rules_new(&cfg_new);
    shipped_prev = rules_new(&cfg_prev);
    if (rules_reload(shipped, dir, err, sizeof err) < 0 || rules_reload(shipped_prev, dir, err, sizeof err) < 0) {
        fprintf(stderr, "rules: %s\n", err);
        return 1;
    }
    free(dir);
    no_rollback = rules_without_rollback();
    RUN(test_invariant_10_broken_change_reaches_at_most_its_canary);
    RUN(test_invariant_10_halt_without_rollback_keeps_the_canary);
    RUN(test_invariant_10_canary_not_ready_by_the_deadline_halts);
    RUN(test_transient_config_error_halts_only_when_it_lasts);
    RUN(test_healthy_canary_opens_the_next_wave);
    rules_free(shipped);
    rules_free(shipped_prev);
    rules_free(no_rollback);
    config_free(&cfg_prev);
    config_free(&cfg_new);
    if (tmp_dir[0]) {
        char *cmd = xasprintf("rm -rf '%s'", tmp_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "cannot remove %s\n", tmp_dir);
        free(cmd);
    }
    return check_summary();
}
