-- kube: the Kubernetes API binding, implemented in C (core/bind_kube.c).
--
-- This file is the contract, not the implementation: it documents the
-- signatures of the module the core opens as `require("kube")`, and it is what
-- spec/ fakes implement. Calling these stubs raises.
--
-- Requests block (one attempt, with a timeout) and pass bodies as strings:
-- encode and decode JSON with the `json` module. Operational failures return
-- `nil, message`; misuse (wrong argument types, a closed client) raises.
-- Credentials never appear in returned error messages.

local M = {}

local function stub()
  error("kube: stub called; the real module is opened from C", 2)
end

---@class kube.Client
local Client = {}

---Connects with exactly one of: kubeconfig files (a ':'-separated list merged
---as kubectl merges $KUBECONFIG; context, else the current-context), the pod's
---service account, or explicit settings.
---@param opts { kubeconfig: string?, context: string?, in_cluster: boolean?, server: string?, token: string?, token_file: string?, ca_file: string?, client_cert_file: string?, client_key_file: string?, insecure_skip_tls_verify: boolean?, namespace: string? }
---@return kube.Client? client
---@return string? err  e.g. 'kubeconfig /x: context "foo" not found'
function M.connect(opts) stub() end

---Connects from the environment as the operator does: $KUBECONFIG (a list,
---merged; $KUBE_CONTEXT picks the context) when set, else the in-cluster
---service account (KUBERNETES_SERVICE_HOST/PORT, token, ca.crt, namespace;
---$KUBE_SA_DIR overrides the directory), else ~/.kube/config.
---@return kube.Client? client
---@return string? err
function M.from_env() stub() end

---Percent-encodes a query value (label and field selectors), keeping only
---A-Z a-z 0-9 - . _ ~ as they are.
---@param s string
---@return string
function M.escape(s) stub() end

---Sends one request and waits for the answer.
---Any HTTP answer returns its status; only a transport failure (connection,
---TLS, timeout) returns nil, err.
---@param method "GET"|"POST"|"PUT"|"PATCH"|"DELETE"|"HEAD"
---@param path string  starts with "/", may carry a query: "/apis/apps/v1/namespaces/ns/deployments?labelSelector=..."
---@param body string?  sent as is; Content-Type defaults to application/json
---@param opts { timeout_ms: integer?, content_type: string? }?  timeout default 30000; use "application/apply-patch+yaml" or "application/merge-patch+json" for PATCH
---@return integer|nil status  HTTP status, or nil on transport failure
---@return string body_or_err  response body, or the transport error
---@return integer? retry_after  Retry-After in seconds, when the server sent one
---@return string? error_line  for non-2xx: '409 Conflict (AlreadyExists): deployments.apps "x" already exists'
function Client:request(method, path, body, opts) stub() end

---The namespace of the kubeconfig context or the service account, if any.
---@return string?
function Client:namespace() stub() end

---The API server URL (no trailing slash).
---@return string
function Client:server() stub() end

---Releases the connection. Idempotent; also runs from __gc and __close
---(`local c <close> = kube.connect(...)`). Methods of a closed client raise.
function Client:close() stub() end

M.Client = Client

return M
