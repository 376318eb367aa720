/* Kubeconfig and in-cluster configuration loading (kubeconfig.c). Files are
 * written into a fresh temporary directory. */
#define _GNU_SOURCE
#include <ftw.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "kube.h"
#include "util.h"

static char tmpdir[64];

static char *write_file(const char *name, const char *text)
{
    char *path = xasprintf("%s/%s", tmpdir, name);
    for (char *slash = strchr(path + strlen(tmpdir) + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
        *slash = '\0';
        mkdir(path, 0700);
        *slash = '/';
    }
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
    return path;
}

static char *b64(const char *s)
{
    size_t n = strlen(s);
    char *out = xmalloc(4 * ((n + 2) / 3) + 1);
    EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)s, (int)n);
    return out;
}

static void test_token_user_and_context_choice(void)
{
    char *path = write_file("token.yaml",
                            "apiVersion: v1\n"
                            "kind: Config\n"
                            "current-context: dev\n"
                            "contexts:\n"
                            "- name: other\n"
                            "  context: {cluster: nope, user: nope}\n"
                            "- name: dev\n"
                            "  context:\n"
                            "    cluster: c1\n"
                            "    user: u1\n"
                            "    namespace: team-a\n"
                            "clusters:\n"
                            "- name: c1\n"
                            "  cluster:\n"
                            "    server: https://10.0.0.1:6443/\n"
                            "    insecure-skip-tls-verify: true\n"
                            "users:\n"
                            "- name: u1\n"
                            "  user:\n"
                            "    token: abc.def\n");
    kube_config c;
    char err[256] = "";
    CHECK(kube_config_load_kubeconfig(path, NULL, &c, err, sizeof err) == 0);
    CHECK_STR(c.server, "https://10.0.0.1:6443");
    CHECK_STR(c.token, "abc.def");
    CHECK_STR(c.namespace, "team-a");
    CHECK(c.insecure_skip_tls_verify == 1);
    CHECK(c.ca_file == NULL && c.ca_pem == NULL && c.token_file == NULL);
    kube_config_free(&c);
    CHECK(c.server == NULL);
    free(path);
}

static void test_client_cert_and_ca_data(void)
{
    const char *ca = "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n";
    const char *cert = "-----BEGIN CERTIFICATE-----\nCERT\n-----END CERTIFICATE-----\n";
    const char *key = "-----BEGIN PRIVATE KEY-----\nKEY\n-----END PRIVATE KEY-----\n";
    char *ca64 = b64(ca), *cert64 = b64(cert), *key64 = b64(key);
    char *text = xasprintf("current-context: kind\n"
                           "contexts: [{name: kind, context: {cluster: kind, user: admin}}]\n"
                           "clusters:\n"
                           "- name: kind\n"
                           "  cluster:\n"
                           "    certificate-authority-data: %s\n"
                           "    certificate-authority: ignored-because-data-wins.crt\n"
                           "    server: https://127.0.0.1:38443\n"
                           "users:\n"
                           "- name: admin\n"
                           "  user:\n"
                           "    client-certificate-data: %s\n"
                           "    client-key-data: %s\n",
                           ca64, cert64, key64);
    char *path = write_file("certdata.yaml", text);
    kube_config c;
    char err[256] = "";
    CHECK(kube_config_load_kubeconfig(path, NULL, &c, err, sizeof err) == 0);
    CHECK_STR(c.ca_pem, ca);
    CHECK(c.ca_file == NULL);
    CHECK_STR(c.client_cert_pem, cert);
    CHECK_STR(c.client_key_pem, key);
    CHECK(c.token == NULL && c.namespace == NULL && c.insecure_skip_tls_verify == 0);
    kube_config_free(&c);
    free(path);
    free(text);
    free(ca64);
    free(cert64);
    free(key64);
}

static void test_relative_files_resolve_against_kubeconfig_dir(void)
{
    char *path = write_file("sub/files.yaml",
                            "current-context: c\n"
                            "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
                            "clusters: [{name: c, cluster: {server: 'https://k:6443', certificate-authority: certs/ca.crt}}]\n"
                            "users:\n"
                            "- name: u\n"
                            "  user:\n"
                            "    client-certificate: /abs/client.crt\n"
                            "    client-key: client.key\n"
                            "    tokenFile: ./token\n");
    kube_config c;
    char err[256] = "";
    char *want_ca = xasprintf("%s/sub/certs/ca.crt", tmpdir);
    char *want_key = xasprintf("%s/sub/client.key", tmpdir);
    char *want_token = xasprintf("%s/sub/./token", tmpdir);
    CHECK(kube_config_load_kubeconfig(path, NULL, &c, err, sizeof err) == 0);
    CHECK_STR(c.ca_file, want_ca);
    CHECK_STR(c.client_cert_file, "/abs/client.crt");
    CHECK_STR(c.client_key_file, want_key);
    CHECK_STR(c.token_file, want_token);
    kube_config_free(&c);
    free(want_ca);
    free(want_key);
    free(want_token);
    free(path);
}

/* Loads text and expects failure with an error containing want. */
static void expect_error(const char *name, const char *text, const char *want)
{
    char *path = write_file(name, text);
    kube_config c;
    char err[512] = "";
    CHECK(kube_config_load_kubeconfig(path, NULL, &c, err, sizeof err) == -1);
    CHECK_CONTAINS(err, want);
    CHECK_CONTAINS(err, path); /* every error names the file */
    CHECK(c.server == NULL && c.token == NULL); /* nothing left allocated */
    free(path);
}

static void test_clear_errors(void)
{
    expect_error("nocur.yaml", "contexts: []\nclusters: []\n", ": no current-context");
    expect_error("noctx.yaml", "current-context: foo\ncontexts: [{name: bar, context: {cluster: c}}]\n",
                 "context \"foo\" not found");
    expect_error("nocluster.yaml",
                 "current-context: foo\ncontexts: [{name: foo, context: {cluster: c, user: u}}]\n",
                 "cluster \"c\" (of context \"foo\") not found");
    expect_error("nouser.yaml",
                 "current-context: foo\ncontexts: [{name: foo, context: {cluster: c, user: u}}]\n"
                 "clusters: [{name: c, cluster: {server: 'https://x'}}]\n",
                 "user \"u\" (of context \"foo\") not found");
    expect_error("noserver.yaml",
                 "current-context: foo\ncontexts: [{name: foo, context: {cluster: c}}]\n"
                 "clusters: [{name: c, cluster: {insecure-skip-tls-verify: true}}]\n",
                 "cluster \"c\" has no server");
    expect_error("bad.yaml", "current-context: [unclosed\nclusters:\n  - a: b\n", "line ");
    expect_error("empty.yaml", "", "not a kubeconfig");
    expect_error("authprov.yaml",
                 "current-context: foo\ncontexts: [{name: foo, context: {cluster: c, user: u}}]\n"
                 "clusters: [{name: c, cluster: {server: 'https://x'}}]\n"
                 "users: [{name: u, user: {auth-provider: {name: gcp}}}]\n",
                 "auth-provider plugin, which is not supported");
    expect_error("exec-noversion.yaml",
                 "current-context: foo\ncontexts: [{name: foo, context: {cluster: c, user: u}}]\n"
                 "clusters: [{name: c, cluster: {server: 'https://x'}}]\n"
                 "users: [{name: u, user: {exec: {command: aws}}}]\n",
                 "exec apiVersion \"\" is not supported");
    expect_error("exec-nomode.yaml",
                 "current-context: foo\ncontexts: [{name: foo, context: {cluster: c, user: u}}]\n"
                 "clusters: [{name: c, cluster: {server: 'https://x'}}]\n"
                 "users: [{name: u, user: {exec: {command: aws, apiVersion: client.authentication.k8s.io/v1}}}]\n",
                 "interactiveMode must be set");
    expect_error("exec-badmode.yaml",
                 "current-context: foo\ncontexts: [{name: foo, context: {cluster: c, user: u}}]\n"
                 "clusters: [{name: c, cluster: {server: 'https://x'}}]\n"
                 "users: [{name: u, user: {exec: {command: aws, interactiveMode: Sometimes,\n"
                 "  apiVersion: client.authentication.k8s.io/v1}}}]\n",
                 "interactiveMode \"Sometimes\" is not");
    expect_error("exec-noname.yaml",
                 "current-context: foo\ncontexts: [{name: foo, context: {cluster: c, user: u}}]\n"
                 "clusters: [{name: c, cluster: {server: 'https://x'}}]\n"
                 "users: [{name: u, user: {exec: {command: aws, interactiveMode: Never, env: [{value: x}],\n"
                 "  apiVersion: client.authentication.k8s.io/v1}}}]\n",
                 "every exec env entry needs a name");
    expect_error("proxy.yaml",
                 "current-context: foo\ncontexts: [{name: foo, context: {cluster: c}}]\n"
                 "clusters: [{name: c, cluster: {server: 'https://x', proxy-url: 'ftp://p:1'}}]\n",
                 "proxy-url must be an http, https or socks5 URL");
    expect_error("b64.yaml",
                 "current-context: foo\ncontexts: [{name: foo, context: {cluster: c, user: u}}]\n"
                 "clusters: [{name: c, cluster: {server: 'https://x'}}]\n"
                 "users: [{name: u, user: {client-certificate-data: '!!notbase64!!', client-key: k}}]\n",
                 "client-certificate-data is not valid base64");
    expect_error("certnokey.yaml",
                 "current-context: foo\ncontexts: [{name: foo, context: {cluster: c, user: u}}]\n"
                 "clusters: [{name: c, cluster: {server: 'https://x'}}]\n"
                 "users: [{name: u, user: {client-certificate: c.crt}}]\n",
                 "certificate and key must be given together");
    expect_error("insecure.yaml",
                 "current-context: foo\ncontexts: [{name: foo, context: {cluster: c}}]\n"
                 "clusters: [{name: c, cluster: {server: 'https://x', insecure-skip-tls-verify: maybe}}]\n",
                 "insecure-skip-tls-verify is not true/false");
}

static void test_missing_file(void)
{
    kube_config c;
    char err[256] = "";
    CHECK(kube_config_load_kubeconfig("/nonexistent/kubeconfig", NULL, &c, err, sizeof err) == -1);
    CHECK_STR(err, "kubeconfig /nonexistent/kubeconfig: No such file or directory");
}

/* client-go's merge of a $KUBECONFIG list: missing files skipped, the
 * first file to name a context/cluster/user wins (whole entry), the first
 * current-context wins, relative paths resolve against the file that named
 * them, --context picks another context. */
static void test_kubeconfig_list_merge(void)
{
    char *a = write_file("m1/a.yaml", "current-context: dev\n"
                                      "contexts: [{name: dev, context: {cluster: shared, user: alice, namespace: a-ns}}]\n"
                                      "clusters: [{name: shared, cluster: {server: 'https://from-a:1', certificate-authority: ca.crt}}]\n"
                                      "users: [{name: alice, user: {tokenFile: tok}}]\n");
    char *b = write_file("m2/b.yaml", "current-context: prod\n"
                                      "contexts:\n"
                                      "- {name: dev, context: {cluster: other, user: bob}}\n"
                                      "- {name: prod, context: {cluster: shared, user: bob}}\n"
                                      "- {name: ops, context: {cluster: ops, user: bob}}\n"
                                      "clusters:\n"
                                      "- {name: shared, cluster: {server: 'https://from-b:2'}}\n"
                                      "- {name: ops, cluster: {server: 'https://ops:3', proxy-url: 'http://proxy:3128',\n"
                                      "   certificate-authority: ops-ca.crt}}\n"
                                      "users: [{name: bob, user: {token: bob-token}}]\n");
    char *list = xasprintf("/nonexistent/first:%s::%s:%s", a, b, a);
    kube_config c;
    char err[512] = "";
    CHECK(kube_config_load_kubeconfig(list, NULL, &c, err, sizeof err) == 0);
    CHECK_STR(c.context, "dev");                 /* a's current-context wins over b's */
    CHECK_STR(c.server, "https://from-a:1");     /* a's cluster "shared" wins over b's */
    CHECK_STR(c.namespace, "a-ns");
    char *want = xasprintf("%s/m1/ca.crt", tmpdir);
    CHECK_STR(c.ca_file, want);                  /* relative to a.yaml's directory */
    free(want);
    want = xasprintf("%s/m1/tok", tmpdir);
    CHECK_STR(c.token_file, want);
    free(want);
    CHECK(c.proxy_url == NULL);
    kube_config_free(&c);

    /* --context: a context only b has, whose cluster only b has: b's directory. */
    CHECK(kube_config_load_kubeconfig(list, "ops", &c, err, sizeof err) == 0);
    CHECK_STR(c.server, "https://ops:3");
    CHECK_STR(c.proxy_url, "http://proxy:3128");
    CHECK_STR(c.token, "bob-token");
    want = xasprintf("%s/m2/ops-ca.crt", tmpdir);
    CHECK_STR(c.ca_file, want);
    free(want);
    kube_config_free(&c);
    /* b's "prod" uses the cluster "shared", which a defined first. */
    CHECK(kube_config_load_kubeconfig(list, "prod", &c, err, sizeof err) == 0);
    CHECK_STR(c.server, "https://from-a:1");
    kube_config_free(&c);

    CHECK(kube_config_load_kubeconfig(list, "nope", &c, err, sizeof err) == -1);
    CHECK_CONTAINS(err, "context \"nope\" not found");
    CHECK_CONTAINS(err, a); /* names the merged files */
    CHECK_CONTAINS(err, b);

    /* $KUBECONFIG is read when no path is given. */
    setenv("KUBECONFIG", list, 1);
    CHECK(kube_config_load_kubeconfig(NULL, "ops", &c, err, sizeof err) == 0);
    CHECK_STR(c.server, "https://ops:3");
    kube_config_free(&c);
    unsetenv("KUBECONFIG");
    CHECK(kube_config_load_kubeconfig(NULL, NULL, &c, err, sizeof err) == -1);
    CHECK_CONTAINS(err, "$KUBECONFIG is not set");

    /* A file of the list that does not parse is an error, not skipped. */
    char *bad = write_file("m2/bad.yaml", "current-context: [x\n");
    char *badlist = xasprintf("%s:%s", bad, a);
    CHECK(kube_config_load_kubeconfig(badlist, NULL, &c, err, sizeof err) == -1);
    CHECK_CONTAINS(err, bad);
    free(badlist);
    free(bad);
    free(list);
    free(a);
    free(b);
}

/* Where the operator connects: the list when given, else in-cluster in a
 * pod, else ~/.kube/config; --context needs a kubeconfig. */
static void test_resolve_order(void)
{
    char *home = xasprintf("%s/home", tmpdir);
    char *cfg = write_file("home/.kube/config", "current-context: h\n"
                                                "contexts: [{name: h, context: {cluster: h}}, {name: g, context: {cluster: g}}]\n"
                                                "clusters: [{name: h, cluster: {server: 'https://home:1'}},\n"
                                                "           {name: g, cluster: {server: 'https://g:2'}}]\n");
    char *old_home = getenv("HOME") ? xstrdup(getenv("HOME")) : NULL;
    kube_config c;
    char err[512] = "";
    unsetenv("KUBERNETES_SERVICE_HOST");
    setenv("HOME", home, 1);
    CHECK(kube_config_resolve(NULL, NULL, &c, err, sizeof err) == 0);
    CHECK_STR(c.server, "https://home:1");
    kube_config_free(&c);
    CHECK(kube_config_resolve("", "g", &c, err, sizeof err) == 0);
    CHECK_STR(c.server, "https://g:2");
    kube_config_free(&c);
    setenv("HOME", "/nonexistent-home", 1);
    CHECK(kube_config_resolve(NULL, NULL, &c, err, sizeof err) == -1);
    CHECK_CONTAINS(err, "/nonexistent-home/.kube/config does not exist");
    setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1", 1);
    CHECK(kube_config_resolve(NULL, "g", &c, err, sizeof err) == -1);
    CHECK_CONTAINS(err, "needs a kubeconfig");
    unsetenv("KUBERNETES_SERVICE_HOST");
    CHECK(kube_config_resolve(cfg, "g", &c, err, sizeof err) == 0);
    CHECK_STR(c.server, "https://g:2");
    kube_config_free(&c);
    if (old_home)
        setenv("HOME", old_home, 1);
    free(old_home);
    free(cfg);
    free(home);
}

/* The exec stanza as client-go reads it. */
static void test_exec_stanza(void)
{
    char *path = write_file("x/exec.yaml",
                            "current-context: e\n"
                            "contexts: [{name: e, context: {cluster: c, user: u}}]\n"
                            "clusters: [{name: c, cluster: {server: 'https://x'}}]\n"
                            "users:\n"
                            "- name: u\n"
                            "  user:\n"
                            "    exec:\n"
                            "      apiVersion: client.authentication.k8s.io/v1\n"
                            "      command: ./bin/get-token\n"
                            "      args: [--cluster, prod]\n"
                            "      env: [{name: AWS_PROFILE, value: ops}, {name: EMPTY}]\n"
                            "      interactiveMode: Never\n"
                            "      provideClusterInfo: true\n"
                            "      installHint: install get-token\n");
    kube_config c;
    char err[512] = "";
    CHECK(kube_config_load_kubeconfig(path, NULL, &c, err, sizeof err) == 0);
    CHECK(c.exec != NULL);
    if (c.exec) {
        char *want = xasprintf("%s/x/bin/get-token", tmpdir);
        CHECK_STR(c.exec->command, want); /* has a '/': relative to the kubeconfig */
        free(want);
        CHECK(c.exec->nargs == 2);
        CHECK_STR(c.exec->args[1], "prod");
        CHECK(c.exec->nenv == 2);
        CHECK_STR(c.exec->env[0], "AWS_PROFILE=ops");
        CHECK_STR(c.exec->env[1], "EMPTY=");
        CHECK(c.exec->interactive_mode == KUBE_EXEC_INTERACTIVE_NEVER);
        CHECK(c.exec->provide_cluster_info == 1);
        CHECK_STR(c.exec->install_hint, "install get-token");
    }
    kube_config_free(&c);
    free(path);
    /* A bare name is looked up in $PATH; v1beta1 defaults to IfAvailable. */
    path = write_file("x/exec2.yaml",
                      "current-context: e\n"
                      "contexts: [{name: e, context: {cluster: c, user: u}}]\n"
                      "clusters: [{name: c, cluster: {server: 'https://x'}}]\n"
                      "users: [{name: u, user: {exec: {command: aws, apiVersion: client.authentication.k8s.io/v1beta1}}}]\n");
    CHECK(kube_config_load_kubeconfig(path, NULL, &c, err, sizeof err) == 0);
    CHECK(c.exec && strcmp(c.exec->command, "aws") == 0 &&
          c.exec->interactive_mode == KUBE_EXEC_INTERACTIVE_IF_AVAILABLE);
    kube_config_free(&c);
    free(path);
}

static void test_exec_credential_output(void)
{
    kube_exec_credential cr;
    char err[256] = "";
    const char *v1 = "client.authentication.k8s.io/v1";
    const char *ok = "{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\","
                     "\"status\":{\"token\":\"t0k\",\"expirationTimestamp\":\"2030-01-02T03:04:05Z\"}}";
    CHECK(kube_exec_parse_credential(ok, strlen(ok), v1, &cr, err, sizeof err) == 0);
    CHECK_STR(cr.token, "t0k");
    CHECK(cr.expires_ms == 1893553445000LL);
    kube_exec_credential_free(&cr);
    const char *offset = "{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\","
                         "\"status\":{\"token\":\"t\",\"expirationTimestamp\":\"2030-01-02T05:04:05.123+02:00\"}}";
    CHECK(kube_exec_parse_credential(offset, strlen(offset), v1, &cr, err, sizeof err) == 0);
    CHECK(cr.expires_ms == 1893553445000LL);
    kube_exec_credential_free(&cr);
    const char *cert = "{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\","
                       "\"status\":{\"clientCertificateData\":\"C\",\"clientKeyData\":\"K\"}}";
    CHECK(kube_exec_parse_credential(cert, strlen(cert), v1, &cr, err, sizeof err) == 0);
    CHECK(cr.token == NULL && cr.expires_ms == 0);
    CHECK_STR(cr.client_key_pem, "K");
    kube_exec_credential_free(&cr);

    static const struct { const char *out, *want; } bad[] = {
        {"not json", "not an ExecCredential JSON object"},
        {"{\"apiVersion\":\"client.authentication.k8s.io/v1beta1\",\"kind\":\"ExecCredential\",\"status\":{\"token\":\"t\"}}",
         "answered apiVersion \"client.authentication.k8s.io/v1beta1\""},
        {"{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"Secret\"}", "kind \"Secret\""},
        {"{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\"}", "has no status"},
        {"{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{}}",
         "neither a token nor"},
        {"{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":"
         "{\"clientCertificateData\":\"C\"}}", "not both"},
        {"{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":"
         "{\"token\":\"secret-tok\",\"expirationTimestamp\":\"tomorrow\"}}", "is not RFC 3339"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(kube_exec_parse_credential(bad[i].out, strlen(bad[i].out), v1, &cr, err, sizeof err) == -1);
        CHECK_CONTAINS(err, bad[i].want);
        CHECK(strstr(err, "secret-tok") == NULL);
        CHECK(cr.token == NULL);
    }
}

/* A real plugin process: env, args, KUBERNETES_EXEC_INFO, caching until
 * the expiry, a 401 re-runs it, a failing plugin is a clear error. */
static void test_exec_plugin_runs(void)
{
    char *count = xasprintf("%s/plugin-runs", tmpdir);
    char *script_text = xasprintf(
        "#!/bin/sh\n"
        "echo run >> %s\n"
        "n=$(wc -l < %s)\n"
        "printf '%%s\\n' \"$KUBERNETES_EXEC_INFO\" > %s.info\n"
        "[ \"$1\" = --cluster ] && [ \"$2\" = prod ] && [ \"$PLUGIN_ENV\" = yes ] || exit 3\n"
        "case \"$MODE\" in\n"
        "  fail) echo 'plugin: no login session' >&2; exit 7 ;;\n"
        "  expired) exp=2001-01-01T00:00:00Z ;;\n"
        "  *) exp=2099-01-01T00:00:00Z ;;\n"
        "esac\n"
        "printf '{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\","
        "\"status\":{\"token\":\"tok-%%s\",\"expirationTimestamp\":\"%%s\"}}' \"$n\" \"$exp\"\n",
        count, count, count);
    char *script = write_file("plugin/get-token", script_text);
    chmod(script, 0755);
    free(script_text);

    kube_exec_config x = {0};
    char *args[] = {"--cluster", "prod"}, *env[] = {"PLUGIN_ENV=yes"};
    x.command = script;
    x.args = args;
    x.nargs = 2;
    x.env = env;
    x.nenv = 1;
    x.api_version = "client.authentication.k8s.io/v1";
    x.interactive_mode = KUBE_EXEC_INTERACTIVE_NEVER;
    x.provide_cluster_info = 1;
    kube_config k = {.server = "https://api:6443", .ca_pem = "CA-PEM", .exec = &x};
    char err[512] = "";

    setenv("MODE", "ok", 1);
    kube_exec *e = kube_exec_new(&k);
    const kube_exec_credential *cr = kube_exec_get(e, err, sizeof err);
    CHECK(cr && cr->token && strcmp(cr->token, "tok-1") == 0);
    cr = kube_exec_get(e, err, sizeof err); /* cached: not expired */
    CHECK(cr && cr->token && strcmp(cr->token, "tok-1") == 0);
    kube_exec_invalidate(e);                /* a 401 */
    cr = kube_exec_get(e, err, sizeof err);
    CHECK(cr && cr->token && strcmp(cr->token, "tok-2") == 0);
    char *info_path = xasprintf("%s.info", count);
    char *info = util_read_file(info_path, NULL);
    CHECK_CONTAINS(info, "\"kind\":\"ExecCredential\"");
    CHECK_CONTAINS(info, "\"interactive\":false");
    CHECK_CONTAINS(info, "\"server\":\"https://api:6443\"");
    CHECK_CONTAINS(info, "\"certificate-authority-data\":\"Q0EtUEVN\""); /* base64("CA-PEM") */
    free(info);

    setenv("MODE", "expired", 1);
    kube_exec_invalidate(e);
    cr = kube_exec_get(e, err, sizeof err); /* tok-3, already expired ... */
    CHECK(cr && strcmp(cr->token, "tok-3") == 0);
    cr = kube_exec_get(e, err, sizeof err); /* ... so the next use runs it again */
    CHECK(cr && strcmp(cr->token, "tok-4") == 0);

    setenv("MODE", "fail", 1);
    kube_exec_invalidate(e);
    CHECK(kube_exec_get(e, err, sizeof err) == NULL);
    CHECK_CONTAINS(err, "exited with status 7");
    CHECK_CONTAINS(err, script);
    kube_exec_free(e);
    unsetenv("MODE");

    x.command = "/nonexistent/get-token";
    x.install_hint = "Install it with: apt install get-token";
    e = kube_exec_new(&k);
    CHECK(kube_exec_get(e, err, sizeof err) == NULL);
    CHECK_CONTAINS(err, "cannot run it");
    CHECK_CONTAINS(err, "apt install get-token");
    kube_exec_free(e);

    /* kube_client_new runs the plugin at once: a failing one stops it. */
    x.command = script;
    x.install_hint = NULL;
    setenv("MODE", "fail", 1);
    CHECK(kube_client_new(&k, err, sizeof err) == NULL);
    CHECK_CONTAINS(err, "exited with status 7");
    unsetenv("MODE");
    free(info_path);
    free(count);
    free(script);
}

static void test_in_cluster(void)
{
    char *tok = write_file("sa/token", "eyJhbGciOi.secret-token\n");
    char *ca = write_file("sa/ca.crt", "-----BEGIN CERTIFICATE-----\n");
    char *ns = write_file("sa/namespace", "sync-airbnb\n");
    char *dir = xasprintf("%s/sa", tmpdir);
    kube_config c;
    char err[256] = "";

    setenv("KUBE_SA_DIR", dir, 1);
    setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1", 1);
    setenv("KUBERNETES_SERVICE_PORT", "443", 1);
    CHECK(kube_config_in_cluster(&c, err, sizeof err) == 0);
    CHECK_STR(c.server, "https://10.96.0.1:443");
    CHECK_STR(c.token, "eyJhbGciOi.secret-token");
    CHECK_STR(c.token_file, tok);
    CHECK_STR(c.ca_file, ca);
    CHECK_STR(c.namespace, "sync-airbnb");
    kube_config_free(&c);

    setenv("KUBERNETES_SERVICE_HOST", "fd00:10:96::1", 1);
    CHECK(kube_config_in_cluster(&c, err, sizeof err) == 0);
    CHECK_STR(c.server, "https://[fd00:10:96::1]:443");
    kube_config_free(&c);

    /* The namespace file is optional; the token is not, and the error names
     * the file but never its content. */
    unlink(ns);
    CHECK(kube_config_in_cluster(&c, err, sizeof err) == 0);
    CHECK(c.namespace == NULL);
    kube_config_free(&c);
    unlink(tok);
    CHECK(kube_config_in_cluster(&c, err, sizeof err) == -1);
    CHECK_CONTAINS(err, tok);
    CHECK(strstr(err, "secret-token") == NULL);

    unsetenv("KUBERNETES_SERVICE_HOST");
    CHECK(kube_config_in_cluster(&c, err, sizeof err) == -1);
    CHECK_CONTAINS(err, "KUBERNETES_SERVICE_HOST");
    unsetenv("KUBERNETES_SERVICE_PORT");
    unsetenv("KUBE_SA_DIR");
    free(tok);
    free(ca);
    free(ns);
    free(dir);
}

/* The in-memory entry (the fuzzing target) survives arbitrary bytes: cut
 * every prefix of a valid kubeconfig and flip bytes one at a time. */
static void test_parse_survives_garbage(void)
{
    const char *good = "current-context: c\n"
                       "contexts: [{name: c, context: {cluster: c, user: u, namespace: n}}]\n"
                       "clusters: [{name: c, cluster: {server: 'https://k', certificate-authority-data: QUJD}}]\n"
                       "users: [{name: u, user: {token: t, client-certificate-data: QUJD, client-key: k}}]\n";
    size_t n = strlen(good);
    kube_config c;
    char err[256];
    CHECK(kube_config_parse_kubeconfig(good, n, "mem", NULL, &c, err, sizeof err) == 0);
    CHECK_STR(c.ca_pem, "ABC");
    CHECK_STR(c.client_key_file, "k");
    kube_config_free(&c);
    char *copy = xmalloc(n);
    for (size_t i = 0; i <= n; i++) {
        if (kube_config_parse_kubeconfig(good, i, "mem", "/d", &c, err, sizeof err) == 0)
            kube_config_free(&c);
        memcpy(copy, good, n);
        if (i < n)
            copy[i] = (char)(copy[i] ^ 0x5a);
        if (kube_config_parse_kubeconfig(copy, n, "mem", "/d", &c, err, sizeof err) == 0)
            kube_config_free(&c);
    }
    free(copy);
}

static void test_client_rejects_bad_config(void)
{
    kube_config c = {0};
    char err[256] = "";
    CHECK(kube_client_new(&c, err, sizeof err) == NULL);
    CHECK_CONTAINS(err, "no API server URL");
    c.server = "ftp://x";
    CHECK(kube_client_new(&c, err, sizeof err) == NULL);
    CHECK_CONTAINS(err, "not an http(s) URL");
    c.server = "https://x";
    c.token_file = "/nonexistent/token";
    CHECK(kube_client_new(&c, err, sizeof err) == NULL);
    CHECK_CONTAINS(err, "token file /nonexistent/token");
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/sao-kubeconfig-XXXXXX");
    if (mkdtemp(tmpdir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_token_user_and_context_choice);
    RUN(test_client_cert_and_ca_data);
    RUN(test_relative_files_resolve_against_kubeconfig_dir);
    RUN(test_clear_errors);
    RUN(test_missing_file);
    RUN(test_kubeconfig_list_merge);
    RUN(test_resolve_order);
    RUN(test_exec_stanza);
    RUN(test_exec_credential_output);
    RUN(test_exec_plugin_runs);
    RUN(test_in_cluster);
    RUN(test_parse_survives_garbage);
    RUN(test_client_rejects_bad_config);
    nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return check_summary();
}
