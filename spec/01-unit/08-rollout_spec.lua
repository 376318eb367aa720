-- The rollout policy (lua/rules/rollout.lua): wave sizes, the checks
-- check-rules and every reload run on it, and self_check refusing rules
-- whose policy is wrong.
local rollout = require("rollout")
local rules = require("rules")

local CTX = { namespace = "sync-airbnb", worker_image = "sync-airbnb:0.1.0", now = 1761195600 }

local function copy(t)
    local out = {}
    for k, v in pairs(t) do
        out[k] = v
    end
    return out
end

local function sum(list)
    local total = 0
    for _, v in ipairs(list) do
        total = total + v
    end
    return total
end

describe("rollout.waves", function()
    it("starts with the canary, doubles, and caps at max_wave", function()
        assert.same({ 1, 2, 4, 8, 16, 32, 64, 100, 100, 100, 100, 100, 100, 100, 100, 73 },
            rollout.waves(1000))
        assert.equals(1000, sum(rollout.waves(1000)))
    end)

    it("gives no wave for no worker and a lone canary for one", function()
        assert.same({}, rollout.waves(0))
        assert.same({ 1 }, rollout.waves(1))
        assert.same({ 1, 2, 1 }, rollout.waves(4))
    end)

    it("follows the policy it is given", function()
        local p = copy(rollout.policy)
        p.canary, p.growth, p.max_wave = 3, 3, 10
        assert.same({ 3, 9, 10, 10, 3 }, rollout.waves(35, p))
        p.growth = 1
        assert.same({ 3, 3, 3, 1 }, rollout.waves(10, p))
    end)

    it("refuses a total that is not a count", function()
        assert.has_error(function() rollout.waves(-1) end)
        assert.has_error(function() rollout.waves(1.5) end)
    end)
end)

describe("rollout.check", function()
    it("accepts the shipped policy", function()
        assert.same({ true }, { rollout.check(rollout.policy) })
    end)

    local bad = {
        { "canary", 0, "canary must be in" },
        { "canary", 1.5, "canary must be an integer" },
        { "growth", "2", "growth must be an integer" },
        { "soak_seconds", -1, "soak_seconds must be in" },
        { "max_restarts", nil, "max_restarts must be an integer" },
        { "waiting_seconds", -1, "waiting_seconds must be in" },
        { "waiting_seconds", "30", "waiting_seconds must be an integer" },
        { "rollback", "yes", "rollback must be true or false" },
        { "extra", 1, "unknown field extra" },
    }
    for _, case in ipairs(bad) do
        it("refuses " .. case[1] .. " = " .. tostring(case[2]), function()
            local p = copy(rollout.policy)
            p[case[1]] = case[2]
            local ok, err = rollout.check(p)
            assert.is_nil(ok)
            assert.matches(case[3], err, 1, true)
        end)
    end

    it("accepts a policy without waiting_seconds (rules written before it)", function()
        local p = copy(rollout.policy)
        p.waiting_seconds = nil
        assert.same({ true }, { rollout.check(p) })
    end)

    it("refuses a max_wave below the canary", function()
        local p = copy(rollout.policy)
        p.canary, p.max_wave = 5, 2
        local ok, err = rollout.check(p)
        assert.is_nil(ok)
        assert.matches("max_wave must be at least canary", err, 1, true)
    end)
end)

describe("rules.self_check", function()
    it("refuses rules whose rollout policy is wrong", function()
        local saved = rules.rollout_policy
        rules.rollout_policy = copy(saved)
        rules.rollout_policy.soak_seconds = "a minute"
        local ok, err = rules.self_check(CTX)
        rules.rollout_policy = saved
        assert.is_nil(ok)
        assert.matches("soak_seconds must be an integer", err, 1, true)
        assert.is_true((rules.self_check(CTX)))
    end)

    it("exports the waves of its policy", function()
        assert.same(rollout.waves(7, rules.rollout_policy), rules.rollout_waves(7))
    end)
end)
