-- plan: the reconcile decision. Desired state (one worker Deployment per
-- active account) against observed state (the managed Deployments the core
-- sees) gives a sorted list of actions. Pure: the core does all I/O, and it
-- alone enforces the delete budget and the empty-set hold.
--
-- An account is active iff is_active == true and deleted_at == nil. A bad
-- account (wrong types, missing credentials, a rule error while rendering
-- it) yields an "error" action for that account only; its existing
-- Deployment, if any, is left alone rather than deleted.
local deployment = require("deployment")
local fingerprint = require("fingerprint")
local hash = require("hash")
local json = require("json")
local naming = require("naming")
local validate = require("validate")

local error, ipairs, pairs, pcall, tostring, type = error, ipairs, pairs, pcall, tostring, type
local string_format, string_gsub = string.format, string.gsub
local table_concat, table_sort = table.concat, table.sort

local M = {}

function M.is_active(account)
    return account.is_active == true and account.deleted_at == nil
end

local function inactive_reason(account)
    return account.deleted_at ~= nil and "account soft-deleted" or "account inactive"
end

-- Defence in depth for DESIGN.md §5.4: a reason built from an error raised
-- by an edited rule could quote a credential; cut any such value out.
local function redact(message, account)
    if type(account) ~= "table" then
        return message
    end
    local fields = {}
    for _, list in ipairs({ validate.credential_fields, fingerprint.fields }) do
        for _, field in ipairs(list) do
            fields[#fields + 1] = field
        end
    end
    for _, field in ipairs(fields) do
        local value = account[field]
        if type(value) == "string" and #value >= 4 then
            message = string_gsub(message, string_gsub(value, "%p", "%%%0"), "<redacted>")
        end
    end
    return message
end

--- The observed entry the core would report right after applying `object`
--- with `desired_hash` (used by examples and specs to chain plans).
---@param object table a rendered Deployment
---@param desired_hash string
---@return table observed_entry
function M.observe(object, desired_hash)
    local annotations = {}
    for key, value in pairs(object.metadata.annotations or {}) do
        annotations[key] = value
    end
    local template_annotations = object.spec.template.metadata.annotations or {}
    return {
        name = object.metadata.name,
        account_id = annotations[deployment.account_id_annotation],
        applied_hash = desired_hash,
        fingerprint = template_annotations[fingerprint.annotation],
        annotations = annotations,
        generation = 1,
        drifted = false,
        replicas = object.spec.replicas,
        ready_replicas = 0,
    }
end

--- Observed state after the core applied `actions` on top of `observed`.
---@param actions table
---@param observed table|nil
---@return table observed
function M.observed_after(actions, observed)
    local result = {}
    for name, entry in pairs(observed or {}) do
        result[name] = entry
    end
    for _, action in ipairs(actions) do
        if action.action == "create" or action.action == "update" then
            result[action.name] = M.observe(action.object, action.desired_hash)
        elseif action.action == "delete" then
            result[action.name] = nil
        end
    end
    return result
end

-- Renders one active account against its observed Deployment (or nil).
-- Returns the action or nil for nothing to do; raises on a rule error.
local function reconcile_account(account, observed, ctx)
    local object = deployment.deployment(account, ctx)
    local desired_hash = hash.sha256(json.encode(object))
    local changed = observed == nil or observed.applied_hash ~= desired_hash
    if not changed and not observed.drifted then
        return nil -- this very object was validated when it was applied
    end
    local ok, err = validate.deployment(object)
    if not ok then
        return { action = "error", code = "invalid_deployment", retryable = false,
            reason = "rendered Deployment is invalid: " .. err }
    end
    if observed == nil then
        return { action = "create", reason = "active account has no worker",
            object = object, desired_hash = desired_hash }
    end
    local reasons = {}
    local running = (object.spec.template.metadata.annotations or {})[fingerprint.annotation]
    if observed.fingerprint ~= nil and running ~= observed.fingerprint then
        reasons[#reasons + 1] = "credentials changed (rolls the worker)"
    elseif changed then
        reasons[#reasons + 1] = "desired Deployment changed"
    end
    if observed.drifted then
        reasons[#reasons + 1] = "live Deployment drifted from the applied one"
    end
    return { action = "update", reason = table_concat(reasons, "; "),
        object = object, desired_hash = desired_hash }
end

local function sort_key(action)
    return table_concat({ action.name or "", action.account_id or "", action.action, action.reason or "" }, "\0")
end

--- The reconcile decision.
---@param accounts table array of account rows (see docs/rules.md)
---@param observed table|nil managed Deployments keyed by name
---@param ctx table|nil {namespace, worker_image, now}
---@return table actions sorted by name
---@return table summary {desired (active accounts), observed, create, update, delete, error}
function M.plan(accounts, observed, ctx)
    if type(accounts) ~= "table" then
        error(string_format("plan: accounts must be a list, got %s", type(accounts)), 2)
    end
    observed = observed or {}
    local actions = {}
    local by_id, by_name = {}, {}
    local held_ids, held_names = {}, {} -- bad accounts: their workers are kept
    local active = {} -- {account, name} of valid active accounts
    local active_count = 0 -- active accounts, valid or not: the desired set's size
    local id_count, name_users, label_users = {}, {}, {}

    -- An id we can match against the account-id annotation, even of a row
    -- whose account_id has the wrong type (a number from a wrong column).
    local function id_key(account)
        local id = type(account) == "table" and account.account_id
        local kind = type(id)
        return (kind == "string" or kind == "number") and tostring(id) or nil
    end

    local function fail(account, name, code, reason)
        local key = id_key(account)
        actions[#actions + 1] = { action = "error", code = code, retryable = false,
            account_id = key, name = name, reason = redact(reason, account) }
        if key then
            held_ids[key] = true
        end
        if name then
            held_names[name] = true
        end
    end

    -- 1. Shape of every row; names; who is active.
    for index, account in ipairs(accounts) do
        local key = id_key(account)
        if key then
            by_id[key] = account
            id_count[key] = (id_count[key] or 0) + 1
        end
        local ok, err = validate.account(account)
        if not ok then
            -- The row's position changes from pass to pass (a partial pass has
            -- one row): name it only when there is no id to go by, so that the
            -- reason stays the same and the core reports it once.
            fail(account, nil, "invalid_account", key and err or string_format("account #%d: %s", index, err))
        else
            local name = naming.worker_name(key)
            by_name[name] = account
            if M.is_active(account) then
                active_count = active_count + 1
                local credentials_ok, credentials_err = validate.credentials(account)
                if not credentials_ok then
                    fail(account, name, "invalid_account", credentials_err)
                else
                    active[#active + 1] = { account = account, name = name }
                    local label = naming.label_value(key)
                    name_users[name] = (name_users[name] or 0) + 1
                    label_users[label] = (label_users[label] or 0) + 1
                end
            end
        end
    end

    -- 2. Desired Deployments. Ids or names that clash are errors for every
    -- account involved, so no two accounts fight over one Deployment.
    local claimed = {}
    for _, entry in ipairs(active) do
        local account, name = entry.account, entry.name
        local id = account.account_id
        if id_count[id] > 1 then
            fail(account, name, "duplicate_account", "account_id appears more than once")
        elseif name_users[name] > 1 or label_users[naming.label_value(id)] > 1 then
            fail(account, name, "name_collision", "worker name or account-id label clashes with another account")
        else
            claimed[name] = true
            local ok, action = pcall(reconcile_account, account, observed[name], ctx)
            if not ok then
                local message = type(action) == "table" and action.message or action
                fail(account, name, "rule_error", "rule error: " .. tostring(message))
            elseif action and action.action == "error" then
                fail(account, name, action.code, action.reason)
            elseif action then
                action.account_id, action.name = id, name
                actions[#actions + 1] = action
            end
        end
    end

    -- 3. Managed Deployments nobody wants any more.
    local observed_count = 0
    for name, entry in pairs(observed) do
        observed_count = observed_count + 1
        if not claimed[name] then
            local account = (entry.account_id ~= nil and by_id[entry.account_id]) or by_name[name]
            local reason
            if held_names[name] or (entry.account_id ~= nil and held_ids[entry.account_id]) then
                reason = nil -- its error action says why; keep the worker meanwhile
            elseif account == nil then
                reason = "account not found"
            elseif not M.is_active(account) then
                reason = inactive_reason(account)
            else
                reason = "replaced by " .. naming.worker_name(account.account_id)
            end
            if reason then
                actions[#actions + 1] = { action = "delete", name = name, reason = reason,
                    account_id = entry.account_id or (account and account.account_id) }
            end
        end
    end

    local keys = {}
    for _, action in ipairs(actions) do
        keys[action] = sort_key(action)
    end
    table_sort(actions, function(a, b) return keys[a] < keys[b] end)

    local summary = { desired = active_count, observed = observed_count,
        create = 0, update = 0, delete = 0, error = 0 }
    for _, action in ipairs(actions) do
        summary[action.action] = summary[action.action] + 1
    end
    return actions, summary
end

return M
