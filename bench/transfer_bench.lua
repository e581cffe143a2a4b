-- bench/transfer_bench.lua -- sm:export / sm:import against tar and zstd, side by side.
--
--   make bench                     (runs the other benches, then this)
--   LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='build/?.so;;' lua5.4 bench/transfer_bench.lua
--   BENCH_XFER_GB=0.25 make bench  (smaller / faster)
--
-- Builds one log of JSON-like records (>= BENCH_XFER_GB GiB, default 64 MiB
-- segments) and one link-mode snapshot of it, then pairs each takhin
-- operation with the tar (and zstd) command doing the same work on the
-- snapshot's directory, BENCH_XFER_REPS times, alternating which side goes
-- first; the table shows the median time of each side and the median of
-- the per-repetition ratios (baseline time / takhin time).  Peak memory is
-- measured in child processes (VmHWM of /proc/self/status) exporting and
-- importing the whole snapshot.  bench/README.md explains each row.  A
-- missed target is reported, never fatal: the script exits 0 unless
-- something failed (an error, a wrong result).
--
-- Environment:
--   BENCH_XFER_GB      size of the log in GiB, may be fractional (1)
--   BENCH_XFER_REPS    repetitions of each pair (3)
--   BENCH_XFER_LEVEL   zstd level of both sides (3)
--   BENCH_VERBOSE      1: print every repetition
--   TMPDIR             where the data goes (else the larger of /tmp, /var/tmp)

local format, concat = string.format, table.concat

local C = dofile((arg[0]:match("^(.*)/") or ".") .. "/common.lua")
local env_num, fmt_int, exists = C.env_num, C.fmt_int, C.exists
local q, sh, capture = C.q, C.run, C.capture

local GB      = env_num("BENCH_XFER_GB", 1, 0.01)
local REPS    = env_num("BENCH_XFER_REPS", 3, 1, true)
local LEVEL   = env_num("BENCH_XFER_LEVEL", 3, 1, true)
local VERBOSE = os.getenv("BENCH_VERBOSE") == "1"
local GIB     = 1024 * 1024 * 1024
local RSS_LIMIT_KB = 64 * 1024

local now, CLOCK = C.now, C.CLOCK

local ok_tk, takhin = pcall(require, "takhin")
if not ok_tk then
    print("takhin transfer bench: skipped, takhin not loaded: " .. tostring(takhin):match("^[^\n]*"))
    os.exit(0)
end
for _, tool in ipairs({ "tar", "zstd" }) do
    if not C.sh("command -v " .. tool .. " >/dev/null 2>&1") then
        print("takhin transfer bench: skipped, " .. tool .. " is not installed (make deps)")
        os.exit(0)
    end
end

-- ------------------------------------------------------------------ helpers
local function rm_rf(path) C.rm_rf(path, "takhin-bench.") end

local fmt_time, fmt_cell, fmt_size, check = C.fmt_time, C.fmt_cell, C.fmt_size, C.check

local function file_size(path)
    local f = assert(io.open(path, "rb"))
    local n = f:seek("end")
    f:close()
    return n
end

-- log + plain archive + zstd archive + one import or extraction at a time
local NEED = GB * GIB * 3.6 + 256 * 1024 * 1024
local TMP, TMP_AVAIL = C.bench_tmp("transfer", NEED, { "/tmp", "/var/tmp" },
                                  "lower BENCH_XFER_GB or set TMPDIR")

-- ------------------------------------------------------------------ data
-- JSON-like records, as a service would log them: a few fields, some
-- repeated words, numbers that differ from record to record.
local EVENTS = { "login", "purchase", "logout", "view", "search", "add_to_cart", "checkout" }
local COUNTRIES = { "DE", "FR", "US", "JP", "BR", "IN", "NG", "CA" }
local TS0 = 1700000000000

local function build_log(dir)
    local log = check("open_log " .. dir, takhin.open_log({ dir = dir }))
    local target, bytes, o = GB * GIB, 0, 0
    local rnd = math.random
    math.randomseed(7)
    while bytes < target do
        local b = {}
        for i = 1, 2000 do
            local v = format('{"id":%d,"user":"user-%06d","event":"%s","country":"%s",'
                .. '"amount":%d.%02d,"session":"%08x%08x","ts":%d,"items":[%d,%d,%d],"ok":%s}',
                o, rnd(1, 200000), EVENTS[rnd(#EVENTS)], COUNTRIES[rnd(#COUNTRIES)],
                rnd(0, 9999), rnd(0, 99), rnd(0, 0x7fffffff), rnd(0, 0x7fffffff), TS0 + o,
                rnd(1, 5000), rnd(1, 5000), rnd(1, 5000), rnd(2) == 1 and "true" or "false")
            b[i] = { key = format("user-%06d", o % 200000), value = v, timestamp = TS0 + o }
            bytes = bytes + 34 + 11 + #v
            o = o + 1
        end
        check("append_batch", log:append_batch(b))
    end
    return log
end

-- ------------------------------------------------------------------ pairs
local function run_pair(row, fa, fb)
    local ok, err = pcall(C.run_pair, row, REPS, fa, fb, function(ta, tb) return tb / ta end,
                          VERBOSE and fmt_time)
    if not ok then
        row.err = tostring(err):gsub("^[^:]*:%d+: ", ""):match("^[^\n]*")
        row.a, row.b, row.ratio = nil, nil, nil
    end
end

-- Runs cmd through the shell, timed; before and after run untimed.
local function timed_sh(cmd, after, before)
    return function()
        if before then before() end
        collectgarbage()
        local t0 = now()
        sh(cmd)
        local t = now() - t0
        if after then after() end
        return t
    end
end

-- ------------------------------------------------------------------ memory
-- A child lua5.4 doing one export or import of the whole snapshot; its
-- peak resident set (VmHWM) in KiB.
local LUA = os.getenv("TAKHIN_LUA") or "lua5.4"
local CHILD = [[
local takhin = require("takhin")
local op, logdir, snapdir, a, b, zstd = arg[1], arg[2], arg[3], arg[4], arg[5], arg[6]
local sm = assert(takhin.snapshot_manager(logdir, { dir = snapdir }))
if op == "export" then
    assert(sm:export(a, b, zstd == "1" and { compress = "zstd", level = ]] .. LEVEL .. [[ } or nil))
else
    local s = assert(sm:import(a))
    assert(sm:delete(s.id))
end
local st = assert(io.open("/proc/self/status")):read("a")
io.write(st:match("VmHWM:%s*(%d+)"), "\n")
]]

local function peak_rss(...)
    local script = TMP .. "/rss_child.lua"
    local f = assert(io.open(script, "w"))
    f:write(CHILD)
    f:close()
    local args = {}
    for i, v in ipairs({ ... }) do args[i] = q(v) end
    local out = capture(q(LUA) .. " " .. q(script) .. " " .. concat(args, " ") .. " 2>&1")
    local kb = tonumber(out:match("^(%d+)\n$"))
    if not kb then error("memory child: " .. out) end
    return kb
end

-- ------------------------------------------------------------------ main
local log, sm, sm_in

local function main()
    print(format("takhin transfer bench: JSON-like records, default 64 MiB segments, %d reps per pair, "
                 .. "zstd level %d", REPS, LEVEL))
    print(format("  lua %s; takhin %s; clock: %s", _VERSION, tostring(takhin.version), CLOCK))
    print(format("  temp dir: %s (%s free); page cache warm: nothing is dropped", TMP,
                 fmt_size(TMP_AVAIL)))
    io.flush()

    local logdir, snapdir = TMP .. "/log", TMP .. "/snaps"
    local indir, inlog = TMP .. "/imported", TMP .. "/other"
    local tarfile, zstfile = TMP .. "/snapshot.tar", TMP .. "/snapshot.tar.zst"
    local extract = TMP .. "/extracted"
    local t_start = now()
    log = build_log(logdir)
    sm = check("snapshot_manager", takhin.snapshot_manager(logdir, { dir = snapdir }))
    local snap = check("create", sm:create(log))
    local bytes = snap.total_size
    local sdir = "snapshot-" .. snap.id
    sh("sync")
    print(format("  log: %s in %d segments (%s records), built in %.1f s; snapshot %s (link mode)",
                 fmt_size(bytes), snap.num_segments, fmt_int(snap.high_water_mark),
                 now() - t_start, snap.id))

    -- the archives for the import rows, and the compression ratios
    check("export", sm:export(snap.id, tarfile))
    check("export zstd", sm:export(snap.id, zstfile, { compress = "zstd", level = LEVEL }))
    local tar_zst = tonumber(capture(format("tar -cf - -C %s %s | zstd -%d | wc -c", q(snapdir),
                                            q(sdir), LEVEL)))
    local plain_bytes, zst_bytes = file_size(tarfile), file_size(zstfile)
    assert(C.sh("mkdir -p " .. q(inlog)))
    sm_in = check("snapshot_manager (import)", takhin.snapshot_manager(inlog, { dir = indir }))
    sh("sync")
    io.flush()

    local tar_c = format("tar -cf - -C %s %s", q(snapdir), q(sdir))
    local function clean_extract() rm_rf(extract); sh("sync") end
    local function tk_export(dest, opts, after)
        return function()
            collectgarbage()
            local t0 = now()
            local target = dest == "pipe" and assert(io.popen("cat > /dev/null", "w")) or dest
            local okx, n, code = sm:export(snap.id, target, opts)
            if dest == "pipe" then target:close() end
            local t = now() - t0
            check("export", okx, n, code)
            if after then after() end
            return t
        end
    end
    local function tk_import(file)
        return function()
            collectgarbage()
            local t0 = now()
            local s, msg, code = sm_in:import(file)
            local t = now() - t0
            check("import", s, msg, code)
            assert(s.high_water_mark == snap.high_water_mark, "import: wrong high water mark")
            check("delete", sm_in:delete(s.id))
            sh("sync")
            return t
        end
    end
    local function tar_x(flags, sync)
        return timed_sh(format("mkdir %s && tar %s -xf %s -C %s%s", q(extract), flags,
                               q(flags == "" and tarfile or zstfile), q(extract),
                               sync and format(" && sync %s/* %s", q(extract), q(extract)) or ""),
                        clean_extract, clean_extract)
    end

    local rows = {
        { name = "export / tar -cf - | cat", target = 0.8, a = tk_export("pipe"),
          b = timed_sh(tar_c .. " | cat > /dev/null") },
        { name = "export / tar -cf - >/dev/null", info = true, a = tk_export("/dev/null"),
          b = timed_sh(tar_c .. " > /dev/null") },
        { name = format("export(zstd) / tar | zstd -%d", LEVEL), target = 1,
          a = tk_export("/dev/null", { compress = "zstd", level = LEVEL }),
          b = timed_sh(format("%s | zstd -%d > /dev/null", tar_c, LEVEL)) },
        { name = "import / tar -xf", target = 0.7, a = tk_import(tarfile), b = tar_x("") },
        { name = "import / tar -xf + sync", info = true, a = tk_import(tarfile), b = tar_x("", true) },
        { name = "import(zstd) / tar --zstd -xf", info = true, a = tk_import(zstfile),
          b = tar_x("--zstd") },
    }
    for _, row in ipairs(rows) do
        run_pair(row, row.a, row.b)
        io.flush()
    end

    -- memory, in children
    local mem = {}
    local function measure(name, ...)
        local okm, kb = pcall(peak_rss, ...)
        mem[#mem + 1] = { name = name, kb = okm and kb or nil, err = not okm and tostring(kb) or nil }
    end
    measure("export", "export", logdir, snapdir, snap.id, "/dev/null", "0")
    measure(format("export(zstd -%d)", LEVEL), "export", logdir, snapdir, snap.id, "/dev/null", "1")
    measure("import", "import", inlog, indir, tarfile)
    measure("import(zstd)", "import", inlog, indir, zstfile)
    sh("sync")
    local elapsed = now() - t_start

    -- table ----------------------------------------------------------------
    print()
    print(format("%-32s %-27s %-27s %7s %15s %7s %s", "operation (takhin / baseline)",
                 "takhin", "baseline", "ratio", "(min..max)", "target", "result"))
    print(("-"):rep(126))
    local met, total, missed, errors = 0, 0, {}, {}
    for _, row in ipairs(rows) do
        local tgt = row.info and "-" or format(">=%.1f", row.target)
        if not row.info then total = total + 1 end
        if row.err then
            errors[#errors + 1] = format("%s: %s", row.name, row.err)
            print(format("%-32s %-27s %-27s %7s %15s %7s %s", row.name, "-", "-", "-", "", tgt, "ERROR"))
        else
            local result = "info"
            if not row.info then
                if row.ratio >= row.target then met, result = met + 1, "PASS"
                else
                    result = "MISS"
                    missed[#missed + 1] = format("%s %.2f < %.1f", row.name, row.ratio, row.target)
                end
            end
            print(format("%-32s %-27s %-27s %7.2f %15s %7s %s", row.name, fmt_cell(row.a, bytes),
                         fmt_cell(row.b, bytes), row.ratio, format("(%.2f..%.2f)", row.lo, row.hi),
                         tgt, result))
        end
    end
    print()
    print(format("%-32s %12s %9s %s", "peak RSS (child process)", "VmHWM", "target", "result"))
    print(("-"):rep(64))
    for _, m in ipairs(mem) do
        total = total + 1
        if m.err then
            errors[#errors + 1] = format("peak RSS %s: %s", m.name, m.err)
            print(format("%-32s %12s %9s %s", m.name, "-", "< 64 MiB", "ERROR"))
        else
            local pass = m.kb < RSS_LIMIT_KB
            if pass then met = met + 1 else missed[#missed + 1] = "peak RSS " .. m.name end
            print(format("%-32s %9.1f MiB %9s %s", m.name, m.kb / 1024, "< 64 MiB", pass and "PASS" or "MISS"))
        end
    end
    print()
    print(format("compression (zstd -%d) of the %s snapshot: takhin %s (%.2fx), tar | zstd %s (%.2fx); "
                 .. "plain archive %s", LEVEL, fmt_size(bytes), fmt_size(zst_bytes), bytes / zst_bytes,
                 fmt_size(tar_zst), bytes / tar_zst, fmt_size(plain_bytes)))
    print(format("times: medians of %d reps; MB/s = 10^6 bytes of the snapshot's files (%s) per second",
                 REPS, fmt_size(bytes)))
    print("ratio: median of per-rep ratios, baseline time / takhin time")
    print("export checks every file's CRC32C as it reads it; GNU tar does not read the files at all when "
          .. "its archive is /dev/null (that row is info)")
    print("import checks every file and fsyncs what it writes before publishing; tar -xf does neither "
          .. "(+ sync: coreutils `sync FILE...`); between runs the output is deleted and `sync` runs, untimed")
    for _, e in ipairs(errors) do print("ERROR " .. e) end
    print(format("summary: %d/%d targets met%s%s%s (%.1f s)", met, total,
                 #missed > 0 and "; MISS: " or "", concat(missed, "; "),
                 #errors > 0 and format("; %d row(s) failed", #errors) or "", elapsed))
    return #errors
end

local okm, res = pcall(main)
if sm_in then sm_in:close() end
if sm then sm:close() end
if log then log:close() end
collectgarbage()
rm_rf(TMP)
if not okm then
    io.stderr:write("transfer bench failed: ", tostring(res), "\n")
    os.exit(1)
end
os.exit(res == 0 and 0 or 1)
