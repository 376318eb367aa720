/* Configuration: defaults, environment, flags, and one clear error per bad value. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "config.h"
#include "log.h"

static int load(int argc, char **argv, config *c, char *err, size_t errlen)
{
    return config_load(c, argc, argv, NULL, NULL, err, errlen);
}

static void clear_env(void)
{
    const char *vars[] = {"DATABASE_URL", "KUBECONFIG", "OPERATOR_NAMESPACE", "RULES_DIR",
                          "WORKER_IMAGE", "RESYNC_INTERVAL_SECONDS", "ACCOUNTS_TABLE",
                          "HEALTH_ADDR", "LOG_LEVEL", "LOG_FORMAT", "KUBE_SA_DIR", NULL};
    for (int i = 0; vars[i]; i++)
        unsetenv(vars[i]);
}

static void test_defaults(void)
{
    clear_env();
    config c;
    char err[256];
    CHECK(load(0, NULL, &c, err, sizeof err) == 0);
    CHECK(c.resync_interval_s == 30);
    CHECK_STR(c.worker_image, "sync-airbnb:0.1.0");
    CHECK_STR(c.accounts_schema, "airbnb");
    CHECK_STR(c.accounts_relname, "accounts");
    CHECK_STR(c.health_addr, ":8080");
    CHECK_STR(c.namespace, "sync-airbnb");
    CHECK(c.log_format == LOG_JSON && c.log_level == LOG_INFO);
    CHECK(c.database_url == NULL && c.kubeconfig == NULL);
    CHECK(strstr(c.rules_dir, "lua/rules") != NULL);
    config_free(&c);
}

static void test_env_and_flags(void)
{
    clear_env();
    setenv("RESYNC_INTERVAL_SECONDS", "45", 1);
    setenv("LOG_FORMAT", "text", 1);
    setenv("DATABASE_URL", "postgresql://u:secret@127.0.0.1:5/db", 1);
    char a0[] = "--resync-interval=7", a1[] = "--namespace", a2[] = "ns1", a3[] = "extra",
         a4[] = "-o", a5[] = "json";
    char *argv[] = {a0, a1, a2, a3, a4, a5};
    config c;
    char err[256];
    char **rest;
    int nrest;
    CHECK(config_load(&c, 6, argv, &rest, &nrest, err, sizeof err) == 0);
    CHECK(c.resync_interval_s == 7); /* the flag wins over the environment */
    CHECK_STR(c.namespace, "ns1");
    CHECK(c.log_format == LOG_TEXT);
    CHECK(c.output_json == 1);
    CHECK(nrest == 1 && strcmp(rest[0], "extra") == 0);
    config_free(&c);
    clear_env();
}

static void expect_error(const char *env, const char *value, char *flag, const char *want)
{
    clear_env();
    if (env)
        setenv(env, value, 1);
    char *argv[] = {flag};
    config c;
    char err[256] = "";
    CHECK(load(flag ? 1 : 0, argv, &c, err, sizeof err) == -1);
    CHECK_CONTAINS(err, want);
    CHECK(strchr(err, '\n') == NULL); /* one line */
    CHECK(strstr(err, "hunter2") == NULL); /* a password never appears */
    config_free(&c);
    clear_env();
}

static void test_bad_values(void)
{
    char unknown[] = "--frobnicate", badint[] = "--resync-interval=abc", zero[] = "--resync-interval=0";
    expect_error(NULL, NULL, unknown, "unknown flag --frobnicate");
    expect_error(NULL, NULL, badint, "--resync-interval: invalid value \"abc\"");
    expect_error(NULL, NULL, zero, "invalid value \"0\"");
    expect_error("RESYNC_INTERVAL_SECONDS", "30s", NULL, "RESYNC_INTERVAL_SECONDS: invalid value \"30s\"");
    expect_error("DATABASE_URL", "not a url", NULL, "DATABASE_URL: malformed");
    expect_error("DATABASE_URL", "postgresql://u:hunter2@host/db?bogus_option=1", NULL, "DATABASE_URL: malformed");
    expect_error("KUBECONFIG", "/nonexistent/kubeconfig", NULL, "KUBECONFIG: cannot read");
    expect_error("LOG_LEVEL", "loud", NULL, "LOG_LEVEL: invalid value");
    expect_error("ACCOUNTS_TABLE", "airbnb.accounts; drop table x", NULL, "ACCOUNTS_TABLE: invalid value");
    expect_error("ACCOUNTS_TABLE", "Airbnb.Accounts", NULL, "ACCOUNTS_TABLE: invalid value");
}

static void test_in_cluster_namespace_file(void)
{
    clear_env();
    char dir[] = "/tmp/sao-sa-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[300];
    snprintf(path, sizeof path, "%s/namespace", dir);
    FILE *f = fopen(path, "w");
    fputs("team-a\n", f);
    fclose(f);
    setenv("KUBE_SA_DIR", dir, 1);
    config c;
    char err[256];
    CHECK(load(0, NULL, &c, err, sizeof err) == 0);
    CHECK_STR(c.namespace, "team-a");
    config_free(&c);
    unlink(path);
    rmdir(dir);
    clear_env();
}

int main(void)
{
    RUN(test_defaults);
    RUN(test_env_and_flags);
    RUN(test_bad_values);
    RUN(test_in_cluster_namespace_file);
    return check_summary();
}
