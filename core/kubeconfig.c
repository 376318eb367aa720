/* kubeconfig: where the API server is and how to authenticate, from a
 * kubeconfig file (libyaml document API) or the in-cluster service account.
 * See kube.h. Error messages name the file and what is missing; they never
 * contain token or key material. */
#include <errno.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <yaml.h>

#define KUBE_INTERNAL
#include "kube.h"
#include "util.h"

#define SA_DIR_DEFAULT "/var/run/secrets/kubernetes.io/serviceaccount"

void kube_config_free(kube_config *c)
{
    if (c == NULL)
        return;
    free(c->server);
    free(c->token);
    free(c->token_file);
    free(c->ca_file);
    free(c->ca_pem);
    free(c->client_cert_file);
    free(c->client_cert_pem);
    free(c->client_key_file);
    free(c->client_key_pem);
    free(c->namespace);
    memset(c, 0, sizeof *c);
}

/* ---- small YAML DOM helpers ---------------------------------------------- */

static const char *scalar(yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

static yaml_node_t *map_get(yaml_document_t *d, yaml_node_t *map, const char *key)
{
    if (map == NULL || map->type != YAML_MAPPING_NODE)
        return NULL;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        const char *k = scalar(yaml_document_get_node(d, p->key));
        if (k && strcmp(k, key) == 0)
            return yaml_document_get_node(d, p->value);
    }
    return NULL;
}

static const char *map_str(yaml_document_t *d, yaml_node_t *map, const char *key)
{
    const char *s = scalar(map_get(d, map, key));
    return s && *s ? s : NULL;
}

/* In a list like `contexts:` finds the entry with `name: <name>` and returns
 * its `<field>:` mapping; *found tells an absent entry from one without field. */
static yaml_node_t *named_entry(yaml_document_t *d, yaml_node_t *root, const char *list,
                                const char *name, const char *field, int *found)
{
    yaml_node_t *seq = map_get(d, root, list);
    *found = 0;
    if (seq == NULL || seq->type != YAML_SEQUENCE_NODE)
        return NULL;
    for (yaml_node_item_t *i = seq->data.sequence.items.start; i < seq->data.sequence.items.top; i++) {
        yaml_node_t *entry = yaml_document_get_node(d, *i);
        const char *n = scalar(map_get(d, entry, "name"));
        if (n && strcmp(n, name) == 0) {
            *found = 1;
            return map_get(d, entry, field);
        }
    }
    return NULL;
}

/* Decodes base64 (line breaks allowed) into a NUL-terminated malloc'd string.
 * NULL if the input is not base64. */
static char *base64_decode(const char *in)
{
    size_t n = strlen(in);
    unsigned char *out = xmalloc(n / 4 * 3 + 4);
    EVP_ENCODE_CTX *ctx = EVP_ENCODE_CTX_new();
    int outl = 0, finl = 0;
    if (ctx == NULL)
        goto err;
    EVP_DecodeInit(ctx);
    if (EVP_DecodeUpdate(ctx, out, &outl, (const unsigned char *)in, (int)n) < 0)
        goto err;
    if (EVP_DecodeFinal(ctx, out + outl, &finl) < 0)
        goto err;
    EVP_ENCODE_CTX_free(ctx);
    out[outl + finl] = '\0';
    return (char *)out;
err:
    EVP_ENCODE_CTX_free(ctx);
    free(out);
    return NULL;
}

/* Resolves p against dir unless it is absolute; malloc'd. */
static char *resolve(const char *dir, const char *p)
{
    if (p[0] == '/' || dir == NULL)
        return xstrdup(p);
    return xasprintf("%s/%s", dir, p);
}

static char *dirname_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL)
        return xstrdup(".");
    if (slash == path)
        return xstrdup("/");
    return xstrndup(path, (size_t)(slash - path));
}

static int parse_bool(const char *s, int *out)
{
    if (s == NULL)
        return 0;
    if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "TRUE")) {
        *out = 1;
        return 0;
    }
    if (!strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "FALSE")) {
        *out = 0;
        return 0;
    }
    return -1;
}

/* Takes a "-data" field (base64) or a file field (resolved against dir),
 * data winning like client-go. Returns -1 only for invalid base64. */
static int data_or_file(yaml_document_t *d, yaml_node_t *m, const char *data_key,
                        const char *file_key, const char *dir, char **pem, char **file)
{
    const char *data = map_str(d, m, data_key);
    const char *f = map_str(d, m, file_key);
    if (data) {
        *pem = base64_decode(data);
        return *pem ? 0 : -1;
    }
    if (f)
        *file = resolve(dir, f);
    return 0;
}

/* Strips trailing slashes from a server URL in place. */
static void trim_server(char *s)
{
    size_t n = strlen(s);
    while (n > 0 && s[n - 1] == '/')
        s[--n] = '\0';
}

/* Copies the current context of the parsed document into out. */
static int load_context(yaml_document_t *d, const char *path, const char *dir, kube_config *out,
                        char *err, size_t errlen)
{
    yaml_node_t *root = yaml_document_get_root_node(d);
    if (root == NULL || root->type != YAML_MAPPING_NODE) {
        util_seterr(err, errlen, "kubeconfig %s: not a kubeconfig (empty, or not a mapping)", path);
        return -1;
    }
    const char *ctx_name = map_str(d, root, "current-context");
    if (ctx_name == NULL) {
        util_seterr(err, errlen, "kubeconfig %s: no current-context", path);
        return -1;
    }
    int found;
    yaml_node_t *ctx = named_entry(d, root, "contexts", ctx_name, "context", &found);
    if (ctx == NULL) {
        util_seterr(err, errlen, found ? "kubeconfig %s: context \"%s\" has no context: mapping"
                                       : "kubeconfig %s: context \"%s\" not found",
                    path, ctx_name);
        return -1;
    }
    const char *cluster_name = map_str(d, ctx, "cluster");
    const char *user_name = map_str(d, ctx, "user");
    const char *ns = map_str(d, ctx, "namespace");
    if (cluster_name == NULL) {
        util_seterr(err, errlen, "kubeconfig %s: context \"%s\" names no cluster", path, ctx_name);
        return -1;
    }
    yaml_node_t *cluster = named_entry(d, root, "clusters", cluster_name, "cluster", &found);
    if (cluster == NULL) {
        util_seterr(err, errlen, "kubeconfig %s: cluster \"%s\" (of context \"%s\") not found", path,
                    cluster_name, ctx_name);
        return -1;
    }
    const char *server = map_str(d, cluster, "server");
    if (server == NULL) {
        util_seterr(err, errlen, "kubeconfig %s: cluster \"%s\" has no server", path, cluster_name);
        return -1;
    }
    out->server = xstrdup(server);
    trim_server(out->server);
    if (ns)
        out->namespace = xstrdup(ns);
    const char *insecure = scalar(map_get(d, cluster, "insecure-skip-tls-verify"));
    if (insecure && parse_bool(insecure, &out->insecure_skip_tls_verify) < 0) {
        util_seterr(err, errlen, "kubeconfig %s: cluster \"%s\": insecure-skip-tls-verify is not true/false",
                    path, cluster_name);
        return -1;
    }
    if (data_or_file(d, cluster, "certificate-authority-data", "certificate-authority", dir,
                     &out->ca_pem, &out->ca_file) < 0) {
        util_seterr(err, errlen, "kubeconfig %s: cluster \"%s\": certificate-authority-data is not valid base64",
                    path, cluster_name);
        return -1;
    }

    if (user_name == NULL)
        return 0; /* anonymous */
    yaml_node_t *user = named_entry(d, root, "users", user_name, "user", &found);
    if (user == NULL) {
        if (found)
            return 0; /* `user: {}` spelled as a bare entry: anonymous */
        util_seterr(err, errlen, "kubeconfig %s: user \"%s\" (of context \"%s\") not found", path,
                    user_name, ctx_name);
        return -1;
    }
    const char *token = map_str(d, user, "token");
    const char *token_file = map_str(d, user, "tokenFile");
    if (token)
        out->token = xstrdup(token);
    if (token_file)
        out->token_file = resolve(dir, token_file);
    if (data_or_file(d, user, "client-certificate-data", "client-certificate", dir,
                     &out->client_cert_pem, &out->client_cert_file) < 0) {
        util_seterr(err, errlen, "kubeconfig %s: user \"%s\": client-certificate-data is not valid base64",
                    path, user_name);
        return -1;
    }
    if (data_or_file(d, user, "client-key-data", "client-key", dir, &out->client_key_pem,
                     &out->client_key_file) < 0) {
        util_seterr(err, errlen, "kubeconfig %s: user \"%s\": client-key-data is not valid base64", path,
                    user_name);
        return -1;
    }
    int has_cert = out->client_cert_pem || out->client_cert_file;
    int has_key = out->client_key_pem || out->client_key_file;
    if (has_cert != has_key) {
        util_seterr(err, errlen, "kubeconfig %s: user \"%s\": client certificate and key must be given together",
                    path, user_name);
        return -1;
    }
    if (!token && !token_file && !has_cert) {
        const char *plugin = map_get(d, user, "exec") ? "an exec credential plugin"
                           : map_get(d, user, "auth-provider") ? "an auth-provider plugin"
                           : map_get(d, user, "username") ? "basic auth"
                           : NULL;
        if (plugin) {
            util_seterr(err, errlen,
                        "kubeconfig %s: user \"%s\" uses %s, which is not supported; use a token, "
                        "tokenFile or client certificate",
                        path, user_name, plugin);
            return -1;
        }
    }
    return 0;
}

int kube_config_parse_kubeconfig(const char *data, size_t len, const char *name, const char *dir,
                                 kube_config *out, char *err, size_t errlen)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    int rc;

    memset(out, 0, sizeof *out);
    if (!yaml_parser_initialize(&parser)) {
        util_seterr(err, errlen, "kubeconfig %s: cannot start the YAML parser", name);
        return -1;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)data, len);
    if (!yaml_parser_load(&parser, &doc)) {
        util_seterr(err, errlen, "kubeconfig %s: line %zu column %zu: %s%s%s", name,
                    parser.problem_mark.line + 1, parser.problem_mark.column + 1,
                    parser.problem ? parser.problem : "invalid YAML", parser.context ? " " : "",
                    parser.context ? parser.context : "");
        yaml_parser_delete(&parser);
        return -1;
    }
    yaml_parser_delete(&parser);
    rc = load_context(&doc, name, dir, out, err, errlen);
    yaml_document_delete(&doc);
    if (rc < 0)
        kube_config_free(out);
    return rc;
}

int kube_config_load_kubeconfig(const char *path, kube_config *out, char *err, size_t errlen)
{
    int rc = -1;
    char *first = NULL, *data = NULL, *dir = NULL;
    size_t len = 0;

    memset(out, 0, sizeof *out);
    if (path == NULL) {
        const char *env = getenv("KUBECONFIG");
        if (env == NULL || *env == '\0') {
            util_seterr(err, errlen, "no kubeconfig: no path given and $KUBECONFIG is not set");
            return -1;
        }
        /* $KUBECONFIG is a ':'-separated list; we take the first entry
         * rather than merging like kubectl. */
        first = xstrndup(env, strcspn(env, ":"));
        if (*first == '\0') {
            util_seterr(err, errlen, "no kubeconfig: $KUBECONFIG starts with an empty entry");
            goto out;
        }
        path = first;
    }
    data = util_read_file(path, &len);
    if (data == NULL) {
        util_seterr(err, errlen, "kubeconfig %s: %s", path, strerror(errno));
        goto out;
    }
    dir = dirname_of(path);
    rc = kube_config_parse_kubeconfig(data, len, path, dir, out, err, errlen);
out:
    free(dir);
    free(data);
    free(first);
    return rc;
}

int kube_config_in_cluster(kube_config *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    const char *host = getenv("KUBERNETES_SERVICE_HOST");
    const char *port = getenv("KUBERNETES_SERVICE_PORT");
    const char *dir = getenv("KUBE_SA_DIR");
    char *ca = NULL;
    if (dir == NULL || *dir == '\0')
        dir = SA_DIR_DEFAULT;
    if (host == NULL || *host == '\0' || port == NULL || *port == '\0') {
        util_seterr(err, errlen, "in-cluster config: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT "
                                 "are not set (not running in a pod? set KUBECONFIG)");
        return -1;
    }
    out->server = strchr(host, ':') ? xasprintf("https://[%s]:%s", host, port)
                                     : xasprintf("https://%s:%s", host, port);
    out->token_file = xasprintf("%s/token", dir);
    out->token = kube_read_trimmed(out->token_file);
    if (out->token == NULL) {
        util_seterr(err, errlen, "in-cluster config: %s: %s", out->token_file, strerror(errno));
        goto err;
    }
    ca = xasprintf("%s/ca.crt", dir);
    if (access(ca, R_OK) != 0) {
        util_seterr(err, errlen, "in-cluster config: %s: %s", ca, strerror(errno));
        goto err;
    }
    out->ca_file = ca;
    ca = NULL;
    char *ns_file = xasprintf("%s/namespace", dir);
    out->namespace = kube_read_trimmed(ns_file); /* optional */
    free(ns_file);
    if (out->namespace && *out->namespace == '\0') {
        free(out->namespace);
        out->namespace = NULL;
    }
    return 0;
err:
    free(ca);
    kube_config_free(out);
    return -1;
}
