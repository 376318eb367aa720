/* util: allocation helpers that never return NULL, a growable byte buffer,
 * and small string helpers. Every other file may include this. */
#ifndef UTIL_H
#define UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* Allocation: abort the process with a message on out-of-memory. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Long-lived allocations (cache entries, map keys): zeroed, never NULL, kept
 * apart from the transient heap; free only with xlong_free. */
void *xlong_alloc(size_t n);
void xlong_free(void *p);
char *xlong_strdup(const char *s);
/* Bytes of the pages the long-lived blocks are carved from, and of the blocks
 * in use (both 0 when plain malloc serves them: sanitizer builds). */
void xlong_stats(size_t *mapped, size_t *used);

/* Growable buffer. Always NUL-terminated when data != NULL.
 * Zero-initialise ({0}) to start; buf_free() releases the memory. */
typedef struct buf {
    char *data;
    size_t len;
    size_t cap;
} buf;

void buf_reserve(buf *b, size_t extra);
void buf_append(buf *b, const void *p, size_t n);
void buf_puts(buf *b, const char *s);
void buf_putc(buf *b, char c);
void buf_printf(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_vprintf(buf *b, const char *fmt, va_list ap);
/* Appends s as a JSON string literal (with quotes), escaping as RFC 8259 requires. */
void buf_json_string(buf *b, const char *s, size_t n);
void buf_reset(buf *b);
void buf_free(buf *b);
/* Hands the data to the caller (who frees it) and resets the buffer. */
char *buf_steal(buf *b);

/* Monotonic clock in milliseconds, and wall clock in milliseconds since the epoch. */
uint64_t util_now_ms(void);
uint64_t util_wall_ms(void);

/* Reads a whole file; returns a malloc'd NUL-terminated buffer (caller frees)
 * and stores its length in *len when len != NULL. NULL with errno set on failure. */
char *util_read_file(const char *path, size_t *len);

/* Copies a message into a caller buffer like snprintf, never overflowing. */
void util_seterr(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* sha256 of data as 64 lowercase hex chars + NUL into out[65]. */
void util_sha256_hex(const void *data, size_t n, char out[65]);
/* sha256 of data, the raw 32 bytes. */
void util_sha256(const void *data, size_t n, unsigned char out[32]);

#endif
