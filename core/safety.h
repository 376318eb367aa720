/* safety: the safety filter, the named step between the planner
 * (reconcile.h) and the writer (writer.h). What the rules propose is
 * untrusted (DESIGN.md §3); here C decides what may be sent (DESIGN.md §5):
 *
 *   - ownership: update and delete only Deployments in the managed cache
 *     (label app.kubernetes.io/managed-by=sync-airbnb-operator, our
 *     namespace), never one that belongs to another account;
 *   - names and labels: the Deployment name is a DNS-1123 label, the final
 *     object passes names_validate_deployment;
 *   - namespace, managed-by label and applied hash are set by C on the
 *     final object, and checked on the text that is sent;
 *   - credentials: no credential value of the input rows appears in the
 *     final object, a reason, or a name that goes into an Event;
 *   - budgets and holds: deletes are held when no account is active (unless
 *     ALLOW_EMPTY_DESIRED), beyond the delete budget, and beyond the share
 *     of workers a window allows until a person releases them.
 *
 * Pure (no I/O, no Lua): the unit tests drive it with C values. */
#ifndef SAFETY_H
#define SAFETY_H

#include <stddef.h>
#include <stdint.h>

#include "action.h"
#include "config.h"
#include "rows.h"
#include "scrub.h"
#include "strmap.h"

/* The credential values of the rows handed to the rules (skip[i] set: not
 * handed; skip may be NULL), also registered with the process's scrubber
 * for good (a rule may keep one and print it later). Free with scrub_set_free. */
scrub_set *safety_secrets(const acct_rows *rows, const unsigned char *skip);
/* Replaces every value of ss found in *s with [REDACTED]. */
void safety_scrub(const scrub_set *ss, char **s);

/* One action as the rules returned it, before the filter. Strings are NULL
 * when the rules gave no string. */
typedef struct proposal {
    const char *kind; /* "create", "update", "delete", "hold", "error", "noop", "none" */
    const char *account_id, *name, *reason, *desired_hash;
    /* create/update: the object as the rules encoded it, asked for only
     * when the filter gets that far. Returns 0 with the JSON text (valid
     * until the next proposal), or -1 with err. */
    int (*encode)(void *ud, const char **json, size_t *len, char *err, size_t errlen);
    void *encode_ud;
} proposal;

typedef struct safety_ctx {
    const config *cfg;
    const acct_rows *rows;   /* the input rows */
    int id_col;              /* their account_id column */
    const strmap *by_id;     /* account_id → row + 1 (as a pointer-sized int) */
    const strmap *observed;  /* name → obs_deploy: the Deployments the rules were shown */
    const scrub_set *secrets; /* safety_secrets of the rows (NULL: none) */
    size_t body_bytes;       /* bytes of the objects admitted so far in this plan */
} safety_ctx;

/* Admits p into out as an action, or as an ACT_ERROR that says why it was
 * refused (counted in out->refused), or drops it (noop). */
void safety_admit(safety_ctx *s, const proposal *p, plan_result *out);

/* The empty-set hold and the delete budget over a whole plan: active is
 * the number of active accounts (< 0: unknown), allowance the deletes the
 * budget has left. Deletes beyond them become holds. */
void safety_hold_deletes(const config *cfg, plan_result *out, long active, int allowance);

/* The deletes of the last window (DELETE_HOLD_WINDOW_SECONDS): more than
 * DELETE_HOLD_PERCENT of the workers are held until a person changes the
 * release token (the Lease annotation). */
typedef struct safety_window {
    uint64_t *deleted_at; /* when the deletes of the window were sent (oldest first) */
    size_t n;
    char release_seen[128]; /* the release token already acted on */
} safety_window;

/* Turns the deletes of plan beyond the window's share of the workers into
 * holds. token: the release token now (a changed token starts a fresh
 * share); held_now: deletes held at the moment. Returns 1 when the token
 * released deletes (held, or sent in the window): the caller reports it. */
int safety_hold_mass_deletes(safety_window *w, const config *cfg, plan_result *plan, size_t workers,
                             const char *token, int held_now, uint64_t now_ms);
/* A delete was sent at now_ms. */
void safety_window_add(safety_window *w, uint64_t now_ms);
void safety_window_free(safety_window *w);

#endif
