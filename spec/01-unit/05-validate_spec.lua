local helpers = require("spec.helpers")
local accounts = require("spec.fixtures.accounts")
local rules = require("rules")
local validate = require("validate")

local json = helpers.fakes.json

describe("validate_deployment", function()
    local function rendered()
        return rules.deployment(accounts.row("310316675"), { namespace = "sync-airbnb" })
    end

    local function rejects(mutate, message)
        local object = rendered()
        mutate(object)
        local ok, err = rules.validate_deployment(object)
        assert.is_nil(ok)
        assert.matches(message, err, 1, true)
    end

    it("accepts the rendered Deployment", function()
        assert.same({ true }, { rules.validate_deployment(rendered()) })
    end)

    it("rejects what is not a Deployment", function()
        assert.is_nil((rules.validate_deployment("x")))
        rejects(function(o) o.kind = "StatefulSet" end, "apps/v1 Deployment")
    end)

    it("rejects a name that is not a DNS-1123 label of at most 63", function()
        rejects(function(o) o.metadata.name = "Worker_1" end, "is not a DNS-1123 label")
        rejects(function(o) o.metadata.name = string.rep("a", 64) end, "is not a DNS-1123 label")
        rejects(function(o) o.metadata.name = "-a" end, "is not a DNS-1123 label")
        rejects(function(o) o.metadata.name = nil end, "is not a DNS-1123 label")
    end)

    it("rejects an invalid label value or key", function()
        rejects(function(o) o.metadata.labels["account-id"] = "a/b" end, "not a valid label value")
        rejects(function(o) o.metadata.labels["account-id"] = string.rep("a", 64) end, "not a valid label value")
        rejects(function(o) o.metadata.labels["bad key!"] = "x" end, "not a valid label key")
        rejects(function(o) o.spec.template.metadata.labels.app = "-x" end, "not a valid label value")
    end)

    it("accepts prefixed label keys and rejects a bad prefix", function()
        assert.is_true(validate.is_label_key("app.kubernetes.io/name"))
        assert.is_true(validate.is_label_key("account-id"))
        assert.is_false(validate.is_label_key("Bad_Prefix/name"))
        assert.is_false(validate.is_label_key("a/b/c"))
        assert.is_false(validate.is_label_key("example.com/"))
    end)

    it("requires the managed-by label the core finds its Deployments by", function()
        rejects(function(o) o.metadata.labels["app.kubernetes.io/managed-by"] = nil end, "managed-by")
        rejects(function(o) o.metadata.labels["app.kubernetes.io/managed-by"] = "helm" end, "managed-by")
    end)

    it("rejects a selector that does not match the pod template labels", function()
        rejects(function(o) o.spec.selector.matchLabels["account-id"] = "other" end,
            "does not match the pod template labels")
        rejects(function(o) o.spec.template.metadata.labels.app = nil end, "does not match the pod template labels")
        rejects(function(o) o.spec.selector.matchLabels = {} end, "non-empty")
    end)

    it("requires exactly one container with a name and an image", function()
        rejects(function(o) o.spec.template.spec.containers = json.array({}) end, "exactly one container")
        rejects(function(o)
            local c = o.spec.template.spec.containers
            c[2] = helpers.copy(c[1])
        end, "exactly one container")
        rejects(function(o) o.spec.template.spec.containers[1].image = "" end, "needs an image")
        rejects(function(o) o.spec.template.spec.containers[1].image = nil end, "needs an image")
        rejects(function(o) o.spec.template.spec.containers[1].name = "Worker" end, "needs a name")
    end)

    it("rejects a non-string annotation", function()
        rejects(function(o) o.metadata.annotations["sync-airbnb.io/x"] = 1 end, "must be a string")
    end)

    it("rejects a list not marked with json.array", function()
        rejects(function(o) o.spec.template.spec.containers[1].args = { "--reload" } end,
            "not marked with json.array")
    end)
end)

describe("validate.unmarked_list", function()
    it("names the path of a list not marked with json.array", function()
        assert.is_nil(validate.unmarked_list({ a = json.array({ 1 }), b = {} }, "x"))
        assert.equal("x.a", validate.unmarked_list({ a = { 1 } }, "x"))
        assert.equal("x.a[1].b", validate.unmarked_list({ a = json.array({ { b = { "y" } } }) }, "x"))
    end)
end)

describe("validate.account and validate.credentials", function()
    it("accept a complete row", function()
        assert.is_true(validate.account(accounts.row("1")))
        assert.is_true(validate.credentials(accounts.row("1")))
    end)

    it("name the field and never its value", function()
        local row = accounts.row("1", { user_agent = 12345678 })
        local ok, err = validate.credentials(row)
        assert.is_nil(ok)
        assert.equal("user_agent must be a string, got number", err)
        row = accounts.row("1", { deleted_at = true })
        ok, err = validate.account(row)
        assert.is_nil(ok)
        assert.equal("deleted_at must be a string or NULL, got boolean", err)
    end)
end)
