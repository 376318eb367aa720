/* Property and fuzz tests of the parsers that take outside input:
 *   json_parse                    (API responses, watch events)
 *   kube_watch_framer_feed        (watch stream framing)
 *   kube_config_load_kubeconfig   (a user's kubeconfig file)
 *   the NOTIFY payload path       (trigger → pg_consume_notifies → the
 *                                  text[] the controller queries with)
 *
 * Deterministic: inputs come from the seed corpus in tests/fuzz/corpus/ and
 * from mutations of it driven by a fixed PRNG seed, so a failure reproduces.
 * SAO_FUZZ_SEED and SAO_FUZZ_ITERATIONS change the seed and the number of
 * mutated inputs per target (see tests/fuzz/README.md). A failing input is
 * written to fuzz-failure-<target>.bin in the current directory: add it to
 * the corpus once fixed.
 *
 * The NOTIFY case needs PostgreSQL (DATABASE_URL or TEST_DATABASE_URL), like
 * test_pg, and runs alone: `test_fuzz_parsers notify` (ctest: test_fuzz_notify,
 * label server); without an argument the parser cases run (label unit). It
 * makes and drops its own database. */
#define _GNU_SOURCE
#include <dirent.h>
#include <ftw.h>
#include <math.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "config.h"
#include "json.h"
#include "kube.h"
#include "migrate.h"
#include "pg.h"
#include "reconcile.h"
#include "util.h"

/* ---- deterministic randomness ------------------------------------------- */

static uint64_t rng_state = 0x5a0f00d5eed1234ULL;
static unsigned long iterations = 2000;

static uint64_t rnd(void)
{
    /* xorshift64*: small, fast, and the same on every platform */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

static size_t below(size_t n)
{
    return n ? (size_t)(rnd() % n) : 0;
}

/* ---- the corpus ----------------------------------------------------------- */

typedef struct {
    char *data;
    size_t len;
    char *name;
} blob;

typedef struct {
    blob *v;
    size_t n;
} corpus;

static int not_hidden(const struct dirent *d)
{
    return d->d_name[0] != '.';
}

/* Every file of tests/fuzz/corpus/<sub>, in name order. */
static corpus load_corpus(const char *sub)
{
    corpus c = {0};
    const char *root = getenv("SAO_SOURCE_DIR");
    char *dir = xasprintf("%s/tests/fuzz/corpus/%s", root && *root ? root : SAO_SOURCE_DIR, sub);
    struct dirent **names = NULL;
    int n = scandir(dir, &names, not_hidden, alphasort);
    for (int i = 0; i < n; i++) {
        char *path = xasprintf("%s/%s", dir, names[i]->d_name);
        size_t len = 0;
        char *data = util_read_file(path, &len);
        if (data) {
            c.v = xrealloc(c.v, (c.n + 1) * sizeof *c.v);
            c.v[c.n++] = (blob){data, len, xstrdup(names[i]->d_name)};
        }
        free(path);
        free(names[i]);
    }
    free(names);
    if (c.n == 0)
        fprintf(stderr, "  no corpus in %s\n", dir);
    free(dir);
    return c;
}

static void corpus_free(corpus *c)
{
    for (size_t i = 0; i < c->n; i++) {
        free(c->v[i].data);
        free(c->v[i].name);
    }
    free(c->v);
    memset(c, 0, sizeof *c);
}

/* Tokens that tend to matter to JSON and YAML parsers. */
static const char *const tokens[] = {
    "{", "}", "[", "]", "\"", "\\", "\\u", "\\ud800", "\\udc00", "\\u0000", ":", ",", "\n", "\r\n",
    " ", "\t", "0", "-", "1e999", "-1e-999", "0.", ".5", "1E+", "123456789012345678901234567890",
    "true", "null", "fals", "\xc3", "\xe2\x82", "\xf0\x9f\x98\x80", "\xff", "&a ", "*a", "!!binary ",
    "---\n", "...\n", "? ", "- ", "|\n", ">-\n", "%YAML 1.1\n", "'", "#", "~", "<<: *a\n",
    "server: ", "token: ", "current-context: ", "name: ", "\"type\":\"ADDED\",", "\"object\":{}",
};

/* A mutated copy of in (NUL-terminated, caller frees .data). */
static blob mutate(const blob *in, const corpus *c)
{
    buf b = {0};
    buf_append(&b, in->data, in->len);
    int rounds = 1 + (int)below(4);
    for (int r = 0; r < rounds; r++) {
        size_t pos = below(b.len + 1);
        switch (below(8)) {
        case 0: /* flip a bit */
            if (b.len)
                b.data[below(b.len)] ^= (char)(1u << below(8));
            break;
        case 1: /* a random byte */
            if (b.len)
                b.data[below(b.len)] = (char)below(256);
            break;
        case 2: { /* insert a token */
            const char *t = tokens[below(sizeof tokens / sizeof tokens[0])];
            buf tail = {0};
            buf_append(&tail, b.data + pos, b.len - pos);
            b.len = pos;
            buf_puts(&b, t);
            buf_append(&b, tail.data, tail.len);
            buf_free(&tail);
            break;
        }
        case 3: { /* delete a range */
            size_t n = below(b.len - pos + 1);
            if (n > 64)
                n = below(64);
            memmove(b.data + pos, b.data + pos + n, b.len - pos - n);
            b.len -= n;
            break;
        }
        case 4: { /* duplicate a range */
            size_t n = below(b.len - pos + 1);
            if (n > 256)
                n = 256;
            buf dup = {0};
            buf_append(&dup, b.data + pos, n);
            buf tail = {0};
            buf_append(&tail, b.data + pos, b.len - pos);
            b.len = pos;
            buf_append(&b, dup.data, dup.len);
            buf_append(&b, tail.data, tail.len);
            buf_free(&dup);
            buf_free(&tail);
            break;
        }
        case 5: { /* splice with another corpus entry */
            const blob *o = &c->v[below(c->n)];
            size_t from = below(o->len + 1);
            b.len = pos;
            buf_append(&b, o->data + from, o->len - from);
            break;
        }
        case 6: /* truncate */
            b.len = pos;
            break;
        default: { /* random bytes */
            size_t n = 1 + below(8);
            for (size_t i = 0; i < n; i++)
                buf_putc(&b, (char)below(256));
            break;
        }
        }
        if (b.data)
            b.data[b.len] = '\0';
    }
    if (b.data == NULL)
        buf_puts(&b, "");
    return (blob){b.data, b.len, NULL};
}

/* Saves a failing input so it can be replayed and added to the corpus. */
static void save_failure(const char *target, const char *data, size_t len)
{
    char path[128];
    snprintf(path, sizeof path, "fuzz-failure-%s.bin", target);
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(data, 1, len, f);
        fclose(f);
    }
    fprintf(stderr, "  %s: failing input (%zu bytes) saved to %s; seed %#llx\n", target, len, path,
            (unsigned long long)rng_state);
}

/* ---- json_parse ----------------------------------------------------------- */

/* v and w hold the same data. A number too large for a double (1e999)
 * parses as infinity and is written as null, which JSON can hold. */
static int json_same(const json_value *v, const json_value *w)
{
    json_type tv = json_typeof(v), tw = json_typeof(w);
    if (tv == JSON_NUMBER && tw == JSON_NULL)
        return !isfinite(json_number(v, 0));
    if (tv != tw || json_len(v) != json_len(w))
        return 0;
    switch (tv) {
    case JSON_NUMBER: return json_number(v, 0) == json_number(w, 0);
    case JSON_BOOL: return json_bool(v, 0) == json_bool(w, 0);
    case JSON_STRING:
        return json_string_len(v) == json_string_len(w) &&
               memcmp(json_string(v), json_string(w), json_string_len(v)) == 0;
    case JSON_OBJECT:
    case JSON_ARRAY:
        for (size_t i = 0; i < json_len(v); i++) {
            if (tv == JSON_OBJECT && strcmp(json_key_at(v, i), json_key_at(w, i)) != 0)
                return 0;
            if (!json_same(json_at(v, i), json_at(w, i)))
                return 0;
        }
        return 1;
    default: return 1;
    }
}

/* parse → write → parse gives the same data, and write is then a fixed
 * point; a failure is a clean error. Returns 0 when the properties hold. */
static int json_properties(const char *s, size_t n)
{
    char err[256] = "";
    json_value *v = json_parse(s, n, err, sizeof err);
    if (v == NULL)
        return strncmp(err, "invalid JSON at byte ", 21) == 0 ? 0 : -1;
    int rc = 0;
    buf a = {0}, b = {0};
    json_write(&a, v);
    json_value *w = json_parse(a.data, a.len, err, sizeof err);
    if (w == NULL) {
        fprintf(stderr, "  json_write output does not parse: %s\n  output: %.200s\n", err, a.data);
        rc = -1;
    } else {
        json_write(&b, w);
        if (a.len != b.len || memcmp(a.data, b.data, a.len) != 0) {
            fprintf(stderr, "  json_write is not a fixed point:\n  1: %.200s\n  2: %.200s\n", a.data, b.data);
            rc = -1;
        }
        if (!json_same(v, w)) {
            fprintf(stderr, "  parse(write(v)) differs from v: %.200s\n", a.data);
            rc = -1;
        }
    }
    json_free(w);
    json_free(v);
    buf_free(&a);
    buf_free(&b);
    return rc;
}

static void test_json_corpus_and_mutations(void)
{
    corpus c = load_corpus("json");
    CHECK(c.n >= 3);
    for (size_t i = 0; i < c.n; i++) {
        char err[256];
        json_value *v = json_parse(c.v[i].data, c.v[i].len, err, sizeof err);
        if (v == NULL)
            fprintf(stderr, "  seed %s: %s\n", c.v[i].name, err);
        CHECK(v != NULL); /* every seed is valid JSON */
        json_free(v);
        CHECK(json_properties(c.v[i].data, c.v[i].len) == 0);
    }
    int failed = 0;
    unsigned long parsed = 0;
    for (unsigned long it = 0; it < iterations * 4 && c.n && !failed; it++) {
        blob m = mutate(&c.v[below(c.n)], &c);
        char err[64];
        json_value *v = json_parse(m.data, m.len, err, sizeof err);
        parsed += v != NULL;
        json_free(v);
        if (json_properties(m.data, m.len) != 0) {
            save_failure("json", m.data, m.len);
            failed = 1;
        }
        free(m.data);
    }
    CHECK(!failed);
    CHECK(parsed > 0); /* the mutations are not all rejected outright */
    corpus_free(&c);
}

static void test_json_garbage_and_depth(void)
{
    int failed = 0;
    for (unsigned long it = 0; it < iterations && !failed; it++) {
        size_t n = below(64);
        char data[64];
        for (size_t i = 0; i < n; i++)
            data[i] = "{}[]\":,\\ntrueflsa0123456789.eE+-u \x80\xff"[below(37)];
        if (json_properties(data, n) != 0) {
            save_failure("json-garbage", data, n);
            failed = 1;
        }
    }
    CHECK(!failed);

    /* Depth: 512 levels parse, 513 is a clean error, a million '[' do not
     * overflow the stack. */
    char err[256];
    buf b = {0};
    for (int i = 0; i < 512; i++)
        buf_putc(&b, '[');
    for (int i = 0; i < 512; i++)
        buf_putc(&b, ']');
    json_value *v = json_parse(b.data, b.len, err, sizeof err);
    CHECK(v != NULL);
    json_free(v);
    buf_reset(&b);
    for (int i = 0; i < 513; i++)
        buf_puts(&b, "{\"a\":");
    buf_puts(&b, "1");
    for (int i = 0; i < 513; i++)
        buf_putc(&b, '}');
    CHECK(json_parse(b.data, b.len, err, sizeof err) == NULL);
    CHECK_CONTAINS(err, "invalid JSON");
    buf_reset(&b);
    for (int i = 0; i < 1000000; i++)
        buf_putc(&b, '[');
    CHECK(json_parse(b.data, b.len, err, sizeof err) == NULL);
    CHECK_CONTAINS(err, "invalid JSON");
    buf_free(&b);

    /* Length-bounded: bytes past len are never read (ASan would see it). */
    char *exact = xmalloc(4);
    memcpy(exact, "[1,2", 4);
    CHECK(json_parse(exact, 4, err, sizeof err) == NULL);
    memcpy(exact, "\"ab\\", 4);
    CHECK(json_parse(exact, 4, err, sizeof err) == NULL);
    memcpy(exact, "1e-9", 4);
    v = json_parse(exact, 4, err, sizeof err);
    CHECK(v != NULL);
    json_free(v);
    free(exact);
}

/* ---- watch stream framing --------------------------------------------- */

typedef struct {
    buf log;    /* type \x1f object \x1e per event */
    int n;
    int stop_at; /* ask to stop after this many events (0: never) */
    int bad;     /* an object that is not a JSON object was delivered */
} events;

static int record_event(const char *type, const char *obj, size_t len, void *ud)
{
    events *e = ud;
    buf_puts(&e->log, type);
    buf_putc(&e->log, '\x1f');
    buf_append(&e->log, obj, len);
    buf_putc(&e->log, '\x1e');
    e->n++;
    char err[64];
    json_value *v = json_parse(obj, len, err, sizeof err);
    if (v == NULL || json_typeof(v) != JSON_OBJECT || type == NULL)
        e->bad = 1;
    json_free(v);
    return e->stop_at && e->n >= e->stop_at;
}

typedef struct {
    int rc;
    char err[256];
    size_t pending;
    events ev;
} feed_result;

/* Feeds s cut at ncuts random places (0: whole), with empty feeds mixed in. */
static void feed(const char *s, size_t n, size_t max_line, size_t ncuts, int stop_at, feed_result *out)
{
    memset(out, 0, sizeof *out);
    out->ev.stop_at = stop_at;
    size_t *cuts = xcalloc(ncuts + 2, sizeof *cuts);
    for (size_t i = 0; i < ncuts; i++)
        cuts[i] = below(n + 1);
    cuts[ncuts] = n;
    /* sort the cut points (insertion sort: ncuts is small) */
    for (size_t i = 1; i <= ncuts; i++)
        for (size_t j = i; j > 0 && cuts[j - 1] > cuts[j]; j--) {
            size_t t = cuts[j];
            cuts[j] = cuts[j - 1];
            cuts[j - 1] = t;
        }
    kube_watch_framer *f = kube_watch_framer_new(max_line);
    size_t at = 0;
    for (size_t i = 0; i <= ncuts; i++) {
        out->rc = kube_watch_framer_feed(f, s + at, cuts[i] - at, record_event, &out->ev, out->err,
                                         sizeof out->err);
        at = cuts[i];
        if (out->rc != 0)
            break;
    }
    out->pending = out->rc == 0 ? kube_watch_framer_pending(f) : 0;
    kube_watch_framer_free(f);
    free(cuts);
}

/* Any chunking gives what one whole feed gives: the same events, the same
 * outcome and error, the same bytes held back. Returns 0 when it holds. */
static int framer_properties(const char *s, size_t n, size_t max_line, int stop_at)
{
    feed_result whole, part;
    feed(s, n, max_line, 0, stop_at, &whole);
    int rc = 0;
    if (whole.rc == -1 && strncmp(whole.err, "malformed watch event", 21) != 0 &&
        strncmp(whole.err, "watch event longer than", 23) != 0) {
        fprintf(stderr, "  unexpected framer error: %s\n", whole.err);
        rc = -1;
    }
    if (whole.rc == 1 && (stop_at == 0 || whole.ev.n != stop_at))
        rc = -1;
    if (whole.ev.bad)
        rc = -1;
    for (int round = 0; round < 4 && rc == 0; round++) {
        size_t ncuts = round == 3 && n < 400 ? n : 1 + below(round == 0 ? 2 : 24);
        if (round == 3 && n < 400) { /* one byte at a time */
            memset(&part, 0, sizeof part);
            part.ev.stop_at = stop_at;
            kube_watch_framer *f = kube_watch_framer_new(max_line);
            for (size_t i = 0; i < n && part.rc == 0; i++) {
                part.rc = kube_watch_framer_feed(f, s + i, 1, record_event, &part.ev, part.err, sizeof part.err);
                if (part.rc == 0)
                    part.rc = kube_watch_framer_feed(f, s + i, 0, record_event, &part.ev, part.err,
                                                     sizeof part.err);
            }
            part.pending = part.rc == 0 ? kube_watch_framer_pending(f) : 0;
            kube_watch_framer_free(f);
        } else {
            feed(s, n, max_line, ncuts, stop_at, &part);
        }
        if (part.rc != whole.rc || part.ev.n != whole.ev.n || part.pending != whole.pending ||
            part.ev.log.len != whole.ev.log.len ||
            (whole.ev.log.len && memcmp(part.ev.log.data, whole.ev.log.data, whole.ev.log.len) != 0) ||
            (whole.rc == -1 && strcmp(part.err, whole.err) != 0)) {
            fprintf(stderr, "  chunked feed differs from whole feed: rc %d/%d events %d/%d pending %zu/%zu "
                            "err '%s' / '%s'\n",
                    part.rc, whole.rc, part.ev.n, whole.ev.n, part.pending, whole.pending, part.err, whole.err);
            rc = -1;
        }
        buf_free(&part.ev.log);
    }
    buf_free(&whole.ev.log);
    return rc;
}

static void test_framer_chunking_is_invisible(void)
{
    corpus c = load_corpus("watch");
    CHECK(c.n >= 3);
    for (size_t i = 0; i < c.n; i++)
        CHECK(framer_properties(c.v[i].data, c.v[i].len, 0, 0) == 0);

    /* The seed stream itself: five events, then a clean stop on request. */
    for (size_t i = 0; i < c.n; i++) {
        if (strcmp(c.v[i].name, "events.jsonl") != 0)
            continue;
        feed_result r;
        feed(c.v[i].data, c.v[i].len, 0, 7, 0, &r);
        CHECK(r.rc == 0 && r.ev.n == 5 && r.pending == 0);
        buf_free(&r.ev.log);
        feed(c.v[i].data, c.v[i].len, 0, 7, 2, &r);
        CHECK(r.rc == 1 && r.ev.n == 2);
        buf_free(&r.ev.log);
    }

    int failed = 0;
    for (unsigned long it = 0; it < iterations && c.n && !failed; it++) {
        blob m = mutate(&c.v[below(c.n)], &c);
        size_t max_line = below(3) == 0 ? 16 + below(300) : 0;
        int stop_at = below(4) == 0 ? 1 + (int)below(4) : 0;
        if (framer_properties(m.data, m.len, max_line, stop_at) != 0) {
            save_failure("watch", m.data, m.len);
            failed = 1;
        }
        free(m.data);
    }
    CHECK(!failed);
    corpus_free(&c);
}

/* Streams built from known events: the framer returns exactly them, in any
 * chunking, with CRLF, blank lines and padding around them. */
static void test_framer_generated_streams(void)
{
    corpus objs = load_corpus("json");
    static const char *const types[] = {"ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR", "\xc3\xa9t\\\""};
    int failed = 0;
    for (unsigned long it = 0; it < iterations / 4 + 1 && !failed; it++) {
        buf stream = {0}, want = {0};
        int nev = (int)below(6);
        for (int e = 0; e < nev; e++) {
            char err[128];
            const blob *o = &objs.v[below(objs.n)];
            json_value *v = json_parse(o->data, o->len, err, sizeof err);
            if (v == NULL || json_typeof(v) != JSON_OBJECT) {
                json_free(v);
                continue;
            }
            buf obj = {0};
            json_write(&obj, v);
            json_free(v);
            const char *type = types[below(sizeof types / sizeof types[0])];
            if (below(3) == 0)
                buf_puts(&stream, below(2) ? "\n" : "  \t\r\n");
            buf_puts(&stream, below(2) ? " {\"type\":" : "{\"type\" : ");
            /* the type as a JSON string (it may need escaping) */
            char *unescaped = xstrdup(type);
            if (strcmp(type, "\xc3\xa9t\\\"") == 0)
                buf_puts(&stream, "\"\\u00e9t\\\\\\\"\"");
            else
                buf_json_string(&stream, type, strlen(type));
            buf_puts(&stream, below(2) ? ",\"object\":" : " , \"object\" : ");
            buf_append(&stream, obj.data, obj.len);
            buf_puts(&stream, "}");
            buf_puts(&stream, below(2) ? "\n" : "\r\n");
            buf_puts(&want, unescaped);
            buf_putc(&want, '\x1f');
            buf_append(&want, obj.data, obj.len);
            buf_putc(&want, '\x1e');
            free(unescaped);
            buf_free(&obj);
        }
        if (stream.data == NULL)
            buf_puts(&stream, "");
        feed_result r;
        feed(stream.data, stream.len, 0, below(16), 0, &r);
        if (r.rc != 0 || r.pending != 0 || r.ev.log.len != want.len ||
            (want.len && memcmp(r.ev.log.data, want.data, want.len) != 0)) {
            fprintf(stderr, "  generated stream: rc %d err '%s' events %d\n", r.rc, r.err, r.ev.n);
            save_failure("watch-generated", stream.data, stream.len);
            failed = 1;
        }
        buf_free(&r.ev.log);
        buf_free(&stream);
        buf_free(&want);
    }
    CHECK(!failed);
    corpus_free(&objs);
}

static void test_framer_garbage_is_a_clean_error(void)
{
    int failed = 0, errors = 0;
    for (unsigned long it = 0; it < iterations && !failed; it++) {
        char data[200];
        size_t n = below(sizeof data);
        for (size_t i = 0; i < n; i++)
            data[i] = below(4) == 0 ? "\n\r {}\"[]:,"[below(11)] : (char)below(256);
        if (framer_properties(data, n, below(2) ? 32 : 0, 0) != 0) {
            save_failure("watch-garbage", data, n);
            failed = 1;
        }
        feed_result r;
        feed(data, n, 0, 0, 0, &r);
        errors += r.rc == -1;
        buf_free(&r.ev.log);
    }
    CHECK(!failed);
    CHECK(errors > 0);
    /* A line over the bound is refused before it is buffered whole. */
    kube_watch_framer *f = kube_watch_framer_new(1024);
    char err[128] = "";
    char *big = xmalloc(4096);
    memset(big, '{', 4096);
    events ev = {0};
    CHECK(kube_watch_framer_feed(f, big, 1000, record_event, &ev, err, sizeof err) == 0);
    CHECK(kube_watch_framer_feed(f, big, 4096, record_event, &ev, err, sizeof err) == -1);
    CHECK_CONTAINS(err, "longer than 1024 bytes");
    CHECK(kube_watch_framer_pending(f) <= 1024);
    kube_watch_framer_free(f);
    free(big);
    buf_free(&ev.log);
}

/* ---- kubeconfig --------------------------------------------------------- */

static char tmpdir[64];

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static char *write_tmp(const char *name, const char *data, size_t len)
{
    char *path = xasprintf("%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(data, 1, len, f);
        fclose(f);
    }
    return path;
}

/* What a load must look like: 0 with a server, or -1 with a message that
 * names the file and a config left empty; never a secret in the message. */
static int kubeconfig_properties(const char *path, const char *data, size_t len)
{
    kube_config c;
    char err[512] = "";
    char *p = write_tmp(path, data, len);
    int rc = kube_config_load_kubeconfig(p, &c, err, sizeof err), bad = 0;
    if (rc == 0) {
        size_t sl = c.server ? strlen(c.server) : 0;
        bad = c.server == NULL || sl == 0 || c.server[sl - 1] == '/';
    } else if (rc == -1) {
        char *prefix = xasprintf("kubeconfig %s", p);
        bad = strncmp(err, prefix, strlen(prefix)) != 0 || c.server || c.token || c.namespace ||
              c.ca_pem || c.ca_file || c.client_key_pem || c.client_key_file || c.token_file;
        free(prefix);
    } else {
        bad = 1;
    }
    /* Secrets of the seeds never show in a message. A mutation can move a
     * secret into a name the message quotes, so only the whole key/token
     * values of the unmutated seeds are looked for by the caller. */
    if (bad)
        fprintf(stderr, "  kubeconfig rc %d err '%s'\n", rc, err);
    kube_config_free(&c);
    free(p);
    return bad ? -1 : 0;
}

static void test_kubeconfig_corpus_and_mutations(void)
{
    corpus c = load_corpus("kubeconfig");
    CHECK(c.n >= 3);
    int ok = 0;
    for (size_t i = 0; i < c.n; i++) {
        kube_config k;
        char err[512] = "";
        char *p = write_tmp("seed.yaml", c.v[i].data, c.v[i].len);
        int rc = kube_config_load_kubeconfig(p, &k, err, sizeof err);
        ok += rc == 0;
        CHECK(strstr(err, "SECRET") == NULL);
        CHECK(kubeconfig_properties("seed.yaml", c.v[i].data, c.v[i].len) == 0);
        kube_config_free(&k);
        free(p);
    }
    CHECK(ok >= 3); /* token, client_cert_files, flow_and_anchors load */
    int failed = 0;
    for (unsigned long it = 0; it < iterations && c.n && !failed; it++) {
        blob m = mutate(&c.v[below(c.n)], &c);
        if (kubeconfig_properties("mutated.yaml", m.data, m.len) != 0) {
            save_failure("kubeconfig", m.data, m.len);
            failed = 1;
        }
        free(m.data);
    }
    CHECK(!failed);
    corpus_free(&c);
}

/* Kubeconfigs assembled from valid and broken parts; the secrets sit only in
 * credential fields, so no error message may contain them. */
static void test_kubeconfig_generated_never_leak(void)
{
    static const char *const ctx_parts[] = {
        "current-context: dev\n", "current-context: missing\n", "current-context: [dev]\n", "",
        "current-context: ''\n"};
    static const char *const contexts[] = {
        "contexts:\n- name: dev\n  context: {cluster: k, user: u, namespace: ns}\n",
        "contexts:\n- name: dev\n  context: {cluster: k, user: nobody}\n",
        "contexts:\n- name: dev\n  context: {user: u}\n",
        "contexts:\n- name: dev\n",
        "contexts: dev\n",
        "contexts:\n- {name: dev, context: {cluster: k}}\n",
        ""};
    static const char *const clusters[] = {
        "clusters:\n- name: k\n  cluster: {server: 'https://h:1///', certificate-authority-data: Q0E=}\n",
        "clusters:\n- name: k\n  cluster: {server: 'https://h:1', certificate-authority-data: '%%%not-base64'}\n",
        "clusters:\n- name: k\n  cluster: {server: 'https://h:1', insecure-skip-tls-verify: maybe}\n",
        "clusters:\n- name: k\n  cluster: {certificate-authority: ca.crt}\n",
        "clusters:\n- name: k\n",
        "clusters: {k: {server: x}}\n",
        ""};
    static const char *const users[] = {
        "users:\n- name: u\n  user: {token: tok-SECRET-1}\n",
        "users:\n- name: u\n  user: {token: tok-SECRET-1, client-key-data: S0VZLVNFQ1JFVA==}\n",
        "users:\n- name: u\n  user: {client-certificate-data: Q0VSVA==, client-key-data: S0VZLVNFQ1JFVA==}\n",
        "users:\n- name: u\n  user: {client-certificate-data: Q0VSVA==, client-key-data: '!!S0VZLVNFQ1JFVA'}\n",
        "users:\n- name: u\n  user: {client-certificate-data: '***tok-SECRET-1', client-key: k.pem}\n",
        "users:\n- name: u\n  user: {exec: {command: print-tok-SECRET-1}}\n",
        "users:\n- name: u\n  user: {username: admin, password: pw-SECRET-2}\n",
        "users:\n- name: u\n  user: {auth-provider: {name: oidc, config: {id-token: tok-SECRET-1}}}\n",
        "users:\n- name: u\n",
        ""};
    int failed = 0, loaded = 0, refused = 0;
    for (unsigned long it = 0; it < iterations && !failed; it++) {
        buf b = {0};
        const char *parts[4] = {ctx_parts[below(5)], contexts[below(7)], clusters[below(7)], users[below(10)]};
        /* shuffle the top-level keys */
        for (int i = 3; i > 0; i--) {
            int j = (int)below((size_t)i + 1);
            const char *t = parts[i];
            parts[i] = parts[j];
            parts[j] = t;
        }
        buf_puts(&b, "apiVersion: v1\nkind: Config\n");
        for (int i = 0; i < 4; i++)
            buf_puts(&b, parts[i]);
        kube_config k;
        char err[512] = "";
        char *p = write_tmp("generated.yaml", b.data, b.len);
        int rc = kube_config_load_kubeconfig(p, &k, err, sizeof err);
        loaded += rc == 0;
        refused += rc == -1;
        if (strstr(err, "SECRET") || strstr(err, "S0VZ") || kubeconfig_properties("generated.yaml", b.data, b.len)) {
            fprintf(stderr, "  message leaks or is malformed: %s\n", err);
            save_failure("kubeconfig-generated", b.data, b.len);
            failed = 1;
        }
        kube_config_free(&k);
        free(p);
        buf_free(&b);
    }
    CHECK(!failed);
    CHECK(loaded > 0 && refused > 0);

    /* $KUBECONFIG: the first entry of a list; an empty first entry or a
     * missing file is a clear error. */
    static const char env_yaml[] = "apiVersion: v1\ncurrent-context: c\ncontexts: [{name: c, context: {cluster: k}}]\n"
                                   "clusters: [{name: k, cluster: {server: 'https://e:1/'}}]\n";
    char *p = write_tmp("env.yaml", env_yaml, sizeof env_yaml - 1);
    char *list = xasprintf("%s:/nonexistent/other", p);
    char *old = getenv("KUBECONFIG") ? xstrdup(getenv("KUBECONFIG")) : NULL;
    kube_config k;
    char err[512] = "";
    setenv("KUBECONFIG", list, 1);
    CHECK(kube_config_load_kubeconfig(NULL, &k, err, sizeof err) == 0);
    CHECK_STR(k.server, "https://e:1");
    kube_config_free(&k);
    setenv("KUBECONFIG", ":x", 1);
    CHECK(kube_config_load_kubeconfig(NULL, &k, err, sizeof err) == -1);
    CHECK_CONTAINS(err, "empty entry");
    setenv("KUBECONFIG", "/nonexistent/kubeconfig", 1);
    CHECK(kube_config_load_kubeconfig(NULL, &k, err, sizeof err) == -1);
    CHECK_CONTAINS(err, "kubeconfig /nonexistent/kubeconfig: ");
    if (old)
        setenv("KUBECONFIG", old, 1);
    else
        unsetenv("KUBECONFIG");
    free(old);
    free(list);
    free(p);
}

/* ---- NOTIFY payloads ------------------------------------------------------ */

static const char *server_url;

/* Appends the UTF-8 encoding of a random code point (never NUL: PostgreSQL
 * text cannot hold it). */
static void put_random_char(buf *b)
{
    unsigned cp;
    switch (below(6)) {
    case 0: cp = 0x20 + (unsigned)below(0x5f); break;    /* printable ASCII */
    case 1: cp = 1 + (unsigned)below(0x1f); break;       /* control characters */
    case 2: cp = 0xa0 + (unsigned)below(0x60); break;    /* Latin-1 */
    case 3: cp = 0x100 + (unsigned)below(0xd700); break; /* BMP before the surrogates */
    case 4: cp = 0xe000 + (unsigned)below(0x1ffe); break;
    default: cp = 0x10000 + (unsigned)below(0x100000); break;
    }
    if (cp < 0x80) {
        buf_putc(b, (char)cp);
    } else if (cp < 0x800) {
        buf_putc(b, (char)(0xc0 | cp >> 6));
        buf_putc(b, (char)(0x80 | (cp & 0x3f)));
    } else if (cp < 0x10000) {
        buf_putc(b, (char)(0xe0 | cp >> 12));
        buf_putc(b, (char)(0x80 | ((cp >> 6) & 0x3f)));
        buf_putc(b, (char)(0x80 | (cp & 0x3f)));
    } else {
        buf_putc(b, (char)(0xf0 | cp >> 18));
        buf_putc(b, (char)(0x80 | ((cp >> 12) & 0x3f)));
        buf_putc(b, (char)(0x80 | ((cp >> 6) & 0x3f)));
        buf_putc(b, (char)(0x80 | (cp & 0x3f)));
    }
}

typedef struct {
    char **payloads;
    size_t n;
} notes;

static void collect(const char *channel, const char *payload, void *ud)
{
    notes *ns = ud;
    if (strcmp(channel, "sync_airbnb_accounts") != 0)
        return;
    ns->payloads = xrealloc(ns->payloads, (ns->n + 1) * sizeof *ns->payloads);
    ns->payloads[ns->n++] = xstrdup(payload);
}

/* Waits until ns holds want payloads (or timeout). Returns -1 if the
 * connection broke. */
static int wait_notes(pg_conn *l, notes *ns, size_t want, int timeout_ms)
{
    uint64_t end = util_now_ms() + (uint64_t)timeout_ms;
    while (ns->n < want && util_now_ms() < end) {
        struct pollfd p = {.fd = pg_socket(l), .events = POLLIN};
        poll(&p, 1, 50);
        if (pg_consume_notifies(l, collect, ns) < 0)
            return -1;
    }
    return 0;
}

/* Through the real trigger: INSERT an account with each hostile id; the
 * listener gets the id byte for byte (or '*' at 8000 bytes and more), and
 * the controller's partial-pass query (rec_accounts_sql with
 * rec_text_array) finds exactly that account again. */
static void test_notify_payloads_through_the_trigger(void)
{
    if (server_url == NULL) {
        fprintf(stderr, "  no database: set DATABASE_URL or TEST_DATABASE_URL\n");
        CHECK(!"PostgreSQL available");
        return;
    }
    char err[1024], db[64];
    snprintf(db, sizeof db, "sao_test_fuzz_%d", (int)getpid());
    pg_conn *admin = pg_connect(server_url, 0, err, sizeof err);
    CHECK(admin != NULL);
    if (admin == NULL) {
        fprintf(stderr, "  %s\n", err);
        return;
    }
    char *q = pg_quote_ident(db);
    char *sql = xasprintf("CREATE DATABASE %s", q);
    CHECK(pg_command(admin, sql, 0, NULL, err, sizeof err) == 0);
    free(sql);
    char *url = pg_url_with(server_url, "dbname", db, err, sizeof err);

    config cfg;
    memset(&cfg, 0, sizeof cfg);
    const char *root = getenv("SAO_SOURCE_DIR");
    char *mdir = xasprintf("%s/lua/migrations", root && *root ? root : SAO_SOURCE_DIR);
    cfg.database_url = url;
    cfg.migrations_dir = mdir;
    cfg.accounts_table = "airbnb.accounts";
    cfg.accounts_schema = "airbnb";
    cfg.accounts_relname = "accounts";
    cfg.db_timeout_ms = 10000;
    cfg.migrate_lock_timeout_s = 30;
    cfg.migrate_create_accounts_table = 1;

    pg_conn *w = url ? pg_connect(url, 10000, err, sizeof err) : NULL;
    pg_conn *l = url ? pg_connect(url, 10000, err, sizeof err) : NULL;
    CHECK(w && l);
    if (w && l && migrate_up(w, &cfg, NULL, err, sizeof err) != 0) {
        fprintf(stderr, "  migrate up: %s\n", err);
        CHECK(!"migrations applied");
    } else if (w && l) {
        CHECK(pg_listen(l, "sync_airbnb_accounts", err, sizeof err) == 0);

        /* The ids: the corpus, the edges, and random unicode. */
        corpus c = load_corpus("notify");
        CHECK(c.n >= 3);
        size_t nids = 0, cap = c.n + 80;
        char **ids = xcalloc(cap, sizeof *ids);
        for (size_t i = 0; i < c.n; i++) {
            size_t n = c.v[i].len;
            if (n && c.v[i].data[n - 1] == '\n')
                n--;
            ids[nids++] = xstrndup(c.v[i].data, n);
        }
        ids[nids++] = xstrdup("");
        ids[nids++] = xstrdup("new\nline\r\n");
        char *max = xmalloc(8001);
        memset(max, 'x', 8000);
        max[7999] = '\0';
        max[0] = '"';
        max[7998] = '\\';
        ids[nids++] = xstrdup(max); /* 7999 bytes: the longest payload */
        max[7999] = 'y';
        max[8000] = '\0';
        ids[nids++] = max; /* 8000 bytes: too long, '*' */
        /* Near the limit in multi-byte characters; repetitive, because an
         * index entry must compress under btree's 2704-byte bound. */
        buf unit = {0}, near = {0};
        for (int i = 0; i < 3; i++)
            put_random_char(&unit);
        while (near.len < 7990)
            buf_append(&near, unit.data, unit.len);
        buf_free(&unit);
        while (near.len > 7999) /* cut back to a character boundary under 8000 */
            do
                near.len--;
            while ((near.data[near.len] & 0xc0) == 0x80);
        near.data[near.len] = '\0';
        ids[nids++] = buf_steal(&near);
        while (nids < cap) {
            buf b = {0};
            size_t len = below(4) == 0 ? below(3) : 1 + below(120);
            for (size_t i = 0; i < len; i++)
                put_random_char(&b);
            if (b.data == NULL)
                buf_puts(&b, "");
            ids[nids++] = buf_steal(&b);
        }
        /* Drop duplicates (the table's primary key). */
        for (size_t i = 0; i < nids; i++)
            for (size_t j = i + 1; j < nids; j++)
                if (ids[i] && ids[j] && strcmp(ids[i], ids[j]) == 0) {
                    free(ids[j]);
                    ids[j] = NULL;
                }

        notes got = {0};
        size_t sent = 0;
        for (size_t i = 0; i < nids; i++) {
            if (ids[i] == NULL)
                continue;
            const char *params[] = {ids[i]};
            if (pg_command(w, "INSERT INTO airbnb.accounts (account_id, airbnb_cookie, x_client_version, "
                              "user_agent, is_active) VALUES ($1, 'cookie', 'v', 'ua', true)",
                           1, params, err, sizeof err) != 0) {
                fprintf(stderr, "  insert %zu (%zu bytes): %s\n", i, strlen(ids[i]), err);
                CHECK(!"account inserted");
                continue;
            }
            sent++;
            CHECK(wait_notes(l, &got, sent, 5000) == 0);
            if (got.n < sent) {
                CHECK(!"a notification per insert");
                break;
            }
            const char *payload = got.payloads[sent - 1];
            int too_long = strlen(ids[i]) >= 8000;
            if (strcmp(payload, too_long ? "*" : ids[i]) != 0) {
                fprintf(stderr, "  payload differs for id #%zu (%zu bytes): got %zu bytes\n", i,
                        strlen(ids[i]), strlen(payload));
                CHECK(!"payload is the id byte for byte");
                continue;
            }
            if (too_long)
                continue;
            /* The controller queues the payload and reads that account with
             * the partial-pass query: it must find exactly this row. */
            char *arr = rec_text_array((const char *const *)&payload, 1);
            char *psql = rec_accounts_sql(&cfg, 1);
            const char *p1[] = {arr};
            PGresult *res = pg_exec(w, psql, 1, p1, err, sizeof err);
            CHECK(res != NULL);
            if (res) {
                CHECK(PQntuples(res) == 1);
                if (PQntuples(res) == 1)
                    CHECK(strcmp(PQgetvalue(res, 0, PQfnumber(res, "account_id")), ids[i]) == 0);
                PQclear(res);
            } else {
                fprintf(stderr, "  partial query for id #%zu: %s\n", i, err);
            }
            free(arr);
            free(psql);
        }
        size_t distinct = 0;
        for (size_t i = 0; i < nids; i++)
            distinct += ids[i] != NULL;
        CHECK(sent == distinct && sent >= 60);

        /* All payloads in one partial pass: every account once. */
        char **batch = xcalloc(got.n, sizeof *batch);
        size_t nb = 0;
        for (size_t i = 0; i < got.n; i++)
            if (strcmp(got.payloads[i], "*") != 0)
                batch[nb++] = got.payloads[i];
        char *arr = rec_text_array((const char *const *)batch, nb);
        char *psql = rec_accounts_sql(&cfg, 1);
        const char *p1[] = {arr};
        PGresult *res = pg_exec(w, psql, 1, p1, err, sizeof err);
        CHECK(res && (size_t)PQntuples(res) == nb);
        if (res)
            PQclear(res);
        free(arr);
        free(psql);
        free(batch);

        /* A payload over the limit sent by hand is a clean error, and the
         * listener is unharmed. */
        char *huge = xmalloc(9001);
        memset(huge, 'z', 9000);
        huge[9000] = '\0';
        const char *hp[] = {huge};
        CHECK(pg_command(w, "SELECT pg_notify('sync_airbnb_accounts', $1)", 1, hp, err, sizeof err) == -1);
        CHECK_CONTAINS(err, "too long");
        free(huge);
        const char *ok[] = {"after"};
        CHECK(pg_command(w, "SELECT pg_notify('sync_airbnb_accounts', $1)", 1, ok, err, sizeof err) == 0);
        size_t before = got.n;
        CHECK(wait_notes(l, &got, before + 1, 5000) == 0);
        CHECK(got.n == before + 1 && strcmp(got.payloads[before], "after") == 0);

        for (size_t i = 0; i < got.n; i++)
            free(got.payloads[i]);
        free(got.payloads);
        for (size_t i = 0; i < nids; i++)
            free(ids[i]);
        free(ids);
        corpus_free(&c);
    }
    pg_close(w);
    pg_close(l);
    sql = xasprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", q);
    pg_command(admin, sql, 0, NULL, err, sizeof err);
    free(sql);
    free(q);
    pg_close(admin);
    free(url);
    free(mdir);
}

int main(int argc, char **argv)
{
    int notify = argc > 1 && strcmp(argv[1], "notify") == 0;
    const char *s = getenv("SAO_FUZZ_SEED");
    if (s && *s)
        rng_state = strtoull(s, NULL, 0) | 1;
    const char *n = getenv("SAO_FUZZ_ITERATIONS");
    if (n && *n)
        iterations = strtoul(n, NULL, 10);
    fprintf(stderr, "seed %#llx, %lu iterations per target\n", (unsigned long long)rng_state, iterations);
    server_url = getenv("TEST_DATABASE_URL");
    if (server_url == NULL || *server_url == '\0')
        server_url = getenv("DATABASE_URL");
    if (server_url && *server_url == '\0')
        server_url = NULL;

    snprintf(tmpdir, sizeof tmpdir, "/tmp/sao-fuzz-XXXXXX");
    if (mkdtemp(tmpdir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    if (notify) {
        RUN(test_notify_payloads_through_the_trigger);
    } else {
        RUN(test_json_corpus_and_mutations);
        RUN(test_json_garbage_and_depth);
        RUN(test_framer_chunking_is_invisible);
        RUN(test_framer_generated_streams);
        RUN(test_framer_garbage_is_a_clean_error);
        RUN(test_kubeconfig_corpus_and_mutations);
        RUN(test_kubeconfig_generated_never_leak);
    }
    nftw(tmpdir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    return check_summary();
}
