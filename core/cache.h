/* cache: what the operator observes in the cluster, kept by a paginated LIST
 * plus a WATCH (with bookmarks; 410 Gone → relist) of the managed Deployments
 * and their Pods in the operator's namespace, label selector
 * app.kubernetes.io/managed-by=sync-airbnb-operator. Only the few fields the
 * rules and `status` need are kept, never whole objects. */
#ifndef CACHE_H
#define CACHE_H

#include "json.h"
#include "kube.h"
#include "strmap.h"

#define MANAGED_BY_LABEL "app.kubernetes.io/managed-by"
#define MANAGED_BY_VALUE "sync-airbnb-operator"
#define INSTANCE_LABEL "app.kubernetes.io/instance"
#define ACCOUNT_ANNOTATION "sync-airbnb.io/account-id"
#define APPLIED_HASH_ANNOTATION "sync-airbnb.io/applied-hash"
#define FINGERPRINT_ANNOTATION "sync-airbnb.io/credentials-fingerprint"

/* One allocation (cache_parse_deployment): the strings point inside it and
 * must not be freed or replaced one by one. */
typedef struct obs_deploy {
    char *name, *uid;
    char *account_id;   /* annotation (points into ann_values); NULL if missing */
    char *applied_hash; /* annotation (points into ann_values); NULL if missing */
    char *fingerprint;  /* pod template annotation; NULL if missing */
    /* every metadata annotation under sync-airbnb.io/ (the rules keep their
     * bookkeeping there), as parallel arrays; known keys are shared constants */
    char **ann_keys, **ann_values;
    int nann;
    long generation, observed_generation;
    long applied_generation; /* generation our last apply produced; 0 unknown */
    /* metadata.resourceVersion when it is a decimal number (etcd's always
     * is), else 0. Only ever compared for equality (the API's contract):
     * expect.h matches a write's watch echo with it. */
    unsigned long long resource_version;
    int managed;             /* carries the managed-by label */
    int update_owned;        /* our POST's "Update" managedFields entry is still there
                              * (ownership.h): moved to our apply before the next update */
    int own_rename_at;       /* own_rename_index of this copy (-1: the move needs a GET) */
    int replicas, ready_replicas, updated_replicas, available_replicas;
    int seen;                /* relist sweep mark */
    /* sha256 (first 16 bytes) of what the rules see of it but the applied
     * generation: name, applied hash, fingerprint, generation, the
     * sync-airbnb.io/ annotations (the settle digest's part, reconcile.c) */
    unsigned char digest[16];
} obs_deploy;

typedef struct obs_pod {
    char *name;
    char *instance; /* app.kubernetes.io/instance label: the worker Deployment's name */
    char *phase;
    char *waiting_reason; /* e.g. CrashLoopBackOff; NULL if none */
    uint64_t waiting_since_ms; /* util_now_ms() when this watch first showed that reason */
    int ready, restarts;
    long long created_unix_s; /* metadata.creationTimestamp; 0 unknown (the rollout's wave gate) */
    int seen;
} obs_pod;

/* metadata.resourceVersion of obj as obs_deploy keeps it (0: not a number). */
unsigned long long cache_resource_version(const json_value *obj);
/* Parse one object of the API (as decoded JSON). Caller frees with *_free. */
obs_deploy *cache_parse_deployment(const json_value *obj);
obs_pod *cache_parse_pod(const json_value *obj);
void obs_deploy_free(obs_deploy *d);
void obs_pod_free(obs_pod *p);
/* Frees every value of a map of obs_deploy / obs_pod, and the map. */
void cache_free_deployments(strmap *m);
void cache_free_pods(strmap *m);

enum cache_kind { CACHE_DEPLOYMENT, CACHE_POD };

/* Called after the cache changed. For deployments: old is the previous entry
 * (NULL when added; freed right after the call), now the current one (NULL
 * when deleted). For pods, old/now are obs_pod. Also called with kind and
 * name NULL when a list (initial or relist) completed. */
typedef void (*cache_change_cb)(enum cache_kind kind, const char *name, const void *old,
                                const void *now, void *ud);

typedef struct cache cache;

/* Starts listing and watching at once on a's loop. a is borrowed. */
cache *cache_start(uv_loop_t *loop, kube_async *a, const char *ns, cache_change_cb cb, void *ud);
/* Stops the watches and frees the cache and everything in it. */
void cache_free(cache *c);
/* 1 once the Deployments were listed (the only safe basis for a plan). */
int cache_synced(const cache *c);
/* The maps (name → obs_deploy / obs_pod), owned by the cache. */
strmap *cache_deployments(cache *c);
strmap *cache_pods(cache *c);
/* The store has one writer: the list and the watch. What the operator just
 * wrote is not put in it; until the watch brings the write's echo the write
 * is *expected* (expect.h, client-go's "expectations"), and a pass leaves
 * the account alone, so a stale event can never make it send the write
 * again. */
/* Last error of a list/watch (NULL if fine) and whether the watches are up. */
const char *cache_last_error(const cache *c);
int cache_watching(const cache *c);

/* Blocking LIST of all pages into m (for `plan` and `status`). kind is
 * CACHE_DEPLOYMENT or CACHE_POD. Returns 0 or -1 with err. */
int cache_list_blocking(kube_client *k, const char *ns, enum cache_kind kind, int timeout_ms,
                        strmap *m, char *err, size_t errlen);

#endif
