-- Logs in specs: opening one with options (a failure to open is an error
-- naming the directory, the message and the code, not a nil to trip over
-- later), and records derived from their offset, which a parent and its
-- children agree on without passing them around.
--
--     local logs = require("helpers.log")
--     local log = logs.open({ dir = dir }, OPTS, { readonly = true })
--     local open = logs.opener(OPTS)      -- open(dir, extra)
--
-- Loads takhin (so not part of helpers.util); children may require it.

local takhin = require("takhin")

local M = {}

-- A new options table with the keys of each table given (nil ones are
-- skipped), later tables winning.
function M.options(...)
    local opts = {}
    for i = 1, select("#", ...) do
        for k, v in pairs(select(i, ...) or {}) do opts[k] = v end
    end
    return opts
end

-- takhin.open_log(M.options(...)); raises when it fails.
function M.open(...)
    local opts = M.options(...)
    local log, msg, code = takhin.open_log(opts)
    if not log then
        error(("open_log %s: %s %s"):format(tostring(opts.dir), tostring(msg), tostring(code)), 2)
    end
    return log
end

-- A function open(dir, extra) that opens dir with defaults, then extra.
function M.opener(defaults)
    return function(dir, extra)
        return M.open({ dir = dir }, defaults, extra)
    end
end

-- For a child process: takhin.open_log(opts), or a line on stderr and
-- exit status 3 when it fails.
function M.open_or_exit(opts)
    local log, msg, code = takhin.open_log(opts)
    if not log then
        io.stderr:write("open_log: ", tostring(msg), " ", tostring(code), "\n")
        os.exit(3)
    end
    return log
end

-- What the record at offset o holds, as functions of o: no key at every
-- fifth offset, values of up to `spread` - 1 bytes after the offset,
-- timestamps growing with the offset.  Returns key_for, value_for, ts_for.
function M.derived_records(spread)
    local function key_for(o)
        if o % 5 == 0 then return nil end
        return "key-" .. o
    end
    local function value_for(o)
        return ("%d:"):format(o) .. string.rep(string.char(65 + o % 26), (o * 7919) % spread)
    end
    local function ts_for(o) return 1600000000000 + o * 3 end
    return key_for, value_for, ts_for
end

return M
