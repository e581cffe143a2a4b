--- takhin.cli.output: what the `takhin` command prints -- JSON, escaped
-- bytes, sizes, dates, offset ranges, tables and the progress bar.
--
-- JSON and big numbers: offsets, timestamps and sizes are written with
-- "%d", so every integer is exact (lua-cjson would print anything above 14
-- digits in exponent form).  Readers that decode numbers as doubles should
-- keep that in mind for values above 2^53; snapshot ids are strings.
--
-- Offset ranges are printed one way everywhere: `[first, end)`, end
-- exclusive (range()).
--
-- Runs on Lua 5.4 and LuaJIT (no `//`, no math.type, no <close>).
local M = {}

-------------------------------------------------------------------------
-- JSON (numbers exact; strings escaped; object keys sorted)
-------------------------------------------------------------------------

local ARRAY = {}    -- metatable that marks a table as a JSON array (even empty)

--- t (or a new table) marked as a JSON array, so that an empty one is [].
function M.array(t) return setmetatable(t or {}, ARRAY) end

--- JSON null.
M.NULL = setmetatable({}, { __tostring = function() return "null" end })

--- t as a JSON object whose keys come out in the order given (others
-- sorted, after them).
function M.ordered(t, keys)
    return setmetatable(t, { order = keys })
end

--- True when s is valid UTF-8 (without a utf8 library: when it is ASCII).
function M.valid_utf8(s)
    if not s:find("[\128-\255]") then return true end
    if utf8 and utf8.len then return utf8.len(s) ~= nil end
    return false
end

local JSON_ESC = {
    ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
    ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
}

local function json_string(s)
    local pat = M.valid_utf8(s) and '[%z\1-\31"\\\127]' or '[%z\1-\31"\\\127-\255]'
    return '"' .. s:gsub(pat, function(c)
        return JSON_ESC[c] or ("\\u%04x"):format(c:byte())
    end) .. '"'
end

-- Integers (and floats with an integral value) are printed with %d.
local function json_number(n)
    if n ~= n or n == math.huge or n == -math.huge then return "null" end
    if n == math.floor(n) and math.abs(n) < 2 ^ 63 then return ("%d"):format(n) end
    return ("%.17g"):format(n)
end

local function object_keys(t)
    local keys, seen = {}, {}
    local mt = getmetatable(t)
    for _, k in ipairs(mt and mt.order or {}) do
        if t[k] ~= nil then keys[#keys + 1] = k; seen[k] = true end
    end
    local rest = {}
    for k in pairs(t) do
        if not seen[k] then rest[#rest + 1] = tostring(k) end
    end
    table.sort(rest)
    for _, k in ipairs(rest) do keys[#keys + 1] = k end
    return keys
end

local encode

-- indent == nil: compact, on one line.
local function encode_list(items, open, close, indent, out, each)
    if #items == 0 then out[#out + 1] = open .. close; return end
    local inner = indent and (indent .. "  ")
    out[#out + 1] = open
    for i, item in ipairs(items) do
        if i > 1 then out[#out + 1] = "," end
        if inner then out[#out + 1] = "\n" .. inner end
        each(item, inner)
    end
    if indent then out[#out + 1] = "\n" .. indent end
    out[#out + 1] = close
end

local function encode_table(t, indent, out)
    if getmetatable(t) == ARRAY or #t > 0 then
        local items = {}
        for i = 1, #t do items[i] = i end
        return encode_list(items, "[", "]", indent, out, function(i, inner) encode(t[i], inner, out) end)
    end
    encode_list(object_keys(t), "{", "}", indent, out, function(k, inner)
        out[#out + 1] = json_string(k) .. (inner and ": " or ":")
        encode(t[k], inner, out)
    end)
end

function encode(v, indent, out)
    local t = type(v)
    if v == M.NULL then out[#out + 1] = "null"
    elseif t == "table" then encode_table(v, indent, out)
    elseif t == "string" then out[#out + 1] = json_string(v)
    elseif t == "number" then out[#out + 1] = json_number(v)
    elseif t == "boolean" then out[#out + 1] = tostring(v)
    else out[#out + 1] = "null" end
end

--- JSON text for v; `compact` puts it on one line.
function M.json(v, compact)
    local out = {}
    encode(v, not compact and "" or nil, out)
    return table.concat(out)
end

--- Print v as JSON on the command's stdout.
function M.emit_json(c, v)
    c.out:write(M.json(v), "\n")
end

-------------------------------------------------------------------------
-- Bytes, numbers and dates as text
-------------------------------------------------------------------------

local HEX_ESC = { ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

local function hex(c) return HEX_ESC[c] or ("\\x%02x"):format(c:byte()) end

--- Bytes made printable: control bytes, DEL and backslash are escaped
-- (\n, \t, \xHH, \\); so is every byte >= 0x80 unless s is valid UTF-8.
function M.escape(s)
    if not M.valid_utf8(s) then return (s:gsub("[%z\1-\31\127-\255\\]", hex)) end
    s = s:gsub("[%z\1-\31\127\\]", hex)
    return (s:gsub("\194[\128-\159]", function(c) return hex(c:sub(1, 1)) .. hex(c:sub(2)) end))
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

function M.base64(s)
    local out = {}
    for i = 1, #s, 3 do
        local a, b, c = s:byte(i, i + 2)
        local n = a * 65536 + (b or 0) * 256 + (c or 0)
        local chars = {}
        for k = 1, 4 do
            local idx = math.floor(n / 2 ^ (6 * (4 - k))) % 64
            chars[k] = B64:sub(idx + 1, idx + 1)
        end
        if not b then chars[3], chars[4] = "=", "=" elseif not c then chars[4] = "=" end
        out[#out + 1] = table.concat(chars)
    end
    return table.concat(out)
end

--- "512 B", "1.5 KiB", ...
function M.human_size(n)
    local units = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" }
    local v, u = n, 1
    while v >= 1024 and u < #units do v, u = v / 1024, u + 1 end
    if u == 1 then return ("%d B"):format(n) end
    return ("%.1f %s"):format(v, units[u])
end

--- "2023-11-14 22:13:20.000" (UTC) for ms since the epoch, or nil.
function M.utc(ms, sep)
    if type(ms) ~= "number" then return nil end
    local secs = math.floor(ms / 1000)
    local ok, s = pcall(os.date, "!%Y-%m-%d" .. (sep or " ") .. "%H:%M:%S", secs)
    if not ok or not s then return nil end
    return ("%s.%03d"):format(s, ms - secs * 1000)
end

--- "2023-11-14T22:13:20.000Z", or nil.
function M.iso(ms)
    local s = M.utc(ms, "T")
    return s and (s .. "Z") or nil
end

--- "1 record", "3 records".
function M.plural(n, word)
    return ("%d %s%s"):format(n, word, n == 1 and "" or "s")
end

--- The offsets first .. end-1 as the CLI prints every range: "[first, end)".
function M.range(first, stop) return ("[%d, %d)"):format(first, stop) end

-------------------------------------------------------------------------
-- Tables and fields
-------------------------------------------------------------------------

--- Print rows (arrays of strings) under headers, columns padded; columns
-- listed in `right` are right-aligned.
function M.print_table(c, headers, rows, right)
    right = right or {}
    local w = {}
    for i, h in ipairs(headers) do w[i] = #h end
    for _, r in ipairs(rows) do
        for i = 1, #headers do w[i] = math.max(w[i], #tostring(r[i] or "")) end
    end
    local function line(r)
        local cells = {}
        for i = 1, #headers do
            local v = tostring(r[i] or "")
            local pad = (" "):rep(w[i] - #v)
            cells[i] = right[i] and (pad .. v) or (i < #headers and (v .. pad) or v)
        end
        c.out:write((table.concat(cells, "  "):gsub("%s+$", "")), "\n")
    end
    line(headers)
    for _, r in ipairs(rows) do line(r) end
end

--- Print { name, value } pairs, names padded; pairs whose value is nil are
-- left out.
function M.print_fields(c, fields)
    local w = 0
    for _, f in ipairs(fields) do w = math.max(w, #f[1]) end
    for _, f in ipairs(fields) do
        if f[2] ~= nil then
            c.out:write(f[1], (" "):rep(w - #f[1] + 2), tostring(f[2]), "\n")
        end
    end
end

-------------------------------------------------------------------------
-- Progress bar (stderr, only when it is a terminal or --progress)
-------------------------------------------------------------------------

--- The default env.isatty: is stderr a terminal?
function M.stderr_isatty()
    local r = os.execute("test -t 2")
    return r == true or r == 0
end

-- How the bar shows the amounts done and in all, by unit.
local AMOUNTS = {
    bytes = function(done, total)
        return ("%s / %s"):format(M.human_size(done), M.human_size(total))
    end,
    records = function(done, total)
        return ("%d / %s"):format(done, M.plural(total, "record"))
    end,
}

-- A progress(done, total) callback and a finish() that ends the line.
-- `done` may overshoot `total`; the bar is clamped to 100%.
local function progress_bar(stderr, label, amounts)
    local last, drawn = -1, false
    local function update(done, total)
        if total <= 0 then return end
        if done > total then done = total end
        local pct = math.floor(done * 100 / total)
        if pct == last then return end
        last, drawn = pct, true
        local width = 30
        local fill = math.floor(done * width / total)
        stderr:write(("\r%s [%s%s] %3d%%  %s\27[K"):format(label, ("#"):rep(fill),
            ("."):rep(width - fill), pct, amounts(done, total)))
        stderr:flush()
    end
    local function finish()
        if drawn then stderr:write("\n"); drawn = false end
    end
    return update, finish
end

--- The progress callback and its finish() for a command, or nil when no
-- bar is wanted (o.progress, else: is stderr a terminal).  unit: "bytes"
-- (default) or "records".
function M.progress_for(c, o, label, unit)
    local want = o.progress
    if want == nil then
        if c.tty == nil then c.tty = c.isatty() and true or false end
        want = c.tty
    end
    if not want then return nil end
    local update, finish = progress_bar(c.err, label, AMOUNTS[unit or "bytes"])
    c.defer[#c.defer + 1] = finish
    return update, finish
end

return M
