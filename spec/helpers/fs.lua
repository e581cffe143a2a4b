-- Files for the specs: temporary directories, whole-file I/O, byte-level
-- damage (overwrite, flip, truncate), listings, and the names of a log
-- directory's files.
--
--     local fs = require("helpers.fs")
--     local dir = fs.tmpdir()
--     ...
--     fs.rmtree(dir)
--
-- Each spec file makes its own temporary directories (under $TMPDIR, else
-- /tmp) and removes them; rmtree refuses anything tmpdir did not make.

local compat = require("helpers.compat")
local sh = require("helpers.sh")

local q = sh.q

local M = {}

-------------------------------------------------------------------------
-- Temporary directories
-------------------------------------------------------------------------

local TMP_PREFIX = "takhin-spec."

function M.tmpdir()
    local base = os.getenv("TMPDIR")
    if base == nil or base == "" then base = "/tmp" end
    local out = sh.capture("mktemp -d " .. q(base .. "/" .. TMP_PREFIX .. "XXXXXX"))
    local dir = out:gsub("%s+$", "")
    assert(dir ~= "" and M.is_dir(dir), "mktemp -d failed")
    return dir
end

-- A temporary directory in memory (/dev/shm) when there is one with at
-- least `need` bytes free (default 0), so that a spec can write a big log
-- quickly and fsyncs cost nothing; else tmpdir().  rmtree removes it like
-- any other.
function M.memory_tmpdir(need)
    local avail, bsize = sh.capture("stat -f -c '%a %S' /dev/shm 2>/dev/null"):match("(%d+) (%d+)")
    if not avail or not sh.sh("test -d /dev/shm -a -w /dev/shm")
        or tonumber(avail) * tonumber(bsize) < (need or 0) then
        return M.tmpdir()
    end
    local out = sh.capture("mktemp -d /dev/shm/" .. TMP_PREFIX .. "XXXXXX 2>/dev/null")
    local dir = out:gsub("%s+$", "")
    if dir == "" or not M.is_dir(dir) then return M.tmpdir() end
    return dir
end

-- Remove a directory made by tmpdir (refuses anything else).
function M.rmtree(dir)
    if dir == nil then return end
    assert(dir:find("/" .. TMP_PREFIX, 1, true), "refusing to remove " .. dir)
    sh.sh("rm -rf " .. q(dir))
end

function M.is_dir(path)
    return sh.sh("test -d " .. q(path))
end

function M.exists(path)
    return sh.sh("test -e " .. q(path))
end

-- Copy a directory tree (src's contents become dst).
function M.copytree(src, dst)
    assert(sh.sh("rm -rf " .. q(dst) .. " && cp -a " .. q(src) .. " " .. q(dst)),
           "cp -a " .. src .. " " .. dst)
end

-- Sorted names in a directory, including dot files (not . and ..).
function M.ls(dir)
    local names = {}
    local out = sh.capture("ls -A " .. q(dir) .. " 2>/dev/null")
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

-- The complete lines of a file, without their newlines; a last line with
-- no newline yet (a writer in the middle of it) is left out.  An empty
-- list when the file does not exist.
function M.lines(path)
    local out = {}
    local f = io.open(path, "rb")
    if not f then return out end
    local data = f:read("a")
    f:close()
    for line in data:gmatch("([^\n]*)\n") do out[#out + 1] = line end
    return out
end

-- Number of complete lines in a file (0 when missing).
function M.count_lines(path)
    return #M.lines(path)
end

-------------------------------------------------------------------------
-- Damage
-------------------------------------------------------------------------

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
    assert(sh.sh("truncate -s " .. compat.int_str(assert(compat.tointeger(size))) .. " " .. q(path)),
           "truncate " .. path)
end

-- Inode number and link count.
function M.stat(path)
    local out = sh.capture("stat -c '%i %h' " .. q(path) .. " 2>/dev/null")
    local ino, nlink = out:match("(%d+) (%d+)")
    return tonumber(ino), tonumber(nlink)
end

-- How many descriptors process pid holds on files under dir (other
-- descriptors of the process -- a background job of another spec, a pipe
-- -- come and go and are not the spec's business).
function M.fds_under(pid, dir)
    local out = sh.capture(("find /proc/%d/fd -lname %s 2>/dev/null | wc -l"):format(pid, q(dir .. "/*")))
    return tonumber(out:match("%d+")) or 0
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

return M
