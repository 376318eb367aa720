/* health: the /healthz, /readyz and /metrics endpoints, served by
 * libmicrohttpd on its own thread. The main loop publishes the readiness
 * document with health_publish(); handlers only read copies under a lock. */
#ifndef HEALTH_H
#define HEALTH_H

#include <stddef.h>

typedef struct health health;

/* addr: "[host]:port" (":8080", "127.0.0.1:0"); port 0 picks a free port.
 * first_json: the /readyz document (not ready) served until the first
 * health_publish, in place before the first answer, so that every check is
 * there from the start. Returns NULL with err on failure (port in use, bad
 * address). */
health *health_start(const char *addr, const char *first_json, char *err, size_t errlen);
/* The port actually bound. */
int health_port(const health *h);
/* Replaces the /readyz document (copied) and its verdict. While the loop
 * is stalled, /readyz answers 503 with this document's checks and a "loop"
 * check in front ({"stalled_ms": N}). */
void health_publish(health *h, int ready, const char *json);
/* /healthz answers 503 after this (the loop is wedged or shutting down). */
void health_set_alive(health *h, int alive);
void health_stop(health *h);

/* The main loop's heartbeat (one loop per process). health_beat() from a
 * timer of the loop; once stale_ms pass without a beat, /healthz answers 503
 * and health_loop_alive() is 0 (the leader then stops renewing its Lease:
 * client-go's leader-election healthz adaptor). stale_ms 0 (the default):
 * no heartbeat, always alive. Thread-safe. */
void health_beat_init(unsigned stale_ms);
void health_beat(void);
int health_loop_alive(void);
/* Milliseconds since the last beat (0 when the heartbeat is off). */
unsigned long health_beat_age_ms(void);

#endif
