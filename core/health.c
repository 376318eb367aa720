/* health: see health.h. */
#include "health.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "json.h"
#include "metrics.h"
#include "scrub.h"
#include "util.h"

static _Atomic uint64_t beat_ms;
static _Atomic unsigned beat_stale_ms;

void health_beat_init(unsigned stale_ms)
{
    atomic_store(&beat_ms, util_now_ms());
    atomic_store(&beat_stale_ms, stale_ms);
}

void health_beat(void)
{
    atomic_store(&beat_ms, util_now_ms());
}

unsigned long health_beat_age_ms(void)
{
    if (atomic_load(&beat_stale_ms) == 0)
        return 0;
    uint64_t now = util_now_ms(), last = atomic_load(&beat_ms);
    return now > last ? (unsigned long)(now - last) : 0;
}

int health_loop_alive(void)
{
    unsigned stale = atomic_load(&beat_stale_ms);
    return stale == 0 || health_beat_age_ms() < stale;
}

struct health {
    struct MHD_Daemon *daemon;
    pthread_mutex_t lock;
    char *ready_json;
    int ready, alive, port;
};

/* Writes each member of obj (an object) not named skip1/skip2. */
static void write_members(json_out *o, const json_value *obj, const char *skip1, const char *skip2)
{
    for (size_t i = 0; json_typeof(obj) == JSON_OBJECT && i < json_len(obj); i++) {
        const char *k = json_key_at(obj, i);
        if (strcmp(k, skip1) == 0 || (skip2 && strcmp(k, skip2) == 0))
            continue;
        jo_key(o, k);
        jo_value(o, json_at(obj, i));
    }
}

/* The last document with "ready":false and a "loop" check in front of its
 * checks: a reader finds every check it knows, and the stall. */
static char *stalled_document(const char *doc, unsigned long stalled_ms)
{
    json_value *v = json_parse(doc, strlen(doc), NULL, 0);
    buf b = {0};
    json_out o;
    jo_init(&o, &b);
    jo_object(&o);
    jo_kbool(&o, "ready", 0);
    jo_key(&o, "checks");
    jo_object(&o);
    jo_key(&o, "loop");
    jo_object(&o);
    jo_kint(&o, "stalled_ms", (long long)stalled_ms);
    jo_end(&o);
    write_members(&o, json_get(v, "checks"), "loop", NULL);
    jo_end(&o);
    write_members(&o, v, "ready", "checks");
    jo_end(&o);
    json_free(v);
    return buf_steal(&b);
}

static enum MHD_Result respond(struct MHD_Connection *conn, unsigned status, const char *ctype,
                               char *body, size_t len)
{
    /* MHD takes ownership of body (free()d after sending). */
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(r, "Content-Type", ctype);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **con_cls)
{
    health *h = cls;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return respond(conn, 405, "text/plain", xstrdup("method not allowed\n"), 19);
    if (strcmp(url, "/healthz") == 0 || strcmp(url, "/livez") == 0) {
        pthread_mutex_lock(&h->lock);
        int alive = h->alive;
        pthread_mutex_unlock(&h->lock);
        if (!alive)
            return respond(conn, 503, "text/plain", xstrdup("shutting down\n"), 14);
        if (!health_loop_alive()) {
            char *msg = xasprintf("main loop stalled for %lu ms\n", health_beat_age_ms());
            return respond(conn, 503, "text/plain", msg, strlen(msg));
        }
        return respond(conn, 200, "text/plain", xstrdup("ok\n"), 3);
    }
    if (strcmp(url, "/readyz") == 0) {
        pthread_mutex_lock(&h->lock);
        char *doc = xstrdup(h->ready_json ? h->ready_json : "{\"ready\":false,\"checks\":{}}");
        int ready = h->ready;
        pthread_mutex_unlock(&h->lock);
        if (!health_loop_alive()) { /* the document is as old as the stall: not ready, and why */
            char *msg = stalled_document(doc, health_beat_age_ms());
            free(doc);
            return respond(conn, 503, "application/json", msg, strlen(msg));
        }
        return respond(conn, ready ? 200 : 503, "application/json", doc, strlen(doc));
    }
    if (strcmp(url, "/metrics") == 0) {
        buf b = {0};
        metrics_render(&b);
        size_t len = b.len;
        return respond(conn, 200, "text/plain; version=0.0.4", buf_steal(&b), len);
    }
    return respond(conn, 404, "text/plain", xstrdup("not found\n"), 10);
}

/* Idle or slow clients: each source address may hold HEALTH_PER_IP
 * connections, and a connection idle for HEALTH_IDLE_S is closed, so a
 * client that opens connections and sends nothing cannot starve the kubelet's
 * probes (it comes from the node's address). */
#define HEALTH_MAX_CONNECTIONS 512
#define HEALTH_PER_IP 16
#define HEALTH_IDLE_S 5

static struct MHD_Daemon *start_daemon(health *h, unsigned flags, const struct sockaddr *sa)
{
    return MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG | flags, 0, NULL, NULL, handle, h,
                            MHD_OPTION_SOCK_ADDR, sa, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HEALTH_IDLE_S,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)HEALTH_MAX_CONNECTIONS,
                            MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)HEALTH_PER_IP, MHD_OPTION_END);
}

health *health_start(const char *addr, const char *first_json, char *err, size_t errlen)
{
    const char *colon = strrchr(addr, ':');
    if (colon == NULL) {
        util_seterr(err, errlen, "HEALTH_ADDR: invalid value \"%s\" (expected [host]:port)", addr);
        return NULL;
    }
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535 || end == colon + 1) {
        util_seterr(err, errlen, "HEALTH_ADDR: invalid port in \"%s\"", addr);
        return NULL;
    }
    char host[64] = "";
    size_t hostlen = (size_t)(colon - addr);
    if (hostlen >= 2 && addr[0] == '[' && addr[hostlen - 1] == ']') { /* [::1]:8080 */
        addr++;
        hostlen -= 2;
    }
    if (hostlen >= sizeof host) {
        util_seterr(err, errlen, "HEALTH_ADDR: invalid host in \"%s\"", addr);
        return NULL;
    }
    memcpy(host, addr, hostlen);
    host[hostlen] = '\0';
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port), .sin6_addr = in6addr_any};
    int v4 = hostlen > 0 && inet_pton(AF_INET, host, &sin.sin_addr) == 1;
    int v6 = hostlen > 0 && !v4 && inet_pton(AF_INET6, host, &sin6.sin6_addr) == 1;
    if (hostlen > 0 && !v4 && !v6) {
        util_seterr(err, errlen, "HEALTH_ADDR: invalid host in \"%s\" (an IPv4 or IPv6 address)", addr);
        return NULL;
    }
    health *h = xcalloc(1, sizeof *h);
    pthread_mutex_init(&h->lock, NULL);
    h->alive = 1;
    /* In place before the daemon answers anything: every check from the first answer. */
    h->ready_json = first_json ? scrub_dup(first_json) : NULL;
    if (v4) {
        h->daemon = start_daemon(h, 0, (struct sockaddr *)&sin);
    } else if (v6) {
        h->daemon = start_daemon(h, MHD_USE_IPv6, (struct sockaddr *)&sin6);
    } else {
        /* No host: every address, IPv6 and IPv4 (a v6-only cluster probes
         * over IPv6); IPv4 alone where the kernel has no IPv6. */
        h->daemon = start_daemon(h, MHD_USE_DUAL_STACK, (struct sockaddr *)&sin6);
        if (h->daemon == NULL)
            h->daemon = start_daemon(h, 0, (struct sockaddr *)&sin);
    }
    if (h->daemon == NULL) {
        util_seterr(err, errlen, "HEALTH_ADDR: cannot listen on %s (address in use?)", addr);
        pthread_mutex_destroy(&h->lock);
        free(h->ready_json);
        free(h);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    h->port = info ? info->port : (int)port;
    return h;
}

int health_port(const health *h)
{
    return h->port;
}

void health_publish(health *h, int ready, const char *json)
{
    if (h == NULL)
        return;
    char *copy = scrub_dup(json); /* the document leaves the process */
    pthread_mutex_lock(&h->lock);
    free(h->ready_json);
    h->ready_json = copy;
    h->ready = ready;
    pthread_mutex_unlock(&h->lock);
}

void health_set_alive(health *h, int alive)
{
    if (h == NULL)
        return;
    pthread_mutex_lock(&h->lock);
    h->alive = alive;
    pthread_mutex_unlock(&h->lock);
}

void health_stop(health *h)
{
    if (h == NULL)
        return;
    MHD_stop_daemon(h->daemon);
    pthread_mutex_destroy(&h->lock);
    free(h->ready_json);
    free(h);
}
