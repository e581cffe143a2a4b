-- Child processes for the specs, and what those children use themselves:
-- running a Lua script to its end or in the background, watching and
-- killing it, reporting from inside it, and running as another user.
--
--     local proc = require("helpers.proc")
--     local pid, out = proc.spawn_lua(tmp, CHILD, { dir, report })
--     ...
--     proc.stop(pid)                      -- in after_each
--
-- Children run os.getenv("TAKHIN_LUA") (default lua5.4) with LUA_PATH and
-- LUA_CPATH set explicitly, so they load the same takhin the spec does,
-- and these helpers: a child reports to its parent through a file
-- (proc.reporter), and waits for a go file (proc.wait_for_file).  This
-- module loads no busted code, so children can require it.  Waiting is
-- always bounded polling on a condition; nothing asserts on elapsed time.

local compat = require("helpers.compat")
local sh = require("helpers.sh")
local fs = require("helpers.fs")

local q = sh.q

local M = {}

-------------------------------------------------------------------------
-- The interpreter and its paths
-------------------------------------------------------------------------

local function getenv(name, default)
    local v = os.getenv(name)
    if v == nil or v == "" then v = default end
    return v
end

function M.lua_bin()
    return getenv("TAKHIN_LUA", "lua5.4")
end

-- For the programs that are Lua 5.4 programs whatever Lua runs the specs
-- (bin/takhin, a LuaRocks tree for 5.4, the crash-point build): the lua5.4
-- interpreter and the build of takhin made for it.  Under Lua 5.4 these
-- are lua_bin() and the build the specs test; under LuaJIT,
-- scripts/run-tests.sh names them in TAKHIN_LUA54 and TAKHIN_LUA54_BUILD.
function M.lua54_bin()
    if not compat.is_luajit then return M.lua_bin() end
    return getenv("TAKHIN_LUA54", "lua5.4")
end

function M.lua54_build()
    if not compat.is_luajit then return getenv("TAKHIN_BUILD", "build") end
    return getenv("TAKHIN_LUA54_BUILD", "build")
end

local function lua_path()
    return getenv("LUA_PATH", "lua/?.lua;lua/?/init.lua;spec/?.lua;;")
end

local function lua_cpath()
    return getenv("LUA_CPATH", getenv("TAKHIN_BUILD", "build") .. "/?.so;;")
end

-- LUA_CPATH for lua54_bin().
function M.lua54_cpath()
    if not compat.is_luajit then return lua_cpath() end
    return M.lua54_build() .. "/?.so;;"
end

-------------------------------------------------------------------------
-- Running a script
-------------------------------------------------------------------------

-- Run a shell command to its end; returns its standard output and true
-- when it exited 0.  Lua 5.1 and LuaJIT give no status when a pipe is
-- closed: there the shell appends it, and it is cut off again.
local POPEN_STATUS = _VERSION ~= "Lua 5.1"
local EXIT_MARK = "@@takhin_spec_exit="

local function read_command(cmd)
    if POPEN_STATUS then
        local p = assert(io.popen(cmd, "r"))
        local out = p:read("a")
        local ok = p:close()
        return out, ok == true
    end
    local p = assert(io.popen("{ " .. cmd .. "\n}; printf '\\n" .. EXIT_MARK .. "%d\\n' $?", "r"))
    local out = p:read("a")
    p:close()
    local body, code = out:match("^(.*)\n" .. EXIT_MARK .. "(%d+)\n$")
    assert(body, "no exit status from: " .. cmd .. "\n" .. out)
    return body, code == "0"
end

-- The command line that runs script with args under the spec's Lua and
-- module paths.
local function lua_command(script, args)
    local path, cpath = lua_path(), lua_cpath()
    local parts = {
        "env",
        "LUA_PATH=" .. q(path), "LUA_PATH_5_4=" .. q(path),
        "LUA_CPATH=" .. q(cpath), "LUA_CPATH_5_4=" .. q(cpath),
        q(M.lua_bin()), q(script),
    }
    for _, a in ipairs(args or {}) do parts[#parts + 1] = q(a) end
    return table.concat(parts, " ")
end

-------------------------------------------------------------------------
-- The crash-point / errno-injection build (`make fault`)
-------------------------------------------------------------------------

-- The fault build's directory ($TAKHIN_FAULT_BUILD), or nil and why it
-- cannot be used (unset, or its takhin/core.so missing).
function M.fault_build()
    local dir = os.getenv("TAKHIN_FAULT_BUILD")
    if dir == nil or dir == "" then
        return nil, "TAKHIN_FAULT_BUILD is not set (`make test` sets it; `make fault` builds it)"
    end
    if not fs.exists(dir .. "/takhin/core.so") then
        return nil, dir .. "/takhin/core.so is missing (`make fault` builds it)"
    end
    return dir
end

-- The command line that runs script with args under lua5.4 (the fault
-- build is a Lua 5.4 module, also when the specs run under LuaJIT) on the
-- fault build; with TAKHIN_FAULT=step when step is given (the child is
-- killed with SIGKILL at that step).
function M.fault_command(script, args, step)
    local path, cpath = lua_path(), assert(M.fault_build()) .. "/?.so;;"
    local parts = { "env" }
    if step then parts[#parts + 1] = "TAKHIN_FAULT=" .. q(step) end
    for _, p in ipairs({ "LUA_PATH=" .. q(path), "LUA_PATH_5_4=" .. q(path),
                         "LUA_CPATH=" .. q(cpath), "LUA_CPATH_5_4=" .. q(cpath),
                         q(M.lua54_bin()), q(script) }) do
        parts[#parts + 1] = p
    end
    for _, a in ipairs(args or {}) do parts[#parts + 1] = q(a) end
    return table.concat(parts, " ")
end

-- Run source that way to its end; returns its stdout+stderr and its exit
-- status as sh reports it (137 for SIGKILL).
function M.run_fault(dir, source, args, step)
    local cmd = M.fault_command(M.write_script(dir, source), args, step)
    -- The outer braces' stderr only gets sh's own "Killed" notice.
    local out = sh.capture("{ " .. cmd .. " </dev/null 2>&1; echo \"@exit=$?\"; } 2>/dev/null")
    local status = tonumber(out:match("@exit=(%d+)%s*$"))
    return (out:gsub("@exit=%d+%s*$", "")), status
end

local script_seq = 0

-- Write a child script into dir and return its path.
function M.write_script(dir, source)
    script_seq = script_seq + 1
    local path = string.format("%s/child%d.lua", dir, script_seq)
    fs.write_file(path, source)
    return path
end

-- Run a Lua script to completion; returns its stdout+stderr, and true when
-- it exited 0.
function M.run_lua(dir, source, args)
    local script = M.write_script(dir, source)
    return read_command(lua_command(script, args) .. " </dev/null 2>&1")
end

-- Start a Lua script in the background.  Returns its pid and the path of
-- the file that collects its stdout and stderr.
function M.spawn_lua(dir, source, args)
    local script = M.write_script(dir, source)
    local out = script .. ".out"
    -- `exec` keeps the pid of `sh -c` for the interpreter itself.
    local cmd = "sh -c " .. q("exec " .. lua_command(script, args))
        .. " </dev/null >" .. q(out) .. " 2>&1 & echo $!"
    local pid = tonumber((sh.capture(cmd):match("%d+")))
    assert(pid, "could not start " .. script)
    return pid, out
end

-------------------------------------------------------------------------
-- Watching and stopping a child
-------------------------------------------------------------------------

-- True while pid runs (a zombie counts as gone: its files are closed).
function M.alive(pid)
    local f = io.open("/proc/" .. pid .. "/stat", "r")
    if not f then return false end
    local stat = f:read("a") or ""
    f:close()
    local state, rest = stat:match("^%d+ %b() (%a) (.*)$")
    if state == nil or state == "X" then return false end
    if state ~= "Z" then return true end
    -- A zombie leader whose other threads are still exiting: the process
    -- still holds its descriptors (and its locks) until the last one goes.
    -- num_threads is field 20 of the line, the 17th after the state.
    local fields = {}
    for f in rest:gmatch("%S+") do fields[#fields + 1] = f end
    return (tonumber(fields[17]) or 1) > 1
end

function M.kill9(pid)
    sh.sh("kill -9 " .. compat.int_str(assert(compat.tointeger(pid))) .. " 2>/dev/null")
end

-- Wait (bounded) for pid to stop running; true when it did.
function M.wait_exit(pid, tries)
    return sh.wait_until(function() return not M.alive(pid) end, tries or 1000) and true or false
end

-- Kill pid (nil: nothing) with SIGKILL if it still runs and wait for it
-- to go: what an after_each does with the children a test started.
function M.stop(pid)
    if pid and M.alive(pid) then
        M.kill9(pid)
        M.wait_exit(pid)
    end
end

-- Wait until path holds `pattern` (a plain substring); returns the content.
function M.wait_for_content(path, pattern, tries)
    local data
    sh.wait_until(function()
        local f = io.open(path, "rb")
        if not f then return false end
        data = f:read("a")
        f:close()
        return data:find(pattern, 1, true) ~= nil
    end, tries)
    return data
end

-- Wait until path has n complete lines (a child's acknowledgements) or
-- pid is gone; returns the number of lines.
function M.wait_lines(path, n, pid, tries)
    sh.wait_until(function()
        return fs.count_lines(path) >= n or not M.alive(pid)
    end, tries or 3000, 0.005)
    return fs.count_lines(path)
end

-- This process's pid.
function M.getpid()
    local f = assert(io.open("/proc/self/stat", "r"))
    local pid = tonumber(f:read("a"):match("^(%d+)"))
    f:close()
    return pid
end

-------------------------------------------------------------------------
-- Inside a child
-------------------------------------------------------------------------

-- A function that appends its arguments to the file at path as one line,
-- tab-separated (tostring of each), and flushes it: a child's report.
function M.reporter(path)
    local report = assert(io.open(path, "w"))
    return function(...)
        local t = {}
        for i = 1, select("#", ...) do t[i] = tostring((select(i, ...))) end
        report:write(table.concat(t, "\t"), "\n")
        report:flush()
    end
end

-- Wait (bounded, tries polls of pause seconds) for a file to exist, as a
-- child waits for its parent's go; true when it does.
function M.wait_for_file(path, tries, pause)
    local function present()
        local f = io.open(path, "r")
        if f then f:close() end
        return f ~= nil
    end
    sh.wait_until(present, tries, pause)
    return present()
end

-------------------------------------------------------------------------
-- Unprivileged children (root ignores file modes: a permission test must
-- run its process as another user)
-------------------------------------------------------------------------

-- The command prefix that runs a program as nobody (uid and gid 65534, no
-- supplementary groups), or nil and the reason when this process cannot
-- switch users.
function M.nobody_prefix()
    if sh.capture("id -u"):gsub("%s+$", "") ~= "0" then return nil, "not running as root" end
    if not sh.sh("command -v setpriv >/dev/null 2>&1") then return nil, "setpriv is not installed" end
    return "setpriv --reuid=65534 --regid=65534 --clear-groups"
end

-- run_lua, with the interpreter started under prefix (nobody_prefix()).
function M.run_lua_as(prefix, dir, source, args)
    local script = M.write_script(dir, source)
    return read_command(prefix .. " " .. lua_command(script, args) .. " </dev/null 2>&1")
end

-------------------------------------------------------------------------
-- Servers a spec or bench starts (nginx, redis): pids, ports, logs
-------------------------------------------------------------------------

-- The pid in a pid file, or nil.
function M.read_pid(path)
    local f = io.open(path, "rb")
    if not f then return nil end
    local pid = tonumber((f:read("a") or ""):match("%d+"))
    f:close()
    return pid
end

-- Pids whose parent is ppid (nginx's workers), from /proc.
function M.children_of(ppid)
    local pids = {}
    for name in sh.capture("ls /proc"):gmatch("%d+") do
        local f = io.open("/proc/" .. name .. "/stat", "r")
        if f then
            local parent = (f:read("a") or ""):match("^%d+ %b() %a (%d+)")
            f:close()
            if tonumber(parent) == ppid then pids[#pids + 1] = tonumber(name) end
        end
    end
    return pids
end

-- TCP ports in use on this machine (any state), from /proc/net/tcp{,6}.
local function used_ports()
    local used = {}
    for _, f in ipairs({ "/proc/net/tcp", "/proc/net/tcp6" }) do
        local h = io.open(f, "r")
        if h then
            for hex in h:read("a"):gmatch("\n%s*%d+: %x+:(%x%x%x%x) ") do used[tonumber(hex, 16)] = true end
            h:close()
        end
    end
    return used
end

-- A TCP port between 20000 and 32000 (below the ephemeral range, so no
-- client's own port takes it) that is not in use now, drawn from seed
-- (the caller's pid, say) and the clock -- not math.random: the suite's
-- random state is left alone; draw = 1, 2, ... gives another one, for a
-- retry after "Address already in use".
function M.free_port(seed, draw)
    local used = used_ports()
    local base = seed * 7919 + os.time()
    for k = 1, 12000 do
        local port = 20000 + (base + ((draw or 1) + k) * 4099) % 12000
        if not used[port] then return port end
    end
    error("no free TCP port between 20000 and 32000")
end

-- The lines of an nginx error log at [error] or worse.
function M.error_lines(path)
    local bad = {}
    local f = io.open(path, "rb")
    if not f then return bad end
    for line in f:read("a"):gmatch("[^\n]+") do
        if line:find("%[error%]") or line:find("%[crit%]") or line:find("%[alert%]")
            or line:find("%[emerg%]") then
            bad[#bad + 1] = line
        end
    end
    f:close()
    return bad
end

return M
