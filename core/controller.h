/* controller: the `run` command. One libuv loop owns everything: the
 * PostgreSQL connection (LISTEN sync_airbnb_accounts + a periodic full
 * resync), the watch cache of managed Deployments and Pods, the rules (hot
 * reloaded when RULES_DIR changes), the leader election, and the execution of
 * the planned actions (log line + audit_log row + Event for each). */
#ifndef CONTROLLER_H
#define CONTROLLER_H

#include "config.h"

/* The entry point of `sync-airbnb-operator run`; returns the exit code. */
int run_main(const config *cfg, int argc, char **argv);

#endif
