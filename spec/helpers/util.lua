-- Shared helpers for the busted specs: temporary directories, whole-file
-- I/O, byte-level damage, and lua5.4 child processes.
--
--     local util = require("helpers.util")
--     local dir = util.tmpdir()
--     ...
--     util.rmtree(dir)
--
-- Child processes run os.getenv("TAKHIN_LUA") (default lua5.4) with
-- LUA_PATH and LUA_CPATH set explicitly, so they load the same takhin the
-- spec does.  Waiting is always bounded polling on a condition; nothing
-- asserts on elapsed time.

local M = {}

-------------------------------------------------------------------------
-- Shell
-------------------------------------------------------------------------

-- Quote s for /bin/sh.
function M.q(s)
    return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Run a shell command; true when it exits 0.
function M.sh(cmd)
    local ok = os.execute(cmd)
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

-------------------------------------------------------------------------
-- Temporary directories
-------------------------------------------------------------------------

local TMP_PREFIX = "takhin-spec."

function M.tmpdir()
    local base = os.getenv("TMPDIR")
    if base == nil or base == "" then base = "/tmp" end
    local out = M.capture("mktemp -d " .. M.q(base .. "/" .. TMP_PREFIX .. "XXXXXX"))
    local dir = out:gsub("%s+$", "")
    assert(dir ~= "" and M.is_dir(dir), "mktemp -d failed")
    return dir
end

-- Remove a directory made by tmpdir (refuses anything else).
function M.rmtree(dir)
    if dir == nil then return end
    assert(dir:find("/" .. TMP_PREFIX, 1, true), "refusing to remove " .. dir)
    M.sh("rm -rf " .. M.q(dir))
end

function M.is_dir(path)
    return M.sh("test -d " .. M.q(path))
end

function M.exists(path)
    return M.sh("test -e " .. M.q(path))
end

-- Copy a directory tree (src's contents become dst).
function M.copytree(src, dst)
    assert(M.sh("rm -rf " .. M.q(dst) .. " && cp -a " .. M.q(src) .. " " .. M.q(dst)),
           "cp -a " .. src .. " " .. dst)
end

-- Sorted names in a directory, including dot files (not . and ..).
function M.ls(dir)
    local names = {}
    local out = M.capture("ls -A " .. M.q(dir) .. " 2>/dev/null")
    for name in out:gmatch("[^\n]+") do names[#names + 1] = name end
    table.sort(names)
    return names
end

-- Sorted names in dir that end with suffix (".log", ".index", ...).
function M.ls_suffix(dir, suffix)
    local names = {}
    for _, name in ipairs(M.ls(dir)) do
        if name:sub(-#suffix) == suffix and name:sub(1, 1) ~= "." then
            names[#names + 1] = name
        end
    end
    return names
end

-------------------------------------------------------------------------
-- Files
-------------------------------------------------------------------------

function M.read_file(path)
    local f = assert(io.open(path, "rb"))
    local data = f:read("a")
    f:close()
    return data
end

function M.write_file(path, data)
    local f = assert(io.open(path, "wb"))
    assert(f:write(data))
    assert(f:close())
end

function M.append_file(path, data)
    local f = assert(io.open(path, "ab"))
    assert(f:write(data))
    assert(f:close())
end

-- Size in bytes, or nil when the file does not exist.
function M.file_size(path)
    local f = io.open(path, "rb")
    if not f then return nil end
    local size = f:seek("end")
    f:close()
    return size
end

-- Overwrite bytes at a 0-based position, leaving the size alone.
function M.write_at(path, pos, bytes)
    local f = assert(io.open(path, "r+b"))
    assert(f:seek("set", pos))
    assert(f:write(bytes))
    assert(f:close())
end

function M.read_at(path, pos, len)
    local f = assert(io.open(path, "rb"))
    assert(f:seek("set", pos))
    local data = f:read(len)
    f:close()
    return data
end

-- Invert every bit of the byte at a 0-based position.
function M.flip_byte(path, pos)
    local old = M.read_at(path, pos, 1)
    assert(old and #old == 1, "no byte at " .. pos .. " in " .. path)
    M.write_at(path, pos, string.char(255 - old:byte()))
end

function M.truncate(path, size)
    assert(M.sh("truncate -s " .. math.tointeger(size) .. " " .. M.q(path)),
           "truncate " .. path)
end

-- Inode number and link count.
function M.stat(path)
    local out = M.capture("stat -c '%i %h' " .. M.q(path) .. " 2>/dev/null")
    local ino, nlink = out:match("(%d+) (%d+)")
    return tonumber(ino), tonumber(nlink)
end

-- Number of complete lines in a file (0 when missing).
function M.count_lines(path)
    local f = io.open(path, "rb")
    if not f then return 0 end
    local data = f:read("a")
    f:close()
    local _, n = data:gsub("\n", "")
    return n
end

-------------------------------------------------------------------------
-- Log directory names (docs/FORMAT.md)
-------------------------------------------------------------------------

function M.segment_name(base, ext)
    return string.format("%020d.%s", base, ext)
end

-- Sum of the sizes of the .log files in dir.
function M.log_bytes(dir)
    local total = 0
    for _, name in ipairs(M.ls_suffix(dir, ".log")) do
        total = total + M.file_size(dir .. "/" .. name)
    end
    return total
end

-------------------------------------------------------------------------
-- Polling
-------------------------------------------------------------------------

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

-- Wait until path holds `pattern` (a plain substring); returns the content.
function M.wait_for_content(path, pattern, tries)
    local data
    M.wait_until(function()
        local f = io.open(path, "rb")
        if not f then return false end
        data = f:read("a")
        f:close()
        return data:find(pattern, 1, true) ~= nil
    end, tries)
    return data
end

-------------------------------------------------------------------------
-- Child processes
-------------------------------------------------------------------------

function M.lua_bin()
    local lua = os.getenv("TAKHIN_LUA")
    if lua == nil or lua == "" then lua = "lua5.4" end
    return lua
end

local function lua_path()
    local p = os.getenv("LUA_PATH")
    if p == nil or p == "" then p = "lua/?.lua;lua/?/init.lua;spec/?.lua;;" end
    return p
end

local function lua_cpath()
    local p = os.getenv("LUA_CPATH")
    if p == nil or p == "" then
        local build = os.getenv("TAKHIN_BUILD")
        if build == nil or build == "" then build = "build" end
        p = build .. "/?.so;;"
    end
    return p
end

-- The command line that runs script with args under the spec's Lua and
-- module paths.
local function lua_command(script, args)
    local path, cpath = lua_path(), lua_cpath()
    local parts = {
        "env",
        "LUA_PATH=" .. M.q(path), "LUA_PATH_5_4=" .. M.q(path),
        "LUA_CPATH=" .. M.q(cpath), "LUA_CPATH_5_4=" .. M.q(cpath),
        M.q(M.lua_bin()), M.q(script),
    }
    for _, a in ipairs(args or {}) do parts[#parts + 1] = M.q(a) end
    return table.concat(parts, " ")
end

local script_seq = 0

-- Write a child script into dir and return its path.
function M.write_script(dir, source)
    script_seq = script_seq + 1
    local path = string.format("%s/child%d.lua", dir, script_seq)
    M.write_file(path, source)
    return path
end

-- Run a Lua script to completion; returns its stdout+stderr, and true when
-- it exited 0.
function M.run_lua(dir, source, args)
    local script = M.write_script(dir, source)
    local p = assert(io.popen(lua_command(script, args) .. " </dev/null 2>&1", "r"))
    local out = p:read("a")
    local ok = p:close()
    return out, ok == true
end

-- Start a Lua script in the background.  Returns its pid and the path of
-- the file that collects its stdout and stderr.
function M.spawn_lua(dir, source, args)
    local script = M.write_script(dir, source)
    local out = script .. ".out"
    -- `exec` keeps the pid of `sh -c` for the interpreter itself.
    local cmd = "sh -c " .. M.q("exec " .. lua_command(script, args))
        .. " </dev/null >" .. M.q(out) .. " 2>&1 & echo $!"
    local pid = tonumber((M.capture(cmd):match("%d+")))
    assert(pid, "could not start " .. script)
    return pid, out
end

-- True while pid runs (a zombie counts as gone: its files are closed).
function M.alive(pid)
    local f = io.open("/proc/" .. pid .. "/stat", "r")
    if not f then return false end
    local stat = f:read("a") or ""
    f:close()
    local state = stat:match("^%d+ %b() (%a)")
    return state ~= nil and state ~= "Z" and state ~= "X"
end

function M.kill9(pid)
    M.sh("kill -9 " .. math.tointeger(pid) .. " 2>/dev/null")
end

-- Wait (bounded) for pid to stop running; true when it did.
function M.wait_exit(pid, tries)
    return M.wait_until(function() return not M.alive(pid) end, tries or 1000) and true or false
end

-- This process's pid.
function M.getpid()
    local f = assert(io.open("/proc/self/stat", "r"))
    local pid = tonumber(f:read("a"):match("^(%d+)"))
    f:close()
    return pid
end

-------------------------------------------------------------------------
-- Unprivileged children (root ignores file modes: a permission test must
-- run its process as another user)
-------------------------------------------------------------------------

-- The command prefix that runs a program as nobody (uid and gid 65534, no
-- supplementary groups), or nil and the reason when this process cannot
-- switch users.
function M.nobody_prefix()
    if M.capture("id -u"):gsub("%s+$", "") ~= "0" then return nil, "not running as root" end
    if not M.sh("command -v setpriv >/dev/null 2>&1") then return nil, "setpriv is not installed" end
    return "setpriv --reuid=65534 --regid=65534 --clear-groups"
end

-- run_lua, with the interpreter started under prefix (nobody_prefix()).
function M.run_lua_as(prefix, dir, source, args)
    local script = M.write_script(dir, source)
    local p = assert(io.popen(prefix .. " " .. lua_command(script, args) .. " </dev/null 2>&1", "r"))
    local out = p:read("a")
    local ok = p:close()
    return out, ok == true
end

return M
