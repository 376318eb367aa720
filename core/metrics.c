/* metrics: see metrics.h. Linear lookups: the operator has a few dozen series. */
#include "metrics.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const double bucket_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                       0.25,  0.5,    1,     2.5,  5,     10};
#define NBUCKETS (sizeof bucket_bounds / sizeof bucket_bounds[0])

typedef struct series {
    char *labels;
    double value; /* counter/gauge value, or histogram sum */
    unsigned long count;
    unsigned long buckets[NBUCKETS];
    struct series *next;
} series;

typedef struct family {
    char *name, *help;
    enum metrics_type type;
    series *first;
    struct family *next;
} family;

static family *families;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static family *find_family(const char *name)
{
    for (family *f = families; f; f = f->next)
        if (strcmp(f->name, name) == 0)
            return f;
    return NULL;
}

void metrics_declare(const char *name, enum metrics_type type, const char *help)
{
    pthread_mutex_lock(&lock);
    if (find_family(name) == NULL) {
        family *f = xcalloc(1, sizeof *f);
        f->name = xstrdup(name);
        f->help = xstrdup(help);
        f->type = type;
        family **tail = &families;
        while (*tail)
            tail = &(*tail)->next;
        *tail = f;
    }
    pthread_mutex_unlock(&lock);
}

/* Caller holds the lock. Undeclared names get an untyped gauge family. */
static series *find_series(const char *name, const char *labels)
{
    family *f = find_family(name);
    if (f == NULL) {
        f = xcalloc(1, sizeof *f);
        f->name = xstrdup(name);
        f->help = xstrdup("");
        f->type = METRICS_GAUGE;
        f->next = families;
        families = f;
    }
    if (labels == NULL)
        labels = "";
    series **tail = &f->first;
    for (series *s = f->first; s; s = s->next) {
        if (strcmp(s->labels, labels) == 0)
            return s;
        tail = &s->next;
    }
    series *s = xcalloc(1, sizeof *s);
    s->labels = xstrdup(labels);
    *tail = s;
    return s;
}

void metrics_add(const char *name, const char *labels, double v)
{
    pthread_mutex_lock(&lock);
    find_series(name, labels)->value += v;
    pthread_mutex_unlock(&lock);
}

void metrics_set(const char *name, const char *labels, double v)
{
    pthread_mutex_lock(&lock);
    find_series(name, labels)->value = v;
    pthread_mutex_unlock(&lock);
}

void metrics_observe(const char *name, const char *labels, double v)
{
    pthread_mutex_lock(&lock);
    series *s = find_series(name, labels);
    s->value += v;
    s->count++;
    for (size_t i = 0; i < NBUCKETS; i++)
        if (v <= bucket_bounds[i])
            s->buckets[i]++;
    pthread_mutex_unlock(&lock);
}

double metrics_get(const char *name, const char *labels)
{
    pthread_mutex_lock(&lock);
    double v = 0;
    family *f = find_family(name);
    for (series *s = f ? f->first : NULL; s; s = s->next)
        if (strcmp(s->labels, labels ? labels : "") == 0)
            v = f->type == METRICS_HISTOGRAM ? (double)s->count : s->value;
    pthread_mutex_unlock(&lock);
    return v;
}

static void put_series(buf *out, const char *name, const char *suffix, const char *labels,
                       const char *extra, double v)
{
    buf_printf(out, "%s%s", name, suffix);
    if (*labels || extra) {
        buf_putc(out, '{');
        buf_puts(out, labels);
        if (*labels && extra)
            buf_putc(out, ',');
        if (extra)
            buf_puts(out, extra);
        buf_putc(out, '}');
    }
    buf_printf(out, " %.17g\n", v);
}

void metrics_render(buf *out)
{
    static const char *const types[] = {"counter", "gauge", "histogram"};
    pthread_mutex_lock(&lock);
    for (family *f = families; f; f = f->next) {
        if (*f->help)
            buf_printf(out, "# HELP %s %s\n", f->name, f->help);
        buf_printf(out, "# TYPE %s %s\n", f->name, types[f->type]);
        for (series *s = f->first; s; s = s->next) {
            if (f->type != METRICS_HISTOGRAM) {
                put_series(out, f->name, "", s->labels, NULL, s->value);
                continue;
            }
            char le[40];
            for (size_t i = 0; i < NBUCKETS; i++) {
                snprintf(le, sizeof le, "le=\"%g\"", bucket_bounds[i]);
                put_series(out, f->name, "_bucket", s->labels, le, (double)s->buckets[i]);
            }
            put_series(out, f->name, "_bucket", s->labels, "le=\"+Inf\"", (double)s->count);
            put_series(out, f->name, "_sum", s->labels, NULL, s->value);
            put_series(out, f->name, "_count", s->labels, NULL, (double)s->count);
        }
    }
    pthread_mutex_unlock(&lock);
    metrics_process_render(out);
}

void metrics_set_queue_depth(size_t accounts, size_t writes)
{
    static const char name[] = "sync_airbnb_operator_queue_depth";
    metrics_declare(name, METRICS_GAUGE, "Work waiting: accounts to plan, writes awaiting an answer.");
    metrics_set(name, "queue=\"accounts\"", (double)accounts);
    metrics_set(name, "queue=\"writes\"", (double)writes);
}

void metrics_reset(void)
{
    pthread_mutex_lock(&lock);
    while (families) {
        family *f = families;
        families = f->next;
        while (f->first) {
            series *s = f->first;
            f->first = s->next;
            free(s->labels);
            free(s);
        }
        free(f->name);
        free(f->help);
        free(f);
    }
    pthread_mutex_unlock(&lock);
}
