-- rollout: how a rules change that alters the rendered Deployment of
-- existing workers goes out (DESIGN.md "Rollouts", invariant 10).
--
-- The core puts the changed workers in a fixed order (by Deployment name)
-- and hands them out in waves: first `canary` workers, then waves that grow
-- by `growth` times up to `max_wave`. A wave starts only when every worker
-- of the previous one is updated, its pods are Ready, and it stayed so for
-- `soak_seconds`. A wave fails when a pod of it is not Ready within
-- `ready_timeout_seconds` of the wave's start, is in CrashLoopBackOff,
-- ImagePullBackOff or Failed, waits with a reason the kubelet retries by
-- itself (CreateContainerConfigError, ErrImagePull) for `waiting_seconds`,
-- or restarted more than `max_restarts` times: the rollout halts
-- (no further worker is touched) and, when `rollback` is true, the failed
-- wave goes back to the Deployment it had. Workers not yet reached are
-- planned with the previous rules (kept loaded by the core) so that their
-- credential rolls and repairs keep working. docs/rules.md#rollouts.
--
-- Edit M.policy to change the policy; check-rules and every reload run
-- M.check on it.
local error, math_floor, math_type, pairs, string_format, tostring, type =
    error, math.floor, math.type, pairs, string.format, tostring, type

local M = {}

M.policy = {
    canary = 1,                  -- workers in the first wave
    growth = 2,                  -- each next wave is this many times the previous one
    max_wave = 100,              -- no wave is larger than this
    soak_seconds = 30,           -- a wave stays healthy this long before the next starts
    ready_timeout_seconds = 300, -- a wave's pods must be Ready within this of its start
    max_restarts = 1,            -- container restarts tolerated per pod during a wave
    waiting_seconds = 30,        -- a config error or failed pull the kubelet retries lasts this long
    rollback = true,             -- put a failed wave back on the previous Deployment
}

local integer_fields = {
    canary = { 1, 100000 },
    growth = { 1, 100 },
    max_wave = { 1, 100000 },
    soak_seconds = { 0, 86400 },
    ready_timeout_seconds = { 1, 86400 },
    max_restarts = { 0, 1000 },
}

-- Fields a policy may leave out (rules written before they existed): the
-- core uses M.policy's value.
local optional_fields = {
    waiting_seconds = { 0, 86400 },
}

--- Checks a policy table; the core refuses rules whose policy fails.
---@param policy table
---@return true|nil ok
---@return string|nil err
function M.check(policy)
    if type(policy) ~= "table" then
        return nil, "rollout policy must be a table"
    end
    for key in pairs(policy) do
        if integer_fields[key] == nil and optional_fields[key] == nil and key ~= "rollback" then
            return nil, string_format("rollout policy: unknown field %s", tostring(key))
        end
    end
    for fields, optional in pairs({ [integer_fields] = false, [optional_fields] = true }) do
        for key, range in pairs(fields) do
            local value = policy[key]
            if value ~= nil or not optional then
                if math_type(value) ~= "integer" then
                    return nil, string_format("rollout policy: %s must be an integer, got %s", key, type(value))
                end
                if value < range[1] or value > range[2] then
                    return nil, string_format("rollout policy: %s must be in [%d, %d], got %d", key, range[1],
                        range[2], value)
                end
            end
        end
    end
    if type(policy.rollback) ~= "boolean" then
        return nil, "rollout policy: rollback must be true or false"
    end
    if policy.max_wave < policy.canary then
        return nil, "rollout policy: max_wave must be at least canary"
    end
    return true
end

--- Wave sizes for `total` workers: canary first, then growing, capped.
---@param total integer workers the change reaches
---@param policy table|nil (M.policy)
---@return table sizes, summing to total
function M.waves(total, policy)
    policy = policy or M.policy
    if math_type(total) ~= "integer" or total < 0 then
        error("rollout.waves: total must be a non-negative integer", 2)
    end
    local sizes, left, size = {}, total, policy.canary
    while left > 0 do
        local take = size < left and size or left
        sizes[#sizes + 1] = take
        left = left - take
        size = math_floor(size * policy.growth)
        if size > policy.max_wave then
            size = policy.max_wave
        end
    end
    return sizes
end

return M
