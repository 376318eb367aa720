-- The rollout decision for credential changes (lua/rules/fingerprint.lua):
-- a change counted in credentials_generation (made by anyone but the worker,
-- decided by the database trigger) rolls the worker; the worker's own cookie
-- rotation and bare last_sync_at/updated_at changes do not.
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

    it("changes with the credentials generation and the fields the worker never writes", function()
        local base = rules.credentials_fingerprint(account)
        for _, field in ipairs({ "x_client_version", "user_agent" }) do
            assert.are_not.equal(base, rules.credentials_fingerprint(changed(account, { [field] = "other" })), field)
        end
        assert.are_not.equal(base, rules.credentials_fingerprint(changed(account, { credentials_generation = "1" })))
        assert.equal(base, rules.credentials_fingerprint(changed(account, { credentials_generation = "0" })),
            "no generation is generation 0")
    end)

    it("does not hash the cookie itself: the worker rotates it", function()
        assert.equal(rules.credentials_fingerprint(account),
            rules.credentials_fingerprint(changed(account, { airbnb_cookie = "fake-cookie-rotated" })))
    end)

    it("refuses a generation that is not a string of digits", function()
        assert.has_error(function() rules.credentials_fingerprint(changed(account, { credentials_generation = 1 })) end)
        assert.has_error(function() rules.credentials_fingerprint(changed(account, { credentials_generation = "x" })) end)
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
        fingerprint.fields = { "x_client_version", "user_agent", "customer_id" }
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
        last_sync_at = "2025-10-23 05:00:00+00", updated_at = "2025-10-23 05:00:00+00",
        credentials_generation = "3" })

    it("an admin change to airbnb_cookie (the trigger bumped the generation) rolls the worker", function()
        local action, rolls = transition(before, changed(before, {
            airbnb_cookie = "fake-cookie-from-admin", updated_at = "2025-10-23 09:30:00+00",
            credentials_generation = "4" }))
        assert.equal("update", action.action)
        assert.is_true(rolls)
        assert.equal("credentials changed (rolls the worker)", action.reason)
    end)

    it("the worker's own rotation, in either of its two commits, changes nothing", function()
        -- services/insights.py: update_account_cookies, then update_last_sync
        local cookie_commit = changed(before, { airbnb_cookie = "fake-cookie-rotated",
            updated_at = "2025-10-24 05:00:02+00" })
        local sync_commit = changed(cookie_commit, { last_sync_at = "2025-10-24 05:00:03+00",
            updated_at = "2025-10-24 05:00:03+00" })
        assert.is_nil((transition(before, cookie_commit)))
        assert.is_nil((transition(before, sync_commit)))
        assert.is_nil((transition(cookie_commit, sync_commit)))
    end)

    it("an admin cookie change after a sync that left the cookie unchanged rolls", function()
        local synced = changed(before, { last_sync_at = "2025-10-24 05:00:03+00", updated_at = "2025-10-24 05:00:03+00" })
        local _, _, observed = transition(before, synced)
        local admin = changed(synced, { airbnb_cookie = "fake-cookie-from-admin",
            updated_at = "2025-10-24 10:00:00+00", credentials_generation = "4" })
        local actions = rules.plan({ admin }, observed, CTX)
        assert.equal(1, #actions)
        assert.are_not.equal(observed[actions[1].name].fingerprint,
            actions[1].object.spec.template.metadata.annotations[FINGERPRINT])
    end)

    it("a change of only last_sync_at/updated_at changes nothing at all", function()
        local action = transition(before, changed(before, {
            last_sync_at = "2025-10-24 05:00:03+00", updated_at = "2025-10-24 05:00:03+00" }))
        assert.is_nil(action)
        assert.is_nil((transition(before, changed(before, { updated_at = "2025-10-24 11:00:00+00" }))))
    end)

    it("an x_client_version or user_agent change rolls the worker, even without a generation", function()
        for _, field in ipairs({ "x_client_version", "user_agent" }) do
            local action, rolls = transition(before, changed(before, { [field] = "fake-new-" .. field }))
            assert.equal("update", action.action, field)
            assert.is_true(rolls, field)
        end
    end)

    it("several admin changes while the operator was down roll once", function()
        local action, rolls, observed = transition(before, changed(before, {
            airbnb_cookie = "fake-cookie-admin-3", credentials_generation = "7" }))
        assert.is_true(rolls)
        assert.equal("update", action.action)
        assert.same({}, (rules.plan({ changed(before, { airbnb_cookie = "fake-cookie-admin-3",
            credentials_generation = "7" }) }, observed, CTX)))
    end)

    it("rolls on every cookie change when airbnb_cookie is added to fields (the documented switch)", function()
        local saved = fingerprint.fields
        finally(function() fingerprint.fields = saved end)
        local rotated = changed(before, { airbnb_cookie = "fake-cookie-rotated" })
        local _, rolls_before = transition(before, rotated)
        fingerprint.fields = { "x_client_version", "user_agent", "airbnb_cookie" }
        local _, rolls_after = transition(before, rotated)
        assert.is_false(rolls_before)
        assert.is_true(rolls_after)
    end)

    it("a Deployment from older rules is brought up to date; its new fingerprint rolls it once", function()
        local name = rules.worker_name("310316675")
        local observed = rules.observed_after((rules.plan({ before }, {}, CTX)), {})
        observed[name].applied_hash = "applied-by-older-rules"
        local actions = rules.plan({ before }, observed, CTX)
        assert.equal("update", actions[1].action)
        assert.equal("desired Deployment changed", actions[1].reason)
        observed[name].fingerprint = "fingerprint-of-older-rules"
        actions = rules.plan({ before }, observed, CTX)
        assert.equal("credentials changed (rolls the worker)", actions[1].reason)
        assert.is_true(rules.credentials_in_sync(before, rules.observed_after(actions, observed)[name]))
    end)

    it("never puts a credential value in an object, annotation or reason", function()
        local rows = {
            changed(before, { airbnb_cookie = "fake-cookie-from-admin", credentials_generation = "4" }),
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
