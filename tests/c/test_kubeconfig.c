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
    char *slash = strrchr(path, '/');
    *slash = '\0';
    mkdir(path, 0700); /* one level of sub-directory is enough here */
    *slash = '/';
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
    CHECK(kube_config_load_kubeconfig(path, &c, err, sizeof err) == 0);
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
    CHECK(kube_config_load_kubeconfig(path, &c, err, sizeof err) == 0);
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
    CHECK(kube_config_load_kubeconfig(path, &c, err, sizeof err) == 0);
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
    CHECK(kube_config_load_kubeconfig(path, &c, err, sizeof err) == -1);
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
    expect_error("exec.yaml",
                 "current-context: foo\ncontexts: [{name: foo, context: {cluster: c, user: u}}]\n"
                 "clusters: [{name: c, cluster: {server: 'https://x'}}]\n"
                 "users: [{name: u, user: {exec: {command: aws}}}]\n",
                 "exec credential plugin, which is not supported");
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
    CHECK(kube_config_load_kubeconfig("/nonexistent/kubeconfig", &c, err, sizeof err) == -1);
    CHECK_STR(err, "kubeconfig /nonexistent/kubeconfig: No such file or directory");
}

static void test_kubeconfig_env_first_entry(void)
{
    char *path = write_file("env.yaml", "current-context: a\n"
                                        "contexts: [{name: a, context: {cluster: a}}]\n"
                                        "clusters: [{name: a, cluster: {server: 'http://first:8080'}}]\n");
    char *list = xasprintf("%s:/nonexistent/second", path);
    kube_config c;
    char err[256] = "";
    setenv("KUBECONFIG", list, 1);
    CHECK(kube_config_load_kubeconfig(NULL, &c, err, sizeof err) == 0);
    CHECK_STR(c.server, "http://first:8080");
    kube_config_free(&c);
    unsetenv("KUBECONFIG");
    CHECK(kube_config_load_kubeconfig(NULL, &c, err, sizeof err) == -1);
    CHECK_CONTAINS(err, "$KUBECONFIG is not set");
    free(list);
    free(path);
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
    RUN(test_kubeconfig_env_first_entry);
    RUN(test_in_cluster);
    RUN(test_parse_survives_garbage);
    RUN(test_client_rejects_bad_config);
    nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return check_summary();
}
