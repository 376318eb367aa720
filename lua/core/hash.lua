---@meta
-- hash: the host's hashing binding (core/bind_hash.c).
--
-- This file documents the contract and is never loaded: the C core registers
-- the real module, and spec/fakes/hash.lua implements the same function in
-- pure Lua for busted. Rules reach it with `require("hash")`.
local hash = {}

--- SHA-256 of a byte string, as lowercase hex.
--- Raises when data is not a string (a number is converted, as
--- luaL_checklstring does).
---@param data string any bytes, NUL included
---@return string hex 64 lowercase hex digits
function hash.sha256(data) end

return hash
