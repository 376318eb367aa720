/* wstatus: the one derivation of a worker's reason (run's worker_status rows,
 * /metrics and `status` all use it) and the sum of a worker's pods. No server. */
#include <stdlib.h>

#include "check.h"
#include "wstatus.h"

static obs_pod pod(const char *phase, int ready, int restarts, const char *waiting)
{
    obs_pod p = {.name = "p", .instance = "sync-airbnb-worker-1", .phase = (char *)phase,
                 .waiting_reason = (char *)waiting, .ready = ready, .restarts = restarts};
    return p;
}

static void test_pods_sum_takes_the_most_advanced_pod(void)
{
    wstatus_pods s = {0};
    obs_pod failed = pod("Failed", 0, 2, NULL), pending = pod("Pending", 0, 0, "ContainerCreating");
    wstatus_pods_add(&s, &failed);
    CHECK_STR(s.phase, "Failed");
    wstatus_pods_add(&s, &pending); /* the replacement of a failed pod: it is starting */
    CHECK_STR(s.phase, "Pending");
    CHECK_STR(s.waiting_reason, "ContainerCreating");
    obs_pod running = pod("Running", 1, 1, NULL);
    wstatus_pods_add(&s, &running);
    CHECK_STR(s.phase, "Running");
    CHECK(s.waiting_reason == NULL);
    CHECK(s.count == 3 && s.ready == 1 && s.restarts == 3);
}

static enum wstatus_reason derive(wstatus_input in, const char **failure)
{
    return wstatus_derive(&in, failure);
}

static void test_reasons_in_order_of_precedence(void)
{
    obs_deploy d = {.name = "sync-airbnb-worker-1"};
    obs_pod crash = pod("Running", 0, 4, "CrashLoopBackOff");
    wstatus_pods crashing = {0};
    wstatus_pods_add(&crashing, &crash);
    const char *f = "x";
    wstatus_input ok = {.account_exists = 1, .active = 1, .d = &d};
    CHECK(derive(ok, &f) == WS_OK && f == NULL);
    CHECK(wstatus_reason_name(WS_OK) == NULL);

    wstatus_input in = ok;
    in.pods = &crashing;
    CHECK(derive(in, &f) == WS_FAILING);
    CHECK_STR(f, "CrashLoopBackOff");
    in.error = "update sync-airbnb-worker-1 failed: 422";
    CHECK(derive(in, &f) == WS_FAILING);
    CHECK_STR(f, "update sync-airbnb-worker-1 failed: 422"); /* the operator's own error first */
    in.rollout = 1;
    CHECK(derive(in, &f) == WS_ROLLOUT && f == NULL);
    in.held = 1;
    CHECK(derive(in, &f) == WS_HELD);
    in.paused = 1;
    CHECK(derive(in, &f) == WS_PAUSED);
    CHECK_STR(wstatus_reason_name(WS_PAUSED), "paused");

    wstatus_input off = {.account_exists = 1, .active = 0};
    CHECK(derive(off, &f) == WS_INACTIVE);
    CHECK_STR(wstatus_reason_name(WS_INACTIVE), "inactive");
    off.deleted = 1;
    off.active = 1; /* soft-deleted wins over is_active, as in the app */
    CHECK(derive(off, &f) == WS_SOFT_DELETED);
    CHECK_STR(wstatus_reason_name(WS_SOFT_DELETED), "soft_deleted");
    wstatus_input orphan = {.account_exists = 0, .d = &d};
    CHECK(derive(orphan, &f) == WS_NO_ACCOUNT);
}

static void test_starting_pods_are_not_failing(void)
{
    obs_deploy d = {.name = "sync-airbnb-worker-1"};
    const char *f;
    const char *starting[] = {"ContainerCreating", "PodInitializing", NULL};
    for (int i = 0; starting[i]; i++) {
        obs_pod p = pod("Pending", 0, 0, starting[i]);
        wstatus_pods s = {0};
        wstatus_pods_add(&s, &p);
        wstatus_input in = {.account_exists = 1, .active = 1, .d = &d, .pods = &s};
        CHECK(derive(in, &f) == WS_OK);
    }
    obs_pod gone = pod("Failed", 0, 0, NULL);
    wstatus_pods s = {0};
    wstatus_pods_add(&s, &gone);
    wstatus_input in = {.account_exists = 1, .active = 1, .d = &d, .pods = &s};
    CHECK(derive(in, &f) == WS_FAILING);
    CHECK_STR(f, "pod failed");
    /* no Deployment: its pods (being deleted) say nothing about a worker */
    in.d = NULL;
    CHECK(derive(in, &f) == WS_OK);
}

int main(void)
{
    RUN(test_pods_sum_takes_the_most_advanced_pod);
    RUN(test_reasons_in_order_of_precedence);
    RUN(test_starting_pods_are_not_failing);
    return check_summary();
}
