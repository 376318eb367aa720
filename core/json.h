/* json: a small JSON DOM for the C core (watch events, Status bodies, apply
 * responses) and the Lua `json` binding.
 *
 * Parsed values are owned by the root returned from json_parse() (one arena
 * per document); free only that root, with json_free(). All getters accept NULL and return NULL / the
 * default, so lookups chain without checks:
 *   const char *rv = json_string(json_path(root, "metadata", "resourceVersion", NULL));
 */
#ifndef JSON_H
#define JSON_H

#include <stddef.h>

#include "util.h"

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_type;

typedef struct json_value json_value;

/* Parses exactly one JSON text (surrounding white space allowed). Returns NULL
 * and a message with the byte offset in err on malformed input. Nesting is
 * limited to 512 levels. */
json_value *json_parse(const char *s, size_t len, char *err, size_t errlen);
void json_free(json_value *v);

json_type json_typeof(const json_value *v);
/* Object member by key; NULL if v is not an object or has no such key. */
const json_value *json_get(const json_value *v, const char *key);
/* Walks nested objects by keys, NULL-terminated. */
const json_value *json_path(const json_value *v, ...);
/* Array element or object member value by index; NULL when out of range. */
const json_value *json_at(const json_value *v, size_t i);
/* Key of the i-th object member. */
const char *json_key_at(const json_value *v, size_t i);
/* Number of array elements / object members, 0 for scalars. */
size_t json_len(const json_value *v);
/* String value (NUL-terminated; strings containing NUL are cut there for this
 * getter; use json_string_len for the full length), NULL if not a string. */
const char *json_string(const json_value *v);
size_t json_string_len(const json_value *v);
double json_number(const json_value *v, double dflt);
int json_bool(const json_value *v, int dflt);

/* Calls fn on every decoded string of v, object keys included, in document
 * order; stops at and returns the first non-zero fn returns (else 0). */
int json_walk_strings(const json_value *v, int (*fn)(const char *s, size_t len, void *ud), void *ud);

/* Serialises v (compact, object keys in their parsed order) onto b. */
void json_write(buf *b, const json_value *v);

/* Writing JSON without a DOM: the documents the core builds (the /readyz
 * document, DeleteOptions...) go through these, so keys and strings are
 * always escaped and commas always placed. Nesting up to JSON_OUT_DEPTH
 * (deeper levels are written without their commas tracked: nothing the core
 * writes comes near it; fieldsV1 trees of a Deployment are ~15 deep). */
#define JSON_OUT_DEPTH 128
typedef struct json_out {
    buf *b;
    int depth, after_key;
    unsigned char comma[JSON_OUT_DEPTH]; /* per level: a value was written */
    char open[JSON_OUT_DEPTH];           /* per level: '{' or '[' */
} json_out;
void jo_init(json_out *o, buf *b);
void jo_object(json_out *o); /* { */
void jo_array(json_out *o);  /* [ */
void jo_end(json_out *o);    /* } or ], whichever is open */
void jo_key(json_out *o, const char *key);
void jo_str(json_out *o, const char *s); /* NULL: null */
void jo_bool(json_out *o, int v);
void jo_int(json_out *o, long long v);
void jo_double(json_out *o, double v); /* %.6f */
void jo_value(json_out *o, const json_value *v);
void jo_null(json_out *o);
/* A value that is JSON text already (made by this writer or checked by the
 * parser, e.g. a final Deployment), copied as is. */
void jo_raw(json_out *o, const char *json);
/* key and value in one call */
void jo_kstr(json_out *o, const char *key, const char *s);
void jo_kbool(json_out *o, const char *key, int v);
void jo_kint(json_out *o, const char *key, long long v);

/* The Lua `json` module (bind_json.c); json_lua_encode is json.encode, a
 * lua_CFunction that may raise: call it under luahost_pcall. */
struct lua_State;
int luaopen_json(struct lua_State *L);
int json_lua_encode(struct lua_State *L);

#endif
