/* scrub: the one place every text passes before it leaves the process (log
 * lines, Events, audit rows, /readyz, CLI output): it replaces every known
 * secret with "[REDACTED]" (DESIGN.md §5.4).
 *
 * Secrets are registered as they are read: the account credentials of every
 * row a pass reads, the DATABASE_URL password (as written in the URL and as
 * libpq decodes it). Only two 64-bit hashes of each are kept, not the value;
 * a window of text matches when both hashes do. Thread-safe (the health
 * server and the election thread log too). */
#ifndef SCRUB_H
#define SCRUB_H

#include <stddef.h>

#define SCRUB_MIN_LEN 8 /* shorter credential values ("v1") would hit innocent text */
#define SCRUB_MARK "[REDACTED]"

/* A set of secrets and the one scanner over it: the registry below is one,
 * and reconcile keeps one per plan (the credentials handed to the rules in
 * that call, searched for in what they rendered). Not locked. */
typedef struct scrub_set scrub_set;
scrub_set *scrub_set_new(void);
void scrub_set_free(scrub_set *ss);
/* Adds s (len bytes) unless shorter than min_len; 1 when it was new. */
int scrub_set_add(scrub_set *ss, const char *s, size_t len, size_t min_len);
size_t scrub_set_count(const scrub_set *ss);
/* The first secret of ss in text[0..n): 1 with its offset and length. */
int scrub_set_find(const scrub_set *ss, const char *text, size_t n, size_t *pos, size_t *len);

/* Registers a secret of len bytes with the process's registry; values shorter than min_len are ignored. */
void scrub_add(const char *s, size_t len, size_t min_len);
/* 1 when s contains a registered secret. */
int scrub_needed(const char *s);
/* A malloc'd copy of s with every registered secret replaced (the caller
 * frees); NULL for NULL. */
char *scrub_dup(const char *s);
/* Forgets every secret (tests; and when the set grows past its bound,
 * before the next pass registers the live ones again). */
void scrub_reset(void);
/* Number of secrets registered. */
size_t scrub_count(void);

#endif
