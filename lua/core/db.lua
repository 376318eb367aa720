---@meta db
-- The `db` module (core/bind_db.c): PostgreSQL from Lua. This file only
-- documents the contract; fakes in spec/ implement the same one.
--
-- Two error channels: operational failures (cannot connect, an SQL error,
-- the connection dropped) return nil, message (and for SQL errors the
-- SQLSTATE as a third value); misuse (wrong argument types, using a closed
-- connection) raises an error.
--
-- Values never go into SQL text: pass them as $1, $2 ... parameters.
--   nil or db.null -> SQL NULL, true/false -> 't'/'f', integers and floats
--   (NaN/Infinity as PostgreSQL spells them), strings (without NUL bytes).
-- Column values come back typed:
--   bool -> boolean; int2/int4/int8/oid -> integer; float4/float8/numeric ->
--   number (float); NULL -> db.null; everything else (text, varchar, uuid,
--   timestamptz, json ...) -> string as PostgreSQL prints it.

local db = {}

---A sentinel for SQL NULL, distinct from nil (so a row table keeps the key
---of a NULL column). Equal only to itself; tostring gives "db.null".
---@type userdata
db.null = nil

---@class db.conn
---Closed by conn:close(), by a `local c <close>` going out of scope, or when
---garbage-collected. Using a closed connection raises.
local conn = {}

---Connects by URL: a libpq URI (postgresql://user:pass@host:5432/db?sslmode=require)
---or a key=value conninfo. Sets application_name sync-airbnb-operator (unless
---the URL names one), connect_timeout 10 s (unless the URL sets it) and the
---session's statement_timeout. Error messages never include the password.
---@param url string
---@param opts? { statement_timeout_ms: integer } default 10000; 0 = no timeout
---@return db.conn|nil conn
---@return string? err
function db.connect(url, opts) end

---Runs a query and returns all rows.
---@param sql string constant SQL text with $1..$n placeholders
---@param ... nil|boolean|number|string|userdata parameter values (db.null = NULL)
---@return table[]|nil rows array of rows, each a table keyed by column name
---@return string[]|string columns column names in result order (on error: the message)
---@return string? sqlstate on error, the SQLSTATE (e.g. "42P01"), if the server sent one
function conn:query(sql, ...) end

---Runs a statement and returns the number of rows it affected
---(0 for statements that affect none, like CREATE).
---@param sql string
---@param ... nil|boolean|number|string|userdata
---@return integer|nil count
---@return string? err
---@return string? sqlstate
function conn:exec(sql, ...) end

---LISTENs on a channel ([a-z_][a-z0-9_]*, e.g. "sync_airbnb_accounts").
---@param channel string
---@return true|nil ok
---@return string? err
function conn:listen(channel) end

---Returns the notifications that have arrived, waiting up to timeout_ms for
---the first one when none is pending. An empty array means none came. On
---the accounts channel the payload is the account id, or "*" for "resync
---everything" (see lua/migrations/004_accounts_notify.lua).
---@param timeout_ms? integer 0 (default) = do not wait
---@return { channel: string, payload: string }[]|nil notifications
---@return string? err "database connection lost"
function conn:notifications(timeout_ms) end

---Closes the connection. Idempotent.
function conn:close() end

return db
