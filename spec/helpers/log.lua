-- Logs in specs: opening one with options (a failure to open is an error
-- naming the directory, the message and the code, not a nil to trip over
-- later).
--
--     local logs = require("helpers.log")
--     local log = logs.open({ dir = dir }, OPTS, { readonly = true })
--     local open = logs.opener(OPTS)      -- open(dir, extra)
--
-- Loads takhin (so not part of helpers.util).

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

return M
