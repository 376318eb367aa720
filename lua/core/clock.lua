---@meta
-- clock: the host's time binding (core/bind_clock.c), for the REPL and tools.
--
-- This file documents the contract and is never loaded: the C core registers
-- the real module. The rules do not get it: they read the time from
-- `ctx.now`, so that a plan depends only on its inputs.
local clock = {}

--- Wall-clock time.
---@return number seconds since the epoch, with a fractional part
function clock.now() end

--- A monotonic clock, for measuring durations.
---@return integer milliseconds from an arbitrary start
function clock.monotonic_ms() end

--- Blocks the calling loop for the given time (the REPL only).
---@param seconds number
function clock.sleep(seconds) end

return clock
