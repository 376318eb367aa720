local helpers = require("spec.helpers")
local accounts = require("spec.fixtures.accounts")
local deployments = require("spec.fixtures.deployments")
local rules = require("rules")

local json = helpers.fakes.json

describe("deployment", function()
    local account = accounts.row("310316675")
    local ctx = { namespace = "sync-airbnb", worker_image = "sync-airbnb:latest", now = 1761195600 }
    local object = rules.deployment(account, ctx)
    local seed = deployments.seed("310316675")
    local container = object.spec.template.spec.containers[1]
    local seed_container = seed.spec.template.spec.containers[1]

    it("has the seed's kind, name, namespace and replicas", function()
        assert.equal(seed.apiVersion, object.apiVersion)
        assert.equal(seed.kind, object.kind)
        assert.equal(seed.metadata.name, object.metadata.name)
        assert.equal(seed.metadata.namespace, object.metadata.namespace)
        assert.equal(1, object.spec.replicas)
    end)

    it("has exactly the seed's selector", function()
        assert.same(seed.spec.selector, object.spec.selector)
    end)

    it("carries the seed's labels on the Deployment and its pods, plus app.kubernetes.io", function()
        for _, labels in ipairs({ object.metadata.labels, object.spec.template.metadata.labels }) do
            for key, value in pairs(seed.metadata.labels) do
                assert.equal(value, labels[key])
            end
            assert.same(rules.labels("310316675"), labels)
        end
    end)

    it("has the seed's container name, image (pinned by ctx), resources and env first", function()
        assert.equal(1, #object.spec.template.spec.containers)
        for _, field in ipairs({ "name", "image", "resources" }) do
            assert.same(seed_container[field], container[field], field)
        end
        for i, var in ipairs(seed_container.env) do
            assert.same(var, container.env[i])
        end
    end)

    it("probes /health and /health/ready on 8000, with a startup probe for a Python start", function()
        assert.same({ path = "/health/ready", port = 8000 }, container.readinessProbe.httpGet)
        assert.same({ path = "/health", port = 8000 }, container.livenessProbe.httpGet)
        assert.same({ path = "/health", port = 8000 }, container.startupProbe.httpGet)
        local startup = container.startupProbe
        assert.is_true(startup.periodSeconds * startup.failureThreshold >= 120)
        assert.is_nil(container.livenessProbe.initialDelaySeconds) -- the startup probe gates it
    end)

    local function env_var(name)
        for _, var in ipairs(container.env) do
            if var.name == name then
                return var
            end
        end
    end

    it("takes AIRBNB_API_KEY from Secret sync-airbnb-api key api-key", function()
        assert.same({ name = "AIRBNB_API_KEY",
            valueFrom = { secretKeyRef = { name = "sync-airbnb-api", key = "api-key" } } }, env_var("AIRBNB_API_KEY"))
    end)

    it("satisfies the app's import-time legacy variables with placeholders, not the account's values", function()
        for _, name in ipairs({ "AIRBNB_COOKIE", "X_CLIENT_VERSION" }) do
            local var = env_var(name)
            assert.equal("unused-legacy-placeholder", var.value, name)
            assert.is_nil(var.valueFrom)
        end
        assert.not_equal(account.airbnb_cookie, env_var("AIRBNB_COOKIE").value)
    end)

    it("names the worker's database sessions (PGAPPNAME) for the credentials trigger", function()
        assert.equal("sync-airbnb-worker", env_var("PGAPPNAME").value)
    end)

    it("never runs two workers of one account: Recreate, and a grace period over the 300 s drain", function()
        assert.same({ type = "Recreate" }, object.spec.strategy)
        assert.is_true(object.spec.template.spec.terminationGracePeriodSeconds >= 300 + 30)
    end)

    it("keeps few old ReplicaSets and mounts no ServiceAccount token", function()
        assert.is_true(object.spec.revisionHistoryLimit >= 1 and object.spec.revisionHistoryLimit <= 2)
        assert.is_false(object.spec.template.spec.automountServiceAccountToken)
    end)

    it("takes DATABASE_URL from Secret sync-airbnb-db key url, never inline", function()
        local database_url = container.env[3]
        assert.equal("DATABASE_URL", database_url.name)
        assert.is_nil(database_url.value)
        assert.same({ secretKeyRef = { name = "sync-airbnb-db", key = "url" } }, database_url.valueFrom)
    end)

    it("starts uvicorn itself, so the image's migrating entrypoint never runs", function()
        assert.same({ "uvicorn", "sync_airbnb.main:app", "--host", "0.0.0.0", "--port", "8000" },
            container.command)
        assert.is_nil(container.args)
    end)

    it("names port 8000 http", function()
        assert.same({ { name = "http", containerPort = 8000 } }, container.ports)
    end)

    it("hardens what a root image allows, without forcing runAsNonRoot", function()
        assert.same({ seccompProfile = { type = "RuntimeDefault" } }, object.spec.template.spec.securityContext)
        assert.same({ allowPrivilegeEscalation = false, capabilities = { drop = { "ALL" } } },
            container.securityContext)
        assert.is_nil(json.encode(object):find("runAsNonRoot", 1, true))
        assert.is_nil(json.encode(object):find("runAsUser", 1, true))
    end)

    it("annotates the raw account id and the credentials fingerprint", function()
        assert.equal("310316675", object.metadata.annotations["sync-airbnb.io/account-id"])
        assert.equal(rules.credentials_fingerprint(account),
            object.spec.template.metadata.annotations["sync-airbnb.io/credentials-fingerprint"])
    end)

    it("marks every list with json.array", function()
        assert.lists_marked(object)
        local emptied = rules.deployment(account, ctx)
        emptied.spec.template.spec.containers[1].env = json.array({})
        assert.matches('"env":%[%]', json.encode(emptied))
    end)

    it("puts no credential value anywhere", function()
        assert.no_credentials(object, account)
        assert.no_credentials(json.encode(object), account)
    end)

    it("uses ctx.namespace and ctx.worker_image, with the documented defaults", function()
        local custom = rules.deployment(account, { namespace = "other", worker_image = "registry/x:1" })
        assert.equal("other", custom.metadata.namespace)
        assert.equal("registry/x:1", custom.spec.template.spec.containers[1].image)
        local default = rules.deployment(account)
        assert.equal("sync-airbnb", default.metadata.namespace)
        assert.equal("sync-airbnb:0.1.0", default.spec.template.spec.containers[1].image)
    end)

    it("passes the raw id to ACCOUNT_ID and the annotation even when the name is hashed", function()
        local odd = rules.deployment(accounts.row(accounts.odd_ids.slash), ctx)
        assert.equal(accounts.odd_ids.slash, odd.spec.template.spec.containers[1].env[2].value)
        assert.equal(accounts.odd_ids.slash, odd.metadata.annotations["sync-airbnb.io/account-id"])
        assert.is_true(rules.validate_deployment(odd))
    end)

    it("renders the same text every time", function()
        assert.equal(json.encode(rules.deployment(account, ctx)), json.encode(rules.deployment(account, ctx)))
    end)

    it("passes validate_deployment for every odd id", function()
        for what, id in pairs(accounts.odd_ids) do
            local ok, err = rules.validate_deployment(rules.deployment(accounts.row(id), ctx))
            assert.is_true(ok, what .. ": " .. tostring(err))
        end
    end)
end)
