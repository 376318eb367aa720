/* bind_kube: the Lua `kube` module (documented in lua/core/kube.lua).
 *
 *   kube.connect(opts)  -> client | nil, err
 *   kube.from_env()     -> client | nil, err   ($KUBECONFIG and $KUBE_CONTEXT, else
 *                                              in-cluster, else ~/.kube/config)
 *   kube.escape(s)      -> percent-encoded query value
 *   client:request(method, path [, body [, opts]])
 *                       -> status, body, retry_after|nil, error_line|nil
 *                        | nil, err on transport failure
 *   client:namespace(), client:server(), client:close()
 *
 * Requests block the calling thread (single attempt, with a timeout); the
 * retrying, rate-limited path is kube_async in C. Bodies are strings: JSON
 * encoding is the `json` module's job. Operational failures return nil, msg;
 * misuse (wrong argument types, a closed client) raises.
 *
 * Functions marked [may longjmp] raise Lua errors; none of them holds malloc'd
 * memory or a curl handle that is not anchored in a userdata across such a
 * call. */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "kube.h"
#include "util.h"

#define CLIENT_MT "kube.client"
#define RESPONSE_MT "kube.response" /* anchors a kube_response across pushes */

typedef struct {
    kube_client *client; /* NULL once closed (and before it is opened) */
} lclient;

/* __gc / __close of a response anchor. */
static int response_gc(lua_State *L)
{
    kube_response_free(lua_touserdata(L, 1));
    return 0;
}

/* __gc, __close and close(): idempotent. */
static int client_close(lua_State *L)
{
    lclient *c = luaL_checkudata(L, 1, CLIENT_MT);
    kube_client_free(c->client);
    c->client = NULL;
    return 0;
}

/* [may longjmp] The client at idx; raises if it is closed. */
static kube_client *check_open(lua_State *L, int idx)
{
    lclient *c = luaL_checkudata(L, idx, CLIENT_MT);
    if (c->client == NULL)
        luaL_error(L, "kube client is closed");
    return c->client;
}

/* [may longjmp] Pushes a new client handle in the closed state. */
static lclient *push_closed_client(lua_State *L)
{
    lclient *c = lua_newuserdatauv(L, sizeof *c, 0);
    c->client = NULL;
    luaL_setmetatable(L, CLIENT_MT);
    return c;
}

/* [may longjmp] opts[key] as a string or NULL; the string stays anchored in
 * opts (a table the caller keeps on the stack). */
static const char *opt_string(lua_State *L, int t, const char *key)
{
    const char *s = NULL;
    int type = lua_getfield(L, t, key);
    if (type == LUA_TSTRING)
        s = lua_tostring(L, -1);
    else if (type != LUA_TNIL)
        luaL_error(L, "kube.connect: opts.%s must be a string", key);
    lua_pop(L, 1);
    return s;
}

/* [may longjmp] opts[key] as a boolean (absent → 0). */
static int opt_bool(lua_State *L, int t, const char *key)
{
    int type = lua_getfield(L, t, key);
    if (type != LUA_TNIL && type != LUA_TBOOLEAN)
        luaL_error(L, "kube.connect: opts.%s must be a boolean", key);
    int v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

enum source { SRC_KUBECONFIG, SRC_IN_CLUSTER, SRC_EXPLICIT, SRC_ENV };

/* Opens the client in the closed handle on the top of the stack and returns
 * 1 (the handle), or pushes nil, err and returns 2. cfg_in: for SRC_EXPLICIT,
 * a config of strings borrowed from the Lua stack. Calls no Lua API between
 * loading the config and freeing it, so nothing malloc'd is left unanchored. */
static int open_client(lua_State *L, lclient *handle, enum source src, const char *path,
                       const char *context, const kube_config *cfg_in)
{
    char err[512];
    kube_config loaded = {0};
    const kube_config *cfg = cfg_in;
    int rc = -1;
    if (src == SRC_KUBECONFIG) {
        rc = kube_config_load_kubeconfig(path, context, &loaded, err, sizeof err);
        cfg = &loaded;
    } else if (src == SRC_ENV) {
        rc = kube_config_resolve(getenv("KUBECONFIG"), getenv("KUBE_CONTEXT"), &loaded, err, sizeof err);
        cfg = &loaded;
    } else if (src == SRC_IN_CLUSTER) {
        rc = kube_config_in_cluster(&loaded, err, sizeof err);
        cfg = &loaded;
    } else {
        rc = 0;
    }
    if (rc == 0)
        handle->client = kube_client_new(cfg, err, sizeof err);
    kube_config_free(&loaded);
    if (handle->client == NULL) {
        luaL_pushfail(L);
        lua_pushstring(L, err);
        return 2;
    }
    return 1;
}

/* [may longjmp] kube.connect(opts) where opts is one of
 *   { kubeconfig = "/path[:/path2]", context = "name"? }
 *                                      (kubeconfig files merged, a context) 
 *   { in_cluster = true }              (the pod's service account)
 *   { server = "https://...", token = ..., token_file = ..., ca_file = ...,
 *     insecure_skip_tls_verify = bool, namespace = ... }  (explicit) */
static int kube_connect(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    const char *kubeconfig = opt_string(L, 1, "kubeconfig");
    const char *context = opt_string(L, 1, "context");
    int in_cluster = opt_bool(L, 1, "in_cluster");
    kube_config cfg = {0};
    /* Borrowed from opts (anchored at index 1); kube_client_new copies them,
     * so this config is never freed. */
    cfg.server = (char *)opt_string(L, 1, "server");
    cfg.token = (char *)opt_string(L, 1, "token");
    cfg.token_file = (char *)opt_string(L, 1, "token_file");
    cfg.ca_file = (char *)opt_string(L, 1, "ca_file");
    cfg.client_cert_file = (char *)opt_string(L, 1, "client_cert_file");
    cfg.client_key_file = (char *)opt_string(L, 1, "client_key_file");
    cfg.namespace = (char *)opt_string(L, 1, "namespace");
    cfg.insecure_skip_tls_verify = opt_bool(L, 1, "insecure_skip_tls_verify");
    if ((kubeconfig != NULL) + in_cluster + (cfg.server != NULL) != 1)
        return luaL_argerror(L, 1, "give exactly one of kubeconfig, in_cluster or server");
    lclient *handle = push_closed_client(L);
    if (kubeconfig)
        return open_client(L, handle, SRC_KUBECONFIG, kubeconfig, context, NULL);
    if (in_cluster)
        return open_client(L, handle, SRC_IN_CLUSTER, NULL, NULL, NULL);
    return open_client(L, handle, SRC_EXPLICIT, NULL, NULL, &cfg);
}

/* [may longjmp] kube.from_env(): as the operator finds its cluster
 * (kube_config_resolve with $KUBECONFIG and $KUBE_CONTEXT). */
static int kube_from_env(lua_State *L)
{
    lclient *handle = push_closed_client(L);
    return open_client(L, handle, SRC_ENV, NULL, NULL, NULL);
}

/* [may longjmp] kube.escape(s): percent-encodes a query value, into a
 * Lua-owned buffer. */
static int kube_escape_l(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    size_t m = kube_escape_into(NULL, s, n);
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, m);
    kube_escape_into(out, s, n);
    luaL_pushresultsize(&b, m);
    return 1;
}

static const char *const methods[] = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", NULL};

/* [may longjmp] client:request(method, path [, body [, opts]]) with opts
 * { timeout_ms = int, content_type = string }. */
static int client_request(lua_State *L)
{
    kube_client *c = check_open(L, 1);
    const char *method = methods[luaL_checkoption(L, 2, NULL, methods)];
    const char *path = luaL_checkstring(L, 3);
    size_t len = 0;
    const char *body = luaL_optlstring(L, 4, NULL, &len);
    lua_Integer timeout_ms = KUBE_DEFAULT_TIMEOUT_MS;
    const char *content_type = NULL;
    if (path[0] != '/')
        return luaL_argerror(L, 3, "path must start with /");
    if (!lua_isnoneornil(L, 5)) {
        luaL_checktype(L, 5, LUA_TTABLE);
        if (lua_getfield(L, 5, "timeout_ms") != LUA_TNIL) {
            int isnum;
            timeout_ms = lua_tointegerx(L, -1, &isnum);
            luaL_argcheck(L, isnum && timeout_ms > 0 && timeout_ms <= 24 * 3600 * 1000, 5,
                          "opts.timeout_ms must be a positive integer (milliseconds)");
        }
        if (lua_getfield(L, 5, "content_type") != LUA_TNIL) {
            luaL_argcheck(L, lua_type(L, -1) == LUA_TSTRING, 5, "opts.content_type must be a string");
            content_type = lua_tostring(L, -1); /* stays on the stack */
        }
    }
    /* The response lives in a userdata, so a memory error while pushing the
     * results frees it through __gc. */
    kube_response *r = lua_newuserdatauv(L, sizeof *r, 0);
    memset(r, 0, sizeof *r);
    luaL_setmetatable(L, RESPONSE_MT);
    char err[512];
    if (kube_request(c, method, path, content_type, body, body ? len : 0, (int)timeout_ms, r, err,
                     sizeof err) < 0) {
        luaL_pushfail(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushinteger(L, r->status);
    lua_pushlstring(L, r->body, r->len);
    if (r->retry_after_s >= 0)
        lua_pushinteger(L, r->retry_after_s);
    else
        lua_pushnil(L);
    if (r->status >= 200 && r->status < 300) {
        lua_pushnil(L);
    } else {
        char line[768];
        lua_pushstring(L, kube_response_error(r, line, sizeof line));
    }
    kube_response_free(r);
    return 4;
}

/* [may longjmp] client:namespace() -> string | nil */
static int client_namespace(lua_State *L)
{
    const char *ns = kube_client_namespace(check_open(L, 1));
    if (ns)
        lua_pushstring(L, ns);
    else
        lua_pushnil(L);
    return 1;
}

/* [may longjmp] client:server() -> string */
static int client_server(lua_State *L)
{
    lua_pushstring(L, kube_client_server(check_open(L, 1)));
    return 1;
}

/* [may longjmp] */
static int client_tostring(lua_State *L)
{
    lclient *c = luaL_checkudata(L, 1, CLIENT_MT);
    if (c->client)
        lua_pushfstring(L, "kube.client (%s)", kube_client_server(c->client));
    else
        lua_pushliteral(L, "kube.client (closed)");
    return 1;
}

static const luaL_Reg client_methods[] = {
    {"request", client_request},
    {"namespace", client_namespace},
    {"server", client_server},
    {"close", client_close},
    {NULL, NULL},
};

static const luaL_Reg client_meta[] = {
    {"__gc", client_close},
    {"__close", client_close},
    {"__tostring", client_tostring},
    {NULL, NULL},
};

static const luaL_Reg kube_funcs[] = {
    {"connect", kube_connect},
    {"from_env", kube_from_env},
    {"escape", kube_escape_l},
    {NULL, NULL},
};

int luaopen_kube(lua_State *L)
{
    if (luaL_newmetatable(L, CLIENT_MT)) {
        luaL_setfuncs(L, client_meta, 0);
        luaL_newlib(L, client_methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, RESPONSE_MT)) {
        lua_pushcfunction(L, response_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    luaL_newlib(L, kube_funcs);
    return 1;
}
