/* metrics_process: the standard process_* metrics (the names and meanings of
 * Prometheus' client libraries, so existing dashboards and alerts work), read
 * from /proc at scrape time rather than kept up to date by the loop. Linux
 * only; on a read failure the affected series is left out, never made up. */
#include "metrics.h"

#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* Fields 14, 15 (utime, stime, in clock ticks), 22 (starttime, ticks after
 * boot), 23 (vsize, bytes) and 24 (rss, pages) of /proc/self/stat. The
 * command name (field 2) may hold spaces and parentheses, so parsing starts
 * after its last ')'. */
static int read_stat(double *cpu_seconds, double *start_ticks, double *vsize, double *rss_pages)
{
    char text[1024];
    FILE *f = fopen("/proc/self/stat", "r");
    if (f == NULL)
        return -1;
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    const char *p = strrchr(text, ')');
    if (p == NULL)
        return -1;
    unsigned long utime, stime, vsz;
    unsigned long long start;
    long rss;
    /* After ')': state(3) ppid pgrp session tty_nr tpgid flags minflt cminflt
     * majflt cmajflt utime(14) stime(15) cutime cstime priority nice
     * num_threads itrealvalue starttime(22) vsize(23) rss(24). */
    if (sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %*d %*d %*d %*d %*d %*d %llu %lu %ld",
               &utime, &stime, &start, &vsz, &rss) != 5)
        return -1;
    double hz = (double)sysconf(_SC_CLK_TCK);
    *cpu_seconds = (double)(utime + stime) / hz;
    *start_ticks = (double)start;
    *vsize = (double)vsz;
    *rss_pages = (double)rss;
    return 0;
}

/* Boot time in seconds since the epoch (the "btime" line of /proc/stat). */
static int read_boot_time(double *btime)
{
    FILE *f = fopen("/proc/stat", "r");
    if (f == NULL)
        return -1;
    char line[256];
    int found = -1;
    unsigned long long t;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "btime %llu", &t) == 1) {
            *btime = (double)t;
            found = 0;
            break;
        }
    fclose(f);
    return found;
}

/* Open descriptors, minus the one opendir() itself holds while counting. */
static int count_open_fds(double *n)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return -1;
    long count = 0;
    const struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            count++;
    closedir(d);
    *n = (double)(count > 0 ? count - 1 : 0);
    return 0;
}

static void put(buf *out, const char *name, const char *type, const char *help, double v)
{
    buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, v);
}

void metrics_process_render(buf *out)
{
    double cpu, start_ticks, vsize, rss_pages, btime, fds;
    struct rlimit rl;
    if (read_stat(&cpu, &start_ticks, &vsize, &rss_pages) == 0) {
        put(out, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", cpu);
        put(out, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", vsize);
        put(out, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
            rss_pages * (double)sysconf(_SC_PAGESIZE));
        if (read_boot_time(&btime) == 0)
            put(out, "process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.",
                btime + start_ticks / (double)sysconf(_SC_CLK_TCK));
    }
    if (count_open_fds(&fds) == 0)
        put(out, "process_open_fds", "gauge", "Number of open file descriptors.", fds);
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        put(out, "process_max_fds", "gauge", "Maximum number of open file descriptors.",
            (double)rl.rlim_cur); /* RLIM_INFINITY shows as 2^64-1, as client_golang's does */
}
