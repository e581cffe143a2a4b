-- Shared helpers for the busted specs: temporary directories, whole-file
-- I/O, byte-level damage, Lua child processes, and what differs between
-- Lua 5.4 and LuaJIT.
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
--
-- This file, and every spec, runs on Lua 5.4 and on LuaJIT 2.1
-- (scripts/run-tests.sh runs the suite under both): no `//`, bit
-- operators, string.pack, <close> or utf8, and no math.type,
-- math.tointeger, math.maxinteger or table.unpack without a fallback.  The
-- helpers under "Lua 5.4 and LuaJIT" stand in for them in the specs.

local M = {}

-------------------------------------------------------------------------
-- Lua 5.4 and LuaJIT
-------------------------------------------------------------------------

-- True when running under LuaJIT (numbers are doubles: integers are exact
-- up to 2^53, and the takhin binding refuses offsets and timestamps
-- beyond).  A test that is about Lua 5.4 itself says so:
--     if util.is_luajit then return pending("Lua 5.4 only: <why>") end
M.is_luajit = type(rawget(_G, "jit")) == "table"

-- table.unpack (LuaJIT has only the global unpack).
M.unpack = table.unpack or rawget(_G, "unpack")

-- Largest and smallest integer the takhin binding takes and gives:
-- math.maxinteger / math.mininteger on Lua 5.4, +-(2^53 - 1) on LuaJIT:
-- 2^53 itself is refused there, since 2^53 + 1 arrives rounded to it.
M.maxinteger = math.maxinteger or 2 ^ 53 - 1
M.mininteger = math.mininteger or -(2 ^ 53 - 1)

-- math.type: "integer", "float" or nil.  On LuaJIT a number is "integer"
-- when it has an integer value the binding takes (|x| < 2^53).
function M.math_type(x)
    if math.type then return math.type(x) end
    if type(x) ~= "number" then return nil end
    if x == math.floor(x) and x > -2 ^ 53 and x < 2 ^ 53 then return "integer" end
    return "float"
end

-- math.tointeger (for numbers).
function M.tointeger(x)
    if math.tointeger then return math.tointeger(x) end
    if M.math_type(x) == "integer" then return x end
    return nil
end

-- 2^n as an integer (1 << n on Lua 5.4), n < 63.
function M.pow2(n)
    return math.floor(2 ^ n)
end

-- Floor division: `a // b` of Lua 5.4 (integers stay integers there).
local idiv
if math.type then
    idiv = load("return function(a, b) return a // b end")()
else
    idiv = function(a, b) return math.floor(a / b) end
end
M.idiv = idiv

-- Little-endian string.pack / string.unpack for the integer formats the
-- specs use: "<" (optional), "B", "b", "H", "h", "I[n]", "i[n]" (default
-- 4 bytes), "J", "j" (8 bytes), and spaces.  Exact for every integer on
-- Lua 5.4; on LuaJIT for |n| <= 2^53.
local function int_formats(fmt)
    local items, i = {}, 1
    while i <= #fmt do
        local c = fmt:sub(i, i)
        i = i + 1
        if c == "<" or c == " " then
            -- little-endian is all there is here
        elseif c == "B" or c == "b" or c == "H" or c == "h" or c == "J" or c == "j" then
            local size = (c == "B" or c == "b") and 1 or ((c == "H" or c == "h") and 2 or 8)
            items[#items + 1] = { size = size, signed = c == c:lower() }
        elseif c == "I" or c == "i" then
            local digits = fmt:match("^%d+", i)
            local size = tonumber(digits) or 4
            if digits then i = i + #digits end
            assert(size >= 1 and size <= 8, "util.pack: integral size out of limits in " .. fmt)
            items[#items + 1] = { size = size, signed = c == "i" }
        else
            error("util.pack: unsupported format option '" .. c .. "' in " .. fmt, 3)
        end
    end
    return items
end

function M.pack(fmt, ...)
    local out = {}
    for k, item in ipairs(int_formats(fmt)) do
        local n = select(k, ...)
        assert(M.math_type(n) == "integer", "util.pack: argument " .. k .. " is not an integer")
        if item.size < 8 then
            local lim = 256 ^ item.size
            if item.signed then
                assert(n >= -lim / 2 and n < lim / 2, "util.pack: integer overflow")
            else
                assert(n >= 0 and n < lim, "util.pack: unsigned overflow")
            end
        end
        for _ = 1, item.size do
            local b = n % 256
            out[#out + 1] = string.char(b)
            n = idiv(n - b, 256)
        end
    end
    return table.concat(out)
end

-- Returns the values and the position after them, as string.unpack does.
function M.unpack_le(fmt, s, pos)
    pos = pos or 1
    local vals = {}
    for _, item in ipairs(int_formats(fmt)) do
        assert(pos + item.size - 1 <= #s, "util.unpack: data string too short")
        local neg = item.signed and s:byte(pos + item.size - 1) >= 128
        local v = 0
        for i = item.size, 1, -1 do
            local b = s:byte(pos + i - 1)
            if neg then b = 255 - b end
            v = v * 256 + b
        end
        if neg then v = -v - 1 end
        vals[#vals + 1] = v
        pos = pos + item.size
    end
    vals[#vals + 1] = pos
    return M.unpack(vals, 1, #vals)
end

-- The decimal digits of an integer (tostring on LuaJIT writes numbers of
-- 15 digits and more as 1.2345678901234e+14).
function M.int_str(n)
    return string.format("%d", n)
end

-------------------------------------------------------------------------
-- Shell
-------------------------------------------------------------------------

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
    if a % 256 == 0 then return nil, "exit", idiv(a, 256) end
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
    assert(M.sh("truncate -s " .. M.int_str(assert(M.tointeger(size))) .. " " .. M.q(path)),
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

local function getenv(name, default)
    local v = os.getenv(name)
    if v == nil or v == "" then v = default end
    return v
end

-- For the programs that are Lua 5.4 programs whatever Lua runs the specs
-- (bin/takhin, a LuaRocks tree for 5.4, the crash-point build): the lua5.4
-- interpreter and the build of takhin made for it.  Under Lua 5.4 these
-- are lua_bin() and the build the specs test; under LuaJIT,
-- scripts/run-tests.sh names them in TAKHIN_LUA54 and TAKHIN_LUA54_BUILD.
function M.lua54_bin()
    if not M.is_luajit then return M.lua_bin() end
    return getenv("TAKHIN_LUA54", "lua5.4")
end

function M.lua54_build()
    if not M.is_luajit then return getenv("TAKHIN_BUILD", "build") end
    return getenv("TAKHIN_LUA54_BUILD", "build")
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

-- LUA_CPATH for lua54_bin().
function M.lua54_cpath()
    if not M.is_luajit then return lua_cpath() end
    return M.lua54_build() .. "/?.so;;"
end

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
    return read_command(lua_command(script, args) .. " </dev/null 2>&1")
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
    M.sh("kill -9 " .. M.int_str(assert(M.tointeger(pid))) .. " 2>/dev/null")
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
    return read_command(prefix .. " " .. lua_command(script, args) .. " </dev/null 2>&1")
end

return M
