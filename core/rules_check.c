/* rules_check: the one check of a rules directory, made by `check-rules
 * [DIR]` (cli_check.c) and by hot reload (rules.c) alike. Four stages; the first that finds a problem ends the check,
 * so that one mistake is not reported four times:
 *
 *   1. lint     every *.lua compiles; the bytecode reads no global the
 *               sandbox lacks, assigns no global, and requires no module
 *               that neither the host nor the directory provides — also in
 *               code paths no example reaches (file:line each)
 *   2. load     require("rules") in a fresh sandbox, as `run` does; the
 *               functions the core calls exist
 *   3. render   sample accounts (the examples' ids plus a fixed list of odd
 *               ids) through deployment() and plan(); each Deployment must
 *               JSON-encode and pass names_validate_deployment here in C,
 *               independent of the rules' own validate.lua, and carry no
 *               credential value; plan() must create each one's worker.
 *               Stops at the first sample that fails.
 *   4. self_check  the rules' self_check(ctx) (rules_load_checked)
 *
 * Functions marked [may longjmp] raise Lua errors; they are only called
 * under luahost_pcall and hold no malloc'd memory across a raise. */
#include "rules_check.h"

#include <dirent.h>
#include <errno.h>
#include <lauxlib.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "luahost.h"
#include "names.h"
#include "scrub.h"
#include "util.h"

static int is_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* t[k] without metamethods (what the rules return is untrusted). */
static int rawfield(lua_State *L, int idx, const char *k)
{
    idx = lua_absindex(L, idx);
    lua_pushstring(L, k);
    return lua_rawget(L, idx);
}

/* ---- stage 1: lint the bytecode -------------------------------------------------- */

/* The linter reads the bytecode of the Lua it is built with (linked
 * statically: the format cannot change under a built binary). A new Lua
 * must fail here, at build time, not at every reload: check lopcodes.h and
 * ldump.c of the new version, then update the numbers and this guard
 * (docs/architecture.md, "Linting the rules"). */
#if LUA_VERSION_NUM != 504
#error "rules_check.c lints Lua 5.4 bytecode: check OP_LOADK/OP_GETTABUP/OP_SETTABUP and the dump format of this Lua"
#endif

/* Lua 5.4 opcodes and instruction fields (lopcodes.h). */
enum { OP_LOADK = 3, OP_GETTABUP = 11, OP_SETTABUP = 15 };
#define I_OP(i) ((i) & 0x7fu)
#define I_A(i) (((i) >> 7) & 0xffu)
#define I_B(i) (((i) >> 16) & 0xffu)
#define I_C(i) (((i) >> 24) & 0xffu)
#define I_BX(i) ((i) >> 15)
#define ABSLINEINFO (-0x80)

/* A cursor over a lua_dump() image (ldump.c); bad is set on truncation. */
typedef struct reader {
    const unsigned char *p, *end;
    int bad;
} reader;

static const unsigned char *rd_bytes(reader *r, size_t n)
{
    if ((size_t)(r->end - r->p) < n) {
        r->bad = 1;
        r->p = r->end;
        return NULL;
    }
    const unsigned char *s = r->p;
    r->p += n;
    return s;
}

static unsigned rd_byte(reader *r)
{
    const unsigned char *b = rd_bytes(r, 1);
    return b ? *b : 0;
}

/* dumpSize: 7 bits a byte, most significant first, the last byte | 0x80. */
static size_t rd_size(reader *r)
{
    size_t x = 0;
    for (int i = 0; i < 10; i++) {
        unsigned b = rd_byte(r);
        x = (x << 7) | (b & 0x7f);
        if (r->bad || (b & 0x80))
            return x;
    }
    r->bad = 1;
    return 0;
}

/* A count of items of at least `each` bytes that the rest can hold. */
static size_t rd_count(reader *r, size_t each)
{
    size_t n = rd_size(r);
    if (n > (size_t)(r->end - r->p) / each) {
        r->bad = 1;
        return 0;
    }
    return n;
}

typedef struct kstr {
    const char *s; /* NULL: not a string constant */
    size_t len;
} kstr;

static kstr rd_string(reader *r)
{
    kstr k = {NULL, 0};
    size_t n = rd_size(r);
    if (n > 0) {
        k.len = n - 1;
        k.s = (const char *)rd_bytes(r, k.len);
    }
    return k;
}

typedef struct finding {
    int line;
    char *msg;
} finding;

typedef struct linter {
    const strmap *globals, *modules;
    finding *found;
    size_t nfound;
} linter;

static void add_finding(linter *l, int line, char *msg)
{
    l->found = xrealloc(l->found, (l->nfound + 1) * sizeof *l->found);
    l->found[l->nfound++] = (finding){line, msg};
}

static int kstr_in(const strmap *m, kstr k)
{
    char *s = xstrndup(k.s, k.len);
    int in = strmap_get(m, s) != NULL;
    free(s);
    return in;
}

typedef struct proto_code {
    const unsigned char *code;
    size_t ncode;
    const kstr *k;
    size_t nk;
    const unsigned char *env; /* per upvalue: 1 when it is the chunk's _ENV */
    size_t nup;
} proto_code;

static void check_code(linter *l, const proto_code *f, int linedefined, const signed char *lineinfo,
                       size_t nline, const size_t *abs_pc, const size_t *abs_line, size_t nabs)
{
    int line = linedefined;
    size_t ai = 0;
    for (size_t pc = 0; pc < f->ncode; pc++) {
        if (pc < nline) { /* luaG_getfuncline, walked forwards */
            if (ai < nabs && abs_pc[ai] == pc)
                line = (int)abs_line[ai++];
            else if (lineinfo[pc] != ABSLINEINFO)
                line += lineinfo[pc];
        }
        uint32_t i;
        memcpy(&i, f->code + 4 * pc, 4);
        unsigned op = I_OP(i), up, key;
        if (op == OP_GETTABUP) {
            up = I_B(i);
            key = I_C(i);
        } else if (op == OP_SETTABUP) {
            up = I_A(i);
            key = I_B(i);
        } else {
            continue;
        }
        if (up >= f->nup || !f->env[up] || key >= f->nk || f->k[key].s == NULL)
            continue;
        kstr name = f->k[key];
        if (op == OP_SETTABUP) {
            add_finding(l, line, xasprintf("assignment to global '%.*s' (rules set no globals: declare it local)",
                                           (int)name.len, name.s));
        } else if (!kstr_in(l->globals, name)) {
            add_finding(l, line, xasprintf("undeclared global '%.*s' (the rules' sandbox has no such global%s)",
                                           (int)name.len, name.s,
                                           kstr_in(l->modules, name) ? "; require it into a local" : ""));
        } else if (name.len == 7 && memcmp(name.s, "require", 7) == 0 && pc + 1 < f->ncode) {
            /* require "x": GETTABUP A _ENV "require"; LOADK A+1 "x"; CALL A */
            uint32_t next;
            memcpy(&next, f->code + 4 * (pc + 1), 4);
            size_t kx = I_BX(next);
            if (I_OP(next) == OP_LOADK && I_A(next) == I_A(i) + 1 && kx < f->nk && f->k[kx].s &&
                !kstr_in(l->modules, f->k[kx]))
                add_finding(l, line, xasprintf("require of unknown module '%.*s' (the rules can require hash, "
                                               "json, log and the files of their directory; no C modules, "
                                               "no package library)", (int)f->k[kx].len, f->k[kx].s));
        }
    }
}

/* Reads one function prototype (dumpFunction) and, recursively, its
 * children, checking each. parent_env: the enclosing function's _ENV flags
 * (NULL for the main function, whose first upvalue is _ENV). */
static void lint_proto(linter *l, reader *r, const unsigned char *parent_env, size_t nparent)
{
    proto_code f = {0};
    kstr *k = NULL;
    unsigned char *env = NULL;
    size_t *abs = NULL;
    rd_string(r); /* source */
    int linedefined = (int)rd_size(r);
    rd_size(r);       /* lastlinedefined */
    rd_bytes(r, 3);   /* numparams, is_vararg, maxstacksize */
    f.ncode = rd_count(r, 4);
    f.code = rd_bytes(r, f.ncode * 4);
    f.nk = rd_count(r, 1);
    f.k = k = xcalloc(f.nk + 1, sizeof *k);
    for (size_t i = 0; i < f.nk && !r->bad; i++) {
        unsigned tag = rd_byte(r);
        if (tag == 0x03 || tag == 0x13) /* integer, float */
            rd_bytes(r, 8);
        else if (tag == 0x04 || tag == 0x14) /* short, long string */
            k[i] = rd_string(r);
    }
    f.nup = rd_count(r, 3);
    f.env = env = xcalloc(f.nup + 1, 1);
    for (size_t i = 0; i < f.nup && !r->bad; i++) {
        unsigned instack = rd_byte(r), idx = rd_byte(r);
        rd_byte(r); /* kind */
        env[i] = parent_env == NULL ? i == 0 : !instack && idx < nparent && parent_env[idx];
    }
    size_t nprotos = rd_count(r, 1);
    for (size_t i = 0; i < nprotos && !r->bad; i++)
        lint_proto(l, r, env, f.nup);
    size_t nline = rd_count(r, 1);
    const signed char *lineinfo = (const signed char *)rd_bytes(r, nline);
    size_t nabs = rd_count(r, 2);
    abs = xcalloc(2 * nabs + 1, sizeof *abs);
    for (size_t i = 0; i < nabs && !r->bad; i++) {
        abs[i] = rd_size(r);
        abs[nabs + i] = rd_size(r);
    }
    size_t nloc = rd_count(r, 3);
    for (size_t i = 0; i < nloc && !r->bad; i++) {
        rd_string(r);
        rd_size(r);
        rd_size(r);
    }
    size_t nupnames = rd_count(r, 1);
    for (size_t i = 0; i < nupnames && !r->bad; i++)
        rd_string(r);
    if (!r->bad)
        check_code(l, &f, linedefined, lineinfo, lineinfo ? nline : 0, abs, abs + nabs, nabs);
    free(k);
    free(env);
    free(abs);
}

static int dump_writer(lua_State *L, const void *p, size_t n, void *ud)
{
    (void)L;
    buf_append(ud, p, n);
    return 0;
}

static int finding_cmp(const void *a, const void *b)
{
    const finding *x = a, *y = b;
    return (x->line > y->line) - (x->line < y->line);
}

/* The header luaU_dump writes (ldump.c) for this build of Lua 5.4. */
static int skip_header(reader *r)
{
    static const unsigned char sig[] = "\x1bLua\x54\x00\x19\x93\r\n\x1a\n";
    const unsigned char *h = rd_bytes(r, sizeof sig - 1);
    const unsigned char *sizes = rd_bytes(r, 3);
    rd_bytes(r, sizeof(lua_Integer) + sizeof(lua_Number)); /* LUAC_INT, LUAC_NUM */
    rd_byte(r);                                            /* main's upvalue count */
    return !r->bad && memcmp(h, sig, sizeof sig - 1) == 0 && sizes[0] == 4 &&
           sizes[1] == sizeof(lua_Integer) && sizes[2] == sizeof(lua_Number);
}

int rules_lint_chunk(const char *chunk, const char *src, size_t len, const strmap *globals,
                   const strmap *modules, buf *problems)
{
    /* A plain state: it only compiles and dumps, and never runs the chunk. */
    lua_State *L = luaL_newstate();
    if (L == NULL) {
        buf_printf(problems, "%s: cannot create a Lua state\n", chunk);
        return -1;
    }
    char *chunkname = xasprintf("@%s", chunk);
    buf dump = {0};
    linter l = {globals, modules, NULL, 0};
    int rc = -1;
    if (luaL_loadbufferx(L, src, len, chunkname, "t") != LUA_OK) {
        buf_printf(problems, "%s\n", lua_tostring(L, -1));
        goto out;
    }
    lua_dump(L, dump_writer, &dump, 0);
    reader r = {(const unsigned char *)dump.data, (const unsigned char *)dump.data + dump.len, 0};
    if (!skip_header(&r)) {
        buf_printf(problems, "%s: unexpected Lua bytecode format (not Lua 5.4?)\n", chunk);
        goto out;
    }
    lint_proto(&l, &r, NULL, 0);
    if (r.bad) {
        buf_printf(problems, "%s: could not read the compiled chunk\n", chunk);
        goto out;
    }
    if (l.nfound > 0)
        qsort(l.found, l.nfound, sizeof *l.found, finding_cmp);
    for (size_t i = 0; i < l.nfound; i++)
        buf_printf(problems, "%s:%d: %s\n", chunk, l.found[i].line, l.found[i].msg);
    rc = (int)l.nfound;
out:
    for (size_t i = 0; i < l.nfound; i++)
        free(l.found[i].msg);
    free(l.found);
    buf_free(&dump);
    free(chunkname);
    lua_close(L);
    return rc;
}

/* Module files: the names luahost's require accepts, [A-Za-z0-9_]+.lua. */
static int module_file(const struct dirent *d)
{
    size_t n = strlen(d->d_name);
    if (n < 5 || strcmp(d->d_name + n - 4, ".lua") != 0)
        return 0;
    for (size_t i = 0; i < n - 4; i++)
        if (!is_alnum(d->d_name[i]) && d->d_name[i] != '_')
            return 0;
    return 1;
}

/* Lints every module file of dir. Returns the number of problems (appended
 * to problems) or -1 when dir cannot be read; *nfiles gets the file count. */
int rules_lint_dir(const char *dir, buf *problems, int *nfiles)
{
    struct dirent **names = NULL;
    int n = scandir(dir, &names, module_file, alphasort);
    if (n < 0) {
        buf_printf(problems, "cannot read %s: %s\n", dir, strerror(errno));
        return -1;
    }
    *nfiles = n;
    strmap globals = STRMAP_INIT, modules = STRMAP_INIT;
    static const char *const host_modules[] = {"hash", "json", "log"}; /* luahost_new's preloads */
    for (size_t i = 0; i < sizeof host_modules / sizeof *host_modules; i++)
        strmap_put(&modules, host_modules[i], (void *)1);
    for (int i = 0; i < n; i++) {
        char *mod = xstrndup(names[i]->d_name, strlen(names[i]->d_name) - 4);
        strmap_put(&modules, mod, (void *)1);
        free(mod);
    }
    /* The globals the sandbox really has, read from a fresh host state. */
    luahost *h = luahost_new(0);
    lua_State *L = luahost_state(h);
    lua_pushglobaltable(L);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_type(L, -2) == LUA_TSTRING)
            strmap_put(&globals, lua_tostring(L, -2), (void *)1);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    int total = 0;
    for (int i = 0; i < n; i++) {
        char *path = xasprintf("%s/%s", dir, names[i]->d_name);
        size_t len;
        char *src = util_read_file(path, &len);
        if (src == NULL) {
            buf_printf(problems, "cannot read %s: %s\n", path, strerror(errno));
            total++;
        } else {
            int found = rules_lint_chunk(names[i]->d_name, src, len, &globals, &modules, problems);
            total += found < 0 ? 1 : found;
        }
        free(src);
        free(path);
    }
    luahost_free(h);
    strmap_free(&globals);
    strmap_free(&modules);
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return total;
}

/* ---- stage 3: render sample accounts ------------------------------------------- */

/* Ids any rules must handle (DESIGN.md §4: any string, never a crash),
 * rendered besides the ids of rules.examples.names. */
static const char *const odd_ids[] = {
    "310316675", "0", "ABC", "", "a/b", "user@example.com", "Mixed_Case.with-dots", "-leading-dash",
    "trailing-dash-", "with space", "\xc3\xbc" "n" "\xc3\xaf" "c" "\xc3\xb6" "d" "\xc3\xa9", /* ünïcödé */
    "9999999999999999999999999999999999999999999999999999999999999999999999999999",
};

static const char *const credential_fields[] = {"airbnb_cookie", "x_client_version", "user_agent"};

typedef struct checker {
    const config *cfg;
    luahost *h;
    lua_State *L;
    buf *problems;
    int nproblems, nsamples;
} checker;

static void problem(checker *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(checker *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(c->problems, fmt, ap);
    va_end(ap);
    buf_putc(c->problems, '\n');
    c->nproblems++;
}

/* "file:line" of the Lua function at the top of the stack (left there). */
static void where_defined(lua_State *L, char *out, size_t outlen)
{
    lua_Debug ar;
    lua_pushvalue(L, -1);
    if (lua_isfunction(L, -1) && lua_getinfo(L, ">S", &ar))
        snprintf(out, outlen, "%s:%d", ar.short_src, ar.linedefined);
    else {
        lua_pop(L, 1);
        snprintf(out, outlen, "rules.lua");
    }
}

/* 1 if msg starts with "name.lua:<line>:" (Lua's error location). */
static int has_location(const char *msg)
{
    const char *colon = strstr(msg, ".lua:");
    if (colon == NULL || colon == msg)
        return 0;
    for (const char *p = msg; p < colon; p++)
        if (!is_alnum(*p) && *p != '_')
            return 0;
    const char *d = colon + 5;
    while (*d >= '0' && *d <= '9')
        d++;
    return d > colon + 5 && *d == ':';
}

/* A failed call of a rule: err, prefixed with where the rule is defined
 * when err carries no location of its own (memory errors carry none). */
static void call_problem(checker *c, const char *where, const char *err, const char *what, const char *id)
{
    if (has_location(err))
        problem(c, "%s (%s for account \"%s\")", err, what, id);
    else
        problem(c, "%s: %s (%s for account \"%s\")", where, err, what, id);
}

/* The odd ids get odd credentials too: quotes and backslashes are escaped
 * in JSON, so a rule that copies them is only found on decoded strings. */
static void set_odd_credentials(lua_State *L)
{
    static const char *const odd[][2] = {
        {"airbnb_cookie", "check-rules \"cookie\" \\ with; escapes=1"},
        {"x_client_version", "check-rules-\"client\"-version"},
        {"user_agent", "check-rules agent \\ \"quoted\""},
    };
    for (size_t i = 0; i < sizeof odd / sizeof *odd; i++) {
        lua_pushstring(L, odd[i][0]);
        lua_pushstring(L, odd[i][1]);
        lua_rawset(L, -3);
    }
}

/* Pushes an active sample account for id: rules.examples.account(id) when
 * the rules have it, else fixed fake credentials. Returns 0 or -1. */
static int push_sample(checker *c, const char *id, int odd)
{
    lua_State *L = c->L;
    luahost_push_entry_field(c->h, "examples");
    if (lua_istable(L, -1)) {
        rawfield(L, -1, "account");
        lua_remove(L, -2);
    }
    if (lua_isfunction(L, -1)) {
        lua_pushstring(L, id);
        char err[512];
        if (luahost_call_rule(L, "examples.account", 1, c->cfg->rules_budget_ms, err, sizeof err) < 0) {
            problem(c, "%s (examples.account(\"%s\"))", err, id);
            return -1;
        }
        if (lua_istable(L, -1)) {
            if (odd)
                set_odd_credentials(L);
            return 0;
        }
        problem(c, "examples.lua: examples.account(\"%s\") returned a %s, not an account table", id,
                luaL_typename(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    lua_pop(L, 1);
    lua_createtable(L, 0, 8);
    static const char *const fields[][2] = {
        {"airbnb_cookie", "check-rules-cookie"}, {"x_client_version", "check-rules-client-version"},
        {"user_agent", "check-rules-agent"},     {"last_sync_at", "2025-01-01 05:00:00+00"},
        {"updated_at", "2025-01-01 05:00:00+00"},
    };
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++) {
        lua_pushstring(L, fields[i][1]);
        lua_setfield(L, -2, fields[i][0]);
    }
    lua_pushstring(L, id);
    lua_setfield(L, -2, "account_id");
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "is_active");
    if (odd)
        set_odd_credentials(L);
    return 0;
}

static int string_leaks(const char *s, size_t len, void *ud)
{
    size_t pos, mlen;
    return scrub_set_find(ud, s, len, &pos, &mlen);
}

/* Encodes the object at the top of the stack (popped) and validates it.
 * where/what name the rule that rendered it in a problem. */
static void check_object(checker *c, int account, const char *id, const char *where, const char *what)
{
    lua_State *L = c->L;
    char err[1024];
    lua_pushcfunction(L, json_lua_encode);
    lua_insert(L, -2);
    if (luahost_pcall(L, 1, 1, c->cfg->rules_budget_ms, err, sizeof err) < 0) {
        problem(c, "%s: account \"%s\": %s: the Deployment is not JSON-encodable: %s", where, id, what, err);
        return;
    }
    size_t len;
    const char *body = lua_tolstring(L, -1, &len);
    json_value *doc = json_parse(body, len, err, sizeof err);
    if (doc == NULL || names_validate_deployment(doc, err, sizeof err) < 0)
        problem(c, "%s: account \"%s\": %s: invalid Deployment: %s", where, id, what, err);
    for (size_t i = 0; doc && i < sizeof credential_fields / sizeof *credential_fields; i++) {
        /* The one credential scanner (scrub.h), on the decoded strings: a
         * value with '"' or '\\' is escaped in the body and would not match there. */
        const char *v = NULL;
        size_t vlen = 0;
        if (rawfield(L, account, credential_fields[i]) == LUA_TSTRING)
            v = lua_tolstring(L, -1, &vlen);
        scrub_set *one = scrub_set_new();
        if (v && scrub_set_add(one, v, vlen, SCRUB_MIN_LEN) && json_walk_strings(doc, string_leaks, one))
            problem(c, "%s: account \"%s\": %s: the Deployment contains the value of %s (credentials "
                    "never go into Kubernetes objects)", where, id, what, credential_fields[i]);
        scrub_set_free(one);
        lua_pop(L, 1);
    }
    json_free(doc);
    lua_pop(L, 1);
}

/* deployment(account, ctx) and plan({account}, {}, ctx) for one sample. */
static void render_sample(checker *c, const char *id, int odd)
{
    lua_State *L = c->L;
    int top = lua_gettop(L);
    if (push_sample(c, id, odd) < 0)
        return;
    int account = lua_gettop(L), before = c->nproblems;
    char where[300], err[1024];
    c->nsamples++;

    luahost_push_entry_field(c->h, "deployment");
    where_defined(L, where, sizeof where);
    lua_pushvalue(L, account);
    rules_check_push_ctx(c->cfg, L);
    if (luahost_call_rule(L, "deployment", 2, c->cfg->rules_budget_ms, err, sizeof err) < 0)
        call_problem(c, where, err, "deployment()", id);
    else
        check_object(c, account, id, where, "deployment()");
    if (c->nproblems > before) { /* plan() would only echo the same cause */
        lua_settop(L, top);
        return;
    }

    luahost_push_entry_field(c->h, "plan");
    where_defined(L, where, sizeof where);
    lua_createtable(L, 1, 0);
    lua_pushvalue(L, account);
    lua_rawseti(L, -2, 1);
    lua_newtable(L);
    rules_check_push_ctx(c->cfg, L);
    if (luahost_call_rule(L, "plan", 3, c->cfg->rules_budget_ms, err, sizeof err) < 0) {
        call_problem(c, where, err, "plan()", id);
        lua_settop(L, top);
        return;
    }
    int actions = lua_gettop(L), creates = 0;
    lua_Integer n = lua_istable(L, actions) ? (lua_Integer)lua_rawlen(L, actions) : 0;
    for (lua_Integer i = 1; i <= n; i++) {
        if (lua_rawgeti(L, actions, i) != LUA_TTABLE) {
            lua_pop(L, 1);
            continue;
        }
        rawfield(L, -1, "action");
        const char *kind = lua_tostring(L, -1);
        if (kind && strcmp(kind, "error") == 0) {
            rawfield(L, -2, "reason");
            problem(c, "%s: account \"%s\": plan() gives an error for an active account with valid "
                    "credentials: %s", where, id, lua_isstring(L, -1) ? lua_tostring(L, -1) : "(no reason)");
            lua_pop(L, 1);
        } else if (kind && strcmp(kind, "create") == 0) {
            creates++;
            if (rawfield(L, -2, "object") == LUA_TTABLE) {
                check_object(c, account, id, where, "plan() create");
                lua_pushnil(L); /* keep the pops below balanced */
            } else {
                problem(c, "%s: account \"%s\": plan()'s create action has no object", where, id);
            }
            lua_pop(L, 1);
        }
        lua_pop(L, 2);
    }
    if (lua_istable(L, actions) && creates != 1 && c->nproblems == before)
        problem(c, "%s: account \"%s\": plan() over an active account without a worker should create "
                "exactly one Deployment, it creates %d", where, id, creates);
    else if (!lua_istable(L, actions))
        problem(c, "%s: plan() returned a %s, not a table of actions", where, luaL_typename(L, actions));
    lua_settop(L, top);
}

/* Renders the samples until one of them shows a problem: the rest would
 * mostly repeat it. */
static void render_samples(checker *c)
{
    lua_State *L = c->L;
    strmap seen = STRMAP_INIT;
    luahost_push_entry_field(c->h, "examples");
    if (lua_istable(L, -1) && rawfield(L, -1, "names") == LUA_TTABLE) {
        lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
        for (lua_Integer i = 1; i <= n && c->nproblems == 0; i++) {
            if (lua_rawgeti(L, -1, i) == LUA_TTABLE) {
                if (rawfield(L, -1, "id") == LUA_TSTRING && strmap_get(&seen, lua_tostring(L, -1)) == NULL) {
                    strmap_put(&seen, lua_tostring(L, -1), (void *)1);
                    render_sample(c, lua_tostring(L, -1), 0);
                }
                lua_pop(L, 1);
            }
            lua_pop(L, 1);
        }
    }
    lua_settop(L, 0);
    for (size_t i = 0; i < sizeof odd_ids / sizeof *odd_ids && c->nproblems == 0; i++) {
        if (strmap_get(&seen, odd_ids[i]))
            continue;
        strmap_put(&seen, odd_ids[i], (void *)1);
        render_sample(c, odd_ids[i], 1);
    }
    strmap_free(&seen);
}

/* ---- load and self-check ------------------------------------------------------ */

void rules_check_push_ctx(const config *cfg, lua_State *L)
{
    lua_createtable(L, 0, 4);
    lua_pushstring(L, cfg->namespace);
    lua_setfield(L, -2, "namespace");
    lua_pushstring(L, cfg->worker_image);
    lua_setfield(L, -2, "worker_image");
    lua_pushinteger(L, (lua_Integer)(util_wall_ms() / 1000));
    lua_setfield(L, -2, "now");
}

luahost *rules_load_checked(const config *cfg, const char *dir, char *err, size_t errlen)
{
    luahost *h = luahost_new(0);
    if (h == NULL) {
        util_seterr(err, errlen, "cannot create a Lua state");
        return NULL;
    }
    lua_State *L = luahost_state(h);
    char lerr[1024];
    if (luahost_load_dir(h, dir, "rules", cfg->rules_budget_ms, lerr, sizeof lerr) < 0) {
        util_seterr(err, errlen, "%s", lerr);
        goto err;
    }
    luahost_push_entry(h);
    if (!lua_istable(L, -1)) {
        util_seterr(err, errlen, "rules.lua: must return a table (got %s)", luaL_typename(L, -1));
        lua_pop(L, 1);
        goto err;
    }
    static const char *const required[] = {"plan", "deployment", "worker_name",
                                           "credentials_fingerprint", NULL};
    for (int i = 0; required[i]; i++) {
        if (rawfield(L, -1, required[i]) != LUA_TFUNCTION) {
            util_seterr(err, errlen, "rules.lua: the returned table has no function '%s'",
                        required[i]);
            lua_pop(L, 2);
            goto err;
        }
        lua_pop(L, 1);
    }
    int has_check = rawfield(L, -1, "self_check") == LUA_TFUNCTION;
    lua_remove(L, -2);
    if (!has_check) {
        lua_pop(L, 1);
        return h;
    }
    rules_check_push_ctx(cfg, L);
    if (luahost_pcall(L, 1, 2, cfg->rules_budget_ms, lerr, sizeof lerr) < 0) {
        util_seterr(err, errlen, "self-check: %s", lerr);
        goto err;
    }
    if (!lua_toboolean(L, -2)) {
        const char *why = lua_tostring(L, -1);
        util_seterr(err, errlen, "self-check failed: %s", why ? why : "(no reason given)");
        lua_pop(L, 2);
        goto err;
    }
    lua_pop(L, 2);
    return h;
err:
    luahost_free(h);
    return NULL;
}

/* ---- the check ------------------------------------------------------------------ */

/* Stage 2: the rules load in a fresh sandbox and have what the core calls. */
static luahost *load_rules(const config *cfg, const char *dir, checker *c)
{
    luahost *h = luahost_new(0);
    char err[1024];
    if (h == NULL) {
        problem(c, "cannot create a Lua state");
        return NULL;
    }
    if (luahost_load_dir(h, dir, "rules", cfg->rules_budget_ms, err, sizeof err) < 0) {
        problem(c, "%s", err);
        goto err;
    }
    lua_State *L = luahost_state(h);
    luahost_push_entry(h);
    if (!lua_istable(L, -1)) {
        problem(c, "rules.lua: must return a table (got %s)", luaL_typename(L, -1));
        goto err;
    }
    static const char *const required[] = {"plan", "deployment", "worker_name", "credentials_fingerprint"};
    for (size_t i = 0; i < sizeof required / sizeof *required; i++) {
        if (rawfield(L, -1, required[i]) != LUA_TFUNCTION)
            problem(c, "rules.lua: the returned table has no function '%s'", required[i]);
        lua_pop(L, 1);
    }
    lua_settop(L, 0);
    if (c->nproblems == 0)
        return h;
err:
    luahost_free(h);
    return NULL;
}

int rules_check_dir(const config *cfg, const char *dir, buf *problems, const char **stage, int *nfiles,
                  int *nsamples, luahost **checked)
{
    char err[1024];
    checker c = {.cfg = cfg, .problems = problems};
    luahost *h = NULL;
    *nfiles = 0;
    *stage = "lint";
    int linted = rules_lint_dir(dir, problems, nfiles);
    if (linted != 0) {
        c.nproblems = linted < 0 ? 1 : linted;
        goto out;
    }
    *stage = "load";
    if ((c.h = load_rules(cfg, dir, &c)) == NULL)
        goto out;
    c.L = luahost_state(c.h);
    *stage = "render";
    render_samples(&c);
    if (c.nproblems > 0)
        goto out;
    *stage = "self_check";
    if ((h = rules_load_checked(cfg, dir, err, sizeof err)) == NULL)
        problem(&c, "%s", err);
out:
    if (checked && c.nproblems == 0)
        *checked = h;
    else
        luahost_free(h);
    *nsamples = c.nsamples;
    luahost_free(c.h);
    return c.nproblems;
}

