/* rules: see rules.h. */
#define _GNU_SOURCE /* renameat2 */
#include "rules.h"

#include <dirent.h>
#include <fcntl.h> /* AT_FDCWD */
#include <errno.h>
#include <lauxlib.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "rules_check.h"
#include "log.h"
#include "util.h"

struct rules {
    const config *cfg;
    luahost *host;
    char version[65];
    char *last_error;
    unsigned long reloads_ok, reloads_failed;
    rules_check_fn check;
    void *check_ud;
    int keep_last_good; /* copy each good set to cfg->rules_state_dir */
};

static int mkdir_p(const char *path)
{
    char *p = xstrdup(path);
    for (char *s = p + 1; *s; s++) {
        if (*s == '/') {
            *s = '\0';
            mkdir(p, 0700);
            *s = '/';
        }
    }
    int rc = mkdir(p, 0700) == 0 || errno == EEXIST ? 0 : -1;
    free(p);
    return rc;
}

/* Removes a directory of plain files (the copies made below). */
static void remove_flat_dir(const char *path)
{
    DIR *d = opendir(path);
    if (d == NULL)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char *f = xasprintf("%s/%s", path, e->d_name);
        unlink(f);
        free(f);
    }
    closedir(d);
    rmdir(path);
}

static int write_file(const char *path, const char *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL)
        return -1;
    int ok = fwrite(data, 1, len, f) == len;
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* Copies the *.lua of dir to state/current (via state/next and a rename):
 * what `run` falls back to at start-up when RULES_DIR's rules fail (a
 * rules edit that took the process down does not come back with it). */
static void save_last_good(const char *state, const char *dir)
{
    if (state == NULL || *state == '\0')
        return;
    /* per process: two operators sharing a state directory never mix files */
    char *next = xasprintf("%s/next-%d", state, (int)getpid()), *cur = xasprintf("%s/current", state);
    int ok = mkdir_p(state) == 0 && (remove_flat_dir(next), mkdir(next, 0700) == 0);
    struct dirent **names = NULL;
    int n = ok ? scandir(dir, &names, NULL, alphasort) : -1;
    for (int i = 0; i < n; i++) {
        size_t len = strlen(names[i]->d_name);
        if (ok && len > 4 && strcmp(names[i]->d_name + len - 4, ".lua") == 0 && names[i]->d_name[0] != '.') {
            char *src = xasprintf("%s/%s", dir, names[i]->d_name), *dst = xasprintf("%s/%s", next, names[i]->d_name);
            size_t sz;
            char *data = util_read_file(src, &sz);
            ok = data && write_file(dst, data, sz) == 0;
            free(data);
            free(src);
            free(dst);
        }
        free(names[i]);
    }
    free(names);
    if (ok) {
        /* current is swapped in one step: a crash never leaves it missing */
        if (renameat2(AT_FDCWD, next, AT_FDCWD, cur, RENAME_EXCHANGE) == 0)
            remove_flat_dir(next); /* now the previous copy */
        else if (errno != ENOENT || rename(next, cur) != 0)
            ok = 0;
    }
    if (!ok) {
        log_warn("cannot keep a copy of the last good rules", "dir", state, "error", strerror(errno), NULL);
        remove_flat_dir(next);
    }
    free(next);
    free(cur);
}

void rules_set_check(rules *r, rules_check_fn fn, void *ud)
{
    r->check = fn;
    r->check_ud = ud;
}

rules *rules_new(const config *cfg)
{
    rules *r = xcalloc(1, sizeof *r);
    r->cfg = cfg;
    return r;
}

void rules_free(rules *r)
{
    if (r == NULL)
        return;
    luahost_free(r->host);
    free(r->last_error);
    free(r);
}

void rules_push_ctx(rules *r, lua_State *L)
{
    rules_check_push_ctx(r->cfg, L);
}

int rules_reload(rules *r, const char *dir, char *err, size_t errlen)
{
    if (dir == NULL)
        dir = r->cfg->rules_dir;
    char version[65], after[65], lerr[1024];
    luahost *h = NULL;
    /* The files are read twice (hashed, then loaded), each through the
     * directory's ..data symlink, which a ConfigMap update swaps: a set
     * whose version changed while it loaded is a mix of two; load it again. */
    for (int attempt = 0; attempt < 3; attempt++) {
        if (luahost_dir_version(dir, version, lerr, sizeof lerr) < 0)
            break;
        /* Exactly check-rules' check (lint, load, samples, self_check). */
        buf problems = {0};
        const char *stage;
        int nfiles = 0, nsamples = 0;
        if (rules_check_dir(r->cfg, dir, &problems, &stage, &nfiles, &nsamples, &h) != 0) {
            size_t first = problems.data ? strcspn(problems.data, "\n") : 0;
            util_seterr(lerr, sizeof lerr, "%.*s", (int)first, problems.data ? problems.data : "check failed");
            h = NULL;
        }
        buf_free(&problems);
        if (luahost_dir_version(dir, after, lerr, sizeof lerr) == 0 && strcmp(after, version) == 0)
            break;
        luahost_free(h);
        h = NULL;
        util_seterr(lerr, sizeof lerr, "the rules directory changed while it was loaded");
    }
    if (h && r->check && r->check(r, h, r->check_ud, lerr, sizeof lerr) < 0) {
        luahost_free(h);
        h = NULL;
    }
    if (h == NULL) {
        r->reloads_failed++;
        free(r->last_error);
        r->last_error = xstrdup(lerr);
        util_seterr(err, errlen, "%s", lerr);
        log_error("rules rejected, keeping the previous rules", "dir", dir, "error", lerr,
                  "version", r->version[0] ? r->version : "(none)", NULL);
        return -1;
    }
    luahost_free(r->host);
    r->host = h;
    memcpy(r->version, version, sizeof version);
    free(r->last_error);
    r->last_error = NULL;
    r->reloads_ok++;
    log_info("rules loaded", "dir", dir, "version", r->version, NULL);
    if (r->keep_last_good)
        save_last_good(r->cfg->rules_state_dir, dir);
    return 0;
}

void rules_keep_last_good(rules *r)
{
    r->keep_last_good = 1;
}

int rules_load_at_start(rules *r, char *err, size_t errlen)
{
    char first[1024], last_good[4096];
    if (rules_reload(r, NULL, first, sizeof first) == 0)
        return 0;
    snprintf(last_good, sizeof last_good, "%s/current", r->cfg->rules_state_dir);
    const char *fallbacks[] = {last_good, r->cfg->builtin_rules_dir};
    for (size_t i = 0; i < sizeof fallbacks / sizeof *fallbacks; i++) {
        char ferr[1024];
        struct stat st;
        if (fallbacks[i] == NULL || stat(fallbacks[i], &st) != 0 || !S_ISDIR(st.st_mode))
            continue;
        int keep = r->keep_last_good;
        r->keep_last_good = 0; /* the copy is what we load: leave it alone */
        int rc = rules_reload(r, fallbacks[i], ferr, sizeof ferr);
        r->keep_last_good = keep;
        if (rc == 0) {
            /* Serving, but not on RULES_DIR's rules: say so (readyz: rejected). */
            free(r->last_error);
            r->last_error = xstrdup(first);
            r->reloads_failed++;
            log_warn("rules in RULES_DIR do not load; running on the last good rules", "rules_dir",
                     r->cfg->rules_dir, "fallback", fallbacks[i], "error", first, "version", r->version, NULL);
            return 0;
        }
    }
    util_seterr(err, errlen, "%s", first);
    return -1;
}

luahost *rules_host(rules *r)
{
    return r->host;
}

int rules_lua_kib(rules *r)
{
    return r->host ? lua_gc(luahost_state(r->host), LUA_GCCOUNT) : 0;
}

const char *rules_version(const rules *r)
{
    return r->version;
}

const char *rules_last_error(const rules *r)
{
    return r->last_error;
}

unsigned long rules_reload_count(const rules *r, int ok)
{
    return ok ? r->reloads_ok : r->reloads_failed;
}
