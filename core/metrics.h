/* metrics: a small Prometheus registry. Thread-safe (the health server thread
 * renders while the main loop updates). Families are declared once with
 * metrics_declare(); a series is a family plus a label string such as
 * `result="ok"` (already formatted, values escaped by the caller when not
 * constants). */
#ifndef METRICS_H
#define METRICS_H

#include "util.h"

enum metrics_type { METRICS_COUNTER, METRICS_GAUGE, METRICS_HISTOGRAM };

void metrics_declare(const char *name, enum metrics_type type, const char *help);
void metrics_add(const char *name, const char *labels, double v);   /* counters (and gauges) */
void metrics_set(const char *name, const char *labels, double v);   /* gauges */
void metrics_observe(const char *name, const char *labels, double v); /* histograms, seconds */
double metrics_get(const char *name, const char *labels);          /* tests and /readyz */
/* Appends the Prometheus text exposition of every family onto out, then the
 * process_* families (metrics_process_render). */
void metrics_render(buf *out);
/* sync_airbnb_operator_queue_depth{queue="accounts"|"writes"}: accounts waiting
 * to be planned (queued, backlog, waiting for a write's echo) and writes sent
 * but not yet answered. Called every second. */
void metrics_set_queue_depth(size_t accounts, size_t writes);
/* The standard process_* metrics (CPU, memory, fds, start time) from /proc
 * (metrics_process.c). */
void metrics_process_render(buf *out);
/* Frees everything (end of process, tests). */
void metrics_reset(void);

#endif
