/* check.h: the smallest test harness that says what failed and where.
 * Each test file has main() call RUN(test_fn) for each case and end with
 * `return check_summary();`. A failing CHECK marks the case failed and
 * continues; the process exits non-zero if any case failed. */
#ifndef CHECK_H
#define CHECK_H

#include <stdio.h>
#include <string.h>

static int check_failed_cases, check_passed_cases, check_case_failed;

#define CHECK(cond)                                                                    \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "  %s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            check_case_failed = 1;                                                     \
        }                                                                              \
    } while (0)

#define CHECK_STR(a, b)                                                                   \
    do {                                                                                  \
        const char *check_a_ = (a), *check_b_ = (b);                                      \
        if (check_a_ == NULL || check_b_ == NULL || strcmp(check_a_, check_b_) != 0) {    \
            fprintf(stderr, "  %s:%d: CHECK_STR failed: %s == %s\n    got:  %s\n    want: %s\n", \
                    __FILE__, __LINE__, #a, #b, check_a_ ? check_a_ : "(null)",           \
                    check_b_ ? check_b_ : "(null)");                                      \
            check_case_failed = 1;                                                        \
        }                                                                                 \
    } while (0)

#define CHECK_CONTAINS(hay, needle)                                                       \
    do {                                                                                  \
        const char *check_h_ = (hay), *check_n_ = (needle);                               \
        if (check_h_ == NULL || strstr(check_h_, check_n_) == NULL) {                     \
            fprintf(stderr, "  %s:%d: CHECK_CONTAINS failed: %s contains \"%s\"\n    got: %s\n", \
                    __FILE__, __LINE__, #hay, check_n_, check_h_ ? check_h_ : "(null)");  \
            check_case_failed = 1;                                                        \
        }                                                                                 \
    } while (0)

#define RUN(fn)                                                 \
    do {                                                        \
        check_case_failed = 0;                                  \
        fn();                                                   \
        if (check_case_failed) {                                \
            check_failed_cases++;                               \
            fprintf(stderr, "FAIL %s\n", #fn);                  \
        } else {                                                \
            check_passed_cases++;                               \
            fprintf(stderr, "ok   %s\n", #fn);                  \
        }                                                       \
    } while (0)

static inline int check_summary(void)
{
    fprintf(stderr, "%d cases passed, %d failed\n", check_passed_cases, check_failed_cases);
    return check_failed_cases ? 1 : 0;
}

#endif
