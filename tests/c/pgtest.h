/* pgtest.h: a fresh PostgreSQL database per test case, for the C tests of
 * the database layer. The server comes from TEST_DATABASE_URL or
 * DATABASE_URL (tools/test starts one); without it the test fails, it does
 * not skip. Include after check.h; define PGTEST_PREFIX before including. */
#ifndef PGTEST_H
#define PGTEST_H

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "pg.h"
#include "util.h"

static const char *server_url;
static char test_db[64];
static char *test_url; /* URL of the fresh database (may hold the password: never print it) */

/* Runs fmt (with one %s for the quoted database name) on the server. */
static int admin_command(const char *fmt, const char *dbname)
{
    char err[512];
    pg_conn *admin = pg_connect(server_url, 0, err, sizeof err);
    if (admin == NULL) {
        fprintf(stderr, "  cannot connect to the test server: %s\n", err);
        return -1;
    }
    char *q = pg_quote_ident(dbname);
    char *sql = xasprintf(fmt, q);
    int rc = pg_command(admin, sql, 0, NULL, err, sizeof err);
    if (rc != 0)
        fprintf(stderr, "  %s: %s\n", sql, err);
    free(sql);
    free(q);
    pg_close(admin);
    return rc;
}

static int db_setup(void)
{
    static int seq;
    char err[512];
    snprintf(test_db, sizeof test_db, "sao_test_%s_%d_%d", PGTEST_PREFIX, (int)getpid(), ++seq);
    if (admin_command("CREATE DATABASE %s", test_db) != 0)
        return -1;
    test_url = pg_url_with(server_url, "dbname", test_db, err, sizeof err);
    return test_url ? 0 : -1;
}

static void db_teardown(void)
{
    admin_command("DROP DATABASE IF EXISTS %s WITH (FORCE)", test_db);
    free(test_url);
    test_url = NULL;
}

/* Runs the body on a fresh database, dropped afterwards. */
#define WITH_DB(...)                                     \
    do {                                                 \
        if (db_setup() != 0) {                           \
            CHECK(!"fresh test database could be made"); \
            return;                                      \
        }                                                \
        do {                                             \
            __VA_ARGS__;                                 \
        } while (0); /* the body may `break` to here */  \
        db_teardown();                                   \
    } while (0)

/* Finds the server or explains how to get one; 0 or -1. */
static int pgtest_init(const char *test_name)
{
    server_url = getenv("TEST_DATABASE_URL");
    if (server_url == NULL || *server_url == '\0')
        server_url = getenv("DATABASE_URL");
    if (server_url == NULL || *server_url == '\0') {
        fprintf(stderr, "%s: FAIL: no database: set DATABASE_URL or TEST_DATABASE_URL "
                        "(eval \"$(tools/pg up && tools/pg env)\")\n", test_name);
        return -1;
    }
    server_url = xstrdup(server_url); /* tests may change DATABASE_URL */
    return 0;
}

#endif
