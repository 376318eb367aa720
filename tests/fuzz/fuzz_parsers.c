/* libFuzzer entry points for the parsers that take outside input. One file,
 * three targets; pick one with -DFUZZ_TARGET_JSON, -DFUZZ_TARGET_WATCH or
 * -DFUZZ_TARGET_KUBECONFIG. See tests/fuzz/README.md for the build lines.
 *
 * Built with -DFUZZ_REPLAY (any C compiler, no libFuzzer) it is a replayer:
 * each argument is a file or a directory of files fed to the target once,
 * which is how a crash found by a long session is reproduced under gdb, and
 * how CI-less machines without clang check that this file still builds.
 *
 * The checks are the ones of tests/c/test_fuzz_parsers.c in their cheapest
 * form: no crash, no sanitizer report, an error is a message, and a chunked
 * watch feed gives what a whole one gives. */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "json.h"
#include "kube.h"
#include "util.h"

#if !defined(FUZZ_TARGET_JSON) && !defined(FUZZ_TARGET_WATCH) && !defined(FUZZ_TARGET_KUBECONFIG)
#error "define one of FUZZ_TARGET_JSON, FUZZ_TARGET_WATCH, FUZZ_TARGET_KUBECONFIG"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#ifdef FUZZ_TARGET_JSON
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256] = "";
    json_value *v = json_parse((const char *)data, size, err, sizeof err);
    if (v == NULL) {
        if (strncmp(err, "invalid JSON at byte ", 21) != 0)
            abort();
        return 0;
    }
    buf a = {0}, b = {0};
    json_write(&a, v);
    json_value *w = json_parse(a.data, a.len, err, sizeof err);
    if (w == NULL)
        abort(); /* what we write must parse */
    json_write(&b, w);
    if (a.len != b.len || memcmp(a.data, b.data, a.len) != 0)
        abort(); /* and be a fixed point */
    json_free(w);
    json_free(v);
    buf_free(&a);
    buf_free(&b);
    return 0;
}
#endif

#ifdef FUZZ_TARGET_WATCH
static int record(const char *type, const char *obj, size_t len, void *ud)
{
    buf *log = ud;
    buf_puts(log, type);
    buf_putc(log, '\x1f');
    buf_append(log, obj, len);
    buf_putc(log, '\x1e');
    return 0;
}

/* Feeds data whole (step 0) or in pieces of step bytes. */
static int feed(const uint8_t *data, size_t size, size_t step, buf *log, char *err, size_t errlen)
{
    kube_watch_framer *f = kube_watch_framer_new(4096);
    int rc = 0;
    for (size_t at = 0; at < size && rc == 0;) {
        size_t n = step && size - at > step ? step : size - at;
        rc = kube_watch_framer_feed(f, (const char *)data + at, n, record, log, err, errlen);
        at += n;
    }
    if (rc == 0)
        buf_printf(log, "pending %zu", kube_watch_framer_pending(f));
    kube_watch_framer_free(f);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    size_t step = 1 + data[0] % 17; /* the first byte picks the chunk size */
    data++, size--;
    buf whole = {0}, part = {0};
    char e1[256] = "", e2[256] = "";
    int r1 = feed(data, size, 0, &whole, e1, sizeof e1);
    int r2 = feed(data, size, step, &part, e2, sizeof e2);
    if (r1 != r2 || whole.len != part.len || (whole.len && memcmp(whole.data, part.data, whole.len)) ||
        strcmp(e1, e2) != 0)
        abort();
    if (r1 == -1 && e1[0] == '\0')
        abort();
    buf_free(&whole);
    buf_free(&part);
    return 0;
}
#endif

#ifdef FUZZ_TARGET_KUBECONFIG
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[64];
    if (path[0] == '\0')
        snprintf(path, sizeof path, "/tmp/sao-fuzz-kubeconfig-%d.yaml", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (f == NULL)
        return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    kube_config c;
    char err[512] = "";
    int rc = kube_config_load_kubeconfig(path, &c, err, sizeof err);
    if (rc == 0 && (c.server == NULL || c.server[0] == '\0'))
        abort();
    if (rc != 0 && strncmp(err, "kubeconfig ", 11) != 0)
        abort();
    kube_config_free(&c);
    return 0;
}
#endif

#ifdef FUZZ_REPLAY
static void replay_file(const char *path)
{
    size_t len = 0;
    char *data = util_read_file(path, &len);
    if (data == NULL) {
        perror(path);
        return;
    }
    LLVMFuzzerTestOneInput((const uint8_t *)data, len);
    free(data);
}

int main(int argc, char **argv)
{
    int n = 0;
    for (int i = 1; i < argc; i++) {
        DIR *d = opendir(argv[i]);
        if (d == NULL) {
            replay_file(argv[i]);
            n++;
            continue;
        }
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.')
                continue;
            char *p = xasprintf("%s/%s", argv[i], e->d_name);
            replay_file(p);
            free(p);
            n++;
        }
        closedir(d);
    }
    fprintf(stderr, "replayed %d inputs\n", n);
    return 0;
}
#endif
