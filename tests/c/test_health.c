/* test_health: /healthz and /readyz of core/health.c, served on a free
 * local port and read with a plain socket — the endpoint itself is the
 * unit; no database or API server. DESIGN.md §5.9: a wedged operator (no
 * heartbeat) fails /healthz; /readyz has every check from its first answer
 * (before the loop published anything) and while the loop is stalled. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "health.h"
#include "json.h"
#include "util.h"

/* GET path on 127.0.0.1:port: the status code, the body in body (size n). */
static int get(int port, const char *path, char *body, size_t n)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    char req[256];
    int len = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: x\r\n\r\n", path);
    if (write(fd, req, (size_t)len) != len) {
        close(fd);
        return -1;
    }
    buf b = {0};
    char chunk[4096];
    ssize_t r;
    while ((r = read(fd, chunk, sizeof chunk)) > 0)
        buf_append(&b, chunk, (size_t)r);
    close(fd);
    int status = -1;
    if (b.data && sscanf(b.data, "HTTP/1.%*d %d", &status) == 1) {
        const char *start = strstr(b.data, "\r\n\r\n");
        snprintf(body, n, "%s", start ? start + 4 : "");
    }
    buf_free(&b);
    return status;
}

#define FIRST "{\"ready\":false,\"checks\":{\"database\":{\"ok\":false},\"leader\":{\"is_leader\":false}}}"

static void test_readyz_has_every_check_from_the_first_answer(void)
{
    char err[256], body[4096];
    health_beat_init(0);
    health *h = health_start("127.0.0.1:0", FIRST, err, sizeof err);
    CHECK(h != NULL);
    if (h == NULL)
        return;
    CHECK(get(health_port(h), "/readyz", body, sizeof body) == 503);
    json_value *v = json_parse(body, strlen(body), NULL, 0);
    CHECK(json_get(json_get(v, "checks"), "leader") != NULL);
    CHECK(json_get(json_get(v, "checks"), "database") != NULL);
    json_free(v);
    health_publish(h, 1, "{\"ready\":true,\"checks\":{\"leader\":{\"is_leader\":true}}}");
    CHECK(get(health_port(h), "/readyz", body, sizeof body) == 200);
    health_stop(h);
}

static void test_invariant_9_wedged_loop_fails_healthz(void)
{
    char err[256], body[4096];
    health_beat_init(100); /* stale after 100 ms without a beat */
    health_beat();
    health *h = health_start("127.0.0.1:0", FIRST, err, sizeof err);
    CHECK(h != NULL);
    if (h == NULL)
        return;
    health_publish(h, 1, "{\"ready\":true,\"checks\":{\"leader\":{\"is_leader\":true},\"database\":{\"ok\":true}}}");
    CHECK(get(health_port(h), "/healthz", body, sizeof body) == 200);
    CHECK(health_loop_alive());
    /* no beat from here on: the loop is wedged */
    uint64_t deadline = util_now_ms() + 10000;
    int status = 200;
    while (status == 200 && util_now_ms() < deadline) {
        status = get(health_port(h), "/healthz", body, sizeof body);
        if (status == 200)
            usleep(20 * 1000); /* poll: the condition is the heartbeat's age */
    }
    CHECK(status == 503);
    CHECK(!health_loop_alive()); /* the leader stops renewing on this (leader.c) */
    CHECK(get(health_port(h), "/readyz", body, sizeof body) == 503);
    json_value *v = json_parse(body, strlen(body), NULL, 0);
    const json_value *checks = json_get(v, "checks");
    CHECK(json_bool(json_get(v, "ready"), 1) == 0);
    CHECK(json_number(json_path(checks, "loop", "stalled_ms", NULL), 0) >= 100);
    CHECK(json_get(checks, "leader") != NULL); /* the checks are still all there */
    CHECK(json_get(checks, "database") != NULL);
    json_free(v);
    health_beat(); /* it turns again */
    CHECK(get(health_port(h), "/healthz", body, sizeof body) == 200);
    health_stop(h);
    health_beat_init(0);
}

int main(void)
{
    RUN(test_readyz_has_every_check_from_the_first_answer);
    RUN(test_invariant_9_wedged_loop_fails_healthz);
    return check_summary();
}
