/* kube: blocking Kubernetes API requests over libcurl, metav1.Status error
 * mapping and the request counters. See kube.h.
 *
 * The bearer token lives only in the client struct and in the per-request
 * header list; it is never logged or copied into an error message. */
#define KUBE_INTERNAL
#include "kube.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include "json.h"
#include "log.h"
#include "util.h"

struct kube_client {
    char *server;
    char *namespace;
    char *ca_file, *ca_pem;
    char *cert_file, *cert_pem;
    char *key_file, *key_pem;
    int insecure;
    char *token;            /* current bearer token, NULL for none */
    char *token_file;       /* re-read when its identity below changes */
    struct stat token_st;
    int token_warned;       /* logged once that token_file became unreadable */
    CURL *easy;             /* kept between blocking requests for keep-alive */
    char *user_agent;
    char *proxy_url;        /* NULL: curl's defaults ($https_proxy, $no_proxy) as client-go's */
    kube_exec *exec;        /* exec credential plugin, NULL for none */
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

static char *dup_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

char *kube_read_trimmed(const char *path)
{
    char *s = util_read_file(path, NULL);
    if (s == NULL)
        return NULL;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

static int same_file_state(const struct stat *a, const struct stat *b)
{
    return a->st_ino == b->st_ino && a->st_dev == b->st_dev && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/* Re-reads token_file when it changed (kubelet rotates projected tokens by
 * swapping a symlink, so inode, size and mtime all count). A file that became
 * unreadable keeps the last good token; one never read is an error. */
static int refresh_token(kube_client *c, char *err, size_t errlen)
{
    struct stat st;
    if (c->token_file == NULL)
        return 0;
    if (stat(c->token_file, &st) == 0 && c->token && same_file_state(&st, &c->token_st))
        return 0;
    char *t = kube_read_trimmed(c->token_file);
    if (t == NULL) {
        int saved_errno = errno;
        if (c->token) {
            if (!c->token_warned)
                log_warn("kube: token file unreadable, keeping the previous token", "path",
                         c->token_file, "error", strerror(saved_errno), NULL);
            c->token_warned = 1;
            return 0;
        }
        util_seterr(err, errlen, "token file %s: %s", c->token_file, strerror(saved_errno));
        return -1;
    }
    if (stat(c->token_file, &c->token_st) != 0)
        memset(&c->token_st, 0, sizeof c->token_st);
    if (c->token && strcmp(c->token, t) != 0)
        log_info("kube: bearer token reloaded", "path", c->token_file, NULL);
    free(c->token);
    c->token = t;
    c->token_warned = 0;
    return 0;
}

kube_client *kube_client_new(const kube_config *cfg, char *err, size_t errlen)
{
    pthread_once(&curl_once, curl_init_once);
    if (cfg == NULL || cfg->server == NULL || *cfg->server == '\0') {
        util_seterr(err, errlen, "kube client: no API server URL");
        return NULL;
    }
    if (strncmp(cfg->server, "https://", 8) != 0 && strncmp(cfg->server, "http://", 7) != 0) {
        util_seterr(err, errlen, "kube client: server %s is not an http(s) URL", cfg->server);
        return NULL;
    }
    kube_client *c = xcalloc(1, sizeof *c);
    c->server = xstrdup(cfg->server);
    size_t n = strlen(c->server);
    while (n > 0 && c->server[n - 1] == '/')
        c->server[--n] = '\0';
    c->namespace = dup_or_null(cfg->namespace);
    c->ca_file = dup_or_null(cfg->ca_file);
    c->ca_pem = dup_or_null(cfg->ca_pem);
    c->cert_file = dup_or_null(cfg->client_cert_file);
    c->cert_pem = dup_or_null(cfg->client_cert_pem);
    c->key_file = dup_or_null(cfg->client_key_file);
    c->key_pem = dup_or_null(cfg->client_key_pem);
    c->insecure = cfg->insecure_skip_tls_verify;
    c->token_file = dup_or_null(cfg->token_file);
    c->token = c->token_file ? NULL : dup_or_null(cfg->token);
    c->user_agent = xasprintf("sync-airbnb-operator/%s", SAO_VERSION);
    c->proxy_url = dup_or_null(cfg->proxy_url);
    if (refresh_token(c, err, errlen) < 0)
        goto err;
    if (cfg->exec) {
        /* Run the plugin now, like the token file read above: a plugin that
         * fails stops the command before it does anything. */
        c->exec = kube_exec_new(cfg);
        if (kube_exec_get(c->exec, err, errlen) == NULL)
            goto err;
    }
    c->easy = curl_easy_init();
    if (c->easy == NULL) {
        util_seterr(err, errlen, "kube client: curl_easy_init failed");
        goto err;
    }
    return c;
err:
    kube_client_free(c);
    return NULL;
}

void kube_client_free(kube_client *c)
{
    if (c == NULL)
        return;
    if (c->easy)
        curl_easy_cleanup(c->easy);
    free(c->server);
    free(c->namespace);
    free(c->ca_file);
    free(c->ca_pem);
    free(c->cert_file);
    free(c->cert_pem);
    free(c->key_file);
    free(c->key_pem);
    free(c->token);
    free(c->token_file);
    free(c->user_agent);
    free(c->proxy_url);
    kube_exec_free(c->exec);
    free(c);
}

int kube_client_saw_status(kube_client *c, long status)
{
    if (status != 401 || c->exec == NULL)
        return 0;
    kube_exec_invalidate(c->exec);
    return 1;
}

const char *kube_client_server(const kube_client *c)
{
    return c->server;
}

const char *kube_client_namespace(const kube_client *c)
{
    return c->namespace;
}

/* A method is an HTTP token of capital letters; anything else could smuggle
 * bytes into the request line. */
static int valid_method(const char *m)
{
    if (m == NULL || *m == '\0' || strlen(m) > 16)
        return 0;
    for (const char *p = m; *p; p++)
        if (*p < 'A' || *p > 'Z')
            return 0;
    return 1;
}

/* Client certificate or key: in-memory PEM (curl copies it) or a file. */
static void set_pem_or_file(CURL *h, const char *pem, const char *file, CURLoption blob_opt,
                            CURLoption file_opt, CURLoption type_opt)
{
    if (pem) {
        struct curl_blob blob = {(void *)pem, strlen(pem), CURL_BLOB_COPY};
        curl_easy_setopt(h, blob_opt, &blob);
        curl_easy_setopt(h, type_opt, "PEM");
    } else if (file) {
        curl_easy_setopt(h, file_opt, file);
    }
}

int kube_client_prepare(kube_client *c, CURL *h, const char *method, const char *path,
                        const char *content_type, const char *body, size_t len,
                        struct curl_slist **headers, char *err, size_t errlen)
{
    char *url = NULL, *auth = NULL, *ctype = NULL;
    const char *token, *cert_pem = c->cert_pem, *key_pem = c->key_pem;
    int rc = -1;

    curl_easy_reset(h);
    if (!valid_method(method)) {
        util_seterr(err, errlen, "kube request: invalid method \"%s\"", method ? method : "");
        goto out;
    }
    if (path == NULL || path[0] != '/' || strpbrk(path, " \r\n")) {
        util_seterr(err, errlen, "%s %s: path must start with / and contain no spaces or line breaks",
                    method, path ? path : "(null)");
        goto out;
    }
    if (refresh_token(c, err, errlen) < 0)
        goto out;
    token = c->token; /* after the refresh, which may replace it */
    if (c->exec) {
        const kube_exec_credential *cred = kube_exec_get(c->exec, err, errlen);
        if (cred == NULL)
            goto out;
        token = cred->token;
        if (cred->client_cert_pem) {
            cert_pem = cred->client_cert_pem;
            key_pem = cred->client_key_pem;
        }
    }
    url = xasprintf("%s%s", c->server, path);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, c->user_agent);
    curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, "");
    /* Per-transfer buffers: curl's defaults (16 KiB in, 64 KiB out) times
     * KUBE_MAX_INFLIGHT were the largest item of a busy pass's heap. Bodies
     * are a few KiB; 16 KiB is the smallest upload buffer curl accepts. */
    curl_easy_setopt(h, CURLOPT_BUFFERSIZE, 8192L);
    curl_easy_setopt(h, CURLOPT_UPLOAD_BUFFERSIZE, 16384L);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
#endif

    if (strcmp(method, "GET") == 0) {
        curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    } else if (strcmp(method, "HEAD") == 0) {
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else {
        if (strcmp(method, "POST") != 0)
            curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
        /* Always send a body (possibly empty) so Content-Length is right. */
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body ? len : 0));
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body ? body : "");
    }

    *headers = curl_slist_append(*headers, "Accept: application/json");
    *headers = curl_slist_append(*headers, "Expect:"); /* no 100-continue round trip */
    if (body) {
        ctype = xasprintf("Content-Type: %s", content_type ? content_type : "application/json");
        *headers = curl_slist_append(*headers, ctype);
    }
    if (token && *token) {
        auth = xasprintf("Authorization: Bearer %s", token);
        *headers = curl_slist_append(*headers, auth);
    }
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, *headers);

    if (c->ca_pem) {
        struct curl_blob blob = {c->ca_pem, strlen(c->ca_pem), CURL_BLOB_COPY};
        curl_easy_setopt(h, CURLOPT_CAINFO_BLOB, &blob);
        curl_easy_setopt(h, CURLOPT_CAPATH, NULL); /* trust the cluster CA only */
    } else if (c->ca_file) {
        curl_easy_setopt(h, CURLOPT_CAINFO, c->ca_file);
        curl_easy_setopt(h, CURLOPT_CAPATH, NULL);
    }
    set_pem_or_file(h, cert_pem, c->cert_file, CURLOPT_SSLCERT_BLOB, CURLOPT_SSLCERT, CURLOPT_SSLCERTTYPE);
    set_pem_or_file(h, key_pem, c->key_file, CURLOPT_SSLKEY_BLOB, CURLOPT_SSLKEY, CURLOPT_SSLKEYTYPE);
    if (c->proxy_url) {
        /* The cluster's proxy-url carries every request, as in client-go
         * ($no_proxy does not apply to it). */
        curl_easy_setopt(h, CURLOPT_PROXY, c->proxy_url);
        curl_easy_setopt(h, CURLOPT_NOPROXY, "");
    }
    if (c->insecure) {
        curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    rc = 0;
out:
    /* curl copied the strings; wipe the one holding the token before freeing. */
    if (auth) {
        memset(auth, 0, strlen(auth));
        free(auth);
    }
    free(ctype);
    free(url);
    return rc;
}

size_t kube_curl_header_cb(char *line, size_t size, size_t n, void *userdata)
{
    int *retry_after = userdata;
    size_t len = size * n;
    static const char name[] = "retry-after:";
    if (len >= 5 && strncmp(line, "HTTP/", 5) == 0) {
        *retry_after = -1; /* a new response (after a redirect or 100) */
    } else if (len > sizeof name - 1 && strncasecmp(line, name, sizeof name - 1) == 0) {
        char value[64];
        size_t vlen = len - (sizeof name - 1);
        const char *v = line + sizeof name - 1;
        while (vlen > 0 && (*v == ' ' || *v == '\t'))
            v++, vlen--;
        while (vlen > 0 && isspace((unsigned char)v[vlen - 1]))
            vlen--;
        if (vlen == 0 || vlen >= sizeof value)
            return len;
        memcpy(value, v, vlen);
        value[vlen] = '\0';
        char *end;
        errno = 0;
        long s = strtol(value, &end, 10);
        if (*end == '\0' && errno == 0 && s >= 0) {
            *retry_after = s > 86400 ? 86400 : (int)s;
        } else {
            /* HTTP-date form */
            time_t when = curl_getdate(value, NULL);
            if (when != -1) {
                long d = (long)(when - time(NULL));
                *retry_after = d < 0 ? 0 : d > 86400 ? 86400 : (int)d;
            }
        }
    }
    return len;
}

void kube_transport_error(char *err, size_t errlen, const char *method, const char *path,
                          CURLcode rc, const char *errbuf, long timeout_ms)
{
    if (rc == CURLE_OPERATION_TIMEDOUT && timeout_ms > 0)
        util_seterr(err, errlen, "%s %s: timed out after %ld ms", method, path, timeout_ms);
    else if (errbuf && *errbuf)
        util_seterr(err, errlen, "%s %s: %s", method, path, errbuf);
    else
        util_seterr(err, errlen, "%s %s: %s", method, path, curl_easy_strerror(rc));
}

/* ---- responses --------------------------------------------------------- */

void kube_response_free(kube_response *r)
{
    if (r == NULL)
        return;
    free(r->body);
    free(r->reason);
    free(r->message);
    memset(r, 0, sizeof *r);
    r->retry_after_s = -1;
}

void kube_response_parse_status(kube_response *r)
{
    free(r->reason);
    free(r->message);
    r->reason = r->message = NULL;
    r->code = 0;
    if ((r->status >= 200 && r->status < 300) || r->body == NULL || r->len == 0)
        return;
    json_value *root = json_parse(r->body, r->len, NULL, 0);
    const char *kind = json_string(json_get(root, "kind"));
    if (kind && strcmp(kind, "Status") == 0) {
        const char *reason = json_string(json_get(root, "reason"));
        const char *message = json_string(json_get(root, "message"));
        if (reason && *reason)
            r->reason = xstrdup(reason);
        if (message && *message)
            r->message = xstrdup(message);
        r->code = (long)json_number(json_get(root, "code"), 0);
    }
    json_free(root);
}

static const char *status_text(long s)
{
    switch (s) {
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 412: return "Precondition Failed";
    case 413: return "Request Entity Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return NULL;
    }
}

const char *kube_response_error(const kube_response *r, char *out, size_t outlen)
{
    buf b = {0};
    if (r == NULL || r->status == 0) {
        util_seterr(out, outlen, "no response");
        return out;
    }
    const char *text = status_text(r->status);
    buf_printf(&b, "%ld", r->status);
    if (text)
        buf_printf(&b, " %s", text);
    if (r->reason)
        buf_printf(&b, " (%s)", r->reason);
    if (r->message) {
        buf_printf(&b, ": %s", r->message);
    } else if (r->reason == NULL && r->body && r->len > 0 && (r->status < 200 || r->status >= 300)) {
        /* Not a Status: show the start of the body, on one line. */
        size_t n = r->len < 200 ? r->len : 200;
        buf_puts(&b, ": ");
        for (size_t i = 0; i < n; i++) {
            unsigned char ch = (unsigned char)r->body[i];
            buf_putc(&b, ch < 0x20 || ch == 0x7f ? ' ' : (char)ch);
        }
        if (n < r->len)
            buf_puts(&b, "...");
    }
    util_seterr(out, outlen, "%s", b.data);
    buf_free(&b);
    return out;
}

/* ---- blocking request -------------------------------------------------- */

size_t kube_body_write_cb(char *data, size_t size, size_t n, void *userdata)
{
    struct kube_body_sink *s = userdata;
    size_t len = size * n;
    if (s->b.len + len > KUBE_MAX_RESPONSE) {
        s->too_large = 1;
        return 0;
    }
    buf_append(&s->b, data, len);
    return len;
}

static int request_once(kube_client *c, const char *method, const char *path, const char *content_type,
                        const char *body, size_t len, int timeout_ms, kube_response *out, char *err,
                        size_t errlen);

int kube_request(kube_client *c, const char *method, const char *path, const char *content_type,
                 const char *body, size_t len, int timeout_ms, kube_response *out, char *err,
                 size_t errlen)
{
    int rc = request_once(c, method, path, content_type, body, len, timeout_ms, out, err, errlen);
    if (rc == 0 && kube_client_saw_status(c, out->status)) {
        /* A 401 was not applied: send it again with the plugin's new credential. */
        kube_response_free(out);
        rc = request_once(c, method, path, content_type, body, len, timeout_ms, out, err, errlen);
        if (rc == 0 && out->status == 401)
            kube_client_saw_status(c, out->status);
    }
    return rc;
}

static int request_once(kube_client *c, const char *method, const char *path, const char *content_type,
                        const char *body, size_t len, int timeout_ms, kube_response *out, char *err,
                        size_t errlen)
{
    struct curl_slist *headers = NULL;
    struct kube_body_sink sink = {0};
    char errbuf[CURL_ERROR_SIZE] = "";
    int rc = -1, retry_after = -1;

    memset(out, 0, sizeof *out);
    out->retry_after_s = -1;
    if (timeout_ms <= 0)
        timeout_ms = KUBE_DEFAULT_TIMEOUT_MS;
    if (kube_client_prepare(c, c->easy, method, path, content_type, body, len, &headers, err, errlen) < 0)
        goto out;
    curl_easy_setopt(c->easy, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(c->easy, CURLOPT_CONNECTTIMEOUT_MS, (long)(timeout_ms < 10000 ? timeout_ms : 10000));
    curl_easy_setopt(c->easy, CURLOPT_WRITEFUNCTION, kube_body_write_cb);
    curl_easy_setopt(c->easy, CURLOPT_WRITEDATA, &sink);
    curl_easy_setopt(c->easy, CURLOPT_HEADERFUNCTION, kube_curl_header_cb);
    curl_easy_setopt(c->easy, CURLOPT_HEADERDATA, &retry_after);
    curl_easy_setopt(c->easy, CURLOPT_ERRORBUFFER, errbuf);

    CURLcode cr = curl_easy_perform(c->easy);
    if (cr != CURLE_OK) {
        kube_stats_add(method, 0);
        if (sink.too_large)
            util_seterr(err, errlen, "%s %s: response larger than %u bytes", method, path,
                        KUBE_MAX_RESPONSE);
        else
            kube_transport_error(err, errlen, method, path, cr, errbuf, timeout_ms);
        goto out;
    }
    curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &out->status);
    kube_stats_add(method, out->status);
    out->len = sink.b.len;
    out->body = sink.b.data ? buf_steal(&sink.b) : xstrdup("");
    out->retry_after_s = retry_after;
    kube_response_parse_status(out);
    rc = 0;
out:
    /* The handle keeps pointers to our stack; drop them before returning. */
    curl_easy_setopt(c->easy, CURLOPT_ERRORBUFFER, NULL);
    curl_easy_setopt(c->easy, CURLOPT_HTTPHEADER, NULL);
    curl_slist_free_all(headers);
    buf_free(&sink.b);
    return rc;
}

/* ---- query escaping ----------------------------------------------------- */

static int unreserved(unsigned char ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
           ch == '-' || ch == '.' || ch == '_' || ch == '~';
}

size_t kube_escape_into(char *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (unreserved(ch)) {
            if (out)
                out[o] = (char)ch;
            o++;
        } else {
            if (out) {
                out[o] = '%';
                out[o + 1] = hex[ch >> 4];
                out[o + 2] = hex[ch & 15];
            }
            o += 3;
        }
    }
    return o;
}

char *kube_escape(const char *s)
{
    size_t n = strlen(s);
    size_t m = kube_escape_into(NULL, s, n);
    char *out = xmalloc(m + 1);
    kube_escape_into(out, s, n);
    out[m] = '\0';
    return out;
}

/* ---- request counters --------------------------------------------------- */

#define STATS_SLOTS 128

static struct {
    char verb[8];
    long code;
    unsigned long count;
} stats[STATS_SLOTS];
static int stats_used;
static pthread_mutex_t stats_lock = PTHREAD_MUTEX_INITIALIZER;

void kube_stats_add(const char *verb, long code)
{
    char v[8];
    util_seterr(v, sizeof v, "%s", valid_method(verb) ? verb : "OTHER");
    pthread_mutex_lock(&stats_lock);
    int i;
    for (i = 0; i < stats_used; i++)
        if (stats[i].code == code && strcmp(stats[i].verb, v) == 0)
            break;
    if (i == stats_used) {
        if (stats_used == STATS_SLOTS) {
            /* Full (cannot happen with real verbs and codes): fold into the last slot. */
            i = STATS_SLOTS - 1;
            util_seterr(stats[i].verb, sizeof stats[i].verb, "OTHER");
            stats[i].code = -1;
        } else {
            stats_used++;
            memcpy(stats[i].verb, v, sizeof v);
            stats[i].code = code;
            stats[i].count = 0;
        }
    }
    stats[i].count++;
    pthread_mutex_unlock(&stats_lock);
}

void kube_stats_foreach(void (*cb)(const char *verb, long code, unsigned long count, void *ud), void *ud)
{
    pthread_mutex_lock(&stats_lock);
    for (int i = 0; i < stats_used; i++)
        cb(stats[i].verb, stats[i].code, stats[i].count, ud);
    pthread_mutex_unlock(&stats_lock);
}

void kube_stats_reset(void)
{
    pthread_mutex_lock(&stats_lock);
    stats_used = 0;
    pthread_mutex_unlock(&stats_lock);
}
