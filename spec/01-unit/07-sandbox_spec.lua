-- The rules must load the way the C host loads them (core/luahost.c): from a
-- flat directory, with strict globals and no io/os/debug/package.
local helpers = require("spec.helpers")

local function rule_files()
    local files = {}
    local listing = assert(io.popen("ls -A " .. helpers.rules_dir))
    for entry in listing:lines() do
        files[#files + 1] = entry
    end
    listing:close()
    return files
end

describe("the rules directory", function()
    it("is flat, with module names the host's require accepts", function()
        local files = rule_files()
        assert.is_true(#files > 0)
        for _, file in ipairs(files) do
            assert.matches("^[a-z0-9_]+%.lua$", file)
        end
    end)

    it("does not shadow the host modules", function()
        for _, file in ipairs(rule_files()) do
            assert.is_not.equal("hash.lua", file)
            assert.is_not.equal("json.lua", file)
            assert.is_not.equal("log.lua", file)
        end
    end)

    it("loads in the host's sandbox and passes its self-check there", function()
        local rules = helpers.sandbox_rules()
        assert.same({ true }, { rules.self_check({ namespace = "sync-airbnb", worker_image = "sync-airbnb:latest" }) })
        local actions = rules.plan({ require("spec.fixtures.accounts").row("1") }, {}, {})
        assert.equal("create", actions[1].action)
    end)

    it("the sandbox itself rejects undeclared globals and io (so the test above means something)", function()
        local dir = os.tmpname()
        os.remove(dir)
        assert.is_true(os.execute("mkdir " .. dir))
        finally(function() os.execute("rm -r " .. dir) end)
        local function try(source)
            local f = assert(io.open(dir .. "/rules.lua", "w"))
            f:write(source)
            f:close()
            return pcall(helpers.sandbox_rules, dir)
        end
        local ok, err = try("leaked = 1\nreturn {}")
        assert.is_false(ok)
        assert.matches("assignment to undeclared global 'leaked'", err)
        ok, err = try("return io.open('x')")
        assert.is_false(ok)
        assert.matches("undeclared global 'io'", err)
        ok, err = try("return require('os')")
        assert.is_false(ok)
        assert.matches("not found", err)
        assert.is_true((try("local json = require('json')\nreturn { ok = json.encode({}) }")))
    end)
end)
