-- spec/helpers.lua: loaded once by busted (.busted `helper`) before any spec,
-- and required by specs for its functions.
--
--  * Preloads the fakes of the host modules (spec/fakes/*.lua implement
--    lua/core/{hash,json,log}.lua), so `require("json")` inside the rules
--    gets them exactly as it gets the C modules in the operator. One instance
--    each, shared by every spec file.
--  * Registers the custom assertions once: dns_label, label_value,
--    lists_marked, no_credentials.
--  * sandbox_rules(): loads lua/rules the way the C host does (strict
--    globals, no io/os/debug/package/load), for specs that check exactly that.
if _VERSION ~= "Lua 5.4" then
    error("the specs need Lua 5.4 (the operator's Lua); run: lua5.4 /usr/bin/busted", 0)
end

local luassert = require("luassert")
local say = require("say")

local helpers = {}

helpers.rules_dir = "lua/rules"

helpers.fakes = {
    hash = require("spec.fakes.hash"),
    json = require("spec.fakes.json"),
    log = require("spec.fakes.log"),
}
for name, module in pairs(helpers.fakes) do
    package.preload[name] = function()
        return module
    end
end


-- Oracles written independently of lua/rules/naming.lua, so the naming
-- specs do not test the rules against themselves.
function helpers.is_dns_label(s)
    return type(s) == "string" and #s >= 1 and #s <= 63
        and s:match("^[a-z0-9]") ~= nil and s:match("[a-z0-9]$") ~= nil
        and s:match("^[a-z0-9-]+$") ~= nil
end

function helpers.is_label_value(s)
    if type(s) ~= "string" or #s > 63 then
        return false
    end
    return s == "" or (s:match("^[A-Za-z0-9]") ~= nil and s:match("[A-Za-z0-9]$") ~= nil
        and s:match("^[A-Za-z0-9_.-]+$") ~= nil)
end

-- Credential values of `account` found anywhere in `value` (as strings,
-- keys and values, recursively).
function helpers.credentials_in(value, account)
    local found = {}
    local secrets = {}
    for _, field in ipairs({ "airbnb_cookie", "x_client_version", "user_agent" }) do
        if type(account[field]) == "string" and account[field] ~= "" then
            secrets[#secrets + 1] = { field = field, value = account[field] }
        end
    end
    local function walk(v)
        if type(v) == "string" then
            for _, secret in ipairs(secrets) do
                if v:find(secret.value, 1, true) then
                    found[#found + 1] = secret.field
                end
            end
        elseif type(v) == "table" then
            for k, child in pairs(v) do
                walk(k)
                walk(child)
            end
        end
    end
    walk(value)
    return found
end

say:set("assertion.dns_label.positive", "Expected a DNS-1123 label of at most 63 characters, got:\n%s")
say:set("assertion.dns_label.negative", "Expected not a DNS-1123 label, got:\n%s")
luassert:register("assertion", "dns_label", function(_, arguments)
    return helpers.is_dns_label(arguments[1])
end, "assertion.dns_label.positive", "assertion.dns_label.negative")

say:set("assertion.label_value.positive", "Expected a valid Kubernetes label value, got:\n%s")
say:set("assertion.label_value.negative", "Expected an invalid Kubernetes label value, got:\n%s")
luassert:register("assertion", "label_value", function(_, arguments)
    return helpers.is_label_value(arguments[1])
end, "assertion.label_value.positive", "assertion.label_value.negative")

say:set("assertion.lists_marked.positive", "Expected every list to be marked with json.array")
say:set("assertion.lists_marked.negative", "Expected some list not to be marked with json.array")
luassert:register("assertion", "lists_marked", function(state, arguments)
    -- validate.unmarked_list is specified on its own in 05-validate_spec.lua.
    local path = require("validate").unmarked_list(arguments[1], "object")
    if path then
        state.failure_message = "not marked with json.array: " .. path
    end
    return path == nil
end, "assertion.lists_marked.positive", "assertion.lists_marked.negative")

say:set("assertion.no_credentials.positive", "Expected no credential value in the output")
say:set("assertion.no_credentials.negative", "Expected a credential value in the output")
luassert:register("assertion", "no_credentials", function(state, arguments)
    local found = helpers.credentials_in(arguments[1], arguments[2])
    if #found > 0 then
        state.failure_message = "credential values found: " .. table.concat(found, ", ")
    end
    return #found == 0
end, "assertion.no_credentials.positive", "assertion.no_credentials.negative")

--- A fresh copy of a table, deep, keeping json.array marks.
function helpers.copy(value)
    if type(value) ~= "table" then
        return value
    end
    local result = {}
    for k, v in pairs(value) do
        result[k] = helpers.copy(v)
    end
    return setmetatable(result, getmetatable(value))
end

--- Actions reduced to "action name" strings, for compact expectations.
function helpers.summary(actions)
    local lines = {}
    for i, action in ipairs(actions) do
        lines[i] = action.action .. " " .. tostring(action.name)
    end
    return lines
end

--- The one action for `name`, or nil.
function helpers.action_for(actions, name)
    for _, action in ipairs(actions) do
        if action.name == name then
            return action
        end
    end
    return nil
end

local SANDBOX_BASE = { "assert", "error", "getmetatable", "ipairs", "next", "pairs", "pcall", "print",
    "rawequal", "rawget", "rawlen", "rawset", "select", "setmetatable", "tonumber", "tostring", "type",
    "xpcall", "warn", "_VERSION" }
local SANDBOX_LIBS = { "string", "table", "math", "utf8", "coroutine" }

--- Loads the rules the way core/luahost.c does: base library without
--- dofile/loadfile/load/collectgarbage, string (without dump), table, math,
--- utf8, coroutine; no io, os, debug, package; `require` resolves the host
--- modules then <dir>/<name>.lua (flat names); undeclared globals raise.
---@param dir string|nil defaults to lua/rules
---@return table rules
function helpers.sandbox_rules(dir)
    dir = dir or helpers.rules_dir
    local env = {}
    for _, name in ipairs(SANDBOX_BASE) do
        env[name] = _G[name]
    end
    for _, lib in ipairs(SANDBOX_LIBS) do
        local copy = {}
        for k, v in pairs(_G[lib]) do
            copy[k] = v
        end
        env[lib] = copy
    end
    env.string.dump = nil
    env._G = env
    local loaded = { hash = helpers.fakes.hash, json = helpers.fakes.json, log = helpers.fakes.log }
    local loading = {}
    env.require = function(name)
        if loaded[name] ~= nil then
            return loaded[name]
        end
        if type(name) ~= "string" or not name:match("^[A-Za-z0-9_]+$") then
            error(string.format("module '%s' not found (names are letters, digits and _)", tostring(name)), 2)
        end
        if loading[name] then
            error(string.format("module '%s' requires itself (require cycle)", name), 2)
        end
        local path = dir .. "/" .. name .. ".lua"
        local file = io.open(path)
        if not file then
            error(string.format("module '%s' not found: %s", name, path), 2)
        end
        file:close()
        local chunk, err = loadfile(path, "t", env)
        if not chunk then
            error(err, 2)
        end
        loading[name] = true
        local module = chunk(name)
        loading[name] = nil
        loaded[name] = module == nil and true or module
        return loaded[name]
    end
    setmetatable(env, {
        __index = function(_, key)
            error("undeclared global '" .. tostring(key) .. "'", 2)
        end,
        __newindex = function(_, key)
            error("assignment to undeclared global '" .. tostring(key) .. "'", 2)
        end,
    })
    return env.require("rules")
end

return helpers
