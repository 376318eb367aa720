/* strmap: insert, replace, delete with tombstones, growth, iteration. */
#include <stdio.h>
#include <stdlib.h>

#include "check.h"
#include "strmap.h"

static void test_basic_and_growth(void)
{
    strmap m = STRMAP_INIT;
    CHECK(strmap_get(&m, "x") == NULL);
    CHECK(strmap_del(&m, "x") == NULL);
    static int vals[5000];
    char key[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "k%d", i);
        CHECK(strmap_put(&m, key, &vals[i]) == NULL);
    }
    CHECK(m.len == 5000);
    for (int i = 0; i < 5000; i += 2) {
        snprintf(key, sizeof key, "k%d", i);
        CHECK(strmap_del(&m, key) == &vals[i]);
    }
    CHECK(m.len == 2500);
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "k%d", i);
        CHECK(strmap_get(&m, key) == (i % 2 ? &vals[i] : NULL));
    }
    /* Re-insert over tombstones, replace returns the old value. */
    for (int i = 0; i < 5000; i += 2) {
        snprintf(key, sizeof key, "k%d", i);
        strmap_put(&m, key, &vals[i]);
    }
    CHECK(strmap_put(&m, "k1", &vals[0]) == &vals[1]);
    size_t it = 0, n = 0;
    const char *k;
    void *v;
    while (strmap_next(&m, &it, &k, &v))
        n++;
    CHECK(n == 5000 && m.len == 5000);
    CHECK(strmap_get(&m, "") == NULL);
    strmap_put(&m, "", &vals[7]);
    CHECK(strmap_get(&m, "") == &vals[7]);
    strmap_free(&m);
}

int main(void)
{
    RUN(test_basic_and_growth);
    return check_summary();
}
