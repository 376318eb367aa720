/* kube_exec: exec credential plugins (client.authentication.k8s.io/v1 and
 * v1beta1 ExecCredential), the way client-go runs them: how EKS
 * (`aws eks get-token`), GKE (`gke-gcloud-auth-plugin`) and AKS (`kubelogin`)
 * clusters are reached. See kube.h.
 *
 * The plugin runs with our environment plus its `env:` entries and
 * KUBERNETES_EXEC_INFO (an ExecCredential whose spec says whether it may talk
 * to the user, and with provideClusterInfo the cluster); its standard error
 * goes to ours, its standard output is the ExecCredential it answers. The
 * credential is kept until its expirationTimestamp (for the process's life
 * without one), and dropped when the API server answers 401 with it.
 *
 * Running the plugin blocks the caller (as in client-go, where the request
 * that needs the credential waits for it); a plugin that takes longer than
 * KUBE_EXEC_TIMEOUT_MS is killed. Tokens and keys never reach a log line or
 * an error message. */
#define _GNU_SOURCE /* pipe2 */
#define KUBE_INTERNAL
#include "kube.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "json.h"
#include "log.h"
#include "util.h"

extern char **environ;

#define KUBE_EXEC_TIMEOUT_MS 60000
#define KUBE_EXEC_MAX_OUTPUT (1u << 20)

struct kube_exec {
    kube_exec_config cfg;   /* a copy */
    char *cluster_json;     /* spec.cluster when provideClusterInfo, else NULL */
    kube_exec_credential cred;
    int have;               /* cred holds a credential */
};

static char *dup_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

static char **dup_list(char *const *v, int n)
{
    char **out = xcalloc((size_t)n + 1, sizeof *out);
    for (int i = 0; i < n; i++)
        out[i] = xstrdup(v[i]);
    return out;
}

static void free_list(char **v, int n)
{
    if (v == NULL)
        return;
    for (int i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

void kube_exec_config_free(kube_exec_config *x)
{
    if (x == NULL)
        return;
    free(x->command);
    free_list(x->args, x->nargs);
    free_list(x->env, x->nenv);
    free(x->api_version);
    free(x->install_hint);
    memset(x, 0, sizeof *x);
}

void kube_exec_credential_free(kube_exec_credential *c)
{
    if (c == NULL)
        return;
    /* Wipe what authenticates us before giving the memory back. */
    if (c->token)
        memset(c->token, 0, strlen(c->token));
    if (c->client_key_pem)
        memset(c->client_key_pem, 0, strlen(c->client_key_pem));
    free(c->token);
    free(c->client_cert_pem);
    free(c->client_key_pem);
    memset(c, 0, sizeof *c);
}

static char *b64_encode(const char *data, size_t n)
{
    char *out = xmalloc(4 * ((n + 2) / 3) + 1);
    EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)data, (int)n);
    return out;
}

/* spec.cluster of KUBERNETES_EXEC_INFO, with client-go's field names; the CA
 * goes as data even when the kubeconfig names a file. */
static char *cluster_info(const kube_config *k)
{
    buf b = {0};
    buf_puts(&b, "{\"server\":");
    buf_json_string(&b, k->server, strlen(k->server));
    if (k->insecure_skip_tls_verify)
        buf_puts(&b, ",\"insecure-skip-tls-verify\":true");
    char *ca = k->ca_pem ? xstrdup(k->ca_pem) : k->ca_file ? util_read_file(k->ca_file, NULL) : NULL;
    if (ca) {
        char *enc = b64_encode(ca, strlen(ca));
        buf_puts(&b, ",\"certificate-authority-data\":");
        buf_json_string(&b, enc, strlen(enc));
        free(enc);
        free(ca);
    }
    if (k->proxy_url) {
        buf_puts(&b, ",\"proxy-url\":");
        buf_json_string(&b, k->proxy_url, strlen(k->proxy_url));
    }
    buf_putc(&b, '}');
    return buf_steal(&b);
}

kube_exec *kube_exec_new(const kube_config *k)
{
    const kube_exec_config *x = k->exec;
    kube_exec *e = xcalloc(1, sizeof *e);
    e->cfg.command = xstrdup(x->command);
    e->cfg.args = dup_list(x->args, x->nargs);
    e->cfg.nargs = x->nargs;
    e->cfg.env = dup_list(x->env, x->nenv);
    e->cfg.nenv = x->nenv;
    e->cfg.api_version = xstrdup(x->api_version);
    e->cfg.install_hint = dup_or_null(x->install_hint);
    e->cfg.interactive_mode = x->interactive_mode;
    e->cfg.provide_cluster_info = x->provide_cluster_info;
    if (x->provide_cluster_info)
        e->cluster_json = cluster_info(k);
    return e;
}

void kube_exec_free(kube_exec *e)
{
    if (e == NULL)
        return;
    kube_exec_config_free(&e->cfg);
    kube_exec_credential_free(&e->cred);
    free(e->cluster_json);
    free(e);
}

/* RFC 3339 (what metav1.Time marshals to): 2026-12-02T14:00:00Z, with an
 * optional fraction and a Z or ±hh:mm offset. Milliseconds since the epoch. */
static int parse_rfc3339(const char *s, int64_t *out_ms)
{
    struct tm tm = {0};
    int n = 0;
    if (sscanf(s, "%4d-%2d-%2d%*[Tt]%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec, &n) != 6 || n == 0)
        return -1;
    const char *p = s + n;
    if (*p == '.') {
        p++;
        if (*p < '0' || *p > '9')
            return -1;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    long offset_s = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int hh, mm, m = 0;
        if (sscanf(p + 1, "%2d:%2d%n", &hh, &mm, &m) != 2 || m != 5)
            return -1;
        offset_s = (long)(hh * 3600 + mm * 60) * (*p == '-' ? -1 : 1);
        p += 1 + m;
    } else {
        return -1;
    }
    if (*p != '\0' || tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1 || tm.tm_mday > 31 ||
        tm.tm_hour > 23 || tm.tm_min > 59 || tm.tm_sec > 60)
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    time_t t = timegm(&tm);
    *out_ms = ((int64_t)t - offset_s) * 1000;
    return 0;
}

int kube_exec_parse_credential(const char *out, size_t len, const char *api_version,
                               kube_exec_credential *cred, char *err, size_t errlen)
{
    char perr[128] = "";
    int rc = -1;
    memset(cred, 0, sizeof *cred);
    json_value *root = json_parse(out, len, perr, sizeof perr);
    if (root == NULL || json_typeof(root) != JSON_OBJECT) {
        util_seterr(err, errlen, "its output is not an ExecCredential JSON object%s%s", *perr ? ": " : "", perr);
        goto out;
    }
    const char *kind = json_string(json_get(root, "kind"));
    const char *version = json_string(json_get(root, "apiVersion"));
    if (kind == NULL || strcmp(kind, "ExecCredential") != 0) {
        util_seterr(err, errlen, "its output has kind \"%s\", not ExecCredential", kind ? kind : "");
        goto out;
    }
    if (version == NULL || strcmp(version, api_version) != 0) {
        util_seterr(err, errlen, "it is configured for %s but answered apiVersion \"%s\"", api_version,
                    version ? version : "");
        goto out;
    }
    const json_value *status = json_get(root, "status");
    if (status == NULL || json_typeof(status) != JSON_OBJECT) {
        util_seterr(err, errlen, "its ExecCredential has no status");
        goto out;
    }
    const char *token = json_string(json_get(status, "token"));
    const char *cert = json_string(json_get(status, "clientCertificateData"));
    const char *key = json_string(json_get(status, "clientKeyData"));
    const char *exp = json_string(json_get(status, "expirationTimestamp"));
    int has_cert = cert && *cert, has_key = key && *key;
    if (has_cert != has_key) {
        util_seterr(err, errlen, "it returned a client certificate or key, not both");
        goto out;
    }
    if (!(token && *token) && !has_cert) {
        util_seterr(err, errlen, "it returned neither a token nor a client certificate and key");
        goto out;
    }
    if (exp && *exp && parse_rfc3339(exp, &cred->expires_ms) < 0) {
        util_seterr(err, errlen, "its expirationTimestamp \"%.64s\" is not RFC 3339", exp);
        goto out;
    }
    cred->token = token && *token ? xstrdup(token) : NULL;
    cred->client_cert_pem = has_cert ? xstrdup(cert) : NULL;
    cred->client_key_pem = has_key ? xstrdup(key) : NULL;
    rc = 0;
out:
    json_free(root);
    if (rc < 0)
        kube_exec_credential_free(cred);
    return rc;
}

/* Our environment, minus the names the plugin's env: entries set, plus
 * those entries and KUBERNETES_EXEC_INFO (client-go appends them, and the
 * last of two equal names wins; here there is only one). */
static char **plugin_env(const kube_exec *e, const char *exec_info, int *count)
{
    int n = 0;
    for (char **p = environ; *p; p++)
        n++;
    char **env = xcalloc((size_t)n + (size_t)e->cfg.nenv + 2, sizeof *env);
    int k = 0;
    for (char **p = environ; *p; p++) {
        size_t name_len = strcspn(*p, "=");
        int overridden = name_len == strlen("KUBERNETES_EXEC_INFO") &&
                         strncmp(*p, "KUBERNETES_EXEC_INFO", name_len) == 0;
        for (int i = 0; i < e->cfg.nenv && !overridden; i++)
            overridden = strncmp(e->cfg.env[i], *p, name_len) == 0 && e->cfg.env[i][name_len] == '=';
        if (!overridden)
            env[k++] = xstrdup(*p);
    }
    for (int i = 0; i < e->cfg.nenv; i++)
        env[k++] = xstrdup(e->cfg.env[i]);
    env[k++] = xasprintf("KUBERNETES_EXEC_INFO=%s", exec_info);
    env[k] = NULL;
    *count = k;
    return env;
}

/* Reads the child's standard output until EOF, the cap or the deadline. */
static int read_output(int fd, buf *out, uint64_t deadline_ms, int *timed_out)
{
    char chunk[4096];
    *timed_out = 0;
    for (;;) {
        uint64_t now = util_now_ms();
        if (now >= deadline_ms) {
            *timed_out = 1;
            return -1;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, (int)(deadline_ms - now));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0)
            continue; /* the deadline check above ends it */
        ssize_t got = read(fd, chunk, sizeof chunk);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return -1;
        if (got == 0)
            return 0;
        if (out->len + (size_t)got > KUBE_EXEC_MAX_OUTPUT)
            return -1;
        buf_append(out, chunk, (size_t)got);
    }
}

/* Runs the plugin once and fills e->cred. */
static int run_plugin(kube_exec *e, char *err, size_t errlen)
{
    int interactive = 0, pipefd[2] = {-1, -1}, rc = -1, nenv = 0, status = 0, timed_out = 0;
    char **env = NULL, **argv = NULL;
    pid_t pid = -1;
    buf out = {0}, info = {0};
    posix_spawn_file_actions_t fa;
    int fa_ready = 0;
    const char *cmd = e->cfg.command;

    if (e->cfg.interactive_mode == KUBE_EXEC_INTERACTIVE_ALWAYS && !isatty(STDIN_FILENO)) {
        util_seterr(err, errlen, "exec plugin %s: interactiveMode is Always but standard input is not a terminal",
                    cmd);
        return -1;
    }
    interactive = e->cfg.interactive_mode != KUBE_EXEC_INTERACTIVE_NEVER && isatty(STDIN_FILENO);
    buf_puts(&info, "{\"apiVersion\":");
    buf_json_string(&info, e->cfg.api_version, strlen(e->cfg.api_version));
    buf_printf(&info, ",\"kind\":\"ExecCredential\",\"spec\":{\"interactive\":%s", interactive ? "true" : "false");
    if (e->cluster_json)
        buf_printf(&info, ",\"cluster\":%s", e->cluster_json);
    buf_puts(&info, "}}");

    env = plugin_env(e, info.data, &nenv);
    argv = xcalloc((size_t)e->cfg.nargs + 2, sizeof *argv);
    argv[0] = e->cfg.command;
    for (int i = 0; i < e->cfg.nargs; i++)
        argv[i + 1] = e->cfg.args[i];

    if (pipe2(pipefd, O_CLOEXEC) < 0) {
        util_seterr(err, errlen, "exec plugin %s: pipe: %s", cmd, strerror(errno));
        goto out;
    }
    posix_spawn_file_actions_init(&fa);
    fa_ready = 1;
    if (!interactive)
        posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, pipefd[1], STDOUT_FILENO);
    /* posix_spawnp looks the command up in our PATH, as exec.LookPath does. */
    int serr = posix_spawnp(&pid, cmd, &fa, NULL, argv, env);
    close(pipefd[1]);
    pipefd[1] = -1;
    if (serr != 0) {
        pid = -1;
        util_seterr(err, errlen, "exec plugin %s: cannot run it: %s%s%s", cmd, strerror(serr),
                    e->cfg.install_hint ? ". " : "", e->cfg.install_hint ? e->cfg.install_hint : "");
        goto out;
    }
    int rerr = read_output(pipefd[0], &out, util_now_ms() + KUBE_EXEC_TIMEOUT_MS, &timed_out);
    if (rerr < 0)
        kill(pid, SIGKILL); /* our own child: it hung or talks too much */
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    pid = -1;
    if (timed_out) {
        util_seterr(err, errlen, "exec plugin %s: no answer within %d s (killed)", cmd, KUBE_EXEC_TIMEOUT_MS / 1000);
        goto out;
    }
    if (rerr < 0) {
        util_seterr(err, errlen, "exec plugin %s: its output could not be read or is larger than %u bytes", cmd,
                    KUBE_EXEC_MAX_OUTPUT);
        goto out;
    }
    if (WIFSIGNALED(status)) {
        util_seterr(err, errlen, "exec plugin %s: killed by signal %d", cmd, WTERMSIG(status));
        goto out;
    }
    if (WEXITSTATUS(status) != 0) {
        util_seterr(err, errlen, "exec plugin %s: exited with status %d (its messages are on standard error)%s%s",
                    cmd, WEXITSTATUS(status), e->cfg.install_hint ? ". " : "",
                    e->cfg.install_hint ? e->cfg.install_hint : "");
        goto out;
    }
    char perr[256];
    kube_exec_credential fresh;
    if (kube_exec_parse_credential(out.data ? out.data : "", out.len, e->cfg.api_version, &fresh, perr,
                                   sizeof perr) < 0) {
        util_seterr(err, errlen, "exec plugin %s: %s", cmd, perr);
        goto out;
    }
    kube_exec_credential_free(&e->cred);
    e->cred = fresh;
    e->have = 1;
    rc = 0;
out:
    if (pid > 0) {
        kill(pid, SIGKILL);
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
    }
    if (fa_ready)
        posix_spawn_file_actions_destroy(&fa);
    if (pipefd[0] >= 0)
        close(pipefd[0]);
    if (pipefd[1] >= 0)
        close(pipefd[1]);
    if (out.data)
        memset(out.data, 0, out.len); /* held the credential */
    buf_free(&out);
    buf_free(&info);
    free_list(env, nenv);
    free(argv);
    return rc;
}

const kube_exec_credential *kube_exec_get(kube_exec *e, char *err, size_t errlen)
{
    if (e->have && (e->cred.expires_ms == 0 || (int64_t)util_wall_ms() < e->cred.expires_ms))
        return &e->cred;
    int first = !e->have;
    if (run_plugin(e, err, errlen) < 0)
        return NULL;
    log_debug(first ? "kube: exec plugin gave a credential" : "kube: exec plugin renewed the credential",
              "command", e->cfg.command, NULL);
    return &e->cred;
}

void kube_exec_invalidate(kube_exec *e)
{
    if (e->have)
        log_info("kube: the API server refused the exec plugin's credential (401); it runs again",
                 "command", e->cfg.command, NULL);
    e->have = 0;
}
