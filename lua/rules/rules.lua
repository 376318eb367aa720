-- rules: the entry module the C core loads from RULES_DIR (a flat directory,
-- shipped as a ConfigMap). Everything here is pure: data in, data out; the
-- core does all I/O. The contract below is what the core relies on; the full
-- description, with how to change and ship a rule, is docs/rules.md.
--
--   version                      string, informational
--   worker_name(id)              -> name | nil, err   DNS-1123 label <= 63, distinct per id
--   labels(id)                   -> labels | nil, err  selector {app, account-id} + app.kubernetes.io/*
--   credentials_fingerprint(acc) -> hex sha256 over the credential fields (fingerprint.lua)
--   credentials_in_sync(acc, obs)-> boolean: pods run the credentials the rules consider current
--   deployment(acc, ctx)         -> apps/v1 Deployment table, lists marked with json.array
--   plan(accounts, observed, ctx)-> actions, summary
--       accounts: array of rows {account_id, customer_id, airbnb_cookie,
--         x_client_version, user_agent, is_active, last_sync_at, updated_at,
--         deleted_at, credentials_generation} (strings, is_active boolean,
--         nil for SQL NULL; credentials_generation counts the credential
--         changes made by sessions other than the worker's, "0" if none)
--       observed: managed Deployments keyed by name: {name, account_id
--         (annotation sync-airbnb.io/account-id), applied_hash (annotation
--         sync-airbnb.io/applied-hash), fingerprint (pod template annotation
--         sync-airbnb.io/credentials-fingerprint), annotations (the
--         Deployment's metadata.annotations, at least those under
--         sync-airbnb.io/), generation, drifted, replicas, ready_replicas}
--       ctx: {namespace, worker_image, now}
--       actions, sorted by name:
--         {action="create"|"update", account_id, name, reason, object, desired_hash}
--         {action="delete", account_id, name, reason}
--         {action="error", account_id, name?, reason, code, retryable=false}
--       summary: {desired, observed, create, update, delete, error}
--   observed_after(actions, observed) -> observed as the core would see it after applying
--   validate_deployment(obj)     -> true | nil, err
--   examples                     the promises self_check holds the rules to
--   self_check(ctx)              -> true | nil, err; the core refuses rules that fail it
--   rollout_policy               {canary, growth, max_wave, soak_seconds, ready_timeout_seconds,
--                                max_restarts, waiting_seconds, rollback} (rollout.lua)
--   rollout_waves(total)         -> array of wave sizes summing to total
local deployment = require("deployment")
local examples = require("examples")
local fingerprint = require("fingerprint")
local naming = require("naming")
local plan = require("plan")
local rollout = require("rollout")
local validate = require("validate")

local M = {}

M.version = "1.0.0"

M.worker_name = naming.worker_name
M.labels = naming.labels
M.credentials_fingerprint = fingerprint.credentials_fingerprint
M.credentials_in_sync = fingerprint.in_sync
M.deployment = deployment.deployment
M.plan = plan.plan
M.observed_after = plan.observed_after
M.validate_deployment = validate.deployment
M.examples = examples
M.rollout_policy = rollout.policy

function M.rollout_waves(total)
    return rollout.waves(total, M.rollout_policy)
end

--- Holds the rules to their examples (examples.lua).
---@param ctx table|nil {namespace, worker_image, now}
---@param override table|nil examples to use instead of the shipped ones (specs)
---@return true|nil ok
---@return string|nil err
function M.self_check(ctx, override)
    local ok, err = rollout.check(M.rollout_policy)
    if not ok then
        return nil, err
    end
    return examples.check(M, ctx, override)
end

return M
