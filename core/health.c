/* health: see health.h. */
#include "health.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "metrics.h"
#include "util.h"

struct health {
    struct MHD_Daemon *daemon;
    pthread_mutex_t lock;
    char *ready_json;
    int ready, alive, port;
};

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
        return alive ? respond(conn, 200, "text/plain", xstrdup("ok\n"), 3)
                     : respond(conn, 503, "text/plain", xstrdup("shutting down\n"), 14);
    }
    if (strcmp(url, "/readyz") == 0) {
        pthread_mutex_lock(&h->lock);
        char *body = xstrdup(h->ready_json ? h->ready_json : "{\"ready\":false,\"checks\":{}}");
        int ready = h->ready;
        pthread_mutex_unlock(&h->lock);
        return respond(conn, ready ? 200 : 503, "application/json", body, strlen(body));
    }
    if (strcmp(url, "/metrics") == 0) {
        buf b = {0};
        metrics_render(&b);
        size_t len = b.len;
        return respond(conn, 200, "text/plain; version=0.0.4", buf_steal(&b), len);
    }
    return respond(conn, 404, "text/plain", xstrdup("not found\n"), 10);
}

health *health_start(const char *addr, char *err, size_t errlen)
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
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    size_t hostlen = (size_t)(colon - addr);
    char host[64] = "0.0.0.0";
    if (hostlen > 0 && hostlen < sizeof host) {
        memcpy(host, addr, hostlen);
        host[hostlen] = '\0';
    }
    if (inet_pton(AF_INET, host, &sin.sin_addr) != 1) {
        util_seterr(err, errlen, "HEALTH_ADDR: invalid host in \"%s\" (an IPv4 address)", addr);
        return NULL;
    }
    health *h = xcalloc(1, sizeof *h);
    pthread_mutex_init(&h->lock, NULL);
    h->alive = 1;
    h->daemon = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL,
                                 handle, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sin,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned)64, MHD_OPTION_END);
    if (h->daemon == NULL) {
        util_seterr(err, errlen, "HEALTH_ADDR: cannot listen on %s (address in use?)", addr);
        pthread_mutex_destroy(&h->lock);
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
    char *copy = xstrdup(json);
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
