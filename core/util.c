/* util: see util.h. */
#include "util.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static void oom(size_t n)
{
    fprintf(stderr, "fatal: out of memory allocating %zu bytes\n", n);
    abort();
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL)
        oom(n);
    return p;
}

void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (p == NULL)
        oom(n * size);
    return p;
}

void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (q == NULL)
        oom(n);
    return q;
}

char *xstrdup(const char *s)
{
    return xstrndup(s, strlen(s));
}

char *xstrndup(const char *s, size_t n)
{
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *xasprintf(const char *fmt, ...)
{
    buf b = {0};
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(&b, fmt, ap);
    va_end(ap);
    return buf_steal(&b);
}

void buf_reserve(buf *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1)
        cap *= 2;
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
}

void buf_append(buf *b, const void *p, size_t n)
{
    buf_reserve(b, n);
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void buf_puts(buf *b, const char *s)
{
    buf_append(b, s, strlen(s));
}

void buf_putc(buf *b, char c)
{
    buf_append(b, &c, 1);
}

void buf_vprintf(buf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return;
    buf_reserve(b, (size_t)n);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
}

void buf_printf(buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(b, fmt, ap);
    va_end(ap);
}

void buf_json_string(buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    buf_reserve(b, n + 2);
    buf_putc(b, '"');
    for (size_t i = 0; i < n; i++) {
        size_t run = i; /* a run that needs no escape goes in with one copy */
        while (run < n && (unsigned char)s[run] >= 0x20 && s[run] != '"' && s[run] != '\\')
            run++;
        if (run > i) {
            buf_append(b, s + i, run - i);
            i = run - 1;
            continue;
        }
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"': buf_append(b, "\\\"", 2); break;
        case '\\': buf_append(b, "\\\\", 2); break;
        case '\n': buf_append(b, "\\n", 2); break;
        case '\r': buf_append(b, "\\r", 2); break;
        case '\t': buf_append(b, "\\t", 2); break;
        case '\b': buf_append(b, "\\b", 2); break;
        case '\f': buf_append(b, "\\f", 2); break;
        default:
            if (c < 0x20) {
                char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
                buf_append(b, e, 6);
            } else {
                buf_putc(b, (char)c);
            }
        }
    }
    buf_putc(b, '"');
}

void buf_reset(buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

void buf_free(buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

char *buf_steal(buf *b)
{
    char *p = b->data ? b->data : xstrdup("");
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}

uint64_t util_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t util_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

char *util_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    buf b = {0};
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        buf_append(&b, chunk, n);
    int failed = ferror(f);
    fclose(f);
    if (failed) {
        buf_free(&b);
        errno = EIO;
        return NULL;
    }
    if (len)
        *len = b.len;
    return buf_steal(&b);
}

void util_seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* EVP_Digest() looks the algorithm up and allocates a context on every
 * call, which dominated hashing thousands of short settle keys per pass: one
 * fetched digest and one context per thread, kept for the process's life. */
static _Thread_local EVP_MD_CTX *sha256_ctx;

static void sha256_fatal(const char *what)
{
    fprintf(stderr, "fatal: %s\n", what);
    abort();
}
static _Thread_local EVP_MD *sha256_md;

void util_sha256(const void *data, size_t n, unsigned char out[32])
{
    unsigned int mdlen = 0;
    if (sha256_ctx == NULL) {
        sha256_ctx = EVP_MD_CTX_new();
        sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
        if (sha256_ctx == NULL || sha256_md == NULL)
            sha256_fatal("cannot set up SHA-256 (OpenSSL)");
    }
    if (!EVP_DigestInit_ex2(sha256_ctx, sha256_md, NULL) || !EVP_DigestUpdate(sha256_ctx, data, n) ||
        !EVP_DigestFinal_ex(sha256_ctx, out, &mdlen) || mdlen != 32)
        sha256_fatal("SHA-256 failed (OpenSSL)");
}

void util_sha256_hex(const void *data, size_t n, char out[65])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[32];
    util_sha256(data, n, md);
    for (unsigned int i = 0; i < 32; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[64] = '\0';
}

/* ---- long-lived allocations ------------------------------------------------
 * Size classes of 64 bytes carved from their own 256 KiB pages, with free
 * lists; blocks carry their class in a header word. Keeping what lives long
 * (cache entries, map keys) apart from what lives for one pass lets
 * malloc_trim return a busy pass's heap. Under AddressSanitizer plain malloc
 * is used so that ASan sees every access. Not thread-safe: the main loop's. */
#define LONG_CLASS 64
#define LONG_CLASSES 32 /* up to 2 KiB; larger blocks use malloc */
#define LONG_PAGE (256u * 1024u)

#if defined(__SANITIZE_ADDRESS__)
#define LONG_USE_MALLOC 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LONG_USE_MALLOC 1
#endif
#endif

#ifndef LONG_USE_MALLOC
typedef struct long_free {
    struct long_free *next;
} long_free;

static long_free *long_lists[LONG_CLASSES];
static char *long_cur;
static size_t long_left;
#endif
static size_t long_mapped, long_used; /* bytes of pages, of blocks handed out (headers included) */

void *xlong_alloc(size_t n)
{
#ifdef LONG_USE_MALLOC
    return xcalloc(1, n);
#else
    size_t cls = (n + sizeof(size_t) + LONG_CLASS - 1) / LONG_CLASS;
    size_t *p;
    if (cls > LONG_CLASSES)
        goto big;
    if (long_lists[cls - 1]) {
        p = (size_t *)long_lists[cls - 1];
        long_lists[cls - 1] = long_lists[cls - 1]->next;
    } else {
        size_t bytes = cls * LONG_CLASS;
        if (long_left < bytes) {
            void *page = mmap(NULL, LONG_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (page == MAP_FAILED)
                goto big;
            long_cur = page;
            long_left = LONG_PAGE;
            long_mapped += LONG_PAGE;
        }
        p = (size_t *)long_cur;
        long_cur += bytes;
        long_left -= bytes;
    }
    memset(p, 0, cls * LONG_CLASS);
    *p = cls;
    long_used += cls * LONG_CLASS;
    return p + 1;
big:
    p = xcalloc(1, n + sizeof(size_t));
    *p = 0;
    return p + 1;
#endif
}

void xlong_free(void *q)
{
    if (q == NULL)
        return;
#ifdef LONG_USE_MALLOC
    free(q);
#else
    size_t *p = (size_t *)q - 1;
    if (*p == 0) {
        free(p);
        return;
    }
    long_free *f = (long_free *)p;
    size_t cls = *p;
    long_used -= cls * LONG_CLASS;
    f->next = long_lists[cls - 1];
    long_lists[cls - 1] = f;
#endif
}

void xlong_stats(size_t *mapped, size_t *used)
{
    *mapped = long_mapped;
    *used = long_used;
}

char *xlong_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = xlong_alloc(n);
    memcpy(p, s, n);
    return p;
}
