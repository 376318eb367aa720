-- fingerprint: when a credential change rolls the worker.
--
-- The worker reads its credentials from the database only at start-up, so a
-- change to them by anyone else must restart it: the pod template carries a
-- hash (annotation sync-airbnb.io/credentials-fingerprint), and a new hash
-- rolls the pods.
--
-- But the worker itself writes a rotated airbnb_cookie after every sync (and
-- last_sync_at in a separate commit: services/insights.py). Rolling on that
-- would restart every worker daily for nothing, and no rule can tell the two
-- writers apart from the row's values or timing. The database can: the
-- worker's sessions carry application_name "sync-airbnb-worker" (PGAPPNAME,
-- deployment.lua), and the operator's trigger (migration
-- 005_credentials_generation) counts every change of a credential column
-- made by any other session into sync_airbnb_operator.credentials_generation.
-- The core hands that count to the rules as account.credentials_generation.
--
-- So the fingerprint hashes the account id, that generation, and the
-- credential fields the worker never writes (M.fields). The cookie itself is
-- not hashed: the worker's own rotation changes nothing here, an admin's
-- cookie change bumps the generation. It is right whatever the order or
-- timing of the worker's commits, for concurrent admin and worker writes,
-- and for changes made while the operator is down (the generation is in the
-- database, the fingerprint on the Deployment).
--
-- To roll on every cookie change (the worker's too), add "airbnb_cookie" to
-- M.fields. To roll only on the generation, set M.fields = {}.
local hash = require("hash")

local ipairs, type = ipairs, type
local string_format, string_match = string.format, string.match
local table_concat = table.concat

local M = {}

-- Credential fields hashed as they are: the worker never writes them.
M.fields = { "x_client_version", "user_agent" }
-- The column the core adds to every account row: how many times a session
-- other than the worker's changed a credential column (text, "0" if never).
M.generation_field = "credentials_generation"

M.annotation = "sync-airbnb.io/credentials-fingerprint"

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
    local generation = account[M.generation_field]
    if generation == nil then
        generation = "0" -- no change counted yet (or a core that does not pass it)
    elseif type(generation) ~= "string" or not string_match(generation, "^%d+$") then
        error(string_format("%s must be a string of digits or NULL, got %s", M.generation_field,
            type(generation)), 0)
    end
    add(tag)
    add(account.account_id)
    add(generation)
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

--- sha256 (hex) over the account id, its credentials generation and the
--- fields in M.fields.
---@param account table an account row
---@return string hex
function M.credentials_fingerprint(account)
    return digest("sync-airbnb/credentials/v2", account, M.fields)
end

--- Whether the pods run the credentials the rules consider current (for
--- `status`).
---@param account table a valid, active account
---@param observed table the observed Deployment
---@return boolean
function M.in_sync(account, observed)
    return M.credentials_fingerprint(account) == observed.fingerprint
end

return M
