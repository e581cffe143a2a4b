-- bench/append_bench.lua -- appends in every writer arrangement and
-- durability mode, each against a baseline run side by side.
--
--   make bench                     (LUA_PATH / LUA_CPATH set by the Makefile)
--   BENCH_RECORDS=50000 make bench
--
-- Rows (bench/README.md, "Append bench", says what each measures):
--   append / raw write                 sync = "none", one record per call,
--                                      against one unbuffered write(2) of
--                                      the same framed bytes per record
--   shared 1 proc / exclusive          shared mode alone against exclusive
--   shared 2 procs / exclusive 1 proc  two processes together against one
--   always: 4 threads / 1 thread       group commit, threads of one process
--                                      (bench/group_commit.c)
--   always: 4 procs / 1 proc           group commit, shared-mode processes
--   always: 1 writer / write+fdatasync the floor of a durable append (C)
--   interval / none                    the cost of the interval thread
--   append_batch(interval) / XADD(everysec)  against Redis Streams with
--                                      its AOF fsynced every second,
--                                      XADDs pipelined 1000 at a time
--
-- Each pair runs BENCH_REPS times, alternating which side goes first; the
-- table shows each side's median rate and the median of the per-repetition
-- ratios with their spread.  A missed target is reported, never fatal: the
-- script exits 0 unless something failed (an error, a wrong result).
--
-- Environment:
--   BENCH_RECORDS       records per run of the sync = "none" / "interval"
--                       rows and the redis row (200000)
--   BENCH_SYNC_RECORDS  records per run of the sync = "always" rows (2000)
--   BENCH_BATCH         records per append_batch and per redis pipeline (1000)
--   BENCH_VALUE         value bytes (100); keys are 10 bytes ("key0000042")
--   BENCH_REPS          repetitions of each pair (5)
--   BENCH_VERBOSE       1: print every repetition
--   BENCH_ONLY          run only the rows whose name contains this text

local format, concat, pack = string.format, table.concat, string.pack

local here = arg[0]:match("^(.*)/") or "."
local C = dofile(here .. "/common.lua")
local Redis = dofile(here .. "/redis.lua")
local proc = require("helpers.proc")
local fmt_int = C.fmt_int

local function env_int(name, default, min) return C.env_num(name, default, min or 1, true) end

local N       = env_int("BENCH_RECORDS", 200000)
local NSYNC   = env_int("BENCH_SYNC_RECORDS", 2000)
local BATCH   = env_int("BENCH_BATCH", 1000)
local VSIZE   = env_int("BENCH_VALUE", 100, 0)
local REPS    = env_int("BENCH_REPS", 5)
local VERBOSE = os.getenv("BENCH_VERBOSE") == "1"
local ONLY = os.getenv("BENCH_ONLY") or ""
local POOL, KEYLEN = 1024, 10
local FRAMED = 34 + KEYLEN + VSIZE
local THREADS = 4                               -- the group-commit rows
NSYNC = NSYNC - NSYNC % THREADS
if NSYNC < THREADS then NSYNC = THREADS end

local now = C.now
local T_START = now()

local ok_takhin, takhin = pcall(require, "takhin")
if not ok_takhin then
    print("append bench skipped: takhin is not loadable: " .. tostring(takhin):match("^[^\n]*"))
    os.exit(0)
end
local has_system = pcall(require, "system")

-- The C program of the thread rows, built by `make bench`.
local BUILD = os.getenv("TAKHIN_BUILD")
if BUILD == nil or BUILD == "" then BUILD = "build" end
local GROUP_COMMIT = BUILD .. "/bench/group_commit"

-------------------------------------------------------------------------
-- Data: as in log_bench.lua
-------------------------------------------------------------------------

math.randomseed(42)
local TS0 = os.time() * 1000
local keys, vals = {}, {}
for o = 0, N - 1 do keys[o + 1] = format("key%07d", o % 10000000) end
for j = 1, POOL do
    local b = {}
    for i = 1, VSIZE do b[i] = string.char(math.random(33, 126)) end
    vals[j] = concat(b)
end

local batches = {}
for first = 0, N - 1, BATCH do
    local b = {}
    for o = first, math.min(first + BATCH, N) - 1 do
        b[#b + 1] = { key = keys[o + 1], value = vals[o % POOL + 1], timestamp = TS0 + o }
    end
    batches[#batches + 1] = b
end

-- One record as in docs/FORMAT.md: "<I4I4BBi8i8I4I4" header, key, value;
-- the CRC32C (takhin.crc32c) continued over key and value, no copy.
local crc32c = takhin.crc32c
local function frame(o, ts, key, value)
    local kl, vl = #key, #value
    local tail = pack("<BBi8i8I4I4", 1, 1, o, ts, kl, vl)
    local crc = crc32c(value, crc32c(key, crc32c(tail)))
    return pack("<I4I4", 30 + kl + vl, crc), tail
end

-------------------------------------------------------------------------
-- Helpers
-------------------------------------------------------------------------

local TMP = C.mktemp_dir("takhin-bench.")
local seq = 0
local function new_path(tag)
    seq = seq + 1
    return format("%s/%s-%d", TMP, tag, seq)
end
local function rm(path) C.rm_rf(path, "takhin-bench.") end

local function open_log(opts)
    local log, msg, code = takhin.open_log(opts)
    if not log then error(format("open_log(%s): %s (%s)", tostring(opts.dir), tostring(msg), tostring(code))) end
    return log
end

local function fmt_rate(r)
    if not r then return "-" end
    return format("%11s rec/s %6.1f MB/s", fmt_int(r), r * FRAMED / 1e6)
end

local rows = {}
local per_fsync = {}        -- appends per fdatasync of each sync = "always" run, by side
local function add_pair(name, target, fa, fb)
    if not name:find(ONLY, 1, true) then return end
    local row = { name = name, target = target }
    C.run_pair(row, REPS, fa, fb, function(a, b) return a / b end, VERBOSE and fmt_rate or nil)
    rows[#rows + 1] = row
    return row
end
local function skip_row(name, target, why)
    if not name:find(ONLY, 1, true) then return end
    rows[#rows + 1] = { name = name, target = target, skipped = why }
end

-------------------------------------------------------------------------
-- In-process workloads: each returns records per second
-------------------------------------------------------------------------

-- Times write(log) on a fresh log opened with extra options; write
-- returns the last offset, which must be N - 1.  Returns records per
-- second.
local function on_fresh_log(what, extra, write)
    local dir = new_path(what)
    local opts = { dir = dir }
    for k, v in pairs(extra or {}) do opts[k] = v end
    local log = open_log(opts)
    collectgarbage()
    local t0 = now()
    local last = write(log)
    local t = now() - t0
    assert(last == N - 1, what .. ": last offset " .. tostring(last))
    log:close()
    rm(dir)
    return N / t
end

-- log:append per record into a fresh log opened with extra options.
local function tk_append(extra)
    return on_fresh_log("append", extra, function(log)
        local append, last = log.append, nil
        for o = 0, N - 1 do last = append(log, keys[o + 1], vals[o % POOL + 1], TS0 + o) end
        return last
    end)
end

-- The floor: an unbuffered file, one file:write (one write(2)) of each
-- record's frame, built in the loop.
local function raw_append(path, n)
    local f = assert(io.open(path, "wb"))
    f:setvbuf("no")
    collectgarbage()
    local t0 = now()
    for o = 0, n - 1 do
        local key, value = keys[o + 1], vals[o % POOL + 1]
        local h, tail = frame(o, TS0 + o, key, value)
        f:write(h .. tail .. key .. value)
    end
    local t = now() - t0
    f:close()
    return n / t
end

local function raw_rate()
    local path = new_path("raw")
    local r = raw_append(path, N)
    os.remove(path)
    return r
end

-- log:append_batch of BATCH records into a fresh log.
local function tk_batches(extra)
    return on_fresh_log("append_batch", extra, function(log)
        local append_batch, last = log.append_batch, nil
        for b = 1, #batches do
            local _, l = append_batch(log, batches[b])
            last = l
        end
        return last
    end)
end

-------------------------------------------------------------------------
-- Writers in child processes
-------------------------------------------------------------------------

-- A child appends n records (offsets from its own count: first + i) one
-- per call.  It opens the log, says "ready", waits for the go file, which
-- holds a start time on the monotonic clock every process shares, sleeps
-- until then, and appends; then it writes "t0 t1 appends fsyncs" (its
-- clock before the first and after the last append; the log's counters).
local WRITER = [[
local takhin = require("takhin")
local system = require("system")
local dir, n, first, shared, sync, go, out, vsize =
    arg[1], tonumber(arg[2]), tonumber(arg[3]), arg[4] == "shared", arg[5], arg[6], arg[7], tonumber(arg[8])
local function fail(msg) local f = io.open(out, "w") f:write("error ", msg, "\n") f:close() os.exit(1) end
local log, msg = takhin.open_log({ dir = dir, shared = shared, sync = sync })
if not log then fail(tostring(msg)) end
local keys, vals = {}, {}
for i = 0, n - 1 do keys[i + 1] = string.format("key%07d", (first + i) % 10000000) end
for j = 1, 64 do vals[j] = string.rep(string.char(33 + j), vsize) end
io.open(out .. ".ready", "w"):close()
local start
for _ = 1, 600000 do
    local f = io.open(go, "r")
    if f then start = tonumber(f:read("a")) f:close() break end
    system.sleep(0.001)
end
if not start then fail("no go file") end
while system.monotime() < start - 0.002 do system.sleep(0.001) end
while system.monotime() < start do end
collectgarbage()
local append = log.append
local t0 = system.monotime()
for i = 1, n do
    if not append(log, keys[i], vals[i % 64 + 1]) then fail("append failed") end
end
local t1 = system.monotime()
local st = log:stats()
log:close()
local f = io.open(out, "w")
f:write(string.format("%.9f %.9f %d %d\n", t0, t1, st.appends, st.fsyncs))
f:close()
]]

-- k writer processes appending n records between them to a fresh log;
-- returns records per second (all records over the span from the first
-- start to the last end) and the log's appends and fsyncs (counted by the
-- writer that closed last).
local function procs_rate(k, n, shared, sync)
    local dir = new_path("procs")
    open_log({ dir = dir }):close()
    local go = dir .. ".go"
    local pids, outs = {}, {}
    local per = n // k
    for w = 1, k do
        outs[w] = format("%s.out%d", dir, w)
        pids[w] = proc.spawn_lua(TMP, WRITER, { dir, tostring(per), tostring((w - 1) * per),
                                               shared and "shared" or "exclusive", sync, go, outs[w],
                                               tostring(VSIZE) })
    end
    for w = 1, k do
        local ready = false
        for _ = 1, 30000 do
            if C.exists(outs[w] .. ".ready") or not proc.alive(pids[w]) then ready = true break end
            C.sleep(0.001)
        end
        if not ready then error("writer " .. w .. " did not get ready") end
    end
    local f = assert(io.open(go .. ".tmp", "w"))
    f:write(format("%.9f", now() + 0.05))
    f:close()
    assert(os.rename(go .. ".tmp", go))
    for w = 1, k do
        for _ = 1, 600000 do
            if not proc.alive(pids[w]) then break end
            C.sleep(0.002)
        end
        if proc.alive(pids[w]) then proc.stop(pids[w]) error("writer " .. w .. " did not finish") end
    end
    local t0, t1, appends, fsyncs = math.huge, -math.huge, 0, 0
    for w = 1, k do
        local line = C.exists(outs[w]) and C.read_file(outs[w]) or "(no output)"
        local a, b, na, nf = line:match("^(%S+) (%S+) (%d+) (%d+)")
        if not a then error("writer " .. w .. ": " .. line) end
        t0, t1 = math.min(t0, tonumber(a)), math.max(t1, tonumber(b))
        if tonumber(na) >= appends then appends, fsyncs = tonumber(na), tonumber(nf) end
    end
    local ro = open_log({ dir = dir, readonly = true })
    local hwm = ro:high_water_mark()
    ro:close()
    if hwm ~= per * k then error(format("%d writers appended %d records, not %d", k, hwm, per * k)) end
    rm(dir)
    return per * k / (t1 - t0), appends, fsyncs
end

-------------------------------------------------------------------------
-- The C program: threads of one process, and the raw fdatasync floor
-------------------------------------------------------------------------

local function group_commit(args)
    local out = C.capture(C.q(GROUP_COMMIT) .. " " .. args .. " 2>&1")
    local n, s, a, f = out:match("records (%d+) seconds (%S+) appends (%d+) fsyncs (%d+)")
    if not n then error("group_commit " .. args .. ": " .. out) end
    return tonumber(n) / tonumber(s), tonumber(a), tonumber(f)
end

local function gc_takhin(threads)
    local dir = new_path("gc")
    local r, a, f = group_commit(format("takhin %s %d %d %d", C.q(dir), NSYNC, threads, VSIZE))
    rm(dir)
    return r, a, f
end

local function gc_raw()
    local path = new_path("gc-raw")
    local r = group_commit(format("raw %s %d %d", C.q(path), NSYNC, VSIZE))
    os.remove(path)
    return r
end

-- The same N framed records pwrite(2)n into one file by k processes, the
-- next record's number from a shared atomic counter (no lock, no fsync):
-- the floor for k shared-mode writers.
local function raw_procs(k)
    local path = new_path("raw-procs")
    local r = group_commit(format("rawprocs %s %d %d %d", C.q(path), N, k, VSIZE))
    os.remove(path)
    return r
end

-------------------------------------------------------------------------
-- Redis Streams
-------------------------------------------------------------------------

local redis = {}
local resp = Redis.resp

-- XADD bench * k <key> v <value> for every record, BATCH commands per
-- pipeline, then their replies (the entries' ids); returns records per
-- second.  Each command is encoded in the timed loop, as a client does,
-- with its constant part encoded once (Redis.resp.encode, which takes
-- any command, costs ~8 us a record in Lua: ten times Redis' own time).
local XADD = "*7\r\n$4\r\nXADD\r\n$5\r\nbench\r\n$1\r\n*\r\n$1\r\nk\r\n$"
assert(XADD .. "10\r\nkey0000000\r\n$1\r\nv\r\n$1\r\nx\r\n"
       == Redis.resp.encode("XADD", "bench", "*", "k", "key0000000", "v", "x"))

local function redis_xadd()
    local c = resp.connect(redis.port)
    resp.call(c, "DEL", "bench")
    resp.call(c, "BGREWRITEAOF")                -- the AOF restarts small each time
    for _ = 1, 3000 do
        local info = resp.call(c, "INFO", "persistence")
        if info:match("aof_rewrite_in_progress:0") and info:match("aof_rewrite_scheduled:0") then break end
        C.sleep(0.01)
    end
    collectgarbage()
    local pipeline = resp.pipeline
    local t0 = now()
    for b = 1, #batches do
        local batch, cmds = batches[b], {}
        for i = 1, #batch do
            local key, value = batch[i].key, batch[i].value
            cmds[i] = XADD .. #key .. "\r\n" .. key .. "\r\n$1\r\nv\r\n$" .. #value .. "\r\n" .. value .. "\r\n"
        end
        pipeline(c, concat(cmds), #batch)
    end
    local t = now() - t0
    local len = resp.call(c, "XLEN", "bench")
    c:close()
    if len ~= N then error("XLEN bench is " .. tostring(len) .. ", not " .. N) end
    return N / t
end

-------------------------------------------------------------------------
-- Main
-------------------------------------------------------------------------

local function check_framing()
    local dir, path, n = new_path("check"), new_path("check-raw"), math.min(N, 1000)
    local log = open_log({ dir = dir })
    for o = 0, n - 1 do log:append(keys[o + 1], vals[o % POOL + 1], TS0 + o) end
    log:close()
    raw_append(path, n)
    local same = C.read_file(dir .. "/" .. ("0"):rep(20) .. ".log") == C.read_file(path)
    print(format("  raw frames byte-identical to takhin's .log: %s", same and "yes" or "NO"))
    if not same then error("raw framing differs from takhin's .log: fix the bench") end
    rm(dir)
    os.remove(path)
    if C.exists(GROUP_COMMIT) then
        local out = C.capture(format("%s check %s %s %d %d 2>&1", C.q(GROUP_COMMIT), C.q(dir), C.q(path),
                                     math.min(NSYNC, 500), VSIZE))
        print("  group_commit raw frames byte-identical to takhin's .log: "
              .. (out:match("^identical") and "yes" or "NO"))
        if not out:match("^identical") then error("group_commit check: " .. out) end
        rm(dir)
        os.remove(path)
    end
end

local function main()
    print(format("takhin append bench: %d records of %d-byte key + %d-byte value (%d framed bytes); "
                 .. "sync = \"always\" rows %d records; batches of %d; %d reps per pair",
                 N, KEYLEN, VSIZE, FRAMED, NSYNC, BATCH, REPS))
    print("  lua " .. _VERSION .. "; takhin " .. takhin.version .. "; clock: " .. C.CLOCK)
    print("  temp dir: " .. TMP)
    check_framing()
    redis = Redis.start(C, TMP, { "--appendonly", "yes", "--appendfsync", "everysec",
                                  "--auto-aof-rewrite-percentage", "0" })
    if redis.pid then
        print(format("  redis-server %s (pid %d, 127.0.0.1:%d, appendonly yes, appendfsync everysec), "
                     .. "RESP over lua-socket", Redis.version(redis), redis.pid, redis.port))
    else
        print("  redis row skipped: " .. tostring(redis.why))
    end
    io.flush()

    -- 1. single appends against raw writes
    add_pair("append / raw write", 0.8, function() return tk_append() end, raw_rate)

    -- 2., 3. shared mode
    add_pair("shared 1 proc / exclusive", 0.8, function() return tk_append({ shared = true }) end,
             function() return tk_append() end)
    if has_system then
        add_pair("shared 2 procs / exclusive 1 proc", 0.8,
                 function() return (procs_rate(2, N, true, "none")) end,
                 function() return (procs_rate(1, N, false, "none")) end)
    else
        skip_row("shared 2 procs / exclusive 1 proc", 0.8, "lua-system is missing")
    end
    -- info: more processes than CPUs (nginx with other work on the
    -- machine): a shared append reserves its place only while fewer are
    -- under way than there are CPUs, else it appends under the lock
    if has_system then
        for _, k in ipairs({ 4, 8 }) do
            add_pair(format("shared %d procs / exclusive 1 proc", k), nil,
                     function() return (procs_rate(k, N, true, "none")) end,
                     function() return (procs_rate(1, N, false, "none")) end)
        end
    end
    -- info: what two processes writing one file get from the kernel at
    -- best, and how close shared mode comes to it
    if C.exists(GROUP_COMMIT) then
        add_pair("floor: raw 2 procs / raw 1 proc", nil, function() return raw_procs(2) end,
                 function() return raw_procs(1) end)
        if has_system then
            add_pair("shared 2 procs / raw 2 procs", nil,
                     function() return (procs_rate(2, N, true, "none")) end,
                     function() return raw_procs(2) end)
        end
    end

    -- 4., 5., 6. sync = "always"
    local function note_fsyncs(tag, r, a, f)
        per_fsync[tag] = per_fsync[tag] or {}
        per_fsync[tag][#per_fsync[tag] + 1] = a / math.max(f, 1)
        return r
    end
    if C.exists(GROUP_COMMIT) then
        add_pair("always: 4 threads / 1 thread", 2.0,
                 function() return note_fsyncs("threads", gc_takhin(THREADS)) end,
                 function() return note_fsyncs("thread", gc_takhin(1)) end)
    else
        skip_row("always: 4 threads / 1 thread", 2.0, GROUP_COMMIT .. " is missing (make bench builds it)")
    end
    if has_system then
        add_pair("always: 4 procs / 1 proc", 2.0,
                 function() return note_fsyncs("procs", procs_rate(THREADS, NSYNC, true, "always")) end,
                 function() return note_fsyncs("proc", procs_rate(1, NSYNC, false, "always")) end)
    else
        skip_row("always: 4 procs / 1 proc", 2.0, "lua-system is missing")
    end
    if C.exists(GROUP_COMMIT) then
        add_pair("always: 1 writer / write+fdatasync", 0.8, function() return (gc_takhin(1)) end, gc_raw)
    else
        skip_row("always: 1 writer / write+fdatasync", 0.8, GROUP_COMMIT .. " is missing (make bench builds it)")
    end

    -- 7. the interval thread
    add_pair("interval / none", 0.8, function() return tk_append({ sync = "interval" }) end,
             function() return tk_append() end)

    -- 8. Redis Streams
    if redis.pid then
        add_pair("append_batch(interval) / XADD(everysec)", 1.0,
                 function() return tk_batches({ sync = "interval" }) end, redis_xadd)
    else
        skip_row("append_batch(interval) / XADD(everysec)", 1.0, redis.why)
    end

    print()
    print(format("%-40s %-29s %-29s %6s %13s %6s %s", "workload (takhin / baseline)", "takhin",
                 "baseline", "ratio", "(min..max)", "target", "result"))
    print(("-"):rep(40 + 29 + 29 + 6 + 13 + 6 + 6 + 7))
    local met, total, missed = 0, 0, {}
    for _, row in ipairs(rows) do
        if row.skipped then
            print(format("%-40s %s", row.name, "skipped: " .. row.skipped))
        elseif not row.target then
            print(format("%-40s %-29s %-29s %6.2f %13s %6s %s", row.name, fmt_rate(row.a), fmt_rate(row.b),
                         row.ratio, format("(%.2f..%.2f)", row.lo, row.hi), "-", "info"))
        else
            total = total + 1
            local result = "PASS"
            if row.ratio >= row.target then met = met + 1
            else
                result = "MISS"
                missed[#missed + 1] = format("%s %.2f < %.1f", row.name, row.ratio, row.target)
            end
            print(format("%-40s %-29s %-29s %6.2f %13s %6s %s", row.name, fmt_rate(row.a), fmt_rate(row.b),
                         row.ratio, format("(%.2f..%.2f)", row.lo, row.hi), format(">=%.1f", row.target), result))
        end
    end
    print()
    print(format("rates: medians of %d reps; ratio: median of per-rep takhin/baseline ratios; "
                 .. "MB = 10^6 bytes of framed records (%d B each)", REPS, FRAMED))
    local function apf(tag)
        local m = per_fsync[tag] and C.median(per_fsync[tag])
        return m and format("%.1f", m) or "-"
    end
    if next(per_fsync) then
        print(format("sync = \"always\": appends per fdatasync (median): 4 threads %s, 1 thread %s, "
                     .. "4 procs %s, 1 proc %s", apf("threads"), apf("thread"), apf("procs"), apf("proc")))
    end
    print("processes: started and opened untimed, released together at a start time on the "
          .. "monotonic clock; rate = all records / (last end - first start)")
    print("floor rows (info): bench/group_commit rawprocs -- k processes pwrite the same framed records "
          .. "into one file, offsets from a shared atomic counter, no lock, no fsync")
    print(format("summary: %d/%d targets met%s%s (%.1f s)", met, total,
                 #missed > 0 and "; MISS: " or "", concat(missed, "; "), now() - T_START))
end

local ok, err = xpcall(main, debug.traceback)
Redis.stop(C, redis)
C.rm_rf(TMP, "takhin-bench.")
if not ok then
    io.stderr:write("append bench failed: ", tostring(err), "\n")
    os.exit(1)
end
os.exit(0)
