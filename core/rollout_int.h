/* rollout_int: what the rollout's files share (rollout.h is the API).
 *
 *   rollout.c        the API: starting a rollout (who changes, the rules'
 *                    policy and waves), the tick, planning the workers not
 *                    reached with the previous rules, status and /readyz
 *   rollout_wave.c   the wave state machine, without I/O: reaching a wave,
 *                    judging it from Deployments and Pods, halting, rolling
 *                    back, a person's resume/abort, which planned actions
 *                    wait for the previous rules (tests/c/test_rollout.c)
 *   rollout_store.c  the state row in sync_airbnb_operator.rollout and the
 *                    rules files kept in it
 *
 * Not for other subsystems: they use rollout.h. */
#ifndef ROLLOUT_INT_H
#define ROLLOUT_INT_H

#include "rollout.h"

typedef struct rollout_member {
    char *name, *account_id;
    char *admit_hash; /* its applied hash when it was reached; NULL: not reached yet */
    int on_from;      /* at the start it ran what the previous rules render (not a version
                       * a superseded rollout had moved it to): they may plan it */
} rollout_member;

typedef struct rollout_policy {
    int soak_s, ready_timeout_s, max_restarts, rollback;
    int waiting_s; /* how long a pod may wait with a reason the kubelet retries (waiting_seconds) */
} rollout_policy;

/* lua/rules/rollout.lua's defaults, used on any doubt about the rules' own. */
#define ROLLOUT_POLICY_DEFAULT ((rollout_policy){30, 300, 1, 1, 30})

struct rollout {
    const config *cfg;
    rollout_report_fn report; /* NULL: a read-only view (`plan`, `status`) */
    void *ud;

    int loaded, has_row, dirty;
    uint64_t last_read_ms;
    char phase[16]; /* complete | progressing | halted | aborted */
    char *to_version, *to_image, *from_version, *from_image;
    buf to_rules, from_rules; /* luahost_dir_bundle() bytes; len 0: unknown */
    rollout_member *members;
    size_t nmembers, members_cap;
    strmap by_name; /* member name → member (borrowed keys) */
    int *waves;
    size_t nwaves;
    int wave, reached;
    uint64_t wave_started_ms;  /* wall clock (it is stored) */
    uint64_t healthy_since_ms; /* monotonic; 0: the wave is not all healthy */
    char *halt_reason;
    rollout_policy pol;

    config from_cfg; /* cfg with the previous WORKER_IMAGE */
    rules *from;     /* the previous rules, while a rollout is not complete */

    struct member_search *search; /* a rollout being started, its members being found (rollout_search.c) */
};

/* ---- rollout_wave.c: the state machine ---- */

int rollout_phase_is(const rollout *ro, const char *phase);
/* The first 12 characters of a rules version ("?" for NULL). */
void rollout_short_version(const char *version, char out[13]);
/* Appends a member (names copied; admit_hash NULL: not reached yet). */
void rollout_member_add(rollout *ro, const char *name, const char *account_id, const char *admit_hash, int on_from);
/* Members in the order of their names (the order of the waves). */
void rollout_members_sort(rollout *ro);
void rollout_members_clear(rollout *ro);
void rollout_from_unload(rollout *ro);
/* Back to "no rollout recorded" (frees everything but cfg/report). */
void rollout_state_clear(rollout *ro);
/* Reaches the members of wave ro->wave: their applied hash in deployments
 * (name → obs_deploy) is what "updated" is judged against; their account
 * ids go into *enqueue. */
void rollout_reach_wave(rollout *ro, strmap *deployments, strmap *enqueue);
/* Done: the state keeps the target only (reports RolloutComplete). */
void rollout_complete(rollout *ro, const char *why);
/* Judges the current wave from deployments and pods (name → obs_deploy /
 * obs_pod): halts (and by policy rolls back) on a failure, starts the next
 * wave after the soak, completes after the last. */
void rollout_judge(rollout *ro, strmap *deployments, strmap *pods, strmap *enqueue);
/* A person's "resume" or "abort" (anything else is logged and ignored). */
void rollout_apply_request(rollout *ro, const char *request, strmap *deployments, strmap *enqueue);
/* Takes out of *plan (planned with the current rules) the actions that
 * must wait for the previous rules: updates of members not reached yet,
 * and while halted or aborted every create. The account ids the previous
 * rules must plan (those held back, and members reached once and rolled
 * back whose object in observed still carries the new render) are added to
 * *replan (keys copied). */
void rollout_partition(rollout *ro, strmap *observed, plan_result *plan, strmap *replan);

/* ---- rollout.c ---- */

void rollout_publish_metrics(const rollout *ro);
/* The rows of the accounts ids (rec_accounts_sql), NULL with *err on failure. */
PGresult *rollout_read_accounts(const rollout *ro, pg_conn *db, const char *const *ids, size_t n, char *err,
                                size_t errlen);
/* The policy of rules r (rules' rollout_policy), the defaults on any doubt. */
rollout_policy rollout_read_policy(rules *r);
/* ro->waves from the rules' rollout_waves(total); one worker per wave when
 * their answer is unusable. */
void rollout_read_waves(rollout *ro, rules *r, int total);

/* ---- rollout_search.c: who changes ---- */

/* Starts finding the members: the managed Deployments of c now, in name
 * order, are judged later in slices (rollout_search_run) or, those a pass
 * updates, at once (rollout_resolve). superseding: the
 * previous rules are the base of a rollout this one supersedes, which may
 * have moved some workers off them. */
void rollout_search_begin(rollout *ro, cache *c, int superseding);
/* Judges Deployments for up to budget_ms: 1 when every one is judged (the
 * members are sorted by name), 0 when some are left, -1 when the accounts
 * could not be read or rendered. */
int rollout_search_run(rollout *ro, pg_conn *db, rules *current, cache *c, uint64_t budget_ms);
void rollout_search_free(rollout *ro);
/* Who changes cannot be told: the state is read again and the start tried
 * again at the next tick (passes wait until then). */
void rollout_search_fail(rollout *ro);

/* ---- rollout_store.c: the state row ---- */

int rollout_store_load(rollout *ro, pg_conn *db);
int rollout_store_persist(rollout *ro, pg_conn *db);
/* Takes the pending request (resume/abort) out of the row: *request empty
 * when there is none. */
void rollout_store_take_request(pg_conn *db, char *request, size_t len);
/* Loads ro->from from the stored previous rules, with the previous image. */
int rollout_from_load(rollout *ro);
/* The rules in effect as a bundle, when the directory still holds them. */
int rollout_snapshot_current(rules *current, const config *cfg, buf *out);

#endif
