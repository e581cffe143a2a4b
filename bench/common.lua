-- bench/common.lua: what the benchmarks (bench/*_bench.lua) and the soak
-- (soak/) share: a wall clock, the shell, temporary directories, and the
-- statistics of repeated runs.  Loaded by path, so that a bench runs with
-- no more than takhin on LUA_PATH:
--
--     local C = dofile((arg[0]:match("^(.*)/") or ".") .. "/common.lua")
--     local t0 = C.now()
--     ...
--     row.a, row.b = C.median(ta), C.median(tb)
--
-- Quoting, running commands and reading files are the specs' own
-- (spec/helpers/sh.lua, fs.lua: one home for every Lua test tool); this
-- file puts the tree's spec/ on package.path to reach them, so
-- require("helpers.proc") works after it too.

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
package.path = here .. "/../spec/?.lua;" .. package.path
local sh = require("helpers.sh")
local fs = require("helpers.fs")

local M = {}

-------------------------------------------------------------------------
-- Clock
-------------------------------------------------------------------------

-- Wall-clock seconds for timing (os.clock is CPU time; I/O needs wall
-- time) and a sleep.  lua-system and lua-socket come with busted (a
-- dependency of `make test`); `date` and `sleep` are the last resort (one
-- fork per call, ~1 ms of its own latency).  M.CLOCK describes the choice.
local has_sys, sys = pcall(require, "system")
local has_socket, socket = pcall(require, "socket")
if has_sys and type(sys) == "table" and sys.monotime then
    M.now, M.CLOCK = sys.monotime, "system.monotime (lua-system, CLOCK_MONOTONIC)"
elseif has_socket and type(socket) == "table" and socket.gettime then
    M.now, M.CLOCK = socket.gettime, "socket.gettime (lua-socket, gettimeofday)"
else
    M.now, M.CLOCK = function()
        local p = io.popen("date +%s%N")
        local s = p:read("l")
        p:close()
        return tonumber(s) / 1e9
    end, "date +%s%N (one fork per timed section)"
end

function M.sleep(seconds)
    if seconds <= 0 then return end
    if has_sys and type(sys) == "table" and sys.sleep then return sys.sleep(seconds) end
    if has_socket and type(socket) == "table" and socket.sleep then return socket.sleep(seconds) end
    os.execute(("sleep %.3f"):format(seconds))
end

-------------------------------------------------------------------------
-- Shell and files
-------------------------------------------------------------------------

-- q(s): s quoted for /bin/sh; sh(cmd): true when cmd exits 0;
-- capture(cmd): its standard output; read_file(path): the whole file.
M.q, M.sh, M.capture, M.read_file = sh.q, sh.sh, sh.capture, fs.read_file

-- Run a shell command; raise, naming it, when it fails.
function M.run(cmd)
    local ok, how, code = os.execute(cmd)
    if not ok then
        error(("command failed (%s %s): %s"):format(tostring(how), tostring(code), cmd), 2)
    end
end

-- True when path can be opened (spec/helpers/fs.lua's exists forks a
-- `test -e`; the soak's writer asks this between appends).
function M.exists(path)
    local f = io.open(path, "r")
    if f then f:close() end
    return f ~= nil
end

-- Sorted paths dir/name of the names in dir that match pattern.
function M.list_dir(dir, pattern)
    local out = {}
    for name in M.capture("ls -1 " .. M.q(dir)):gmatch("[^\n]+") do
        if name:match(pattern) then out[#out + 1] = dir .. "/" .. name end
    end
    table.sort(out)
    return out
end

-- A new directory <base>/<prefix>XXXXXX (mktemp -d); base defaults to
-- $TMPDIR, else /tmp.
function M.mktemp_dir(prefix, base)
    if base == nil then base = os.getenv("TMPDIR") end
    if base == nil or base == "" then base = "/tmp" end
    local dir = M.capture("mktemp -d " .. M.q(base .. "/" .. prefix .. "XXXXXX")):gsub("%s+$", "")
    assert(dir ~= "" and dir:sub(1, 1) == "/", "mktemp -d failed")
    return dir
end

-- Bytes free on dir's filesystem (df), or nil.
function M.df_avail(dir)
    local line = M.capture("df -Pk " .. M.q(dir) .. " 2>/dev/null | tail -n 1")
    local avail = line:match("^%S+%s+%d+%s+%d+%s+(%d+)")
    return avail and tonumber(avail) * 1024
end

-- dir's filesystem type ("ext2/ext3", "tmpfs", ...).
function M.fs_type(dir)
    return (M.capture("stat -f -c %T " .. M.q(dir) .. " 2>/dev/null"):gsub("%s+$", ""))
end

-- A new temp directory for a bench that needs `need` bytes: under $TMPDIR
-- when set, else under whichever of `dirs` has the most room (skipping
-- tmpfs when no_tmpfs: it has no fdatasync cost).  Exits with status 2 and
-- a message naming `hint` (the settings that lower the need) when none
-- will do.  Returns the directory and the bytes free there.
function M.bench_tmp(name, need, dirs, hint, no_tmpfs)
    local td = os.getenv("TMPDIR")
    local cands = (td and td ~= "") and { td } or dirs
    local best, best_avail
    for _, d in ipairs(cands) do
        local a = M.df_avail(d)
        if a and not (no_tmpfs and M.fs_type(d) == "tmpfs") and (not best_avail or a > best_avail) then
            best, best_avail = d, a
        end
    end
    if not best then
        io.stderr:write("bench: no usable temp directory among " .. table.concat(cands, ", ")
                        .. (no_tmpfs and " (tmpfs has no fdatasync cost; set TMPDIR)" or "") .. "\n")
        os.exit(2)
    end
    if best_avail < need then
        io.stderr:write(("bench: %s has %s free, the %s bench needs %s (%s)\n"):format(
            best, M.fmt_size(best_avail), name, M.fmt_size(need), hint))
        os.exit(2)
    end
    return M.mktemp_dir("takhin-bench.", best), best_avail
end

-- rm -rf of path, which must be (or be inside) a directory whose name
-- starts with prefix ("takhin-bench."): a guard against removing anything
-- else.
function M.rm_rf(path, prefix)
    local p = prefix:gsub("%p", "%%%0")
    assert(path:match("^/.+/" .. p) or path:match("^/.+/" .. p .. "[^/]+/.+"),
           "refusing to remove " .. path)
    os.execute("rm -rf " .. M.q(path))
end

-------------------------------------------------------------------------
-- Servers a bench starts (redis, nginx)
-------------------------------------------------------------------------

-- A free TCP port (spec/helpers/proc.lua, which the benches that start
-- servers load anyway).
function M.free_port(seed, draw)
    return require("helpers.proc").free_port(seed, draw)
end

-------------------------------------------------------------------------
-- Settings
-------------------------------------------------------------------------

-- The number in environment variable name (default when unset or empty),
-- which must be >= min and, when integer is true, an integer; exits with
-- status 2 and a message otherwise.
function M.env_num(name, default, min, integer)
    local v = os.getenv(name)
    if v == nil or v == "" then return default end
    local n = tonumber(v)
    if integer then n = n and math.tointeger(n) end
    if not n or n < min then
        io.stderr:write(("bench: %s=%q is not %s >= %s\n"):format(name, v,
                        integer and "an integer" or "a number", tostring(min)))
        os.exit(2)
    end
    return n
end

-------------------------------------------------------------------------
-- Statistics of repeated runs
-------------------------------------------------------------------------

-- The p-quantile (0 <= p <= 1) of the numbers in t, interpolating
-- linearly between the two nearest (so p = 0.5 is the usual median, the
-- mean of the middle two of an even count); nil for an empty t.
function M.quantile(t, p)
    local s = {}
    for i = 1, #t do s[i] = t[i] end
    table.sort(s)
    if #s == 0 then return nil end
    local h = (#s - 1) * p + 1
    local lo = math.floor(h)
    if lo >= #s then return s[#s] end
    return s[lo] + (h - lo) * (s[lo + 1] - s[lo])
end

function M.median(t)
    return M.quantile(t, 0.5)
end

-- Repetition r of a pair: fa then fb when r is odd, fb then fa when it is
-- even, so neither side always runs first.  Returns what each returned.
local function alternate(r, fa, fb)
    local a, b
    if r % 2 == 1 then a = fa(r); b = fb(r) else b = fb(r); a = fa(r) end
    return a, b
end

-- A row of a result table from the repetitions: row.a and row.b the
-- medians of each side, row.ratio the median of the per-repetition
-- ratios, row.lo and row.hi their smallest and largest.
local function summarize(row, as, bs, ratios)
    row.a, row.b, row.ratio = M.median(as), M.median(bs), M.median(ratios)
    row.lo, row.hi = M.quantile(ratios, 0), M.quantile(ratios, 1)
end

-- Run the pair fa (takhin) and fb (baseline) reps times, alternating
-- which goes first; ratio(a, b) is the ratio of one repetition's results.
-- Then summarize the row.  With fmt, each repetition is printed as it
-- ends, its two results formatted by fmt.
function M.run_pair(row, reps, fa, fb, ratio, fmt)
    local as, bs, ratios = {}, {}, {}
    for r = 1, reps do
        as[r], bs[r] = alternate(r, fa, fb)
        ratios[r] = ratio(as[r], bs[r])
        if fmt then
            io.write(("  %-34s rep %d: %s | %s | x%.2f\n"):format(row.name, r, fmt(as[r]), fmt(bs[r]),
                                                                 ratios[r]))
            io.flush()
        end
    end
    summarize(row, as, bs, ratios)
end

-- 1234567 -> "1,234,567" (rounded to an integer).
function M.fmt_int(n)
    local s = ("%d"):format(math.floor(n + 0.5))
    local out = s:reverse():gsub("(%d%d%d)", "%1,"):reverse()
    return (out:gsub("^,", ""))
end

-- 0.01234 -> "12.34 ms", 2.5 -> "2.500 s"
function M.fmt_time(t)
    if t < 1 then return ("%.2f ms"):format(t * 1e3) end
    return ("%.3f s"):format(t)
end

-- "12.34 ms  86,957 MB/s": a (median) time and the bytes it handled per
-- second; "-" without a time.
function M.fmt_cell(t, bytes)
    if not t then return "-" end
    return ("%11s %10s MB/s"):format(M.fmt_time(t), M.fmt_int(bytes / t / 1e6))
end

-- bytes -> "1.25 GiB" or "256.0 MiB"
function M.fmt_size(b)
    local GIB = 1024 * 1024 * 1024
    if b >= GIB then return ("%.2f GiB"):format(b / GIB) end
    return ("%.1f MiB"):format(b / (1024 * 1024))
end

-- takhin's (nil, msg, code) failures become errors naming the call;
-- otherwise v.
function M.check(what, v, msg, code)
    if v == nil then error(("%s: %s (%s)"):format(what, tostring(msg), tostring(code)), 2) end
    return v
end

return M
