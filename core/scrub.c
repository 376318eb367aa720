/* scrub: see scrub.h. A rolling hash per distinct secret length finds the
 * windows to check; a 16-bit filter stops most windows at once. */
#include "scrub.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define BASE 1099511628211ull
#define MAX_SECRETS 400000 /* 16 bytes each: 6.4 MB; past it the set starts over */

typedef struct pair {
    uint64_t a, b; /* rolling hash, FNV-1a; {0,0} = empty slot */
} pair;

struct scrub_set {
    pair *slots;
    size_t cap, count;
    size_t *lens, nlens;   /* distinct secret lengths */
    uint64_t filter[1024]; /* bit (a & 0xffff) for every secret */
};

static pthread_rwlock_t lock = PTHREAD_RWLOCK_INITIALIZER;
static scrub_set global; /* the process's registry, under lock */

static uint64_t roll(const char *p, size_t n)
{
    uint64_t h = 0;
    for (size_t i = 0; i < n; i++)
        h = h * BASE + (unsigned char)p[i];
    return h;
}

static uint64_t fnv(const char *p, size_t n)
{
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
    return h | 1; /* never 0: {0,0} marks an empty slot */
}

static int set_has(const scrub_set *ss, pair p)
{
    if (ss->cap == 0)
        return 0;
    for (size_t i = (size_t)(p.a ^ p.b) & (ss->cap - 1);; i = (i + 1) & (ss->cap - 1)) {
        if (ss->slots[i].b == 0)
            return 0;
        if (ss->slots[i].a == p.a && ss->slots[i].b == p.b)
            return 1;
    }
}

static void set_put(scrub_set *ss, pair p)
{
    if ((ss->count + 1) * 2 > ss->cap) {
        size_t ocap = ss->cap;
        pair *old = ss->slots;
        ss->cap = ocap ? ocap * 2 : 64;
        ss->slots = xcalloc(ss->cap, sizeof *ss->slots);
        ss->count = 0;
        for (size_t i = 0; i < ocap; i++)
            if (old[i].b)
                set_put(ss, old[i]);
        free(old);
    }
    size_t i = (size_t)(p.a ^ p.b) & (ss->cap - 1);
    while (ss->slots[i].b != 0) {
        if (ss->slots[i].a == p.a && ss->slots[i].b == p.b)
            return;
        i = (i + 1) & (ss->cap - 1);
    }
    ss->slots[i] = p;
    ss->count++;
}

static void set_clear(scrub_set *ss)
{
    free(ss->slots);
    free(ss->lens);
    memset(ss, 0, sizeof *ss);
}

scrub_set *scrub_set_new(void)
{
    return xcalloc(1, sizeof(scrub_set));
}

void scrub_set_free(scrub_set *ss)
{
    if (ss == NULL)
        return;
    set_clear(ss);
    free(ss);
}

static int set_add(scrub_set *ss, pair p, size_t len)
{
    if (set_has(ss, p))
        return 0;
    set_put(ss, p);
    ss->filter[(p.a & 0xffff) >> 6] |= 1ull << (p.a & 63);
    size_t j = 0;
    while (j < ss->nlens && ss->lens[j] != len)
        j++;
    if (j == ss->nlens) {
        ss->lens = xrealloc(ss->lens, (ss->nlens + 1) * sizeof *ss->lens);
        ss->lens[ss->nlens++] = len;
    }
    return 1;
}

int scrub_set_add(scrub_set *ss, const char *s, size_t len, size_t min_len)
{
    if (s == NULL || len < min_len || len == 0)
        return 0;
    return set_add(ss, (pair){roll(s, len), fnv(s, len)}, len);
}

size_t scrub_set_count(const scrub_set *ss)
{
    return ss->count;
}

void scrub_add(const char *s, size_t len, size_t min_len)
{
    if (s == NULL || len < min_len || len == 0)
        return;
    pair p = {roll(s, len), fnv(s, len)};
    pthread_rwlock_rdlock(&lock);
    int known = set_has(&global, p);
    pthread_rwlock_unlock(&lock);
    if (known)
        return;
    pthread_rwlock_wrlock(&lock);
    if (global.count >= MAX_SECRETS)
        set_clear(&global);
    set_add(&global, p, len);
    pthread_rwlock_unlock(&lock);
}

int scrub_set_find(const scrub_set *ss, const char *text, size_t n, size_t *pos, size_t *mlen)
{
    int found = 0;
    for (size_t j = 0; j < ss->nlens; j++) {
        size_t len = ss->lens[j];
        if (len > n)
            continue;
        uint64_t top = 1;
        for (size_t k = 1; k < len; k++)
            top *= BASE;
        uint64_t h = roll(text, len);
        for (size_t i = 0; i + len <= n; i++) {
            if (i > 0)
                h = (h - (unsigned char)text[i - 1] * top) * BASE + (unsigned char)text[i + len - 1];
            if (found && i >= *pos)
                break;
            if (!(ss->filter[(h & 0xffff) >> 6] & (1ull << (h & 63))))
                continue;
            pair p = {h, fnv(text + i, len)};
            if (set_has(ss, p)) {
                *pos = i;
                *mlen = len;
                found = 1;
                break;
            }
        }
    }
    return found;
}

int scrub_needed(const char *s)
{
    if (s == NULL)
        return 0;
    size_t pos, len;
    pthread_rwlock_rdlock(&lock);
    int found = global.nlens > 0 && scrub_set_find(&global, s, strlen(s), &pos, &len);
    pthread_rwlock_unlock(&lock);
    return found;
}

char *scrub_dup(const char *s)
{
    if (s == NULL)
        return NULL;
    buf b = {0};
    size_t n = strlen(s), at = 0, pos, len;
    pthread_rwlock_rdlock(&lock);
    while (global.nlens > 0 && at < n && scrub_set_find(&global, s + at, n - at, &pos, &len)) {
        buf_append(&b, s + at, pos);
        buf_puts(&b, SCRUB_MARK);
        at += pos + len;
    }
    pthread_rwlock_unlock(&lock);
    buf_append(&b, s + at, n - at);
    buf_putc(&b, '\0');
    return buf_steal(&b);
}

void scrub_reset(void)
{
    pthread_rwlock_wrlock(&lock);
    set_clear(&global);
    pthread_rwlock_unlock(&lock);
}

size_t scrub_count(void)
{
    pthread_rwlock_rdlock(&lock);
    size_t n = global.count;
    pthread_rwlock_unlock(&lock);
    return n;
}
