local helpers = require("spec.helpers")
local accounts = require("spec.fixtures.accounts")
local deployments = require("spec.fixtures.deployments")
local rules = require("rules")

local row, NULL = accounts.row, accounts.NULL
local CTX = { namespace = "sync-airbnb", worker_image = "sync-airbnb:latest", now = 1761195600 }

local function name(id)
    return (rules.worker_name(id))
end

-- Plans `rows` from nothing and returns what the core would then observe.
local function applied(rows)
    return rules.observed_after((rules.plan(rows, {}, CTX)), {})
end

describe("plan", function()
    it("creates a worker for a new active account, with the object and its hash", function()
        local actions, summary = rules.plan({ row("310316675") }, {}, CTX)
        assert.equal(1, #actions)
        local action = actions[1]
        assert.equal("create", action.action)
        assert.equal("310316675", action.account_id)
        assert.equal(name("310316675"), action.name)
        assert.equal("active account has no worker", action.reason)
        assert.same(rules.deployment(row("310316675"), CTX), action.object)
        assert.equal(helpers.fakes.hash.sha256(helpers.fakes.json.encode(action.object)), action.desired_hash)
        assert.same({ desired = 1, observed = 0, create = 1, update = 0, delete = 0, error = 0 }, summary)
    end)

    it("does nothing when the applied hash matches and nothing drifted", function()
        local observed = applied({ row("1"), row("2") })
        local actions, summary = rules.plan({ row("1"), row("2") }, observed, CTX)
        assert.same({}, actions)
        assert.same({ desired = 2, observed = 2, create = 0, update = 0, delete = 0, error = 0 }, summary)
    end)

    it("creates no worker for an inactive or soft-deleted account", function()
        assert.same({}, (rules.plan({ row("1", { is_active = false }),
            row("2", { deleted_at = "2025-10-23 06:00:00+00" }),
            row("3", { is_active = false, deleted_at = "2025-10-23 06:00:00+00" }) }, {}, CTX)))
    end)

    it("deletes the worker of an account set inactive", function()
        local observed = applied({ row("1") })
        local actions = rules.plan({ row("1", { is_active = false }) }, observed, CTX)
        assert.same({ { action = "delete", account_id = "1", name = name("1"), reason = "account inactive" } }, actions)
    end)

    it("deletes the worker of a soft-deleted account, whatever is_active says", function()
        local observed = applied({ row("1") })
        local actions = rules.plan({ row("1", { deleted_at = "2025-10-23 06:00:00+00" }) }, observed, CTX)
        assert.same({ { action = "delete", account_id = "1", name = name("1"), reason = "account soft-deleted" } },
            actions)
    end)

    it("deletes the worker of an account that is gone", function()
        local observed = applied({ row("1"), row("2") })
        local actions = rules.plan({ row("1") }, observed, CTX)
        assert.same({ { action = "delete", account_id = "2", name = name("2"), reason = "account not found" } }, actions)
    end)

    it("re-creates the worker of a restored account", function()
        local observed = applied({ row("1") })
        observed = rules.observed_after((rules.plan({ row("1", { deleted_at = "2025-10-23 06:00:00+00" }) }, observed,
            CTX)), observed)
        assert.same({}, observed)
        local actions = rules.plan({ row("1") }, observed, CTX)
        assert.same({ "create " .. name("1") }, helpers.summary(actions))
    end)

    it("restores a hand-deleted worker", function()
        local observed = applied({ row("1"), row("2") })
        observed[name("2")] = nil
        assert.same({ "create " .. name("2") }, helpers.summary((rules.plan({ row("1"), row("2") }, observed, CTX))))
    end)

    it("updates a worker whose live object drifted, with the same object", function()
        local observed = applied({ row("1") })
        observed[name("1")].drifted = true
        local actions = rules.plan({ row("1") }, observed, CTX)
        assert.equal(1, #actions)
        assert.equal("update", actions[1].action)
        assert.equal("live Deployment drifted from the applied one", actions[1].reason)
        assert.equal(observed[name("1")].applied_hash, actions[1].desired_hash)
    end)

    it("updates every worker when the template changes (a new image)", function()
        local observed = applied({ row("1"), row("2") })
        local actions = rules.plan({ row("1"), row("2") }, observed,
            { namespace = "sync-airbnb", worker_image = "sync-airbnb:v2" })
        assert.same({ "update " .. name("1"), "update " .. name("2") }, helpers.summary(actions))
        assert.equal("desired Deployment changed", actions[1].reason)
    end)

    it("deletes a managed Deployment of no account, even without the account-id annotation", function()
        local observed = { [name("999")] = deployments.observed(name("999")) }
        assert.same({ { action = "delete", name = name("999"), reason = "account not found" } },
            (rules.plan({}, observed, CTX)))
    end)

    it("matches an observed Deployment to its account by the account-id annotation", function()
        local old = "sync-airbnb-worker-old-name"
        local observed = { [old] = deployments.observed(old, { account_id = "1" }) }
        local actions = rules.plan({ row("1", { is_active = false }) }, observed, CTX)
        assert.same({ { action = "delete", account_id = "1", name = old, reason = "account inactive" } }, actions)
        actions = rules.plan({ row("1") }, observed, CTX)
        assert.same({ "create " .. name("1"), "delete " .. old }, helpers.summary(actions))
        assert.equal("replaced by " .. name("1"), actions[2].reason)
    end)

    describe("with a bad account", function()
        local bad_rows = {
            { "airbnb_cookie NULL", row("9", { airbnb_cookie = NULL }), "airbnb_cookie is NULL" },
            { "user_agent empty", row("9", { user_agent = "" }), "user_agent is empty" },
            { "x_client_version a number", row("9", { x_client_version = 7 }),
                "x_client_version must be a string, got number" },
            { "is_active a string", row("9", { is_active = "t" }), "is_active must be a boolean, got string" },
            { "last_sync_at a number", row("9", { last_sync_at = 1761195600 }),
                "last_sync_at must be a string or NULL, got number" },
            { "account_id a number", row(9), "account_id must be a string, got number" },
            { "account_id NULL", row(nil), "account_id must be a string, got nil" },
        }

        for _, case in ipairs(bad_rows) do
            local what, bad, message = case[1], case[2], case[3]
            it("reports " .. what .. " as an error for that account only", function()
                local actions, summary = rules.plan({ row("1"), bad, row("2") }, {}, CTX)
                local errors, creates = {}, {}
                for _, action in ipairs(actions) do
                    if action.action == "error" then
                        errors[#errors + 1] = action
                    else
                        creates[#creates + 1] = action.name
                    end
                end
                assert.same({ name("1"), name("2") }, creates)
                assert.equal(1, #errors)
                assert.matches(message, errors[1].reason, 1, true)
                assert.equal(false, errors[1].retryable)
                assert.equal("invalid_account", errors[1].code)
                assert.equal(1, summary.error)
                assert.no_credentials(errors[1], bad)
            end)
        end

        it("names the Deployment when it can", function()
            local actions = rules.plan({ row("9", { airbnb_cookie = NULL }) }, {}, CTX)
            assert.equal(name("9"), actions[1].name)
            assert.equal("9", actions[1].account_id)
        end)

        it("gives the same reason wherever the row stands (the core reports a reason once)", function()
            local bad = row("9", { is_active = "t" })
            local alone = rules.plan({ bad }, {}, CTX)
            local third = rules.plan({ row("1"), row("2"), bad }, {}, CTX)
            local function reason_of(actions)
                for _, action in ipairs(actions) do
                    if action.action == "error" then
                        return action.reason
                    end
                end
            end
            assert.equal("is_active must be a boolean, got string", reason_of(alone))
            assert.equal(reason_of(alone), reason_of(third))
        end)

        it("reports a row that is not a table", function()
            local actions = rules.plan({ "310316675" }, {}, CTX)
            assert.same({ { action = "error", code = "invalid_account", retryable = false,
                reason = "account #1: account must be a table, got string" } }, actions)
        end)

        it("keeps the worker it already has instead of deleting it", function()
            local observed = applied({ row("1"), row("9"), row("10") })
            local actions = rules.plan({ row("1"), row("9", { airbnb_cookie = "" }),
                row(10, { is_active = "yes" }) }, observed, CTX)
            for _, action in ipairs(actions) do
                assert.equal("error", action.action)
            end
            assert.equal(2, #actions)
        end)

        it("does not need credentials when the account is inactive", function()
            local observed = applied({ row("9") })
            local actions = rules.plan({ row("9", { is_active = false, airbnb_cookie = NULL }) }, observed, CTX)
            assert.same({ "delete " .. name("9") }, helpers.summary(actions))
        end)

        it("turns a rule error into an error action without credential values", function()
            local deployment = require("deployment")
            local saved = deployment.env
            finally(function() deployment.env = saved end)
            deployment.env = function(account)
                if account.account_id == "9" then
                    error("cannot render cookie " .. account.airbnb_cookie)
                end
                return saved(account)
            end
            local bad = row("9", { airbnb_cookie = "fake-cookie-very-secret" })
            local actions = rules.plan({ row("1"), bad }, {}, CTX)
            assert.same({ "create " .. name("1"), "error " .. name("9") }, helpers.summary(actions))
            assert.equal("rule_error", actions[2].code)
            assert.matches("rule error: .*cannot render cookie <redacted>", actions[2].reason)
            assert.no_credentials(actions[2], bad)
        end)

        it("reports an invalid rendered Deployment as an error for that account", function()
            local deployment = require("deployment")
            local saved = deployment.resources
            finally(function() deployment.resources = saved end)
            deployment.resources = function(account)
                if account.account_id == "9" then
                    return { limits = { 1, 2 } } -- an unmarked list
                end
                return saved(account)
            end
            local actions = rules.plan({ row("1"), row("9") }, {}, CTX)
            assert.same({ "create " .. name("1"), "error " .. name("9") }, helpers.summary(actions))
            assert.equal("invalid_deployment", actions[2].code)
        end)
    end)

    it("refuses two rows with the same account id, keeping their worker", function()
        local observed = applied({ row("1") })
        local actions = rules.plan({ row("1"), row("1", { user_agent = "fake-other-agent" }) }, observed, CTX)
        assert.same({ "error " .. name("1"), "error " .. name("1") }, helpers.summary(actions))
        assert.equal("duplicate_account", actions[1].code)
    end)

    it("refuses accounts whose names clash instead of letting them share a worker", function()
        local hash10 = helpers.fakes.hash.sha256("ABC"):sub(1, 10)
        local crafted = "abc-" .. hash10 -- a valid id spelling ABC's hashed name
        assert.equal(name("ABC"), name(crafted))
        local actions = rules.plan({ row("ABC"), row(crafted), row("2") }, {}, CTX)
        assert.same({ "create " .. name("2"), "error " .. name("ABC"), "error " .. name("ABC") },
            helpers.summary(actions))
        assert.equal("name_collision", actions[2].code)
    end)

    it("gives distinct, valid workers to all the odd ids together", function()
        local rows, seen = {}, {}
        for _, id in pairs(accounts.odd_ids) do
            rows[#rows + 1] = row(id)
        end
        local actions = rules.plan(rows, {}, CTX)
        assert.equal(#rows, #actions)
        for _, action in ipairs(actions) do
            assert.equal("create", action.action)
            assert.dns_label(action.name)
            assert.is_true(rules.validate_deployment(action.object))
            assert.is_nil(seen[action.name])
            seen[action.name] = true
        end
    end)

    it("sorts actions by name, whatever the order of its input", function()
        local rows = accounts.many(30)
        local observed = applied(rows)
        for i = 1, 30, 3 do
            rows[i].is_active = false
        end
        for i = 2, 30, 3 do
            rows[i].user_agent = "fake-agent-" .. i
        end
        observed[name(rows[3].account_id)] = nil
        local expected = rules.plan(rows, observed, CTX)
        for i = 1, #expected - 1 do
            assert.is_true(expected[i].name < expected[i + 1].name)
        end
        local reversed = {}
        for i = #rows, 1, -1 do
            reversed[#reversed + 1] = rows[i]
        end
        local again = rules.plan(reversed, helpers.copy(observed), CTX)
        assert.same(helpers.summary(expected), helpers.summary(again))
        assert.same(expected, again)
    end)

    it("handles 200 accounts at once: 200 creates, then nothing to do", function()
        local rows = accounts.many(200)
        local started = os.clock()
        local actions, summary = rules.plan(rows, {}, CTX)
        local elapsed = os.clock() - started
        assert.equal(200, #actions)
        assert.equal(200, summary.create)
        local names = {}
        for _, action in ipairs(actions) do
            assert.equal("create", action.action)
            names[action.name] = true
        end
        local distinct = 0
        for _ in pairs(names) do
            distinct = distinct + 1
        end
        assert.equal(200, distinct)
        assert.same({}, (rules.plan(rows, rules.observed_after(actions, {}), CTX)))
        assert.is_true(elapsed < 5, "200 accounts took " .. elapsed .. " s with the pure-Lua sha256")
    end)

    it("counts desired and observed in the summary for the core's delete budget", function()
        local observed = applied(accounts.many(5))
        local _, summary = rules.plan({}, observed, CTX)
        assert.same({ desired = 0, observed = 5, create = 0, update = 0, delete = 5, error = 0 }, summary)
    end)

    it("accepts a missing observed table and ctx", function()
        assert.equal(1, #rules.plan({ row("1") }))
    end)

    it("raises when accounts is not a list (a core bug, not bad data)", function()
        assert.has_error(function() rules.plan(nil, {}, CTX) end, "plan: accounts must be a list, got nil")
    end)
end)
