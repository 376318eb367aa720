-- deployment: THE worker Deployment template (apps/v1), one per active account.
--
-- The seed's template (one replica, the seed's selector, MODE=worker,
-- ACCOUNT_ID, DATABASE_URL from Secret sync-airbnb-db/url, 512Mi/250m
-- requests, 1Gi/500m limits, probes on port 8000), fitted to the real app
-- (../shared/apps/sync-airbnb; docs/rules.md, "The worker template", says
-- why each field is there):
--   - the container starts uvicorn directly, bypassing the image's
--     ENTRYPOINT, which would run migrations (entrypoint.sh);
--   - AIRBNB_API_KEY from Secret sync-airbnb-api/api-key, and harmless
--     placeholders for AIRBNB_COOKIE and X_CLIENT_VERSION, which the app
--     requires at import (network/http_headers.py builds legacy headers from
--     them) but never uses for an account: those come from the database;
--   - PGAPPNAME marks the worker's database sessions, so the credentials
--     trigger tells its own cookie rotation from an admin's change;
--   - strategy Recreate and a 330 s grace period: never two workers of one
--     account, and the 300 s drain of a running sync (main.py) fits;
--   - no ServiceAccount token, no privilege escalation, all capabilities
--     dropped, seccomp RuntimeDefault; but no runAsNonRoot: the image runs
--     as root (its Dockerfile has no USER).
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
-- A pinned tag, never :latest (a :latest would differ from node to node).
M.default_image = "sync-airbnb:0.1.0"
M.account_id_annotation = "sync-airbnb.io/account-id"
M.port = 8000
-- Secret (in the workers' namespace) holding the deployment-wide Airbnb API key.
M.api_key_secret = { name = "sync-airbnb-api", key = "api-key" }
-- libpq application_name of the worker's sessions. Migration
-- 005_credentials_generation counts credential changes made by any other
-- session; keep the two equal.
M.worker_application_name = "sync-airbnb-worker"
-- Stands in for the legacy import-time variables; never a credential.
M.legacy_placeholder = "unused-legacy-placeholder"
-- The worker waits up to 300 s for a running sync on SIGTERM (main.py,
-- thread.join(timeout=300)); 30 s more for uvicorn and the scheduler.
M.termination_grace_period_seconds = 330
-- One old ReplicaSet kept for `kubectl rollout undo` (the default, 10, means
-- 100,000 ReplicaSets for 10,000 workers).
M.revision_history_limit = 2

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

--- Container environment. DATABASE_URL and AIRBNB_API_KEY come from
--- Secrets, never inline; the account's own credentials are not here at all.
---@param account table
---@return table env a json.array of EnvVar
function M.env(account)
    return array({
        { name = "MODE", value = "worker" },
        { name = "ACCOUNT_ID", value = account.account_id },
        { name = "DATABASE_URL", valueFrom = { secretKeyRef = { name = "sync-airbnb-db", key = "url" } } },
        { name = "AIRBNB_API_KEY", valueFrom = { secretKeyRef = {
            name = M.api_key_secret.name, key = M.api_key_secret.key } } },
        -- Required at import by network/http_headers.py (legacy module-level
        -- HEADERS); the worker sends the account's cookie and client version
        -- from the database instead.
        { name = "AIRBNB_COOKIE", value = M.legacy_placeholder },
        { name = "X_CLIENT_VERSION", value = M.legacy_placeholder },
        { name = "PGAPPNAME", value = M.worker_application_name },
    })
end

local function http_probe(path, period, timeout, failures)
    return {
        httpGet = { path = path, port = M.port },
        periodSeconds = period,
        timeoutSeconds = timeout,
        failureThreshold = failures,
    }
end

--- The Deployment for an account.
---@param account table a valid account (validate.account and validate.credentials passed)
---@param ctx table|nil {namespace, worker_image}
---@return table deployment
function M.deployment(account, ctx)
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
            annotations = { [M.account_id_annotation] = id },
        },
        spec = {
            replicas = 1,
            -- Never two workers of one account: the old pod is gone (its
            -- sync drained) before the new one starts.
            strategy = { type = "Recreate" },
            revisionHistoryLimit = M.revision_history_limit,
            selector = { matchLabels = assert(naming.selector(id)) },
            template = {
                metadata = {
                    labels = pod_labels,
                    annotations = { [fingerprint.annotation] = fingerprint.credentials_fingerprint(account) },
                },
                spec = {
                    terminationGracePeriodSeconds = M.termination_grace_period_seconds,
                    automountServiceAccountToken = false, -- the worker never calls the API
                    securityContext = { seccompProfile = { type = "RuntimeDefault" } },
                    containers = array({
                        {
                            name = "worker",
                            image = ctx.worker_image or M.default_image,
                            command = array({ "uvicorn", "sync_airbnb.main:app",
                                "--host", "0.0.0.0", "--port", tostring(M.port) }),
                            env = M.env(account),
                            ports = array({ { name = "http", containerPort = M.port } }),
                            resources = M.resources(account),
                            -- Importing the app (FastAPI, SQLAlchemy, curl_cffi)
                            -- takes seconds on a busy node: up to 120 s to start
                            -- before liveness counts.
                            startupProbe = http_probe("/health", 5, 5, 24),
                            readinessProbe = http_probe("/health/ready", 10, 5, 3),
                            livenessProbe = http_probe("/health", 30, 5, 3),
                            securityContext = {
                                allowPrivilegeEscalation = false,
                                capabilities = { drop = array({ "ALL" }) },
                            },
                        },
                    }),
                },
            },
        },
    }
end

return M
