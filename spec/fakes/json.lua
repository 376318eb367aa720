-- Fake of the host `json` module (lua/core/json.lua), in pure Lua: the same
-- canonical encoding as core/bind_json.c, so specs hash what the core hashes.
local error, getmetatable, ipairs, pairs, pcall, setmetatable, tonumber, type =
    error, getmetatable, ipairs, pairs, pcall, setmetatable, tonumber, type
local math_floor, math_abs, math_tointeger, math_type = math.floor, math.abs, math.tointeger, math.type
local string_byte, string_find, string_format, string_gsub, string_match, string_sub =
    string.byte, string.find, string.format, string.gsub, string.match, string.sub
local table_concat, table_sort = table.concat, table.sort
local utf8_char = utf8.char

local MAX_DEPTH = 128

local M = {}

M.array_mt = { __name = "json.array" }
-- The C module uses a light userdata NULL; pure Lua has none, so a unique
-- table stands in. Compare with `== json.null`, as rules must anyway.
M.null = setmetatable({}, { __name = "json.null", __tostring = function() return "json.null" end })

function M.array(t)
    if t == nil then
        t = {}
    elseif type(t) ~= "table" then
        error(string_format("bad argument #1 to 'array' (table expected, got %s)", type(t)), 2)
    end
    return setmetatable(t, M.array_mt)
end

function M.is_array(t)
    return type(t) == "table" and getmetatable(t) == M.array_mt
end

local ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r",
    ["\t"] = "\\t", ["\b"] = "\\b", ["\f"] = "\\f" }

local function encode_string(s)
    return '"' .. string_gsub(s, '[%c"\\]', function(c)
        local byte = string_byte(c)
        if ESCAPES[c] then
            return ESCAPES[c]
        elseif byte < 0x20 then
            return string_format("\\u%04x", byte)
        end
        return c -- 0x7f is a %c but needs no escape
    end) .. '"'
end

local function encode_number(n)
    if math_type(n) == "integer" then
        return string_format("%d", n)
    end
    if n ~= n then
        error("json.encode: cannot encode NaN", 0)
    elseif n == math.huge or n == -math.huge then
        error("json.encode: cannot encode infinity", 0)
    end
    if n == math_floor(n) and math_abs(n) < 1e15 then
        return string_format("%d", math_tointeger(n))
    end
    return string_format("%.17g", n)
end

-- n > 0 when t's keys are exactly 1..n, else 0 (as core/bind_json.c).
local function sequence_length(t)
    local n, max = 0, 0
    for k in pairs(t) do
        if math_type(k) ~= "integer" or k < 1 then
            return 0
        end
        if k > max then
            max = k
        end
        n = n + 1
    end
    return n == max and n or 0
end

local encode_value

local function encode_table(t, out, depth)
    if depth >= MAX_DEPTH then
        error(string_format("json.encode: nesting deeper than %d (a cycle?)", MAX_DEPTH), 0)
    end
    local marked = getmetatable(t) == M.array_mt
    local n = marked and #t or sequence_length(t)
    if marked or n > 0 then
        out[#out + 1] = "["
        for i = 1, n do
            if i > 1 then
                out[#out + 1] = ","
            end
            encode_value(t[i], out, depth + 1)
        end
        out[#out + 1] = "]"
        return
    end
    local keys = {}
    for k in pairs(t) do
        if type(k) ~= "string" then
            error(string_format("json.encode: object keys must be strings (got a %s key)", type(k)), 0)
        end
        keys[#keys + 1] = k
    end
    table_sort(keys)
    out[#out + 1] = "{"
    for i, k in ipairs(keys) do
        if i > 1 then
            out[#out + 1] = ","
        end
        out[#out + 1] = encode_string(k)
        out[#out + 1] = ":"
        encode_value(t[k], out, depth + 1)
    end
    out[#out + 1] = "}"
end

function encode_value(v, out, depth)
    local kind = type(v)
    if v == nil or v == M.null then
        out[#out + 1] = "null"
    elseif kind == "boolean" then
        out[#out + 1] = v and "true" or "false"
    elseif kind == "number" then
        out[#out + 1] = encode_number(v)
    elseif kind == "string" then
        out[#out + 1] = encode_string(v)
    elseif kind == "table" then
        encode_table(v, out, depth)
    else
        error(string_format("json.encode: cannot encode a %s value", kind), 0)
    end
end

function M.encode(value)
    local out = {}
    encode_value(value, out, 0)
    return table_concat(out)
end

-- Decoder: a small recursive descent parser. Failures raise a table
-- internally and come back from M.decode as nil, message.

local function fail(pos, what)
    error({ message = string_format("%s at byte %d", what, pos) }, 0)
end

local function skip_space(text, pos)
    local _, last = string_find(text, "^[ \t\r\n]*", pos)
    return last + 1
end

local decode_value

local function decode_string(text, pos)
    local out, i = {}, pos + 1
    while true do
        local stop = string_find(text, '["\\%c]', i)
        if not stop then
            fail(pos, "unterminated string")
        end
        out[#out + 1] = string_sub(text, i, stop - 1)
        local c = string_sub(text, stop, stop)
        if c == '"' then
            return table_concat(out), stop + 1
        elseif c == "\\" then
            local e = string_sub(text, stop + 1, stop + 1)
            local simple = ({ ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f",
                n = "\n", r = "\r", t = "\t" })[e]
            if simple then
                out[#out + 1] = simple
                i = stop + 2
            elseif e == "u" then
                local hex = string_sub(text, stop + 2, stop + 5)
                local code = #hex == 4 and string_find(hex, "^%x+$") and tonumber(hex, 16)
                if not code then
                    fail(stop, "bad \\u escape")
                end
                i = stop + 6
                if code >= 0xd800 and code <= 0xdbff and string_sub(text, i, i + 1) == "\\u" then
                    local low = tonumber(string_sub(text, i + 2, i + 5), 16)
                    if low and low >= 0xdc00 and low <= 0xdfff then
                        code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00)
                        i = i + 6
                    end
                end
                out[#out + 1] = utf8_char(code)
            else
                fail(stop, "bad escape")
            end
        elseif string_byte(c) < 0x20 then
            fail(stop, "control character in string")
        else
            out[#out + 1] = c -- 0x7f
            i = stop + 1
        end
    end
end

local LITERALS = { ["true"] = true, ["false"] = false }

function decode_value(text, pos, depth)
    if depth > 512 then
        fail(pos, "nesting too deep")
    end
    pos = skip_space(text, pos)
    local c = string_sub(text, pos, pos)
    if c == "{" then
        local object = {}
        pos = skip_space(text, pos + 1)
        if string_sub(text, pos, pos) == "}" then
            return object, pos + 1
        end
        while true do
            pos = skip_space(text, pos)
            if string_sub(text, pos, pos) ~= '"' then
                fail(pos, "expected a string key")
            end
            local key
            key, pos = decode_string(text, pos)
            pos = skip_space(text, pos)
            if string_sub(text, pos, pos) ~= ":" then
                fail(pos, "expected ':'")
            end
            object[key], pos = decode_value(text, pos + 1, depth + 1)
            pos = skip_space(text, pos)
            c = string_sub(text, pos, pos)
            if c == "}" then
                return object, pos + 1
            elseif c ~= "," then
                fail(pos, "expected ',' or '}'")
            end
            pos = pos + 1
        end
    elseif c == "[" then
        local array = M.array({})
        pos = skip_space(text, pos + 1)
        if string_sub(text, pos, pos) == "]" then
            return array, pos + 1
        end
        while true do
            array[#array + 1], pos = decode_value(text, pos, depth + 1)
            pos = skip_space(text, pos)
            c = string_sub(text, pos, pos)
            if c == "]" then
                return array, pos + 1
            elseif c ~= "," then
                fail(pos, "expected ',' or ']'")
            end
            pos = pos + 1
        end
    elseif c == '"' then
        return decode_string(text, pos)
    end
    local word = string_match(text, "^%a+", pos)
    if word == "null" then
        return M.null, pos + 4
    elseif word and LITERALS[word] ~= nil then
        return LITERALS[word], pos + #word
    end
    local number = string_match(text, "^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
    local value = number and tonumber(number)
    if not value then
        fail(pos, "unexpected character")
    end
    if math_type(value) == "float" and value == math_floor(value) and math_abs(value) < 2 ^ 53 then
        value = math_tointeger(value)
    end
    return value, pos + #number
end

function M.decode(text)
    if type(text) ~= "string" then
        error(string_format("bad argument #1 to 'decode' (string expected, got %s)", type(text)), 2)
    end
    local ok, value, pos = pcall(decode_value, text, 1, 0)
    if ok then
        pos = skip_space(text, pos)
        if pos <= #text then
            return nil, string_format("trailing characters at byte %d", pos)
        end
        return value
    end
    if type(value) == "table" then
        return nil, value.message
    end
    error(value, 0)
end

return M
