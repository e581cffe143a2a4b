-- bench/log_bench.lua -- takhin against baselines run side by side.
--
--   make bench                     (LUA_PATH / LUA_CPATH set by the Makefile)
--   BENCH_RECORDS=50000 make bench
--
-- Every row pairs a takhin workload with a baseline doing the same work in
-- the same process.  Each pair runs BENCH_REPS times, alternating which
-- side goes first; the table shows the median rate of each side and the
-- median of the per-repetition ratios (pairs that ran back to back, so
-- drift on a shared machine cancels out).  bench/README.md explains what
-- each row measures.  A missed target is reported, never fatal: the script
-- exits 0 unless something actually failed (an error, a wrong result).
--
-- Environment:
--   BENCH_RECORDS   records per write workload and in the read log (200000)
--   BENCH_BATCH     records per append_batch / SQLite transaction (1000)
--   BENCH_VALUE     value bytes (100); keys are 10 bytes ("key0000042")
--   BENCH_REPS      repetitions of each pair (5)
--   BENCH_LOOKUPS   random reads per repetition (50000)
--   BENCH_SQLITE_SYNC   PRAGMA synchronous for SQLite (NORMAL)
--   BENCH_RAW_READ_CRC  1: the raw sequential reader also checks each CRC (0)
--   BENCH_VERBOSE   1: print every repetition

local pack, unpack, sub, format = string.pack, string.unpack, string.sub, string.format
local concat = table.concat

-- median, the clock, the shell: bench/common.lua
local C = dofile((arg[0]:match("^(.*)/") or ".") .. "/common.lua")
local median, fmt_int = C.median, C.fmt_int

local function env_int(name, default, min) return C.env_num(name, default, min or 1, true) end

local N       = env_int("BENCH_RECORDS", 200000)
local BATCH   = env_int("BENCH_BATCH", 1000)
local VSIZE   = env_int("BENCH_VALUE", 100, 0)
local REPS    = env_int("BENCH_REPS", 5)
local LOOKUPS = env_int("BENCH_LOOKUPS", 50000)
local SQLITE_SYNC = (os.getenv("BENCH_SQLITE_SYNC") or "NORMAL"):upper()
local RAW_READ_CRC = os.getenv("BENCH_RAW_READ_CRC") == "1"
local VERBOSE = os.getenv("BENCH_VERBOSE") == "1"
local POOL = 1024                    -- distinct values, cycled by offset
local KEYLEN = 10
local FRAMED = 34 + KEYLEN + VSIZE   -- bytes of one framed record

if not ({ OFF = 1, NORMAL = 1, FULL = 1, EXTRA = 1 })[SQLITE_SYNC] then
    io.stderr:write("bench: BENCH_SQLITE_SYNC must be OFF, NORMAL, FULL or EXTRA\n")
    os.exit(2)
end

-- ------------------------------------------------------------------ clock
local now, CLOCK = C.now, C.CLOCK

-- ------------------------------------------------------------------ modules
local takhin, takhin_err
do
    local ok, m = pcall(require, "takhin")
    if ok then takhin = m else takhin_err = tostring(m):match("^[^\n]*") end
end

local luasql, luasql_err
do
    local ok, m = pcall(require, "luasql.sqlite3")
    if ok then luasql = m else luasql_err = tostring(m):match("^[^\n]*") end
end

-- CRC32C for the raw framing.  takhin.crc32c when the module loads; else a
-- table-driven Lua version so the baselines can be tried on their own
-- (their write rates are then not comparable: pure-Lua CRC is slow).
local crc32c, CRC_SRC, crc_continues
do
    local T
    local function lua_crc32c(s, crc)
        if not T then
            T = {}
            for i = 0, 255 do
                local c = i
                for _ = 1, 8 do
                    if c & 1 ~= 0 then c = (c >> 1) ~ 0x82F63B78 else c = c >> 1 end
                end
                T[i] = c
            end
        end
        crc = (crc or 0) ~ 0xFFFFFFFF
        local byte = string.byte
        for i = 1, #s do
            crc = T[(crc ~ byte(s, i)) & 0xFF] ~ (crc >> 8)
        end
        return crc ~ 0xFFFFFFFF
    end
    if takhin and takhin.crc32c then
        crc32c, CRC_SRC = takhin.crc32c, "takhin.crc32c (C)"
    else
        crc32c, CRC_SRC = lua_crc32c, "pure Lua (takhin not loaded: raw write rates are NOT comparable)"
    end
    assert(crc32c("123456789") == 0xE3069283, "crc32c check value mismatch")
    crc_continues = crc32c("56789", crc32c("1234")) == 0xE3069283
end

-- ------------------------------------------------------------------ helpers
local function rm_rf(path) C.rm_rf(path, "takhin-bench.") end

local function fmt_rate(rps)
    if not rps then return "-" end
    return format("%11s rec/s %7.1f MB/s", fmt_int(rps), rps * FRAMED / 1e6)
end

local function hex(s)
    if #s == 0 then return "" end
    return ("%02X"):rep(#s):format(s:byte(1, -1))
end

-- The segment files of a log, in offset order.
local function list_logs(dir)
    return C.list_dir(dir, "^" .. ("%d"):rep(20) .. "%.log$")
end

-- ------------------------------------------------------------------ data
local TMP = C.mktemp_dir("takhin-bench.")

math.randomseed(42)
local TS0 = os.time() * 1000
local keys, vals = {}, {}
for o = 0, N - 1 do keys[o + 1] = format("key%07d", o % 10000000) end
for j = 1, POOL do
    local b = {}
    for i = 1, VSIZE do b[i] = string.char(math.random(33, 126)) end
    vals[j] = concat(b)
end
local function val(o) return vals[o % POOL + 1] end

-- append_batch input, built once and reused: a caller has its records in
-- hand before it calls append_batch, just as the raw writer has its strings.
local batches = {}
for first = 0, N - 1, BATCH do
    local b = {}
    for o = first, math.min(first + BATCH, N) - 1 do
        b[#b + 1] = { key = keys[o + 1], value = val(o), timestamp = TS0 + o }
    end
    batches[#batches + 1] = b
end

local lookups = {}
for i = 1, LOOKUPS do lookups[i] = math.random(0, N - 1) end

-- ------------------------------------------------------------------ framing
-- One record as in docs/FORMAT.md: "<I4I4BBi8i8I4I4" header, key, value.
-- The header is packed in two parts (length+crc, then the 26 bytes the CRC
-- covers) so the CRC can be computed without copying key and value.
local frame
if crc_continues then
    frame = function(o, ts, key, value)
        local kl, vl = #key, #value
        local tail = pack("<BBi8i8I4I4", 1, 1, o, ts, kl, vl)
        local crc = crc32c(value, crc32c(key, crc32c(tail)))
        return pack("<I4I4", 30 + kl + vl, crc), tail
    end
else -- crc32c(s, crc) does not continue: checksum the concatenation
    frame = function(o, ts, key, value)
        local kl, vl = #key, #value
        local tail = pack("<BBi8i8I4I4", 1, 1, o, ts, kl, vl)
        local crc = crc32c(tail .. key .. value)
        return pack("<I4I4", 30 + kl + vl, crc), tail
    end
end

-- ------------------------------------------------------------------ workloads
-- Each returns elapsed seconds; setup and teardown are outside the interval.

local function open_log(dir)
    local log, msg, code = takhin.open_log({ dir = dir })
    if not log then error(format("open_log(%s): %s (%s)", dir, tostring(msg), tostring(code))) end
    return log
end

local function takhin_append_batch(dir)
    local log = open_log(dir)
    collectgarbage()
    local append_batch, last = log.append_batch, nil
    local t0 = now()
    for b = 1, #batches do
        local _, l = append_batch(log, batches[b])
        last = l
    end
    local t = now() - t0
    assert(last == N - 1, "append_batch: last offset " .. tostring(last))
    log:close()
    return t
end

-- Both raw writers make exactly one write(2) per batch / per record, as
-- takhin does for the .log (checked with strace; takhin also writes its
-- .index/.timeindex entries).  glibc ignores setvbuf's size when it
-- allocates the buffer itself, and a batch larger than its 4 KiB buffer
-- would be split into 3 writes; unbuffered, one file:write is one write(2).
local function raw_append_batch(path)
    local f = assert(io.open(path, "wb"))
    f:setvbuf("no")                    -- one file:write == one write(2)
    local parts = {}
    collectgarbage()
    local t0 = now()
    local o = 0
    for b = 1, #batches do
        local n = 0
        for _ = 1, #batches[b] do
            local key, value = keys[o + 1], vals[o % POOL + 1]
            local h, tail = frame(o, TS0 + o, key, value)
            parts[n + 1], parts[n + 2], parts[n + 3], parts[n + 4] = h, tail, key, value
            n = n + 4
            o = o + 1
        end
        f:write(concat(parts, "", 1, n))   -- one write(2) of the whole batch
        f:flush()                          -- (a no-op when unbuffered)
    end
    local t = now() - t0
    f:close()
    return t
end

local function takhin_append(dir)
    local log = open_log(dir)
    collectgarbage()
    local append, last = log.append, nil
    local t0 = now()
    for o = 0, N - 1 do
        last = append(log, keys[o + 1], vals[o % POOL + 1], TS0 + o)
    end
    local t = now() - t0
    assert(last == N - 1, "append: last offset " .. tostring(last))
    log:close()
    return t
end

local function raw_append(path)
    local f = assert(io.open(path, "wb"))
    f:setvbuf("full")                  -- default 4 KiB stdio buffer
    collectgarbage()
    local t0 = now()
    for o = 0, N - 1 do
        local key, value = keys[o + 1], vals[o % POOL + 1]
        local h, tail = frame(o, TS0 + o, key, value)
        f:write(h, tail, key, value)   -- four pieces into the stdio buffer
        f:flush()                      -- one write(2) of the record
    end
    local t = now() - t0
    f:close()
    return t
end

local function takhin_scan(log)
    collectgarbage()
    local n, bytes = 0, 0
    local t0 = now()
    for rec in log:records() do
        n = n + 1
        bytes = bytes + #rec.value
    end
    local t = now() - t0
    assert(n == N and bytes == N * VSIZE, format("records(): %d records, %d bytes", n, bytes))
    return t
end

-- Reads the .log files in 64 KiB chunks and unpacks every frame into its
-- offset, timestamp, key and value (key and value as Lua strings).
local function raw_scan(paths)
    collectgarbage()
    local n, bytes, expect = 0, 0, 0
    local t0 = now()
    for _, path in ipairs(paths) do
        local f = assert(io.open(path, "rb"))
        local buf, pos = "", 1
        while true do
            local chunk = f:read(65536)
            if not chunk then break end
            if pos > #buf then buf = chunk else buf = sub(buf, pos) .. chunk end
            pos = 1
            local blen = #buf
            while pos + 33 <= blen do
                local len, crc, magic, attr, off, ts, kl = unpack("<I4I4BBi8i8I4", buf, pos)
                local nxt = pos + 4 + len
                if nxt - 1 > blen then break end
                if magic ~= 1 or off ~= expect then
                    error(format("raw scan: bad record at %s:%d", path, pos))
                end
                if RAW_READ_CRC and crc32c(sub(buf, pos + 8, nxt - 1)) ~= crc then
                    error(format("raw scan: CRC mismatch at %s:%d", path, pos))
                end
                local k0 = pos + 34
                local key = (attr & 1 ~= 0) and sub(buf, k0, k0 + kl - 1) or nil
                local value = sub(buf, k0 + kl, nxt - 1)
                local _ = ts; _ = key
                n, bytes, expect = n + 1, bytes + #value, expect + 1
                pos = nxt
            end
        end
        f:close()
    end
    local t = now() - t0
    assert(n == N and bytes == N * VSIZE, format("raw scan: %d records, %d bytes", n, bytes))
    return t
end

local function takhin_random(log)
    collectgarbage()
    local read, bytes = log.read, 0
    local t0 = now()
    for i = 1, LOOKUPS do
        local r = read(log, lookups[i])
        bytes = bytes + #r.value
    end
    local t = now() - t0
    assert(bytes == LOOKUPS * VSIZE)
    return t
end

-- SQLite ------------------------------------------------------------------
local sqlite_env = luasql and luasql.sqlite3()
local keyhex, valhex = {}, {}

local function sql_exec(conn, sql)
    local r, err = conn:execute(sql)
    if r == nil then error("sqlite: " .. sql:sub(1, 60) .. ": " .. tostring(err)) end
    if type(r) == "userdata" then r:close() end
    return r
end

local function sqlite_open(path)
    local conn, err = sqlite_env:connect(path)
    if not conn then error("sqlite connect: " .. tostring(err)) end
    sql_exec(conn, "PRAGMA journal_mode=WAL")
    sql_exec(conn, "PRAGMA synchronous=" .. SQLITE_SYNC)
    return conn
end

local function sqlite_insert(path)
    local conn = sqlite_open(path)
    sql_exec(conn, "CREATE TABLE t (offset INTEGER PRIMARY KEY, ts INTEGER, key BLOB, value BLOB)")
    collectgarbage()
    local exec = conn.execute
    local t0 = now()
    local o = 0
    for b = 1, #batches do
        exec(conn, "BEGIN")
        for _ = 1, #batches[b] do
            local r = exec(conn, format("INSERT INTO t VALUES(%d,%d,X'%s',X'%s')",
                                        o, TS0 + o, keyhex[o + 1], valhex[o % POOL + 1]))
            if r ~= 1 then error("sqlite insert failed at offset " .. o) end
            o = o + 1
        end
        exec(conn, "COMMIT")
    end
    local t = now() - t0
    conn:close()
    return t
end

local function sqlite_lookup(conn)
    collectgarbage()
    local exec, bytes = conn.execute, 0
    local t0 = now()
    for i = 1, LOOKUPS do
        local cur = exec(conn, "SELECT ts, key, value FROM t WHERE offset=" .. lookups[i])
        local _, _, v = cur:fetch()
        cur:close()
        bytes = bytes + #v
    end
    local t = now() - t0
    assert(bytes == LOOKUPS * VSIZE)
    return t
end

-- ------------------------------------------------------------------ pairs
local results = {}   -- rows in print order

-- Run fa and fb, each returning its elapsed seconds, alternately REPS
-- times (odd reps fa first, even reps fb first); the row shows rates of
-- rec_a / rec_b records per run.
local function run_pair(row, fa, fb, rec_a, rec_b)
    C.run_pair(row, REPS, function(r) return rec_a / fa(r) end, function(r) return rec_b / fb(r) end,
               function(ra, rb) return ra / rb end, VERBOSE and fmt_rate)
end

-- Only one side (the other is missing): still report its rate.
local function run_one(row, f, recs, side)
    local rates = {}
    for r = 1, REPS do rates[r] = recs / f(r) end
    row[side] = median(rates)
end

-- ------------------------------------------------------------------ main
local function main()
    print(format("takhin bench: %d records of %d-byte key + %d-byte value (%d framed bytes), "
                 .. "batches of %d, %d random reads, %d reps per pair",
                 N, KEYLEN, VSIZE, FRAMED, BATCH, LOOKUPS, REPS))
    print(format("  lua %s; takhin %s; sqlite %s", _VERSION,
                 takhin and tostring(takhin.version) or ("NOT LOADED: " .. takhin_err),
                 luasql and "(luasql.sqlite3)" or ("NOT LOADED: " .. luasql_err)))
    print("  clock: " .. CLOCK .. "; raw CRC: " .. CRC_SRC
          .. (crc_continues and "" or " (no continuation: CRC over a concatenation)"))
    print("  temp dir: " .. TMP)
    io.flush()

    local rows = {
        batch  = { name = "append_batch / raw write+flush", target = 0.7 },
        single = { name = "append / raw write+flush",      target = 0.5 },
        scan   = { name = "records() / raw read+unpack",   target = 0.5 },
        random = { name = "read(random) / sqlite lookup",  target = 2.0 },
        insert = { name = "append_batch / sqlite insert",  target = 10.0 },
    }
    results = { rows.batch, rows.single, rows.scan, rows.random, rows.insert }

    local tdir = function(tag, r) return format("%s/%s-%d", TMP, tag, r) end
    local raw_path = function(tag, r) return format("%s/%s-%d.raw", TMP, tag, r) end

    -- sanity: the raw writer produces exactly takhin's bytes -------------
    local t_start = now()
    if takhin then
        local d = tdir("check", 0)
        takhin_append_batch(d)
        raw_append_batch(raw_path("check", 0))
        local logs = list_logs(d)
        local tk = {}
        for i, p in ipairs(logs) do tk[i] = C.read_file(p) end
        local same = concat(tk) == C.read_file(raw_path("check", 0))
        print(format("  raw frames byte-identical to takhin's .log: %s (%d segment(s))",
                     same and "yes" or "NO", #logs))
        if not same then error("raw framing differs from takhin's .log: fix the bench or the docs") end
        rm_rf(d); os.remove(raw_path("check", 0))
    end

    -- 1. append_batch vs raw --------------------------------------------
    local function tk_batch(r)
        local d = tdir("tk-batch", r)
        local t = takhin_append_batch(d)
        rm_rf(d)
        return t
    end
    local function raw_batch(r)
        local p = raw_path("batch", r)
        local t = raw_append_batch(p)
        os.remove(p)
        return t
    end
    if takhin then run_pair(rows.batch, tk_batch, raw_batch, N, N)
    else run_one(rows.batch, raw_batch, N, "b") end

    -- 2. single append vs raw -------------------------------------------
    local function tk_single(r)
        local d = tdir("tk-single", r)
        local t = takhin_append(d)
        rm_rf(d)
        return t
    end
    local function raw_single(r)
        local p = raw_path("single", r)
        local t = raw_append(p)
        os.remove(p)
        return t
    end
    if takhin then run_pair(rows.single, tk_single, raw_single, N, N)
    else run_one(rows.single, raw_single, N, "b") end

    -- 3. sequential read vs raw read of the same .log files --------------
    local read_dir = TMP .. "/read-log"
    local read_log, read_paths
    if takhin then
        takhin_append_batch(read_dir)
        read_log = open_log(read_dir)
        read_paths = list_logs(read_dir)
        run_pair(rows.scan, function() return takhin_scan(read_log) end,
                 function() return raw_scan(read_paths) end, N, N)
    else
        -- takhin missing: scan a file written by the raw writer instead
        local p = raw_path("read", 0)
        raw_append_batch(p)
        run_one(rows.scan, function() return raw_scan({ p }) end, N, "b")
    end

    -- 5. (run before 4: it leaves the database the lookups use) ----------
    local sq_last
    if luasql then
        for o = 0, N - 1 do keyhex[o + 1] = hex(keys[o + 1]) end
        for j = 1, POOL do valhex[j] = hex(vals[j]) end
        local function sq_ins(r)
            local p = format("%s/sq-%d.db", TMP, r)
            local t = sqlite_insert(p)
            if sq_last then rm_rf(sq_last); rm_rf(sq_last .. "-wal"); rm_rf(sq_last .. "-shm") end
            sq_last = p
            return t
        end
        if takhin then run_pair(rows.insert, tk_batch, sq_ins, N, N)
        else run_one(rows.insert, sq_ins, N, "b") end
    end

    -- 4. random reads vs SQLite primary-key lookups ----------------------
    if takhin then
        -- sanity: a few records read back as written
        for i = 1, math.min(LOOKUPS, 100) do
            local o = lookups[i]
            local rec = assert(read_log:read(o))
            assert(rec.offset == o and rec.key == keys[o + 1] and rec.value == val(o)
                   and rec.timestamp == TS0 + o, "read(" .. o .. ") returned the wrong record")
        end
    end
    local sq_conn
    if luasql and sq_last then
        sq_conn = sqlite_open(sq_last)
        sql_exec(sq_conn, "PRAGMA wal_checkpoint(TRUNCATE)")
        sql_exec(sq_conn, "PRAGMA cache_size=-65536")   -- 64 MiB: the whole table fits
        for i = 1, math.min(LOOKUPS, 100) do
            local o = lookups[i]
            local cur = sq_conn:execute("SELECT ts, key, value FROM t WHERE offset=" .. o)
            local ts, k, v = cur:fetch()
            cur:close()
            assert(ts == TS0 + o and k == keys[o + 1] and v == val(o), "sqlite lookup mismatch")
        end
        local cur = sq_conn:execute("SELECT sqlite_version()")
        rows.random.sqlite_version = cur:fetch()
        cur:close()
    end
    if takhin and sq_conn then
        run_pair(rows.random, function() return takhin_random(read_log) end,
                 function() return sqlite_lookup(sq_conn) end, LOOKUPS, LOOKUPS)
    elseif takhin then
        run_one(rows.random, function() return takhin_random(read_log) end, LOOKUPS, "a")
    elseif sq_conn then
        run_one(rows.random, function() return sqlite_lookup(sq_conn) end, LOOKUPS, "b")
    end
    if sq_conn then sq_conn:close() end
    if read_log then read_log:close() end
    local elapsed = now() - t_start

    -- table ----------------------------------------------------------------
    print()
    print(format("%-32s %-30s %-30s %7s %15s %7s %s", "workload (takhin / baseline)",
                 "takhin", "baseline", "ratio", "(min..max)", "target", "result"))
    print(("-"):rep(32 + 1 + 30 + 1 + 30 + 1 + 7 + 1 + 15 + 1 + 7 + 1 + 6))
    local met, total, missed = 0, 0, {}
    for _, row in ipairs(results) do
        local result, ratio, spread = "n/a", "-", ""
        if row.ratio then
            total = total + 1
            ratio = format("%.2f", row.ratio)
            spread = format("(%.2f..%.2f)", row.lo, row.hi)
            if row.ratio >= row.target then
                met, result = met + 1, "PASS"
            else
                result = "MISS"
                missed[#missed + 1] = format("%s %.2f < %.2f", row.name, row.ratio, row.target)
            end
        end
        print(format("%-32s %-30s %-30s %7s %15s %7s %s", row.name, fmt_rate(row.a),
                     fmt_rate(row.b), ratio, spread, format(">=%.1f", row.target), result))
    end
    print()
    print(format("rates: medians of %d reps; ratio: median of per-rep takhin/baseline ratios; "
                 .. "MB = 10^6 bytes of framed records (%d B each)", REPS, FRAMED))
    print(format("sqlite: WAL, synchronous=%s, one transaction per %d single-row INSERTs; "
                 .. "lookups with cache_size 64 MiB%s", SQLITE_SYNC, BATCH,
                 rows.random.sqlite_version and (", SQLite " .. rows.random.sqlite_version) or ""))
    print(format("raw read: %s; raw writes frame every record inside the timed loop",
                 RAW_READ_CRC and "checks every CRC" or "no CRC check (takhin's iterator checks them)"))
    if not takhin then
        print("takhin side skipped: " .. tostring(takhin_err))
    end
    if not luasql then
        print("sqlite side skipped: " .. tostring(luasql_err))
    end
    print(format("summary: %d/%d targets met%s%s (%.1f s)", met, total,
                 #missed > 0 and "; MISS: " or "", concat(missed, "; "), elapsed))
end

local ok, err = xpcall(main, debug.traceback)
rm_rf(TMP)
if not ok then
    io.stderr:write("bench failed: " .. tostring(err) .. "\n")
    os.exit(1)
end
os.exit(0)
