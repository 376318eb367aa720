/* completion: `sync-airbnb-operator completion bash|zsh`, shell completion
 * scripts generated from the command table and config's flags, so they
 * offer exactly what --help lists. */
#ifndef COMPLETION_H
#define COMPLETION_H

#include <stddef.h>
#include <stdio.h>

typedef struct completion_command {
    const char *name;
    const char *summary;
} completion_command;

/* Writes the script for shell ("bash" or "zsh") to f. Returns 0, or -1 for
 * another shell (nothing written). */
int completion_write(FILE *f, const char *shell, const completion_command *cmds, size_t ncmds);

#endif
