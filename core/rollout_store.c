/* rollout_store: the rollout's state as one row of
 * sync_airbnb_operator.rollout (migration 006_rollout), and the rules files
 * kept in it (the previous rules are loaded from there: rollout_int.h). */
#include "rollout_int.h"

#include <errno.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "json.h"
#include "log.h"
#include "luahost.h"

#define STATE_TABLE "sync_airbnb_operator.rollout"

static char *bytea_param(const buf *b)
{
    return pg_bytea_param(b->data, b->len);
}

static void bytea_read(const PGresult *res, int col, buf *out)
{
    buf_free(out);
    size_t n = 0;
    unsigned char *raw = pg_bytea_value(res, col, &n);
    if (raw) {
        buf_append(out, raw, n);
        PQfreemem(raw);
    }
}

int rollout_store_persist(rollout *ro, pg_conn *db)
{
    buf mem = {0}, wv = {0};
    buf_putc(&mem, '[');
    for (size_t i = 0; i < ro->nmembers; i++) {
        const rollout_member *m = &ro->members[i];
        buf_puts(&mem, i ? ",[" : "[");
        buf_json_string(&mem, m->name, strlen(m->name));
        buf_putc(&mem, ',');
        buf_json_string(&mem, m->account_id, strlen(m->account_id));
        buf_putc(&mem, ',');
        if (m->admit_hash)
            buf_json_string(&mem, m->admit_hash, strlen(m->admit_hash));
        else
            buf_puts(&mem, "null");
        buf_puts(&mem, m->on_from ? ",true]" : ",false]");
    }
    buf_putc(&mem, ']');
    buf_putc(&wv, '[');
    for (size_t i = 0; i < ro->nwaves; i++)
        buf_printf(&wv, "%s%d", i ? "," : "", ro->waves[i]);
    buf_putc(&wv, ']');
    char wave[16], reached[16], started[24];
    snprintf(wave, sizeof wave, "%d", ro->wave);
    snprintf(reached, sizeof reached, "%d", ro->reached);
    snprintf(started, sizeof started, "%llu", (unsigned long long)ro->wave_started_ms);
    char *from_rules = bytea_param(&ro->from_rules), *to_rules = bytea_param(&ro->to_rules);
    const char *params[] = {ro->phase, ro->from_version, ro->from_image, from_rules, ro->to_version,
                            ro->to_image, to_rules, mem.data, wv.data, wave, reached,
                            ro->wave_started_ms ? started : NULL, ro->halt_reason};
    char err[512];
    int rc = pg_command(db,
                        "INSERT INTO " STATE_TABLE " AS r (id, phase, from_version, from_image, from_rules, "
                        "to_version, to_image, to_rules, members, waves, wave, reached, wave_started_at, "
                        "halt_reason, started_at, updated_at) VALUES (1, $1, $2, $3, $4::bytea, $5, $6, "
                        "$7::bytea, $8::jsonb, $9::jsonb, $10::int, $11::int, "
                        "to_timestamp($12::bigint / 1000.0), $13, now(), now()) "
                        "ON CONFLICT (id) DO UPDATE SET phase = $1, from_version = $2, from_image = $3, "
                        "from_rules = $4::bytea, to_version = $5, to_image = $6, to_rules = $7::bytea, "
                        "members = $8::jsonb, waves = $9::jsonb, wave = $10::int, reached = $11::int, "
                        "wave_started_at = to_timestamp($12::bigint / 1000.0), halt_reason = $13, "
                        "started_at = CASE WHEN r.to_version IS DISTINCT FROM $5 OR r.to_image IS DISTINCT "
                        "FROM $6 THEN now() ELSE r.started_at END, updated_at = now()",
                        13, params, err, sizeof err);
    if (rc < 0)
        log_warn("cannot store the rollout state; retrying", "error", err, NULL);
    else
        ro->dirty = 0;
    free(from_rules);
    free(to_rules);
    buf_free(&mem);
    buf_free(&wv);
    return rc;
}

/* Loads the previous rules from their stored files, with the previous image. */
int rollout_from_load(rollout *ro)
{
    rollout_from_unload(ro);
    if (ro->from_rules.len == 0 || ro->from_version == NULL)
        return -1;
    const char *base = ro->cfg->rules_state_dir && *ro->cfg->rules_state_dir ? ro->cfg->rules_state_dir : "/tmp";
    mkdir(base, 0700);
    char *dir = luahost_bundle_unpack(&ro->from_rules, base);
    if (dir == NULL) {
        log_warn("cannot write the previous rules to a directory", "dir", base, "error", strerror(errno), NULL);
        return -1;
    }
    ro->from_cfg = *ro->cfg;
    ro->from_cfg.worker_image = ro->from_image ? ro->from_image : ro->cfg->worker_image;
    ro->from = rules_new(&ro->from_cfg);
    char err[1024];
    int rc = rules_reload(ro->from, dir, err, sizeof err);
    if (rc == 0 && strcmp(rules_version(ro->from), ro->from_version) != 0) {
        snprintf(err, sizeof err, "version %s instead of %s", rules_version(ro->from), ro->from_version);
        rc = -1;
    }
    luahost_bundle_remove(dir, &ro->from_rules);
    free(dir);
    if (rc < 0) {
        log_warn("cannot load the previous rules of the rollout", "error", err, NULL);
        rollout_from_unload(ro);
    }
    return rc;
}

int rollout_store_load(rollout *ro, pg_conn *db)
{
    char err[512];
    PGresult *res = pg_exec(db,
                            "SELECT phase, from_version, from_image, from_rules, to_version, to_image, to_rules, "
                            "members::text, waves::text, wave, reached, "
                            "coalesce((extract(epoch FROM wave_started_at) * 1000)::bigint, 0), halt_reason "
                            "FROM " STATE_TABLE " WHERE id = 1",
                            0, NULL, err, sizeof err);
    if (res == NULL) {
        log_warn("cannot read the rollout state", "error", err, NULL);
        return -1;
    }
    rollout_state_clear(ro);
    if (PQntuples(res) == 1) {
        ro->has_row = 1;
        snprintf(ro->phase, sizeof ro->phase, "%s", PQgetvalue(res, 0, 0));
        ro->from_version = PQgetisnull(res, 0, 1) ? NULL : xstrdup(PQgetvalue(res, 0, 1));
        ro->from_image = PQgetisnull(res, 0, 2) ? NULL : xstrdup(PQgetvalue(res, 0, 2));
        bytea_read(res, 3, &ro->from_rules);
        ro->to_version = xstrdup(PQgetvalue(res, 0, 4));
        ro->to_image = xstrdup(PQgetvalue(res, 0, 5));
        bytea_read(res, 6, &ro->to_rules);
        json_value *mem = json_parse(PQgetvalue(res, 0, 7), (size_t)PQgetlength(res, 0, 7), NULL, 0);
        for (size_t i = 0; i < json_len(mem); i++) {
            const json_value *m = json_at(mem, i);
            const char *name = json_string(json_at(m, 0));
            if (name)
                rollout_member_add(ro, name, json_string(json_at(m, 1)), json_string(json_at(m, 2)),
                           json_bool(json_at(m, 3), 1));
        }
        json_free(mem);
        json_value *wv = json_parse(PQgetvalue(res, 0, 8), (size_t)PQgetlength(res, 0, 8), NULL, 0);
        ro->waves = xcalloc(json_len(wv) + 1, sizeof *ro->waves);
        for (size_t i = 0; i < json_len(wv); i++)
            ro->waves[ro->nwaves++] = (int)json_number(json_at(wv, i), 1);
        json_free(wv);
        ro->wave = atoi(PQgetvalue(res, 0, 9));
        ro->reached = atoi(PQgetvalue(res, 0, 10));
        ro->wave_started_ms = strtoull(PQgetvalue(res, 0, 11), NULL, 10);
        ro->halt_reason = PQgetisnull(res, 0, 12) ? NULL : xstrdup(PQgetvalue(res, 0, 12));
        if (!rollout_phase_is(ro, "complete") && rollout_from_load(ro) < 0)
            log_warn("rollout under way but its previous rules cannot be loaded; workers not reached yet "
                     "are left as they are", "phase", ro->phase, NULL);
    }
    PQclear(res);
    ro->loaded = 1;
    ro->last_read_ms = util_now_ms();
    rollout_publish_metrics(ro);
    return 0;
}

/* The rules in effect as a bundle, when the directory still holds them
 * (it may have changed since they loaded: then later). */
int rollout_snapshot_current(rules *current, const config *cfg, buf *out)
{
    buf b = {0};
    char err[256], version[65];
    if (luahost_dir_bundle(cfg->rules_dir, &b, err, sizeof err) < 0) {
        buf_free(&b);
        return -1;
    }
    util_sha256_hex(b.data ? b.data : "", b.len, version);
    if (strcmp(version, rules_version(current)) != 0) {
        buf_free(&b);
        return -1;
    }
    buf_free(out);
    *out = b;
    return 0;
}

void rollout_store_take_request(pg_conn *db, char *request, size_t len)
{
    char err[256];
    *request = '\0';
    PGresult *res = pg_exec(db,
                            "UPDATE " STATE_TABLE " r SET request = NULL FROM (SELECT request AS asked FROM "
                            STATE_TABLE " WHERE id = 1 FOR UPDATE) o WHERE r.id = 1 AND o.asked IS NOT NULL "
                            "RETURNING o.asked",
                            0, NULL, err, sizeof err);
    if (res == NULL)
        return; /* the next read asks again */
    if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
        snprintf(request, len, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
}
