/* strmap: a string-keyed hash map (open addressing, linear probing). Keys are
 * copied (xlong_strdup) and owned by the map; values are borrowed pointers the caller owns. */
#ifndef STRMAP_H
#define STRMAP_H

#include <stddef.h>

typedef struct strmap {
    char **keys;
    void **values;
    size_t cap, len, used; /* used counts tombstones too */
} strmap;

#define STRMAP_INIT {0}

void *strmap_get(const strmap *m, const char *key);
/* Inserts or replaces; returns the previous value (NULL if none). */
void *strmap_put(strmap *m, const char *key, void *value);
/* Removes; returns the removed value (NULL if none). */
void *strmap_del(strmap *m, const char *key);
/* Iteration: for (size_t i = 0; strmap_next(m, &i, &k, &v);) ... ; the map must not change meanwhile. */
int strmap_next(const strmap *m, size_t *it, const char **key, void **value);
/* Frees the keys and the table (not the values). */
void strmap_free(strmap *m);

#endif
