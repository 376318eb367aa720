/* worker_state: see worker_state.h. */
#include "worker_state.h"

#include <string.h>

#include "util.h"

int wstate_paused(const obs_deploy *d)
{
    if (d == NULL)
        return 0;
    for (int i = 0; i < d->nann; i++)
        if (strcmp(d->ann_keys[i], PAUSED_ANNOTATION) == 0)
            return d->ann_values[i] && strcmp(d->ann_values[i], "true") == 0;
    return 0;
}

size_t wstate_count_paused(const strmap *deployments)
{
    size_t n = 0, it = 0;
    void *v;
    while (strmap_next(deployments, &it, NULL, &v)) {
        const obs_deploy *d = v;
        n += d->managed && wstate_paused(d);
    }
    return n;
}

char *wstate_paused_reason(int is_delete, const char *name)
{
    if (is_delete)
        return xasprintf("paused (" PAUSED_ANNOTATION "=true): the account is not active, but the worker is "
                         "kept; kubectl annotate deployment %s " PAUSED_ANNOTATION "- lets it be deleted",
                         name);
    return xasprintf("paused (" PAUSED_ANNOTATION "=true): a change is pending and not applied; "
                     "kubectl annotate deployment %s " PAUSED_ANNOTATION "- resumes it",
                     name);
}
