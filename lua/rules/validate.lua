-- validate: checks on what goes into the rules (account rows) and what comes
-- out (Deployments). Both return true, or nil and a message that never quotes
-- a credential value.
local json = require("json")
local naming = require("naming")

local ipairs, next, pairs, tostring, type = ipairs, next, pairs, tostring, type
local math_type = math.type
local string_find, string_format, string_gmatch, string_match =
    string.find, string.format, string.gmatch, string.match

local M = {}

-- Columns the worker needs to sync; an active account without them is an error.
M.credential_fields = { "airbnb_cookie", "x_client_version", "user_agent" }
-- Columns that are strings, or nil for SQL NULL.
M.optional_string_fields = { "customer_id", "last_sync_at", "updated_at", "deleted_at",
    "credentials_generation" }

--- The shape every account row must have, active or not: a string id, a
--- boolean is_active and string-or-nil timestamps.
---@param account any
---@return true|nil ok
---@return string|nil err
function M.account(account)
    if type(account) ~= "table" then
        return nil, string_format("account must be a table, got %s", type(account))
    end
    if type(account.account_id) ~= "string" then
        return nil, string_format("account_id must be a string, got %s", type(account.account_id))
    end
    if type(account.is_active) ~= "boolean" then
        return nil, string_format("is_active must be a boolean, got %s", type(account.is_active))
    end
    for _, field in ipairs(M.optional_string_fields) do
        local value = account[field]
        if value ~= nil and type(value) ~= "string" then
            return nil, string_format("%s must be a string or NULL, got %s", field, type(value))
        end
    end
    return true
end

--- Credentials an active account needs: each a non-empty string. The message
--- names the field, never its value.
---@param account table
---@return true|nil ok
---@return string|nil err
function M.credentials(account)
    for _, field in ipairs(M.credential_fields) do
        local value = account[field]
        if value == nil then
            return nil, field .. " is NULL"
        elseif type(value) ~= "string" then
            return nil, string_format("%s must be a string, got %s", field, type(value))
        elseif value == "" then
            return nil, field .. " is empty"
        end
    end
    return true
end

-- A DNS-1123 subdomain: dot-separated DNS labels, at most 253 bytes.
local function is_dns_subdomain(s)
    if #s > 253 or string_find(s, "%.%.") or string_find(s, "^%.") or string_find(s, "%.$") then
        return false
    end
    for part in string_gmatch(s, "[^.]+") do
        if not naming.is_dns_label(part) then
            return false
        end
    end
    return true
end

-- A label key: [prefix/]name, prefix a DNS subdomain, name 1..63 of
-- [A-Za-z0-9_.-] with alphanumeric ends.
local function label_key_ok(key)
    local prefix, name = string_match(key, "^([^/]*)/([^/]*)$")
    if prefix == nil then
        name = key
    elseif not is_dns_subdomain(prefix) then
        return false
    end
    return name ~= "" and naming.is_label_value(name)
end

-- The same dozen keys come back for every rendered object: remembered (a
-- pure function's answers; the table starts over past 1,024 keys).
local key_verdicts, key_verdict_count = {}, 0

function M.is_label_key(key)
    if type(key) ~= "string" then
        return false
    end
    local ok = key_verdicts[key]
    if ok == nil then
        ok = label_key_ok(key)
        if key_verdict_count >= 1024 then
            key_verdicts, key_verdict_count = {}, 0
        end
        key_verdicts[key] = ok
        key_verdict_count = key_verdict_count + 1
    end
    return ok
end

local function check_labels(labels, where)
    if type(labels) ~= "table" then
        return nil, where .. " must be a table"
    end
    for key, value in pairs(labels) do
        if not M.is_label_key(key) then
            return nil, string_format("%s: %q is not a valid label key", where, tostring(key))
        end
        if not naming.is_label_value(value) then
            return nil, string_format("%s[%q]: %q is not a valid label value (at most 63 of "
                .. "[A-Za-z0-9_.-], alphanumeric at both ends)", where, key, tostring(value))
        end
    end
    return true
end

local function check_annotations(annotations, where)
    if annotations == nil then
        return true
    end
    if type(annotations) ~= "table" then
        return nil, where .. " must be a table"
    end
    for key, value in pairs(annotations) do
        if not M.is_label_key(key) then
            return nil, string_format("%s: %q is not a valid annotation key", where, tostring(key))
        end
        if type(value) ~= "string" then
            return nil, string_format("%s[%q] must be a string, got %s", where, key, type(value))
        end
    end
    return true
end

--- Every list must be marked with json.array, so that it still encodes as []
--- when a rule empties it. Returns the path of an unmarked one, or nil.
---@param value any
---@param path string how to name value in the result
---@return string|nil path
function M.unmarked_list(value, path)
    if type(value) ~= "table" then
        return nil
    end
    local marked = json.is_array(value)
    for key, child in pairs(value) do
        if math_type(key) == "integer" and not marked then
            return path
        end
        local child_path = math_type(key) == "integer" and string_format("%s[%d]", path, key)
            or path .. "." .. tostring(key)
        local found = M.unmarked_list(child, child_path)
        if found then
            return found
        end
    end
    return nil
end

local MANAGED_BY = "app.kubernetes.io/managed-by"

--- Checks a rendered Deployment before the core may apply it: name, labels,
--- selector ⊆ template labels, exactly one container with an image, the
--- managed-by label (without it the core could never find the object again)
--- and every list marked with json.array.
---@param obj any
---@return true|nil ok
---@return string|nil err
function M.deployment(obj)
    if type(obj) ~= "table" then
        return nil, string_format("deployment must be a table, got %s", type(obj))
    end
    if obj.apiVersion ~= "apps/v1" or obj.kind ~= "Deployment" then
        return nil, "apiVersion/kind must be apps/v1 Deployment"
    end
    local meta = obj.metadata
    if type(meta) ~= "table" then
        return nil, "metadata must be a table"
    end
    if not naming.is_dns_label(meta.name) then
        return nil, string_format("metadata.name %q is not a DNS-1123 label (at most 63 of "
            .. "[a-z0-9-], alphanumeric at both ends)", tostring(meta.name))
    end
    if not naming.is_dns_label(meta.namespace) then
        return nil, string_format("metadata.namespace %q is not a DNS-1123 label", tostring(meta.namespace))
    end
    local ok, err = check_labels(meta.labels, "metadata.labels")
    if not ok then
        return nil, err
    end
    if meta.labels[MANAGED_BY] ~= "sync-airbnb-operator" then
        return nil, string_format("metadata.labels[%q] must be \"sync-airbnb-operator\"", MANAGED_BY)
    end
    ok, err = check_annotations(meta.annotations, "metadata.annotations")
    if not ok then
        return nil, err
    end
    local spec = obj.spec
    if type(spec) ~= "table" or type(spec.template) ~= "table" or type(spec.template.metadata) ~= "table"
        or type(spec.template.spec) ~= "table" then
        return nil, "spec.template.metadata and spec.template.spec must be tables"
    end
    local template_labels = spec.template.metadata.labels
    ok, err = check_labels(template_labels, "spec.template.metadata.labels")
    if not ok then
        return nil, err
    end
    ok, err = check_annotations(spec.template.metadata.annotations, "spec.template.metadata.annotations")
    if not ok then
        return nil, err
    end
    local selector = type(spec.selector) == "table" and spec.selector.matchLabels
    if type(selector) ~= "table" or next(selector) == nil then
        return nil, "spec.selector.matchLabels must be a non-empty table"
    end
    for key, value in pairs(selector) do
        if template_labels[key] ~= value then
            return nil, string_format("spec.selector.matchLabels[%q] does not match the pod template "
                .. "labels, so the Deployment would select none of its own pods", tostring(key))
        end
    end
    local containers = spec.template.spec.containers
    if type(containers) ~= "table" or #containers ~= 1 then
        return nil, "spec.template.spec.containers must hold exactly one container"
    end
    local container = containers[1]
    if type(container) ~= "table" or not naming.is_dns_label(container.name) then
        return nil, "the container needs a name that is a DNS-1123 label"
    end
    if type(container.image) ~= "string" or container.image == "" then
        return nil, "the container needs an image"
    end
    local unmarked = M.unmarked_list(obj, "deployment")
    if unmarked then
        return nil, unmarked .. " is a list not marked with json.array (an empty one would encode as {})"
    end
    return true
end

return M
