local helpers = require("spec.helpers")
local rules = require("rules")
local examples = require("examples")

local CTX = { namespace = "sync-airbnb", worker_image = "sync-airbnb:latest", now = 1761195600 }

-- A copy of the shipped examples with one change applied.
local function examples_with(change)
    local copy = { names = helpers.copy(examples.names), plans = helpers.copy(examples.plans) }
    change(copy)
    return copy
end

-- The rules with one function replaced.
local function rules_with(field, value)
    local copy = {}
    for k, v in pairs(rules) do
        copy[k] = v
    end
    copy[field] = value
    return copy
end

describe("self_check", function()
    it("passes on the shipped rules", function()
        assert.same({ true }, { rules.self_check(CTX) })
        assert.same({ true }, { rules.self_check() })
    end)

    it("fails on a broken name example, naming it", function()
        local ok, err = rules.self_check(CTX, examples_with(function(e)
            e.names[2].name = "sync-airbnb-worker-abc"
        end))
        assert.is_nil(ok)
        assert.equal('examples.lua: account id "ABC": worker_name is "sync-airbnb-worker-abc-b5d4045c3f", '
            .. 'expected "sync-airbnb-worker-abc"', err)
    end)

    it("fails on a broken label example", function()
        local ok, err = rules.self_check(CTX, examples_with(function(e) e.names[1].label = "x" end))
        assert.is_nil(ok)
        assert.matches("account%-id label", err)
    end)

    it("fails on a broken plan example, naming scenario and step", function()
        local ok, err = rules.self_check(CTX, examples_with(function(e)
            e.plans[3].steps[4].expect[1].rolls = false
        end))
        assert.is_nil(ok)
        assert.matches('plan example "the worker\'s own cookie rotation does not roll it; an admin change does", '
            .. "step 4: update sync%-airbnb%-worker%-104 .*expected rolls=false, got rolls=true", err)
    end)

    it("fails when an expected action is missing or extra", function()
        local ok, err = rules.self_check(CTX, examples_with(function(e) e.plans[1].steps[2].expect = {
            { action = "update", name = "sync-airbnb-worker-101" } } end))
        assert.is_nil(ok)
        assert.matches("action 1: expected update sync%-airbnb%-worker%-101, got nothing", err)
    end)

    it("fails when a rule breaks a promise", function()
        local ok, err = examples.check(rules_with("worker_name", function(id) return "sync-airbnb-worker-" .. id end), CTX)
        assert.is_nil(ok)
        assert.matches("worker_name is", err)
        ok, err = examples.check(rules_with("plan", function() return {} end), CTX)
        assert.is_nil(ok)
        assert.matches("expected create sync%-airbnb%-worker%-101, got nothing", err)
    end)

    it("fails when a rendered Deployment is invalid", function()
        local broken = rules_with("deployment", function(account, ctx)
            local object = rules.deployment(account, ctx)
            object.spec.selector.matchLabels.app = "other"
            return object
        end)
        local ok, err = examples.check(broken, CTX)
        assert.is_nil(ok)
        assert.matches("invalid Deployment: spec.selector.matchLabels", err)
    end)
end)
