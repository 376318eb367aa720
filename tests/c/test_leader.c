/* Leader election against the real kube-apiserver of tools/cluster
 * (eval "$(tools/cluster env)" exports KUBECONFIG). Short timings: lease 4 s,
 * renew deadline 3 s, retry 1 s. The API server "going away" is simulated
 * by a TCP proxy in this process between one candidate and the server,
 * which can start swallowing bytes (a hung server) or close its port. */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "config.h"
#include "json.h"
#include "kube.h"
#include "leader.h"
#include "log.h"
#include "util.h"

#define LEASE_S 4
#define RENEW_S 3
#define RETRY_S 1

static kube_config kc;      /* from KUBECONFIG */
static kube_client *admin;  /* the test's own view of the Lease */
static int lease_counter;

typedef struct candidate {
    char identity[64];
    char lease[64];
    config cfg;
    leader *l;
    atomic_int became, lost;
} candidate;

static void on_change(int is_leader, void *ud)
{
    candidate *c = ud;
    atomic_fetch_add(is_leader ? &c->became : &c->lost, 1);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void next_lease_name(char *out, size_t outlen)
{
    snprintf(out, outlen, "sao-leader-test-%d-%d", (int)getpid(), ++lease_counter);
}

/* cfg strings point into c (the config is never config_free'd). */
static void candidate_init(candidate *c, const char *who, const char *lease)
{
    memset(c, 0, sizeof *c);
    snprintf(c->identity, sizeof c->identity, "%s-%d", who, (int)getpid());
    snprintf(c->lease, sizeof c->lease, "%s", lease);
    c->cfg.namespace = (char *)"default";
    c->cfg.lease_name = c->lease;
    c->cfg.identity = c->identity;
    c->cfg.leader_elect = 1;
    c->cfg.lease_duration_s = LEASE_S;
    c->cfg.renew_deadline_s = RENEW_S;
    c->cfg.retry_period_s = RETRY_S;
    c->cfg.kube_timeout_ms = 2000;
}

static int candidate_start(candidate *c, const kube_config *via)
{
    char err[256];
    c->l = leader_start(&c->cfg, via ? via : &kc, on_change, c, err, sizeof err);
    if (c->l == NULL)
        fprintf(stderr, "  leader_start(%s): %s\n", c->identity, err);
    return c->l ? 0 : -1;
}

/* ms until leader_is_leader(l) == want, or -1 after timeout_ms. */
static long wait_leader(leader *l, int want, int timeout_ms)
{
    uint64_t start = util_now_ms();
    while (util_now_ms() - start < (uint64_t)timeout_ms) {
        if (leader_is_leader(l) == want)
            return (long)(util_now_ms() - start);
        sleep_ms(10);
    }
    return -1;
}

static int holder_is(leader *l, const char *identity)
{
    char h[128];
    return strcmp(leader_holder(l, h, sizeof h), identity) == 0;
}

static long wait_holder(leader *l, const char *identity, int timeout_ms)
{
    uint64_t start = util_now_ms();
    while (util_now_ms() - start < (uint64_t)timeout_ms) {
        if (holder_is(l, identity))
            return (long)(util_now_ms() - start);
        sleep_ms(10);
    }
    return -1;
}

static char *lease_path(const char *name)
{
    return xasprintf("/apis/coordination.k8s.io/v1/namespaces/default/leases/%s", name);
}

/* The Lease as the API server has it; NULL when missing. Caller frees. */
static json_value *get_lease(const char *name)
{
    char err[256];
    kube_response r;
    char *path = lease_path(name);
    json_value *v = NULL;
    if (kube_request(admin, "GET", path, NULL, NULL, 0, 5000, &r, err, sizeof err) < 0)
        fprintf(stderr, "  GET lease: %s\n", err);
    else if (r.status == 200)
        v = json_parse(r.body, r.len, NULL, 0);
    kube_response_free(&r);
    free(path);
    return v;
}

static void delete_lease(const char *name)
{
    char err[256];
    kube_response r;
    char *path = lease_path(name);
    if (kube_request(admin, "DELETE", path, NULL, NULL, 0, 5000, &r, err, sizeof err) == 0)
        kube_response_free(&r);
    free(path);
}

static const char *spec_string(const json_value *lease, const char *key)
{
    return json_string(json_path(lease, "spec", key, NULL));
}

static double spec_number(const json_value *lease, const char *key)
{
    return json_number(json_path(lease, "spec", key, NULL), -1);
}

/* 2026-11-26T08:30:00.000000Z */
static int is_micro_time(const char *s)
{
    return s && strlen(s) == 27 && s[10] == 'T' && s[19] == '.' && s[26] == 'Z';
}

/* ---- a TCP proxy that can play a hung or a vanished API server ----------- */

enum { PROXY_MAX_CONNS = 32 };

typedef struct proxy {
    int listen_fd, ctl[2];
    int port;
    struct sockaddr_storage target;
    socklen_t target_len;
    int client[PROXY_MAX_CONNS], upstream[PROXY_MAX_CONNS]; /* -1 = unused / swallowed */
    int blackhole;
    pthread_t thread;
} proxy;

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void proxy_accept(proxy *p)
{
    int fd = accept(p->listen_fd, NULL, NULL);
    if (fd < 0)
        return;
    for (int i = 0; i < PROXY_MAX_CONNS; i++) {
        if (p->client[i] >= 0)
            continue;
        p->client[i] = fd;
        if (!p->blackhole) {
            p->upstream[i] = socket(p->target.ss_family, SOCK_STREAM, 0);
            if (connect(p->upstream[i], (struct sockaddr *)&p->target, p->target_len) < 0) {
                close_fd(&p->client[i]);
                close_fd(&p->upstream[i]);
            }
        }
        return;
    }
    close(fd);
}

/* Moves bytes from -> to (to < 0: swallow). -1 when the pair should close. */
static int proxy_pump(int from, int to)
{
    char data[16384];
    ssize_t n = read(from, data, sizeof data);
    if (n <= 0)
        return -1;
    return to >= 0 ? write_all(to, data, (size_t)n) : 0;
}

static void *proxy_thread(void *arg)
{
    proxy *p = arg;
    for (;;) {
        struct pollfd fds[2 + 2 * PROXY_MAX_CONNS];
        int n = 0;
        fds[n++] = (struct pollfd){.fd = p->ctl[0], .events = POLLIN};
        fds[n++] = (struct pollfd){.fd = p->listen_fd, .events = POLLIN};
        for (int i = 0; i < PROXY_MAX_CONNS; i++) {
            fds[n++] = (struct pollfd){.fd = p->client[i], .events = POLLIN};
            fds[n++] = (struct pollfd){.fd = p->upstream[i], .events = POLLIN};
        }
        if (poll(fds, (nfds_t)n, -1) < 0)
            continue;
        if (fds[0].revents) {
            char cmd = 'q';
            if (read(p->ctl[0], &cmd, 1) != 1 || cmd == 'q')
                break;
            /* 'h': hang (cut upstream, keep clients waiting); 'd': dead port. */
            p->blackhole = 1;
            for (int i = 0; i < PROXY_MAX_CONNS; i++) {
                close_fd(&p->upstream[i]);
                if (cmd == 'd')
                    close_fd(&p->client[i]);
            }
            if (cmd == 'd')
                close_fd(&p->listen_fd);
            continue;
        }
        if (fds[1].revents)
            proxy_accept(p);
        for (int i = 0; i < PROXY_MAX_CONNS; i++) {
            struct pollfd *c = &fds[2 + 2 * i], *u = &fds[3 + 2 * i];
            if ((c->fd >= 0 && c->revents && proxy_pump(c->fd, p->upstream[i]) < 0) ||
                (u->fd >= 0 && u->revents && proxy_pump(u->fd, p->client[i]) < 0)) {
                close_fd(&p->client[i]);
                close_fd(&p->upstream[i]);
            }
        }
    }
    return NULL;
}

/* Listens on 127.0.0.1 (free port) and forwards to the API server of kc. */
static int proxy_start(proxy *p)
{
    char host[256];
    char port[16];
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof addr;

    memset(p, 0, sizeof *p);
    for (int i = 0; i < PROXY_MAX_CONNS; i++)
        p->client[i] = p->upstream[i] = -1;
    if (sscanf(kc.server, "https://%255[^:/]:%15[0-9]", host, port) != 2 ||
        getaddrinfo(host, port, &hints, &ai) != 0)
        return -1;
    memcpy(&p->target, ai->ai_addr, ai->ai_addrlen);
    p->target_len = ai->ai_addrlen;
    freeaddrinfo(ai);
    p->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    if (bind(p->listen_fd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(p->listen_fd, 16) < 0 ||
        getsockname(p->listen_fd, (struct sockaddr *)&addr, &alen) < 0 || pipe(p->ctl) < 0)
        return -1;
    p->port = ntohs(addr.sin_port);
    return pthread_create(&p->thread, NULL, proxy_thread, p) == 0 ? 0 : -1;
}

static void proxy_command(proxy *p, char cmd)
{
    CHECK(write(p->ctl[1], &cmd, 1) == 1);
}

static void proxy_stop(proxy *p)
{
    proxy_command(p, 'q');
    pthread_join(p->thread, NULL);
    for (int i = 0; i < PROXY_MAX_CONNS; i++) {
        close_fd(&p->client[i]);
        close_fd(&p->upstream[i]);
    }
    close_fd(&p->listen_fd);
    close_fd(&p->ctl[0]);
    close_fd(&p->ctl[1]);
}

/* Two candidates for a fresh Lease: a (through via, NULL = direct) leads,
 * b has seen a as the holder. -1 (with everything stopped) on failure. */
static int pair_start(candidate *a, candidate *b, const char *prefix, const kube_config *via, char *name,
                      size_t namelen)
{
    char who[32];
    next_lease_name(name, namelen);
    snprintf(who, sizeof who, "%s-a", prefix);
    candidate_init(a, who, name);
    snprintf(who, sizeof who, "%s-b", prefix);
    candidate_init(b, who, name);
    if (candidate_start(a, via) == 0 && wait_leader(a->l, 1, 3000) >= 0 && candidate_start(b, NULL) == 0 &&
        wait_holder(b->l, a->identity, 3000) >= 0)
        return 0;
    fprintf(stderr, "  %s: the first candidate did not lead or the second did not see it\n", prefix);
    CHECK(0);
    leader_stop(a->l, 0);
    leader_stop(b->l, 0);
    delete_lease(name);
    return -1;
}

/* ---- cases ---------------------------------------------------------------- */

static void test_one_candidate_acquires_renews_releases(void)
{
    char name[64];
    candidate a;
    next_lease_name(name, sizeof name);
    candidate_init(&a, "solo", name);
    if (candidate_start(&a, NULL) < 0) {
        CHECK(0);
        return;
    }
    long t = wait_leader(a.l, 1, 3000);
    fprintf(stderr, "  acquired a new lease in %ld ms\n", t);
    CHECK(t >= 0);
    CHECK(atomic_load(&a.became) == 1);
    CHECK(holder_is(a.l, a.identity));

    json_value *v = get_lease(name);
    CHECK_STR(spec_string(v, "holderIdentity"), a.identity);
    CHECK(spec_number(v, "leaseDurationSeconds") == LEASE_S);
    CHECK(spec_number(v, "leaseTransitions") == 0);
    CHECK(is_micro_time(spec_string(v, "acquireTime")));
    CHECK(is_micro_time(spec_string(v, "renewTime")));
    char *first_renew = xstrdup(spec_string(v, "renewTime") ? spec_string(v, "renewTime") : "");
    json_free(v);

    sleep_ms(RETRY_S * 1000 + 600);
    v = get_lease(name);
    CHECK(leader_is_leader(a.l));
    CHECK(spec_string(v, "renewTime") && strcmp(spec_string(v, "renewTime"), first_renew) > 0);
    CHECK(spec_number(v, "leaseTransitions") == 0);
    json_free(v);
    free(first_renew);

    leader_stop(a.l, 1);
    v = get_lease(name);
    CHECK_STR(spec_string(v, "holderIdentity"), "");
    CHECK(spec_number(v, "leaseDurationSeconds") == 1);
    json_free(v);
    CHECK(atomic_load(&a.lost) == 0); /* a stop is not reported as a loss */
    delete_lease(name);
}

static void test_two_candidates_one_leader_and_release_handover(void)
{
    char name[64];
    candidate a, b;
    if (pair_start(&a, &b, "cand", NULL, name, sizeof name) < 0)
        return;
    /* Sampled over more than a lease duration: exactly one leader. */
    int samples = 0, bad = 0;
    uint64_t until = util_now_ms() + (LEASE_S + 1) * 1000;
    while (util_now_ms() < until) {
        int n = leader_is_leader(a.l) + leader_is_leader(b.l);
        bad += n != 1 || !leader_is_leader(a.l);
        samples++;
        sleep_ms(20);
    }
    fprintf(stderr, "  %d samples over %d s, %d without exactly one leader (a)\n", samples, LEASE_S + 1, bad);
    CHECK(bad == 0);
    CHECK(holder_is(b.l, a.identity));
    CHECK(atomic_load(&b.became) == 0);

    uint64_t t0 = util_now_ms();
    leader_stop(a.l, 1);
    uint64_t stopped = util_now_ms();
    long t = wait_leader(b.l, 1, 5000);
    fprintf(stderr, "  stop(release) took %lu ms; the other took over %ld ms after it\n",
            (unsigned long)(stopped - t0), t);
    CHECK(stopped - t0 < 1000);
    CHECK(t >= 0 && t <= RETRY_S * 1000 + 700); /* at its next retry, far below the lease */
    CHECK(atomic_load(&b.became) == 1);

    json_value *v = get_lease(name);
    CHECK_STR(spec_string(v, "holderIdentity"), b.identity);
    CHECK(spec_number(v, "leaseTransitions") == 1);
    CHECK(spec_number(v, "leaseDurationSeconds") == LEASE_S);
    json_free(v);
    leader_stop(b.l, 1);
    delete_lease(name);
}

static void test_killed_leader_taken_over_after_lease_duration(void)
{
    char name[64];
    candidate a, b;
    if (pair_start(&a, &b, "kill", NULL, name, sizeof name) < 0)
        return;
    sleep_ms(1200);
    leader_stop(a.l, 0); /* like kill -9: no release, the lease has to expire */
    long t = wait_leader(b.l, 1, (LEASE_S + 4) * 1000);
    fprintf(stderr, "  after a stop without release the other took over in %ld ms (lease %d s)\n", t,
            LEASE_S);
    /* a's last renew was at most one retry before the stop; b notices the
     * change at most one retry later and then waits a full lease duration. */
    CHECK(t >= (LEASE_S - RETRY_S) * 1000 - 300);
    CHECK(t >= 0 && t <= (LEASE_S + 2 * RETRY_S) * 1000 + 700);

    json_value *v = get_lease(name);
    CHECK_STR(spec_string(v, "holderIdentity"), b.identity);
    CHECK(spec_number(v, "leaseTransitions") == 1);
    json_free(v);
    leader_stop(b.l, 1);
    delete_lease(name);
}

/* The leader's API server stops answering (cmd 'h') or its port closes
 * ('d'): it must drop leadership within the renew deadline, before the
 * other candidate can take over, and leader_stop must stay bounded. */
static void api_server_gone(char cmd)
{
    char name[64];
    candidate a, b;
    proxy p;
    if (proxy_start(&p) < 0) {
        fprintf(stderr, "  cannot start the proxy\n");
        CHECK(0);
        return;
    }
    kube_config via = kc; /* shallow copy; only the server differs */
    char server[64];
    snprintf(server, sizeof server, "https://127.0.0.1:%d", p.port);
    via.server = server;

    if (pair_start(&a, &b, cmd == 'h' ? "hung" : "dead", &via, name, sizeof name) < 0) {
        proxy_stop(&p);
        return;
    }
    sleep_ms(1500);
    uint64_t t0 = util_now_ms();
    proxy_command(&p, cmd);
    long a_lost = -1, b_won = -1;
    int both = 0;
    while (util_now_ms() - t0 < (LEASE_S + 4) * 1000 && b_won < 0) {
        int la = leader_is_leader(a.l), lb = leader_is_leader(b.l);
        both += la && lb;
        if (!la && a_lost < 0)
            a_lost = (long)(util_now_ms() - t0);
        if (lb && b_won < 0)
            b_won = (long)(util_now_ms() - t0);
        sleep_ms(5);
    }
    fprintf(stderr, "  API server %s: leader dropped after %ld ms (renew deadline %d s), the other "
            "took over after %ld ms\n", cmd == 'h' ? "hung" : "closed", a_lost, RENEW_S, b_won);
    CHECK(both == 0);
    CHECK(a_lost >= 0 && a_lost <= RENEW_S * 1000 + 100);
    CHECK(atomic_load(&a.lost) == 1);
    CHECK(b_won >= 0 && b_won - a_lost >= (LEASE_S - RENEW_S) * 1000 - 300);

    uint64_t s0 = util_now_ms();
    leader_stop(a.l, 1); /* not leader: nothing to release, at most one request to wait for */
    unsigned long stop_ms = (unsigned long)(util_now_ms() - s0);
    fprintf(stderr, "  stop of the cut-off candidate took %lu ms\n", stop_ms);
    CHECK(stop_ms <= 2000 + 300);
    leader_stop(b.l, 1);
    proxy_stop(&p);
    delete_lease(name);
}

static void test_api_server_hangs_leader_steps_down(void)
{
    api_server_gone('h');
}

static void test_api_server_port_closed_leader_steps_down(void)
{
    api_server_gone('d');
}

static void test_disabled_is_always_leader(void)
{
    candidate a;
    char err[256];
    candidate_init(&a, "noelect", "unused");
    a.cfg.leader_elect = 0;
    a.l = leader_start(&a.cfg, NULL, on_change, &a, err, sizeof err);
    CHECK(a.l != NULL);
    if (a.l == NULL)
        return;
    CHECK(leader_is_leader(a.l));
    CHECK(atomic_load(&a.became) == 1);
    CHECK(holder_is(a.l, a.identity));
    sleep_ms(50);
    CHECK(leader_is_leader(a.l));
    leader_stop(a.l, 1);
    CHECK(atomic_load(&a.lost) == 0);
}

static void test_bad_timings_refused(void)
{
    candidate a;
    char err[256] = "";
    candidate_init(&a, "bad", "unused");
    a.cfg.renew_deadline_s = LEASE_S; /* must be below the lease duration */
    CHECK(leader_start(&a.cfg, &kc, on_change, &a, err, sizeof err) == NULL);
    CHECK_CONTAINS(err, "renew deadline");
    a.cfg.renew_deadline_s = RENEW_S;
    a.cfg.identity = (char *)"";
    CHECK(leader_start(&a.cfg, &kc, on_change, &a, err, sizeof err) == NULL);
    CHECK_CONTAINS(err, "identity");
}

int main(void)
{
    char err[512];
    log_init(LOG_WARN, LOG_TEXT);
    if (getenv("KUBECONFIG") == NULL || *getenv("KUBECONFIG") == '\0') {
        fprintf(stderr, "test_leader: KUBECONFIG is not set. These tests need the local control "
                        "plane: tools/cluster up && eval \"$(tools/cluster env)\"\n");
        return 1;
    }
    if (kube_config_load_kubeconfig(NULL, NULL, &kc, err, sizeof err) < 0) {
        fprintf(stderr, "test_leader: %s\n", err);
        kube_config_free(&kc);
        return 1;
    }
    admin = kube_client_new(&kc, err, sizeof err);
    kube_response r = {0};
    if (admin == NULL || kube_request(admin, "GET", "/readyz", NULL, NULL, 0, 5000, &r, err, sizeof err) < 0 ||
        r.status != 200) {
        fprintf(stderr, "test_leader: the API server in KUBECONFIG is not ready (%s); is tools/cluster up?\n",
                admin == NULL || r.status == 0 ? err : "GET /readyz not 200");
        kube_response_free(&r);
        kube_client_free(admin);
        kube_config_free(&kc);
        return 1;
    }
    kube_response_free(&r);

    RUN(test_bad_timings_refused);
    RUN(test_disabled_is_always_leader);
    RUN(test_one_candidate_acquires_renews_releases);
    RUN(test_two_candidates_one_leader_and_release_handover);
    RUN(test_killed_leader_taken_over_after_lease_duration);
    RUN(test_api_server_hangs_leader_steps_down);
    RUN(test_api_server_port_closed_leader_steps_down);

    kube_client_free(admin);
    kube_config_free(&kc);
    return check_summary();
}
