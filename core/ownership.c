/* ownership: see ownership.h. */
#include "ownership.h"

#include <string.h>

#include "util.h"

static int is_entry(const json_value *e, const char *operation)
{
    const char *manager = json_string(json_get(e, "manager"));
    const char *op = json_string(json_get(e, "operation"));
    const char *sub = json_string(json_get(e, "subresource"));
    return manager && op && strcmp(manager, OWN_FIELD_MANAGER) == 0 && strcmp(op, operation) == 0 &&
           (sub == NULL || *sub == '\0');
}

static long find_entry(const json_value *managed, const char *operation)
{
    for (size_t i = 0; i < json_len(managed); i++)
        if (is_entry(json_at(managed, i), operation))
            return (long)i;
    return -1;
}

int own_has_update_entry(const json_value *meta)
{
    return find_entry(json_get(meta, "managedFields"), "Update") >= 0;
}

/* Writes the union of two fieldsV1 sets: both are trees of objects whose
 * keys name fields ("f:spec", "k:{...}", ".") and whose leaves are {}. */
static void write_union(buf *b, const json_value *x, const json_value *y)
{
    if (json_typeof(x) != JSON_OBJECT || json_typeof(y) != JSON_OBJECT) {
        json_write(b, x);
        return;
    }
    buf_putc(b, '{');
    size_t n = 0;
    for (size_t i = 0; i < json_len(x); i++, n++) {
        const char *k = json_key_at(x, i);
        if (n)
            buf_putc(b, ',');
        buf_json_string(b, k, strlen(k));
        buf_putc(b, ':');
        const json_value *other = json_get(y, k);
        if (other)
            write_union(b, json_at(x, i), other);
        else
            json_write(b, json_at(x, i));
    }
    for (size_t i = 0; i < json_len(y); i++) {
        const char *k = json_key_at(y, i);
        if (json_get(x, k))
            continue;
        if (n++)
            buf_putc(b, ',');
        buf_json_string(b, k, strlen(k));
        buf_putc(b, ':');
        json_write(b, json_at(y, i));
    }
    buf_putc(b, '}');
}

/* Appends a "test" op: the entry at index i still has this key and value. */
static void test_op(buf *b, long i, const char *key, const json_value *value)
{
    buf_printf(b, "{\"op\":\"test\",\"path\":\"/metadata/managedFields/%ld/%s\",\"value\":", i, key);
    json_write(b, value);
    buf_puts(b, "},");
}

char *own_upgrade_patch(const json_value *obj)
{
    const json_value *managed = json_get(json_get(obj, "metadata"), "managedFields");
    long update = find_entry(managed, "Update"), apply = find_entry(managed, "Apply");
    if (update < 0)
        return NULL;
    const json_value *u = json_at(managed, (size_t)update);
    /* Only our own entries are touched, each tested to be as read: a status
     * write by another manager meanwhile does not get in the way, a change
     * of ours does (then the server answers 422 and the caller reads again). */
    buf b = {0};
    buf_putc(&b, '[');
    test_op(&b, update, "manager", json_get(u, "manager"));
    test_op(&b, update, "operation", json_get(u, "operation"));
    test_op(&b, update, "fieldsV1", json_get(u, "fieldsV1"));
    if (apply < 0) {
        buf_printf(&b, "{\"op\":\"replace\",\"path\":\"/metadata/managedFields/%ld/operation\","
                       "\"value\":\"Apply\"}]", update);
        return buf_steal(&b);
    }
    const json_value *a = json_at(managed, (size_t)apply);
    test_op(&b, apply, "manager", json_get(a, "manager"));
    test_op(&b, apply, "operation", json_get(a, "operation"));
    test_op(&b, apply, "fieldsV1", json_get(a, "fieldsV1"));
    buf_printf(&b, "{\"op\":\"replace\",\"path\":\"/metadata/managedFields/%ld/fieldsV1\",\"value\":",
               apply);
    write_union(&b, json_get(a, "fieldsV1"), json_get(u, "fieldsV1"));
    buf_printf(&b, "},{\"op\":\"remove\",\"path\":\"/metadata/managedFields/%ld\"}]", update);
    return buf_steal(&b);
}
