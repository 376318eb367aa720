/* json: see json.h. A recursive-descent parser with a depth bound. A
 * document lives in an arena of chunks: its values, strings and arrays are
 * carved from them and freed together by json_free(root) (the root is the
 * first thing in the first chunk), so a parsed watch event or response
 * costs a few mallocs instead of one per value. */
#include "json.h"

#include <math.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JSON_MAX_DEPTH 512

struct json_value {
    json_type type;
    union {
        int boolean;
        double number;
        struct {
            char *s;
            size_t len;
        } str;
        struct {
            json_value **items;
            char **keys; /* objects only */
            size_t len, cap;
        } list;
    } u;
};

#define CHUNK_BYTES 8192

typedef struct json_chunk {
    struct json_chunk *next;
    size_t used, cap;
    max_align_t data[]; /* the root value of a document is data[0] of its first chunk */
} json_chunk;

typedef struct parser {
    const char *s;
    size_t len, pos;
    char *err;
    size_t errlen;
    int failed;
    json_chunk *first, *cur; /* the arena */
    buf scratch;             /* a string being unescaped */
} parser;

static void *arena_alloc(parser *p, size_t n)
{
    n = (n + sizeof(max_align_t) - 1) & ~(sizeof(max_align_t) - 1);
    json_chunk *c = p->cur;
    if (c == NULL || c->cap - c->used < n) {
        size_t cap = n > CHUNK_BYTES / 4 ? n : CHUNK_BYTES;
        json_chunk *nc = xmalloc(sizeof *nc + cap);
        nc->used = 0;
        nc->cap = cap;
        if (c == NULL) {
            nc->next = NULL;
            p->first = p->cur = nc;
        } else if (cap != CHUNK_BYTES) { /* a big block of its own; keep filling cur */
            nc->next = c->next;
            c->next = nc;
            nc->used = n;
            return nc->data;
        } else {
            nc->next = c->next;
            c->next = nc;
            p->cur = nc;
        }
        c = nc;
    }
    void *r = (char *)c->data + c->used;
    c->used += n;
    return r;
}

static void arena_free(json_chunk *c)
{
    while (c) {
        json_chunk *next = c->next;
        free(c);
        c = next;
    }
}

static char *arena_strdup(parser *p, const char *s, size_t n)
{
    char *d = arena_alloc(p, n + 1);
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

static json_value *parse_value(parser *p, int depth);

static void fail(parser *p, const char *what)
{
    if (!p->failed)
        util_seterr(p->err, p->errlen, "invalid JSON at byte %zu: %s", p->pos, what);
    p->failed = 1;
}

static void skip_ws(parser *p)
{
    while (p->pos < p->len) {
        char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            break;
        p->pos++;
    }
}

static json_value *new_value(parser *p, json_type t)
{
    json_value *v = arena_alloc(p, sizeof *v);
    memset(v, 0, sizeof *v);
    v->type = t;
    return v;
}

static void list_push(parser *p, json_value *v, char *key, json_value *item)
{
    if (v->u.list.len == v->u.list.cap) {
        size_t cap = v->u.list.cap ? v->u.list.cap * 2 : 4;
        json_value **items = arena_alloc(p, cap * sizeof *items);
        if (v->u.list.len)
            memcpy(items, v->u.list.items, v->u.list.len * sizeof *items);
        v->u.list.items = items;
        if (v->type == JSON_OBJECT) {
            char **keys = arena_alloc(p, cap * sizeof *keys);
            if (v->u.list.len)
                memcpy(keys, v->u.list.keys, v->u.list.len * sizeof *keys);
            v->u.list.keys = keys;
        }
        v->u.list.cap = cap;
    }
    v->u.list.items[v->u.list.len] = item;
    if (v->type == JSON_OBJECT)
        v->u.list.keys[v->u.list.len] = key;
    v->u.list.len++;
}

static int hex4(parser *p, unsigned *out)
{
    if (p->pos + 4 > p->len)
        return -1;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p->s[p->pos + i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return -1;
    }
    p->pos += 4;
    *out = v;
    return 0;
}

static void put_utf8(buf *b, unsigned cp)
{
    char o[4];
    if (cp < 0x80) {
        o[0] = (char)cp;
        buf_append(b, o, 1);
    } else if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        buf_append(b, o, 2);
    } else if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        buf_append(b, o, 3);
    } else {
        o[0] = (char)(0xF0 | (cp >> 18));
        o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[3] = (char)(0x80 | (cp & 0x3F));
        buf_append(b, o, 4);
    }
}

/* Parses a string literal at p->pos (which is at the opening quote) into b. */
static int parse_string_into(parser *p, buf *b)
{
    p->pos++; /* opening quote */
    for (;;) {
        if (p->pos >= p->len) {
            fail(p, "unterminated string");
            return -1;
        }
        /* copy a run of plain bytes at once */
        size_t start = p->pos;
        while (p->pos < p->len) {
            unsigned char c = (unsigned char)p->s[p->pos];
            if (c == '"' || c == '\\' || c < 0x20)
                break;
            p->pos++;
        }
        buf_append(b, p->s + start, p->pos - start);
        if (p->pos >= p->len)
            continue;
        unsigned char c = (unsigned char)p->s[p->pos];
        if (c == '"') {
            p->pos++;
            return 0;
        }
        if (c < 0x20) {
            fail(p, "control character in string");
            return -1;
        }
        p->pos++; /* backslash */
        if (p->pos >= p->len) {
            fail(p, "unterminated escape");
            return -1;
        }
        char e = p->s[p->pos++];
        switch (e) {
        case '"': buf_putc(b, '"'); break;
        case '\\': buf_putc(b, '\\'); break;
        case '/': buf_putc(b, '/'); break;
        case 'b': buf_putc(b, '\b'); break;
        case 'f': buf_putc(b, '\f'); break;
        case 'n': buf_putc(b, '\n'); break;
        case 'r': buf_putc(b, '\r'); break;
        case 't': buf_putc(b, '\t'); break;
        case 'u': {
            unsigned cp;
            if (hex4(p, &cp) < 0) {
                fail(p, "bad \\u escape");
                return -1;
            }
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned lo;
                if (p->pos + 2 <= p->len && p->s[p->pos] == '\\' && p->s[p->pos + 1] == 'u') {
                    p->pos += 2;
                    if (hex4(p, &lo) < 0 || lo < 0xDC00 || lo > 0xDFFF) {
                        fail(p, "bad surrogate pair");
                        return -1;
                    }
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                } else {
                    cp = 0xFFFD;
                }
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                cp = 0xFFFD;
            }
            put_utf8(b, cp);
            break;
        }
        default:
            fail(p, "bad escape");
            return -1;
        }
    }
}

/* A string literal at p->pos, unescaped into the arena; NULL on error. */
static char *parse_arena_string(parser *p, size_t *len)
{
    p->scratch.len = 0;
    if (parse_string_into(p, &p->scratch) < 0)
        return NULL;
    *len = p->scratch.len;
    return arena_strdup(p, p->scratch.len ? p->scratch.data : "", p->scratch.len);
}

static json_value *parse_string(parser *p)
{
    size_t len;
    char *str = parse_arena_string(p, &len);
    if (str == NULL)
        return NULL;
    json_value *v = new_value(p, JSON_STRING);
    v->u.str.len = len;
    v->u.str.s = str;
    return v;
}

static json_value *parse_number(parser *p)
{
    size_t start = p->pos;
    if (p->pos < p->len && p->s[p->pos] == '-')
        p->pos++;
    if (p->pos >= p->len || !(p->s[p->pos] >= '0' && p->s[p->pos] <= '9')) {
        fail(p, "bad number");
        return NULL;
    }
    if (p->s[p->pos] == '0')
        p->pos++;
    else
        while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9')
            p->pos++;
    if (p->pos < p->len && p->s[p->pos] == '.') {
        p->pos++;
        if (p->pos >= p->len || !(p->s[p->pos] >= '0' && p->s[p->pos] <= '9')) {
            fail(p, "bad fraction");
            return NULL;
        }
        while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9')
            p->pos++;
    }
    if (p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        p->pos++;
        if (p->pos < p->len && (p->s[p->pos] == '+' || p->s[p->pos] == '-'))
            p->pos++;
        if (p->pos >= p->len || !(p->s[p->pos] >= '0' && p->s[p->pos] <= '9')) {
            fail(p, "bad exponent");
            return NULL;
        }
        while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9')
            p->pos++;
    }
    char tmp[64];
    size_t n = p->pos - start;
    json_value *v = new_value(p, JSON_NUMBER);
    if (n < sizeof tmp) {
        memcpy(tmp, p->s + start, n);
        tmp[n] = '\0';
        v->u.number = strtod(tmp, NULL);
    } else {
        char *big = xstrndup(p->s + start, n);
        v->u.number = strtod(big, NULL);
        free(big);
    }
    return v;
}

static int literal(parser *p, const char *word)
{
    size_t n = strlen(word);
    if (p->pos + n <= p->len && memcmp(p->s + p->pos, word, n) == 0) {
        p->pos += n;
        return 1;
    }
    return 0;
}

static json_value *parse_container(parser *p, int depth, int is_object)
{
    json_value *v = new_value(p, is_object ? JSON_OBJECT : JSON_ARRAY);
    char close = is_object ? '}' : ']';
    p->pos++;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == close) {
        p->pos++;
        return v;
    }
    for (;;) {
        char *key = NULL;
        skip_ws(p);
        if (is_object) {
            if (p->pos >= p->len || p->s[p->pos] != '"') {
                fail(p, "expected object key");
                goto err;
            }
            size_t klen;
            key = parse_arena_string(p, &klen);
            if (key == NULL)
                goto err;
            skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != ':') {
                fail(p, "expected ':'");
                goto err;
            }
            p->pos++;
        }
        json_value *item = parse_value(p, depth + 1);
        if (item == NULL)
            goto err;
        list_push(p, v, key, item);
        skip_ws(p);
        if (p->pos < p->len && p->s[p->pos] == ',') {
            p->pos++;
            continue;
        }
        if (p->pos < p->len && p->s[p->pos] == close) {
            p->pos++;
            return v;
        }
        fail(p, is_object ? "expected ',' or '}'" : "expected ',' or ']'");
        goto err;
    }
err:
    return NULL; /* the arena goes with the document (json_parse) */
}

static json_value *parse_value(parser *p, int depth)
{
    if (depth > JSON_MAX_DEPTH) {
        fail(p, "nesting too deep");
        return NULL;
    }
    skip_ws(p);
    if (p->pos >= p->len) {
        fail(p, "unexpected end of input");
        return NULL;
    }
    char c = p->s[p->pos];
    switch (c) {
    case '{': return parse_container(p, depth, 1);
    case '[': return parse_container(p, depth, 0);
    case '"': return parse_string(p);
    case 't':
        if (literal(p, "true")) {
            json_value *v = new_value(p, JSON_BOOL);
            v->u.boolean = 1;
            return v;
        }
        break;
    case 'f':
        if (literal(p, "false"))
            return new_value(p, JSON_BOOL);
        break;
    case 'n':
        if (literal(p, "null"))
            return new_value(p, JSON_NULL);
        break;
    default:
        if (c == '-' || (c >= '0' && c <= '9'))
            return parse_number(p);
    }
    fail(p, "unexpected character");
    return NULL;
}

json_value *json_parse(const char *s, size_t len, char *err, size_t errlen)
{
    parser p = {.s = s, .len = len, .err = err, .errlen = errlen};
    json_value *root = arena_alloc(&p, sizeof *root); /* data[0] of the first chunk */
    json_value *v = parse_value(&p, 0);
    if (v != NULL) {
        skip_ws(&p);
        if (p.pos != p.len)
            fail(&p, "trailing data");
    }
    buf_free(&p.scratch);
    if (v == NULL || p.failed) {
        arena_free(p.first);
        return NULL;
    }
    *root = *v;
    return root;
}

void json_free(json_value *v)
{
    if (v == NULL)
        return;
    arena_free((json_chunk *)((char *)v - offsetof(json_chunk, data)));
}

json_type json_typeof(const json_value *v)
{
    return v ? v->type : JSON_NULL;
}

const json_value *json_get(const json_value *v, const char *key)
{
    if (v == NULL || v->type != JSON_OBJECT)
        return NULL;
    for (size_t i = 0; i < v->u.list.len; i++)
        if (strcmp(v->u.list.keys[i], key) == 0)
            return v->u.list.items[i];
    return NULL;
}

const json_value *json_path(const json_value *v, ...)
{
    va_list ap;
    va_start(ap, v);
    const char *k;
    while (v != NULL && (k = va_arg(ap, const char *)) != NULL)
        v = json_get(v, k);
    va_end(ap);
    return v;
}

const json_value *json_at(const json_value *v, size_t i)
{
    if (v == NULL || (v->type != JSON_ARRAY && v->type != JSON_OBJECT) || i >= v->u.list.len)
        return NULL;
    return v->u.list.items[i];
}

const char *json_key_at(const json_value *v, size_t i)
{
    if (v == NULL || v->type != JSON_OBJECT || i >= v->u.list.len)
        return NULL;
    return v->u.list.keys[i];
}

size_t json_len(const json_value *v)
{
    if (v == NULL || (v->type != JSON_ARRAY && v->type != JSON_OBJECT))
        return 0;
    return v->u.list.len;
}

const char *json_string(const json_value *v)
{
    return v && v->type == JSON_STRING ? v->u.str.s : NULL;
}

size_t json_string_len(const json_value *v)
{
    return v && v->type == JSON_STRING ? v->u.str.len : 0;
}

double json_number(const json_value *v, double dflt)
{
    return v && v->type == JSON_NUMBER ? v->u.number : dflt;
}

int json_bool(const json_value *v, int dflt)
{
    return v && v->type == JSON_BOOL ? v->u.boolean : dflt;
}

void json_write(buf *b, const json_value *v)
{
    if (v == NULL) {
        buf_puts(b, "null");
        return;
    }
    switch (v->type) {
    case JSON_NULL: buf_puts(b, "null"); break;
    case JSON_BOOL: buf_puts(b, v->u.boolean ? "true" : "false"); break;
    case JSON_NUMBER:
        if (!isfinite(v->u.number))
            buf_puts(b, "null");
        else if (v->u.number == (double)(long long)v->u.number && fabs(v->u.number) < 1e15)
            buf_printf(b, "%lld", (long long)v->u.number);
        else
            buf_printf(b, "%.17g", v->u.number);
        break;
    case JSON_STRING: buf_json_string(b, v->u.str.s, v->u.str.len); break;
    case JSON_ARRAY:
    case JSON_OBJECT:
        buf_putc(b, v->type == JSON_ARRAY ? '[' : '{');
        for (size_t i = 0; i < v->u.list.len; i++) {
            if (i)
                buf_putc(b, ',');
            if (v->type == JSON_OBJECT) {
                buf_json_string(b, v->u.list.keys[i], strlen(v->u.list.keys[i]));
                buf_putc(b, ':');
            }
            json_write(b, v->u.list.items[i]);
        }
        buf_putc(b, v->type == JSON_ARRAY ? ']' : '}');
        break;
    }
}

int json_walk_strings(const json_value *v, int (*fn)(const char *s, size_t len, void *ud), void *ud)
{
    if (v == NULL)
        return 0;
    if (v->type == JSON_STRING)
        return fn(v->u.str.s, v->u.str.len, ud);
    if (v->type != JSON_ARRAY && v->type != JSON_OBJECT)
        return 0;
    for (size_t i = 0; i < v->u.list.len; i++) {
        int rc;
        if (v->type == JSON_OBJECT && (rc = fn(v->u.list.keys[i], strlen(v->u.list.keys[i]), ud)) != 0)
            return rc;
        if ((rc = json_walk_strings(v->u.list.items[i], fn, ud)) != 0)
            return rc;
    }
    return 0;
}

/* ---- writing without a DOM ------------------------------------------------- */

static void jo_before(json_out *o)
{
    if (o->after_key) {
        o->after_key = 0;
        return;
    }
    if (o->depth > 0 && o->depth <= JSON_OUT_DEPTH) {
        if (o->comma[o->depth - 1])
            buf_putc(o->b, ',');
        o->comma[o->depth - 1] = 1;
    }
}

void jo_init(json_out *o, buf *b)
{
    memset(o, 0, sizeof *o);
    o->b = b;
}

static void jo_open(json_out *o, char c)
{
    jo_before(o);
    buf_putc(o->b, c);
    if (o->depth < JSON_OUT_DEPTH) {
        o->comma[o->depth] = 0;
        o->open[o->depth] = c;
    }
    o->depth++;
}

void jo_object(json_out *o)
{
    jo_open(o, '{');
}

void jo_array(json_out *o)
{
    jo_open(o, '[');
}

void jo_end(json_out *o)
{
    if (o->depth == 0)
        return;
    o->depth--;
    buf_putc(o->b, o->depth < JSON_OUT_DEPTH && o->open[o->depth] == '[' ? ']' : '}');
}

void jo_key(json_out *o, const char *key)
{
    jo_before(o);
    buf_json_string(o->b, key, strlen(key));
    buf_putc(o->b, ':');
    o->after_key = 1;
}

void jo_str(json_out *o, const char *s)
{
    jo_before(o);
    if (s)
        buf_json_string(o->b, s, strlen(s));
    else
        buf_puts(o->b, "null");
}

void jo_bool(json_out *o, int v)
{
    jo_before(o);
    buf_puts(o->b, v ? "true" : "false");
}

void jo_int(json_out *o, long long v)
{
    jo_before(o);
    buf_printf(o->b, "%lld", v);
}

void jo_double(json_out *o, double v)
{
    jo_before(o);
    buf_printf(o->b, "%.6f", v);
}

void jo_value(json_out *o, const json_value *v)
{
    jo_before(o);
    json_write(o->b, v);
}

void jo_null(json_out *o)
{
    jo_before(o);
    buf_puts(o->b, "null");
}

void jo_raw(json_out *o, const char *json)
{
    jo_before(o);
    buf_puts(o->b, json);
}

void jo_kstr(json_out *o, const char *key, const char *s)
{
    jo_key(o, key);
    jo_str(o, s);
}

void jo_kbool(json_out *o, const char *key, int v)
{
    jo_key(o, key);
    jo_bool(o, v);
}

void jo_kint(json_out *o, const char *key, long long v)
{
    jo_key(o, key);
    jo_int(o, v);
}
