/* kubeconfig: where the API server is and how to authenticate, from
 * kubeconfig files merged by client-go's rules (libyaml document API), the
 * in-cluster service account, or ~/.kube/config.
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
    free(c->proxy_url);
    free(c->context);
    if (c->exec) {
        kube_exec_config_free(c->exec);
        free(c->exec);
    }
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

/* ---- the merged view of several kubeconfig files ---------------------- */

/* One parsed file of a $KUBECONFIG list. */
struct kc_file {
    yaml_document_t doc;
    int loaded;
    const char *path;        /* borrowed */
    char *dir;               /* relative paths in this file resolve against it */
};

/* Files in $KUBECONFIG order. label names them in messages ("a" or "a:b"). */
struct kc_set {
    struct kc_file *f;
    int n;
    const char *label;
};

/* Finds the first file's `list:` entry called name (client-go: the first
 * file to set a key wins, the entry is never merged field by field) and
 * returns its `field:` mapping and file; *found tells an absent entry from
 * one without field. */
static yaml_node_t *set_named(struct kc_set *s, const char *list, const char *name, const char *field,
                              int *found, struct kc_file **from)
{
    *found = 0;
    for (int i = 0; i < s->n; i++) {
        yaml_document_t *d = &s->f[i].doc;
        yaml_node_t *v = named_entry(d, yaml_document_get_root_node(d), list, name, field, found);
        if (*found) {
            *from = &s->f[i];
            return v;
        }
    }
    return NULL;
}

static int parse_interactive_mode(const char *s, int *out)
{
    if (!strcmp(s, "Never"))
        *out = KUBE_EXEC_INTERACTIVE_NEVER;
    else if (!strcmp(s, "IfAvailable"))
        *out = KUBE_EXEC_INTERACTIVE_IF_AVAILABLE;
    else if (!strcmp(s, "Always"))
        *out = KUBE_EXEC_INTERACTIVE_ALWAYS;
    else
        return -1;
    return 0;
}

/* A user's `exec:` stanza, checked as client-go checks it. */
static int load_exec(struct kc_file *f, yaml_node_t *ex, const char *user_name, kube_config *out,
                     char *err, size_t errlen)
{
    yaml_document_t *d = &f->doc;
    const char *command = map_str(d, ex, "command");
    const char *version = map_str(d, ex, "apiVersion");
    const char *mode = map_str(d, ex, "interactiveMode");
    const char *cluster_info = scalar(map_get(d, ex, "provideClusterInfo"));
    yaml_node_t *args = map_get(d, ex, "args"), *env = map_get(d, ex, "env");
    kube_exec_config *x = out->exec = xcalloc(1, sizeof *x);

    if (ex->type != YAML_MAPPING_NODE || command == NULL) {
        util_seterr(err, errlen, "kubeconfig %s: user \"%s\": exec needs a command", f->path, user_name);
        return -1;
    }
    if (version == NULL || (strcmp(version, "client.authentication.k8s.io/v1") != 0 &&
                            strcmp(version, "client.authentication.k8s.io/v1beta1") != 0)) {
        util_seterr(err, errlen,
                    "kubeconfig %s: user \"%s\": exec apiVersion \"%s\" is not supported "
                    "(client.authentication.k8s.io/v1 or v1beta1)",
                    f->path, user_name, version ? version : "");
        return -1;
    }
    x->interactive_mode = KUBE_EXEC_INTERACTIVE_IF_AVAILABLE;
    if (mode == NULL && strcmp(version, "client.authentication.k8s.io/v1") == 0) {
        util_seterr(err, errlen,
                    "kubeconfig %s: user \"%s\": exec interactiveMode must be set for "
                    "client.authentication.k8s.io/v1 (Never, IfAvailable or Always)",
                    f->path, user_name);
        return -1;
    }
    if (mode && parse_interactive_mode(mode, &x->interactive_mode) < 0) {
        util_seterr(err, errlen,
                    "kubeconfig %s: user \"%s\": exec interactiveMode \"%s\" is not Never, IfAvailable or Always",
                    f->path, user_name, mode);
        return -1;
    }
    if (cluster_info && parse_bool(cluster_info, &x->provide_cluster_info) < 0) {
        util_seterr(err, errlen, "kubeconfig %s: user \"%s\": exec provideClusterInfo is not true/false",
                    f->path, user_name);
        return -1;
    }
    /* client-go resolves a command against the kubeconfig's directory only
     * when it holds a path separator; a bare name is looked up in $PATH. */
    if (strchr(command, '/')) {
        while (command[0] == '.' && command[1] == '/') /* ./bin/x, cleaned as filepath.Join does */
            command += 2;
        x->command = resolve(f->dir, command);
    } else {
        x->command = xstrdup(command);
    }
    x->api_version = xstrdup(version);
    if (map_str(d, ex, "installHint"))
        x->install_hint = xstrdup(map_str(d, ex, "installHint"));
    if (args && args->type == YAML_SEQUENCE_NODE) {
        size_t n = (size_t)(args->data.sequence.items.top - args->data.sequence.items.start);
        x->args = xcalloc(n + 1, sizeof *x->args);
        for (yaml_node_item_t *i = args->data.sequence.items.start; i < args->data.sequence.items.top; i++) {
            const char *a = scalar(yaml_document_get_node(d, *i));
            if (a == NULL) {
                util_seterr(err, errlen, "kubeconfig %s: user \"%s\": exec args must be strings", f->path,
                            user_name);
                return -1;
            }
            x->args[x->nargs++] = xstrdup(a);
        }
    } else if (args) {
        util_seterr(err, errlen, "kubeconfig %s: user \"%s\": exec args must be a list", f->path, user_name);
        return -1;
    }
    if (env && env->type == YAML_SEQUENCE_NODE) {
        size_t n = (size_t)(env->data.sequence.items.top - env->data.sequence.items.start);
        x->env = xcalloc(n + 1, sizeof *x->env);
        for (yaml_node_item_t *i = env->data.sequence.items.start; i < env->data.sequence.items.top; i++) {
            yaml_node_t *e = yaml_document_get_node(d, *i);
            const char *name = map_str(d, e, "name");
            const char *value = scalar(map_get(d, e, "value"));
            if (name == NULL || strchr(name, '=')) {
                util_seterr(err, errlen, "kubeconfig %s: user \"%s\": every exec env entry needs a name (without '=')",
                            f->path, user_name);
                return -1;
            }
            x->env[x->nenv++] = xasprintf("%s=%s", name, value ? value : "");
        }
    } else if (env) {
        util_seterr(err, errlen, "kubeconfig %s: user \"%s\": exec env must be a list of {name, value}",
                    f->path, user_name);
        return -1;
    }
    return 0;
}

/* Copies context ctx_name (NULL: the first current-context) of the merged
 * files into out. */
static int load_context(struct kc_set *s, const char *ctx_name, kube_config *out, char *err, size_t errlen)
{
    struct kc_file *fc = NULL, *fcl = NULL, *fu = NULL;
    for (int i = 0; i < s->n; i++) {
        yaml_node_t *root = yaml_document_get_root_node(&s->f[i].doc);
        if (root == NULL || root->type != YAML_MAPPING_NODE) {
            util_seterr(err, errlen, "kubeconfig %s: not a kubeconfig (empty, or not a mapping)", s->f[i].path);
            return -1;
        }
        if (ctx_name == NULL)
            ctx_name = map_str(&s->f[i].doc, root, "current-context");
    }
    if (ctx_name == NULL) {
        util_seterr(err, errlen, "kubeconfig %s: no current-context (set one, or choose with --context)",
                    s->label);
        return -1;
    }
    int found;
    yaml_node_t *ctx = set_named(s, "contexts", ctx_name, "context", &found, &fc);
    if (ctx == NULL) {
        util_seterr(err, errlen, found ? "kubeconfig %s: context \"%s\" has no context: mapping"
                                       : "kubeconfig %s: context \"%s\" not found",
                    found ? fc->path : s->label, ctx_name);
        return -1;
    }
    out->context = xstrdup(ctx_name);
    const char *cluster_name = map_str(&fc->doc, ctx, "cluster");
    const char *user_name = map_str(&fc->doc, ctx, "user");
    const char *ns = map_str(&fc->doc, ctx, "namespace");
    if (cluster_name == NULL) {
        util_seterr(err, errlen, "kubeconfig %s: context \"%s\" names no cluster", fc->path, ctx_name);
        return -1;
    }
    yaml_node_t *cluster = set_named(s, "clusters", cluster_name, "cluster", &found, &fcl);
    if (cluster == NULL) {
        util_seterr(err, errlen, "kubeconfig %s: cluster \"%s\" (of context \"%s\") not found",
                    found ? fcl->path : s->label, cluster_name, ctx_name);
        return -1;
    }
    yaml_document_t *d = &fcl->doc;
    const char *server = map_str(d, cluster, "server");
    if (server == NULL) {
        util_seterr(err, errlen, "kubeconfig %s: cluster \"%s\" has no server", fcl->path, cluster_name);
        return -1;
    }
    out->server = xstrdup(server);
    trim_server(out->server);
    if (ns)
        out->namespace = xstrdup(ns);
    const char *insecure = scalar(map_get(d, cluster, "insecure-skip-tls-verify"));
    if (insecure && parse_bool(insecure, &out->insecure_skip_tls_verify) < 0) {
        util_seterr(err, errlen, "kubeconfig %s: cluster \"%s\": insecure-skip-tls-verify is not true/false",
                    fcl->path, cluster_name);
        return -1;
    }
    if (data_or_file(d, cluster, "certificate-authority-data", "certificate-authority", fcl->dir,
                     &out->ca_pem, &out->ca_file) < 0) {
        util_seterr(err, errlen, "kubeconfig %s: cluster \"%s\": certificate-authority-data is not valid base64",
                    fcl->path, cluster_name);
        return -1;
    }
    const char *proxy = map_str(d, cluster, "proxy-url");
    if (proxy) {
        if (strncmp(proxy, "http://", 7) != 0 && strncmp(proxy, "https://", 8) != 0 &&
            strncmp(proxy, "socks5://", 9) != 0) {
            util_seterr(err, errlen, "kubeconfig %s: cluster \"%s\": proxy-url must be an http, https or socks5 URL",
                        fcl->path, cluster_name);
            return -1;
        }
        out->proxy_url = xstrdup(proxy);
    }

    if (user_name == NULL)
        return 0; /* anonymous */
    yaml_node_t *user = set_named(s, "users", user_name, "user", &found, &fu);
    if (user == NULL) {
        if (found)
            return 0; /* `user: {}` spelled as a bare entry: anonymous */
        util_seterr(err, errlen, "kubeconfig %s: user \"%s\" (of context \"%s\") not found", s->label,
                    user_name, ctx_name);
        return -1;
    }
    d = &fu->doc;
    const char *token = map_str(d, user, "token");
    const char *token_file = map_str(d, user, "tokenFile");
    if (token)
        out->token = xstrdup(token);
    if (token_file)
        out->token_file = resolve(fu->dir, token_file);
    if (data_or_file(d, user, "client-certificate-data", "client-certificate", fu->dir,
                     &out->client_cert_pem, &out->client_cert_file) < 0) {
        util_seterr(err, errlen, "kubeconfig %s: user \"%s\": client-certificate-data is not valid base64",
                    fu->path, user_name);
        return -1;
    }
    if (data_or_file(d, user, "client-key-data", "client-key", fu->dir, &out->client_key_pem,
                     &out->client_key_file) < 0) {
        util_seterr(err, errlen, "kubeconfig %s: user \"%s\": client-key-data is not valid base64", fu->path,
                    user_name);
        return -1;
    }
    int has_cert = out->client_cert_pem || out->client_cert_file;
    int has_key = out->client_key_pem || out->client_key_file;
    if (has_cert != has_key) {
        util_seterr(err, errlen, "kubeconfig %s: user \"%s\": client certificate and key must be given together",
                    fu->path, user_name);
        return -1;
    }
    yaml_node_t *ex = map_get(d, user, "exec");
    if (ex)
        return load_exec(fu, ex, user_name, out, err, errlen);
    if (!token && !token_file && !has_cert) {
        const char *plugin = map_get(d, user, "auth-provider") ? "an auth-provider plugin"
                           : map_get(d, user, "username") ? "basic auth"
                           : NULL;
        if (plugin) {
            util_seterr(err, errlen,
                        "kubeconfig %s: user \"%s\" uses %s, which is not supported; use a token, "
                        "tokenFile, client certificate or exec plugin",
                        fu->path, user_name, plugin);
            return -1;
        }
    }
    return 0;
}

/* Parses one file's text into f->doc. */
static int parse_doc(struct kc_file *f, const char *data, size_t len, char *err, size_t errlen)
{
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) {
        util_seterr(err, errlen, "kubeconfig %s: cannot start the YAML parser", f->path);
        return -1;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)data, len);
    if (!yaml_parser_load(&parser, &f->doc)) {
        util_seterr(err, errlen, "kubeconfig %s: line %zu column %zu: %s%s%s", f->path,
                    parser.problem_mark.line + 1, parser.problem_mark.column + 1,
                    parser.problem ? parser.problem : "invalid YAML", parser.context ? " " : "",
                    parser.context ? parser.context : "");
        yaml_parser_delete(&parser);
        return -1;
    }
    yaml_parser_delete(&parser);
    f->loaded = 1;
    return 0;
}

static void set_free(struct kc_set *s)
{
    for (int i = 0; i < s->n; i++) {
        if (s->f[i].loaded)
            yaml_document_delete(&s->f[i].doc);
        free(s->f[i].dir);
    }
    free(s->f);
}

int kube_config_parse_kubeconfig(const char *data, size_t len, const char *name, const char *dir,
                                 kube_config *out, char *err, size_t errlen)
{
    struct kc_file f = {.path = name, .dir = dir ? xstrdup(dir) : NULL};
    struct kc_set s = {.f = &f, .n = 1, .label = name};
    int rc = -1;

    memset(out, 0, sizeof *out);
    if (parse_doc(&f, data, len, err, errlen) == 0)
        rc = load_context(&s, NULL, out, err, errlen);
    if (f.loaded)
        yaml_document_delete(&f.doc);
    free(f.dir);
    if (rc < 0)
        kube_config_free(out);
    return rc;
}

int kube_config_load_kubeconfig(const char *paths, const char *context, kube_config *out, char *err,
                                size_t errlen)
{
    int rc = -1, max = 1;
    char *list = NULL, *save = NULL, *label = NULL;
    struct kc_set s = {0};
    buf names = {0};

    memset(out, 0, sizeof *out);
    if (paths == NULL) {
        paths = getenv("KUBECONFIG");
        if (paths == NULL || *paths == '\0') {
            util_seterr(err, errlen, "no kubeconfig: no path given and $KUBECONFIG is not set");
            return -1;
        }
    }
    for (const char *p = paths; *p; p++)
        max += *p == ':';
    s.f = xcalloc((size_t)max, sizeof *s.f);
    list = xstrdup(paths);
    for (char *p = strtok_r(list, ":", &save); p; p = strtok_r(NULL, ":", &save)) {
        int dup = 0;
        for (int i = 0; i < s.n && !dup; i++)
            dup = strcmp(s.f[i].path, p) == 0; /* client-go de-duplicates the list */
        if (dup)
            continue;
        size_t len = 0;
        char *data = util_read_file(p, &len);
        if (data == NULL && errno == ENOENT)
            continue; /* client-go skips files of the list that do not exist */
        if (data == NULL) {
            util_seterr(err, errlen, "kubeconfig %s: %s", p, strerror(errno));
            goto out;
        }
        struct kc_file *f = &s.f[s.n++];
        f->path = p;
        f->dir = dirname_of(p);
        int prc = parse_doc(f, data, len, err, errlen);
        free(data);
        if (prc < 0)
            goto out;
        buf_printf(&names, "%s%s", names.len ? ":" : "", p);
    }
    if (s.n == 0) {
        util_seterr(err, errlen, "kubeconfig %s: %s", paths,
                    strchr(paths, ':') ? "none of these files exists" : strerror(ENOENT));
        goto out;
    }
    label = buf_steal(&names);
    s.label = label;
    rc = load_context(&s, context && *context ? context : NULL, out, err, errlen);
out:
    set_free(&s);
    buf_free(&names);
    free(label);
    free(list);
    if (rc < 0)
        kube_config_free(out);
    return rc;
}

int kube_config_resolve(const char *kubeconfig, const char *context, kube_config *out, char *err,
                        size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (kubeconfig && *kubeconfig)
        return kube_config_load_kubeconfig(kubeconfig, context, out, err, errlen);
    const char *host = getenv("KUBERNETES_SERVICE_HOST");
    if (host && *host) {
        if (context && *context) {
            util_seterr(err, errlen, "--context/KUBE_CONTEXT \"%s\" needs a kubeconfig (KUBECONFIG), "
                                     "but none is set and this runs in-cluster", context);
            return -1;
        }
        return kube_config_in_cluster(out, err, errlen);
    }
    const char *home = getenv("HOME");
    if (home == NULL || *home == '\0') {
        util_seterr(err, errlen, "no kubeconfig: KUBECONFIG is not set, not in a pod "
                                 "(KUBERNETES_SERVICE_HOST unset), and $HOME is not set for ~/.kube/config");
        return -1;
    }
    char *path = xasprintf("%s/.kube/config", home);
    int rc;
    if (access(path, F_OK) != 0) {
        util_seterr(err, errlen, "no kubeconfig: KUBECONFIG is not set, not in a pod "
                                 "(KUBERNETES_SERVICE_HOST unset), and %s does not exist", path);
        rc = -1;
    } else {
        rc = kube_config_load_kubeconfig(path, context, out, err, errlen);
    }
    free(path);
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
