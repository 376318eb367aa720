/* yamlout: JSON documents as YAML for `-o yaml`. See yamlout.h. */
#include "yamlout.h"

#include <math.h>
#include <string.h>
#include <yaml.h>

#include "json.h"

static int write_handler(void *data, unsigned char *buffer, size_t size)
{
    buf_append(data, buffer, size);
    return 1;
}

/* A string a YAML 1.1 reader (PyYAML, kubectl's) would take for a bool,
 * null, number or timestamp when written plain. */
static int needs_quotes(const char *s, size_t n)
{
    static const char *const words[] = {"y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO",
                                        "true", "True", "TRUE", "false", "False", "FALSE", "on",
                                        "On", "ON", "off", "Off", "OFF", "null", "Null", "NULL", "~"};
    if (n == 0 || strlen(s) != n)
        return 1;
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (strcmp(s, words[i]) == 0)
            return 1;
    return (s[0] >= '0' && s[0] <= '9') || s[0] == '+' || s[0] == '-' || s[0] == '.';
}

static int emit_scalar(yaml_emitter_t *em, const char *s, size_t n, yaml_scalar_style_t style)
{
    yaml_event_t ev;
    yaml_scalar_event_initialize(&ev, NULL, NULL, (yaml_char_t *)s, (int)n, 1, 1, style);
    return yaml_emitter_emit(em, &ev) ? 0 : -1;
}

static int emit_string(yaml_emitter_t *em, const char *s, size_t n)
{
    return emit_scalar(em, s, n, needs_quotes(s, n) ? YAML_DOUBLE_QUOTED_SCALAR_STYLE : YAML_ANY_SCALAR_STYLE);
}

static int emit_value(yaml_emitter_t *em, const json_value *v)
{
    yaml_event_t ev;
    char num[64];
    switch (json_typeof(v)) {
    case JSON_NULL:
        return emit_scalar(em, "null", 4, YAML_PLAIN_SCALAR_STYLE);
    case JSON_BOOL:
        return json_bool(v, 0) ? emit_scalar(em, "true", 4, YAML_PLAIN_SCALAR_STYLE)
                               : emit_scalar(em, "false", 5, YAML_PLAIN_SCALAR_STYLE);
    case JSON_NUMBER: {
        double d = json_number(v, 0);
        if (d == floor(d) && fabs(d) < 1e15)
            snprintf(num, sizeof num, "%.0f", d);
        else
            snprintf(num, sizeof num, "%.17g", d);
        return emit_scalar(em, num, strlen(num), YAML_PLAIN_SCALAR_STYLE);
    }
    case JSON_STRING:
        return emit_string(em, json_string(v), json_string_len(v));
    case JSON_ARRAY:
        yaml_sequence_start_event_initialize(&ev, NULL, NULL, 1,
                                             json_len(v) ? YAML_BLOCK_SEQUENCE_STYLE : YAML_FLOW_SEQUENCE_STYLE);
        if (!yaml_emitter_emit(em, &ev))
            return -1;
        for (size_t i = 0; i < json_len(v); i++)
            if (emit_value(em, json_at(v, i)) < 0)
                return -1;
        yaml_sequence_end_event_initialize(&ev);
        return yaml_emitter_emit(em, &ev) ? 0 : -1;
    case JSON_OBJECT:
        yaml_mapping_start_event_initialize(&ev, NULL, NULL, 1,
                                            json_len(v) ? YAML_BLOCK_MAPPING_STYLE : YAML_FLOW_MAPPING_STYLE);
        if (!yaml_emitter_emit(em, &ev))
            return -1;
        for (size_t i = 0; i < json_len(v); i++) {
            const char *k = json_key_at(v, i);
            if (emit_string(em, k, strlen(k)) < 0 || emit_value(em, json_at(v, i)) < 0)
                return -1;
        }
        yaml_mapping_end_event_initialize(&ev);
        return yaml_emitter_emit(em, &ev) ? 0 : -1;
    }
    return -1;
}

int yamlout_from_json(buf *out, const char *json, size_t len, char *err, size_t errlen)
{
    char perr[128] = "";
    yaml_emitter_t em;
    yaml_event_t ev;
    int rc = -1, started = 0;
    json_value *root = json_parse(json, len, perr, sizeof perr);
    if (root == NULL) {
        util_seterr(err, errlen, "not JSON: %s", perr);
        return -1;
    }
    if (!yaml_emitter_initialize(&em)) {
        util_seterr(err, errlen, "cannot start the YAML emitter");
        goto out;
    }
    started = 1;
    yaml_emitter_set_output(&em, write_handler, out);
    yaml_emitter_set_unicode(&em, 1);
    yaml_emitter_set_width(&em, -1); /* no folding of long strings */
    yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING);
    if (!yaml_emitter_emit(&em, &ev))
        goto emit_err;
    yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, 1);
    if (!yaml_emitter_emit(&em, &ev) || emit_value(&em, root) < 0)
        goto emit_err;
    yaml_document_end_event_initialize(&ev, 1);
    if (!yaml_emitter_emit(&em, &ev))
        goto emit_err;
    yaml_stream_end_event_initialize(&ev);
    if (!yaml_emitter_emit(&em, &ev) || !yaml_emitter_flush(&em))
        goto emit_err;
    rc = 0;
    goto out;
emit_err:
    util_seterr(err, errlen, "YAML emitter: %s", em.problem ? em.problem : "failed");
out:
    if (started)
        yaml_emitter_delete(&em);
    json_free(root);
    return rc;
}

int yamlout_print(FILE *f, const char *json, int yaml)
{
    if (!yaml) {
        fprintf(f, "%s\n", json);
        return 0;
    }
    buf b = {0};
    char err[256];
    int rc = yamlout_from_json(&b, json, strlen(json), err, sizeof err);
    if (rc == 0)
        fwrite(b.data, 1, b.len, f);
    else
        fprintf(stderr, "-o yaml: %s\n", err);
    buf_free(&b);
    return rc;
}
