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

/* Writes entry e with operation Apply and fieldsV1 united with extra (NULL:
 * as it is). */
static void write_apply_entry(buf *b, const json_value *e, const json_value *extra)
{
    buf_putc(b, '{');
    for (size_t i = 0; i < json_len(e); i++) {
        const char *k = json_key_at(e, i);
        if (i)
            buf_putc(b, ',');
        buf_json_string(b, k, strlen(k));
        buf_putc(b, ':');
        if (strcmp(k, "operation") == 0)
            buf_puts(b, "\"Apply\"");
        else if (strcmp(k, "fieldsV1") == 0 && extra)
            write_union(b, json_at(e, i), extra);
        else
            json_write(b, json_at(e, i));
    }
    buf_putc(b, '}');
}

char *own_upgrade_patch(const json_value *obj)
{
    const json_value *meta = json_get(obj, "metadata");
    const json_value *managed = json_get(meta, "managedFields");
    const char *rv = json_string(json_get(meta, "resourceVersion"));
    long update = find_entry(managed, "Update"), apply = find_entry(managed, "Apply");
    if (update < 0 || rv == NULL)
        return NULL;
    const json_value *update_fields = json_get(json_at(managed, (size_t)update), "fieldsV1");
    buf b = {0};
    buf_puts(&b, "[{\"op\":\"test\",\"path\":\"/metadata/resourceVersion\",\"value\":");
    buf_json_string(&b, rv, strlen(rv));
    buf_puts(&b, "},{\"op\":\"replace\",\"path\":\"/metadata/managedFields\",\"value\":[");
    size_t n = 0;
    for (size_t i = 0; i < json_len(managed); i++) {
        const json_value *e = json_at(managed, i);
        if ((long)i == update && apply >= 0)
            continue; /* merged into the Apply entry */
        if (n++)
            buf_putc(&b, ',');
        if ((long)i == update)
            write_apply_entry(&b, e, NULL);
        else if ((long)i == apply)
            write_apply_entry(&b, e, update_fields);
        else
            json_write(&b, e);
    }
    buf_puts(&b, "]}]");
    return buf_steal(&b);
}
