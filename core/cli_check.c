/* cli_check: the `check-rules [DIR]` command, what a user or CI runs before
 * shipping a rules change: rules_check_dir (rules_check.h, the same check hot
 * reload makes), printed for a person. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

#include "luahost.h"
#include "rules_check.h"

int cli_check_rules_main(const config *cfg, int argc, char **argv)
{
    if (argc > 1) {
        fprintf(stderr, "check-rules: expected at most one directory (see check-rules --help)\n");
        return 2;
    }
    cli_quiet_logs(cfg);
    const char *dir = argc == 1 ? argv[0] : cfg->rules_dir;
    char version[65], err[1024];
    if (luahost_dir_version(dir, version, err, sizeof err) < 0) {
        fprintf(stderr, "check-rules: %s\n", err);
        return 1;
    }
    buf problems = {0};
    const char *stage;
    int nfiles, nsamples;
    int nproblems = rules_check_dir(cfg, dir, &problems, &stage, &nfiles, &nsamples, NULL);
    if (nproblems == 0) {
        printf("rules OK: %s (version %.12s)\n", dir, version);
        printf("  %d files linted, %d sample accounts rendered and validated, self_check passed\n", nfiles,
               nsamples);
    } else {
        for (char *line = problems.data, *nl; line && *line; line = nl + 1) {
            nl = strchr(line, '\n');
            fprintf(stderr, "check-rules: %.*s\n", (int)(nl - line), line);
        }
        fprintf(stderr, "check-rules: %s: rejected at %s (%d problem%s); `run` would keep its previous rules\n",
                dir, stage, nproblems, nproblems == 1 ? "" : "s");
    }
    buf_free(&problems);
    return nproblems == 0 ? 0 : 1;
}
