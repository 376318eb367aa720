/* names: see names.h. */
#include "names.h"

#include <string.h>

#include "util.h"

static int is_lower_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static int is_alnum(char c)
{
    return is_lower_alnum(c) || (c >= 'A' && c <= 'Z');
}

/* [a-z0-9]([-a-z0-9]*[a-z0-9])? of n bytes; max 0 = no length limit. */
int names_dns_label_n(const char *s, size_t n, size_t max)
{
    if (n == 0 || (max && n > max) || !is_lower_alnum(s[0]) || !is_lower_alnum(s[n - 1]))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!is_lower_alnum(s[i]) && s[i] != '-')
            return 0;
    return 1;
}

int names_dns_subdomain_n(const char *s, size_t n)
{
    if (n == 0 || n > 253)
        return 0;
    for (const char *p = s, *end = s + n; p <= end;) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        size_t len = dot ? (size_t)(dot - p) : (size_t)(end - p);
        if (!names_dns_label_n(p, len, 0))
            return 0;
        p += len + 1;
    }
    return 1;
}

/* Empty, or at most 63 of [A-Za-z0-9_.-] with alphanumeric ends. */
int names_label_value_n(const char *s, size_t n)
{
    if (n == 0)
        return 1;
    if (n > 63 || !is_alnum(s[0]) || !is_alnum(s[n - 1]))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!is_alnum(s[i]) && s[i] != '-' && s[i] != '_' && s[i] != '.')
            return 0;
    return 1;
}

/* [prefix/]name: prefix a DNS-1123 subdomain, name a non-empty label value. */
int names_label_key(const char *k)
{
    const char *slash = strchr(k, '/');
    const char *name = slash ? slash + 1 : k;
    if (slash && (strchr(name, '/') || !names_dns_subdomain_n(k, (size_t)(slash - k))))
        return 0;
    return *name && names_label_value_n(name, strlen(name));
}

int names_dns_label(const char *s)
{
    return s != NULL && names_dns_label_n(s, strlen(s), 63);
}

int names_pg_ident_n(const char *s, size_t n)
{
    if (s == NULL || n == 0 || n > 63 || !((s[0] >= 'a' && s[0] <= 'z') || s[0] == '_'))
        return 0;
    for (size_t i = 1; i < n; i++)
        if (!is_lower_alnum(s[i]) && s[i] != '_')
            return 0;
    return 1;
}

/* A map of label (or annotation) keys to strings at path; labels: 1 when
 * the values must be label values. Absent is fine unless required. */
static int check_map(const json_value *m, const char *path, int labels, int required, char *err,
                     size_t errlen)
{
    if (m == NULL && !required)
        return 0;
    if (json_typeof(m) != JSON_OBJECT) {
        util_seterr(err, errlen, "%s must be an object of strings", path);
        return -1;
    }
    for (size_t i = 0; i < json_len(m); i++) {
        const char *k = json_key_at(m, i);
        const json_value *v = json_at(m, i);
        if (!names_label_key(k)) {
            util_seterr(err, errlen, "%s: \"%.80s\" is not a valid key ([prefix/]name, name at most 63 "
                        "of [A-Za-z0-9_.-] with alphanumeric ends)", path, k);
            return -1;
        }
        if (json_typeof(v) != JSON_STRING) {
            util_seterr(err, errlen, "%s[\"%s\"] must be a string", path, k);
            return -1;
        }
        if (labels && !names_label_value_n(json_string(v), json_string_len(v))) {
            util_seterr(err, errlen, "%s[\"%s\"]: \"%.80s\" is not a valid label value (at most 63 of "
                        "[A-Za-z0-9_.-], alphanumeric at both ends)", path, k, json_string(v));
            return -1;
        }
    }
    return 0;
}

int names_validate_deployment(const json_value *obj, char *err, size_t errlen)
{
    if (json_typeof(obj) != JSON_OBJECT) {
        util_seterr(err, errlen, "the Deployment is not an object");
        return -1;
    }
    const char *api = json_string(json_get(obj, "apiVersion")), *kind = json_string(json_get(obj, "kind"));
    if (!api || !kind || strcmp(api, "apps/v1") != 0 || strcmp(kind, "Deployment") != 0) {
        util_seterr(err, errlen, "apiVersion/kind must be apps/v1 Deployment");
        return -1;
    }
    const json_value *name = json_path(obj, "metadata", "name", NULL);
    if (json_typeof(name) != JSON_STRING || !names_dns_label_n(json_string(name), json_string_len(name), 63)) {
        util_seterr(err, errlen, "metadata.name \"%.80s\" is not a DNS-1123 label (1 to 63 of [a-z0-9-], "
                    "alphanumeric at both ends)", json_string(name) ? json_string(name) : "");
        return -1;
    }
    const json_value *tmpl_labels = json_path(obj, "spec", "template", "metadata", "labels", NULL);
    if (check_map(json_path(obj, "metadata", "labels", NULL), "metadata.labels", 1, 0, err, errlen) < 0 ||
        check_map(json_path(obj, "metadata", "annotations", NULL), "metadata.annotations", 0, 0, err, errlen) < 0 ||
        check_map(tmpl_labels, "spec.template.metadata.labels", 1, 1, err, errlen) < 0 ||
        check_map(json_path(obj, "spec", "template", "metadata", "annotations", NULL),
                  "spec.template.metadata.annotations", 0, 0, err, errlen) < 0)
        return -1;
    const json_value *sel = json_path(obj, "spec", "selector", "matchLabels", NULL);
    if (check_map(sel, "spec.selector.matchLabels", 1, 1, err, errlen) < 0)
        return -1;
    if (json_len(sel) == 0) {
        util_seterr(err, errlen, "spec.selector.matchLabels must not be empty");
        return -1;
    }
    for (size_t i = 0; i < json_len(sel); i++) {
        const char *k = json_key_at(sel, i);
        const char *want = json_string(json_at(sel, i)), *have = json_string(json_get(tmpl_labels, k));
        if (have == NULL || strcmp(have, want) != 0) {
            util_seterr(err, errlen, "spec.selector.matchLabels[\"%s\"]=\"%.63s\" is not among the pod template's "
                        "labels (%s), so the Deployment would select none of its own pods",
                        k, want, have ? "it has another value" : "it is missing");
            return -1;
        }
    }
    const json_value *containers = json_path(obj, "spec", "template", "spec", "containers", NULL);
    if (json_typeof(containers) != JSON_ARRAY || json_len(containers) == 0) {
        util_seterr(err, errlen, "spec.template.spec.containers must be a non-empty array");
        return -1;
    }
    for (size_t i = 0; i < json_len(containers); i++) {
        const json_value *c = json_at(containers, i);
        const json_value *cname = json_get(c, "name"), *image = json_get(c, "image");
        if (json_typeof(cname) != JSON_STRING || !names_dns_label_n(json_string(cname), json_string_len(cname), 63)) {
            util_seterr(err, errlen, "spec.template.spec.containers[%zu].name must be a DNS-1123 label", i);
            return -1;
        }
        if (json_typeof(image) != JSON_STRING || json_string_len(image) == 0) {
            util_seterr(err, errlen, "spec.template.spec.containers[%zu] (%s) has no image", i, json_string(cname));
            return -1;
        }
    }
    return 0;
}

