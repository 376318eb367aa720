/* pg: the operator's PostgreSQL connection (libpq), used by `run`, `migrate`
 * and the Lua `db` binding.
 *
 * Rules every caller relies on:
 * - SQL text is always constant; values travel as $n parameters (text
 *   format). The only things ever put into SQL text are identifiers that
 *   pass pg_ident_valid() and are quoted with pg_quote_ident().
 * - Error messages never contain the connection URL or its password: they
 *   are libpq's messages folded to one line, with the password scrubbed.
 * - Blocking calls are bounded: connect_timeout on connect, the configured
 *   statement_timeout on every statement, and on the client side a wait of
 *   at most statement_timeout + PG_CALL_MARGIN_MS for any result (a server
 *   that stopped answering: the connection is closed, pg_ok() turns 0).
 *   TCP keepalives and tcp_user_timeout on every connection.
 */
#ifndef PG_H
#define PG_H

#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

typedef struct pg_conn pg_conn;

#define PG_APPLICATION_NAME "sync-airbnb-operator"
#define PG_CONNECT_TIMEOUT_S 10 /* unless the URL sets connect_timeout */
#define PG_TCP_USER_TIMEOUT_MS 30000 /* unless the URL sets tcp_user_timeout */
#define PG_CALL_MARGIN_MS 5000 /* a call waits at most statement_timeout + this */
#define PG_CALL_BOUND_MS 60000 /* ... or this without a statement_timeout */

/* Connects to url (a libpq URI "postgresql://..." or a "key=value" conninfo).
 * statement_timeout_ms > 0 sets the session's statement_timeout. Returns a
 * connection the caller releases with pg_close(), or NULL with one clear
 * line in err (never the password). */
pg_conn *pg_connect(const char *url, int statement_timeout_ms, char *err, size_t errlen);
/* Registers the password of url with the scrubber (scrub.h), as written and
 * as decoded, so that no text leaving the process carries it. */
void pg_scrub_register(const char *url);

/* Closes the connection and frees c (NULL is fine). Session advisory locks
 * and LISTENs end with it. */
void pg_close(pg_conn *c);
/* The libpq handle, still owned by c (for PQ* calls this file does not wrap). */
PGconn *pg_raw(pg_conn *c);

/* Runs one statement with nparams text parameters (params[i] == NULL is SQL
 * NULL). Returns the result (status TUPLES_OK or COMMAND_OK; the caller
 * PQclear()s it), or NULL with "message (SQLSTATE xxxxx)" in err. */
PGresult *pg_exec(pg_conn *c, const char *sql, int nparams, const char *const *params, char *err,
                  size_t errlen);
/* pg_exec for statements whose result is not needed. Returns 0 or -1. */
int pg_command(pg_conn *c, const char *sql, int nparams, const char *const *params, char *err,
               size_t errlen);
/* Runs a constant script of one or more statements (simple query protocol,
 * no parameters): for trusted migration SQL only. Returns 0 or -1. */
int pg_exec_script(pg_conn *c, const char *sql, char *err, size_t errlen);

/* A bytea parameter in text form ("\\x" and hex) for data[0..len); NULL (SQL
 * NULL) when len is 0. The caller frees it. */
char *pg_bytea_param(const void *data, size_t len);
/* The bytea of row 0, column col of res, decoded: a buffer the caller frees
 * with PQfreemem, its length in *len; NULL for SQL NULL or a bad value. */
unsigned char *pg_bytea_value(const PGresult *res, int col, size_t *len);

/* Fills err with a one-line description of a failed result (primary message
 * and SQLSTATE), falling back to the connection's error. */
void pg_result_error(pg_conn *c, const PGresult *res, char *err, size_t errlen);

/* LISTEN on channel (a valid identifier, see pg_ident_valid). The channel is
 * remembered and listened to again by pg_reconnect(). Returns 0 or -1. */
int pg_listen(pg_conn *c, const char *channel, char *err, size_t errlen);
/* The socket to poll for readability in an event loop (-1 when closed). */
int pg_socket(pg_conn *c);
/* Reads what the socket has without blocking and calls cb once per
 * notification (channel and payload are valid during the call only).
 * Returns the number delivered, or -1 when the connection is gone.
 * Call it also after every pg_exec() on a LISTENing connection: libpq queues
 * notifications that arrive during a query, and the socket does not become
 * readable again for them. */
int pg_consume_notifies(pg_conn *c, void (*cb)(const char *channel, const char *payload, void *ud),
                        void *ud);
/* 1 if the connection is usable, 0 if it is broken. */
int pg_ok(pg_conn *c);
/* Re-establishes a broken connection with the same settings (blocking,
 * bounded by connect_timeout), re-applies statement_timeout and every
 * pg_listen() channel. Returns 0 or -1. Notifications sent while the
 * connection was down are lost: callers do a full resync after it. */
int pg_reconnect(pg_conn *c, char *err, size_t errlen);

/* Session advisory lock on key, retried with pg_try_advisory_lock every
 * 200 ms for at most timeout_ms. Returns PG_LOCK_ACQUIRED, PG_LOCK_BUSY
 * (still held by another session when the time ran out; err says so) or -1
 * on a database error. The lock is held until pg_advisory_unlock() or the
 * connection closes. */
#define PG_LOCK_ACQUIRED 0
#define PG_LOCK_BUSY 1
int pg_advisory_lock(pg_conn *c, int64_t key, int timeout_ms, char *err, size_t errlen);
int pg_advisory_unlock(pg_conn *c, int64_t key, char *err, size_t errlen);

/* 1 if s is an identifier this project will put into SQL text:
 * [a-z_][a-z0-9_]*, at most 63 bytes. */
int pg_ident_valid(const char *s);
/* Returns "\"s\"" (malloc'd, caller frees) for a valid identifier, NULL
 * otherwise. */
char *pg_quote_ident(const char *s);

/* Returns a conninfo string (malloc'd, caller frees) equal to url with one
 * connection parameter (e.g. "dbname") set to value, or NULL with err. The
 * result may contain the password: never log it. */
char *pg_url_with(const char *url, const char *key, const char *value, char *err, size_t errlen);

/* The Lua `db` module (core/bind_db.c; documented in lua/core/db.lua). */
struct lua_State;
int luaopen_db(struct lua_State *L);

#endif
