/* names: the one validator of the names Kubernetes and PostgreSQL accept.
 * Every check of a Deployment name, label, annotation key, namespace or SQL
 * identifier in core/ goes through here, so the rules cannot drift apart
 * (the rules in lua/ make names; this file only judges them). */
#ifndef NAMES_H
#define NAMES_H

#include <stddef.h>

#include "json.h"

/* DNS-1123 label of n bytes: [a-z0-9]([-a-z0-9]*[a-z0-9])?; max 0 = no
 * length limit (Deployment, container and namespace names: 63). */
int names_dns_label_n(const char *s, size_t n, size_t max);
/* A Deployment (or namespace) name: a DNS-1123 label of at most 63. NULL: 0. */
int names_dns_label(const char *s);
/* DNS-1123 subdomain of n bytes: dot-separated labels, at most 253. */
int names_dns_subdomain_n(const char *s, size_t n);
/* A label value of n bytes: empty, or at most 63 of [A-Za-z0-9_.-] with
 * alphanumeric ends. */
int names_label_value_n(const char *s, size_t n);
/* A label or annotation key: [prefix/]name, prefix a DNS-1123 subdomain,
 * name a non-empty label value. */
int names_label_key(const char *k);
/* A PostgreSQL identifier the core quotes as is: [a-z_][a-z0-9_]* of n
 * bytes, at most 63. */
int names_pg_ident_n(const char *s, size_t n);

/* Checks one rendered Deployment (decoded JSON): name a DNS-1123 label of at
 * most 63 characters, apiVersion apps/v1 and kind Deployment, valid label
 * keys and values (object and pod template), a non-empty
 * spec.selector.matchLabels that is a subset of the pod template's labels,
 * at least one container, each with a name and an image. Returns 0, or -1
 * with the first problem in err. check-rules and the safety filter both
 * call it. */
int names_validate_deployment(const json_value *obj, char *err, size_t errlen);

#endif
