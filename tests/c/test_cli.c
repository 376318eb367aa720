/* test_cli: the pure parts of check-rules — the C-side Deployment checks and
 * the bytecode lint (globals, require, line numbers). */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "names.h"
#include "rules_check.h"
#include "json.h"
#include "util.h"

/* ---- names_validate_deployment ------------------------------------------------- */

/* A valid Deployment with one field replaced: `at` is a text to find in the
 * template and `with` what to put there (NULL: unchanged). */
static const char valid[] =
    "{\"apiVersion\":\"apps/v1\",\"kind\":\"Deployment\","
    "\"metadata\":{\"name\":\"sync-airbnb-worker-1\",\"namespace\":\"ns\","
    "\"labels\":{\"app\":\"sync-airbnb-worker\",\"account-id\":\"1\",\"app.kubernetes.io/managed-by\":\"sync-airbnb-operator\"},"
    "\"annotations\":{\"sync-airbnb.io/account-id\":\"1\"}},"
    "\"spec\":{\"replicas\":1,\"selector\":{\"matchLabels\":{\"app\":\"sync-airbnb-worker\",\"account-id\":\"1\"}},"
    "\"template\":{\"metadata\":{\"labels\":{\"app\":\"sync-airbnb-worker\",\"account-id\":\"1\",\"extra\":\"x\"}},"
    "\"spec\":{\"containers\":[{\"name\":\"worker\",\"image\":\"sync-airbnb:latest\"}]}}}}";

static int validate_variant(const char *at, const char *with, char *err, size_t errlen)
{
    buf b = {0};
    const char *hit = at ? strstr(valid, at) : NULL;
    if (at && hit == NULL) {
        snprintf(err, errlen, "test bug: \"%s\" not in the template", at);
        return 99;
    }
    if (hit) {
        buf_append(&b, valid, (size_t)(hit - valid));
        buf_puts(&b, with);
        buf_puts(&b, hit + strlen(at));
    } else {
        buf_puts(&b, valid);
    }
    json_value *doc = json_parse(b.data, b.len, err, errlen);
    int rc = doc ? names_validate_deployment(doc, err, errlen) : 98;
    json_free(doc);
    buf_free(&b);
    return rc;
}

static void test_validate_accepts_the_template(void)
{
    char err[512] = "";
    CHECK(validate_variant(NULL, NULL, err, sizeof err) == 0);
    CHECK_STR(err, "");
}

static void expect_invalid(const char *at, const char *with, const char *why)
{
    char err[512] = "";
    int rc = validate_variant(at, with, err, sizeof err);
    CHECK(rc == -1);
    CHECK_CONTAINS(err, why);
}

static void test_validate_names(void)
{
    expect_invalid("\"sync-airbnb-worker-1\"", "\"Sync_Worker\"", "metadata.name \"Sync_Worker\" is not a DNS-1123 label");
    expect_invalid("\"sync-airbnb-worker-1\"", "\"-worker\"", "metadata.name");
    expect_invalid("\"sync-airbnb-worker-1\"", "\"\"", "metadata.name");
    expect_invalid("\"sync-airbnb-worker-1\"",
                   "\"a234567890123456789012345678901234567890123456789012345678901234\"", "metadata.name");
    char err[512];
    CHECK(validate_variant("\"sync-airbnb-worker-1\"",
                           "\"a23456789012345678901234567890123456789012345678901234567890123\"", err, sizeof err) == 0);
    expect_invalid("\"name\":\"sync-airbnb-worker-1\",", "", "metadata.name");
    expect_invalid("\"apps/v1\"", "\"v1\"", "apiVersion/kind");
}

static void test_validate_labels(void)
{
    expect_invalid("\"extra\":\"x\"", "\"bad key\":\"x\"", "\"bad key\" is not a valid key");
    expect_invalid("\"extra\":\"x\"", "\"-bad.io/x\":\"x\"", "not a valid key");
    expect_invalid("\"extra\":\"x\"", "\"a/b/c\":\"x\"", "not a valid key");
    expect_invalid("\"extra\":\"x\"", "\"extra\":\"-x\"", "is not a valid label value");
    expect_invalid("\"extra\":\"x\"", "\"extra\":\"a234567890123456789012345678901234567890123456789012345678901234\"",
                   "is not a valid label value");
    expect_invalid("\"extra\":\"x\"", "\"extra\":1", "must be a string");
    expect_invalid("\"sync-airbnb.io/account-id\":\"1\"", "\"sync-airbnb.io/account-id\":1",
                   "metadata.annotations[\"sync-airbnb.io/account-id\"] must be a string");
    char err[512];
    CHECK(validate_variant("\"extra\":\"x\"", "\"example.com/extra\":\"\"", err, sizeof err) == 0);
    CHECK(validate_variant("\"sync-airbnb.io/account-id\":\"1\"", "\"note\":\"any text, even with spaces\"", err,
                           sizeof err) == 0);
}

static void test_validate_selector(void)
{
    expect_invalid("\"matchLabels\":{\"app\":\"sync-airbnb-worker\"", "\"matchLabels\":{\"app\":\"other\"",
                   "spec.selector.matchLabels[\"app\"]=\"other\" is not among the pod template's labels (it has another value)");
    expect_invalid("\"matchLabels\":{\"app\":\"sync-airbnb-worker\"", "\"matchLabels\":{\"tier\":\"x\"",
                   "(it is missing)");
    expect_invalid("{\"matchLabels\":{\"app\":\"sync-airbnb-worker\",\"account-id\":\"1\"}}", "{\"matchLabels\":{}}",
                   "must not be empty");
    expect_invalid("\"selector\":", "\"selectorx\":", "spec.selector.matchLabels must be an object");
    expect_invalid("{\"labels\":{\"app\":\"sync-airbnb-worker\",\"account-id\":\"1\",\"extra\":\"x\"}}", "{}",
                   "spec.template.metadata.labels must be an object");
}

static void test_validate_containers(void)
{
    expect_invalid("[{\"name\":\"worker\",\"image\":\"sync-airbnb:latest\"}]", "[]", "non-empty array");
    expect_invalid("[{\"name\":\"worker\",\"image\":\"sync-airbnb:latest\"}]", "{}", "non-empty array");
    expect_invalid(",\"image\":\"sync-airbnb:latest\"", "", "containers[0] (worker) has no image");
    expect_invalid("\"image\":\"sync-airbnb:latest\"", "\"image\":\"\"", "has no image");
    expect_invalid("\"name\":\"worker\"", "\"name\":\"Worker\"", "containers[0].name");
    expect_invalid("[{\"name\":\"worker\",\"image\":\"sync-airbnb:latest\"}]",
                   "[{\"name\":\"worker\",\"image\":\"sync-airbnb:latest\"},{\"name\":\"side\"}]",
                   "containers[1] (side) has no image");
}

/* ---- rules_lint_chunk ------------------------------------------------------------ */

static strmap globals = STRMAP_INIT, modules = STRMAP_INIT;
static buf lint_out;

static void setup_maps(void)
{
    static const char *const g[] = {"print", "require", "string", "table", "pairs", "ipairs", "error", "type", NULL};
    static const char *const m[] = {"hash", "json", "log", "naming", NULL};
    for (int i = 0; g[i]; i++)
        strmap_put(&globals, g[i], (void *)1);
    for (int i = 0; m[i]; i++)
        strmap_put(&modules, m[i], (void *)1);
}

/* Lints src; returns the problems text (static buffer) and the count in *n. */
static const char *lint(const char *src, int *n)
{
    buf_reset(&lint_out);
    *n = rules_lint_chunk("t.lua", src, strlen(src), &globals, &modules, &lint_out);
    return lint_out.data ? lint_out.data : "";
}

static void test_lint_clean_chunk(void)
{
    int n;
    const char *out = lint("local json = require('json')\nlocal M = {}\nfunction M.f(t)\n"
                           "  for k, v in pairs(t) do print(k, string.format('%s', v)) end\nend\nreturn M\n",
                           &n);
    CHECK(n == 0);
    CHECK_STR(out, "");
}

static void test_lint_globals_with_lines(void)
{
    int n;
    const char *out = lint("local x = 1\ny = foo\n\n\nlocal function f()\n  return bar.baz\nend\n"
                           "print(io.open('/etc/passwd'))\nos.execute('true')\n",
                           &n);
    CHECK(n == 5);
    CHECK_CONTAINS(out, "t.lua:2: undeclared global 'foo'");
    CHECK_CONTAINS(out, "t.lua:2: assignment to global 'y'");
    CHECK_CONTAINS(out, "t.lua:6: undeclared global 'bar'");
    CHECK_CONTAINS(out, "t.lua:8: undeclared global 'io'");
    CHECK_CONTAINS(out, "t.lua:9: undeclared global 'os'");
    /* sorted by line */
    CHECK(strstr(out, "t.lua:6:") < strstr(out, "t.lua:8:"));
}

static void test_lint_nested_closures_and_env(void)
{
    int n;
    const char *out = lint("return function() return function() return baz end end\n", &n);
    CHECK(n == 1);
    CHECK_CONTAINS(out, "t.lua:1: undeclared global 'baz'");
    /* a local _ENV is not the sandbox's globals */
    out = lint("local _ENV = { x = 1 }\ny = x\nlocal function f() return z end\n", &n);
    CHECK(n == 0);
    out = lint("local function f(_ENV) return y end\nlocal function g() return w end\n", &n);
    CHECK(n == 1);
    CHECK_CONTAINS(out, "t.lua:2: undeclared global 'w'");
    /* setting an existing global is refused too */
    out = lint("print = nil\n", &n);
    CHECK(n == 1);
    CHECK_CONTAINS(out, "t.lua:1: assignment to global 'print'");
}

static void test_lint_require(void)
{
    int n;
    const char *out = lint("local a = require('json')\nlocal b = require 'cjson'\nlocal c = require('naming')\n"
                           "local d = require(\"ffi\")\n", &n);
    CHECK(n == 2);
    CHECK_CONTAINS(out, "t.lua:2: require of unknown module 'cjson'");
    CHECK_CONTAINS(out, "t.lua:4: require of unknown module 'ffi'");
    out = lint("local json = json\n", &n);
    CHECK(n == 1);
    CHECK_CONTAINS(out, "undeclared global 'json' (the rules' sandbox has no such global; require it into a local)");
}

static void test_lint_far_lines(void)
{
    /* More than 128 instructions and gaps over 127 lines: absolute line info. */
    buf src = {0};
    buf_puts(&src, "local t = {}\n");
    for (int i = 0; i < 300; i++)
        buf_puts(&src, "t.a = 1\n");
    for (int i = 0; i < 400; i++)
        buf_putc(&src, '\n');
    buf_puts(&src, "undeclared_here()\nlocal function g()\n");
    for (int i = 0; i < 200; i++)
        buf_puts(&src, "  t.b = 2\n");
    buf_puts(&src, "  return late\nend\n");
    buf out = {0};
    int n = rules_lint_chunk("far.lua", src.data, src.len, &globals, &modules, &out);
    CHECK(n == 2);
    CHECK_CONTAINS(out.data, "far.lua:702: undeclared global 'undeclared_here'");
    CHECK_CONTAINS(out.data, "far.lua:904: undeclared global 'late'");
    buf_free(&src);
    buf_free(&out);
}

static void test_lint_syntax_error(void)
{
    int n;
    const char *out = lint("local M = {\nfunction M.f() end\n", &n);
    CHECK(n == -1);
    CHECK_CONTAINS(out, "t.lua:2:");
    out = lint("\x1bLua", &n); /* bytecode is refused, as by the host */
    CHECK(n == -1);
    CHECK_CONTAINS(out, "attempt to load a binary chunk");
}

int main(void)
{
    setup_maps();
    RUN(test_validate_accepts_the_template);
    RUN(test_validate_names);
    RUN(test_validate_labels);
    RUN(test_validate_selector);
    RUN(test_validate_containers);
    RUN(test_lint_clean_chunk);
    RUN(test_lint_globals_with_lines);
    RUN(test_lint_nested_closures_and_env);
    RUN(test_lint_require);
    RUN(test_lint_far_lines);
    RUN(test_lint_syntax_error);
    strmap_free(&globals);
    strmap_free(&modules);
    buf_free(&lint_out);
    return check_summary();
}
