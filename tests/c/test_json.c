/* JSON: the C DOM and the Lua `json` module (canonical encoding, [] and null
 * round trips, malformed input, depth bounds). */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "json.h"
#include "luahost.h"

static void test_dom_parse_and_lookup(void)
{
    const char *text = "{\"metadata\":{\"name\":\"w-1\",\"generation\":3,\"labels\":{}},"
                       "\"items\":[1,\"two\",null,true],\"s\":\"a\\u00e9\\ud83d\\ude00\\n\"}";
    char err[128];
    json_value *v = json_parse(text, strlen(text), err, sizeof err);
    CHECK(v != NULL);
    CHECK_STR(json_string(json_path(v, "metadata", "name", NULL)), "w-1");
    CHECK(json_number(json_path(v, "metadata", "generation", NULL), 0) == 3);
    CHECK(json_typeof(json_path(v, "metadata", "labels", NULL)) == JSON_OBJECT);
    CHECK(json_len(json_get(v, "items")) == 4);
    CHECK(json_typeof(json_at(json_get(v, "items"), 2)) == JSON_NULL);
    CHECK(json_bool(json_at(json_get(v, "items"), 3), 0) == 1);
    CHECK_STR(json_string(json_get(v, "s")), "a\xc3\xa9\xf0\x9f\x98\x80\n");
    CHECK(json_path(v, "metadata", "missing", "deeper", NULL) == NULL);
    buf b = {0};
    json_write(&b, v);
    CHECK_CONTAINS(b.data, "\"labels\":{}");
    CHECK_CONTAINS(b.data, "[1,\"two\",null,true]");
    buf_free(&b);
    json_free(v);
}

static void test_dom_rejects_malformed(void)
{
    const char *bad[] = {"", "{", "[1,]", "{\"a\" 1}", "tru", "\"\\x\"", "01", "1.", "[1] x",
                         "\"unterminated", "{\"a\":\"\x01\"}", NULL};
    char err[128];
    for (int i = 0; bad[i]; i++) {
        json_value *v = json_parse(bad[i], strlen(bad[i]), err, sizeof err);
        CHECK(v == NULL);
        CHECK_CONTAINS(err, "invalid JSON at byte");
        json_free(v);
    }
    /* Deep nesting is refused, not a stack overflow. */
    size_t n = 100000;
    char *deep = malloc(n);
    memset(deep, '[', n);
    CHECK(json_parse(deep, n, err, sizeof err) == NULL);
    CHECK_CONTAINS(err, "nesting too deep");
    free(deep);
}

/* Evaluates a Lua expression with the json module as `json`; returns its string result. */
static char *lua_eval(const char *code)
{
    luahost *h = luahost_new(0);
    lua_State *L = luahost_state(h);
    char err[512];
    char *out = NULL;
    if (luaL_loadbufferx(L, code, strlen(code), "@t.lua", "t") == LUA_OK &&
        luahost_pcall(L, 0, 1, 1000, err, sizeof err) == 0) {
        out = strdup(lua_tostring(L, -1) ? lua_tostring(L, -1) : "(non-string)");
    } else {
        out = strdup(err);
    }
    luahost_free(h);
    return out;
}

static void check_lua(const char *code, const char *want)
{
    char *got = lua_eval(code);
    CHECK_STR(got, want);
    if (strcmp(got, want) != 0)
        fprintf(stderr, "    code: %s\n", code);
    free(got);
}

static void test_lua_encode_is_canonical(void)
{
    check_lua("local json = require('json') return json.encode({b = 1, a = {z = true, y = 'x'}, c = {1, 2}})",
              "{\"a\":{\"y\":\"x\",\"z\":true},\"b\":1,\"c\":[1,2]}");
    check_lua("local json = require('json') return json.encode({})", "{}");
    check_lua("local json = require('json') return json.encode(json.array({}))", "[]");
    check_lua("local json = require('json') return json.encode({x = json.null, n = 1.5, i = 3})",
              "{\"i\":3,\"n\":1.5,\"x\":null}");
    check_lua("local json = require('json') return json.encode('a\"b\\n\\1')", "\"a\\\"b\\n\\u0001\"");
}

static void test_lua_round_trips_empty_arrays_and_null(void)
{
    check_lua("local json = require('json')\n"
              "local v = json.decode('{\"env\":[],\"meta\":{},\"x\":null,\"l\":[[],{}]}')\n"
              "assert(v.x == json.null and json.is_array(v.env) and not json.is_array(v.meta))\n"
              "return json.encode(v)",
              "{\"env\":[],\"l\":[[],{}],\"meta\":{},\"x\":null}");
    check_lua("local json = require('json') return json.decode('9007199254740993') == 9007199254740993 and 'int' or 'float'",
              "float"); /* beyond 2^53 a JSON number is a double */
    check_lua("local json = require('json') return math.type(json.decode('[42]')[1])", "integer");
}

static void test_lua_errors(void)
{
    check_lua("local json = require('json') local v, e = json.decode('{bad') return e",
              "invalid JSON at byte 1: expected object key");
    check_lua("local json = require('json') local t = {} t.self = t return json.encode(t)",
              "t.lua:1: json.encode: nesting deeper than 128 (a cycle?)");
    check_lua("local json = require('json') return json.encode({[1] = 'a', x = 'b'})",
              "t.lua:1: json.encode: object keys must be strings (got a number key)");
    check_lua("local json = require('json') return json.encode({f = print})",
              "t.lua:1: json.encode: cannot encode a function value");
    check_lua("local json = require('json') return json.encode(0/0)",
              "t.lua:1: json.encode: cannot encode NaN");
}

static void test_lua_hash(void)
{
    check_lua("return require('hash').sha256('abc')",
              "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

/* The writer without a DOM: commas, nesting, escapes, null. */
static void test_json_out_writes_valid_json(void)
{
    buf b = {0};
    json_out o;
    jo_init(&o, &b);
    jo_object(&o);
    jo_kbool(&o, "ready", 0);
    jo_key(&o, "checks");
    jo_object(&o);
    jo_kstr(&o, "quote", "a\"b\\c\n");
    jo_kstr(&o, "none", NULL);
    jo_key(&o, "list");
    jo_array(&o);
    jo_int(&o, 1);
    jo_object(&o);
    jo_end(&o);
    jo_array(&o);
    jo_end(&o);
    jo_str(&o, "x");
    jo_end(&o);
    jo_key(&o, "seconds");
    jo_double(&o, 0.5);
    jo_end(&o);
    jo_kint(&o, "n", -3);
    jo_end(&o);
    CHECK_STR(b.data, "{\"ready\":false,\"checks\":{\"quote\":\"a\\\"b\\\\c\\n\",\"none\":null,"
                      "\"list\":[1,{},[],\"x\"],\"seconds\":0.500000},\"n\":-3}");
    json_value *v = json_parse(b.data, b.len, NULL, 0);
    CHECK(v != NULL);
    CHECK_STR(json_string(json_path(v, "checks", "quote", NULL)), "a\"b\\c\n");
    CHECK(json_len(json_path(v, "checks", "list", NULL)) == 4);
    json_free(v);
    buf_free(&b);
}

int main(void)
{
    RUN(test_dom_parse_and_lookup);
    RUN(test_dom_rejects_malformed);
    RUN(test_lua_encode_is_canonical);
    RUN(test_lua_round_trips_empty_arrays_and_null);
    RUN(test_lua_errors);
    RUN(test_lua_hash);
    RUN(test_json_out_writes_valid_json);
    return check_summary();
}
