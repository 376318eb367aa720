/* repl: `sync-airbnb-operator repl`, a Lua prompt for an operator admin.
 *
 * The REPL's own state is a full Lua 5.4 state (io, os, debug, package, and
 * globals may be set): it is a debugging tool for someone who already has a
 * shell with the same credentials, so sandboxing it would protect nothing.
 * It has no time budget either; Ctrl-C interrupts a running chunk, as in
 * lua.c. What the operator itself would do stays exact: plan(), status()
 * and reload() go through a cli_view, whose rules run in the same sandbox,
 * budget and checks as `run`. The global `rules` is a copy of the same
 * files loaded into the REPL's state, to call by hand; it is (re)loaded only
 * after the sandboxed copy accepted them.
 *
 * Input: libedit with history in ~/.sync_airbnb_operator_history when stdin
 * is a terminal; otherwise lines from stdin with no banner and no prompts,
 * stopping at the first error (exit 1), like `lua -`. Either way a chunk
 * may span lines (read until it compiles) and an expression's values are
 * printed, as lua.c does. */
#include "repl.h"

#include <editline/readline.h>
#include <lauxlib.h>
#include <lualib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "kube.h"
#include "luahost.h"
#include "pg.h"

int luaopen_clock(lua_State *L);
int luaopen_hash(lua_State *L);
int luaopen_log(lua_State *L);

#define HISTORY_FILE ".sync_airbnb_operator_history"
#define HISTORY_MAX 1000
#define PROMPT "sao> "
#define PROMPT_MORE "sao>> "
#define BUF_MT "repl.buf"

typedef struct repl {
    const config *cfg;
    lua_State *L;
    cli_view *view;
    rules *ctx_rules; /* only for rules_push_ctx */
    int loader_ref;   /* the prelude's rules loader, in the registry */
    int interactive;
    char *history;    /* path, or NULL */
} repl;


/* ---- Ctrl-C ------------------------------------------------------------------ */

static lua_State *running; /* the state a SIGINT interrupts */

/* [may longjmp] */
static void interrupt_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    lua_sethook(L, NULL, 0, 0);
    luaL_error(L, "interrupted!");
}

/* As lua.c's laction: setting a hook is the one thing safe to do here. */
static void on_sigint(int sig)
{
    signal(sig, SIG_DFL); /* a second Ctrl-C kills the process */
    lua_sethook(running, interrupt_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

/* luahost_pcall (traceback handler; the REPL state has no luahost, so no
 * budget) with Ctrl-C armed for the duration of the call. */
static int repl_pcall(repl *r, int nargs, int nresults, char *err, size_t errlen)
{
    running = r->L;
    signal(SIGINT, on_sigint);
    int rc = luahost_pcall(r->L, nargs, nresults, 0, err, errlen);
    signal(SIGINT, SIG_DFL);
    lua_sethook(r->L, NULL, 0, 0);
    return rc;
}

/* ---- helpers: plan(), status(), reload(), ctx() ------------------------------ */

static int buf_gc(lua_State *L)
{
    buf_free(lua_touserdata(L, 1));
    return 0;
}

/* [may longjmp] A buffer owned by a userdata on the stack, so that a Lua
 * error leaks nothing. */
static buf *push_buf(lua_State *L)
{
    buf *b = lua_newuserdatauv(L, sizeof *b, 0);
    memset(b, 0, sizeof *b);
    if (luaL_newmetatable(L, BUF_MT)) {
        lua_pushcfunction(L, buf_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    return b;
}

/* [may longjmp] Removes json.null values from the table at idx and the
 * tables in it, so that a JSON null reads as nil, as Lua code expects. */
static void drop_nulls(lua_State *L, int idx, int depth)
{
    idx = lua_absindex(L, idx);
    luaL_checkstack(L, 4, "drop_nulls");
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_islightuserdata(L, -1) && lua_touserdata(L, -1) == NULL) {
            lua_pushvalue(L, -2); /* clearing a field during next() is allowed */
            lua_pushnil(L);
            lua_rawset(L, idx);
        } else if (lua_istable(L, -1) && depth < 64) {
            drop_nulls(L, -1, depth + 1);
        }
        lua_pop(L, 1);
    }
}

/* [may longjmp] Replaces the anchored buffer at the top with json.decode of
 * its text, nulls dropped. */
static void decode_buf(lua_State *L)
{
    buf *b = lua_touserdata(L, -1);
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_getfield(L, -1, "json");
    lua_getfield(L, -1, "decode");
    lua_pushlstring(L, b->data ? b->data : "null", b->len);
    lua_call(L, 1, 1);
    if (lua_istable(L, -1))
        drop_nulls(L, -1, 0);
    lua_replace(L, -4);
    lua_pop(L, 2);
}

/* [may longjmp] plan() -> actions (the array of `plan -o json`), the whole
 * document; JSON nulls read as nil here */
static int l_plan(lua_State *L)
{
    repl *r = lua_touserdata(L, lua_upvalueindex(1));
    char err[1024];
    buf *b = push_buf(L);
    if (cli_plan_json(r->view, b, NULL, err, sizeof err) < 0)
        return luaL_error(L, "plan: %s", err);
    decode_buf(L);
    lua_getfield(L, -1, "actions");
    lua_insert(L, -2);
    return 2;
}

/* [may longjmp] status() -> the document of `status -o json` */
static int l_status(lua_State *L)
{
    repl *r = lua_touserdata(L, lua_upvalueindex(1));
    char err[1024];
    buf *b = push_buf(L);
    if (cli_status_json(r->view, b, err, sizeof err) < 0)
        return luaL_error(L, "status: %s", err);
    decode_buf(L);
    return 1;
}

/* Loads the REPL's own copy of the rules into the global `rules`. */
static int load_repl_rules(repl *r, char *err, size_t errlen)
{
    lua_rawgeti(r->L, LUA_REGISTRYINDEX, r->loader_ref);
    if (repl_pcall(r, 0, 1, err, errlen) < 0)
        return -1;
    lua_setglobal(r->L, "rules");
    return 0;
}

/* [may longjmp] reload() -> true | false, err; prints one line either way */
static int l_reload(lua_State *L)
{
    repl *r = lua_touserdata(L, lua_upvalueindex(1));
    char err[1024];
    if (cli_view_reload(r->view, err, sizeof err) < 0) {
        fprintf(stderr, "rules rejected, the previous rules stay: %s\n", err);
        lua_pushboolean(L, 0);
        lua_pushstring(L, err);
        return 2;
    }
    const char *version = rules_version(cli_view_rules(r->view, err, sizeof err));
    /* Nested call: the outer repl_pcall keeps Ctrl-C armed. */
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->loader_ref);
    if (luahost_pcall(L, 0, 1, 0, err, sizeof err) < 0) {
        fprintf(stderr, "rules %.12s in effect for plan()/status(), but the REPL's copy failed: %s\n",
                version, err);
        lua_pushboolean(L, 0);
        lua_pushstring(L, err);
        return 2;
    }
    lua_setglobal(L, "rules");
    printf("rules %.12s in effect (%s)\n", version, r->cfg->rules_dir);
    lua_pushboolean(L, 1);
    return 1;
}

/* [may longjmp] ctx() -> {namespace, worker_image, now}, as the rules get it */
static int l_ctx(lua_State *L)
{
    repl *r = lua_touserdata(L, lua_upvalueindex(1));
    rules_push_ctx(r->ctx_rules, L);
    return 1;
}

/* ---- setup ------------------------------------------------------------------------ */

static void preload(lua_State *L, const char *name, lua_CFunction open)
{
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, open);
    lua_setfield(L, -2, name);
    lua_pop(L, 1);
}

static void set_helper(repl *r, const char *name, lua_CFunction fn)
{
    lua_pushlightuserdata(r->L, r);
    lua_pushcclosure(r->L, fn, 1);
    lua_setglobal(r->L, name);
}

static void banner(repl *r, const char *rules_err)
{
    char err[16];
    printf("sync-airbnb-operator %s REPL (%s). Ctrl-D exits, Ctrl-C interrupts.\n", SAO_VERSION, LUA_RELEASE);
    if (rules_err)
        printf("rules: REJECTED (%s); plan() and status() fail until reload()\n", rules_err);
    else
        printf("rules: %.12s from %s\n", rules_version(cli_view_rules(r->view, err, sizeof err)) /* loaded: no error */, r->cfg->rules_dir);
    printf("namespace: %s\n\n"
           "  db        connection to DATABASE_URL: db:query(sql, ...), db:exec(sql, ...)\n"
           "            (require('db') is the module: db.connect, db.null)\n"
           "  kube      API client from KUBECONFIG or in-cluster: kube:request(method, path [, body])\n"
           "            (require('kube') is the module: kube.connect)\n"
           "  rules     the rules table: rules.deployment(rules.examples.account('1'), ctx())\n"
           "  json hash log clock    the host modules\n"
           "  plan()    the actions `run` would take now, as `plan -o json` (and the whole document)\n"
           "  status()  accounts, workers and pods, as `status -o json`\n"
           "  reload()  reload RULES_DIR as hot reload does (the previous rules stay on failure)\n"
           "  ctx()     the ctx table the rules get;  show(v)  print a table readably\n\n",
           r->cfg->namespace);
}

static int setup(repl *r, char *err, size_t errlen)
{
    lua_State *L = r->L;
    /* luahost_from_state reads the extra space: make it say "no luahost". */
    *(void **)lua_getextraspace(L) = NULL;
    luaL_openlibs(L);
    preload(L, "db", luaopen_db);
    preload(L, "kube", luaopen_kube);
    preload(L, "json", luaopen_json);
    preload(L, "hash", luaopen_hash);
    preload(L, "log", luaopen_log);
    preload(L, "clock", luaopen_clock);
    /* lua/repl/prelude.lua: sets the globals the banner lists, returns the
     * rules loader, show() and the warnings to print. */
    char *dir = config_lua_dir("repl");
    char *path = xasprintf("%s/prelude.lua", dir);
    free(dir);
    int loaded = luaL_loadfilex(L, path, "t");
    free(path);
    if (loaded != LUA_OK) {
        util_seterr(err, errlen, "%s", lua_tostring(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    lua_pushstring(L, r->cfg->rules_dir);
    lua_pushstring(L, r->cfg->database_url);
    lua_pushinteger(L, r->cfg->db_timeout_ms);
    lua_pushstring(L, r->cfg->kubeconfig);
    if (repl_pcall(r, 4, 3, err, errlen) < 0)
        return -1;
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        fprintf(stderr, "%s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    lua_setglobal(L, "show");
    r->loader_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    set_helper(r, "plan", l_plan);
    set_helper(r, "status", l_status);
    set_helper(r, "reload", l_reload);
    set_helper(r, "ctx", l_ctx);

    char rerr[1024];
    const char *rules_err = NULL;
    if (cli_view_rules(r->view, rerr, sizeof rerr) == NULL) {
        rules_err = rerr;
        fprintf(stderr, "rules rejected: %s\n", rerr);
    } else if (load_repl_rules(r, rerr, sizeof rerr) < 0) {
        fprintf(stderr, "rules: the REPL's copy failed to load: %s\n", rerr);
    }
    if (r->interactive)
        banner(r, rules_err);
    return 0;
}

/* ---- the loop ------------------------------------------------------------------------ */

/* One line without its newline (caller frees), or NULL at end of input. */
static char *read_line(repl *r, const char *prompt)
{
    if (r->interactive)
        return readline(prompt);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, stdin);
    if (n < 0) {
        free(line);
        return NULL;
    }
    if (n > 0 && line[n - 1] == '\n')
        line[n - 1] = '\0';
    return line;
}

static void remember(repl *r, const char *text)
{
    if (!r->interactive || *text == '\0')
        return;
    add_history(text);
    /* Saved at once, so a Ctrl-C at the prompt (which ends the REPL, as in
     * lua.c) loses nothing. The whole file: libedit's append_history writes
     * its header again on every call. */
    if (r->history)
        write_history(r->history);
}

/* lua.c's test: a syntax error at <eof> means the chunk goes on. */
static int incomplete(lua_State *L, int status)
{
    static const char mark[] = "<eof>";
    size_t len;
    const char *msg = lua_tolstring(L, -1, &len);
    return status == LUA_ERRSYNTAX && len >= sizeof mark - 1 && strcmp(msg + len - (sizeof mark - 1), mark) == 0;
}

/* Reads until a chunk compiles: "return <line>" first (an expression's
 * values get printed), else the lines as statements. Returns 0 with the
 * function on the stack, 1 with a syntax error message on the stack, or -1
 * at end of input. */
static int read_chunk(repl *r)
{
    lua_State *L = r->L;
    char *line = read_line(r, PROMPT);
    if (line == NULL)
        return -1;
    char *ret = xasprintf("return %s;", line);
    int status = luaL_loadbufferx(L, ret, strlen(ret), "=stdin", "t");
    free(ret);
    if (status == LUA_OK) {
        remember(r, line);
        free(line);
        return 0;
    }
    lua_pop(L, 1);
    buf text = {0};
    buf_puts(&text, line);
    free(line);
    for (;;) {
        status = luaL_loadbufferx(L, text.data, text.len, "=stdin", "t");
        if (!incomplete(L, status))
            break;
        if ((line = read_line(r, PROMPT_MORE)) == NULL)
            break; /* end of input inside a chunk: report its error */
        lua_pop(L, 1);
        buf_putc(&text, '\n');
        buf_puts(&text, line);
        free(line);
    }
    remember(r, text.data);
    buf_free(&text);
    return status == LUA_OK ? 0 : 1;
}

/* Runs the chunk on the stack and prints what it returned. 0 or -1. */
static int run_chunk(repl *r)
{
    lua_State *L = r->L;
    char err[2048];
    int base = lua_gettop(L) - 1;
    if (repl_pcall(r, 0, LUA_MULTRET, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    int n = lua_gettop(L) - base;
    if (n > 0) {
        luaL_checkstack(L, LUA_MINSTACK, "too many results to print");
        lua_getglobal(L, "print");
        lua_insert(L, base + 1);
        if (repl_pcall(r, n, 0, err, sizeof err) < 0) {
            fprintf(stderr, "error calling 'print': %s\n", err);
            return -1;
        }
    }
    fflush(stdout);
    return 0;
}

int repl_main(const config *cfg, int argc, char **argv)
{
    if (argc > 0) {
        fprintf(stderr, "repl: unexpected argument \"%s\" (pipe a script into stdin instead)\n", argv[0]);
        return 2;
    }
    cli_quiet_logs(cfg);
    repl r = {.cfg = cfg, .interactive = isatty(STDIN_FILENO), .loader_ref = LUA_NOREF};
    r.L = luaL_newstate();
    if (r.L == NULL) {
        fprintf(stderr, "repl: cannot create a Lua state\n");
        return 1;
    }
    r.view = cli_view_new(cfg);
    r.ctx_rules = rules_new(cfg);
    char err[1024];
    int rc = 1;
    if (setup(&r, err, sizeof err) < 0) {
        fprintf(stderr, "repl: %s\n", err);
        goto out;
    }
    const char *home = getenv("HOME");
    if (r.interactive && home && *home) {
        r.history = xasprintf("%s/%s", home, HISTORY_FILE);
        rl_readline_name = "sync-airbnb-operator";
        using_history();
        stifle_history(HISTORY_MAX);
        read_history(r.history);
    }
    rc = 0;
    for (;;) {
        int status = read_chunk(&r);
        if (status < 0)
            break;
        int ok = status == 0 ? run_chunk(&r) : (fprintf(stderr, "%s\n", lua_tostring(r.L, -1)), -1);
        lua_settop(r.L, 0);
        if (ok < 0 && !r.interactive) {
            rc = 1; /* a script stops at its first error, like `lua -` */
            break;
        }
    }
    if (r.interactive)
        printf("\n");
out:
    lua_close(r.L); /* closes db and kube (their __gc) */
    cli_view_free(r.view);
    rules_free(r.ctx_rules);
    free(r.history);
    return rc;
}
