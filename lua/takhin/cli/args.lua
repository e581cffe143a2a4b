--- takhin.cli.args: the command line of one `takhin` command -- parsing
-- argv against the command's definition, and the usage text made from it.
--
-- A command definition (see takhin.cli.log for examples):
--
--     { name = "dump",                      -- "snapshot create" for a group's
--       args = { "DIR" },                   -- positional arguments, required
--       kinds = { OFFSET = "count" },       -- optional: positionals parsed as KINDS
--       rest = "VALUE...",                  -- optional: more positionals allowed
--       summary = "one line for takhin --help",
--       help = "paragraph for takhin dump --help",
--       options = { { "--from", "N", "count", "first offset to print" }, ... },
--       run = function(c, o, args, rest) ... end }
--
-- An option is { name, METAVAR or nil (a flag), kind (KINDS below), text }.
-- Its value is o[key]: "--max-snapshots 3" gives o.max_snapshots = 3, a
-- flag "--copy" o.copy = true and "--no-progress" o.progress = false.  A
-- description may hold "\n": its lines are aligned under each other.
local common = require("takhin.cli.common")

local M = {}

local usage_error = common.usage_error

-------------------------------------------------------------------------
-- Kinds of value
-------------------------------------------------------------------------

-- An integer, or nil (also when it does not fit: no rounding).
local function to_integer(s)
    if not s:match("^%-?%d+$") then return nil end
    local n = tonumber(s)
    if math.tointeger then return math.tointeger(n) end
    if n and math.abs(n) < 2 ^ 53 then return n end
    return nil
end

--- Each kind parses an option's text: the value (or nil), and what the
-- text should have been, for the usage error.
M.KINDS = {
    count = function(s)                       -- an integer >= 0
        local n = to_integer(s)
        return n and n >= 0 and n or nil, "a whole number >= 0"
    end,
    positive = function(s)                    -- an integer >= 1
        local n = to_integer(s)
        return n and n >= 1 and n or nil, "a whole number >= 1"
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

-------------------------------------------------------------------------
-- Options
-------------------------------------------------------------------------

--- The options every command takes.
M.COMMON_OPTIONS = {
    { "--json", nil, nil, "print JSON on stdout instead of a table" },
    { "-h, --help", nil, nil, "show this help" },
}

local function find_option(def, name)
    for _, spec in ipairs(def.options or {}) do
        if spec[1] == name then return spec end
    end
    if name == "--json" then return M.COMMON_OPTIONS[1] end
    return nil
end

--- The key of an option's value and the value a flag sets:
-- "--max-snapshots" -> "max_snapshots", true; "--no-progress" ->
-- "progress", false.
function M.option_key(name)
    local neg = name:match("^%-%-no%-(.+)$")
    if neg then return (neg:gsub("%-", "_")), false end
    return (name:sub(3):gsub("%-", "_")), true
end

-------------------------------------------------------------------------
-- Parsing
-------------------------------------------------------------------------

-- Take the option argv[i] (with its value); returns the next index.
local function take_option(def, argv, i, o)
    local a = argv[i]
    local name, inline = a:match("^(%-%-[^=]+)=(.*)$")
    name = name or a
    local spec = find_option(def, name)
    if not spec then usage_error("unknown option " .. name) end
    local key, flag = M.option_key(name)
    if not spec[2] then
        if inline ~= nil then usage_error("option " .. name .. " takes no value") end
        o[key] = flag
        return i + 1
    end
    local v = inline
    if v == nil then
        i = i + 1
        v = argv[i]
        if v == nil then usage_error(("option %s needs a value (%s)"):format(name, spec[2])) end
    end
    local parsed, what = M.KINDS[spec[3] or "string"](v)
    if parsed == nil then usage_error(("option %s: %q is not %s"):format(name, v, what)) end
    o[key] = parsed
    return i + 1
end

--- Parse argv[first..] against a command definition: options anywhere,
-- `--` ends them.  Returns the options, the positional values by name and
-- the extra positionals (def.rest).  With -h/--help: { help = true }.
function M.parse(def, argv, first)
    local o, pos, only_pos = {}, {}, false
    local i = first
    while i <= #argv do
        local a = argv[i]
        if only_pos or a == "-" or a:sub(1, 1) ~= "-" then
            pos[#pos + 1] = a
            i = i + 1
        elseif a == "--" then
            only_pos, i = true, i + 1
        elseif a == "-h" or a == "--help" then
            o.help, i = true, i + 1
        else
            i = take_option(def, argv, i, o)
        end
    end
    if o.help then return o, {}, {} end
    local args, names = {}, def.args or {}
    for k, name in ipairs(names) do
        if pos[k] == nil then usage_error("missing argument " .. name) end
        args[name] = pos[k]
        local kind = def.kinds and def.kinds[name]
        if kind then
            local parsed, what = M.KINDS[kind](pos[k])
            if parsed == nil then usage_error(("argument %s: %q is not %s"):format(name, pos[k], what)) end
            args[name] = parsed
        end
    end
    local extra = {}
    for k = #names + 1, #pos do extra[#extra + 1] = pos[k] end
    if #extra > 0 and not def.rest then
        usage_error("unexpected argument " .. ("%q"):format(extra[1]))
    end
    return o, args, extra
end

--- A usage error when more than one of the options named (as on the
-- command line: "--from", "--cursor") was given.
function M.exclusive(o, ...)
    local given = {}
    for _, name in ipairs({ ... }) do
        if o[(M.option_key(name))] ~= nil then given[#given + 1] = name end
    end
    if #given > 1 then
        usage_error(("options %s and %s cannot be used together"):format(given[1], given[2]))
    end
end

-------------------------------------------------------------------------
-- Usage text
-------------------------------------------------------------------------

--- Two columns, "  left  text", the left one padded; a text's further
-- lines ("\n") are aligned under its first.
function M.columns(rows)
    local w = 0
    for _, r in ipairs(rows) do w = math.max(w, #r[1]) end
    local out = {}
    for _, r in ipairs(rows) do
        local text = r[2]:gsub("\n", "\n" .. (" "):rep(w + 4))
        out[#out + 1] = ("  %s%s  %s"):format(r[1], (" "):rep(w - #r[1]), text)
    end
    return table.concat(out, "\n")
end

--- The lines of an option list.
function M.option_lines(opts)
    local rows = {}
    for _, spec in ipairs(opts) do
        rows[#rows + 1] = { spec[1] .. (spec[2] and (" " .. spec[2]) or ""), spec[4] }
    end
    return M.columns(rows)
end

--- "info DIR", "append DIR [VALUE...]": a command's name and arguments.
function M.signature(def)
    local parts = { def.name }
    for _, a in ipairs(def.args or {}) do parts[#parts + 1] = a end
    if def.rest then parts[#parts + 1] = "[" .. def.rest .. "]" end
    return table.concat(parts, " ")
end

local function synopsis(def)
    local opts = def.options and #def.options > 0 and " [OPTIONS]" or ""
    local parts = { def.name .. opts }
    for _, a in ipairs(def.args or {}) do parts[#parts + 1] = a end
    if def.rest then parts[#parts + 1] = "[" .. def.rest .. "]" end
    return "takhin " .. table.concat(parts, " ")
end

--- `takhin COMMAND --help`.
function M.command_help(def)
    local opts = {}
    for _, spec in ipairs(def.options or {}) do opts[#opts + 1] = spec end
    for _, spec in ipairs(M.COMMON_OPTIONS) do opts[#opts + 1] = spec end
    return ("usage: %s\n\n%s\n\nOptions:\n%s\n"):format(synopsis(def), def.help, M.option_lines(opts))
end

return M
