/* migrate: the operator's database migrations (`sync-airbnb-operator
 * migrate up|status|check`, and the schema-at-head check `run` waits on).
 *
 * The ordered list lives in Lua (cfg->migrations_dir/init.lua, one file per
 * migration; see lua/migrations/init.lua). Each migration's SQL is rendered
 * with the configured accounts table and its sha256 is the checksum stored in
 * sync_airbnb_operator.schema_migrations. `up` holds a session advisory lock
 * (MIGRATE_LOCK_KEY) so concurrent runners never interleave, and applies each
 * pending migration and its history row in one transaction.
 */
#ifndef MIGRATE_H
#define MIGRATE_H

#include <stddef.h>
#include <stdio.h>

#include "config.h"
#include "pg.h"

/* pg_advisory_lock key shared by every `migrate up` ("SAOMIGRT"). */
#define MIGRATE_LOCK_KEY 0x53414f4d49475254LL

/* Exit codes of migrate_main. */
#define MIGRATE_EXIT_OK 0
#define MIGRATE_EXIT_ERROR 1
#define MIGRATE_EXIT_USAGE 2
#define MIGRATE_EXIT_PENDING 3 /* `migrate check`: migrations pending */
#define MIGRATE_EXIT_WAITING 4 /* `migrate up`: the accounts table never appeared */

/* `migrate up|status|check [-o json]`: argv holds the words after "migrate".
 * Connects with cfg->database_url, prints results to stdout and errors as
 * one line on stderr; returns the process exit code (MIGRATE_EXIT_*). */
int migrate_main(const config *cfg, int argc, char **argv);

/* Applies the pending migrations on c (lock, bootstrap, one transaction per
 * migration), in order. *applied (if not NULL) receives how many were
 * applied. Returns 0; 1 when it stopped at a migration that needs the
 * accounts table, which does not exist (and MIGRATE_CREATE_ACCOUNTS_TABLE is
 * off): err says so, the migrations before it are applied; or -1 with one
 * clear line in err (lock timeout, a changed or unknown migration, or
 * "migration <id> failed: <PostgreSQL message>"). */
int migrate_up(pg_conn *c, const config *cfg, int *applied, char *err, size_t errlen);

/* Writes the state of every migration to out: a table (ID, STATE, APPLIED_AT)
 * or, with json 1, {"at_head":bool,"migrations":[{"id","description","state",
 * "checksum","applied_at"}]}. States: applied, pending, changed (checksum
 * differs from the file), unknown (in the database, not in this binary);
 * json 2 writes that document as YAML. Returns 0 or -1 with err. */
int migrate_status(pg_conn *c, const config *cfg, FILE *out, int json, char *err, size_t errlen);

/* Returns 1 when every migration is applied with a matching checksum and the
 * database holds none this binary does not know; 0 when not (err says why:
 * pending, changed or unknown); -1 when it cannot tell (database or
 * migration-loading error, in err). Read-only; never takes the lock. */
int migrate_at_head(pg_conn *c, const config *cfg, char *err, size_t errlen);

/* How err of migrate_at_head begins when a pending migration waits for the app's
 * accounts table (sync-airbnb's migrations have not run yet). */
#define MIGRATE_WAITING_FOR_ACCOUNTS "waiting for the accounts table"

#endif
