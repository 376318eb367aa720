/* settled_store: see settled_store.h. */
#include "settled_store.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

#define SETTLED_TABLE "sync_airbnb_operator.settled"

void settled_store_tag(const config *cfg, rules *r, char out[65])
{
    const char *parts[] = {"settled-v1", SAO_VERSION, rules_version(r), cfg->worker_image, cfg->namespace,
                           cfg->accounts_schema, cfg->accounts_relname};
    buf b = {0};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        buf_puts(&b, parts[i] ? parts[i] : "");
        buf_putc(&b, '\0');
    }
    util_sha256_hex(b.data, b.len, out);
    buf_free(&b);
}

long settled_store_load(pg_conn *db, const char *tag, rec_settled *s, char *err, size_t errlen)
{
    const char *params[] = {tag};
    PGresult *res = pg_exec(db, "SELECT digests FROM " SETTLED_TABLE " WHERE id = 1 AND tag = $1", 1, params,
                            err, errlen);
    if (res == NULL)
        return -1;
    size_t len = 0;
    unsigned char *raw = pg_bytea_value(res, 0, &len);
    PQclear(res);
    long added = 0;
    static const unsigned char zero[16];
    for (size_t at = 0; raw && at + 16 <= len; at += 16) {
        if (memcmp(raw + at, zero, 16) == 0)
            continue; /* the empty slot's marker is never a digest */
        rec_settled_add(s, raw + at);
        added++;
    }
    if (raw)
        PQfreemem(raw);
    return added;
}

int settled_store_save(pg_conn *db, const char *tag, const rec_settled *s, char *err, size_t errlen)
{
    static const unsigned char zero[16];
    unsigned char *packed = xmalloc(s->len * 16 + 1);
    size_t n = 0;
    for (size_t i = 0; i < s->cap && n < s->len; i++)
        if (memcmp(s->slots[i], zero, 16) != 0)
            memcpy(packed + 16 * n++, s->slots[i], 16);
    char *digests = pg_bytea_param(packed, n * 16);
    free(packed);
    const char *params[] = {tag, digests ? digests : "\\x"};
    int rc = pg_command(db,
                        "INSERT INTO " SETTLED_TABLE " (id, tag, digests, saved_at) VALUES (1, $1, $2::bytea, now()) "
                        "ON CONFLICT (id) DO UPDATE SET tag = excluded.tag, digests = excluded.digests, "
                        "saved_at = excluded.saved_at",
                        2, params, err, errlen);
    free(digests);
    return rc;
}

unsigned long long settled_store_sum(const rec_settled *s)
{
    unsigned long long sum = s->len;
    for (size_t i = 0; i < s->cap; i++) {
        unsigned long long w;
        memcpy(&w, s->slots[i], sizeof w);
        sum += w * 0x9e3779b97f4a7c15ull; /* empty slots add 0 */
    }
    return sum;
}
