/* rollout_wave: the rollout's wave state machine (rollout_int.h). No I/O:
 * it reads Deployments and Pods as the caller hands them over, reports
 * through ro->report, and leaves storing the state to rollout_store.c; so
 * tests/c/test_rollout.c drives it without a database or an API server. */
#include "rollout_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"

void rollout_members_clear(rollout *ro)
{
    for (size_t i = 0; i < ro->nmembers; i++) {
        free(ro->members[i].name);
        free(ro->members[i].account_id);
        free(ro->members[i].admit_hash);
    }
    free(ro->members);
    ro->members = NULL;
    ro->nmembers = ro->members_cap = 0;
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

void rollout_member_add(rollout *ro, const char *name, const char *account_id, const char *admit_hash,
                       int on_from)
{
    if (ro->nmembers == ro->members_cap) {
        /* Grown by doubling: 100,000 members are 17 moves, each re-indexed. */
        ro->members_cap = ro->members_cap ? ro->members_cap * 2 : 16;
        ro->members = xrealloc(ro->members, ro->members_cap * sizeof *ro->members);
        members_index(ro); /* the array moved */
    }
    rollout_member *m = &ro->members[ro->nmembers++];
    m->name = xstrdup(name);
    m->account_id = xstrdup(account_id ? account_id : "");
    m->admit_hash = admit_hash ? xstrdup(admit_hash) : NULL;
    m->on_from = on_from;
    strmap_put(&ro->by_name, m->name, m);
}

static int member_cmp(const void *a, const void *b)
{
    return strcmp(((const rollout_member *)a)->name, ((const rollout_member *)b)->name);
}

void rollout_members_sort(rollout *ro)
{
    if (ro->nmembers > 1)
        qsort(ro->members, ro->nmembers, sizeof *ro->members, member_cmp);
    members_index(ro);
}

void rollout_from_unload(rollout *ro)
{
    rules_free(ro->from);
    ro->from = NULL;
}

void rollout_state_clear(rollout *ro)
{
    rollout_search_free(ro);
    rollout_members_clear(ro);
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
    rollout_from_unload(ro);
}

int rollout_phase_is(const rollout *ro, const char *p)
{
    return strcmp(ro->phase, p) == 0;
}

/* First member of the current wave. */
static int wave_start(const rollout *ro)
{
    int s = 0;
    for (int i = 0; i < ro->wave && (size_t)i < ro->nwaves; i++)
        s += ro->waves[i];
    return s;
}

void rollout_short_version(const char *v, char out[13])
{
    snprintf(out, 13, "%s", v ? v : "?");
}

/* Reaches the members of the current wave: their applied hash now is what
 * "updated" is judged against; their accounts are planned again. */
/* ---- reaching and finishing waves ------------------------------------------- */

void rollout_reach_wave(rollout *ro, strmap *deployments, strmap *enqueue)
{
    int start = wave_start(ro);
    int end = start + ((size_t)ro->wave < ro->nwaves ? ro->waves[ro->wave] : 0);
    if ((size_t)end > ro->nmembers)
        end = (int)ro->nmembers;
    for (int i = start; i < end; i++) {
        rollout_member *m = &ro->members[i];
        if (m->admit_hash == NULL) {
            const obs_deploy *d = strmap_get(deployments, m->name);
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

void rollout_complete(rollout *ro, const char *why)
{
    char v[13];
    rollout_short_version(ro->to_version, v);
    char *msg = xasprintf("rules %s (image %s): %s", v, ro->to_image, why);
    ro->report(ro->ud, "RolloutComplete", NULL, msg, 0);
    free(msg);
    snprintf(ro->phase, sizeof ro->phase, "complete");
    rollout_members_clear(ro);
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
    rollout_from_unload(ro);
    ro->dirty = 1;
}

/* ---- judging a wave -------------------------------------------------------- */

static void halt(rollout *ro, const rollout_member *m, const char *why, strmap *enqueue)
{
    char v[13];
    rollout_short_version(ro->to_version, v);
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
static const char *pod_failure(const rollout *ro, strmap *pods, const rollout_member *m, char *why, size_t whylen)
{
    size_t it = 0;
    void *v;
    long long since = (long long)(ro->wave_started_ms / 1000) - 1;
    while (strmap_next(pods, &it, NULL, &v)) {
        const obs_pod *p = v;
        if (p->instance == NULL || strcmp(p->instance, m->name) != 0)
            continue;
        if (p->created_unix_s != 0 && p->created_unix_s < since)
            continue;
        if (p->phase && strcmp(p->phase, "Failed") == 0)
            snprintf(why, whylen, "pod %s Failed", p->name);
        else if (p->waiting_reason && (strcmp(p->waiting_reason, "CrashLoopBackOff") == 0 ||
                                       strcmp(p->waiting_reason, "ImagePullBackOff") == 0))
            snprintf(why, whylen, "pod %s %s", p->name, p->waiting_reason);
        else if (p->waiting_reason && (strcmp(p->waiting_reason, "ErrImagePull") == 0 ||
                                       strcmp(p->waiting_reason, "CreateContainerConfigError") == 0) &&
                 util_now_ms() - p->waiting_since_ms >= (uint64_t)ro->pol.waiting_s * 1000u)
            /* The kubelet retries these by itself, and a transient one (a
             * Secret not yet in its cache, a registry hiccup) clears in
             * seconds: only one that lasts fails the wave. */
            snprintf(why, whylen, "pod %s %s for %d s", p->name, p->waiting_reason,
                     (int)((util_now_ms() - p->waiting_since_ms) / 1000u));
        else if (p->restarts > ro->pol.max_restarts)
            snprintf(why, whylen, "pod %s restarted %d times (at most %d)", p->name, p->restarts,
                     ro->pol.max_restarts);
        else
            continue;
        return why;
    }
    return NULL;
}

static int member_healthy(const rollout *ro, strmap *deployments, strmap *pods, const rollout_member *m)
{
    const obs_deploy *d = strmap_get(deployments, m->name);
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
    while (strmap_next(pods, &it, NULL, &v)) {
        const obs_pod *p = v;
        if (p->instance && strcmp(p->instance, m->name) == 0 && p->ready &&
            (p->created_unix_s == 0 || p->created_unix_s >= since))
            ready++;
    }
    if (ready < d->replicas)
        log_debug("rollout: waiting for Ready pods of the new template", "deployment", m->name, NULL);
    return ready >= d->replicas;
}

void rollout_judge(rollout *ro, strmap *deployments, strmap *pods, strmap *enqueue)
{
    int start = wave_start(ro);
    int all = 1;
    char why[256];
    for (int i = start; i < ro->reached; i++) {
        const rollout_member *m = &ro->members[i];
        if (pod_failure(ro, pods, m, why, sizeof why)) {
            halt(ro, m, why, enqueue);
            return;
        }
        if (!member_healthy(ro, deployments, pods, m))
            all = 0;
    }
    uint64_t now = util_now_ms();
    if (!all) {
        ro->healthy_since_ms = 0;
        if (util_wall_ms() > ro->wave_started_ms + (uint64_t)ro->pol.ready_timeout_s * 1000u) {
            for (int i = start; i < ro->reached; i++)
                if (!member_healthy(ro, deployments, pods, &ro->members[i])) {
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
        rollout_complete(ro, "every changed worker updated and Ready");
        return;
    }
    ro->wave++;
    if ((size_t)ro->wave >= ro->nwaves) { /* members added since (created while halted) */
        ro->waves = xrealloc(ro->waves, (ro->nwaves + 1) * sizeof *ro->waves);
        ro->waves[ro->nwaves++] = (int)ro->nmembers - ro->reached;
    }
    rollout_reach_wave(ro, deployments, enqueue);
    char msg[160];
    snprintf(msg, sizeof msg, "wave %d of %zu: %d workers (%d of %zu reached)", ro->wave + 1, ro->nwaves,
             ro->waves[ro->wave], ro->reached, ro->nmembers);
    log_info("rollout: next wave", "detail", msg, NULL);
}

/* A person's resume or abort (sync-airbnb-operator rollout resume|abort). */
void rollout_apply_request(rollout *ro, const char *req, strmap *deployments, strmap *enqueue)
{
    if (!*req)
        return;
    char v[13];
    rollout_short_version(ro->to_version, v);
    if (strcmp(req, "resume") == 0 && (rollout_phase_is(ro, "halted") || rollout_phase_is(ro, "aborted")) && ro->from) {
        snprintf(ro->phase, sizeof ro->phase, "progressing");
        free(ro->halt_reason);
        ro->halt_reason = NULL;
        rollout_reach_wave(ro, deployments, enqueue);
        char *msg = xasprintf("rules %s: rollout resumed by a person at wave %d of %zu", v, ro->wave + 1, ro->nwaves);
        ro->report(ro->ud, "RolloutResumed", NULL, msg, 0);
        free(msg);
    } else if (strcmp(req, "abort") == 0 && !rollout_phase_is(ro, "complete") && ro->from) {
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

/* ---- which planned actions wait for the previous rules ------------------------ */

void rollout_partition(rollout *ro, strmap *observed, plan_result *plan, strmap *replan)
{
    int creates_too = !rollout_phase_is(ro, "progressing");
    strmap reached = STRMAP_BORROWED;
    for (int i = 0; i < ro->reached && (size_t)i < ro->nmembers; i++)
        strmap_put(&reached, ro->members[i].name, (void *)1);
    plan_result dropped = {0};
    size_t keep = 0;
    for (size_t i = 0; i < plan->n; i++) {
        action *a = &plan->actions[i];
        const rollout_member *m = a->name ? strmap_get(&ro->by_name, a->name) : NULL;
        int held_back = a->account_id && a->name &&
                        ((a->kind == ACT_UPDATE && m && !strmap_get(&reached, a->name)) ||
                         (a->kind == ACT_CREATE && creates_too));
        if (held_back) {
            /* A member a superseded rollout had already moved is left as it
             * is until its wave: the previous rules would move it back. */
            if (a->kind == ACT_CREATE || m->on_from || m->admit_hash)
                strmap_put(replan, a->account_id, (void *)1);
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
        const rollout_member *m = &ro->members[i];
        const obs_deploy *d = m->admit_hash ? strmap_get(observed, m->name) : NULL;
        if (d && *m->account_id && d->applied_hash && strcmp(d->applied_hash, m->admit_hash) != 0)
            strmap_put(replan, m->account_id, (void *)1);
    }
    strmap_free(&reached);
}
