/* action: what flows from the planner through the safety filter to the
 * writer — pure data, no I/O. The planner (reconcile.h) fills a plan_result
 * with the actions the rules asked for, the safety filter (safety.h) turns
 * refused ones into errors and held deletes into holds, the writer
 * (writer.h) sends the rest. */
#ifndef ACTION_H
#define ACTION_H

#include <stddef.h>

typedef enum { ACT_CREATE, ACT_UPDATE, ACT_DELETE, ACT_HOLD, ACT_ERROR } act_kind;

typedef struct action {
    act_kind kind;
    char *account_id;   /* may be NULL (e.g. a Deployment without the annotation) */
    char *name;         /* Deployment name; may be NULL for an error without one */
    char *reason;       /* short, never a credential value */
    char *body;         /* create/update: the Deployment JSON to apply */
    char *desired_hash; /* create/update */
    char *uid;          /* delete: precondition */
} action;

typedef struct plan_result {
    action *actions;
    size_t n;
    int desired;       /* active accounts in the input */
    int observed;      /* managed Deployments in the input */
    int held_deletes;  /* deletes turned into holds */
    int refused;       /* actions the core refused (bad object, credential, unknown id...) */
    char *hold_reason; /* why, when held_deletes > 0 */
    int planned;       /* accounts handed to the rules (the rest were settled) */
    int deferred;      /* accounts left for a later pass (max_rows, busy) */
    char *deferred_ids;      /* their ids, each NUL-terminated, in row order (owned) */
    size_t deferred_ids_len; /* bytes in deferred_ids */
} plan_result;

/* Appends an action (strings copied; reason NULL → ""). Returns it. */
action *action_push(plan_result *p, act_kind kind, const char *account_id, const char *name, const char *reason);
/* Turns a into a hold with reason (copied), counted in p. */
void action_hold(plan_result *p, action *a, const char *reason);
const char *rec_action_name(act_kind k);
void rec_plan_free(plan_result *p);

#endif
