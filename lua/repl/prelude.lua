-- The REPL's prelude (core/repl.c runs it once in the REPL's full Lua state,
-- `sync-airbnb-operator repl`), with (rules_dir, database_url, db_timeout_ms,
-- kubeconfig): sets the globals the banner lists (json, hash, log, clock, db,
-- kube) and returns the rules loader, show() and the warnings to print.
-- Not a rule: it runs unsandboxed, for an admin who already has a shell.
local rules_dir, database_url, db_timeout_ms, kubeconfig = ...
local warnings = {}
json, hash, log, clock = require('json'), require('hash'), require('log'), require('clock')
if database_url then
    local conn, err = require('db').connect(database_url, { statement_timeout_ms = db_timeout_ms })
    db = conn
    if not conn then warnings[#warnings + 1] = 'db: not connected: ' .. err end
else
    warnings[#warnings + 1] = 'db: not connected (DATABASE_URL is not set)'
end
local client, err = require('kube').connect(kubeconfig and { kubeconfig = kubeconfig } or { in_cluster = true })
kube = client
if not client then warnings[#warnings + 1] = 'kube: not connected: ' .. err end

-- The rules' files resolve from RULES_DIR, after the host modules (as in the sandbox).
local from_dir = {}
table.insert(package.searchers, 2, function(name)
    if type(name) ~= 'string' or not name:match('^[%w_]+$') then return nil end
    local path = rules_dir .. '/' .. name .. '.lua'
    local f = io.open(path, 'rb')
    if not f then return "no file '" .. path .. "'" end
    local src = f:read('a')
    f:close()
    local chunk, lerr = load(src, '@' .. name .. '.lua', 't')
    if not chunk then error(lerr, 0) end
    from_dir[name] = true
    return chunk, path
end)
local function load_rules()
    for name in pairs(from_dir) do package.loaded[name] = nil end
    from_dir = {}
    return require('rules')
end

-- show(...): values as indented Lua, keys sorted, cycles marked.
local function render(value)
    local out, seen = {}, {}
    local function key_text(k)
        if type(k) == 'string' and k:match('^[%a_][%w_]*$') then return k end
        return '[' .. (type(k) == 'string' and string.format('%q', k) or tostring(k)) .. ']'
    end
    local function before(a, b)
        local ta, tb = type(a), type(b)
        if ta ~= tb then return ta < tb end
        if ta == 'number' or ta == 'string' then return a < b end
        return tostring(a) < tostring(b)
    end
    local function emit(v, indent)
        if type(v) == 'string' then out[#out + 1] = string.format('%q', v) return end
        if type(v) ~= 'table' then out[#out + 1] = tostring(v) return end
        if seen[v] then out[#out + 1] = '<cycle>' return end
        local keys = {}
        for k in pairs(v) do keys[#keys + 1] = k end
        if #keys == 0 then out[#out + 1] = '{}' return end
        table.sort(keys, before)
        seen[v] = true
        out[#out + 1] = '{\n'
        for _, k in ipairs(keys) do
            out[#out + 1] = indent .. '  ' .. key_text(k) .. ' = '
            emit(v[k], indent .. '  ')
            out[#out + 1] = ',\n'
        end
        out[#out + 1] = indent .. '}'
        seen[v] = nil
    end
    emit(value, '')
    return table.concat(out)
end
local function show(...)
    for i = 1, select('#', ...) do print(render((select(i, ...)))) end
end
return load_rules, show, warnings
