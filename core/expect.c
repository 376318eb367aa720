/* expect: see expect.h. */
#include "expect.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

typedef struct expectation {
    char *account_id;        /* NULL: none */
    unsigned long long rv;   /* the written object's resourceVersion (0 with gone) */
    long applied_generation; /* > 0: the generation the write applied */
    int gone;                /* a delete: met by the deletion */
    uint64_t deadline_ms;
} expectation;

#define SEEN_MAX 16 /* events of one name while its write is in flight; older ones drop */

typedef struct seen_rvs {
    unsigned long long rv[SEEN_MAX];
    size_t n; /* total seen; the last SEEN_MAX are kept */
} seen_rvs;

void expect_seen(expect *e, const char *name, unsigned long long rv)
{
    if (rv == 0)
        return;
    seen_rvs *s = strmap_get(&e->seen, name);
    if (s == NULL) {
        s = xcalloc(1, sizeof *s);
        strmap_put(&e->seen, name, s);
    }
    s->rv[s->n++ % SEEN_MAX] = rv;
}

void expect_write_done(expect *e, const char *name)
{
    free(strmap_del(&e->seen, name));
}

static int was_seen(const expect *e, const char *name, unsigned long long rv)
{
    const seen_rvs *s = strmap_get(&e->seen, name);
    for (size_t i = 0; s && i < s->n && i < SEEN_MAX; i++)
        if (s->rv[i] == rv)
            return 1;
    return 0;
}

static void expectation_free(expectation *x)
{
    if (x == NULL)
        return;
    free(x->account_id);
    free(x);
}

int expect_write(expect *e, const char *name, const char *account_id, unsigned long long rv,
                 long applied_generation, int gone, obs_deploy *current, uint64_t now_ms)
{
    expectation_free(strmap_del(&e->by_name, name)); /* the newer write is what counts */
    if (!gone && rv != 0 && current && (current->resource_version == rv || was_seen(e, name, rv))) {
        /* The echo beat the answer (and maybe later events too, which
         * copied the applied generation from before the write). */
        if (applied_generation > current->applied_generation)
            current->applied_generation = applied_generation;
        return 0;
    }
    if (gone ? current == NULL : rv == 0)
        return 0; /* already seen, or cannot be matched */
    expectation *x = xcalloc(1, sizeof *x);
    x->account_id = account_id ? xstrdup(account_id) : NULL;
    x->rv = gone ? 0 : rv;
    x->applied_generation = applied_generation;
    x->gone = gone;
    x->deadline_ms = now_ms + EXPECT_TIMEOUT_MS;
    strmap_put(&e->by_name, name, x);
    return 1;
}

int expect_pending(const expect *e, const char *name)
{
    return name && strmap_get(&e->by_name, name) != NULL;
}

enum expect_match expect_observe(expect *e, const char *name, obs_deploy *now, char **account_id,
                                 int *was_delete)
{
    expectation *x = strmap_get(&e->by_name, name);
    if (x == NULL)
        return EXPECT_NONE;
    /* A deletion meets any expectation: whatever was written is gone. */
    if (now != NULL && (x->gone || now->resource_version != x->rv))
        return EXPECT_STALE;
    if (now && x->applied_generation > 0)
        now->applied_generation = x->applied_generation;
    strmap_del(&e->by_name, name);
    *was_delete = x->gone;
    *account_id = x->account_id;
    x->account_id = NULL;
    expectation_free(x);
    return EXPECT_MET;
}

void expect_accounts(const expect *e, strmap *ids)
{
    size_t it = 0;
    void *v;
    while (strmap_next(&e->by_name, &it, NULL, &v))
        if (((expectation *)v)->account_id)
            strmap_put(ids, ((expectation *)v)->account_id, (void *)1);
}

size_t expect_expire(expect *e, uint64_t now_ms, void (*fn)(const char *account_id, const char *name, void *ud),
                     void *ud)
{
    size_t n = 0;
    for (;;) { /* the map must not change while iterated: one lapse per scan */
        size_t it = 0;
        const char *k;
        void *v;
        char *name = NULL;
        while (strmap_next(&e->by_name, &it, &k, &v))
            if (((expectation *)v)->deadline_ms <= now_ms) {
                name = xstrdup(k);
                break;
            }
        if (name == NULL)
            return n;
        expectation *x = strmap_del(&e->by_name, name);
        if (fn)
            fn(x->account_id, name, ud);
        expectation_free(x);
        free(name);
        n++;
    }
}

size_t expect_count(const expect *e)
{
    return e->by_name.len;
}

void expect_free(expect *e)
{
    size_t it = 0;
    void *v;
    while (strmap_next(&e->by_name, &it, NULL, &v))
        expectation_free(v);
    strmap_free(&e->by_name);
    it = 0;
    while (strmap_next(&e->seen, &it, NULL, &v))
        free(v);
    strmap_free(&e->seen);
}
