-- Fake of the host `log` module (lua/core/log.lua): records lines instead of
-- printing them, so a spec can assert what was (not) logged.
local M = { lines = {} }

local function logger(level)
    return function(message, fields)
        if type(message) ~= "string" then
            error(string.format("bad argument #1 to '%s' (string expected, got %s)", level, type(message)), 2)
        end
        local copy = {}
        for k, v in pairs(fields or {}) do
            if type(k) == "string" then
                copy[k] = tostring(v)
            end
        end
        M.lines[#M.lines + 1] = { level = level, message = message, fields = copy }
    end
end

M.debug = logger("debug")
M.info = logger("info")
M.warn = logger("warn")
M.error = logger("error")

--- Forgets recorded lines (spec helper, not part of the host contract).
function M.clear()
    M.lines = {}
end

return M
