-- deployment: THE worker Deployment template (apps/v1), one per active account.
--
-- This is the seed's template: one replica, the seed's selector, MODE=worker,
-- ACCOUNT_ID, DATABASE_URL from Secret sync-airbnb-db/url, 512Mi/250m
-- requests, 1Gi/500m limits, readiness /health/ready and liveness /health on
-- port 8000. The container starts uvicorn directly, bypassing the image's
-- ENTRYPOINT, which would run migrations (DESIGN.md §2). The image runs as
-- root, so no runAsNonRoot here.
--
-- Every list goes through json.array so that it encodes as a JSON array even
-- when empty. Credential values never go in: the worker reads them from the
-- database itself; only their fingerprint is here (see fingerprint.lua).
local fingerprint = require("fingerprint")
local json = require("json")
local naming = require("naming")

local assert, tostring = assert, tostring
local array = json.array

local M = {}

M.default_namespace = "sync-airbnb"
M.default_image = "sync-airbnb:latest"
M.account_id_annotation = "sync-airbnb.io/account-id"
M.port = 8000

--- Container resources for an account. One place to give an account more
--- (see docs/rules.md, "Per-account resources").
---@param account table
---@return table resources
function M.resources(account)
    return {
        requests = { memory = "512Mi", cpu = "250m" },
        limits = { memory = "1Gi", cpu = "500m" },
    }
end

--- Container environment. DATABASE_URL comes from a Secret, never inline.
---@param account table
---@return table env a json.array of EnvVar
function M.env(account)
    return array({
        { name = "MODE", value = "worker" },
        { name = "ACCOUNT_ID", value = account.account_id },
        { name = "DATABASE_URL", valueFrom = { secretKeyRef = { name = "sync-airbnb-db", key = "url" } } },
    })
end

local function http_probe(path, initial_delay, period, timeout)
    return {
        httpGet = { path = path, port = M.port },
        initialDelaySeconds = initial_delay,
        periodSeconds = period,
        timeoutSeconds = timeout,
    }
end

--- Renders the Deployment with a given credentials state (fingerprint.decide);
--- plan uses this to keep the running fingerprint across a cookie rotation.
---@param account table a valid account (validate.account and validate.credentials passed)
---@param ctx table|nil {namespace, worker_image}
---@param credentials table {fingerprint, seen, last_sync_at}
---@return table deployment
function M.render(account, ctx, credentials)
    ctx = ctx or {}
    local id = account.account_id
    local name = assert(naming.worker_name(id))
    -- Two tables, not one shared: the core adds to metadata.labels before applying.
    local labels = assert(naming.labels(id))
    local pod_labels = assert(naming.labels(id))
    return {
        apiVersion = "apps/v1",
        kind = "Deployment",
        metadata = {
            name = name,
            namespace = ctx.namespace or M.default_namespace,
            labels = labels,
            annotations = {
                [M.account_id_annotation] = id,
                [fingerprint.seen_annotation] = credentials.seen,
                [fingerprint.last_sync_annotation] = credentials.last_sync_at,
            },
        },
        spec = {
            replicas = 1,
            selector = { matchLabels = assert(naming.selector(id)) },
            template = {
                metadata = {
                    labels = pod_labels,
                    annotations = { [fingerprint.annotation] = credentials.fingerprint },
                },
                spec = {
                    containers = array({
                        {
                            name = "worker",
                            image = ctx.worker_image or M.default_image,
                            command = array({ "uvicorn", "sync_airbnb.main:app",
                                "--host", "0.0.0.0", "--port", tostring(M.port) }),
                            env = M.env(account),
                            ports = array({ { name = "http", containerPort = M.port } }),
                            resources = M.resources(account),
                            readinessProbe = http_probe("/health/ready", 10, 10, 5),
                            livenessProbe = http_probe("/health", 30, 30, 5),
                        },
                    }),
                },
            },
        },
    }
end

--- The Deployment for an account that has none yet.
---@param account table a valid account
---@param ctx table|nil {namespace, worker_image}
---@return table deployment
function M.deployment(account, ctx)
    return M.render(account, ctx, fingerprint.decide(account, nil))
end

return M
