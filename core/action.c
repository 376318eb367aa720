/* action: see action.h. */
#include "action.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

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

action *action_push(plan_result *p, act_kind kind, const char *account_id, const char *name, const char *reason)
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

void action_hold(plan_result *p, action *a, const char *reason)
{
    a->kind = ACT_HOLD;
    free(a->reason);
    a->reason = xstrdup(reason);
    p->held_deletes++;
    if (p->hold_reason == NULL)
        p->hold_reason = xstrdup(reason);
}
