--- takhin.cli: the `takhin` command-line tool (bin/takhin is a thin wrapper).
--
--     local status = require("takhin.cli").main(arg)   -- 0, 1 or 2
--
-- Every command prints a human-readable report by default and JSON with
-- `--json`.  Exit status: 0 success, 1 the operation failed (the message,
-- naming the path or id and the error code, goes to stderr), 2 usage error.
--
-- JSON and big numbers: offsets, timestamps and sizes are written by this
-- module with "%d", so every integer is exact (lua-cjson would print
-- anything above 14 digits in exponent form).  Readers that decode numbers
-- as doubles should keep that in mind for values above 2^53; snapshot ids
-- are strings.
--
-- main(argv, env) takes an optional env = { stdout =, stderr =, stdin =,
-- isatty = function() }, so the module can be driven without a process.
-- Runs on Lua 5.4 and LuaJIT (no `//`, no math.type, no <close>).
local M = {}

local unpack = unpack or table.unpack       -- luacheck: ignore

-------------------------------------------------------------------------
-- Failures
-------------------------------------------------------------------------

-- Both are raised as tables and caught in main: a usage error exits 2, a
-- failed operation 1.
local function usage_error(msg)
    error({ usage = true, msg = msg }, 0)
end

local function fail(msg, code)
    error({ fail = true, msg = msg, code = code }, 0)
end

-- Turn the library's `nil, msg, code` into a failure.
local function check(v, msg, code, ...)
    if v == nil then fail(msg, code) end
    return v, msg, code, ...
end

-------------------------------------------------------------------------
-- JSON (numbers exact; strings escaped; object keys sorted)
-------------------------------------------------------------------------

local ARRAY = {}    -- metatable that marks a table as a JSON array (even empty)

local function array(t) return setmetatable(t or {}, ARRAY) end

local NULL = setmetatable({}, { __tostring = function() return "null" end })   -- JSON null

-- An object whose keys come out in the order given (others sorted, after).
local function ordered(t, keys)
    return setmetatable(t, { order = keys })
end

local function valid_utf8(s)
    if not s:find("[\128-\255]") then return true end
    if utf8 and utf8.len then return utf8.len(s) ~= nil end
    return false                             -- no utf8 library: treat as bytes
end

local JSON_ESC = {
    ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
    ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
}

local function json_string(s)
    local pat = valid_utf8(s) and '[%z\1-\31"\\\127]' or '[%z\1-\31"\\\127-\255]'
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
    if v == NULL then out[#out + 1] = "null"
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

M.json_array = array
M.json_null = NULL

-------------------------------------------------------------------------
-- Text formatting
-------------------------------------------------------------------------

local HEX_ESC = { ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

local function hex(c) return HEX_ESC[c] or ("\\x%02x"):format(c:byte()) end

--- Bytes made printable: control bytes, DEL and backslash are escaped
-- (\n, \t, \xHH, \\); so is every byte >= 0x80 unless s is valid UTF-8.
function M.escape(s)
    if not valid_utf8(s) then return (s:gsub("[%z\1-\31\127-\255\\]", hex)) end
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

local function human_size(n)
    local units = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" }
    local v, u = n, 1
    while v >= 1024 and u < #units do v, u = v / 1024, u + 1 end
    if u == 1 then return ("%d B"):format(n) end
    return ("%.1f %s"):format(v, units[u])
end

-- "2023-11-14 22:13:20.000" (UTC) for ms since the epoch, or nil.
local function utc(ms, sep)
    if type(ms) ~= "number" then return nil end
    local secs = math.floor(ms / 1000)
    local ok, s = pcall(os.date, "!%Y-%m-%d" .. (sep or " ") .. "%H:%M:%S", secs)
    if not ok or not s then return nil end
    return ("%s.%03d"):format(s, ms - secs * 1000)
end

local function iso(ms)
    local s = utc(ms, "T")
    return s and (s .. "Z") or nil
end

local function plural(n, word)
    return ("%d %s%s"):format(n, word, n == 1 and "" or "s")
end

-- Print rows (arrays of strings) under headers, columns padded; columns
-- listed in `right` are right-aligned.
local function print_table(c, headers, rows, right)
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

-- Print "name  value" pairs, names padded.
local function print_fields(c, fields)
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

local function default_isatty()
    local r = os.execute("test -t 2")
    return r == true or r == 0
end

-- A progress(done, total) callback and a finish() that ends the line.
-- `done` may overshoot `total`; the bar is clamped to 100%.
local function progress_bar(stderr, label)
    local last, drawn = -1, false
    local function update(done, total)
        if total <= 0 then return end
        if done > total then done = total end
        local pct = math.floor(done * 100 / total)
        if pct == last then return end
        last, drawn = pct, true
        local width = 30
        local fill = math.floor(done * width / total)
        stderr:write(("\r%s [%s%s] %3d%%  %s / %s\27[K"):format(label, ("#"):rep(fill),
            ("."):rep(width - fill), pct, human_size(done), human_size(total)))
        stderr:flush()
    end
    local function finish()
        if drawn then stderr:write("\n"); drawn = false end
    end
    return update, finish
end

-- The progress callback for a command, or nil when no bar is wanted.
local function progress_for(c, o, label)
    local want = o.progress
    if want == nil then
        if c.tty == nil then c.tty = c.isatty() and true or false end
        want = c.tty
    end
    if not want then return nil end
    local update, finish = progress_bar(c.err, label)
    c.defer[#c.defer + 1] = finish
    return update, finish
end

-------------------------------------------------------------------------
-- Argument parsing
-------------------------------------------------------------------------

-- Number parsers return the value or nil.
local function to_integer(s)
    if not s:match("^%-?%d+$") then return nil end
    local n = tonumber(s)
    if math.tointeger then return math.tointeger(n) end
    if n and math.abs(n) < 2 ^ 53 then return n end
    return nil
end

local KINDS = {
    count = function(s)                       -- an integer >= 0
        local n = to_integer(s)
        return n and n >= 0 and n or nil, "a whole number >= 0"
    end,
    int = function(s)                         -- any integer (timestamps)
        return to_integer(s), "an integer"
    end,
    duration = function(s)
        local ms = require("takhin.duration").parse(s)
        return ms and s or nil, "a duration such as 90s, 30m, 6h, 7d or 1h30m"
    end,
    string = function(s) return s end,
}

local COMMON_OPTIONS = {
    { "--json", nil, nil, "print JSON on stdout instead of a table" },
    { "-h, --help", nil, nil, "show this help" },
}

local function find_option(def, name)
    for _, spec in ipairs(def.options or {}) do
        if spec[1] == name then return spec end
    end
    if name == "--json" then return COMMON_OPTIONS[1] end
    return nil
end

-- o[key] for "--max-snapshots" is o.max_snapshots; "--no-progress" sets
-- o.progress = false.
local function option_key(name)
    local neg = name:match("^%-%-no%-(.+)$")
    if neg then return neg:gsub("%-", "_"), false end
    return name:sub(3):gsub("%-", "_"), true
end

-- Parse argv[first..] against a command definition: options anywhere,
-- `--` ends them.  Returns options, positional values by name, extras.
local function parse_args(def, argv, first)
    local o, pos, only_pos = {}, {}, false
    local i = first
    while i <= #argv do
        local a = argv[i]
        if only_pos or a == "-" or a:sub(1, 1) ~= "-" then
            pos[#pos + 1] = a
        elseif a == "--" then
            only_pos = true
        elseif a == "-h" or a == "--help" then
            o.help = true
        else
            local name, inline = a:match("^(%-%-[^=]+)=(.*)$")
            name = name or a
            local spec = find_option(def, name)
            if not spec then usage_error("unknown option " .. name) end
            local key, flag = option_key(name)
            if spec[2] then
                local v = inline
                if v == nil then
                    i = i + 1
                    v = argv[i]
                    if v == nil then usage_error(("option %s needs a value (%s)"):format(name, spec[2])) end
                end
                local parsed, what = KINDS[spec[3] or "string"](v)
                if parsed == nil then
                    usage_error(("option %s: %q is not %s"):format(name, v, what))
                end
                o[key] = parsed
            else
                if inline ~= nil then usage_error("option " .. name .. " takes no value") end
                o[key] = flag
            end
        end
        i = i + 1
    end
    if o.help then return o, {}, {} end
    local args, names = {}, def.args or {}
    for k, name in ipairs(names) do
        if pos[k] == nil then usage_error("missing argument " .. name) end
        args[name] = pos[k]
    end
    local extra = {}
    for k = #names + 1, #pos do extra[#extra + 1] = pos[k] end
    if #extra > 0 and not def.rest then
        usage_error("unexpected argument " .. ("%q"):format(extra[1]))
    end
    return o, args, extra
end

-------------------------------------------------------------------------
-- Shared pieces of the commands
-------------------------------------------------------------------------

local function lib()
    local ok, t = pcall(require, "takhin")
    if not ok then fail("cannot load the takhin module: " .. tostring(t), "IO") end
    return t
end

local function open_log(c, dir, readonly)
    local log = check(lib().open_log{ dir = dir, readonly = readonly })
    c.defer[#c.defer + 1] = function() log:close() end
    return log
end

local function open_manager(c, dir, o)
    local sm = check(lib().snapshot_manager(dir, { dir = o.snapshot_dir, mode = o.copy and "copy" or nil }))
    c.defer[#c.defer + 1] = function() sm:close() end
    return sm
end

local function emit_json(c, v)
    c.out:write(M.json(v), "\n")
end

local SNAPSHOT_ORDER = { "id", "timestamp", "label", "base_offset", "high_water_mark",
    "num_segments", "segment_offsets", "total_size", "mode", "path" }

-- A snapshot as the JSON commands print it.
local function snapshot_json(s)
    local offsets = array()
    for i, v in ipairs(s.segment_offsets or {}) do offsets[i] = v end
    return ordered({
        id = s.id, timestamp = s.timestamp, base_offset = s.base_offset,
        high_water_mark = s.high_water_mark, num_segments = s.num_segments,
        segment_offsets = offsets, total_size = s.total_size, mode = s.mode,
        label = s.label or NULL, path = s.path,
    }, SNAPSHOT_ORDER)
end

local function range(a, b) return ("[%d, %d)"):format(a, b) end

local function print_snapshot(c, s)
    local offs = {}
    for i, v in ipairs(s.segment_offsets or {}) do offs[i] = ("%d"):format(v) end
    print_fields(c, {
        { "id", s.id },
        { "created", (utc(s.timestamp) or "?") .. (" UTC (%d)"):format(s.timestamp) },
        { "label", s.label and M.escape(s.label) },
        { "offsets", range(s.base_offset, s.high_water_mark) ..
            "  " .. plural(s.high_water_mark - s.base_offset, "record") },
        { "segments", ("%d (base offsets %s)"):format(s.num_segments, table.concat(offs, ", ")) },
        { "size", ("%s (%d bytes)"):format(human_size(s.total_size), s.total_size) },
        { "mode", s.mode },
        { "path", s.path },
    })
end

-- A reason from a keep-rule plan, as text.
local function reason_text(r)
    if type(r) ~= "table" then return tostring(r) end
    if r.rule then return tostring(r.rule) .. (r.bucket and (" " .. tostring(r.bucket)) or "") end
    local parts = {}
    for k, v in pairs(r) do parts[#parts + 1] = tostring(k) .. "=" .. tostring(v) end
    table.sort(parts)
    return table.concat(parts, " ")
end

-------------------------------------------------------------------------
-- Commands
-------------------------------------------------------------------------

local COMMANDS, ORDER = {}, {}

local function command(def)
    COMMANDS[def.name] = def
    ORDER[#ORDER + 1] = def.name
end

local SNAPSHOT_DIR = { "--snapshot-dir", "PATH", "string",
    "where the snapshots live (default: DIR/.snapshots)" }

command{
    name = "info", args = { "DIR" },
    summary = "segments, base offset, high water mark, size",
    help = "Describe the log in DIR: its segments, base offset, high water mark,\n" ..
        "record count, size and the timestamps of its first and last records.\n" ..
        "The log is opened read-only: a running writer is not disturbed.",
    run = function(c, _, a)
        local log = open_log(c, a.DIR, true)
        local base, hwm = log:base_offset(), log:high_water_mark()
        local first = hwm > base and log:read(base) or nil
        local last = hwm > base and log:read(hwm - 1) or nil
        local segs = log:segments()
        local info = ordered({
            dir = a.DIR, base_offset = base, high_water_mark = hwm, records = hwm - base,
            num_segments = #segs, size = log:size(), segments = array(),
            first_timestamp = first and first.timestamp or NULL,
            last_timestamp = last and last.timestamp or NULL,
        }, { "dir", "base_offset", "high_water_mark", "records", "num_segments", "size",
            "first_timestamp", "last_timestamp", "segments" })
        for i, s in ipairs(segs) do
            info.segments[i] = ordered({ base_offset = s.base_offset, next_offset = s.next_offset,
                records = s.next_offset - s.base_offset, size = s.size, active = s.active },
                { "base_offset", "next_offset", "records", "size", "active" })
        end
        if c.json then return emit_json(c, info) end
        local function ts(ms) return ms ~= NULL and ("%s (%d)"):format(iso(ms) or "?", ms) or nil end
        print_fields(c, {
            { "log", a.DIR },
            { "segments", info.num_segments },
            { "base offset", ("%d"):format(base) },
            { "high water mark", ("%d"):format(hwm) },
            { "records", ("%d"):format(info.records) },
            { "size", ("%s (%d bytes)"):format(human_size(info.size), info.size) },
            { "first timestamp", ts(info.first_timestamp) },
            { "last timestamp", ts(info.last_timestamp) },
        })
        c.out:write("\n")
        local rows = {}
        for i, s in ipairs(info.segments) do
            rows[i] = { ("%d"):format(s.base_offset), ("%d"):format(s.next_offset),
                ("%d"):format(s.records), ("%d"):format(s.size), s.active and "active" or "" }
        end
        print_table(c, { "BASE OFFSET", "NEXT OFFSET", "RECORDS", "BYTES", "" }, rows,
            { true, true, true, true })
    end,
}

local DUMP_ORDER = { "offset", "timestamp", "key", "value", "key_encoding", "value_encoding" }

command{
    name = "dump", args = { "DIR" },
    summary = "print records: offset, timestamp, key, value",
    options = {
        { "--from", "N", "count", "first offset to print (default: the base offset)" },
        { "--count", "N", "count", "print at most N records (default: all)" },
    },
    help = "Print the records of the log in DIR, one line each, as Kafka's dump-log\n" ..
        "tool does:\n\n" ..
        "  offset: 7 timestamp: 1700000000000 keySize: 3 valueSize: 5 key: k-7 value: hello\n\n" ..
        "keySize is -1 when the record has no key (key: null).  Control bytes,\n" ..
        "DEL and backslashes are escaped (\\n, \\t, \\x00, \\\\), and so is every byte\n" ..
        ">= 0x80 when the text is not valid UTF-8.  With --json: an array of\n" ..
        "{offset, timestamp, key, value}; a key or value that is not valid UTF-8\n" ..
        "is base64 with key_encoding/value_encoding = \"base64\".  A damaged record\n" ..
        "is reported on stderr, the others are printed, and the exit status is 1.",
    run = function(c, o, a)
        local log = open_log(c, a.DIR, true)
        local base, hwm = log:base_offset(), log:high_water_mark()
        local from = o.from or base
        if from < base or from > hwm then
            fail(("%s: --from %d is outside [%d, %d]"):format(a.DIR, from, base, hwm), "OUT_OF_RANGE")
        end
        local to = o.count and math.min(hwm, from + o.count) or hwm
        local bad, n = 0, 0
        if c.json then c.out:write("[") end
        for off = from, to - 1 do
            local r, msg, code = log:read(off)
            if not r then
                bad = bad + 1
                c.err:write(("takhin dump: %s (%s)\n"):format(msg, code))
            elseif c.json then
                local j = ordered({ offset = r.offset, timestamp = r.timestamp }, DUMP_ORDER)
                for _, f in ipairs({ "key", "value" }) do
                    local v = r[f]
                    if v == nil then j[f] = NULL
                    elseif valid_utf8(v) then j[f] = v
                    else j[f], j[f .. "_encoding"] = M.base64(v), "base64" end
                end
                c.out:write(n > 0 and ",\n  " or "\n  ", M.json(j, true))
                n = n + 1
            else
                c.out:write(("offset: %d timestamp: %d keySize: %d valueSize: %d key: %s value: %s\n"):format(
                    r.offset, r.timestamp, r.key and #r.key or -1, #r.value,
                    r.key and M.escape(r.key) or "null", M.escape(r.value)))
            end
        end
        if c.json then c.out:write(n > 0 and "\n]\n" or "]\n") end
        if bad > 0 then
            fail(("%s: %s could not be read"):format(a.DIR, plural(bad, "record")), "CORRUPT")
        end
    end,
}

local function append_records(log, recs)
    if #recs == 0 then return nil end
    local first, last = check(log:append_batch(recs))
    return first, last
end

command{
    name = "append", args = { "DIR" }, rest = "VALUE...",
    summary = "append values (arguments, else lines of stdin)",
    options = {
        { "--key", "K", "string", "the key of every record (default: no key)" },
        { "--timestamp", "MS", "int", "timestamp in ms since the epoch (default: now)" },
        { "--sync", nil, nil, "fsync before returning (survives power loss)" },
    },
    help = "Append one record per VALUE to the log in DIR (created if missing).\n" ..
        "Without VALUEs, every line of stdin (without its newline) is a record.\n" ..
        "Use -- before values that start with a dash.  Prints the offsets given.",
    run = function(c, o, a, values)
        local log = open_log(c, a.DIR, false)
        local first, last, count = nil, nil, 0
        local function flush(recs)
            local f, l = append_records(log, recs)
            if f then
                first = first or f
                last = l
                count = count + #recs
            end
        end
        local function rec(v) return { key = o.key, value = v, timestamp = o.timestamp } end
        if #values > 0 then
            local recs = {}
            for i, v in ipairs(values) do recs[i] = rec(v) end
            flush(recs)
        else
            local recs = {}
            for line in c.stdin:lines() do
                recs[#recs + 1] = rec(line)
                if #recs == 1000 then flush(recs); recs = {} end
            end
            flush(recs)
        end
        if o.sync then check(log:sync()) end
        if c.json then
            return emit_json(c, ordered({ dir = a.DIR, count = count, first = first or NULL,
                last = last or NULL }, { "dir", "count", "first", "last" }))
        end
        if count == 0 then
            c.out:write(("appended nothing to %s\n"):format(a.DIR))
        elseif count == 1 then
            c.out:write(("appended 1 record to %s at offset %d\n"):format(a.DIR, first))
        else
            c.out:write(("appended %d records to %s at offsets %d..%d\n"):format(count, a.DIR, first, last))
        end
    end,
}

command{
    name = "verify", args = { "DIR" },
    summary = "check every record's CRC; exit 1 if any is corrupt",
    options = {
        { "--progress", nil, nil, "show a progress bar (default: when stderr is a terminal)" },
        { "--no-progress", nil, nil, "never show a progress bar" },
    },
    help = "Read every record of the log in DIR and check its CRC32C.  The log is\n" ..
        "opened read-only, so nothing is modified (not even a torn tail).  Every\n" ..
        "damaged offset is listed, not just the first; the exit status is 1 if\n" ..
        "any record could not be read.",
    run = function(c, o, a)
        local log = open_log(c, a.DIR, true)
        local base, hwm = log:base_offset(), log:high_water_mark()
        local total = hwm - base
        local progress, finish = progress_for(c, o, "verify")
        local errors = array()
        for off = base, hwm - 1 do
            local r, msg, code = log:read(off)
            if not r then
                errors[#errors + 1] = ordered({ offset = off, code = code, message = msg },
                    { "offset", "code", "message" })
            end
            if progress then progress(off - base + 1, total) end
        end
        if finish then finish() end
        local segs = log:num_segments()
        if c.json then
            emit_json(c, ordered({ dir = a.DIR, ok = #errors == 0, records = total,
                num_segments = segs, base_offset = base, high_water_mark = hwm, errors = errors },
                { "dir", "ok", "records", "num_segments", "base_offset", "high_water_mark", "errors" }))
        else
            for _, e in ipairs(errors) do
                c.out:write(("offset %d: %s (%s)\n"):format(e.offset, e.message, e.code))
            end
            c.out:write(("%s: %s in %s checked, %s\n"):format(a.DIR, plural(total, "record"),
                plural(segs, "segment"), #errors == 0 and "all OK" or (#errors .. " bad")))
        end
        if #errors > 0 then
            local offs = {}
            for i = 1, math.min(#errors, 10) do offs[i] = ("%d"):format(errors[i].offset) end
            fail(("%s: %d of %s failed the check (offset%s %s%s)"):format(a.DIR,
                #errors, plural(total, "record"), #errors == 1 and "" or "s",
                table.concat(offs, ", "), #errors > 10 and ", ..." or ""), errors[1].code)
        end
    end,
}

-------------------------------------------------------------------------
-- Snapshot commands
-------------------------------------------------------------------------

local PROGRESS_OPTS = {
    { "--progress", nil, nil, "show a progress bar (default: when stderr is a terminal)" },
    { "--no-progress", nil, nil, "never show a progress bar" },
}

local function with(list, ...)
    local t = {}
    for _, v in ipairs(list) do t[#t + 1] = v end
    for _, v in ipairs({ ... }) do t[#t + 1] = v end
    t[#t + 1] = SNAPSHOT_DIR
    return t
end

command{
    name = "snapshot create", args = { "DIR" },
    summary = "take a point-in-time snapshot",
    options = with(PROGRESS_OPTS,
        { "--label", "L", "string", "a label kept with the snapshot" },
        { "--min-interval", "D", "duration", "fail with TOO_SOON if the newest snapshot is younger than D" },
        { "--copy", nil, nil, "copy every file (default: hard-link sealed segments)" }),
    help = "Snapshot the log in DIR: the records [base offset, high water mark) at\n" ..
        "this moment, even while a writer goes on appending.  The log is opened\n" ..
        "read-only, so this works next to a running writer.",
    run = function(c, o, a)
        local log = open_log(c, a.DIR, true)
        local sm = open_manager(c, a.DIR, o)
        local progress, finish = progress_for(c, o, "snapshot")
        local s = check(sm:create(log, { label = o.label, min_interval = o.min_interval,
            progress = progress }))
        if finish then finish() end
        if c.json then return emit_json(c, snapshot_json(s)) end
        c.out:write(("created snapshot %s of %s\n"):format(s.id, a.DIR))
        print_snapshot(c, s)
    end,
}

command{
    name = "snapshot list", args = { "DIR" },
    summary = "list snapshots, newest first",
    options = { SNAPSHOT_DIR },
    help = "List the snapshots of the log in DIR, newest first.",
    run = function(c, o, a)
        local sm = open_manager(c, a.DIR, o)
        local list = check(sm:list())
        if c.json then
            local out = array()
            for i, s in ipairs(list) do out[i] = snapshot_json(s) end
            return emit_json(c, out)
        end
        if #list == 0 then
            c.out:write(("no snapshots in %s\n"):format(sm:dir()))
            return
        end
        local rows = {}
        for i, s in ipairs(list) do
            rows[i] = { s.id, utc(s.timestamp) or "?", range(s.base_offset, s.high_water_mark),
                ("%d"):format(s.num_segments), human_size(s.total_size), s.mode or "",
                s.label and M.escape(s.label) or "" }
        end
        print_table(c, { "ID", "CREATED (UTC)", "OFFSETS", "SEGMENTS", "SIZE", "MODE", "LABEL" },
            rows, { [4] = true, [5] = true })
    end,
}

command{
    name = "snapshot show", args = { "DIR", "ID" },
    summary = "one snapshot's details",
    options = { SNAPSHOT_DIR },
    help = "Show snapshot ID of the log in DIR.",
    run = function(c, o, a)
        local sm = open_manager(c, a.DIR, o)
        local s = check(sm:get(a.ID))
        if c.json then return emit_json(c, snapshot_json(s)) end
        print_snapshot(c, s)
    end,
}

command{
    name = "snapshot restore", args = { "DIR", "ID", "TARGET" },
    summary = "restore a snapshot into TARGET",
    options = with(PROGRESS_OPTS,
        { "--replace", nil, nil, "restore over the log in TARGET in place (no writer may hold it)" },
        { "--upto-offset", "N", "count", "keep only the records before offset N" },
        { "--upto-timestamp", "MS", "int", "keep records up to the first one newer than MS" }),
    help = "Restore snapshot ID of the log in DIR into TARGET, which must be missing\n" ..
        "or empty unless --replace is given.  Every file is checked against the\n" ..
        "snapshot's checksums first; a crash leaves either the old TARGET or the\n" ..
        "restored one, never a mix.",
    run = function(c, o, a)
        local sm = open_manager(c, a.DIR, o)
        local progress, finish = progress_for(c, o, "restore")
        check(sm:restore(a.ID, a.TARGET, { replace = o.replace or nil, upto_offset = o.upto_offset,
            upto_timestamp = o.upto_timestamp, progress = progress }))
        if finish then finish() end
        local r = ordered({ id = a.ID, target = a.TARGET },
            { "id", "target", "base_offset", "high_water_mark" })
        local log = lib().open_log{ dir = a.TARGET, readonly = true }
        if log then
            r.base_offset, r.high_water_mark = log:base_offset(), log:high_water_mark()
            log:close()
        end
        if c.json then return emit_json(c, r) end
        c.out:write(("restored snapshot %s to %s%s\n"):format(a.ID, a.TARGET,
            r.high_water_mark and (": offsets " .. range(r.base_offset, r.high_water_mark)) or ""))
    end,
}

command{
    name = "snapshot delete", args = { "DIR", "ID" },
    summary = "delete a snapshot",
    options = { SNAPSHOT_DIR },
    help = "Delete snapshot ID of the log in DIR.",
    run = function(c, o, a)
        local sm = open_manager(c, a.DIR, o)
        check(sm:delete(a.ID))
        if c.json then return emit_json(c, { id = a.ID, deleted = true }) end
        c.out:write(("deleted snapshot %s\n"):format(a.ID))
    end,
}

local CLEANUP_RULES = {
    { "--max-snapshots", "N", "count", "keep the N newest snapshots ..." },
    { "--retention-time", "D", "duration", "... that are at most D older than the newest" },
    { "--keep-last", "N", "count", "keep the N newest snapshots" },
    { "--keep-hourly", "N", "count", "keep the newest snapshot of each of the last N hours" },
    { "--keep-daily", "N", "count", "... of each of the last N days" },
    { "--keep-weekly", "N", "count", "... of each of the last N weeks" },
    { "--keep-monthly", "N", "count", "... of each of the last N months" },
    { "--keep-yearly", "N", "count", "... of each of the last N years" },
    { "--keep-within", "D", "duration", "keep every snapshot at most D older than the newest" },
}

local function cleanup_options()
    local t = {}
    for _, r in ipairs(CLEANUP_RULES) do t[#t + 1] = r end
    t[#t + 1] = { "--dry-run", nil, nil, "show what would be deleted, delete nothing" }
    t[#t + 1] = SNAPSHOT_DIR
    return t
end

-- The rules table for sm:cleanup; nil for the library's defaults.
local function cleanup_rules(o)
    local rules, any = {}, false
    for _, r in ipairs(CLEANUP_RULES) do
        local key = option_key(r[1])
        if o[key] ~= nil then rules[key], any = o[key], true end
    end
    if not any then
        if not o.dry_run then return nil end
        local d = lib().default_snapshot_config()
        rules.max_snapshots, rules.retention_time = d.max_snapshots, d.retention_time
    end
    if o.dry_run then rules.dry_run = true end
    return rules
end

local PLAN_ORDER = { "id", "timestamp", "reasons" }

-- sm:cleanup(rules) -> number, plan.  A library without keep rules
-- (before takhin.policy) returns only the number and raises on the rules it
-- does not know: that raise becomes UNSUPPORTED, and nothing was deleted.
local function run_cleanup(sm, rules)
    local ok, n, plan, code = pcall(sm.cleanup, sm, rules)
    if not ok then
        local msg = tostring(n)
        local opt = msg:match("unknown option '([%w_]+)'")
        if opt then
            fail(("cleanup: this takhin does not support --%s yet (%s)"):format(opt:gsub("_", "-"), msg),
                "UNSUPPORTED")
        end
        fail(msg, "INVALID")
    end
    if n == nil then fail(plan, code) end
    return n, type(plan) == "table" and plan or nil
end

command{
    name = "snapshot cleanup", args = { "DIR" },
    summary = "delete snapshots that no keep rule keeps",
    options = cleanup_options(),
    help = "Delete old snapshots of the log in DIR.  A snapshot is kept when any\n" ..
        "rule keeps it, as with restic's `forget --keep-*`; --max-snapshots and\n" ..
        "--retention-time together are one rule (the seed's).  Only the rules\n" ..
        "given apply; with none, the defaults do (--max-snapshots 5\n" ..
        "--retention-time 24h).  Ages are measured from the newest snapshot,\n" ..
        "which is never deleted.  Buckets are UTC hours, days, ISO weeks, months\n" ..
        "and years.  Durations: 90s, 30m, 6h, 7d, 2w, 1h30m.",
    run = function(c, o, a)
        local sm = open_manager(c, a.DIR, o)
        local before = check(sm:list())
        local rules = cleanup_rules(o)
        local n, plan = run_cleanup(sm, rules)
        local keep, delete = array(), array()
        if plan then
            for _, k in ipairs(plan.keep or {}) do
                local s, reasons = k.snapshot or k, array()
                for i, r in ipairs(k.reasons or {}) do reasons[i] = reason_text(r) end
                keep[#keep + 1] = ordered({ id = s.id, timestamp = s.timestamp, reasons = reasons },
                    PLAN_ORDER)
            end
            for _, s in ipairs(plan.delete or {}) do
                delete[#delete + 1] = ordered({ id = s.id, timestamp = s.timestamp }, PLAN_ORDER)
            end
        else                                     -- one-value cleanup: compare the lists
            local still = {}
            for _, s in ipairs(check(sm:list())) do still[s.id] = true end
            for _, s in ipairs(before) do
                local e = ordered({ id = s.id, timestamp = s.timestamp }, PLAN_ORDER)
                if still[s.id] then e.reasons = array(); keep[#keep + 1] = e
                else delete[#delete + 1] = e end
            end
        end
        local dry = o.dry_run and true or false
        if c.json then
            return emit_json(c, ordered({ dir = a.DIR, dry_run = dry, deleted = dry and 0 or n,
                keep = keep, delete = delete }, { "dir", "dry_run", "deleted", "keep", "delete" }))
        end
        local rows = {}
        for _, k in ipairs(keep) do
            rows[#rows + 1] = { "keep", k.id, utc(k.timestamp) or "?", table.concat(k.reasons, ", ") }
        end
        for _, d in ipairs(delete) do
            rows[#rows + 1] = { dry and "would delete" or "delete", d.id, utc(d.timestamp) or "?", "" }
        end
        if #rows > 0 then
            print_table(c, { "ACTION", "ID", "CREATED (UTC)", "REASONS" }, rows)
        end
        if dry then
            c.out:write(("dry run: would delete %s, keep %d\n"):format(plural(#delete, "snapshot"), #keep))
        else
            c.out:write(("deleted %s, kept %d\n"):format(plural(n, "snapshot"), #keep))
        end
    end,
}

command{
    name = "snapshot verify", args = { "DIR", "ID" },
    summary = "recompute a snapshot's checksums",
    options = with(PROGRESS_OPTS),
    help = "Re-read every file of snapshot ID of the log in DIR and compare its size\n" ..
        "and CRC32C with the manifest.  Exit status 1 names the first file that\n" ..
        "differs.",
    run = function(c, o, a)
        local sm = open_manager(c, a.DIR, o)
        local s = check(sm:get(a.ID))
        local progress, finish = progress_for(c, o, "verify")
        local ok, msg, code = sm:verify(a.ID, { progress = progress })
        if finish then finish() end
        if c.json then
            emit_json(c, ordered({ id = a.ID, ok = ok and true or false, code = code, error = msg,
                num_segments = s.num_segments, total_size = s.total_size },
                { "id", "ok", "code", "error", "num_segments", "total_size" }))
        elseif ok then
            c.out:write(("snapshot %s: OK (%s, %s checked)\n"):format(a.ID,
                plural(s.num_segments, "segment"), human_size(s.total_size)))
        end
        check(ok, msg, code)
    end,
}

-------------------------------------------------------------------------
-- Help
-------------------------------------------------------------------------

local function option_lines(opts)
    local rows, w = {}, 0
    for _, spec in ipairs(opts) do
        local left = spec[1] .. (spec[2] and (" " .. spec[2]) or "")
        rows[#rows + 1] = { left, spec[4] }
        w = math.max(w, #left)
    end
    local out = {}
    for _, r in ipairs(rows) do out[#out + 1] = ("  %s%s  %s"):format(r[1], (" "):rep(w - #r[1]), r[2]) end
    return table.concat(out, "\n")
end

local function synopsis(def)
    local parts = { "takhin", def.name }
    if def.options and #def.options > 0 then parts[#parts + 1] = "[OPTIONS]" end
    for _, a in ipairs(def.args or {}) do parts[#parts + 1] = a end
    if def.rest then parts[#parts + 1] = "[" .. def.rest .. "]" end
    return table.concat(parts, " ")
end

local function command_help(def)
    local opts = {}
    for _, spec in ipairs(def.options or {}) do opts[#opts + 1] = spec end
    for _, spec in ipairs(COMMON_OPTIONS) do opts[#opts + 1] = spec end
    return ("usage: %s\n\n%s\n\nOptions:\n%s\n"):format(synopsis(def), def.help, option_lines(opts))
end

local function command_list(prefix)
    local rows, w = {}, 0
    for _, name in ipairs(ORDER) do
        local def = COMMANDS[name]
        local group = name:match("^(%S+) ")
        if group == prefix then
            local left = table.concat({ name, unpack(def.args or {}) }, " ") ..
                (def.rest and (" [" .. def.rest .. "]") or "")
            rows[#rows + 1] = { left, def.summary }
            w = math.max(w, #left)
        end
    end
    local out = {}
    for _, r in ipairs(rows) do out[#out + 1] = ("  %s%s  %s"):format(r[1], (" "):rep(w - #r[1]), r[2]) end
    return table.concat(out, "\n")
end

local function main_help()
    return "usage: takhin [--json] COMMAND [OPTIONS] ARGS...\n\n" ..
        "Inspect and manage takhin logs (Kafka-style segmented commit logs) and\n" ..
        "their snapshots.  DIR is a log directory.\n\n" ..
        "Log commands:\n" .. command_list(nil) .. "\n\n" ..
        "Snapshot commands:\n" .. command_list("snapshot") .. "\n\n" ..
        "Options:\n" .. option_lines({
            COMMON_OPTIONS[1], COMMON_OPTIONS[2],
            { "--version", nil, nil, "print the takhin version" },
        }) .. "\n\n" ..
        "Exit status: 0 success, 1 the operation failed (message on stderr),\n" ..
        "2 usage error.  'takhin COMMAND --help' shows a command's options.\n"
end

local function snapshot_help()
    return "usage: takhin snapshot SUBCOMMAND [OPTIONS] DIR ...\n\n" ..
        "Snapshots of the log in DIR, kept in DIR/.snapshots unless --snapshot-dir\n" ..
        "says otherwise.\n\n" ..
        "Subcommands:\n" .. command_list("snapshot") .. "\n\n" ..
        "'takhin snapshot SUBCOMMAND --help' shows a subcommand's options.\n"
end

-------------------------------------------------------------------------
-- main
-------------------------------------------------------------------------

-- Find the command named by argv; returns its definition (or a help
-- text) and the index of its first argument.
local function resolve(argv, i)
    local name = argv[i]
    if name == nil then usage_error("missing command") end
    if name == "snapshot" then
        local sub = argv[i + 1]
        if sub == nil then usage_error("missing snapshot subcommand") end
        if sub == "-h" or sub == "--help" or sub == "help" then return snapshot_help(), 0 end
        local def = COMMANDS["snapshot " .. sub]
        if not def then usage_error(("unknown snapshot subcommand %q"):format(sub)) end
        return def, i + 2
    end
    local def = COMMANDS[name]
    if not def or name:find(" ") then usage_error(("unknown command %q"):format(name)) end
    return def, i + 1
end

local function run(c, argv)
    local i = 1
    while argv[i] and argv[i]:sub(1, 1) == "-" do
        local a = argv[i]
        if a == "-h" or a == "--help" then c.out:write(main_help()); return 0 end
        if a == "--version" then c.out:write("takhin ", lib().version, "\n"); return 0 end
        if a == "--json" then c.json = true
        else usage_error("unknown option " .. a) end
        i = i + 1
    end
    if argv[i] == "help" then
        if argv[i + 1] == nil then c.out:write(main_help()); return 0 end
        local def = resolve(argv, i + 1)
        c.out:write(type(def) == "string" and def or command_help(def))
        return 0
    end
    local def, first = resolve(argv, i)
    if type(def) == "string" then c.out:write(def); return 0 end
    c.cmd = def.name
    local o, args, rest = parse_args(def, argv, first)
    if o.help then c.out:write(command_help(def)); return 0 end
    if o.json then c.json = true end
    def.run(c, o, args, rest)
    return 0
end

--- Run the tool with argv (arg[1..n]); returns the exit status.
function M.main(argv, env)
    env = env or {}
    local c = {
        out = env.stdout or io.stdout, err = env.stderr or io.stderr,
        stdin = env.stdin or io.stdin, isatty = env.isatty or default_isatty,
        defer = {}, cmd = nil,
    }
    local list = {}
    for k = 1, #(argv or {}) do list[k] = argv[k] end
    local ok, res = xpcall(run, function(e)
        if type(e) == "table" then return e end
        return { internal = true, msg = debug.traceback(tostring(e), 2) }
    end, c, list)
    for k = #c.defer, 1, -1 do pcall(c.defer[k]) end
    if ok then
        local flushed, err = c.out:flush()            -- a full disk, say
        if flushed ~= nil or err == nil then return res end
        ok, res = false, { fail = true, msg = "write to stdout: " .. tostring(err), code = "IO" }
    end
    local who = "takhin" .. (c.cmd and (" " .. c.cmd) or "")
    if res.usage then
        c.err:write(("%s: %s\n"):format(who, res.msg))
        c.err:write(("Try '%s --help'.\n"):format(who))
        return 2
    elseif res.fail then
        c.err:write(("%s: %s%s\n"):format(who, res.msg, res.code and (" (" .. res.code .. ")") or ""))
        return 1
    end
    c.err:write(("%s: internal error: %s\n"):format(who, res.msg))
    return 1
end

return M
