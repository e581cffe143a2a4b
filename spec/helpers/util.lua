-- Every spec helper in one table, as the specs have always required it:
--
--     local util = require("helpers.util")
--     local dir = util.tmpdir()
--     ...
--     util.rmtree(dir)
--
-- The helpers live by purpose; each can also be required on its own (a
-- child process needs only helpers.proc):
--
--   helpers.compat      Lua 5.4 / LuaJIT stand-ins (idiv, math_type, pack)
--   helpers.sh          quoting, running commands, bounded polling
--   helpers.fs          temporary directories, files, byte-level damage,
--                       log directory names
--   helpers.proc        Lua children: run, spawn, watch, stop, report
--
-- Not here, because they load more than plain Lua: helpers.log (opening
-- logs with options, records derived from their offset; loads takhin) and
-- helpers.assertions (assert.fails_with; loads luassert).

local M = {}

for _, name in ipairs({ "compat", "sh", "fs", "proc" }) do
    for k, v in pairs(require("helpers." .. name)) do
        assert(M[k] == nil, "helpers.util: " .. k .. " is defined twice")
        M[k] = v
    end
end

return M
