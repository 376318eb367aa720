/* reconcile: the planner, shared by `run` and `plan`. Turns the account
 * rows (rows.h: plain C values, no libpq) and the observed Deployments into
 * actions by calling the rules' plan(accounts, observed, ctx), each action
 * passed through the safety filter (safety.h) as it is read. Accounts whose
 * input did not change since a plan that left them alone are settled (not
 * handed to the rules again); the rest are planned at most max_rows at a
 * time. If plan() itself fails, the accounts are planned again in halves,
 * down to one, so that a rule error affects only the account that triggers
 * it and the rest cost a few calls (plan_split).
 *
 * The pipeline (controller.h): watch → planner (here) → safety filter →
 * writer → trail. The planner sends nothing and reports nothing. */
#ifndef RECONCILE_H
#define RECONCILE_H

#include <lua.h>

#include "action.h"
#include "config.h"
#include "rows.h"
#include "rules.h"
#include "strmap.h"

/* What the last plans left alone: a set of 16-byte digests (truncated
 * sha256) of everything the rules saw of an account (its row, its
 * Deployment, the rules version, image and namespace). 16 bytes per account
 * and no copy of its id, so 10,000 settled accounts cost ~0.3 MB. */
typedef struct rec_settled {
    unsigned char (*slots)[16]; /* open addressing; all-zero = empty */
    size_t cap, len;
} rec_settled;

/* Adds digest d (a set loaded back: settled_store.h). */
void rec_settled_add(rec_settled *s, const unsigned char d[16]);

typedef struct plan_input {
    const acct_rows *accounts; /* the rows of rec_accounts_sql (borrowed) */
    strmap *observed;     /* name → obs_deploy (borrowed) */
    int full;             /* 1: accounts is the whole table */
    long active_total;    /* partial passes: > 0 if any account of the whole table is active, 0 if none; -1 unknown */
    int delete_allowance; /* deletes allowed in this pass (budget left) */
    /* Optional (NULL: plan every account). The digests of the inputs (row,
     * its Deployment, rules version) for which the last plan returned no
     * action. Accounts whose digest is in the set are not handed to the rules
     * again: a resync with nothing to do costs no Lua work. This relies on
     * plan() deciding each account from its own row and Deployment
     * (docs/rules.md): the same input gives the same (empty) answer, so a
     * digest left over from an account's earlier state is harmless. rec_plan
     * updates the set; a full pass rebuilds it from the live rows. */
    rec_settled *settled;
    /* At most this many accounts (beyond the settled ones) are handed to the
     * rules in one call (0: all). The rest are deferred to a later pass, so
     * a pass over 10,000 new accounts never holds 10,000 rendered
     * Deployments in memory at once. */
    int max_rows;
    /* Optional: account ids with a write in flight; deferred like max_rows. */
    strmap *busy;
    /* The rows are rec_accounts_light_sql's: no row is handed to the rules;
     * every row not settled is deferred (read again, whole, by id); only the
     * Deployments without a row are planned (their delete). */
    int light;
} plan_input;

/* Accounts handed to the rules per pass (plan_input.max_rows in `run`, and
 * the sample a reload plans over, in `run` and the REPL alike); the rest
 * follow as the writes drain. */
#define REC_PLAN_CHUNK 128

/* The columns the rules get, in this order, and REC_DIGEST_COLUMN (not
 * shown to the rules); the table name is appended by rec_accounts_sql
 * (validated, quoted identifiers). partial: only the ids in $1 (text[]). */
char *rec_accounts_sql(const config *cfg, int partial);
/* A full pass's read: every row, but of the columns the rules get only
 * account_id, is_active and deleted_at (the others NULL), with
 * credentials_generation and REC_DIGEST_COLUMN. No credentials: at 100,000
 * accounts with real (kilobyte) cookies the whole table would be hundreds
 * of MB. Plan such rows with plan_input.light. */
char *rec_accounts_light_sql(const config *cfg);
/* Every account id of the table (nothing else). */
char *rec_account_ids_sql(const config *cfg);
/* The database's digest of what the rules see of a row (its settle digest's
 * part, plan_input.settled). */
#define REC_DIGEST_COLUMN "input_digest"
/* 1 if any account is active (and not soft-deleted), else 0: all a partial
 * pass's safety filter asks (safety_hold_deletes: is the desired set empty?).
 * It stops at the first such row: a count(*) read the whole table for every
 * change (~10 ms at 100,000 accounts). */
char *rec_active_any_sql(const config *cfg);

/* Plans. Returns 0 and fills out (free with rec_plan_free), or -1 when no
 * plan could be made at all (no rules, or the input could not be passed),
 * with err. Per-account failures are ACT_ERROR actions, not -1. */
int rec_plan(rules *r, const config *cfg, const plan_input *in, plan_result *out, char *err,
             size_t errlen);
void rec_plan_free(plan_result *p);

/* Plans every account of a full input the way `run` gets through them:
 * one full pass of at most REC_PLAN_CHUNK accounts (and the orphaned
 * Deployments), then the accounts it deferred, REC_PLAN_CHUNK at a time,
 * each as run's follow-up partial pass (their rows and Deployments only, the
 * table's active count for the safety filter, the delete allowance left).
 * So no call into the rules gets more than REC_PLAN_CHUNK accounts: `plan`
 * at 10,000 accounts stays within the rules' time budget. in->max_rows and
 * in->settled are ignored (every account is planned). Same returns as
 * rec_plan; out->deferred is 0. */
int rec_plan_all(rules *r, const config *cfg, const plan_input *in, plan_result *out, char *err, size_t errlen);
void rec_settled_free(rec_settled *settled);

/* Runs candidate rules' plan() over the input (at most max_rows accounts)
 * without keeping the result: a reload is refused unless this succeeds.
 * Returns 0, or -1 with err. */
int rec_check_plan(rules *r, luahost *candidate, const config *cfg, const plan_input *in, char *err,
                   size_t errlen);

/* Push one account row / one observed Deployment exactly as plan() gets
 * them (rows: strings, is_active boolean, SQL NULL absent). */
struct obs_deploy;
void rec_push_account(lua_State *L, const acct_rows *rows, int row);
void rec_push_observed(lua_State *L, const struct obs_deploy *d);

/* Builds a PostgreSQL text[] literal of the ids (for = ANY($1)). Caller frees. */
char *rec_text_array(const char *const *ids, size_t n);

#endif
