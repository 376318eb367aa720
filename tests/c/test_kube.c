/* The Kubernetes client: Status error mapping, query escaping, the watch
 * framing parser (pure), then the blocking client, the async client (retries,
 * rate limits, timeouts, watches) and the Lua binding against an in-process
 * HTTP test double. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <lauxlib.h>
#include <lualib.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "kube.h"
#include "log.h"
#include "util.h"

#define TOKEN "s3cr3t-token-value"

static char log_path[] = "/tmp/sao-kube-log-XXXXXX";

/* ======================================================================
 * TEST DOUBLE — an in-process HTTP server (libmicrohttpd).
 *
 * It stands in ONLY for faults a real API server will not produce on demand:
 * 429 + Retry-After, 503/500, a response slower than the client's timeout,
 * watch streams split at arbitrary bytes, dropped mid-event, or going idle.
 * It is not a Kubernetes API server; integration tests run against a real
 * kube-apiserver.
 * ====================================================================== */

static struct {
    pthread_mutex_t lock;
    int stopping;
    int hits_retry_after, hits_flaky, hits_broken;
    int active, max_active;               /* concurrent /sleep60 requests */
    uint64_t count_at[16];                /* arrival times of /count */
    int count_n;
    char last_method[16], last_auth[128], last_ctype[128], last_body[256];
} dbl = {.lock = PTHREAD_MUTEX_INITIALIZER};

static struct MHD_Daemon *daemon_;
static char server_url[64];

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int stopping(void)
{
    pthread_mutex_lock(&dbl.lock);
    int s = dbl.stopping;
    pthread_mutex_unlock(&dbl.lock);
    return s;
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned code, const char *body, const char *retry_after)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header(r, "Content-Type", "application/json");
    if (retry_after)
        MHD_add_response_header(r, "Retry-After", retry_after);
    enum MHD_Result ret = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return ret;
}

#define STATUS(code, reason, msg)                                                              \
    "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\","      \
    "\"message\":\"" msg "\",\"reason\":\"" reason "\",\"code\":" #code "}"

/* A chunked streaming body: chunks sent one per call with a pause between,
 * then the end (clean, an abrupt close, or idling first). */
struct stream {
    const char *const *chunks;
    int n, i;
    int idle_ms;          /* after the chunks, send nothing for this long */
    int end_with_error;   /* close the connection without the final chunk */
};

static ssize_t stream_reader(void *cls, uint64_t pos, char *out, size_t max)
{
    struct stream *s = cls;
    if (s->i < s->n) {
        if (s->i > 0)
            sleep_ms(30);
        size_t len = strlen(s->chunks[s->i]);
        if (len > max)
            len = max;
        memcpy(out, s->chunks[s->i], len);
        s->i++;
        return (ssize_t)len;
    }
    if (s->idle_ms > 0 && !stopping()) {
        sleep_ms(10);
        s->idle_ms -= 10;
        return 0; /* nothing yet; MHD calls again */
    }
    return s->end_with_error ? MHD_CONTENT_READER_END_WITH_ERROR : MHD_CONTENT_READER_END_OF_STREAM;
}

static const char *const split_chunks[] = {
    "{\"type\":\"ADDED\",\"object\":{\"kind\":\"Deployment\",\"metadata\":{\"name\":\"a\",\"resourceVersion\":\"1\"}}}\n{\"type\":\"MODI",
    "FIED\",\"object\":{\"metadata\":{\"name\":\"a\",\"resourceVersion\":\"2\"}}}\n",
    "{\"type\":\"BOOKMARK\",\"object\":{\"kind\":\"Deployment\",\"metadata\":{\"resourceVersion\":\"3\"}}}",
    "\n{\"type\":\"DELETED\",\"object\":{\"metadata\":{\"name\":\"a\",\"resourceVersion\":\"4\"}}}\n",
};
static const char *const drop_chunks[] = {
    "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"a\"}}}\n",
    "{\"type\":\"MODIFIED\",\"object\":{\"metadata\":{\"na",
};
static const char *const many_chunks[] = {
    "{\"type\":\"ADDED\",\"object\":{\"n\":1}}\n{\"type\":\"ADDED\",\"object\":{\"n\":2}}\n"
    "{\"type\":\"ADDED\",\"object\":{\"n\":3}}\n{\"type\":\"ADDED\",\"object\":{\"n\":4}}\n",
};

static enum MHD_Result stream_reply(struct MHD_Connection *c, const char *const *chunks, int n, int idle_ms,
                                    int end_with_error)
{
    struct stream *s = xcalloc(1, sizeof *s);
    s->chunks = chunks;
    s->n = n;
    s->idle_ms = idle_ms;
    s->end_with_error = end_with_error;
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_reader, s, free);
    MHD_add_response_header(r, "Content-Type", "application/json");
    enum MHD_Result ret = MHD_queue_response(c, 200, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                               const char *version, const char *upload_data, size_t *upload_size,
                               void **con_cls)
{
    buf *body = *con_cls;
    if (body == NULL) {
        *con_cls = xcalloc(1, sizeof(buf));
        return MHD_YES;
    }
    if (*upload_size) {
        buf_append(body, upload_data, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    const char *ctype = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
    pthread_mutex_lock(&dbl.lock);
    snprintf(dbl.last_method, sizeof dbl.last_method, "%s", method);
    snprintf(dbl.last_auth, sizeof dbl.last_auth, "%s", auth ? auth : "");
    snprintf(dbl.last_ctype, sizeof dbl.last_ctype, "%s", ctype ? ctype : "");
    snprintf(dbl.last_body, sizeof dbl.last_body, "%s", body->data ? body->data : "");
    pthread_mutex_unlock(&dbl.lock);

    if (strcmp(url, "/ok") == 0)
        return reply(c, 200, "{\"kind\":\"Thing\",\"ok\":true}", NULL);
    if (strcmp(url, "/conflict") == 0)
        return reply(c, 409, STATUS(409, "AlreadyExists", "deployments.apps \\\"x\\\" already exists"), NULL);
    if (strcmp(url, "/retry-after") == 0) {
        pthread_mutex_lock(&dbl.lock);
        int n = ++dbl.hits_retry_after;
        pthread_mutex_unlock(&dbl.lock);
        if (n == 1)
            return reply(c, 429, STATUS(429, "TooManyRequests", "slow down"), "1");
        return reply(c, 200, "{\"after\":\"429\"}", NULL);
    }
    if (strcmp(url, "/flaky") == 0) {
        pthread_mutex_lock(&dbl.lock);
        int n = ++dbl.hits_flaky;
        pthread_mutex_unlock(&dbl.lock);
        if (n == 1)
            return reply(c, 503, "upstream unavailable", NULL);
        return reply(c, 200, "{\"after\":\"503\"}", NULL);
    }
    if (strcmp(url, "/broken") == 0) {
        pthread_mutex_lock(&dbl.lock);
        dbl.hits_broken++;
        pthread_mutex_unlock(&dbl.lock);
        return reply(c, 500, STATUS(500, "InternalError", "etcd is sad"), NULL);
    }
    if (strcmp(url, "/slow") == 0) {
        for (int i = 0; i < 200 && !stopping(); i++)
            sleep_ms(10);
        return reply(c, 200, "{\"slow\":true}", NULL);
    }
    if (strcmp(url, "/sleep60") == 0) {
        pthread_mutex_lock(&dbl.lock);
        if (++dbl.active > dbl.max_active)
            dbl.max_active = dbl.active;
        pthread_mutex_unlock(&dbl.lock);
        sleep_ms(60);
        pthread_mutex_lock(&dbl.lock);
        dbl.active--;
        pthread_mutex_unlock(&dbl.lock);
        return reply(c, 200, "{}", NULL);
    }
    if (strcmp(url, "/count") == 0) {
        pthread_mutex_lock(&dbl.lock);
        if (dbl.count_n < 16)
            dbl.count_at[dbl.count_n++] = util_now_ms();
        pthread_mutex_unlock(&dbl.lock);
        return reply(c, 200, "{}", NULL);
    }
    if (strcmp(url, "/watch/split") == 0)
        return stream_reply(c, split_chunks, 4, 0, 0);
    if (strcmp(url, "/watch/drop") == 0)
        return stream_reply(c, drop_chunks, 2, 0, 1);
    if (strcmp(url, "/watch/many") == 0)
        return stream_reply(c, many_chunks, 1, 0, 0);
    if (strcmp(url, "/watch/idle") == 0)
        return stream_reply(c, drop_chunks, 1, 3000, 0);
    if (strcmp(url, "/watch/gone") == 0)
        return reply(c, 410, STATUS(410, "Expired", "too old resource version: 1 (5)"), NULL);
    return reply(c, 404, STATUS(404, "NotFound", "no route"), NULL);
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    buf *b = *con_cls;
    if (b) {
        buf_free(b);
        free(b);
    }
    *con_cls = NULL;
}

static int double_start(void)
{
    daemon_ = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL,
                               handler, NULL, MHD_OPTION_NOTIFY_COMPLETED, completed, NULL,
                               MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10, MHD_OPTION_END);
    if (daemon_ == NULL)
        return -1;
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(daemon_, MHD_DAEMON_INFO_BIND_PORT);
    snprintf(server_url, sizeof server_url, "http://127.0.0.1:%u", (unsigned)info->port);
    return 0;
}

static void double_stop(void)
{
    pthread_mutex_lock(&dbl.lock);
    dbl.stopping = 1;
    pthread_mutex_unlock(&dbl.lock);
    MHD_stop_daemon(daemon_);
}

/* ====================================================================== */

static kube_client *client_for(const char *url, char *token_file)
{
    kube_config cfg = {0};
    char err[256];
    cfg.server = (char *)url;
    cfg.token = TOKEN;
    cfg.token_file = token_file;
    kube_client *c = kube_client_new(&cfg, err, sizeof err);
    if (c == NULL)
        fprintf(stderr, "  kube_client_new: %s\n", err);
    return c;
}

/* ---- pure: Status mapping, escaping ----------------------------------- */

static void status_line(long status, const char *body, char *out, size_t outlen, kube_response *r)
{
    memset(r, 0, sizeof *r);
    r->status = status;
    r->body = xstrdup(body);
    r->len = strlen(body);
    kube_response_parse_status(r);
    kube_response_error(r, out, outlen);
}

static void test_status_error_mapping(void)
{
    kube_response r;
    char line[512];
    status_line(409,
                "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\","
                "\"message\":\"deployments.apps \\\"x\\\" already exists\",\"reason\":\"AlreadyExists\","
                "\"details\":{\"name\":\"x\",\"group\":\"apps\",\"kind\":\"deployments\"},\"code\":409}",
                line, sizeof line, &r);
    CHECK_STR(line, "409 Conflict (AlreadyExists): deployments.apps \"x\" already exists");
    CHECK_STR(r.reason, "AlreadyExists");
    CHECK(r.code == 409);
    kube_response_free(&r);

    status_line(404, STATUS(404, "NotFound", "deployments.apps \\\"y\\\" not found"), line, sizeof line, &r);
    CHECK_STR(line, "404 Not Found (NotFound): deployments.apps \"y\" not found");
    kube_response_free(&r);

    status_line(422,
                STATUS(422, "Invalid",
                       "Deployment.apps \\\"z\\\" is invalid: spec.template.metadata.labels: Invalid value: "
                       "map[string]string{\\\"app\\\":\\\"w\\\"}: `selector` does not match template `labels`"),
                line, sizeof line, &r);
    CHECK_STR(line, "422 Unprocessable Entity (Invalid): Deployment.apps \"z\" is invalid: "
                    "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"w\"}: "
                    "`selector` does not match template `labels`");
    CHECK(r.code == 422);
    kube_response_free(&r);

    /* Not a Status (a proxy in the way): the start of the body, on one line. */
    status_line(502, "upstream connect error\nor disconnect", line, sizeof line, &r);
    CHECK_STR(line, "502 Bad Gateway: upstream connect error or disconnect");
    CHECK(r.reason == NULL && r.message == NULL);
    kube_response_free(&r);

    /* A 2xx Status (DELETE answers one) is a success, not an error. */
    status_line(200, "{\"kind\":\"Status\",\"status\":\"Success\",\"reason\":\"Gone\"}", line, sizeof line, &r);
    CHECK(r.reason == NULL);
    kube_response_free(&r);

    memset(&r, 0, sizeof r);
    CHECK_STR(kube_response_error(&r, line, sizeof line), "no response");
}

static void test_escape(void)
{
    char *e = kube_escape("app.kubernetes.io/managed-by=sync-airbnb-operator,account-id in (a b)");
    CHECK_STR(e, "app.kubernetes.io%2Fmanaged-by%3Dsync-airbnb-operator%2Caccount-id%20in%20%28a%20b%29");
    free(e);
    e = kube_escape("");
    CHECK_STR(e, "");
    free(e);
}

/* ---- pure: watch framing ---------------------------------------------- */

struct frames {
    int n;
    char type[8][16];
    char obj[8][160];
    int stop_at; /* return non-zero from the callback at this event (1-based), 0 = never */
};

static int on_frame(const char *type, const char *obj, size_t len, void *ud)
{
    struct frames *f = ud;
    if (f->n < 8) {
        snprintf(f->type[f->n], sizeof f->type[0], "%s", type);
        snprintf(f->obj[f->n], sizeof f->obj[0], "%.*s", (int)len, obj);
    }
    f->n++;
    return f->stop_at && f->n == f->stop_at;
}

static const char framing_stream[] =
    "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"a\",\"resourceVersion\":\"10\"}}}\n"
    "\n"
    "{\"type\":\"BOOKMARK\",\"object\":{\"kind\":\"Deployment\",\"metadata\":{\"resourceVersion\":\"11\"}}}\r\n"
    "  {\"type\": \"ERROR\", \"object\": {\"kind\":\"Status\",\"code\":410,\"reason\":\"Expired\"}}\n"
    "{\"type\":\"DELETED\",\"obj";

static void check_framing_result(const struct frames *f)
{
    CHECK(f->n == 3);
    CHECK_STR(f->type[0], "ADDED");
    CHECK_STR(f->obj[0], "{\"metadata\":{\"name\":\"a\",\"resourceVersion\":\"10\"}}");
    CHECK_STR(f->type[1], "BOOKMARK");
    CHECK_STR(f->obj[1], "{\"kind\":\"Deployment\",\"metadata\":{\"resourceVersion\":\"11\"}}");
    CHECK_STR(f->type[2], "ERROR");
    CHECK_CONTAINS(f->obj[2], "\"code\":410");
}

static void test_framer_byte_by_byte(void)
{
    struct frames f = {0};
    char err[160];
    kube_watch_framer *fr = kube_watch_framer_new(0);
    size_t n = strlen(framing_stream);
    for (size_t i = 0; i < n; i++)
        CHECK(kube_watch_framer_feed(fr, framing_stream + i, 1, on_frame, &f, err, sizeof err) == 0);
    check_framing_result(&f);
    CHECK(kube_watch_framer_pending(fr) == strlen("{\"type\":\"DELETED\",\"obj"));
    kube_watch_framer_free(fr);

    /* The same stream in one piece gives the same events. */
    struct frames g = {0};
    fr = kube_watch_framer_new(0);
    CHECK(kube_watch_framer_feed(fr, framing_stream, n, on_frame, &g, err, sizeof err) == 0);
    check_framing_result(&g);
    kube_watch_framer_free(fr);
}

static void test_framer_errors_and_stop(void)
{
    char err[160] = "";
    struct frames f = {0};
    kube_watch_framer *fr = kube_watch_framer_new(0);
    CHECK(kube_watch_framer_feed(fr, "not json\n", 9, on_frame, &f, err, sizeof err) == -1);
    CHECK_CONTAINS(err, "malformed watch event");
    kube_watch_framer_free(fr);

    fr = kube_watch_framer_new(0);
    const char *no_type = "{\"object\":{}}\n";
    CHECK(kube_watch_framer_feed(fr, no_type, strlen(no_type), on_frame, &f, err, sizeof err) == -1);
    CHECK_CONTAINS(err, "no string \"type\"");
    kube_watch_framer_free(fr);

    fr = kube_watch_framer_new(64);
    char big[100];
    memset(big, 'x', sizeof big);
    CHECK(kube_watch_framer_feed(fr, big, 50, on_frame, &f, err, sizeof err) == 0);
    CHECK(kube_watch_framer_feed(fr, big, 50, on_frame, &f, err, sizeof err) == -1);
    CHECK_CONTAINS(err, "longer than 64 bytes");
    kube_watch_framer_free(fr);
    CHECK(f.n == 0);

    struct frames s = {.stop_at = 1};
    fr = kube_watch_framer_new(0);
    CHECK(kube_watch_framer_feed(fr, framing_stream, strlen(framing_stream), on_frame, &s, err, sizeof err) == 1);
    CHECK(s.n == 1);
    kube_watch_framer_free(fr);
}

/* ---- blocking client against the double -------------------------------- */

static void test_blocking_request(void)
{
    kube_client *c = client_for(server_url, NULL);
    kube_response r;
    char err[256];
    CHECK(c != NULL);
    if (c == NULL)
        return;
    CHECK(kube_request(c, "GET", "/ok", NULL, NULL, 0, 2000, &r, err, sizeof err) == 0);
    CHECK(r.status == 200);
    CHECK_STR(r.body, "{\"kind\":\"Thing\",\"ok\":true}");
    CHECK(r.retry_after_s == -1 && r.reason == NULL);
    CHECK_STR(dbl.last_auth, "Bearer " TOKEN);
    kube_response_free(&r);

    const char *patch = "{\"spec\":{\"replicas\":1}}";
    CHECK(kube_request(c, "PATCH", "/ok", "application/merge-patch+json", patch, strlen(patch), 2000, &r, err,
                       sizeof err) == 0);
    CHECK_STR(dbl.last_method, "PATCH");
    CHECK_STR(dbl.last_ctype, "application/merge-patch+json");
    CHECK_STR(dbl.last_body, patch);
    kube_response_free(&r);

    CHECK(kube_request(c, "POST", "/ok", NULL, "{}", 2, 2000, &r, err, sizeof err) == 0);
    CHECK_STR(dbl.last_ctype, "application/json");
    kube_response_free(&r);

    CHECK(kube_request(c, "POST", "/conflict", NULL, "{}", 2, 2000, &r, err, sizeof err) == 0);
    CHECK(r.status == 409);
    CHECK_STR(r.reason, "AlreadyExists");
    kube_response_free(&r);

    CHECK(kube_request(c, "GET", "/retry-after", NULL, NULL, 0, 2000, &r, err, sizeof err) == 0);
    CHECK(r.status == 429 && r.retry_after_s == 1);
    kube_response_free(&r);

    CHECK(kube_request(c, "GET", "no-slash", NULL, NULL, 0, 2000, &r, err, sizeof err) == -1);
    CHECK_CONTAINS(err, "path must start with /");
    CHECK(kube_request(c, "GE T", "/ok", NULL, NULL, 0, 2000, &r, err, sizeof err) == -1);
    CHECK_CONTAINS(err, "invalid method");
    kube_client_free(c);
}

static void test_blocking_timeout(void)
{
    kube_client *c = client_for(server_url, NULL);
    kube_response r;
    char err[256] = "";
    uint64_t t0 = util_now_ms();
    CHECK(kube_request(c, "GET", "/slow", NULL, NULL, 0, 300, &r, err, sizeof err) == -1);
    uint64_t took = util_now_ms() - t0;
    CHECK_STR(err, "GET /slow: timed out after 300 ms");
    CHECK(took >= 290 && took < 1500);
    CHECK(r.status == 0 && r.body == NULL);
    CHECK(strstr(err, TOKEN) == NULL);
    kube_client_free(c);
}

static void test_token_file_rotation(void)
{
    char path[] = "/tmp/sao-kube-token-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd < 0)
        return;
    CHECK(write(fd, "token-one\n", 10) == 10);
    close(fd);
    kube_client *c = client_for(server_url, path);
    kube_response r;
    char err[256];
    CHECK(kube_request(c, "GET", "/ok", NULL, NULL, 0, 2000, &r, err, sizeof err) == 0);
    CHECK_STR(dbl.last_auth, "Bearer token-one"); /* the file wins over cfg.token */
    kube_response_free(&r);

    /* Same size, new content; the kubelet's rotation also moves mtime. */
    fd = open(path, O_WRONLY | O_TRUNC);
    CHECK(write(fd, "token-two\n", 10) == 10);
    close(fd);
    struct timespec later[2] = {{time(NULL) + 10, 0}, {time(NULL) + 10, 0}};
    utimensat(AT_FDCWD, path, later, 0);
    CHECK(kube_request(c, "GET", "/ok", NULL, NULL, 0, 2000, &r, err, sizeof err) == 0);
    CHECK_STR(dbl.last_auth, "Bearer token-two");
    kube_response_free(&r);

    /* A file that disappears keeps the last good token. */
    unlink(path);
    CHECK(kube_request(c, "GET", "/ok", NULL, NULL, 0, 2000, &r, err, sizeof err) == 0);
    CHECK_STR(dbl.last_auth, "Bearer token-two");
    kube_response_free(&r);
    kube_client_free(c);
}

/* ---- async client ------------------------------------------------------ */

struct result {
    int done;
    long status;
    char body[128];
    char reason[32];
    char err[256];
    uint64_t at_ms;
};

static void on_done(const kube_response *r, const char *err, void *ud)
{
    struct result *res = ud;
    res->done++;
    res->at_ms = util_now_ms();
    if (r) {
        res->status = r->status;
        snprintf(res->body, sizeof res->body, "%s", r->body);
        snprintf(res->reason, sizeof res->reason, "%s", r->reason ? r->reason : "");
    } else {
        snprintf(res->err, sizeof res->err, "%s", err);
    }
}

struct env {
    uv_loop_t loop;
    uv_timer_t guard;
    int expired;
    kube_client *client;
    kube_async *a;
};

static void env_open(struct env *e, const char *url, const kube_limits *lim)
{
    memset(e, 0, sizeof *e);
    uv_loop_init(&e->loop);
    uv_timer_init(&e->loop, &e->guard);
    e->guard.data = e;
    e->client = client_for(url, NULL);
    e->a = kube_async_new(e->client, &e->loop, lim);
}

static void on_guard(uv_timer_t *t)
{
    ((struct env *)t->data)->expired = 1;
}

/* Runs the loop until *counter reaches want or timeout_ms passes. */
static void run_until(struct env *e, const int *counter, int want, int timeout_ms)
{
    e->expired = 0;
    uv_timer_start(&e->guard, on_guard, (uint64_t)timeout_ms, 0);
    while (*counter < want && !e->expired)
        uv_run(&e->loop, UV_RUN_ONCE);
    uv_timer_stop(&e->guard);
}

static void env_close(struct env *e)
{
    kube_async_free(e->a);
    uv_close((uv_handle_t *)&e->guard, NULL);
    uv_run(&e->loop, UV_RUN_DEFAULT); /* lets the closed handles go */
    CHECK(uv_loop_close(&e->loop) == 0);
    kube_client_free(e->client);
}

struct stat_probe {
    const char *verb;
    long code;
    unsigned long count;
};

static void find_stat(const char *verb, long code, unsigned long count, void *ud)
{
    struct stat_probe *p = ud;
    if (strcmp(verb, p->verb) == 0 && code == p->code)
        p->count = count;
}

static unsigned long stat_count(const char *verb, long code)
{
    struct stat_probe p = {verb, code, 0};
    kube_stats_foreach(find_stat, &p);
    return p.count;
}

static void test_async_429_retry_after_honoured(void)
{
    struct env e;
    struct result res = {0};
    env_open(&e, server_url, NULL);
    kube_stats_reset();
    dbl.hits_retry_after = 0;
    uint64_t t0 = util_now_ms();
    CHECK(kube_async_request(e.a, "GET", "/retry-after", NULL, NULL, 0, 2000, on_done, &res) == 0);
    CHECK(res.done == 0); /* never called from inside kube_async_request */
    run_until(&e, &res.done, 1, 5000);
    CHECK(res.done == 1);
    CHECK(res.status == 200);
    CHECK_STR(res.body, "{\"after\":\"429\"}");
    uint64_t waited = res.at_ms - t0;
    CHECK(waited >= 1000 && waited < 2500); /* Retry-After: 1 */
    CHECK(dbl.hits_retry_after == 2);
    CHECK(stat_count("GET", 429) == 1);
    CHECK(stat_count("GET", 200) == 1);
    env_close(&e);
}

static void test_async_503_retried(void)
{
    struct env e;
    struct result res = {0};
    kube_limits lim = {.backoff_base_ms = 20};
    env_open(&e, server_url, &lim);
    dbl.hits_flaky = 0;
    kube_async_request(e.a, "GET", "/flaky", NULL, NULL, 0, 2000, on_done, &res);
    run_until(&e, &res.done, 1, 3000);
    CHECK(res.done == 1 && res.status == 200);
    CHECK(dbl.hits_flaky == 2);
    env_close(&e);
}

static void test_async_500_gives_up_after_max_retries(void)
{
    struct env e;
    struct result res = {0};
    kube_limits lim = {.max_retries = 2, .backoff_base_ms = 10, .backoff_max_ms = 40};
    env_open(&e, server_url, &lim);
    dbl.hits_broken = 0;
    kube_async_request(e.a, "PATCH", "/broken", NULL, "{}", 2, 2000, on_done, &res);
    run_until(&e, &res.done, 1, 3000);
    CHECK(res.done == 1);
    CHECK(res.status == 500);
    CHECK_STR(res.reason, "InternalError");
    CHECK(dbl.hits_broken == 3); /* first attempt + 2 retries */
    env_close(&e);
}

/* A POST (not idempotent) is not repeated after a failure that may have come
 * after the server accepted it (a 500, a timeout); it is when the server asked
 * for it (429 + Retry-After) or no connection was ever made. */
static void test_async_post_repeated_only_when_known_not_to_have_happened(void)
{
    struct env e;
    struct result broken = {0}, slow = {0}, later = {0}, refused = {0};
    kube_limits lim = {.max_retries = 2, .backoff_base_ms = 10, .backoff_max_ms = 40};
    env_open(&e, server_url, &lim);
    kube_stats_reset();
    dbl.hits_broken = 0;
    dbl.hits_retry_after = 0;
    kube_async_request(e.a, "POST", "/broken", NULL, "{}", 2, 2000, on_done, &broken);
    kube_async_request(e.a, "POST", "/slow", NULL, "{}", 2, 250, on_done, &slow);
    kube_async_request(e.a, "POST", "/retry-after", NULL, "{}", 2, 2000, on_done, &later);
    run_until(&e, &broken.done, 1, 3000);
    run_until(&e, &slow.done, 1, 3000);
    run_until(&e, &later.done, 1, 5000);
    CHECK(broken.status == 500);
    CHECK(dbl.hits_broken == 1);
    CHECK_STR(slow.err, "POST /slow: timed out after 250 ms");
    CHECK(stat_count("POST", 0) == 1);
    CHECK(later.status == 200 && dbl.hits_retry_after == 2);
    env_close(&e);

    kube_limits lim1 = {.max_retries = 1, .backoff_base_ms = 10};
    env_open(&e, "http://127.0.0.1:1", &lim1);
    kube_stats_reset();
    kube_async_request(e.a, "POST", "/x", NULL, "{}", 2, 1000, on_done, &refused);
    run_until(&e, &refused.done, 1, 3000);
    CHECK(refused.done == 1 && refused.err[0] != '\0');
    CHECK(stat_count("POST", 0) == 2); /* connection refused: never sent, so repeated */
    env_close(&e);
}

static int gate_open;

static int write_gate(void *ud)
{
    (void)ud;
    return gate_open;
}

/* Issue 16: leadership is checked before every attempt of a Deployment
 * write, retries included; queued writes are failed when it is lost. */
static void test_async_write_gate_before_every_attempt(void)
{
    struct env e;
    struct result res = {0}, get = {0}, refused = {0};
    kube_limits lim = {.max_retries = 3, .backoff_base_ms = 300, .backoff_max_ms = 600};
    env_open(&e, server_url, &lim);
    kube_async_set_write_gate(e.a, write_gate, NULL);
    dbl.hits_broken = 0;
    gate_open = 1;
    /* a DELETE: repeated after a 500 (a POST is not) */
    kube_async_request(e.a, "DELETE", "/broken?in=/deployments", NULL, NULL, 0, 2000, on_done, &res);
    run_until(&e, &dbl.hits_broken, 1, 3000); /* the first attempt went out (500) */
    CHECK(dbl.hits_broken == 1 && res.done == 0);
    gate_open = 0;
    /* Its retry waits in backoff (failed now, not sent), or its 500 is still
     * on the way (the retry is refused by the gate when it comes up). */
    kube_async_cancel_writes(e.a);
    run_until(&e, &res.done, 1, 3000);
    CHECK(res.done == 1 && res.status == 0);
    CHECK_CONTAINS(res.err, "not the leader");
    /* a new write is refused at its first attempt; reads are never gated */
    kube_async_request(e.a, "PATCH", "/ok?in=/deployments", NULL, "{}", 2, 2000, on_done, &refused);
    kube_async_request(e.a, "GET", "/ok?in=/deployments", NULL, NULL, 0, 2000, on_done, &get);
    run_until(&e, &get.done, 1, 3000);
    run_until(&e, &refused.done, 1, 3000);
    CHECK(get.status == 200);
    CHECK(refused.done == 1 && refused.status == 0);
    CHECK_CONTAINS(refused.err, "not the leader");
    CHECK(dbl.hits_broken == 1);
    env_close(&e);
}

static void test_async_timeout_and_transport_error(void)
{
    struct env e;
    struct result slow = {0}, refused = {0};
    kube_limits lim = {.max_retries = -1};
    env_open(&e, server_url, &lim);
    uint64_t t0 = util_now_ms();
    kube_async_request(e.a, "GET", "/slow", NULL, NULL, 0, 250, on_done, &slow);
    run_until(&e, &slow.done, 1, 3000);
    CHECK(slow.done == 1);
    CHECK_STR(slow.err, "GET /slow: timed out after 250 ms");
    CHECK(slow.at_ms - t0 >= 240 && slow.at_ms - t0 < 1500);
    env_close(&e);

    /* Nothing listens on port 1: a transport error, retried, then reported. */
    kube_limits lim1 = {.max_retries = 1, .backoff_base_ms = 10};
    env_open(&e, "http://127.0.0.1:1", &lim1);
    kube_stats_reset();
    kube_async_request(e.a, "DELETE", "/x", NULL, NULL, 0, 1000, on_done, &refused);
    run_until(&e, &refused.done, 1, 3000);
    CHECK(refused.done == 1);
    CHECK_CONTAINS(refused.err, "DELETE /x: ");
    CHECK(strstr(refused.err, TOKEN) == NULL);
    CHECK(stat_count("DELETE", 0) == 2);
    env_close(&e);
}

static void test_async_qps_limit(void)
{
    struct env e;
    struct result res[5] = {{0}};
    int done = 0;
    kube_limits lim = {.qps = 20, .burst = 1};
    env_open(&e, server_url, &lim);
    dbl.count_n = 0;
    uint64_t t0 = util_now_ms();
    for (int i = 0; i < 5; i++)
        kube_async_request(e.a, "GET", "/count", NULL, NULL, 0, 2000, on_done, &res[i]);
    for (int i = 0; i < 5; i++) {
        run_until(&e, &res[i].done, 1, 3000);
        done += res[i].done;
    }
    CHECK(done == 5);
    /* burst 1 at 20/s: one now, then one every 50 ms → the fifth at >= 200 ms */
    CHECK(res[4].at_ms - t0 >= 190);
    CHECK(dbl.count_n == 5);
    for (int i = 1; i < dbl.count_n; i++)
        CHECK(dbl.count_at[i] - dbl.count_at[i - 1] >= 40);
    env_close(&e);
}

static void test_async_max_inflight(void)
{
    struct env e;
    struct result res[3] = {{0}};
    kube_limits lim = {.qps = -1, .max_inflight = 1};
    env_open(&e, server_url, &lim);
    dbl.max_active = 0;
    uint64_t t0 = util_now_ms();
    for (int i = 0; i < 3; i++)
        kube_async_request(e.a, "GET", "/sleep60", NULL, NULL, 0, 2000, on_done, &res[i]);
    for (int i = 0; i < 3; i++)
        run_until(&e, &res[i].done, 1, 3000);
    CHECK(res[0].done + res[1].done + res[2].done == 3);
    CHECK(dbl.max_active == 1);
    CHECK(util_now_ms() - t0 >= 170);
    env_close(&e);
}

static void test_async_free_cancels_without_callbacks(void)
{
    struct env e;
    struct result res = {0};
    env_open(&e, server_url, NULL);
    kube_async_request(e.a, "GET", "/slow", NULL, NULL, 0, 5000, on_done, &res);
    kube_async_request(e.a, "GET", "/ok", NULL, NULL, 0, 5000, on_done, &res);
    int zero = 0;
    run_until(&e, &zero, 1, 100); /* let both start */
    int queued, inflight;
    kube_async_counts(e.a, &queued, &inflight, NULL);
    CHECK(inflight >= 1);
    env_close(&e); /* frees e.a with /slow still in flight */
    CHECK(res.done <= 1); /* /ok may have finished; /slow never reports */
}

/* ---- watches ----------------------------------------------------------- */

struct wrec {
    int events;
    char type[8][16];
    char obj[8][128];
    int ended;
    long end_status;
    char end_err[256];
    int stop_after;      /* kube_watch_stop from inside on_event after this many */
    kube_watch *w;
};

static void on_wevent(const char *type, const char *obj, size_t len, void *ud)
{
    struct wrec *r = ud;
    if (r->events < 8) {
        snprintf(r->type[r->events], sizeof r->type[0], "%s", type);
        snprintf(r->obj[r->events], sizeof r->obj[0], "%.*s", (int)len, obj);
    }
    r->events++;
    if (r->stop_after && r->events == r->stop_after)
        kube_watch_stop(r->w);
}

static void on_wend(long status, const char *err, void *ud)
{
    struct wrec *r = ud;
    r->ended++;
    r->end_status = status;
    snprintf(r->end_err, sizeof r->end_err, "%s", err ? err : "");
}

/* Runs one watch on a fresh loop until it ends (or 4 s pass). */
static void watch_once(const char *path, const kube_limits *lim, struct wrec *r)
{
    struct env e;
    env_open(&e, server_url, lim);
    r->w = kube_watch_start(e.a, path, on_wevent, on_wend, r);
    CHECK(r->w != NULL);
    run_until(&e, &r->ended, 1, 4000);
    env_close(&e);
}

static void test_watch_split_chunks_and_bookmark(void)
{
    struct wrec r = {0};
    kube_stats_reset();
    watch_once("/watch/split", NULL, &r);
    CHECK(r.events == 4);
    CHECK_STR(r.type[0], "ADDED");
    CHECK_STR(r.obj[0], "{\"kind\":\"Deployment\",\"metadata\":{\"name\":\"a\",\"resourceVersion\":\"1\"}}");
    CHECK_STR(r.type[1], "MODIFIED");
    CHECK_STR(r.obj[1], "{\"metadata\":{\"name\":\"a\",\"resourceVersion\":\"2\"}}");
    CHECK_STR(r.type[2], "BOOKMARK");
    CHECK_STR(r.type[3], "DELETED");
    CHECK(r.ended == 1 && r.end_status == 200);
    CHECK_STR(r.end_err, "");
    CHECK(stat_count("WATCH", 200) == 1);
}

static void test_watch_dropped_mid_event(void)
{
    struct wrec r = {0};
    watch_once("/watch/drop", NULL, &r);
    CHECK(r.events == 1); /* the half event is dropped */
    CHECK_STR(r.type[0], "ADDED");
    CHECK(r.ended == 1);
    CHECK_CONTAINS(r.end_err, "watch /watch/drop: ");
}

static void test_watch_non_200(void)
{
    struct wrec r = {0};
    watch_once("/watch/gone", NULL, &r);
    CHECK(r.events == 0 && r.ended == 1);
    CHECK(r.end_status == 410);
    CHECK_STR(r.end_err, "watch /watch/gone: 410 Gone (Expired): too old resource version: 1 (5)");
}

static void test_watch_stop_inside_event(void)
{
    struct env e;
    struct wrec r = {.stop_after = 2};
    struct wrec other = {0};
    env_open(&e, server_url, NULL);
    r.w = kube_watch_start(e.a, "/watch/many", on_wevent, on_wend, &r);
    other.w = kube_watch_start(e.a, "/watch/split", on_wevent, on_wend, &other);
    run_until(&e, &other.ended, 1, 3000); /* give the stopped one every chance to misbehave */
    CHECK(r.events == 2);
    CHECK(r.ended == 0);
    CHECK(other.events == 4 && other.ended == 1);
    int watches;
    kube_async_counts(e.a, NULL, NULL, &watches);
    CHECK(watches == 0);
    env_close(&e);
}

static void test_watch_idle_timeout(void)
{
    struct wrec r = {0};
    kube_limits lim = {.watch_idle_timeout_ms = 300};
    uint64_t t0 = util_now_ms();
    watch_once("/watch/idle", &lim, &r);
    CHECK(r.events == 1 && r.ended == 1);
    CHECK_STR(r.end_err, "watch /watch/idle: no data for 300 ms (idle timeout)");
    uint64_t took = util_now_ms() - t0;
    CHECK(took >= 300 && took < 1500); /* well before the double would end it (3 s) */
}

static void test_watch_stop_and_free_are_silent(void)
{
    struct env e;
    struct wrec queued = {0}, running = {0};
    env_open(&e, server_url, NULL);
    running.w = kube_watch_start(e.a, "/watch/idle", on_wevent, on_wend, &running);
    run_until(&e, &running.events, 1, 2000);
    queued.w = kube_watch_start(e.a, "/watch/split", on_wevent, on_wend, &queued);
    kube_watch_stop(queued.w); /* still queued */
    CHECK(running.events == 1);
    env_close(&e); /* running is still streaming */
    CHECK(running.ended == 0 && queued.events == 0 && queued.ended == 0);
}

/* ---- the Lua binding ---------------------------------------------------- */

static const char lua_script[] =
    "local kube = require('kube')\n"
    "local c = assert(kube.connect{server = URL, token = TOKEN})\n"
    "assert(tostring(c):find('kube.client'))\n"
    "assert(c:server() == URL and c:namespace() == nil)\n"
    "local status, body, ra, line = c:request('GET', '/ok')\n"
    "assert(status == 200 and body == '{\"kind\":\"Thing\",\"ok\":true}' and ra == nil and line == nil)\n"
    "status, body, ra, line = c:request('POST', '/conflict', '{}')\n"
    "assert(status == 409, status)\n"
    "assert(line == '409 Conflict (AlreadyExists): deployments.apps \"x\" already exists', line)\n"
    "status, body, ra = c:request('GET', '/retry-after')\n"
    "assert(status == 429 and ra == 1)\n"
    "status, body = c:request('GET', '/slow', nil, {timeout_ms = 200})\n"
    "assert(status == nil and body == 'GET /slow: timed out after 200 ms', body)\n"
    "assert(not pcall(c.request, c, 'BREW', '/ok'))\n"
    "assert(not pcall(c.request, c, 'GET', 'relative'))\n"
    "assert(not pcall(c.request, c, 'GET', '/ok', {}))\n"
    "local ok, e = pcall(c.request, c, 'GET', '/ok', nil, {timeout_ms = 'soon'})\n"
    "assert(not ok and e:find('bad argument #5') and e:find('timeout_ms'), e)\n"
    "c:close(); c:close()\n"
    "local ok, err = pcall(c.request, c, 'GET', '/ok')\n"
    "assert(not ok and err:find('closed'))\n"
    "do local c2 <close> = assert(kube.connect{server = URL}) end\n"
    "local none, kerr = kube.connect{kubeconfig = '/nonexistent/kc'}\n"
    "assert(none == nil and kerr == 'kubeconfig /nonexistent/kc: No such file or directory', kerr)\n"
    "assert(not pcall(kube.connect, {}))\n"
    "assert(not pcall(kube.connect, {server = URL, in_cluster = true}))\n"
    "assert(kube.escape('a=b,c') == 'a%3Db%2Cc')\n"
    "return 'done'\n";

static void test_lua_binding(void)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    luaL_requiref(L, "kube", luaopen_kube, 0);
    lua_pop(L, 1);
    lua_pushstring(L, server_url);
    lua_setglobal(L, "URL");
    lua_pushstring(L, TOKEN);
    lua_setglobal(L, "TOKEN");
    dbl.hits_retry_after = 0; /* the first hit answers 429 */
    int rc = luaL_dostring(L, lua_script);
    if (rc != LUA_OK)
        fprintf(stderr, "  lua: %s\n", lua_tostring(L, -1));
    CHECK(rc == LUA_OK);
    CHECK_STR(lua_tostring(L, -1), "done");
    lua_close(L);
}

/* Every case above logged at debug level into log_path: the token (and the
 * rotated ones) must appear in no line. */
static void test_token_never_logged(void)
{
    char *text = util_read_file(log_path, NULL);
    CHECK(text != NULL);
    if (text) {
        CHECK(strstr(text, TOKEN) == NULL);
        CHECK(strstr(text, "token-one") == NULL && strstr(text, "token-two") == NULL);
        CHECK_CONTAINS(text, "retrying"); /* the capture did see the retries */
    }
    free(text);
}

int main(void)
{
    log_init(LOG_DEBUG, LOG_JSON);
    int log_fd = mkstemp(log_path);
    log_set_fd(log_fd);
    if (double_start() < 0) {
        fprintf(stderr, "cannot start the test double\n");
        return 1;
    }
    RUN(test_status_error_mapping);
    RUN(test_escape);
    RUN(test_framer_byte_by_byte);
    RUN(test_framer_errors_and_stop);
    RUN(test_blocking_request);
    RUN(test_blocking_timeout);
    RUN(test_token_file_rotation);
    RUN(test_async_429_retry_after_honoured);
    RUN(test_async_503_retried);
    RUN(test_async_500_gives_up_after_max_retries);
    RUN(test_async_post_repeated_only_when_known_not_to_have_happened);
    RUN(test_async_timeout_and_transport_error);
    RUN(test_async_write_gate_before_every_attempt);
    RUN(test_async_qps_limit);
    RUN(test_async_max_inflight);
    RUN(test_async_free_cancels_without_callbacks);
    RUN(test_watch_split_chunks_and_bookmark);
    RUN(test_watch_dropped_mid_event);
    RUN(test_watch_non_200);
    RUN(test_watch_stop_inside_event);
    RUN(test_watch_idle_timeout);
    RUN(test_watch_stop_and_free_are_silent);
    RUN(test_lua_binding);
    RUN(test_token_never_logged);
    double_stop();
    log_set_fd(2);
    close(log_fd);
    unlink(log_path);
    return check_summary();
}
