---@meta
-- log: the host's logging binding (core/bind_log.c).
--
-- This file documents the contract and is never loaded: the C core registers
-- the real module, and spec/fakes/log.lua implements the same functions for
-- busted (recording instead of printing). Rules reach it with
-- `require("log")`; the shipped rules are pure and do not log.
--
-- Never pass a credential value (airbnb_cookie, x_client_version,
-- user_agent) in a message or a field: DESIGN.md §5.4.
local log = {}

--- Logs one line at the given level. Lines below LOG_LEVEL are dropped.
---@param message string
---@param fields table<string, any>|nil string keys; values are converted with tostring
function log.debug(message, fields) end

---@param message string
---@param fields table<string, any>|nil
function log.info(message, fields) end

---@param message string
---@param fields table<string, any>|nil
function log.warn(message, fields) end

---@param message string
---@param fields table<string, any>|nil
function log.error(message, fields) end

return log
