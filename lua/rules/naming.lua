-- naming: the worker Deployment's name and labels, derived from an account id.
--
-- An account id is any string (usually digits). Kubernetes wants a DNS-1123
-- label for the name and a label value for the `account-id` label. An id
-- that is already valid is used as it is; any other id is sanitized and gets
-- a suffix of the first 10 hex digits of sha256(raw id), so two ids that
-- sanitize alike ("ABC" and "abc!", say) still get distinct names.
local hash = require("hash")

local type = type
local string_find, string_format, string_gsub, string_lower, string_sub =
    string.find, string.format, string.gsub, string.lower, string.sub

local M = {}

M.name_prefix = "sync-airbnb-worker-"
M.app = "sync-airbnb-worker"
M.max_length = 63
M.hash_length = 10

-- DNS-1123 label: 1..63 of [a-z0-9-], alphanumeric at both ends.
function M.is_dns_label(s)
    if type(s) ~= "string" or #s < 1 or #s > M.max_length then
        return false
    end
    return string_find(s, "^[a-z0-9]$") ~= nil or string_find(s, "^[a-z0-9][a-z0-9-]*[a-z0-9]$") ~= nil
end

-- Label value: empty, or 1..63 of [A-Za-z0-9_.-], alphanumeric at both ends.
function M.is_label_value(s)
    if type(s) ~= "string" or #s > M.max_length then
        return false
    end
    return s == "" or string_find(s, "^[A-Za-z0-9]$") ~= nil
        or string_find(s, "^[A-Za-z0-9][A-Za-z0-9_.-]*[A-Za-z0-9]$") ~= nil
end

-- prefix .. sanitized text .. "-" .. 10 hex of sha256(raw id), within 63
-- bytes. The sanitized part replaces runs of bytes outside `allowed` (a
-- pattern class body) with '-' and is trimmed to alphanumeric ends; "x" when
-- nothing is left. Bytes, not characters: a UTF-8 sequence becomes one '-'.
local function hashed_form(prefix, text, raw, allowed)
    local suffix = "-" .. string_sub(hash.sha256(raw), 1, M.hash_length)
    local s = string_gsub(text, "[^" .. allowed .. "]+", "-")
    s = string_gsub(s, "^[^A-Za-z0-9]+", "")
    s = string_sub(s, 1, M.max_length - #prefix - #suffix)
    s = string_gsub(s, "[^A-Za-z0-9]+$", "")
    return prefix .. (s == "" and "x" or s) .. suffix
end

local function check_id(account_id)
    if type(account_id) ~= "string" then
        return nil, string_format("account_id must be a string, got %s", type(account_id))
    end
    return true
end

--- The worker Deployment's name: `sync-airbnb-worker-<id>` when that is a
--- valid DNS-1123 label, else a sanitized form plus a hash suffix.
---@param account_id string
---@return string|nil name always a valid DNS-1123 label of at most 63 bytes
---@return string|nil err when account_id is not a string
function M.worker_name(account_id)
    local ok, err = check_id(account_id)
    if not ok then
        return nil, err
    end
    local plain = M.name_prefix .. account_id
    if M.is_dns_label(account_id) and #plain <= M.max_length then
        return plain
    end
    return hashed_form(M.name_prefix, string_lower(account_id), account_id, "a-z0-9")
end

--- The `account-id` label value: the raw id when it is a valid label value,
--- else a sanitized form plus the same hash suffix as the name.
---@param account_id string
---@return string|nil value
---@return string|nil err
function M.label_value(account_id)
    local ok, err = check_id(account_id)
    if not ok then
        return nil, err
    end
    if M.is_label_value(account_id) then
        return account_id
    end
    return hashed_form("", account_id, account_id, "A-Za-z0-9_.%-")
end

--- The Deployment's selector (the seed's): app and account-id. Kubernetes
--- never lets a selector change, so these two labels are fixed for good.
---@param account_id string
---@return table|nil match_labels
---@return string|nil err
function M.selector(account_id)
    local value, err = M.label_value(account_id)
    if not value then
        return nil, err
    end
    return { app = M.app, ["account-id"] = value }
end

--- All labels of a worker Deployment and its pods: the selector plus the
--- app.kubernetes.io set. managed-by is what the core lists and guards by.
---@param account_id string
---@return table|nil labels
---@return string|nil err
function M.labels(account_id)
    local name, err = M.worker_name(account_id)
    if not name then
        return nil, err
    end
    local labels = M.selector(account_id)
    labels["app.kubernetes.io/name"] = M.app
    labels["app.kubernetes.io/instance"] = name
    labels["app.kubernetes.io/managed-by"] = "sync-airbnb-operator"
    labels["app.kubernetes.io/part-of"] = "sync-airbnb"
    return labels
end

return M
