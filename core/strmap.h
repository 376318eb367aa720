/* strmap: a string-keyed hash map (open addressing, linear probing). Keys are
 * copied (xlong_strdup) and owned by the map, unless the map was made with
 * STRMAP_BORROWED: then the caller keeps each key alive (and unchanged) while
 * its entry exists, e.g. a name inside the value itself, which saves a copy
 * per entry. Values are borrowed pointers the caller owns. */
#ifndef STRMAP_H
#define STRMAP_H

#include <stddef.h>

typedef struct strmap {
    char **keys;
    void **values;
    unsigned *hashes; /* per slot: the key's hash (low bits), compared before the key */
    size_t cap, len, used; /* used counts tombstones too */
    int borrowed_keys;
} strmap;

#define STRMAP_INIT {0}
#define STRMAP_BORROWED {.borrowed_keys = 1}

void *strmap_get(const strmap *m, const char *key);
/* Inserts or replaces; returns the previous value (NULL if none). A
 * borrowed-key map also takes the new key pointer when it replaces. */
void *strmap_put(strmap *m, const char *key, void *value);
/* Removes; returns the removed value (NULL if none). */
void *strmap_del(strmap *m, const char *key);
/* Iteration: for (size_t i = 0; strmap_next(m, &i, &k, &v);) ... ; the map must not change meanwhile. */
int strmap_next(const strmap *m, size_t *it, const char **key, void **value);
/* Frees the keys (unless borrowed) and the table (not the values); the map
 * stays usable, with the same kind of keys. */
void strmap_free(strmap *m);

#endif
