/* cli_rollout: `sync-airbnb-operator rollout [status|resume|abort]`, the
 * person's side of the rules rollout (rollout.h). status reads the state
 * row; resume and abort leave a request in it that the leader acts on
 * within a few seconds (it reads the row every 2 s while a rollout is under
 * way), so they work whichever replica leads and survive a leader change. */
#include <stdio.h>
#include <string.h>

#include <libpq-fe.h>

#include "config.h"
#include "pg.h"
#include "rollout.h"
#include "util.h"

static const char *value(const PGresult *res, int col)
{
    return PQgetisnull(res, 0, col) ? "-" : PQgetvalue(res, 0, col);
}

static int show(pg_conn *db, int json)
{
    char err[512];
    PGresult *res = pg_exec(db,
                            "SELECT phase, to_version, to_image, from_version, from_image, "
                            "jsonb_array_length(members), reached, "
                            "CASE WHEN jsonb_array_length(waves) = 0 THEN 0 ELSE wave + 1 END, "
                            "jsonb_array_length(waves), halt_reason, request, "
                            "to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), "
                            "to_char(wave_started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), "
                            "(SELECT string_agg(m->>0, ' ' ORDER BY ord) FROM jsonb_array_elements(members) "
                            " WITH ORDINALITY AS e(m, ord) WHERE ord <= reached) "
                            "FROM sync_airbnb_operator.rollout WHERE id = 1",
                            0, NULL, err, sizeof err);
    if (res == NULL) {
        fprintf(stderr, "sync-airbnb-operator rollout: %s\n", err);
        return 1;
    }
    if (PQntuples(res) == 0) {
        if (json)
            printf("{\"phase\":null}\n");
        else
            printf("no rollout recorded yet (the operator records the rules in effect when it starts)\n");
        PQclear(res);
        return 0;
    }
    static const char *const keys[] = {"phase", "to_version", "to_image", "from_version", "from_image",
                                       "workers", "reached", "wave", "waves", "halt_reason", "request",
                                       "started_at", "wave_started_at", "reached_workers"};
    if (json) {
        buf b = {0};
        buf_putc(&b, '{');
        for (int i = 0; i < 14; i++) {
            if (i)
                buf_putc(&b, ',');
            buf_json_string(&b, keys[i], strlen(keys[i]));
            buf_putc(&b, ':');
            if (PQgetisnull(res, 0, i))
                buf_puts(&b, "null");
            else if (i >= 5 && i <= 8)
                buf_puts(&b, PQgetvalue(res, 0, i));
            else
                buf_json_string(&b, PQgetvalue(res, 0, i), (size_t)PQgetlength(res, 0, i));
        }
        buf_puts(&b, "}\n");
        fputs(b.data, stdout);
        buf_free(&b);
    } else {
        if (PQgetisnull(res, 0, 10))
            printf("phase:        %s\n", value(res, 0));
        else
            printf("phase:        %s (requested: %s)\n", value(res, 0), value(res, 10));
        printf("rules:        %.12s (image %s)\n", value(res, 1), value(res, 2));
        if (!PQgetisnull(res, 0, 3))
            printf("previous:     %.12s (image %s)\n", value(res, 3), value(res, 4));
        if (strcmp(value(res, 0), "complete") != 0) {
            printf("workers:      %s reached of %s changed\n", value(res, 6), value(res, 5));
            printf("wave:         %s of %s (started %s)\n", value(res, 7), value(res, 8), value(res, 12));
        }
        if (!PQgetisnull(res, 0, 9))
            printf("halted:       %s\n", value(res, 9));
        printf("started:      %s\n", value(res, 11));
        if (!PQgetisnull(res, 0, 13) && strcmp(value(res, 0), "complete") != 0)
            printf("reached:      %s\n", value(res, 13));
    }
    PQclear(res);
    return 0;
}

static int request(pg_conn *db, const char *what)
{
    char err[512];
    const char *params[] = {what};
    PGresult *res = pg_exec(db,
                            "UPDATE sync_airbnb_operator.rollout SET request = $1, updated_at = now() "
                            "WHERE id = 1 AND phase <> 'complete' AND ($1 = 'abort' OR phase <> 'progressing') "
                            "RETURNING phase",
                            1, params, err, sizeof err);
    if (res == NULL) {
        fprintf(stderr, "sync-airbnb-operator rollout: %s\n", err);
        return 1;
    }
    int n = PQntuples(res);
    PQclear(res);
    if (n == 0) {
        fprintf(stderr, "sync-airbnb-operator rollout %s: no rollout to %s (see `rollout status`)\n", what, what);
        return 1;
    }
    printf("rollout %s requested; the leader acts on it within a few seconds\n", what);
    return 0;
}

int rollout_main(const config *cfg, int argc, char **argv)
{
    const char *sub = argc > 0 ? argv[0] : "status";
    if (argc > 1 || (strcmp(sub, "status") && strcmp(sub, "resume") && strcmp(sub, "abort"))) {
        fprintf(stderr, "sync-airbnb-operator rollout: expected status, resume or abort\n");
        return 2;
    }
    char err[512];
    if (config_require_database(cfg, err, sizeof err) < 0) {
        fprintf(stderr, "sync-airbnb-operator rollout: %s\n", err);
        return 2;
    }
    pg_conn *db = pg_connect(cfg->database_url, cfg->db_timeout_ms, err, sizeof err);
    if (db == NULL) {
        fprintf(stderr, "sync-airbnb-operator rollout: %s\n", err);
        return 1;
    }
    int rc = strcmp(sub, "status") == 0 ? show(db, cfg->output_json) : request(db, sub);
    pg_close(db);
    return rc;
}
