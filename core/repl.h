/* repl: `sync-airbnb-operator repl`, a Lua prompt for an operator admin
 * (see repl.c for what it is and is not). */
#ifndef REPL_H
#define REPL_H

#include "config.h"

/* The entry point of `sync-airbnb-operator repl`; returns the exit code. */
int repl_main(const config *cfg, int argc, char **argv);

#endif
