---@meta
-- json: the host's JSON binding (core/bind_json.c).
--
-- This file documents the contract and is never loaded: the C core registers
-- the real module, and spec/fakes/json.lua implements the same functions in
-- pure Lua for busted. Rules reach it with `require("json")`.
--
-- Encoding is canonical, because the rules hash its output to decide whether
-- a Deployment needs applying: equal tables give equal text.
--   * object keys are sorted bytewise; no white space anywhere;
--   * a table is an array when it carries json.array_mt (so an empty list
--     stays `[]`), or when it is non-empty and its keys are exactly 1..n;
--     any other table is an object and every key must be a string;
--   * strings: `"` `\` and \b \f \n \r \t are escaped as such, other bytes
--     below 0x20 as \u00XX, everything else is copied byte for byte;
--   * integers print as integers; a float with an integral value below 1e15
--     prints as an integer, any other finite float as %.17g; NaN and
--     infinity are errors;
--   * nil and json.null encode as null;
--   * nesting deeper than 128 levels (or a cycle) is an error.
local json = {}

--- The metatable that marks a table as a JSON array.
---@type table
json.array_mt = {}

--- Sentinel for JSON null (a light userdata NULL, the same value as cjson.null).
---@type lightuserdata
json.null = nil

--- Canonical JSON text of a value. Raises on a value it cannot encode
--- (function, userdata, NaN, a non-string key in an object, too deep).
---@param value any
---@return string text
function json.encode(value) end

--- Parses one JSON text. Arrays come back marked with json.array_mt, null as
--- json.null.
---@param text string
---@return any|nil value
---@return string|nil err message with the byte offset, when text is malformed
function json.decode(text) end

--- Marks t (or a new empty table) as an array and returns it. Every list in
--- a Kubernetes object the rules build goes through this, so [] stays [].
---@param t table|nil
---@return table t
function json.array(t) end

--- True when t is a table marked with json.array_mt.
---@param t any
---@return boolean
function json.is_array(t) end

return json
