/* log: see log.h. One line per call, written with a single write(2) so that
 * lines from the health server thread never interleave with the main loop's. */
#include "log.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "scrub.h"
#include "util.h"

#define LOG_MAX_FIELDS 32

static enum log_level log_min = LOG_INFO;
static enum log_format log_fmt = LOG_JSON;
static int log_fd = 2;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_init(enum log_level level, enum log_format format)
{
    log_min = level;
    log_fmt = format;
}

void log_set_fd(int fd)
{
    log_fd = fd;
}

int log_parse_level(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, level_names[i]) == 0)
            return i;
    if (strcmp(s, "warning") == 0)
        return LOG_WARN;
    return -1;
}

int log_parse_format(const char *s)
{
    if (strcmp(s, "json") == 0)
        return LOG_JSON;
    if (strcmp(s, "text") == 0)
        return LOG_TEXT;
    return -1;
}

int log_enabled(enum log_level level)
{
    return level >= log_min;
}

static void text_value(buf *b, const char *v)
{
    /* Quote values with spaces or quotes so text lines stay parseable. */
    if (*v && strpbrk(v, " \t\"=") == NULL && strchr(v, '\n') == NULL)
        buf_puts(b, v);
    else
        buf_json_string(b, v, strlen(v));
}

/* Every line goes through the scrubber (scrub.h): a rule's print, a
 * database error, a rejected rules' message may quote a secret. */
static void log_msgv_clean(enum log_level level, const char *msg, int nfields, const char *const *keys,
                           const char *const *values);

void log_msgv(enum log_level level, const char *msg, int nfields, const char *const *keys,
              const char *const *values)
{
    if (level < log_min)
        return;
    if (nfields > LOG_MAX_FIELDS)
        nfields = LOG_MAX_FIELDS;
    char *clean_msg = scrub_needed(msg) ? scrub_dup(msg) : NULL;
    char *clean[LOG_MAX_FIELDS] = {0};
    const char *vals[LOG_MAX_FIELDS];
    for (int i = 0; i < nfields; i++) {
        vals[i] = values[i];
        if (values[i] && scrub_needed(values[i]))
            vals[i] = clean[i] = scrub_dup(values[i]);
    }
    log_msgv_clean(level, clean_msg ? clean_msg : msg, nfields, keys, vals);
    free(clean_msg);
    for (int i = 0; i < nfields; i++)
        free(clean[i]);
}

static void log_msgv_clean(enum log_level level, const char *msg, int nfields, const char *const *keys,
                           const char *const *values)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[64];
    snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (int)(tv.tv_usec / 1000));

    buf b = {0};
    if (log_fmt == LOG_JSON) {
        buf_printf(&b, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":", ts, level_names[level]);
        buf_json_string(&b, msg, strlen(msg));
        for (int i = 0; i < nfields; i++) {
            buf_putc(&b, ',');
            buf_json_string(&b, keys[i], strlen(keys[i]));
            buf_putc(&b, ':');
            const char *v = values[i] ? values[i] : "";
            buf_json_string(&b, v, strlen(v));
        }
        buf_puts(&b, "}\n");
    } else {
        buf_printf(&b, "%s %-5s %s", ts, level_names[level], msg);
        for (int i = 0; i < nfields; i++) {
            buf_printf(&b, " %s=", keys[i]);
            text_value(&b, values[i] ? values[i] : "");
        }
        buf_putc(&b, '\n');
    }
    pthread_mutex_lock(&log_lock);
    size_t off = 0;
    while (off < b.len) {
        ssize_t n = write(log_fd, b.data + off, b.len - off);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    pthread_mutex_unlock(&log_lock);
    buf_free(&b);
}

void log_vmsg(enum log_level level, const char *msg, va_list ap)
{
    const char *keys[LOG_MAX_FIELDS], *values[LOG_MAX_FIELDS];
    int n = 0;
    const char *k;
    while ((k = va_arg(ap, const char *)) != NULL) {
        const char *v = va_arg(ap, const char *);
        if (n < LOG_MAX_FIELDS) {
            keys[n] = k;
            values[n] = v;
            n++;
        }
    }
    log_msgv(level, msg, n, keys, values);
}

void log_msg(enum log_level level, const char *msg, ...)
{
    if (level < log_min)
        return;
    va_list ap;
    va_start(ap, msg);
    log_vmsg(level, msg, ap);
    va_end(ap);
}
