/* strmap: see strmap.h. FNV-1a hashing; tombstones are reclaimed on grow. */
#include "strmap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static char tombstone_key;
#define TOMBSTONE (&tombstone_key)

static uint64_t hash_key(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

/* Keys that share a long prefix (sync-airbnb-worker-...) made strcmp on
 * every probe a fifth of a full pass's CPU at 100,000 accounts: a probe
 * compares the stored hash first. */
static size_t find_slot(const strmap *m, const char *key, unsigned h, int *found)
{
    size_t mask = m->cap - 1, i = (size_t)h & mask, first_free = (size_t)-1;
    for (;;) {
        char *k = m->keys[i];
        if (k == NULL) {
            *found = 0;
            return first_free != (size_t)-1 ? first_free : i;
        }
        if (k == TOMBSTONE) {
            if (first_free == (size_t)-1)
                first_free = i;
        } else if (m->hashes[i] == h && strcmp(k, key) == 0) {
            *found = 1;
            return i;
        }
        i = (i + 1) & mask;
    }
}

static void grow(strmap *m)
{
    size_t oldcap = m->cap;
    char **oldkeys = m->keys;
    void **oldvalues = m->values;
    unsigned *oldhashes = m->hashes;
    size_t cap = oldcap ? oldcap : 16;
    while (m->len * 2 >= cap)
        cap *= 2;
    m->cap = cap;
    m->keys = xcalloc(cap, sizeof *m->keys);
    m->values = xcalloc(cap, sizeof *m->values);
    m->hashes = xcalloc(cap, sizeof *m->hashes);
    m->used = m->len;
    for (size_t i = 0; i < oldcap; i++) {
        if (oldkeys[i] == NULL || oldkeys[i] == TOMBSTONE)
            continue;
        int found;
        size_t s = find_slot(m, oldkeys[i], oldhashes[i], &found);
        m->keys[s] = oldkeys[i];
        m->values[s] = oldvalues[i];
        m->hashes[s] = oldhashes[i];
    }
    free(oldkeys);
    free(oldvalues);
    free(oldhashes);
}

void *strmap_get(const strmap *m, const char *key)
{
    if (m->cap == 0)
        return NULL;
    int found;
    size_t s = find_slot(m, key, (unsigned)hash_key(key), &found);
    return found ? m->values[s] : NULL;
}

void *strmap_put(strmap *m, const char *key, void *value)
{
    if (m->cap == 0 || (m->used + 1) * 4 >= m->cap * 3)
        grow(m);
    int found;
    unsigned h = (unsigned)hash_key(key);
    size_t s = find_slot(m, key, h, &found);
    if (found) {
        void *old = m->values[s];
        m->values[s] = value;
        if (m->borrowed_keys)
            m->keys[s] = (char *)key;
        return old;
    }
    if (m->keys[s] == NULL)
        m->used++;
    m->keys[s] = m->borrowed_keys ? (char *)key : xlong_strdup(key);
    m->values[s] = value;
    m->hashes[s] = h;
    m->len++;
    return NULL;
}

void *strmap_del(strmap *m, const char *key)
{
    if (m->cap == 0)
        return NULL;
    int found;
    size_t s = find_slot(m, key, (unsigned)hash_key(key), &found);
    if (!found)
        return NULL;
    void *old = m->values[s];
    if (!m->borrowed_keys)
        xlong_free(m->keys[s]);
    m->keys[s] = TOMBSTONE;
    m->values[s] = NULL;
    m->len--;
    return old;
}

int strmap_next(const strmap *m, size_t *it, const char **key, void **value)
{
    while (*it < m->cap) {
        size_t i = (*it)++;
        if (m->keys[i] != NULL && m->keys[i] != TOMBSTONE) {
            if (key)
                *key = m->keys[i];
            if (value)
                *value = m->values[i];
            return 1;
        }
    }
    return 0;
}

void strmap_free(strmap *m)
{
    int borrowed = m->borrowed_keys;
    for (size_t i = 0; !borrowed && i < m->cap; i++)
        if (m->keys[i] != TOMBSTONE)
            xlong_free(m->keys[i]);
    free(m->keys);
    free(m->values);
    free(m->hashes);
    memset(m, 0, sizeof *m);
    m->borrowed_keys = borrowed;
}
