-- examples: accounts with the outcomes the rules promise for them, and the
-- self-check that holds the rules to them. The core runs the self-check on
-- every (re)load and refuses rules that fail it, so an edit that breaks a
-- promise below never takes effect. Edit an example only when the promise
-- itself changes.
--
-- Credentials here are obviously fake; no real value ever belongs in a rule.
local ipairs, pairs, tostring, type = ipairs, pairs, tostring, type
local string_format = string.format

local M = {}

--- An example account: active, synced once, with fake credentials; `changes`
--- overrides fields (use false for SQL NULL).
---@param id string
---@param changes table|nil
---@return table account
function M.account(id, changes)
    local account = {
        account_id = id,
        customer_id = "00000000-0000-4000-8000-000000000001",
        airbnb_cookie = "example-cookie-1",
        x_client_version = "example-client-version-1",
        user_agent = "Mozilla/5.0 (example)",
        is_active = true,
        last_sync_at = "2025-01-01 05:00:00+00",
        updated_at = "2025-01-01 05:00:00+00",
        credentials_generation = "0",
    }
    for field, value in pairs(changes or {}) do
        if value == false and field ~= "is_active" then
            value = nil
        end
        account[field] = value
    end
    return account
end

local account = M.account

-- Names and account-id labels. The hash suffixes are sha256(raw id), so these
-- also check the host's hash binding.
M.names = {
    { id = "310316675", name = "sync-airbnb-worker-310316675", label = "310316675" },
    { id = "ABC", name = "sync-airbnb-worker-abc-b5d4045c3f", label = "ABC" },
    { id = "", name = "sync-airbnb-worker-x-e3b0c44298", label = "" },
    { id = "a/b", name = "sync-airbnb-worker-a-b-c14cddc033", label = "a-b-c14cddc033" },
}

-- The worker's own sync: a rotated cookie and last_sync_at (the trigger does
-- not count it, so credentials_generation stays).
local ROTATED = { airbnb_cookie = "example-cookie-2", last_sync_at = "2025-01-02 05:00:00+00",
    updated_at = "2025-01-02 05:00:00+00" }

-- Plan scenarios: each step plans against what the previous step's actions
-- left behind. `expect` lists the actions in order; `rolls` says whether an
-- update changes the pod template's credentials fingerprint.
M.plans = {
    {
        description = "a new active account gets a worker, then nothing is left to do",
        steps = {
            { accounts = { account("101") }, expect = { { action = "create", name = "sync-airbnb-worker-101" } } },
            { accounts = { account("101") }, expect = {} },
        },
    },
    {
        description = "deactivation and soft delete remove the worker, restore brings it back",
        steps = {
            { accounts = { account("102"), account("103") }, expect = {
                { action = "create", name = "sync-airbnb-worker-102" },
                { action = "create", name = "sync-airbnb-worker-103" } } },
            { accounts = { account("102", { is_active = false }),
                account("103", { deleted_at = "2025-01-03 00:00:00+00" }) }, expect = {
                { action = "delete", name = "sync-airbnb-worker-102", reason = "account inactive" },
                { action = "delete", name = "sync-airbnb-worker-103", reason = "account soft-deleted" } } },
            { accounts = { account("103") }, expect = {
                { action = "create", name = "sync-airbnb-worker-103" } } },
            { accounts = {}, expect = {
                { action = "delete", name = "sync-airbnb-worker-103", reason = "account not found" } } },
        },
    },
    {
        description = "the worker's own cookie rotation does not roll it; an admin change does",
        steps = {
            { accounts = { account("104") }, expect = { { action = "create", name = "sync-airbnb-worker-104" } } },
            -- the worker's cookie commit, then its last_sync_at commit: nothing to do
            { accounts = { account("104", { airbnb_cookie = ROTATED.airbnb_cookie }) }, expect = {} },
            { accounts = { account("104", ROTATED) }, expect = {} },
            -- an admin's cookie change, even one equal to an earlier value: rolls
            { accounts = { account("104", { airbnb_cookie = "example-cookie-1", last_sync_at = ROTATED.last_sync_at,
                updated_at = "2025-01-02 09:00:00+00", credentials_generation = "1" }) }, expect = {
                { action = "update", name = "sync-airbnb-worker-104", rolls = true } } },
            { accounts = { account("104", { airbnb_cookie = "example-cookie-3", credentials_generation = "1",
                last_sync_at = "2025-01-03 05:00:00+00", updated_at = "2025-01-03 05:00:00+00" }) }, expect = {} },
            { accounts = { account("104", { airbnb_cookie = "example-cookie-3", user_agent = "Mozilla/5.0 (new)",
                credentials_generation = "2", last_sync_at = "2025-01-03 05:00:00+00" }) }, expect = {
                { action = "update", name = "sync-airbnb-worker-104", rolls = true } } },
        },
    },
    {
        description = "a bad account is an error for itself only",
        steps = {
            { accounts = { account("105"), account("106", { airbnb_cookie = false }) }, expect = {
                { action = "create", name = "sync-airbnb-worker-105" },
                { action = "error", name = "sync-airbnb-worker-106" } } },
        },
    },
}

local function describe(action)
    if action == nil then
        return "nothing"
    end
    return string_format("%s %s (%s)", tostring(action.action), tostring(action.name), tostring(action.reason))
end

local function template_fingerprint(object)
    return object.spec.template.metadata.annotations["sync-airbnb.io/credentials-fingerprint"]
end

local function check_step(rules, ctx, step, observed)
    local actions = rules.plan(step.accounts, observed, ctx)
    for i = 1, #actions > #step.expect and #actions or #step.expect do
        local got, want = actions[i], step.expect[i]
        if got == nil or want == nil or got.action ~= want.action or got.name ~= want.name
            or (want.reason and got.reason ~= want.reason) then
            return nil, string_format("action %d: expected %s, got %s", i,
                want and string_format("%s %s", want.action, want.name) or "nothing", describe(got))
        end
        if got.object then
            local ok, err = rules.validate_deployment(got.object)
            if not ok then
                return nil, string_format("%s: invalid Deployment: %s", describe(got), err)
            end
        end
        if want.rolls ~= nil then
            local before = observed[got.name] and observed[got.name].fingerprint
            local rolls = template_fingerprint(got.object) ~= before
            if rolls ~= want.rolls then
                return nil, string_format("%s: expected rolls=%s, got rolls=%s", describe(got),
                    tostring(want.rolls), tostring(rolls))
            end
        end
    end
    return actions
end

--- Runs every example through `rules`. Returns true, or nil and a message
--- naming the example that failed.
---@param rules table the entry module (rules.lua)
---@param ctx table|nil
---@param examples table|nil defaults to this module ({names, plans})
---@return true|nil ok
---@return string|nil err
function M.check(rules, ctx, examples)
    examples = examples or M
    for _, example in ipairs(examples.names or {}) do
        local where = string_format("examples.lua: account id %q", example.id)
        local name = rules.worker_name(example.id)
        if name ~= example.name then
            return nil, string_format("%s: worker_name is %q, expected %q", where, tostring(name), example.name)
        end
        local labels = rules.labels(example.id)
        if type(labels) ~= "table" or labels["account-id"] ~= example.label then
            return nil, string_format("%s: account-id label is %q, expected %q", where,
                tostring(type(labels) == "table" and labels["account-id"]), example.label)
        end
        local ok, err = rules.validate_deployment(rules.deployment(account(example.id), ctx))
        if not ok then
            return nil, string_format("%s: invalid Deployment: %s", where, err)
        end
    end
    for _, scenario in ipairs(examples.plans or {}) do
        local observed = {}
        for index, step in ipairs(scenario.steps) do
            local actions, err = check_step(rules, ctx, step, observed)
            if not actions then
                return nil, string_format("examples.lua: plan example %q, step %d: %s",
                    scenario.description, index, err)
            end
            observed = rules.observed_after(actions, observed)
        end
    end
    return true
end

return M
