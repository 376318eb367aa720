/* The pause (worker_state.h) as a rule of the safety filter (safety.h):
 * driven with C values, no server. A worker Deployment annotated
 * sync-airbnb.io/paused: "true" gets no update and no delete, only a hold
 * marked paused that names the way back; other values do not pause; the
 * delete budget is not spent on it. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "json.h"
#include "safety.h"
#include "worker_state.h"

static obs_deploy *deployment(const char *name, const char *account, const char *paused)
{
    char *text = xasprintf("{\"metadata\":{\"name\":\"%s\",\"namespace\":\"w\",\"uid\":\"uid-%s\","
                           "\"labels\":{\"" MANAGED_BY_LABEL "\":\"" MANAGED_BY_VALUE "\"},"
                           "\"annotations\":{\"" ACCOUNT_ANNOTATION "\":\"%s\"%s%s%s}},\"spec\":{\"replicas\":1}}",
                           name, name, account, paused ? ",\"" PAUSED_ANNOTATION "\":\"" : "",
                           paused ? paused : "", paused ? "\"" : "");
    json_value *v = json_parse(text, strlen(text), NULL, 0);
    obs_deploy *d = cache_parse_deployment(v);
    json_free(v);
    free(text);
    return d;
}

static void test_paused_annotation_values(void)
{
    obs_deploy *yes = deployment("a", "1", "true"), *no = deployment("b", "2", "false"),
               *odd = deployment("c", "3", "yes"), *none = deployment("d", "4", NULL);
    CHECK(wstate_paused(yes) == 1);
    CHECK(wstate_paused(no) == 0);
    CHECK(wstate_paused(odd) == 0); /* only "true", as Flux and Argo CD read theirs */
    CHECK(wstate_paused(none) == 0);
    CHECK(wstate_paused(NULL) == 0);
    strmap m = STRMAP_INIT;
    strmap_put(&m, "a", yes);
    strmap_put(&m, "b", no);
    strmap_put(&m, "d", none);
    CHECK(wstate_count_paused(&m) == 1);
    strmap_free(&m);
    obs_deploy_free(yes);
    obs_deploy_free(no);
    obs_deploy_free(odd);
    obs_deploy_free(none);
}

static int encode_body(void *ud, const char **json, size_t *len, char *err, size_t errlen)
{
    *json = ud;
    *len = strlen(ud);
    return 0;
}

static void test_safety_filter_holds_paused_workers(void)
{
    config cfg = {0};
    cfg.namespace = "w";
    cfg.delete_budget = 5;
    const char *names[] = {"account_id", "is_active"};
    const char *cells[] = {"1", "t", "2", "f"};
    const char *bools[] = {"is_active", NULL};
    acct_rows rows;
    rows_from_cells(&rows, 2, 2, names, cells, bools);
    strmap by_id = STRMAP_INIT, observed = STRMAP_INIT;
    strmap_put(&by_id, "1", (void *)(intptr_t)1);
    strmap_put(&by_id, "2", (void *)(intptr_t)2);
    obs_deploy *p1 = deployment("worker-1", "1", "true"), *p2 = deployment("worker-2", "2", "true");
    obs_deploy *free3 = deployment("worker-3", "3", NULL);
    strmap_put(&observed, "worker-1", p1);
    strmap_put(&observed, "worker-2", p2);
    strmap_put(&observed, "worker-3", free3);
    safety_ctx s = {.cfg = &cfg, .rows = &rows, .id_col = 0, .by_id = &by_id, .observed = &observed};
    plan_result out;
    memset(&out, 0, sizeof out);

    const char *body = "{\"apiVersion\":\"apps/v1\",\"kind\":\"Deployment\",\"metadata\":{\"name\":\"worker-1\"},"
                       "\"spec\":{\"selector\":{\"matchLabels\":{\"a\":\"b\"}},\"template\":{\"metadata\":"
                       "{\"labels\":{\"a\":\"b\"}},\"spec\":{\"containers\":[{\"name\":\"w\",\"image\":\"i\"}]}}}}";
    proposal update = {.kind = "update", .account_id = "1", .name = "worker-1", .reason = "spec changed",
                       .desired_hash = "h", .encode = encode_body, .encode_ud = (void *)body};
    proposal create = update;
    create.kind = "create"; /* it exists: an apply, and paused all the same */
    proposal del = {.kind = "delete", .account_id = "2", .name = "worker-2", .reason = "account not active"};
    proposal del3 = {.kind = "delete", .account_id = "3", .name = "worker-3", .reason = "account not active"};
    safety_admit(&s, &update, &out);
    safety_admit(&s, &create, &out);
    safety_admit(&s, &del, &out);
    safety_admit(&s, &del3, &out);
    CHECK(out.n == 4);
    for (int i = 0; i < 3 && out.n == 4; i++) {
        CHECK(out.actions[i].kind == ACT_HOLD);
        CHECK(out.actions[i].paused == 1);
        CHECK(out.actions[i].body == NULL);
        CHECK_CONTAINS(out.actions[i].reason, "paused (" PAUSED_ANNOTATION "=true)");
    }
    if (out.n == 4) {
        CHECK_CONTAINS(out.actions[0].reason, "kubectl annotate deployment worker-1 " PAUSED_ANNOTATION "- resumes it");
        CHECK_STR(out.actions[2].account_id, "2");
        CHECK_CONTAINS(out.actions[2].reason, "the worker is kept");
        CHECK_STR(out.actions[2].uid, "uid-worker-2");
        CHECK(out.actions[3].kind == ACT_DELETE); /* not paused: deleted as before */
    }
    CHECK(out.held_deletes == 0); /* a paused worker is not a held delete (no DeleteHeld alert) */

    /* Not paused: applied, with the worker's state for kubectl in the object itself. */
    p1->nann = 1; /* drop the paused annotation (the account id stays first) */
    s.rules_version = "0123456789ab";
    update.reason = "credentials changed";
    safety_admit(&s, &update, &out);
    CHECK(out.n == 5 && out.actions[4].kind == ACT_UPDATE);
    if (out.n == 5) {
        json_value *obj = json_parse(out.actions[4].body, strlen(out.actions[4].body), NULL, 0);
        const json_value *ann = json_path(obj, "metadata", "annotations", NULL);
        CHECK_STR(json_string(json_get(ann, LAST_ACTION_ANNOTATION)), "update");
        CHECK_STR(json_string(json_get(ann, LAST_REASON_ANNOTATION)), "credentials changed");
        CHECK_STR(json_string(json_get(ann, RULES_VERSION_ANNOTATION)), "0123456789ab");
        const char *at = json_string(json_get(ann, LAST_AT_ANNOTATION));
        CHECK(at && strlen(at) == 20 && at[10] == 'T' && at[19] == 'Z');
        CHECK_STR(json_string(json_get(ann, APPLIED_HASH_ANNOTATION)), "h");
        json_free(obj);
    }
    /* the delete budget goes to the deletes that can happen */
    cfg.delete_budget = 1;
    safety_hold_deletes(&cfg, &out, 1, 1);
    CHECK(out.n == 5 && out.actions[3].kind == ACT_DELETE);

    rec_plan_free(&out);
    strmap_free(&by_id);
    strmap_free(&observed);
    obs_deploy_free(p1);
    obs_deploy_free(p2);
    obs_deploy_free(free3);
    rows_free(&rows);
}

int main(void)
{
    RUN(test_paused_annotation_values);
    RUN(test_safety_filter_holds_paused_workers);
    return check_summary();
}
