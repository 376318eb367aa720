/* settled_store: the planner's settled set (reconcile.h, rec_settled) kept
 * in the database, one row of sync_airbnb_operator.settled (migration
 * 008_settled), so that a restarted operator or a new leader does not hand
 * every account to the rules again to learn that nothing is to be done: at
 * 100,000 accounts that re-plan took two minutes of Lua work (docs/
 * benchmarks.md). The row holds 16-byte digests only (no account id, no
 * credential) and a tag of what the digests were made under (the operator's
 * version, the rules version, image, namespace and accounts table): a set
 * made under another tag is not used. A digest is a settled input, never an
 * instruction: a stale or foreign one can only spare a plan whose input is
 * byte for byte one that once needed nothing (reconcile.h, plan_input). */
#ifndef SETTLED_STORE_H
#define SETTLED_STORE_H

#include "config.h"
#include "pg.h"
#include "reconcile.h"
#include "rules.h"

/* The tag of sets made now: 64 hex chars + NUL. */
void settled_store_tag(const config *cfg, rules *r, char out[65]);
/* Adds the saved digests to *s when the saved tag is tag. Returns the number
 * added (0: none saved, or another tag), or -1 with err. */
long settled_store_load(pg_conn *db, const char *tag, rec_settled *s, char *err, size_t errlen);
/* Replaces the saved set with s under tag. Returns 0, or -1 with err. */
int settled_store_save(pg_conn *db, const char *tag, const rec_settled *s, char *err, size_t errlen);
/* A cheap fingerprint of s's contents (order-independent), to tell whether
 * it changed since it was saved. */
unsigned long long settled_store_sum(const rec_settled *s);

#endif
