-- fingerprint: when a credential change rolls the worker.
--
-- The worker reads its credentials from the database only at start-up, so an
-- admin change to them must restart it: the pod template carries a hash of
-- the credential fields (annotation sync-airbnb.io/credentials-fingerprint),
-- and a new hash rolls the pods.
--
-- But the worker itself writes a rotated airbnb_cookie after every sync, in
-- the same UPDATE that bumps last_sync_at (DESIGN.md §2). Rolling on that
-- would restart every worker daily for nothing. So the Deployment (not the
-- pod template; changing it restarts nothing) also records:
--   sync-airbnb.io/credentials-seen  "<stable>.<rotated>": short hashes of
--       the fields the worker never writes and of those it rotates, as last
--       seen;
--   sync-airbnb.io/last-sync-at      last_sync_at when they were seen.
-- A change confined to the rotated fields, arriving with a last_sync_at that
-- moved since it was recorded, is the worker's own rotation: recorded with a
-- metadata-only update, the pods keep running. Any other credential change
-- rolls. A change of only last_sync_at/updated_at changes nothing at all.
--
-- To roll on every cookie change, set M.worker_rotated_fields = {}.
-- To stop rolling on cookie changes at all, drop "airbnb_cookie" from M.fields.
local hash = require("hash")

local ipairs, type = ipairs, type
local string_format, string_match, string_sub = string.format, string.match, string.sub
local table_concat = table.concat

local M = {}

-- Credential fields hashed into the fingerprint. A change to any of them by
-- anyone but the worker rolls the worker.
M.fields = { "x_client_version", "user_agent", "airbnb_cookie" }
-- The subset the worker rewrites itself after each sync.
M.worker_rotated_fields = { "airbnb_cookie" }

M.annotation = "sync-airbnb.io/credentials-fingerprint"
M.seen_annotation = "sync-airbnb.io/credentials-seen"
M.last_sync_annotation = "sync-airbnb.io/last-sync-at"

-- sha256 over length-prefixed pieces, so ("ab", "c") and ("a", "bc") differ.
-- Credential values go into the hash and nowhere else.
local function digest(tag, account, fields)
    local pieces = {}
    local function add(s)
        pieces[#pieces + 1] = #s .. ":" .. s .. ","
    end
    if type(account) ~= "table" or type(account.account_id) ~= "string" then
        error("credentials fingerprint: account_id must be a string", 0)
    end
    add(tag)
    add(account.account_id)
    for _, field in ipairs(fields) do
        local value = account[field]
        add(field)
        if value == nil then
            pieces[#pieces + 1] = "-" -- SQL NULL; no string piece looks like this
        elseif type(value) == "string" then
            add(value)
        else
            error(string_format("fingerprint field %s must be a string or NULL, got %s", field, type(value)), 0)
        end
    end
    return hash.sha256(table_concat(pieces))
end

--- sha256 (hex) over the account id and the fields in M.fields.
---@param account table an account row
---@return string hex
function M.credentials_fingerprint(account)
    return digest("sync-airbnb/credentials/v1", account, M.fields)
end

--- The value of the credentials-seen annotation: 16 hex of the stable
--- fields' hash, '.', 16 hex of the worker-rotated fields' hash.
---@param account table
---@return string
function M.seen(account)
    local rotated_set = {}
    for _, field in ipairs(M.worker_rotated_fields) do
        rotated_set[field] = true
    end
    local stable, rotated = {}, {}
    for _, field in ipairs(M.fields) do
        local list = rotated_set[field] and rotated or stable
        list[#list + 1] = field
    end
    return string_sub(digest("sync-airbnb/stable/v1", account, stable), 1, 16) .. "."
        .. string_sub(digest("sync-airbnb/rotated/v1", account, rotated), 1, 16)
end

local function stable_part(seen)
    return string_match(seen, "^([^.]*)%.")
end

--- What the Deployment should record for this account, given what it records
--- now. Returns {fingerprint, seen, last_sync_at, change} where change is
---   "new"             no Deployment yet: everything from the account;
---   "none"            credentials as last seen: everything carried over;
---   "worker_rotation" only rotated fields changed and last_sync_at moved:
---                     seen/last_sync_at updated, fingerprint kept (no roll);
---   "credentials"     any other change: everything from the account (rolls
---                     unless the pods already run this fingerprint).
---@param account table a valid, active account
---@param observed table|nil the observed Deployment (see plan.lua)
---@return table state
function M.decide(account, observed)
    local current = {
        fingerprint = M.credentials_fingerprint(account),
        seen = M.seen(account),
        last_sync_at = account.last_sync_at or "",
    }
    if observed == nil then
        current.change = "new"
        return current
    end
    local annotations = observed.annotations or {}
    local seen = annotations[M.seen_annotation]
    local recorded_sync = annotations[M.last_sync_annotation]
    local running = observed.fingerprint
    if type(running) ~= "string" or type(seen) ~= "string" or type(recorded_sync) ~= "string" then
        current.change = "credentials" -- nothing (usable) recorded: start from the account
        return current
    end
    if seen == current.seen then
        return { fingerprint = running, seen = seen, last_sync_at = recorded_sync, change = "none" }
    end
    if stable_part(seen) == stable_part(current.seen) and recorded_sync ~= current.last_sync_at then
        return { fingerprint = running, seen = current.seen, last_sync_at = current.last_sync_at,
            change = "worker_rotation" }
    end
    current.change = "credentials"
    return current
end

--- Whether the pods run the credentials the rules consider current (for
--- `status`): true after a recorded worker rotation too.
---@param account table a valid, active account
---@param observed table the observed Deployment
---@return boolean
function M.in_sync(account, observed)
    return M.decide(account, observed).fingerprint == observed.fingerprint
end

return M
