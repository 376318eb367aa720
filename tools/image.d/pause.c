/*
 * The pod sandbox's first process: it holds the pod's namespaces, reaps the
 * zombies re-parented to it, and exits 0 on SIGINT/SIGTERM. The behaviour of
 * Kubernetes' build/pause/linux/pause.c; Debian ships no pause binary and no
 * registry can be reached here, so tools/image builds this one (gcc -static).
 */
#include <signal.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define VERSION "3.10-sync-airbnb-operator"

static void say(const char *s) { (void)!write(STDERR_FILENO, s, strlen(s)); }

/* Only async-signal-safe calls in handlers: write and _exit, not printf/exit. */
static void on_stop(int signo)
{
    (void)signo;
    say("pause: shutting down on signal\n");
    _exit(0);
}

static void on_child(int signo)
{
    (void)signo;
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
}

int main(int argc, char **argv)
{
    struct sigaction stop, reap;

    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        (void)!write(STDOUT_FILENO, "pause " VERSION "\n", sizeof("pause " VERSION "\n") - 1);
        return 0;
    }
    if (getpid() != 1)
        say("pause: warning: not running as pid 1\n");

    memset(&stop, 0, sizeof stop);
    stop.sa_handler = on_stop;
    memset(&reap, 0, sizeof reap);
    reap.sa_handler = on_child;
    reap.sa_flags = SA_NOCLDSTOP;
    if (sigaction(SIGINT, &stop, NULL) < 0 || sigaction(SIGTERM, &stop, NULL) < 0 ||
        sigaction(SIGCHLD, &reap, NULL) < 0)
        return 1;

    for (;;)
        pause();
    return 42; /* not reached */
}
