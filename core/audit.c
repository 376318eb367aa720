/* audit: the audit trail of every action (DESIGN.md §5.6): a row in
 * sync_airbnb_operator.audit_log and a core/v1 Event. Neither ever carries a
 * credential value: callers pass reasons the reconcile step scrubbed. */
#include "audit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "json.h"
#include "log.h"
#include "metrics.h"
#include "scrub.h"
#include "util.h"

#define AUDIT_ROWS_PER_INSERT 500 /* 5 parameters each, far below libpq's 65535 */

struct audit_row {
    struct audit_row *next;
    const char *what, *account_id, *deployment, *reason; /* inside this allocation */
};

static const char *pack(char **p, const char *s)
{
    if (s == NULL)
        return NULL;
    size_t n = strlen(s) + 1;
    memcpy(*p, s, n);
    *p += n;
    return *p - n;
}

void audit_add(audit_batch *b, const char *what, const char *account_id, const char *deployment,
               const char *reason)
{
    /* Rows leave the process: scrubbed like every other text (scrub.h). */
    char *clean[3] = {NULL, NULL, NULL};
    const char **dirty[3] = {&account_id, &deployment, &reason};
    for (int i = 0; i < 3; i++)
        if (*dirty[i] && scrub_needed(*dirty[i]))
            *dirty[i] = clean[i] = scrub_dup(*dirty[i]);
    const char *f[] = {what, account_id, deployment, reason};
    size_t bytes = 0;
    for (size_t i = 0; i < 4; i++)
        bytes += f[i] ? strlen(f[i]) + 1 : 0;
    audit_row *r = xmalloc(sizeof *r + bytes);
    char *p = (char *)(r + 1);
    r->next = NULL;
    r->what = pack(&p, what);
    r->account_id = pack(&p, account_id);
    r->deployment = pack(&p, deployment);
    r->reason = pack(&p, reason);
    if (b->tail)
        b->tail->next = r;
    else
        b->head = r;
    b->tail = r;
    b->n++;
    for (int i = 0; i < 3; i++)
        free(clean[i]);
}

static void audit_batch_free(audit_batch *b)
{
    while (b->head) {
        audit_row *r = b->head;
        b->head = r->next;
        free(r);
    }
    b->tail = NULL;
    b->n = 0;
}

/* One INSERT of the first n rows of the list at r. */
static int insert_rows(pg_conn *db, const char *actor, const audit_row *r, int n, char *err, size_t errlen)
{
    buf sql = {0};
    const char **params = xcalloc((size_t)n * 5, sizeof *params);
    buf_puts(&sql, "INSERT INTO sync_airbnb_operator.audit_log (action, account_id, deployment, reason, actor) VALUES ");
    for (int i = 0; i < n; i++, r = r->next) {
        int k = i * 5;
        buf_printf(&sql, "%s($%d, $%d, $%d, $%d, $%d)", i ? ", " : "", k + 1, k + 2, k + 3, k + 4, k + 5);
        params[k] = r->what;
        params[k + 1] = r->account_id;
        params[k + 2] = r->deployment;
        params[k + 3] = r->reason;
        params[k + 4] = actor;
    }
    int rc = pg_command(db, sql.data, n * 5, params, err, errlen);
    free(params);
    buf_free(&sql);
    return rc;
}

/* Writes n rows from r. A statement that fails on a live connection is
 * retried a row at a time, so that one bad row loses only itself. */
static int write_rows(pg_conn *db, const char *actor, const audit_row *r, int n)
{
    char err[512];
    if (db != NULL && insert_rows(db, actor, r, n, err, sizeof err) == 0)
        return 0;
    if (db != NULL && n > 1 && pg_ok(db)) {
        int rc = 0;
        for (int i = 0; i < n; i++, r = r->next)
            if (write_rows(db, actor, r, 1) < 0)
                rc = -1;
        return rc;
    }
    metrics_add("sync_airbnb_operator_audit_failures_total", NULL, n);
    char rows[16];
    snprintf(rows, sizeof rows, "%d", n);
    log_warn("audit_log write failed", "action", r->what ? r->what : "", "account_id",
             r->account_id ? r->account_id : "", "rows", rows, "error", db ? err : "no database connection",
             NULL);
    return -1;
}

int audit_flush(audit_batch *b, pg_conn *db, const char *actor)
{
    int rc = 0;
    while (b->head) {
        int n = 0;
        audit_row *last = b->head;
        for (audit_row *r = b->head; r && n < AUDIT_ROWS_PER_INSERT; r = r->next, n++)
            last = r;
        if (write_rows(db, actor, b->head, n) < 0)
            rc = -1;
        audit_row *rest = last->next;
        last->next = NULL;
        audit_batch one = {b->head, last, n};
        audit_batch_free(&one);
        b->head = rest;
        b->n -= n;
    }
    b->tail = NULL;
    return rc;
}

int audit_write(pg_conn *db, const char *actor, const char *what, const char *account_id,
                const char *deployment, const char *reason)
{
    audit_batch b = {0};
    audit_add(&b, what, account_id, deployment, reason);
    return audit_flush(&b, db, actor);
}

void event_post_logged(const kube_response *resp, const char *terr, void *ud)
{
    (void)ud;
    if (resp == NULL || resp->status >= 300) {
        char err[256];
        if (resp)
            kube_response_error(resp, err, sizeof err);
        log_debug("event not posted", "error", resp ? err : terr, NULL);
    }
}

void event_post(kube_async *ka, const char *ns, const char *identity, int timeout_ms,
                const char *api_version, const char *kind, const char *name, const char *uid,
                const char *reason, const char *message, const char *account_id, int warning, time_t when,
                kube_done_cb done, void *ud)
{
    if (name == NULL)
        return;
    /* Events leave the process: scrubbed like every other text (scrub.h). */
    char *clean_message = scrub_needed(message) ? scrub_dup(message) : NULL;
    char *clean_account = scrub_needed(account_id) ? scrub_dup(account_id) : NULL;
    if (clean_message)
        message = clean_message;
    if (clean_account)
        account_id = clean_account;
    char ts[32];
    time_t now = when ? when : time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
    buf b = {0};
    json_out o;
    jo_init(&o, &b);
    jo_object(&o);
    jo_kstr(&o, "apiVersion", "v1");
    jo_kstr(&o, "kind", "Event");
    jo_key(&o, "metadata");
    jo_object(&o);
    char *gen = xasprintf("%s.", name);
    jo_kstr(&o, "generateName", gen);
    free(gen);
    jo_kstr(&o, "namespace", ns);
    jo_end(&o);
    jo_key(&o, "involvedObject");
    jo_object(&o);
    jo_kstr(&o, "apiVersion", api_version);
    jo_kstr(&o, "kind", kind);
    jo_kstr(&o, "name", name);
    jo_kstr(&o, "namespace", ns);
    if (uid)
        jo_kstr(&o, "uid", uid);
    jo_end(&o);
    jo_kstr(&o, "reason", reason);
    if (account_id) {
        char full[1024]; /* a 9,000-byte account id makes no 9 KB Event */
        snprintf(full, sizeof full, "%s (account %s)", message, account_id);
        jo_kstr(&o, "message", full);
    } else {
        jo_kstr(&o, "message", message);
    }
    jo_kstr(&o, "type", warning ? "Warning" : "Normal");
    jo_key(&o, "source");
    jo_object(&o);
    jo_kstr(&o, "component", "sync-airbnb-operator");
    jo_end(&o);
    jo_kstr(&o, "reportingComponent", "sync-airbnb-operator");
    jo_kstr(&o, "reportingInstance", identity);
    jo_kstr(&o, "firstTimestamp", ts);
    jo_kstr(&o, "lastTimestamp", ts);
    jo_kint(&o, "count", 1);
    jo_end(&o);
    char *path = xasprintf("/api/v1/namespaces/%s/events", ns);
    if (done == NULL)
        done = event_post_logged;
    kube_async_request(ka, "POST", path, NULL, b.data, b.len, timeout_ms, done, ud);
    free(path);
    buf_free(&b);
    free(clean_message);
    free(clean_account);
}

/* ---- held Events -------------------------------------------------------- */

/* Thousands can wait (one per create of a 10,000-account convergence), so
 * one small allocation each: the strings packed after the header, the uid
 * as 16 bytes when it is a canonical UUID (it always is from the API
 * server), the message shared through q->phrases. */
#define MAX_PHRASES 256 /* distinct shared messages; beyond, each is packed */

enum { UID_NONE, UID_BINARY, UID_TEXT };

struct held_event {
    struct held_event *next;
    const char *api_version, *kind; /* constants */
    const char *phrase;             /* the message, in q->phrases; NULL: packed */
    time_t when;
    unsigned char warning, uid_form, has_account;
    char data[]; /* name\0, uid (16 bytes or text\0), reason\0, [message\0], [account_id\0] */
};

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* A lowercase 8-4-4-4-12 UUID into 16 bytes; 0 if uid is not one. */
static int uuid_pack(const char *uid, unsigned char out[16])
{
    if (strlen(uid) != 36)
        return 0;
    for (int i = 0, k = 0; i < 36; k++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (uid[i++] != '-')
                return 0;
        }
        int hi = hexval(uid[i]), lo = hexval(uid[i + 1]);
        if (hi < 0 || lo < 0)
            return 0;
        out[k] = (unsigned char)(hi << 4 | lo);
        i += 2;
    }
    return 1;
}

static void uuid_unpack(const unsigned char in[16], char out[37])
{
    static const char hex[] = "0123456789abcdef";
    char *p = out;
    for (int k = 0; k < 16; k++) {
        if (k == 4 || k == 6 || k == 8 || k == 10)
            *p++ = '-';
        *p++ = hex[in[k] >> 4];
        *p++ = hex[in[k] & 15];
    }
    *p = '\0';
}

static void on_held_posted(const kube_response *resp, const char *terr, void *ud);

static void post_held(event_queue *q, held_event *e)
{
    const char *p = e->data, *uid = NULL;
    char uidtext[37];
    const char *name = p;
    p += strlen(p) + 1;
    if (e->uid_form == UID_BINARY) {
        uuid_unpack((const unsigned char *)p, uidtext);
        uid = uidtext;
        p += 16;
    } else if (e->uid_form == UID_TEXT) {
        uid = p;
        p += strlen(p) + 1;
    }
    const char *reason = p;
    p += strlen(p) + 1;
    const char *message = e->phrase;
    if (message == NULL) {
        message = p;
        p += strlen(p) + 1;
    }
    event_post(q->ka, q->ns, q->identity, q->timeout_ms, e->api_version, e->kind, name, uid, reason, message,
               e->has_account ? p : NULL, e->warning, e->when, on_held_posted, q);
}

static void forget_phrases(event_queue *q)
{
    size_t it = 0;
    void *v;
    while (strmap_next(&q->phrases, &it, NULL, &v))
        free(v);
    strmap_free(&q->phrases);
}

static void on_held_posted(const kube_response *resp, const char *terr, void *ud)
{
    event_queue *q = ud;
    event_post_logged(resp, terr, NULL);
    q->posting--;
    /* Keep feeding only while no write waits (a new backlog pauses them). */
    if (!(q->hold && q->hold(q->ud)) || q->held >= EVENT_QUEUE_MAX_HELD)
        event_queue_flush(q);
}

void event_queue_flush(event_queue *q)
{
    while (q->head && q->posting < EVENT_QUEUE_IN_FLIGHT) {
        held_event *e = q->head;
        q->head = e->next;
        q->posting++;
        q->held--;
        post_held(q, e); /* copies what it needs into the request */
        free(e);
    }
    if (q->head == NULL) {
        q->tail = NULL;
        forget_phrases(q);
    }
}

void event_queue_post(event_queue *q, const char *api_version, const char *kind, const char *name,
                      const char *uid, const char *reason, const char *message, const char *account_id,
                      int warning)
{
    if (name == NULL)
        return;
    int hold = q->hold && q->hold(q->ud);
    if (q->head == NULL && !hold) {
        event_post(q->ka, q->ns, q->identity, q->timeout_ms, api_version, kind, name, uid, reason, message,
                   account_id, warning, 0, NULL, NULL);
        return;
    }
    /* Behind the held ones, so Events keep their order. */
    unsigned char uuid[16];
    int form = uid == NULL ? UID_NONE : uuid_pack(uid, uuid) ? UID_BINARY : UID_TEXT;
    q->phrases.borrowed_keys = 1; /* the key is the value: freed once (forget_phrases) */
    const char *phrase = strmap_get(&q->phrases, message);
    if (phrase == NULL && q->phrases.len < MAX_PHRASES) {
        char *copy = xstrdup(message);
        strmap_put(&q->phrases, copy, copy);
        phrase = copy;
    }
    size_t bytes = strlen(name) + 1 + strlen(reason) + 1;
    bytes += form == UID_BINARY ? 16 : form == UID_TEXT ? strlen(uid) + 1 : 0;
    bytes += phrase ? 0 : strlen(message) + 1;
    bytes += account_id ? strlen(account_id) + 1 : 0;
    held_event *e = xmalloc(sizeof *e + bytes);
    e->next = NULL;
    e->api_version = api_version;
    e->kind = kind;
    e->phrase = phrase;
    e->when = time(NULL);
    e->warning = (unsigned char)(warning != 0);
    e->uid_form = (unsigned char)form;
    e->has_account = account_id != NULL;
    char *p = e->data;
    pack(&p, name);
    if (form == UID_BINARY) {
        memcpy(p, uuid, 16);
        p += 16;
    } else if (form == UID_TEXT) {
        pack(&p, uid);
    }
    pack(&p, reason);
    if (phrase == NULL)
        pack(&p, message);
    if (account_id)
        pack(&p, account_id);
    if (q->tail)
        q->tail->next = e;
    else
        q->head = e;
    q->tail = e;
    q->held++;
    if (!hold || q->held >= EVENT_QUEUE_MAX_HELD)
        event_queue_flush(q);
}

void event_queue_free(event_queue *q)
{
    while (q->head) {
        held_event *e = q->head;
        q->head = e->next;
        free(e);
    }
    q->tail = NULL;
    q->held = 0;
    forget_phrases(q);
}
