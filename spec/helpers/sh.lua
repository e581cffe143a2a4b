-- The shell, for the specs and their children: quoting, running a command
-- for its status or its output, and bounded polling.
--
--     local sh = require("helpers.sh")
--     local out = sh.capture("ls -A " .. sh.q(dir))
--
-- Waiting is always bounded polling on a condition; nothing asserts on
-- elapsed time.

local compat = require("helpers.compat")

local M = {}

-- Quote s for /bin/sh.
function M.q(s)
    return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- os.execute as Lua 5.4 has it: true or nil, "exit" or "signal", and the
-- code (Lua 5.1 and LuaJIT return the status that system() gave).
function M.execute(cmd)
    local a, how, code = os.execute(cmd)
    if type(a) ~= "number" then return a, how, code end
    if a == 0 then return true, "exit", 0 end
    if a % 256 == 0 then return nil, "exit", compat.idiv(a, 256) end
    return nil, "signal", a % 128
end

-- Run a shell command; true when it exits 0.
function M.sh(cmd)
    local ok = M.execute(cmd)
    return ok == true
end

-- Run a shell command and return its standard output.
function M.capture(cmd)
    local p = assert(io.popen(cmd, "r"))
    local out = p:read("a")
    p:close()
    return out
end

-- Sleep a little (used only between polls, never to make something happen).
function M.nap(seconds)
    os.execute("sleep " .. (seconds or 0.01))
end

-- Call pred until it returns a true value or `tries` polls have passed;
-- returns pred's last result.  Callers assert on the condition, not on
-- time.
function M.wait_until(pred, tries, pause)
    tries = tries or 1000
    for _ = 1, tries do
        local v = pred()
        if v then return v end
        M.nap(pause or 0.01)
    end
    return pred()
end

return M
