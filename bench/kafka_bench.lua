-- bench/kafka_bench.lua -- forwarding a log to Kafka against kcat -P.
--
--   make bench                       (LUA_PATH / LUA_CPATH set by the Makefile)
--   BENCH_KAFKA_RECORDS=50000 make bench
--
-- `takhin forward DIR --kafka ... --topic T` sending a log of
-- BENCH_KAFKA_RECORDS records, against `kcat -P` producing the same
-- records (key TAB value, one line each, from a file) to another topic of
-- the same cluster -- librdkafka's mock cluster (tests/kafka_mock.c: 3
-- brokers on 127.0.0.1, topics of 3 partitions, partition p led by broker
-- p + 1), started by this script for the run.  Both are command-line
-- tools built on librdkafka, run as processes of their own, with
-- librdkafka's defaults and the idempotent producer on; each one's time
-- is its process's wall time, start-up included, and it ends when every
-- message is confirmed by the brokers (takhin forward exits after the
-- cursor is committed; kcat after its final flush).  takhin forward also
-- reads the log, sends each record's own timestamp and a takhin-offset
-- header, and commits its cursor.
--
-- Rows: against kcat -P with a header of the same size on every message
-- (-H takhin-offset=NNNNNN: the same records, as far as kcat can make
-- them; target >= 0.8), and against plain kcat -P (key and value only;
-- shown for reference, same target).  Each pair runs BENCH_REPS times,
-- alternating which side goes first, each repetition on fresh topics (and
-- a fresh cursor); the table shows median rates and the median of the
-- per-repetition ratios.  A miss is reported, never fatal; a side whose
-- topic does not end up holding every message (the sum of its
-- partitions' end offsets) is an error.  The machine's other load moves
-- both sides; the ratio of back-to-back runs is what to read.
--
-- Skipped, with a note and exit 0, when takhin.kafka, the mock program
-- (BUILD/kafka/kafka_mock) or kcat is missing.
--
-- Environment:
--   BENCH_KAFKA_RECORDS   records per repetition (200000)
--   BENCH_VALUE           value bytes (100); keys are 10 bytes ("key0000042")
--   BENCH_REPS            repetitions (5)
--   BENCH_VERBOSE         1: print every repetition

local C = dofile((arg[0]:match("^(.*)/") or ".") .. "/common.lua")
local q, sh, capture = C.q, C.sh, C.capture

local N = C.env_num("BENCH_KAFKA_RECORDS", 200000, 1, true)
local VSIZE = C.env_num("BENCH_VALUE", 100, 0, true)
local REPS = C.env_num("BENCH_REPS", 5, 1, true)
local VERBOSE = os.getenv("BENCH_VERBOSE") == "1"
local TARGET = 0.8
local PARTITIONS = 3
local ENV = "env -u LD_PRELOAD -u ASAN_OPTIONS -u LSAN_OPTIONS -u UBSAN_OPTIONS "

local function skip(why)
    print("kafka_bench: skipped: " .. why)
    os.exit(0)
end

local ok_takhin, takhin = pcall(require, "takhin")
if not ok_takhin then skip("takhin does not load: " .. tostring(takhin)) end
if not pcall(require, "takhin.kafka") then
    skip("the takhin.kafka module is not built (librdkafka-dev, then make)")
end
local build = os.getenv("TAKHIN_BUILD") or "build"
local MOCK = build .. "/kafka/kafka_mock"
if not C.exists(MOCK) then skip(MOCK .. " is not built (librdkafka-dev, then make)") end
local KCAT = capture("command -v kcat 2>/dev/null"):gsub("%s+$", "")
if KCAT == "" then skip("kcat is not installed (make deps)") end

local tmp = C.mktemp_dir("takhin-bench.")

-------------------------------------------------------------------------
-- The mock cluster: stdin is a FIFO this process holds (bench ends, it ends)
-------------------------------------------------------------------------

local function slurp(path)
    local f = io.open(path, "rb")
    if not f then return "" end
    local data = f:read("a")
    f:close()
    return data
end

local cluster = {}
do
    local fifo, out = tmp .. "/mock.in", tmp .. "/mock.out"
    C.run("mkfifo " .. q(fifo))
    local cmd = "exec " .. ENV .. q(MOCK) .. " --brokers 3 <" .. q(fifo) .. " >" .. q(out) .. " 2>&1"
    cluster.pid = tonumber(capture("sh -c " .. q(cmd) .. " >/dev/null 2>&1 & echo $!"):match("%d+"))
    cluster.stdin = assert(io.open(fifo, "w"))
    cluster.out = out
    for _ = 1, 500 do
        cluster.bootstrap = slurp(out):match("bootstrap (%S+)\n")
        if cluster.bootstrap then break end
        C.sleep(0.01)
    end
    assert(cluster.bootstrap, "kafka_mock did not start: " .. slurp(out))
end
local seq = 0
local function command(line)
    seq = seq + 1
    cluster.stdin:write(line, "\n")
    cluster.stdin:flush()
    for _ = 1, 500 do
        local s = slurp(cluster.out)
        if s:find("\nok " .. seq .. " ", 1, true) then return end
        if s:find("\nerror " .. seq .. " ", 1, true) then error("kafka_mock: " .. line .. ": " .. s) end
        C.sleep(0.01)
    end
    error("kafka_mock does not answer " .. line)
end

-- The messages a fresh topic holds: the sum of its partitions' end
-- offsets (kcat -Q; the mock cluster keeps only the newest ~5 MB of a
-- partition, so consuming from the beginning would not count them all).
local function count_messages(topic)
    local args = {}
    for p = 0, PARTITIONS - 1 do args[#args + 1] = ("-t %s:%d:-1"):format(q(topic), p) end
    local out = capture(ENV .. "timeout 60 " .. q(KCAT) .. " -Q -b " .. q(cluster.bootstrap) .. " "
                        .. table.concat(args, " ") .. " 2>&1")
    local n, parts = 0, 0
    for off in out:gmatch("%] offset (%d+)") do n, parts = n + tonumber(off), parts + 1 end
    assert(parts == PARTITIONS, "kcat -Q: " .. out)
    return n
end

-------------------------------------------------------------------------
-- The records: a log and the same keys and values as kcat input lines
-------------------------------------------------------------------------

local T0 = 1700000000000
local POOL = {}
for i = 1, 1024 do
    local s = ("%d-"):format(i) .. ("abcdefghijklmnopqrstuvwxyz"):rep(math.ceil(VSIZE / 26) + 1)
    POOL[i] = s:sub(1, VSIZE)
end
local function key(i) return ("key%07d"):format(i % 10000000) end
local function value(i) return POOL[i % 1024 + 1] end

local log = assert(takhin.open_log{ dir = tmp .. "/log" })
do
    local lines, batch = {}, {}
    for i = 0, N - 1 do
        batch[#batch + 1] = { key = key(i), value = value(i), timestamp = T0 + i }
        lines[#lines + 1] = key(i) .. "\t" .. value(i) .. "\n"
        if #batch == 1000 or i == N - 1 then
            assert(log:append_batch(batch))
            batch = {}
        end
    end
    local f = assert(io.open(tmp .. "/records.txt", "wb"))
    f:write(table.concat(lines))
    f:close()
    log:close()                 -- takhin forward opens it (a shared writer)
end

-------------------------------------------------------------------------
-- The sides: each a process, timed from start to exit
-------------------------------------------------------------------------

local LUA = os.getenv("TAKHIN_LUA") or "lua5.4"
local ROOT = (arg[0]:match("^(.*)/bench/[^/]*$") or ".")
local topics = 0

local function fresh_topic(prefix)
    topics = topics + 1
    local topic = prefix .. topics
    command(("topic %s %d"):format(topic, PARTITIONS))
    return topic
end

local function timed(cmd, what, topic)
    local t0 = C.now()
    local ok = sh(cmd .. " >" .. q(tmp .. "/side.out") .. " 2>&1")
    local t = C.now() - t0
    assert(ok, what .. " failed: " .. slurp(tmp .. "/side.out"))
    local n = count_messages(topic)
    assert(n == N, ("%s: %d of %d messages in Kafka"):format(what, n or -1, N))
    return N / t
end

local function forward_side()
    local topic = fresh_topic("fwd")
    return timed(q(LUA) .. " " .. q(ROOT .. "/bin/takhin") .. " forward " .. q(tmp .. "/log") .. " --kafka "
                 .. q(cluster.bootstrap) .. " --topic " .. q(topic) .. " --cursor " .. q(topic),
                 "takhin forward", topic)
end

local function kcat_side(header)
    return function()
        local topic = fresh_topic("kcat")
        return timed(ENV .. q(KCAT) .. " -P -b " .. q(cluster.bootstrap) .. " -t " .. q(topic) .. " -K '\t'"
                     .. (header and (" -H " .. q("takhin-offset=" .. ("%d"):format(N - 1))) or "")
                     .. " -X enable.idempotence=true -l " .. q(tmp .. "/records.txt"), "kcat -P", topic)
    end
end

local t_start = C.now()
print(("kafka_bench: %s records (%d-byte keys, %d-byte values), %d repetitions, librdkafka %s mock "
       .. "cluster (3 brokers, %d partitions per topic), clock %s")
      :format(C.fmt_int(N), 10, VSIZE, REPS, require("takhin.kafka").librdkafka_version, PARTITIONS, C.CLOCK))
local rows = {
    { name = "forward / kcat -P -H", fb = kcat_side(true) },
    { name = "forward / kcat -P", fb = kcat_side(false) },
}
local ok, err = pcall(function()
    for _, row in ipairs(rows) do
        C.run_pair(row, REPS, forward_side, row.fb, function(a, b) return a / b end,
                   VERBOSE and function(v) return C.fmt_int(v) .. " rec/s" end or nil)
    end
end)
pcall(cluster.stdin.close, cluster.stdin)
C.sleep(0.2)
if cluster.pid then os.execute(("kill %d 2>/dev/null"):format(cluster.pid)) end
C.rm_rf(tmp, "takhin-bench.")
if not ok then
    io.stderr:write("kafka_bench: ", tostring(err), "\n")
    os.exit(1)
end

print(("%-22s %14s %14s %22s %7s %7s"):format("row", "takhin rec/s", "kcat rec/s", "ratio (min..max)",
                                              "target", "result"))
local missed = {}
for _, row in ipairs(rows) do
    local result = row.ratio >= TARGET and "PASS" or "MISS"
    if result == "MISS" then missed[#missed + 1] = row.name end
    print(("%-22s %14s %14s %22s %7s %7s"):format(row.name, C.fmt_int(row.a), C.fmt_int(row.b),
          ("x%.2f (%.2f..%.2f)"):format(row.ratio, row.lo, row.hi), (">= %.1f"):format(TARGET), result))
end
print(("summary: %d/%d targets met%s (%.1f s)"):format(#rows - #missed, #rows,
      #missed > 0 and ("; MISS: " .. table.concat(missed, "; ")) or "", C.now() - t_start))
