/* log: structured logging to stderr, JSON lines by default or "text".
 *
 * Fields are key/value string pairs terminated by NULL:
 *   log_info("created deployment", "account_id", id, "deployment", name, NULL);
 * Never pass credential values as fields or in the message (DESIGN.md §5.4). */
#ifndef LOG_H
#define LOG_H

#include <stdarg.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };
enum log_format { LOG_JSON = 0, LOG_TEXT };

void log_init(enum log_level level, enum log_format format);
/* Parses "debug|info|warn|error"; returns -1 on anything else. */
int log_parse_level(const char *s);
/* Parses "json|text"; returns -1 on anything else. */
int log_parse_format(const char *s);
int log_enabled(enum log_level level);

void log_msg(enum log_level level, const char *msg, ...);
void log_vmsg(enum log_level level, const char *msg, va_list fields);
/* Same, with the fields given as two parallel arrays (used by the Lua binding). */
void log_msgv(enum log_level level, const char *msg, int nfields, const char *const *keys,
              const char *const *values);

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

/* Test hook: when set, lines are appended to this file descriptor instead of stderr. */
void log_set_fd(int fd);

#endif
