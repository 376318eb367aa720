/* yamlout: `-o yaml`, the YAML form of every document the CLI prints as
 * JSON (plan, status, migrate status), written from the same JSON so the two
 * cannot disagree. libyaml's emitter does the quoting. */
#ifndef YAMLOUT_H
#define YAMLOUT_H

#include <stddef.h>
#include <stdio.h>

#include "util.h"

/* Appends to out the YAML document holding the JSON text json (one
 * document, block style; strings that would read back as another type —
 * "true", "123", "" — are double-quoted). Returns 0, or -1 with err when
 * json does not parse. */
int yamlout_from_json(buf *out, const char *json, size_t len, char *err, size_t errlen);

/* Prints a JSON document as JSON (followed by a newline) or, when yaml is
 * set, as YAML. Returns 0 or -1 (message on stderr). */
int yamlout_print(FILE *f, const char *json, int yaml);

#endif
