/* expect: writes the operator made whose watch echo has not arrived yet —
 * client-go's "expectations". The informer's store (cache.h) has one writer,
 * the list and the watch; a write's answer does not go into it. Until the
 * watch delivers the object the write produced (same resourceVersion), or
 * its deletion, the write is expected: the events before it are stale (they
 * describe the object before the write) and a pass leaves the account alone,
 * so no pass plans from a state the operator already changed and sends the
 * same write twice. An expectation that is never met (a relist that skipped
 * the echo, a resourceVersion that is not a number) lapses after
 * EXPECT_TIMEOUT_MS.
 *
 * Pure bookkeeping (no loop, no I/O): the controller feeds it the writer's
 * outcomes and the cache's events, and the unit tests feed it by hand. */
#ifndef EXPECT_H
#define EXPECT_H

#include <stdint.h>

#include "cache.h"
#include "strmap.h"

#define EXPECT_TIMEOUT_MS 60000

typedef struct expect {
    strmap by_name; /* Deployment name → struct expectation */
    strmap seen;    /* name → struct seen_rvs: events of a name whose write is in flight */
} expect;

enum expect_match {
    EXPECT_NONE,  /* nothing expected for that name: an ordinary event */
    EXPECT_STALE, /* an event from before the write: not the write's echo */
    EXPECT_MET,   /* the write's echo (or the object's deletion): expectation gone */
};

/* Records that name was written: the object the write produced has
 * resourceVersion rv (gone: the write was a delete). applied_generation > 0:
 * the generation the write applied, set on the echo (cache.h: what only we
 * know). current is the cache's object now (NULL: absent): the echo may have
 * come before the answer, as current or among expect_seen's events (then the
 * applied generation is set on current). Returns 1 when the write is now expected, 0 when
 * the echo is already in the cache (or rv is unknown: 0). account_id may be
 * NULL. */
int expect_write(expect *e, const char *name, const char *account_id, unsigned long long rv,
                 long applied_generation, int gone, obs_deploy *current, uint64_t now_ms);
/* The watch delivered name (resourceVersion rv) while a write of it is in
 * flight: its echo may come before its answer, and a later event right
 * behind it (the controller-manager's status update). expect_write finds the
 * echo among these. */
void expect_seen(expect *e, const char *name, unsigned long long rv);
/* The write of name is finished (whatever its outcome): forget what was
 * seen while it was in flight. */
void expect_write_done(expect *e, const char *name);
/* 1 while a write of name is expected. */
int expect_pending(const expect *e, const char *name);
/* The watch delivered name: now is the new object (NULL: deleted). On
 * EXPECT_MET the expectation is dropped (its account id, if any, is copied
 * to *account_id: the caller frees it; *was_delete tells whether the write
 * was a delete) and now->applied_generation set. */
enum expect_match expect_observe(expect *e, const char *name, obs_deploy *now, char **account_id,
                                 int *was_delete);
/* Adds the account id of every expected write to ids (a STRMAP_BORROWED
 * map: the keys stay owned by e until it changes). */
void expect_accounts(const expect *e, strmap *ids);
/* Drops the expectations older than EXPECT_TIMEOUT_MS; fn gets each one's
 * account id (may be NULL) and name. Returns how many lapsed. */
size_t expect_expire(expect *e, uint64_t now_ms, void (*fn)(const char *account_id, const char *name, void *ud),
                     void *ud);
size_t expect_count(const expect *e);
void expect_free(expect *e);

#endif
