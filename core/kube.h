/* kube: the Kubernetes API client of the core.
 *
 *   kubeconfig.c   kube_config_*: where the API server is and how to authenticate
 *                  (kubeconfig files merged as client-go merges them, or the
 *                  in-cluster service account)
 *   kube_exec.c    kube_exec_*: exec credential plugins (ExecCredential v1/v1beta1)
 *   kube.c         kube_client_*, kube_request: blocking requests over libcurl,
 *                  Status error mapping, request counters for /metrics
 *   kube_async.c   kube_async_*, kube_watch_*: requests and watch streams on a
 *                  libuv loop (curl multi socket API) with QPS/burst limiting
 *                  and retries; the watch-stream framing parser
 *
 * Threading: a kube_client, and a kube_async with the loop it runs on, belong
 * to one thread at a time. Only the request counters (kube_stats_*) are shared
 * and locked. Credentials (tokens, keys) never appear in logs or in error
 * messages produced here.
 */
#ifndef KUBE_H
#define KUBE_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* ---- configuration (kubeconfig.c) ---------------------------------------- */

enum { KUBE_EXEC_INTERACTIVE_NEVER, KUBE_EXEC_INTERACTIVE_IF_AVAILABLE, KUBE_EXEC_INTERACTIVE_ALWAYS };

/* A user's `exec:` stanza (client.authentication.k8s.io/v1 or v1beta1). */
typedef struct kube_exec_config {
    char *command;           /* with a '/' and relative: resolved against its kubeconfig's directory */
    char **args;
    int nargs;
    char **env;              /* "NAME=value" */
    int nenv;
    char *api_version;
    char *install_hint;      /* may be NULL; shown when the command cannot run */
    int interactive_mode;    /* KUBE_EXEC_INTERACTIVE_*; v1 requires it, v1beta1 defaults to IfAvailable */
    int provide_cluster_info;
} kube_exec_config;

typedef struct kube_config {
    char *server;            /* https://host:port, no trailing slash */
    char *token;             /* bearer token (may be NULL) */
    char *token_file;        /* re-read when it changes (in-cluster token rotation); wins over token */
    char *ca_file;           /* CA as a file ... */
    char *ca_pem;            /* ... or in-memory PEM (certificate-authority-data decoded); wins */
    char *client_cert_file;
    char *client_cert_pem;   /* wins over the file */
    char *client_key_file;
    char *client_key_pem;    /* wins over the file */
    int insecure_skip_tls_verify;
    char *namespace;         /* from the context / the SA namespace file; may be NULL */
    char *proxy_url;         /* cluster proxy-url (http, https or socks5); may be NULL */
    kube_exec_config *exec;  /* the user's exec plugin; may be NULL */
    char *context;           /* name of the kubeconfig context used; NULL in-cluster */
} kube_config;

/* Loads one context of a kubeconfig into *out (zeroed first; free with
 * kube_config_free, also after a failure). paths is a ':'-separated list
 * merged as client-go merges $KUBECONFIG: files that do not exist are
 * skipped (at least one must), a file that does not parse is an error, the
 * first file to define a context, cluster or user by a name wins, and the
 * first current-context wins. context NULL or "" → that current-context.
 * path NULL → $KUBECONFIG. Supports users with token, tokenFile,
 * client-certificate(-data), client-key(-data) and exec plugins; clusters
 * with server, certificate-authority(-data), insecure-skip-tls-verify and
 * proxy-url. Relative file paths resolve against the directory of the file
 * that named them. auth-provider and basic auth are refused with a clear
 * message. Returns 0, or -1 with a one-line error naming the file(s), e.g.
 * `kubeconfig /x: context "foo" not found`. */
int kube_config_load_kubeconfig(const char *paths, const char *context, kube_config *out, char *err,
                                size_t errlen);
/* One kubeconfig from text in memory (for fuzzing), its current context:
 * name is used in messages, relative file paths resolve against dir (NULL →
 * kept as given). */
int kube_config_parse_kubeconfig(const char *data, size_t len, const char *name, const char *dir,
                                 kube_config *out, char *err, size_t errlen);

/* Where the operator and its CLI connect, in controller-runtime's order:
 * kubeconfig (the --kubeconfig flag or $KUBECONFIG, a list) when given;
 * else the in-cluster service account when KUBERNETES_SERVICE_HOST is set;
 * else ~/.kube/config ($HOME). context (--context, $KUBE_CONTEXT) picks a
 * kubeconfig context and needs a kubeconfig. Returns 0 or -1 with err. */
int kube_config_resolve(const char *kubeconfig, const char *context, kube_config *out, char *err,
                        size_t errlen);

/* In-cluster service account: KUBERNETES_SERVICE_HOST/PORT (IPv6 bracketed),
 * token, ca.crt and namespace under /var/run/secrets/kubernetes.io/serviceaccount
 * or $KUBE_SA_DIR when set. The token is read now and token_file is set so the
 * client follows rotation. Returns 0 or -1 (free *out either way). */
int kube_config_in_cluster(kube_config *out, char *err, size_t errlen);

/* Frees every field and zeroes *c. Accepts NULL and a zeroed config. */
void kube_config_free(kube_config *c);

/* ---- exec credential plugins (kube_exec.c) -------------------------------- */

typedef struct kube_exec_credential {
    char *token;             /* may be NULL when a client certificate is given */
    char *client_cert_pem;
    char *client_key_pem;
    int64_t expires_ms;      /* wall clock, ms since the epoch; 0 = no expiry given */
} kube_exec_credential;

typedef struct kube_exec kube_exec;

/* Copies k->exec (must be set) and, for provideClusterInfo, k's cluster. */
kube_exec *kube_exec_new(const kube_config *k);
void kube_exec_free(kube_exec *e);
/* The current credential (borrowed, valid until the next kube_exec_* call):
 * the cached one while it has not expired, else the plugin runs (blocking,
 * at most 60 s). NULL with err like `exec plugin get-token: exited with
 * status 1 (...)` when it fails; err never holds credential material. */
const kube_exec_credential *kube_exec_get(kube_exec *e, char *err, size_t errlen);
/* The API server answered 401: the next kube_exec_get runs the plugin. */
void kube_exec_invalidate(kube_exec *e);
/* Parses a plugin's standard output (pure; for tests and fuzzing). */
int kube_exec_parse_credential(const char *out, size_t len, const char *api_version,
                               kube_exec_credential *cred, char *err, size_t errlen);
void kube_exec_credential_free(kube_exec_credential *c);
void kube_exec_config_free(kube_exec_config *x);

/* ---- blocking client (kube.c) --------------------------------------------- */

typedef struct kube_client kube_client;

/* Copies what it needs from cfg (cfg can be freed right after). Reads
 * token_file once to fail early. NULL with err on failure. */
kube_client *kube_client_new(const kube_config *cfg, char *err, size_t errlen);
void kube_client_free(kube_client *c);
/* Borrowed strings, valid while c lives. namespace may be NULL. */
const char *kube_client_server(const kube_client *c);
const char *kube_client_namespace(const kube_client *c);
/* A response with this status came back for c: on 401 with an exec plugin
 * the credential is dropped and 1 is returned (sending again is worth it);
 * else 0. kube_request and kube_async call it. */
int kube_client_saw_status(kube_client *c, long status);

#define KUBE_DEFAULT_TIMEOUT_MS 30000
#define KUBE_MAX_RESPONSE (256u * 1024u * 1024u)

typedef struct kube_response {
    long status;            /* HTTP status; 0 if no response */
    char *body;             /* owned; NUL-terminated (never NULL after a response) */
    size_t len;
    int retry_after_s;      /* parsed Retry-After (seconds), -1 if absent */
    /* when the body of a non-2xx response is a metav1.Status: */
    char *reason;           /* owned, may be NULL, e.g. "AlreadyExists" */
    char *message;          /* owned, may be NULL */
    long code;              /* Status.code, 0 if absent */
} kube_response;

/* Frees the owned fields and zeroes *r. Accepts a zeroed response. */
void kube_response_free(kube_response *r);

/* Fills reason/message/code from r->body when r->status is not 2xx and the
 * body is a metav1.Status (kind "Status"); leaves them NULL/0 otherwise.
 * kube_request does this already; exposed for tests and callers that build
 * responses themselves. */
void kube_response_parse_status(kube_response *r);

/* Blocking request. path starts with '/' and may carry a query. content_type
 * NULL → application/json when body != NULL. timeout_ms <= 0 →
 * KUBE_DEFAULT_TIMEOUT_MS. Returns 0 when an HTTP response arrived (any
 * status; out filled, caller frees with kube_response_free), -1 on transport
 * failure/timeout with err like "GET /api/v1/pods: timed out after 5000 ms"
 * (out zeroed). Single attempt (plus one at once after a 401 that dropped an
 * exec plugin's credential): retries live in kube_async. */
int kube_request(kube_client *c, const char *method, const char *path, const char *content_type,
                 const char *body, size_t len, int timeout_ms, kube_response *out, char *err,
                 size_t errlen);

/* One-line description of a failed response into out; returns out:
 *   409 Conflict (AlreadyExists): deployments.apps "x" already exists
 *   404 Not Found
 *   500 Internal Server Error: <start of a non-Status body> */
const char *kube_response_error(const kube_response *r, char *out, size_t outlen);

/* Percent-encodes a query value (label selectors etc.): everything but
 * A-Z a-z 0-9 - . _ ~. Caller frees. */
char *kube_escape(const char *s);
/* The same into out, which must hold kube_escape_into(NULL, s, n) bytes (no
 * NUL is written); returns the encoded length. */
size_t kube_escape_into(char *out, const char *s, size_t n);

/* ---- request counters ----------------------------------------------------- */

/* Calls cb once per (verb, HTTP status) seen since start or the last reset.
 * verb is GET/POST/PUT/PATCH/DELETE/HEAD, or WATCH for watch streams; code 0
 * counts transport failures (no response). Each attempt of a retried request
 * counts. Thread-safe; cb must not call kube_stats_*. */
void kube_stats_foreach(void (*cb)(const char *verb, long code, unsigned long count, void *ud),
                        void *ud);
void kube_stats_reset(void);

/* ---- async client (kube_async.c) ------------------------------------------ */

typedef struct kube_async kube_async;

typedef struct {
    double qps;             /* token refill per second; 0 → 20; < 0 → unlimited */
    int burst;              /* bucket size; 0 → 40 */
    int max_inflight;       /* concurrent requests (watches not counted); 0 → 16 */
    int max_retries;        /* retries after the first attempt; 0 → 5; < 0 → none */
    int backoff_base_ms;    /* first retry delay before jitter; 0 → 200 */
    int backoff_max_ms;     /* cap of the exponential backoff; 0 → 10000 */
    int watch_idle_timeout_ms; /* a watch with no bytes for this long ends; 0 → 330000 */
} kube_limits;

/* Uses c (borrowed: c must outlive the kube_async) and loop. lim NULL → all
 * defaults. Never NULL. */
kube_async *kube_async_new(kube_client *c, uv_loop_t *loop, const kube_limits *lim);

/* Cancels queued and in-flight requests and all watches (their kube_watch
 * handles become invalid); calls no callbacks after return. Must not be
 * called from inside a kube callback. The libuv handles close
 * asynchronously: run the loop once more before uv_loop_close so their
 * memory is released. */
void kube_async_free(kube_async *a);

/* resp NULL on transport error (then transport_err says why). resp and its
 * strings are valid only during the call. */
typedef void (*kube_done_cb)(const kube_response *resp, const char *transport_err, void *ud);

/* Queues a request; takes a copy of everything. Token-bucket QPS/burst limit
 * and max_inflight; retries 429 and 503 honouring Retry-After (capped at 60 s),
 * and other 5xx and transport errors with exponential backoff + jitter, up to
 * max_retries; other statuses go straight to done. A POST is repeated only
 * when it never reached the server (no connection) or the server asked for
 * it (429, or a 5xx with Retry-After): a POST whose attempt timed out may
 * have been applied, so it goes to done, and the caller finds out. done is always called exactly once (unless kube_async_free comes
 * first), never from inside this call. Returns 0, or -1 if a is closing. */
int kube_async_request(kube_async *a, const char *method, const char *path, const char *content_type,
                       const char *body, size_t len, int timeout_ms, kube_done_cb done, void *ud);

/* The write gate: may_write(ud) is asked right before every attempt of a
 * request that changes a Deployment (not a GET, path with /deployments),
 * retries included; 0 fails the request (done with resp NULL and
 * transport_err "not the leader: write not sent") instead of sending it. */
void kube_async_set_write_gate(kube_async *a, int (*may_write)(void *ud), void *ud);
/* Fails now every queued, not yet sent write the gate refuses (called when
 * leadership is lost, so no write waits for a backoff that ends later). */
void kube_async_cancel_writes(kube_async *a);

typedef struct kube_watch kube_watch;
/* type is ADDED/MODIFIED/DELETED/BOOKMARK/ERROR; object_json is the compact
 * JSON of the event's object (an ERROR carries a metav1.Status, e.g. 410
 * Expired: relist). Both valid only during the call. */
typedef void (*kube_watch_event_cb)(const char *type, const char *object_json, size_t len, void *ud);
/* Called once when the stream ends for any reason: server closed (status
 * 200, err NULL), idle timeout, dropped connection, malformed event (status
 * 200 or 0, err set), or a non-200 answer (status, err from the Status
 * body). The watch handle is freed right after on_end returns. */
typedef void (*kube_watch_end_cb)(long http_status, const char *err, void *ud);

/* Streams a watch; path must include watch=1 (and should carry
 * resourceVersion, allowWatchBookmarks=true, timeoutSeconds). The start is
 * rate-limited like a request; there is no total timeout: a stream that
 * sends no byte for watch_idle_timeout_ms ends (keep it above the server's
 * timeoutSeconds and bookmark interval), TCP keepalive finds dead peers. No automatic
 * re-watch: on_end is where the caller relists/rewatches. Never NULL unless a
 * is closing. */
kube_watch *kube_watch_start(kube_async *a, const char *path, kube_watch_event_cb on_event,
                             kube_watch_end_cb on_end, void *ud);
/* No callbacks after return. Allowed inside on_event (of any watch) and
 * inside on_end (where it does nothing); not after on_end returned. */
void kube_watch_stop(kube_watch *w);

/* Counts of what a holds right now (for /readyz and tests). */
void kube_async_counts(const kube_async *a, int *queued, int *inflight, int *watches);

/* ---- watch stream framing (kube_async.c; pure, for tests and fuzzing) ---- */

/* A watch response is a stream of JSON objects, one per line:
 *   {"type":"ADDED","object":{...}}\n
 * The framer takes bytes in any chunking and yields complete events. */
typedef struct kube_watch_framer kube_watch_framer;

#define KUBE_WATCH_MAX_LINE (64u * 1024u * 1024u)

/* max_line 0 → KUBE_WATCH_MAX_LINE. Never NULL. */
kube_watch_framer *kube_watch_framer_new(size_t max_line);
void kube_watch_framer_free(kube_watch_framer *f);

/* Return 0 to continue, non-zero to stop feeding. */
typedef int (*kube_watch_frame_cb)(const char *type, const char *object_json, size_t len, void *ud);

/* Feeds bytes; calls cb for each complete non-blank line. Returns 0 when all
 * bytes were consumed, 1 when cb asked to stop (the rest of data is dropped),
 * -1 with err on a line that is not a watch event (not JSON, no string
 * "type", no object "object") or longer than max_line; after -1 or 1 the
 * framer must not be fed again. */
int kube_watch_framer_feed(kube_watch_framer *f, const char *data, size_t len, kube_watch_frame_cb cb,
                           void *ud, char *err, size_t errlen);
/* Bytes of an incomplete last line held back (dropped at stream end). */
size_t kube_watch_framer_pending(const kube_watch_framer *f);

/* ---- Lua binding (bind_kube.c; contract in lua/core/kube.lua) ----------- */

struct lua_State;
/* The `kube` module: connect/from_env/escape and a client userdata. */
int luaopen_kube(struct lua_State *L);

/* ---- internal: shared by kube.c and kube_async.c, not for other callers --- */

#ifdef KUBE_INTERNAL
#include <curl/curl.h>

#include "util.h"

/* Reads a small file, strips trailing white space; malloc'd, NULL + errno. */
char *kube_read_trimmed(const char *path);

/* Resets h and prepares it for one request to c: URL, method, body (borrowed,
 * must outlive the transfer), headers (*headers: caller frees with
 * curl_slist_free_all, also on failure), TLS, bearer token (re-read from
 * token_file when it changed), no signals. The caller adds timeouts and
 * callbacks. */
int kube_client_prepare(kube_client *c, CURL *h, const char *method, const char *path,
                        const char *content_type, const char *body, size_t len,
                        struct curl_slist **headers, char *err, size_t errlen);
/* A response body being received, capped at KUBE_MAX_RESPONSE. */
struct kube_body_sink {
    buf b;
    int too_large; /* the cap was hit and the transfer aborted */
};
/* CURLOPT_WRITEFUNCTION for a struct kube_body_sink *. */
size_t kube_body_write_cb(char *data, size_t size, size_t n, void *userdata);
/* CURLOPT_HEADERFUNCTION helper: userdata is an int * that gets Retry-After. */
size_t kube_curl_header_cb(char *line, size_t size, size_t n, void *userdata);
/* "METHOD PATH: timed out after N ms" / "METHOD PATH: <curl error>". */
void kube_transport_error(char *err, size_t errlen, const char *method, const char *path,
                          CURLcode rc, const char *errbuf, long timeout_ms);
void kube_stats_add(const char *verb, long code);
#endif

#endif
