/* pg: see pg.h. */
#include "pg.h"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "names.h"
#include "scrub.h"
#include "util.h"

#define PG_LOCK_POLL_MS 200

struct pg_conn {
    PGconn *conn;
    int statement_timeout_ms;
    char *password; /* only to scrub it from error messages; NULL if none */
    char **channels; /* LISTENed, re-LISTENed after pg_reconnect() */
    int nchannels;
};

/* Replaces every occurrence of secret in s (in place) with "***" when it fits,
 * else with '*'s of the same length. */
static void scrub(char *s, const char *secret)
{
    if (secret == NULL || *secret == '\0')
        return;
    size_t n = strlen(secret);
    char *p;
    while ((p = strstr(s, secret)) != NULL) {
        if (n >= 3) {
            memcpy(p, "***", 3);
            memmove(p + 3, p + n, strlen(p + n) + 1);
        } else {
            memset(p, '*', n);
        }
    }
}

/* libpq messages span lines ("...failed: Connection refused\n\tIs the server
 * running..."): fold whitespace runs into single spaces and trim. */
static void fold_line(char *s)
{
    char *w = s;
    int space = 0;
    for (const char *r = s; *r; r++) {
        if (*r == '\n' || *r == '\r' || *r == '\t' || *r == ' ') {
            space = (w != s);
            continue;
        }
        if (space) {
            *w++ = ' ';
            space = 0;
        }
        *w++ = *r;
    }
    *w = '\0';
}

/* Copies msg to err as one line with the password scrubbed. */
static void set_clean_err(char *err, size_t errlen, const char *password, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void set_clean_err(char *err, size_t errlen, const char *password, const char *fmt, ...)
{
    buf b = {0};
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(&b, fmt, ap);
    va_end(ap);
    if (b.data == NULL)
        buf_puts(&b, "");
    scrub(b.data, password);
    fold_line(b.data);
    char *clean = scrub_dup(b.data); /* every registered secret (scrub.h) */
    util_seterr(err, errlen, "%s", clean);
    free(clean);
    buf_free(&b);
}

/* Best-effort password of a URL libpq could not parse: the text between
 * "user:" and the last '@' of a URI authority, or a "password=" value.
 * Returns a malloc'd string or NULL. */
static char *guess_password(const char *url)
{
    const char *scheme = strstr(url, "://");
    if (scheme != NULL) {
        const char *auth = scheme + 3;
        const char *end = auth + strcspn(auth, "/?#");
        const char *at = NULL;
        for (const char *p = auth; p < end; p++)
            if (*p == '@')
                at = p;
        if (at == NULL)
            return NULL;
        const char *colon = memchr(auth, ':', (size_t)(at - auth));
        if (colon == NULL || colon + 1 == at)
            return NULL;
        return xstrndup(colon + 1, (size_t)(at - colon - 1));
    }
    const char *kw = strstr(url, "password");
    if (kw == NULL)
        return NULL;
    const char *v = kw + strlen("password");
    v += strspn(v, " \t");
    if (*v != '=')
        return NULL;
    v++;
    v += strspn(v, " \t'");
    size_t n = strcspn(v, " \t'");
    return n ? xstrndup(v, n) : NULL;
}

/* Password as libpq parses it, else a guess; NULL if there is none. */
static char *url_password(const char *url)
{
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(url, &perr);
    if (opts == NULL) {
        PQfreemem(perr);
        return guess_password(url);
    }
    char *pw = NULL;
    for (PQconninfoOption *o = opts; o->keyword; o++)
        if (strcmp(o->keyword, "password") == 0 && o->val && *o->val)
            pw = xstrdup(o->val);
    PQconninfoFree(opts);
    return pw;
}

void pg_scrub_register(const char *url)
{
    if (url == NULL)
        return;
    /* As written (libpq's parse errors quote the raw, percent-encoded text)
     * and as decoded (connect errors). Passwords are short: 4 bytes up. */
    char *raw = guess_password(url), *decoded = url_password(url);
    if (raw) {
        scrub_add(raw, strlen(raw), 4);
        /* An unescaped '@' or ':' in the password splits it between libpq's
         * fields (user, password, host): each piece is secret too. */
        for (const char *p = raw; *p;) {
            size_t n = strcspn(p, "@:");
            scrub_add(p, n, 4);
            p += n + (p[n] != '\0');
        }
    }
    if (decoded)
        scrub_add(decoded, strlen(decoded), 4);
    free(raw);
    free(decoded);
}

static int looks_like_url(const char *url)
{
    return strncmp(url, "postgresql://", 13) == 0 || strncmp(url, "postgres://", 11) == 0 ||
           strchr(url, '=') != NULL;
}

/* libpq prints NOTICEs ("relation already exists, skipping") and FATALs
 * on stderr by default: route them to the structured log instead. */
static void on_notice(void *arg, const char *message)
{
    pg_conn *c = arg;
    char line[1024];
    set_clean_err(line, sizeof line, c->password, "%s", message);
    log_debug("postgres notice", "message", line, NULL);
}

static int listen_one(pg_conn *c, const char *channel, char *err, size_t errlen)
{
    char *q = pg_quote_ident(channel);
    if (q == NULL) {
        util_seterr(err, errlen, "invalid channel name (want [a-z_][a-z0-9_]*)");
        return -1;
    }
    char *sql = xasprintf("LISTEN %s", q);
    int rc = pg_command(c, sql, 0, NULL, err, errlen);
    free(sql);
    free(q);
    return rc;
}

static int apply_session(pg_conn *c, char *err, size_t errlen)
{
    if (c->statement_timeout_ms > 0) {
        char ms[32];
        snprintf(ms, sizeof ms, "%d", c->statement_timeout_ms);
        const char *params[] = {ms};
        if (pg_command(c, "SELECT set_config('statement_timeout', $1, false)", 1, params, err,
                       errlen) != 0)
            return -1;
    }
    for (int i = 0; i < c->nchannels; i++)
        if (listen_one(c, c->channels[i], err, errlen) != 0)
            return -1;
    return 0;
}

pg_conn *pg_connect(const char *url, int statement_timeout_ms, char *err, size_t errlen)
{
    pg_conn *c = NULL;
    char *perr = NULL;
    PQconninfoOption *opts = NULL;

    if (url == NULL || *url == '\0') {
        util_seterr(err, errlen, "DATABASE_URL is not set");
        return NULL;
    }
    char *password = url_password(url);
    if (!looks_like_url(url)) {
        util_seterr(err, errlen,
                    "DATABASE_URL is neither a postgresql:// URI nor a key=value conninfo");
        goto err;
    }
    opts = PQconninfoParse(url, &perr);
    if (opts == NULL) {
        set_clean_err(err, errlen, password, "invalid DATABASE_URL: %s",
                      perr ? perr : "cannot parse");
        goto err;
    }

    /* Defaults come before "dbname": libpq lets the expanded URL override
     * them, so a URL's own connect_timeout or application_name wins.
     * Keepalives find a peer that vanished (a dead node, a dropped route);
     * tcp_user_timeout drops a connection whose sent data goes unacknowledged.
     * A server that is up but does not answer is bounded by pg_exec. */
    char timeout[16], user_timeout[16];
    snprintf(timeout, sizeof timeout, "%d", PG_CONNECT_TIMEOUT_S);
    snprintf(user_timeout, sizeof user_timeout, "%d", PG_TCP_USER_TIMEOUT_MS);
    const char *keys[] = {"connect_timeout", "fallback_application_name", "keepalives", "keepalives_idle",
                          "keepalives_interval", "keepalives_count", "tcp_user_timeout", "dbname", NULL};
    const char *vals[] = {timeout, PG_APPLICATION_NAME, "1", "10", "5", "3", user_timeout, url, NULL};

    c = xcalloc(1, sizeof *c);
    c->password = password;
    password = NULL;
    c->statement_timeout_ms = statement_timeout_ms;
    c->conn = PQconnectdbParams(keys, vals, 1);
    if (c->conn == NULL) {
        util_seterr(err, errlen, "cannot connect to the database: out of memory");
        goto err;
    }
    if (PQstatus(c->conn) != CONNECTION_OK) {
        set_clean_err(err, errlen, c->password, "cannot connect to the database: %s",
                      PQerrorMessage(c->conn));
        goto err;
    }
    PQsetNoticeProcessor(c->conn, on_notice, c);
    if (apply_session(c, err, errlen) != 0)
        goto err;
    PQconninfoFree(opts);
    return c;

err:
    PQfreemem(perr);
    if (opts)
        PQconninfoFree(opts);
    free(password);
    pg_close(c);
    return NULL;
}

void pg_close(pg_conn *c)
{
    if (c == NULL)
        return;
    if (c->conn)
        PQfinish(c->conn);
    for (int i = 0; i < c->nchannels; i++)
        free(c->channels[i]);
    free(c->channels);
    if (c->password) {
        memset(c->password, 0, strlen(c->password));
        free(c->password);
    }
    free(c);
}

PGconn *pg_raw(pg_conn *c)
{
    return c ? c->conn : NULL;
}

void pg_result_error(pg_conn *c, const PGresult *res, char *err, size_t errlen)
{
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *pos = res ? PQresultErrorField(res, PG_DIAG_STATEMENT_POSITION) : NULL;
    if (primary == NULL) {
        /* Not a server error: the connection broke, or libpq refused. */
        const char *m = res ? PQresultErrorMessage(res) : "";
        if (*m == '\0')
            m = PQerrorMessage(c->conn);
        if (*m == '\0')
            m = "unknown database error";
        set_clean_err(err, errlen, c->password, "%s", m);
        return;
    }
    /* DETAIL is left out on purpose: it can quote row values. */
    set_clean_err(err, errlen, c->password, "%s%s%s%s%s%s", primary, pos ? " at character " : "",
                  pos ? pos : "", state ? " (SQLSTATE " : "", state ? state : "",
                  state ? ")" : "");
}

static PGresult *check_result(pg_conn *c, PGresult *res, char *err, size_t errlen)
{
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
        return res;
    if (st == PGRES_EMPTY_QUERY)
        util_seterr(err, errlen, "empty query");
    else if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH)
        util_seterr(err, errlen, "COPY is not supported here");
    else
        pg_result_error(c, res, err, errlen);
    PQclear(res);
    return NULL;
}

/* The longest a statement may keep the caller waiting: the server's own
 * statement_timeout plus a margin for the network, else PG_CALL_BOUND_MS. */
static int call_bound_ms(const pg_conn *c)
{
    return c->statement_timeout_ms > 0 ? c->statement_timeout_ms + PG_CALL_MARGIN_MS : PG_CALL_BOUND_MS;
}

/* Sends a statement and waits for its result at most call_bound_ms: a
 * server that accepted the connection and then stopped answering (a stopped
 * backend, a frozen node) would otherwise hold the caller forever, since the
 * kernel acknowledges what libpq sends. On the bound the socket is shut
 * down: libpq sees a broken connection, pg_ok() turns 0 and the caller
 * reconnects. Returns what PQexec would (the last result, or the first
 * error of a script). */
static PGresult *exec_bounded(pg_conn *c, const char *sql, int nparams, const char *const *params,
                              int script, char *err, size_t errlen)
{
    int sent = script ? PQsendQuery(c->conn, sql)
                      : PQsendQueryParams(c->conn, sql, nparams, NULL, params, NULL, NULL, 0);
    if (!sent)
        return NULL; /* check_result reports the connection's error */
    uint64_t deadline = util_now_ms() + (uint64_t)call_bound_ms(c);
    PGresult *last = NULL;
    int timed_out = 0;
    for (;;) {
        while (!timed_out && PQisBusy(c->conn)) {
            uint64_t now = util_now_ms();
            struct pollfd pfd = {.fd = PQsocket(c->conn), .events = POLLIN};
            int rc = now < deadline ? poll(&pfd, 1, (int)(deadline - now)) : 0;
            if (rc < 0 && errno == EINTR)
                continue;
            if (rc == 0) {
                timed_out = 1;
                shutdown(PQsocket(c->conn), SHUT_RDWR);
            }
            if (!PQconsumeInput(c->conn))
                break; /* broken: PQgetResult returns the error */
        }
        PGresult *r = PQgetResult(c->conn);
        if (r == NULL)
            break;
        ExecStatusType st = PQresultStatus(r);
        int last_failed = last && PQresultStatus(last) != PGRES_TUPLES_OK && PQresultStatus(last) != PGRES_COMMAND_OK;
        if (last_failed) {
            PQclear(r); /* keep the first error, read the rest */
        } else {
            PQclear(last);
            last = r;
        }
        if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH)
            break;
    }
    if (timed_out) {
        PQclear(last);
        util_seterr(err, errlen, "the database did not answer within %d ms; connection closed", call_bound_ms(c));
        return NULL;
    }
    return last;
}

char *pg_bytea_param(const void *data, size_t len)
{
    if (len == 0)
        return NULL;
    static const char hex[] = "0123456789abcdef";
    const unsigned char *in = data;
    char *s = xmalloc(len * 2 + 3), *p = s;
    *p++ = '\\';
    *p++ = 'x';
    for (size_t i = 0; i < len; i++) {
        *p++ = hex[in[i] >> 4];
        *p++ = hex[in[i] & 15];
    }
    *p = '\0';
    return s;
}

unsigned char *pg_bytea_value(const PGresult *res, int col, size_t *len)
{
    *len = 0;
    if (PQntuples(res) < 1 || PQgetisnull(res, 0, col))
        return NULL;
    return PQunescapeBytea((const unsigned char *)PQgetvalue(res, 0, col), len);
}

PGresult *pg_exec(pg_conn *c, const char *sql, int nparams, const char *const *params, char *err,
                  size_t errlen)
{
    if (c == NULL || c->conn == NULL) {
        util_seterr(err, errlen, "database connection is closed");
        return NULL;
    }
    char terr[160] = "";
    PGresult *res = exec_bounded(c, sql, nparams, params, 0, terr, sizeof terr);
    if (res == NULL && terr[0]) {
        util_seterr(err, errlen, "%s", terr);
        return NULL;
    }
    return check_result(c, res, err, errlen);
}

int pg_command(pg_conn *c, const char *sql, int nparams, const char *const *params, char *err,
               size_t errlen)
{
    PGresult *res = pg_exec(c, sql, nparams, params, err, errlen);
    if (res == NULL)
        return -1;
    PQclear(res);
    return 0;
}

int pg_exec_script(pg_conn *c, const char *sql, char *err, size_t errlen)
{
    if (c == NULL || c->conn == NULL) {
        util_seterr(err, errlen, "database connection is closed");
        return -1;
    }
    char terr[160] = "";
    PGresult *raw = exec_bounded(c, sql, 0, NULL, 1, terr, sizeof terr);
    if (raw == NULL && terr[0]) {
        util_seterr(err, errlen, "%s", terr);
        return -1;
    }
    PGresult *res = check_result(c, raw, err, errlen);
    if (res == NULL)
        return -1;
    PQclear(res);
    return 0;
}

int pg_listen(pg_conn *c, const char *channel, char *err, size_t errlen)
{
    if (listen_one(c, channel, err, errlen) != 0)
        return -1;
    for (int i = 0; i < c->nchannels; i++)
        if (strcmp(c->channels[i], channel) == 0)
            return 0;
    c->channels = xrealloc(c->channels, sizeof *c->channels * (size_t)(c->nchannels + 1));
    c->channels[c->nchannels++] = xstrdup(channel);
    return 0;
}

int pg_socket(pg_conn *c)
{
    return (c && c->conn) ? PQsocket(c->conn) : -1;
}

int pg_consume_notifies(pg_conn *c, void (*cb)(const char *channel, const char *payload, void *ud),
                        void *ud)
{
    if (c == NULL || c->conn == NULL)
        return -1;
    if (!PQconsumeInput(c->conn) || PQstatus(c->conn) != CONNECTION_OK)
        return -1;
    int n = 0;
    PGnotify *nt;
    while ((nt = PQnotifies(c->conn)) != NULL) {
        if (cb)
            cb(nt->relname, nt->extra ? nt->extra : "", ud);
        PQfreemem(nt);
        n++;
    }
    return n;
}

int pg_ok(pg_conn *c)
{
    return c && c->conn && PQstatus(c->conn) == CONNECTION_OK;
}

int pg_reconnect(pg_conn *c, char *err, size_t errlen)
{
    if (c == NULL || c->conn == NULL) {
        util_seterr(err, errlen, "database connection is closed");
        return -1;
    }
    PQreset(c->conn);
    if (PQstatus(c->conn) != CONNECTION_OK) {
        set_clean_err(err, errlen, c->password, "cannot reconnect to the database: %s",
                      PQerrorMessage(c->conn));
        return -1;
    }
    return apply_session(c, err, errlen);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

int pg_advisory_lock(pg_conn *c, int64_t key, int timeout_ms, char *err, size_t errlen)
{
    char k[32];
    snprintf(k, sizeof k, "%lld", (long long)key);
    const char *params[] = {k};
    uint64_t deadline = util_now_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        PGresult *res =
            pg_exec(c, "SELECT pg_try_advisory_lock($1::bigint)", 1, params, err, errlen);
        if (res == NULL)
            return -1;
        int got = PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
        PQclear(res);
        if (got)
            return PG_LOCK_ACQUIRED;
        uint64_t now = util_now_ms();
        if (now >= deadline) {
            util_seterr(err, errlen, "advisory lock %lld is held by another session",
                        (long long)key);
            return PG_LOCK_BUSY;
        }
        uint64_t left = deadline - now;
        sleep_ms(left < PG_LOCK_POLL_MS ? (int)left : PG_LOCK_POLL_MS);
    }
}

int pg_advisory_unlock(pg_conn *c, int64_t key, char *err, size_t errlen)
{
    char k[32];
    snprintf(k, sizeof k, "%lld", (long long)key);
    const char *params[] = {k};
    return pg_command(c, "SELECT pg_advisory_unlock($1::bigint)", 1, params, err, errlen);
}

int pg_ident_valid(const char *s)
{
    return s != NULL && names_pg_ident_n(s, strlen(s));
}

char *pg_quote_ident(const char *s)
{
    /* Valid identifiers hold no '"', so quoting is just the two quotes. */
    return pg_ident_valid(s) ? xasprintf("\"%s\"", s) : NULL;
}

static void conninfo_value(buf *b, const char *v)
{
    buf_putc(b, '\'');
    for (const char *p = v; *p; p++) {
        if (*p == '\'' || *p == '\\')
            buf_putc(b, '\\');
        buf_putc(b, *p);
    }
    buf_putc(b, '\'');
}

char *pg_url_with(const char *url, const char *key, const char *value, char *err, size_t errlen)
{
    char *perr = NULL;
    char *password = url_password(url);
    PQconninfoOption *opts = PQconninfoParse(url, &perr);
    if (opts == NULL) {
        set_clean_err(err, errlen, password, "invalid DATABASE_URL: %s",
                      perr ? perr : "cannot parse");
        PQfreemem(perr);
        free(password);
        return NULL;
    }
    free(password);
    buf b = {0};
    int found = 0;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        const char *v = o->val;
        if (strcmp(o->keyword, key) == 0) {
            v = value;
            found = 1;
        }
        if (v == NULL)
            continue;
        if (b.len)
            buf_putc(&b, ' ');
        buf_printf(&b, "%s=", o->keyword);
        conninfo_value(&b, v);
    }
    PQconninfoFree(opts);
    if (!found) {
        util_seterr(err, errlen, "unknown connection parameter \"%s\"", key);
        buf_free(&b);
        return NULL;
    }
    return buf_steal(&b);
}
