/* ownership: see ownership.h. */
#include "ownership.h"

#include <stdio.h>
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
static void write_union(json_out *o, const json_value *x, const json_value *y)
{
    if (json_typeof(x) != JSON_OBJECT || json_typeof(y) != JSON_OBJECT) {
        jo_value(o, x);
        return;
    }
    jo_object(o);
    for (size_t i = 0; i < json_len(x); i++) {
        const char *k = json_key_at(x, i);
        const json_value *other = json_get(y, k);
        jo_key(o, k);
        if (other)
            write_union(o, json_at(x, i), other);
        else
            jo_value(o, json_at(x, i));
    }
    for (size_t i = 0; i < json_len(y); i++) {
        const char *k = json_key_at(y, i);
        if (json_get(x, k))
            continue;
        jo_key(o, k);
        jo_value(o, json_at(y, i));
    }
    jo_end(o);
}

/* One JSON patch operation on /metadata/managedFields/<i>[/<key>]; value
 * NULL: none (remove); text: a string value instead. */
static void patch_op(json_out *o, const char *op, long i, const char *key, const json_value *value,
                     const char *text)
{
    char path[96];
    if (key)
        snprintf(path, sizeof path, "/metadata/managedFields/%ld/%s", i, key);
    else
        snprintf(path, sizeof path, "/metadata/managedFields/%ld", i);
    jo_object(o);
    jo_kstr(o, "op", op);
    jo_kstr(o, "path", path);
    if (value) {
        jo_key(o, "value");
        jo_value(o, value);
    } else if (text) {
        jo_kstr(o, "value", text);
    }
    jo_end(o);
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
    json_out o;
    jo_init(&o, &b);
    jo_array(&o);
    patch_op(&o, "test", update, "manager", json_get(u, "manager"), NULL);
    patch_op(&o, "test", update, "operation", json_get(u, "operation"), NULL);
    patch_op(&o, "test", update, "fieldsV1", json_get(u, "fieldsV1"), NULL);
    if (apply < 0) {
        patch_op(&o, "replace", update, "operation", NULL, "Apply");
        jo_end(&o);
        return buf_steal(&b);
    }
    const json_value *a = json_at(managed, (size_t)apply);
    patch_op(&o, "test", apply, "manager", json_get(a, "manager"), NULL);
    patch_op(&o, "test", apply, "operation", json_get(a, "operation"), NULL);
    patch_op(&o, "test", apply, "fieldsV1", json_get(a, "fieldsV1"), NULL);
    jo_object(&o);
    jo_kstr(&o, "op", "replace");
    char path[96];
    snprintf(path, sizeof path, "/metadata/managedFields/%ld/fieldsV1", apply);
    jo_kstr(&o, "path", path);
    jo_key(&o, "value");
    write_union(&o, json_get(a, "fieldsV1"), json_get(u, "fieldsV1"));
    jo_end(&o);
    patch_op(&o, "remove", update, NULL, NULL, NULL);
    jo_end(&o);
    return buf_steal(&b);
}

long own_rename_index(const json_value *meta)
{
    const json_value *managed = json_get(meta, "managedFields");
    return find_entry(managed, "Apply") >= 0 ? -1 : find_entry(managed, "Update");
}

char *own_rename_patch(long index, unsigned long long resource_version)
{
    char rv[32];
    snprintf(rv, sizeof rv, "%llu", resource_version);
    buf b = {0};
    json_out o;
    jo_init(&o, &b);
    jo_array(&o);
    jo_object(&o);
    jo_kstr(&o, "op", "test");
    jo_kstr(&o, "path", "/metadata/resourceVersion");
    jo_kstr(&o, "value", rv);
    jo_end(&o);
    patch_op(&o, "test", index, "manager", NULL, OWN_FIELD_MANAGER);
    patch_op(&o, "test", index, "operation", NULL, "Update");
    patch_op(&o, "replace", index, "operation", NULL, "Apply");
    jo_end(&o);
    return buf_steal(&b);
}
