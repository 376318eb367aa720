-- The rollout decision for credential changes (lua/rules/fingerprint.lua):
-- an admin change rolls the worker, the worker's own cookie rotation and
-- bare last_sync_at/updated_at changes do not.
local helpers = require("spec.helpers")
local accounts = require("spec.fixtures.accounts")
local rules = require("rules")
local fingerprint = require("fingerprint")

local FINGERPRINT = "sync-airbnb.io/credentials-fingerprint"
local CTX = { namespace = "sync-airbnb", worker_image = "sync-airbnb:latest", now = 1761195600 }

-- Plans `account` against the Deployment left by planning `before`, and
-- returns the one action (or nil) plus whether it rolls the pods.
local function transition(before, after)
    local observed = rules.observed_after((rules.plan({ before }, {}, CTX)), {})
    local actions = rules.plan({ after }, observed, CTX)
    assert.is_true(#actions <= 1)
    local action = actions[1]
    if action == nil then
        return nil, false, observed
    end
    local name = action.name
    local rolls = action.object.spec.template.metadata.annotations[FINGERPRINT] ~= observed[name].fingerprint
    return action, rolls, rules.observed_after(actions, observed)
end

local function changed(row, changes)
    local copy = helpers.copy(row)
    for k, v in pairs(changes) do
        copy[k] = v
    end
    return copy
end

describe("credentials_fingerprint", function()
    local account = accounts.row("310316675")

    it("is a sha256 hex string, stable for the same credentials", function()
        local value = rules.credentials_fingerprint(account)
        assert.matches("^%x+$", value)
        assert.equal(64, #value)
        assert.equal(value, rules.credentials_fingerprint(helpers.copy(account)))
    end)

    it("changes with each credential field", function()
        local base = rules.credentials_fingerprint(account)
        for _, field in ipairs({ "airbnb_cookie", "x_client_version", "user_agent" }) do
            assert.are_not.equal(base, rules.credentials_fingerprint(changed(account, { [field] = "other" })), field)
        end
    end)

    it("ignores last_sync_at, updated_at and the other columns", function()
        local base = rules.credentials_fingerprint(account)
        assert.equal(base, rules.credentials_fingerprint(changed(account, {
            last_sync_at = "2030-01-01 00:00:00+00", updated_at = "2030-01-01 00:00:00+00",
            customer_id = "11111111-1111-4111-8111-111111111111", is_active = false })))
    end)

    it("cannot be fooled by moving bytes between fields", function()
        local a = changed(account, { x_client_version = "ab", user_agent = "c" })
        local b = changed(account, { x_client_version = "a", user_agent = "bc" })
        assert.are_not.equal(rules.credentials_fingerprint(a), rules.credentials_fingerprint(b))
    end)

    it("hashes a NULL field apart from the empty string, for nullable fields added to fingerprint.fields", function()
        local saved = fingerprint.fields
        finally(function() fingerprint.fields = saved end)
        fingerprint.fields = { "x_client_version", "user_agent", "airbnb_cookie", "customer_id" }
        local without = helpers.copy(account)
        without.customer_id = nil
        local null = rules.credentials_fingerprint(without)
        local empty = rules.credentials_fingerprint(changed(account, { customer_id = "" }))
        assert.are_not.equal(null, empty)
        assert.has_error(function() rules.credentials_fingerprint(changed(account, { customer_id = 1 })) end,
            "fingerprint field customer_id must be a string or NULL, got number")
    end)

    it("differs between accounts with the same credentials", function()
        assert.are_not.equal(rules.credentials_fingerprint(account),
            rules.credentials_fingerprint(accounts.row("310316676")))
    end)
end)

describe("credential changes", function()
    local before = accounts.row("310316675", {
        last_sync_at = "2025-10-23 05:00:00+00", updated_at = "2025-10-23 05:00:00+00" })

    it("an admin change to airbnb_cookie rolls the worker", function()
        local action, rolls = transition(before, changed(before, {
            airbnb_cookie = "fake-cookie-from-admin", updated_at = "2025-10-23 09:30:00+00" }))
        assert.equal("update", action.action)
        assert.is_true(rolls)
        assert.equal("credentials changed (rolls the worker)", action.reason)
    end)

    it("the worker's own rotation (cookie + last_sync_at + updated_at) does not roll it", function()
        local action, rolls = transition(before, changed(before, {
            airbnb_cookie = "fake-cookie-rotated", last_sync_at = "2025-10-24 05:00:03+00",
            updated_at = "2025-10-24 05:00:03+00" }))
        assert.equal("update", action.action)
        assert.is_false(rolls)
        assert.equal("worker rotated its cookie (recorded, no rollout)", action.reason)
    end)

    it("a change of only last_sync_at/updated_at changes nothing at all", function()
        local action = transition(before, changed(before, {
            last_sync_at = "2025-10-24 05:00:03+00", updated_at = "2025-10-24 05:00:03+00" }))
        assert.is_nil(action)
        assert.is_nil((transition(before, changed(before, { updated_at = "2025-10-24 11:00:00+00" }))))
    end)

    it("an x_client_version or user_agent change rolls the worker", function()
        for _, field in ipairs({ "x_client_version", "user_agent" }) do
            local action, rolls = transition(before, changed(before, { [field] = "fake-new-" .. field }))
            assert.equal("update", action.action, field)
            assert.is_true(rolls, field)
        end
    end)

    it("a header change rolls even when it arrives together with a sync", function()
        local _, rolls = transition(before, changed(before, {
            airbnb_cookie = "fake-cookie-rotated", user_agent = "Mozilla/5.0 (fake new agent)",
            last_sync_at = "2025-10-24 05:00:03+00" }))
        assert.is_true(rolls)
    end)

    it("an admin cookie change after a recorded rotation still rolls", function()
        local rotated = changed(before, { airbnb_cookie = "fake-cookie-rotated",
            last_sync_at = "2025-10-24 05:00:03+00", updated_at = "2025-10-24 05:00:03+00" })
        local _, _, observed = transition(before, rotated)
        local admin = changed(rotated, { airbnb_cookie = "fake-cookie-from-admin",
            updated_at = "2025-10-24 10:00:00+00" })
        local actions = rules.plan({ admin }, observed, CTX)
        assert.equal(1, #actions)
        local name = actions[1].name
        assert.are_not.equal(observed[name].fingerprint,
            actions[1].object.spec.template.metadata.annotations[FINGERPRINT])
    end)

    it("a recorded rotation leaves nothing to do on the next pass", function()
        local rotated = changed(before, { airbnb_cookie = "fake-cookie-rotated",
            last_sync_at = "2025-10-24 05:00:03+00", updated_at = "2025-10-24 05:00:03+00" })
        local _, _, observed = transition(before, rotated)
        assert.same({}, (rules.plan({ rotated }, observed, CTX)))
        assert.is_true(rules.credentials_in_sync(rotated, observed[rules.worker_name("310316675")]))
    end)

    it("rolls on a rotation too when worker_rotated_fields is emptied (the documented switch)", function()
        local saved = fingerprint.worker_rotated_fields
        finally(function() fingerprint.worker_rotated_fields = saved end)
        local _, rolls_before = transition(before, changed(before, {
            airbnb_cookie = "fake-cookie-rotated", last_sync_at = "2025-10-24 05:00:03+00" }))
        fingerprint.worker_rotated_fields = {}
        local _, rolls_after = transition(before, changed(before, {
            airbnb_cookie = "fake-cookie-rotated", last_sync_at = "2025-10-24 05:00:03+00" }))
        assert.is_false(rolls_before)
        assert.is_true(rolls_after)
    end)

    it("a Deployment from rules that recorded nothing is brought up to date without a roll", function()
        local name = rules.worker_name("310316675")
        local observed = rules.observed_after((rules.plan({ before }, {}, CTX)), {})
        observed[name].annotations = { ["sync-airbnb.io/account-id"] = "310316675" }
        observed[name].applied_hash = "applied-by-older-rules"
        local actions = rules.plan({ before }, observed, CTX)
        assert.equal("update", actions[1].action)
        assert.equal("desired Deployment changed", actions[1].reason)
        assert.equal(observed[name].fingerprint, actions[1].object.spec.template.metadata.annotations[FINGERPRINT])
    end)

    it("never puts a credential value in an object, annotation or reason", function()
        local rows = {
            changed(before, { airbnb_cookie = "fake-cookie-from-admin" }),
            changed(before, { airbnb_cookie = "fake-cookie-rotated", last_sync_at = "2025-10-24 05:00:03+00" }),
            changed(before, { user_agent = "fake-agent-new" }),
        }
        for _, row in ipairs(rows) do
            local action = transition(before, row)
            assert.no_credentials(action, row)
            assert.no_credentials(action, before)
        end
    end)
end)
