/* ownership: field ownership of the operator's Deployments under server-side
 * apply.
 *
 * A Deployment is created with POST (which fails with 409 on any object of
 * that name, so an unmanaged look-alike is never adopted), and a POST records
 * its fields under an "Update" managedFields entry of the operator's field
 * manager. Later applies (operation "Apply") do not remove a field that entry
 * still owns, so a field the rules stop rendering would stay forever. Like
 * client-go's csaupgrade, before the first update of such a Deployment the
 * operator moves that entry's fields into its Apply entry with one JSON patch
 * that tests both entries; from then on every field it renders is owned by
 * its apply, and a field removed from the rules is removed from the object. */
#ifndef OWNERSHIP_H
#define OWNERSHIP_H

#include "json.h"

/* The fieldManager of every write of the operator. */
#define OWN_FIELD_MANAGER "sync-airbnb-operator"

/* 1 if the object's metadata (as decoded JSON) has a managedFields entry of
 * OWN_FIELD_MANAGER with operation Update on the main resource. */
int own_has_update_entry(const json_value *meta);

/* The JSON patch (application/json-patch+json) that moves that entry's
 * fields into the Apply entry of OWN_FIELD_MANAGER and removes it (or
 * renames it to Apply when there is none), guarded by tests that both
 * entries are still as in obj; NULL when the object has no such entry. obj
 * is the whole object. Caller frees. */
char *own_upgrade_patch(const json_value *obj);

/* The index of that Update entry when OWN_FIELD_MANAGER has no Apply entry
 * (a worker created by our POST and never updated since), else -1: the move
 * is then a rename, which own_rename_patch makes without reading the object. */
long own_rename_index(const json_value *meta);

/* The JSON patch that renames entry index (own_rename_index) to Apply,
 * guarded by a test of the object's resourceVersion: the object is exactly
 * the copy the index came from (the informer's), or the server refuses the
 * patch (and the caller reads it, as for own_upgrade_patch). Caller frees. */
char *own_rename_patch(long index, unsigned long long resource_version);

#endif
