/* ownership: the JSON patch that moves the fields our POST owns (operation
 * Update) to our apply (operation Apply), as client-go's csaupgrade does. The
 * real API server's side is tests/integration/test_field_ownership.py. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "json.h"
#include "ownership.h"

static json_value *parse(const char *s)
{
    char err[128];
    json_value *v = json_parse(s, strlen(s), err, sizeof err);
    CHECK(v != NULL);
    return v;
}

#define OTHER "{\"manager\":\"kube-controller-manager\",\"operation\":\"Update\",\"apiVersion\":\"apps/v1\"," \
              "\"fieldsType\":\"FieldsV1\",\"fieldsV1\":{\"f:status\":{}},\"subresource\":\"status\"}"
#define POSTED "{\"manager\":\"sync-airbnb-operator\",\"operation\":\"Update\",\"apiVersion\":\"apps/v1\"," \
               "\"time\":\"2026-01-01T00:00:00Z\",\"fieldsType\":\"FieldsV1\",\"fieldsV1\":" \
               "{\"f:spec\":{\"f:replicas\":{},\"f:strategy\":{\"f:rollingUpdate\":{\".\":{}},\"f:type\":{}}}}}"
#define APPLIED "{\"manager\":\"sync-airbnb-operator\",\"operation\":\"Apply\",\"apiVersion\":\"apps/v1\"," \
                "\"fieldsType\":\"FieldsV1\",\"fieldsV1\":{\"f:metadata\":{\"f:labels\":{}}," \
                "\"f:spec\":{\"f:replicas\":{},\"f:paused\":{}}}}"

static void test_update_entry_merged_into_apply(void)
{
    json_value *obj = parse("{\"metadata\":{\"resourceVersion\":\"42\",\"managedFields\":[" POSTED "," OTHER
                            "," APPLIED "]}}");
    CHECK(own_has_update_entry(json_get(obj, "metadata")) == 1);
    char *patch = own_upgrade_patch(obj);
    CHECK_STR(patch,
              "[{\"op\":\"test\",\"path\":\"/metadata/managedFields/0/manager\",\"value\":\"sync-airbnb-operator\"},"
              "{\"op\":\"test\",\"path\":\"/metadata/managedFields/0/operation\",\"value\":\"Update\"},"
              "{\"op\":\"test\",\"path\":\"/metadata/managedFields/0/fieldsV1\",\"value\":"
              "{\"f:spec\":{\"f:replicas\":{},\"f:strategy\":{\"f:rollingUpdate\":{\".\":{}},\"f:type\":{}}}}},"
              "{\"op\":\"test\",\"path\":\"/metadata/managedFields/2/manager\",\"value\":\"sync-airbnb-operator\"},"
              "{\"op\":\"test\",\"path\":\"/metadata/managedFields/2/operation\",\"value\":\"Apply\"},"
              "{\"op\":\"test\",\"path\":\"/metadata/managedFields/2/fieldsV1\",\"value\":"
              "{\"f:metadata\":{\"f:labels\":{}},\"f:spec\":{\"f:replicas\":{},\"f:paused\":{}}}},"
              "{\"op\":\"replace\",\"path\":\"/metadata/managedFields/2/fieldsV1\",\"value\":"
              "{\"f:metadata\":{\"f:labels\":{}},\"f:spec\":{\"f:replicas\":{},\"f:paused\":{},"
              "\"f:strategy\":{\"f:rollingUpdate\":{\".\":{}},\"f:type\":{}}}}},"
              "{\"op\":\"remove\",\"path\":\"/metadata/managedFields/0\"}]");
    free(patch);
    json_free(obj);
}

static void test_update_entry_alone_becomes_apply(void)
{
    json_value *obj = parse("{\"metadata\":{\"resourceVersion\":\"7\",\"managedFields\":[" OTHER "," POSTED "]}}");
    char *patch = own_upgrade_patch(obj);
    CHECK_CONTAINS(patch, "{\"op\":\"test\",\"path\":\"/metadata/managedFields/1/operation\",\"value\":\"Update\"},");
    CHECK_CONTAINS(patch, ",{\"op\":\"replace\",\"path\":\"/metadata/managedFields/1/operation\","
                          "\"value\":\"Apply\"}]");
    free(patch);
    json_free(obj);
}

/* No Apply entry of ours: the informer's copy is enough (no GET), the
 * patch guarded by its resourceVersion. With one, the move needs the GET. */
static void test_rename_from_the_informers_copy(void)
{
    json_value *obj = parse("{\"metadata\":{\"resourceVersion\":\"7\",\"managedFields\":[" OTHER "," POSTED "]}}");
    CHECK(own_rename_index(json_get(obj, "metadata")) == 1);
    char *patch = own_rename_patch(1, 7);
    CHECK_STR(patch, "[{\"op\":\"test\",\"path\":\"/metadata/resourceVersion\",\"value\":\"7\"},"
                     "{\"op\":\"test\",\"path\":\"/metadata/managedFields/1/manager\",\"value\":\"sync-airbnb-operator\"},"
                     "{\"op\":\"test\",\"path\":\"/metadata/managedFields/1/operation\",\"value\":\"Update\"},"
                     "{\"op\":\"replace\",\"path\":\"/metadata/managedFields/1/operation\",\"value\":\"Apply\"}]");
    free(patch);
    json_free(obj);
    obj = parse("{\"metadata\":{\"resourceVersion\":\"8\",\"managedFields\":[" POSTED "," APPLIED "]}}");
    CHECK(own_rename_index(json_get(obj, "metadata")) == -1);
    json_free(obj);
    obj = parse("{\"metadata\":{\"resourceVersion\":\"9\",\"managedFields\":[" OTHER "]}}");
    CHECK(own_rename_index(json_get(obj, "metadata")) == -1);
    json_free(obj);
}

static void test_nothing_to_move(void)
{
    json_value *obj = parse("{\"metadata\":{\"resourceVersion\":\"7\",\"managedFields\":[" OTHER "," APPLIED "]}}");
    CHECK(own_has_update_entry(json_get(obj, "metadata")) == 0);
    CHECK(own_upgrade_patch(obj) == NULL);
    json_free(obj);
    /* Someone else's Update entry, or ours on the status subresource, is not ours to move. */
    obj = parse("{\"metadata\":{\"resourceVersion\":\"7\",\"managedFields\":[{\"manager\":\"kubectl-edit\","
                "\"operation\":\"Update\",\"fieldsV1\":{}},{\"manager\":\"sync-airbnb-operator\","
                "\"operation\":\"Update\",\"subresource\":\"status\",\"fieldsV1\":{}}]}}");
    CHECK(own_upgrade_patch(obj) == NULL);
    json_free(obj);
}

int main(void)
{
    RUN(test_update_entry_merged_into_apply);
    RUN(test_update_entry_alone_becomes_apply);
    RUN(test_rename_from_the_informers_copy);
    RUN(test_nothing_to_move);
    return check_summary();
}
