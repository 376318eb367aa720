/* metrics: the process_* families against what the kernel says about this
 * process, and the queue-depth gauge's counting of backlog ids. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "metrics.h"

/* The value of an unlabelled series NAME in the exposition text, or -1. */
static double value_of(const char *text, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = text; (p = strstr(p, name)) != NULL; p += n)
        if ((p == text || p[-1] == '\n') && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    return -1;
}

static double vmrss_bytes(void)
{
    char *status = NULL;
    size_t len = 0;
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL)
        return -1;
    double kb = -1;
    while (getline(&status, &len, f) > 0)
        if (strncmp(status, "VmRSS:", 6) == 0)
            kb = strtod(status + 6, NULL);
    free(status);
    fclose(f);
    return kb * 1024;
}

static void test_process_metrics(void)
{
    buf b = {0};
    metrics_render(&b);
    const char *t = b.data;
    CHECK_CONTAINS(t, "# TYPE process_cpu_seconds_total counter\n");
    CHECK_CONTAINS(t, "# TYPE process_resident_memory_bytes gauge\n");
    /* Resident memory within 25% of VmRSS, read a moment apart. */
    double rss = value_of(t, "process_resident_memory_bytes"), want = vmrss_bytes();
    CHECK(rss > 0 && want > 0 && rss > want * 0.75 && rss < want * 1.25);
    CHECK(value_of(t, "process_virtual_memory_bytes") >= rss);
    CHECK(value_of(t, "process_cpu_seconds_total") >= 0);
    /* Started within the last 10 minutes (a test run), not in 1970 or the future. */
    double start = value_of(t, "process_start_time_seconds");
    double now = (double)time(NULL);
    CHECK(start > now - 600 && start <= now + 1);
    /* Open fds follow open(): three more after opening three. */
    double fds = value_of(t, "process_open_fds");
    int extra[3];
    for (int i = 0; i < 3; i++)
        extra[i] = open("/dev/null", O_RDONLY);
    buf b2 = {0};
    metrics_render(&b2);
    CHECK(value_of(b2.data, "process_open_fds") == fds + 3);
    for (int i = 0; i < 3; i++)
        close(extra[i]);
    struct rlimit rl;
    CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0);
    CHECK(value_of(t, "process_max_fds") == (double)rl.rlim_cur);
    buf_free(&b);
    buf_free(&b2);
}

static void test_queue_depth(void)
{
    metrics_set_queue_depth(5, 7);
    CHECK(metrics_get("sync_airbnb_operator_queue_depth", "queue=\"accounts\"") == 5);
    CHECK(metrics_get("sync_airbnb_operator_queue_depth", "queue=\"writes\"") == 7);
    metrics_set_queue_depth(0, 0);
    CHECK(metrics_get("sync_airbnb_operator_queue_depth", "queue=\"accounts\"") == 0);
    buf b = {0};
    metrics_render(&b);
    CHECK_CONTAINS(b.data, "# TYPE sync_airbnb_operator_queue_depth gauge\n");
    CHECK_CONTAINS(b.data, "sync_airbnb_operator_queue_depth{queue=\"writes\"} 0\n");
    buf_free(&b);
    metrics_reset();
}

int main(void)
{
    RUN(test_process_metrics);
    RUN(test_queue_depth);
    return check_summary();
}
