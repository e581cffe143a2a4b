-- bench/follow_bench.lua -- cursors and following, against what a user
-- would use instead, run side by side in one run.
--
--   make bench                     (LUA_PATH / LUA_CPATH set by the Makefile)
--   BENCH_WAKEUPS=500 make bench
--
-- Rows (bench/README.md, "follow_bench.lua", says what each measures):
--   commit / raw pwrite       log:commit(name, i) against rewriting an
--                             8-byte offset in place in a file (seek+write+flush)
--   commit / redis SET        against SET name i to a redis-server, over TCP
--   commit(expect) / redis SET   the same with compare-and-set
--   commit(sync=always)       info: with an fdatasync per commit
--   wait wake-up / XREAD BLOCK   p50 and p99 of the time from a writer
--                             process's append (XADD) to a waiter process
--                             holding the record, in wait() / XREAD BLOCK
--   high_water_mark() / Lua call  calls per second of log:high_water_mark()
--                             against a method of a Lua table returning a field
--
-- No targets: the rows report ratios.  redis-server (Debian's, `make deps`)
-- is started by this script on 127.0.0.1 at a free port, with persistence
-- off, and stopped through its pid at the end (also after an error); the
-- redis rows are skipped when it is not installed.  Redis is spoken to
-- with lua-socket and the RESP protocol directly (bench/redis.lua): no
-- client library to install, and no redis-cli process per command, which
-- would time a fork and exec instead of Redis.
--
-- Environment:
--   BENCH_COMMITS   commits per repetition (100000; redis SET: at most
--                   20000; sync = "always": a 500th)
--   BENCH_WAKEUPS   appends (and XADDs) timed for the wake-up latency (1000)
--   BENCH_GAP_MS    pause between two of them, so the waiter is asleep (2)
--   BENCH_CALLS     high_water_mark() calls per repetition (5000000)
--   BENCH_REPS      repetitions of each pair (5)
--   BENCH_VERBOSE   1: print every repetition

local format = string.format

local C = dofile((arg[0]:match("^(.*)/") or ".") .. "/common.lua")
local proc = require("helpers.proc")
local median, quantile, fmt_int = C.median, C.quantile, C.fmt_int

local function env_int(name, default, min) return C.env_num(name, default, min or 1, true) end

local COMMITS = env_int("BENCH_COMMITS", 100000)
local WAKEUPS = env_int("BENCH_WAKEUPS", 1000)
local GAP_MS  = env_int("BENCH_GAP_MS", 2, 0)
local CALLS   = env_int("BENCH_CALLS", 5000000)
local REPS    = env_int("BENCH_REPS", 5)
local VERBOSE = os.getenv("BENCH_VERBOSE") == "1"

local now = C.now
local T_START = now()

local ok_takhin, takhin = pcall(require, "takhin")
if not ok_takhin then
    print("follow bench skipped: takhin is not loadable: " .. tostring(takhin):match("^[^\n]*"))
    os.exit(0)
end
local has_system = pcall(require, "system")

-- redis-server and RESP (Redis' protocol) over lua-socket: bench/redis.lua,
-- shared with append_bench.lua.  Its text (Redis.RESP) is loaded by the
-- child processes too.
local Redis = dofile((arg[0]:match("^(.*)/") or ".") .. "/redis.lua")
local resp, RESP = Redis.resp, Redis.RESP
local redis = { pid = nil, port = nil, why = nil }

local function redis_start(dir)
    redis = Redis.start(C, dir, { "--appendonly", "no" })
end

local function redis_stop() Redis.stop(C, redis) end

-------------------------------------------------------------------------
-- Rows
-------------------------------------------------------------------------

local rows = {}

local function add_pair(name, unit, fa, fb, higher_is_better)
    local row = { name = name, unit = unit }
    C.run_pair(row, REPS, fa, fb, function(a, b)
        if higher_is_better then return a / b end
        return b / a
    end, VERBOSE and function(x) return format("%.6g", x) end or nil)
    rows[#rows + 1] = row
    return row
end

local TMP = C.mktemp_dir("takhin-bench.")
local seq = 0
local function new_dir()
    seq = seq + 1
    return format("%s/log%d", TMP, seq)
end

local function open(dir, extra)
    local opts = { dir = dir }
    for k, v in pairs(extra or {}) do opts[k] = v end
    return assert(takhin.open_log(opts))
end

-- commits per second of commit(name, i) for i = 1..COMMITS on a log
-- holding COMMITS records.
local function commit_rate(extra, with_expect, n)
    n = n or COMMITS
    local dir = new_dir()
    local log = open(dir, extra)
    local batch = {}
    for i = 1, 1000 do batch[i] = { value = "x" } end
    while log:high_water_mark() < n do log:append_batch(batch) end
    assert(log:commit("c", 0))
    collectgarbage()
    local commit = log.commit
    local t0 = now()
    if with_expect then
        for i = 1, n do commit(log, "c", i, { expect = i - 1 }) end
    else
        for i = 1, n do commit(log, "c", i) end
    end
    local t = now() - t0
    assert(log:committed("c") == n)
    log:close()
    C.run("rm -rf " .. C.q(dir))
    return n / t
end

-- the floor: an 8-byte offset rewritten in place, one write(2) each
local function pwrite_rate()
    local path = TMP .. "/offset"
    local f = assert(io.open(path, "w+b"))
    f:setvbuf("no")
    collectgarbage()
    local t0 = now()
    for i = 1, COMMITS do
        f:seek("set", 0)
        f:write(format("%08x", i))
    end
    local t = now() - t0
    f:close()
    os.remove(path)
    return COMMITS / t
end

-- Redis round trips are ~100x slower than a commit: fewer of them give
-- the same precision.
local REDIS_COMMITS = math.max(1000, math.min(COMMITS, 20000))

local function redis_set_rate(n)
    n = n or REDIS_COMMITS
    local c = resp.connect(redis.port)
    resp.call(c, "DEL", "c")
    collectgarbage()
    local call = resp.call
    local t0 = now()
    for i = 1, n do call(c, "SET", "c", i) end
    local t = now() - t0
    assert(tonumber(resp.call(c, "GET", "c")) == n)
    c:close()
    return n / t
end

-- high_water_mark() calls per second, and a Lua method call's
local function hwm_rate(log)
    local t0 = now()
    for _ = 1, CALLS do log:high_water_mark() end
    return CALLS / (now() - t0)
end

local function lua_call_rate()
    local obj = { n = 42 }
    function obj:high_water_mark() return self.n end
    local t0 = now()
    for _ = 1, CALLS do obj:high_water_mark() end
    return CALLS / (now() - t0)
end

-------------------------------------------------------------------------
-- Wake-up latency, writer and waiter in two processes
-------------------------------------------------------------------------

-- The waiter: reports "ready", then for each of n records takes the
-- time it holds it (woken and read) minus the time the writer stamped in
-- it, one latency (seconds) a line into arg[3].
local TAKHIN_WAITER = [[
local takhin = require("takhin")
local system = require("system")
local dir, n, out = arg[1], tonumber(arg[2]), arg[3]
local log = assert(takhin.open_log{ dir = dir, readonly = true })
local f = assert(io.open(out, "w"))
local lat = {}
io.open(dir .. "/../ready-takhin", "w"):close()
for i = 0, n - 1 do
    assert(log:wait(i, 60))
    local rec = assert(log:read(i))
    lat[#lat + 1] = system.monotime() - tonumber(rec.value)
end
f:write(table.concat(lat, "\n"), "\n")
f:close()
]]

-- The writer: waits for the waiter's ready file, then appends n records,
-- each stamped with the monotonic clock just before the call, pausing
-- arg[3] ms between two.
local TAKHIN_WRITER = [[
local takhin = require("takhin")
local system = require("system")
local proc = require("helpers.proc")
local dir, n, gap = arg[1], tonumber(arg[2]), tonumber(arg[3]) / 1000
local log = assert(takhin.open_log{ dir = dir })
assert(proc.wait_for_file(dir .. "/../ready-takhin", 3000, 0.005))
system.sleep(0.05)
for _ = 1, n do
    system.sleep(gap)
    log:append(nil, string.format("%.9f", system.monotime()))
end
log:close()
]]

local function redis_child(body)
    return "local resp = (function()\n" .. RESP .. "\nend)()\n" .. body
end

local XREAD_WAITER = redis_child([[
local system = require("system")
local port, n, out, ready = tonumber(arg[1]), tonumber(arg[2]), arg[3], arg[4]
local c = resp.connect(port)
local f = assert(io.open(out, "w"))
local lat, last = {}, "0-0"
io.open(ready, "w"):close()
while #lat < n do
    local reply = resp.call(c, "XREAD", "BLOCK", "60000", "STREAMS", "bench", last)
    local t = system.monotime()
    assert(reply, "XREAD timed out")
    for _, entry in ipairs(reply[1][2]) do
        last = entry[1]
        lat[#lat + 1] = t - tonumber(entry[2][2])
    end
end
f:write(table.concat(lat, "\n"), "\n")
f:close()
]])

local XADD_WRITER = redis_child([[
local system = require("system")
local proc = require("helpers.proc")
local port, n, gap, ready = tonumber(arg[1]), tonumber(arg[2]), tonumber(arg[3]) / 1000, arg[4]
local c = resp.connect(port)
assert(proc.wait_for_file(ready, 3000, 0.005))
system.sleep(0.05)
for _ = 1, n do
    system.sleep(gap)
    resp.call(c, "XADD", "bench", "*", "t", string.format("%.9f", system.monotime()))
end
]])

local function read_latencies(path)
    local t = {}
    local f = io.open(path, "r")
    if not f then return t end
    for line in f:lines() do t[#t + 1] = tonumber(line) end
    f:close()
    return t
end

-- Waits (bounded) for pid to end, napping without a fork so that the
-- two children have the machine to themselves.
local function wait_exit(pid, seconds)
    for _ = 1, seconds * 20 do
        if not proc.alive(pid) then return true end
        C.sleep(0.05)
    end
    return not proc.alive(pid)
end

-- Runs a waiter and a writer child; returns the waiter's latencies.
local function wake_run(waiter, wargs, writer, targs, out)
    local wpid, wout = proc.spawn_lua(TMP, waiter, wargs)
    local tpid, tout = proc.spawn_lua(TMP, writer, targs)
    local done = wait_exit(tpid, 600) and wait_exit(wpid, 60)
    if not done then
        proc.stop(wpid); proc.stop(tpid)
        error("the wake-up children did not finish:\n" .. C.read_file(wout) .. C.read_file(tout))
    end
    local lat = read_latencies(out)
    if #lat ~= WAKEUPS then
        error("the waiter measured " .. #lat .. " wake-ups; waiter:\n" .. C.read_file(wout)
              .. "\nwriter:\n" .. C.read_file(tout))
    end
    return lat
end

local function takhin_wakeups()
    local dir = new_dir()
    open(dir):close()
    os.remove(TMP .. "/ready-takhin")
    local out = TMP .. "/lat-takhin"
    return wake_run(TAKHIN_WAITER, { dir, tostring(WAKEUPS), out },
                    TAKHIN_WRITER, { dir, tostring(WAKEUPS), tostring(GAP_MS) }, out)
end

local function redis_wakeups()
    local c = resp.connect(redis.port)
    resp.call(c, "DEL", "bench")
    c:close()
    local ready, out = TMP .. "/ready-redis", TMP .. "/lat-redis"
    os.remove(ready)
    local port = format("%d", redis.port)
    return wake_run(XREAD_WAITER, { port, tostring(WAKEUPS), out, ready },
                    XADD_WRITER, { port, tostring(WAKEUPS), tostring(GAP_MS), ready }, out)
end

-------------------------------------------------------------------------
-- Main
-------------------------------------------------------------------------

local function fmt_rate(r) return fmt_int(r) .. "/s" end
local function fmt_us(s) return format("%.1f us", s * 1e6) end

local function main()
    print(format("takhin follow bench: %d commits, %d wake-ups %d ms apart, %d calls; %d reps",
                 COMMITS, WAKEUPS, GAP_MS, CALLS, REPS))
    print("  lua " .. _VERSION .. "; takhin " .. takhin.version .. "; clock: " .. C.CLOCK)
    print("  temp dir: " .. TMP)
    if not has_system then
        print("  lua-system is missing: the wake-up rows need system.monotime in both processes")
    end
    redis_start(TMP)
    if redis.pid then
        print(format("  redis-server %s (pid %d, 127.0.0.1:%d, no persistence), RESP over lua-socket",
                     Redis.version(redis), redis.pid, redis.port))
    else
        print("  redis rows skipped: " .. tostring(redis.why))
    end

    -- cursor commits
    add_pair("commit / raw pwrite", "commits", function() return commit_rate() end, pwrite_rate, true)
    if redis.pid then
        add_pair("commit / redis SET", "commits", function() return commit_rate() end,
                 function() return redis_set_rate() end, true)
        add_pair("commit(expect) / redis SET", "commits", function() return commit_rate(nil, true) end,
                 function() return redis_set_rate() end, true)
    end
    do
        local rates = {}
        local n = math.max(50, math.floor(COMMITS / 500))
        for r = 1, REPS do rates[r] = commit_rate({ sync = "always" }, false, n) end
        rows[#rows + 1] = { name = "commit(sync=always)", unit = "commits", a = median(rates), info = true,
                            note = format("%d commits a rep, one fdatasync each", n) }
    end

    -- wake-up latency
    if has_system then
        local tk = takhin_wakeups()
        local row = { name = "wait wake-up / XREAD BLOCK", latency = true,
                      a50 = quantile(tk, 0.5), a90 = quantile(tk, 0.9), a99 = quantile(tk, 0.99),
                      amax = quantile(tk, 1) }
        if redis.pid then
            local rd = redis_wakeups()
            row.b50, row.b90, row.b99 = quantile(rd, 0.5), quantile(rd, 0.9), quantile(rd, 0.99)
            row.bmax = quantile(rd, 1)
        end
        rows[#rows + 1] = row
    end

    -- high_water_mark()
    do
        local dir = new_dir()
        local log = open(dir)
        log:append(nil, "x")
        local ro = open(dir, { readonly = true })
        add_pair("high_water_mark() / Lua call", "calls", function() return hwm_rate(ro) end,
                 lua_call_rate, true)
        ro:close()
        log:close()
    end

    print()
    print(format("%-30s %-26s %-26s %s", "row (takhin / baseline)", "takhin", "baseline", "ratio (min..max)"))
    print(("-"):rep(100))
    for _, row in ipairs(rows) do
        if row.latency then
            print(format("%-30s %-26s %-26s %s", row.name .. " p50", fmt_us(row.a50),
                         row.b50 and fmt_us(row.b50) or "(skipped)",
                         row.b50 and format("%.2f (redis/takhin)", row.b50 / row.a50) or ""))
            print(format("%-30s %-26s %-26s %s", "  p90", fmt_us(row.a90),
                         row.b90 and fmt_us(row.b90) or "", row.b90 and format("%.2f", row.b90 / row.a90) or ""))
            print(format("%-30s %-26s %-26s %s", "  p99", fmt_us(row.a99),
                         row.b99 and fmt_us(row.b99) or "", row.b99 and format("%.2f", row.b99 / row.a99) or ""))
            print(format("%-30s %-26s %-26s", "  max", fmt_us(row.amax), row.bmax and fmt_us(row.bmax) or ""))
        elseif row.info then
            print(format("%-30s %-26s %-26s %s", row.name, fmt_rate(row.a), "-", "info: " .. row.note))
        else
            print(format("%-30s %-26s %-26s %.2f (%.2f..%.2f)", row.name, fmt_rate(row.a), fmt_rate(row.b),
                         row.ratio, row.lo, row.hi))
        end
    end
    print()
    print(format("rates: medians of %d reps; ratio: median of per-rep takhin/baseline (higher: takhin faster)",
                 REPS))
    print(format("wake-up: %d appends %d ms apart from a writer process to a read-only waiter process; "
                 .. "latency = the waiter holding the record - the writer's stamp before append/XADD", WAKEUPS, GAP_MS))
    print(format("summary: follow bench done (%.1f s)", now() - T_START))
end

local ok, err = xpcall(main, debug.traceback)
redis_stop()
C.rm_rf(TMP, "takhin-bench.")
if not ok then
    io.stderr:write("follow bench failed: ", tostring(err), "\n")
    os.exit(1)
end
