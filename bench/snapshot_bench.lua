-- bench/snapshot_bench.lua -- takhin snapshots against cp -a and cat, side by side.
--
--   make bench                     (runs bench/log_bench.lua, then this)
--   LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='build/?.so;;' lua5.4 bench/snapshot_bench.lua
--   BENCH_SNAP_GB=0.25 make bench  (smaller / faster)
--
-- Builds two logs once, with append_batch of large values and the default
-- 64 MiB max_segment_size: log A (>= BENCH_SNAP_GB GiB) and log B
-- (BENCH_SNAP_FACTOR times as many sealed segments), both ending with an
-- active segment of the same size.  Then every row pairs a takhin
-- operation with a baseline doing the same work on the same files, run
-- BENCH_SNAP_REPS times, alternating which side goes first; the table shows
-- the median time of each side and the median of the per-repetition
-- ratios.  Nothing is dropped from the page cache: both sides read warm
-- data.  What a run creates (snapshots, restores, copies) is deleted and
-- `sync` is run outside the timed interval before the next run, so each
-- timed section starts with no dirty data pending and disk use stays at
-- the two logs plus one copy.  bench/README.md explains each row.  A missed
-- target is reported, never fatal: the script exits 0 unless something
-- actually failed (an error, a wrong result).
--
-- Environment:
--   BENCH_SNAP_GB       size of log A in GiB, may be fractional (1)
--   BENCH_SNAP_FACTOR   log B has this many times log A's sealed segments (4)
--   BENCH_SNAP_VALUE    value bytes (65536); keys are 10 bytes
--   BENCH_SNAP_ACTIVE_MB  MiB in the active segment of both logs (1)
--   BENCH_SNAP_REPS     repetitions of each pair (5)
--   BENCH_VERBOSE       1: print every repetition
--   TMPDIR              where the data goes (else the larger of /tmp, /var/tmp)

local format, concat = string.format, table.concat

-- median, the clock, the shell: bench/common.lua
local C = dofile((arg[0]:match("^(.*)/") or ".") .. "/common.lua")
local env_num, median, fmt_int, exists = C.env_num, C.median, C.fmt_int, C.exists
local sh_quote, sh, list_dir = C.q, C.run, C.list_dir

local GB      = env_num("BENCH_SNAP_GB", 1, 0.01)
local FACTOR  = env_num("BENCH_SNAP_FACTOR", 4, 1, true)
local VSIZE   = env_num("BENCH_SNAP_VALUE", 65536, 1, true)
local ACTIVE_MB = env_num("BENCH_SNAP_ACTIVE_MB", 1, 0)
local REPS    = env_num("BENCH_SNAP_REPS", 5, 1, true)
local VERBOSE = os.getenv("BENCH_VERBOSE") == "1"
local KEYLEN  = 10
local FRAMED  = 34 + KEYLEN + VSIZE          -- bytes of one framed record
local MAX_SEG = 64 * 1024 * 1024             -- takhin's default max_segment_size
local PER_SEG = MAX_SEG // FRAMED            -- records in a sealed segment
local BATCH   = math.max(1, (1024 * 1024) // FRAMED)   -- ~1 MiB per append_batch
local GIB     = 1024 * 1024 * 1024
local NCPU    = tonumber((C.capture("nproc 2>/dev/null"):match("%d+"))) or 1

assert(FRAMED <= 16 * 1024 * 1024, "BENCH_SNAP_VALUE: a record must fit max_record_size (16 MiB)")

-- ------------------------------------------------------------------ clock
local now, CLOCK = C.now, C.CLOCK

-- ------------------------------------------------------------------ module
local ok_tk, takhin = pcall(require, "takhin")
if not ok_tk then
    -- Every row has a takhin side: without the module there is nothing to compare.
    print("takhin snapshot bench: skipped, takhin not loaded: "
          .. tostring(takhin):match("^[^\n]*"))
    os.exit(0)
end

-- ------------------------------------------------------------------ helpers
local function rm_rf(path) C.rm_rf(path, "takhin-bench.") end

local fmt_time, fmt_cell, fmt_size, check = C.fmt_time, C.fmt_cell, C.fmt_size, C.check

-- ------------------------------------------------------------------ sizes
-- Log A: enough full segments that, with the active segment, it holds at
-- least GB GiB.  Log B: FACTOR times as many full segments, same active.
local SEG_BYTES = PER_SEG * FRAMED
local ACTIVE_RECS = math.ceil(ACTIVE_MB * 1024 * 1024 / FRAMED)
if ACTIVE_RECS >= PER_SEG then ACTIVE_RECS = PER_SEG - 1 end
local ACTIVE_BYTES = ACTIVE_RECS * FRAMED
local SEALED_A = math.max(1, math.ceil((GB * GIB - ACTIVE_BYTES) / SEG_BYTES))
local SEALED_B = SEALED_A * FACTOR
local RECS_A = SEALED_A * PER_SEG + ACTIVE_RECS
local RECS_B = SEALED_B * PER_SEG + ACTIVE_RECS
local NEED = (RECS_A * 2 + RECS_B) * FRAMED * 1.05 + 256 * 1024 * 1024   -- A, B, one copy

-- ------------------------------------------------------------------ temp dir
-- On the filesystem with the most room (TMPDIR when set).
local TMP, TMP_AVAIL = C.bench_tmp("snapshot", NEED, { "/tmp", "/var/tmp" },
                                  "lower BENCH_SNAP_GB or set TMPDIR")

-- ------------------------------------------------------------------ data
math.randomseed(42)
local POOL = 16                              -- distinct values, cycled by offset
local vals = {}
for j = 1, POOL do
    local b = {}
    for i = 1, (VSIZE + 7) // 8 do b[i] = string.pack("<i8", math.random(math.mininteger, math.maxinteger)) end
    vals[j] = concat(b):sub(1, VSIZE)
end
local TS0 = os.time() * 1000

local function build_log(dir, nrecs)
    local log = check("open_log " .. dir, takhin.open_log({ dir = dir }))
    local o = 0
    while o < nrecs do
        local b = {}
        for i = 1, math.min(BATCH, nrecs - o) do
            local off = o + i - 1
            b[i] = { key = format("key%07d", off % 10000000), value = vals[off % POOL + 1],
                     timestamp = TS0 + off }
        end
        local first, last, code = log:append_batch(b)
        check("append_batch", first, last, code)
        o = last + 1
    end
    assert(log:high_water_mark() == nrecs)
    return log
end

-- The log has the intended shape: full sealed segments, then the active one.
local function check_shape(log, sealed, name)
    local segs = log:segments()
    assert(#segs == sealed + 1, format("log %s: %d segments, expected %d", name, #segs, sealed + 1))
    for i = 1, sealed do
        assert(segs[i].size == SEG_BYTES and not segs[i].active,
               format("log %s: segment %d has %d bytes, expected %d", name, i, segs[i].size, SEG_BYTES))
    end
    assert(segs[#segs].active and segs[#segs].size == ACTIVE_BYTES,
           format("log %s: active segment has %d bytes, expected %d", name, segs[#segs].size, ACTIVE_BYTES))
end

-- Bytes of the segment files in a directory (what both sides copy or read).
local function seg_files(dir)
    return list_dir(dir, "^%d+%.[a-z]+$")
end

local function files_bytes(paths)
    local total = 0
    for _, p in ipairs(paths) do
        local f = assert(io.open(p, "rb"))
        total = total + f:seek("end")
        f:close()
    end
    return total
end

-- ------------------------------------------------------------------ pairs
-- Run fa (takhin) and fb (baseline) alternately REPS times (odd reps fa
-- first, even reps fb first).  Each returns its elapsed seconds and cleans
-- up after itself outside the timed interval.  ratio(ta, tb) is per rep.
local function run_pair_(row, fa, fb, ratio)
    C.run_pair(row, REPS, fa, fb, ratio, VERBOSE and fmt_time)
end

-- A row whose takhin side fails is reported as ERROR (and makes the exit
-- status 1); the other rows still run.
local function run_pair(row, fa, fb, ratio)
    local ok, err = pcall(run_pair_, row, fa, fb, ratio)
    if not ok then
        row.err = tostring(err):gsub("^[^:]*:%d+: ", ""):match("^[^\n]*")
        row.a, row.b, row.ratio = nil, nil, nil
        if VERBOSE then io.write(format("  %-34s ERROR: %s\n", row.name, row.err)) end
    end
end

local speedup = function(ta, tb) return tb / ta end   -- baseline time / takhin time

-- ------------------------------------------------------------------ main
local logA, logB, sms = nil, nil, {}

local function main()
    print(format("takhin snapshot bench: %d-byte values + %d-byte keys (%d framed bytes), "
                 .. "%d records per %d MiB segment, %d reps per pair",
                 VSIZE, KEYLEN, FRAMED, PER_SEG, MAX_SEG // (1024 * 1024), REPS))
    print(format("  lua %s; takhin %s; clock: %s", _VERSION, tostring(takhin.version), CLOCK))
    print(format("  temp dir: %s (%s free); page cache warm: nothing is dropped, "
                 .. "both sides read cached data", TMP, fmt_size(TMP_AVAIL)))
    io.flush()

    local dirA, dirB = TMP .. "/logA", TMP .. "/logB"
    local snapsA, snapsB = TMP .. "/snapsA", TMP .. "/snapsB"
    local copy, restored = TMP .. "/copy", TMP .. "/restored"

    -- build both logs, then write them back so no timed section pays for it
    local t_start = now()
    logA = build_log(dirA, RECS_A)
    logB = build_log(dirB, RECS_B)
    check_shape(logA, SEALED_A, "A")
    check_shape(logB, SEALED_B, "B")
    local t_built = now()
    sh("sync")
    local bytesA = files_bytes(seg_files(dirA))
    local bytesB = files_bytes(seg_files(dirB))
    print(format("  log A: %d sealed segments + %s active = %s in %d files (%s records)",
                 SEALED_A, fmt_size(ACTIVE_BYTES), fmt_size(bytesA), #seg_files(dirA),
                 fmt_int(RECS_A)))
    print(format("  log B: %d sealed segments + %s active = %s in %d files (%s records)",
                 SEALED_B, fmt_size(ACTIVE_BYTES), fmt_size(bytesB), #seg_files(dirB),
                 fmt_int(RECS_B)))
    print(format("  built in %.1f s (append_batch), written back with sync in %.1f s",
                 t_built - t_start, now() - t_built))
    io.flush()

    local smA = check("snapshot_manager A", takhin.snapshot_manager(dirA, { dir = snapsA }))
    local smA_copy = check("snapshot_manager A copy",
                           takhin.snapshot_manager(dirA, { dir = snapsA, mode = "copy" }))
    local smB = check("snapshot_manager B", takhin.snapshot_manager(dirB, { dir = snapsB }))
    sms = { smA, smA_copy, smB }

    -- Each side: untimed setup, timed call, untimed check + delete + sync.
    local function tk_create(sm, log, sealed)
        return function()
            collectgarbage()
            local t0 = now()
            local s, msg, code = sm:create(log)
            local t = now() - t0
            check("create", s, msg, code)
            assert(s.num_segments == sealed + 1 and s.high_water_mark == log:high_water_mark(),
                   "create: unexpected snapshot " .. s.id)
            check("delete", sm:delete(s.id))
            sh("sync")
            return t
        end
    end
    local function cp_a(src)
        return function()
            collectgarbage()
            local t0 = now()
            sh("cp -a " .. sh_quote(src) .. " " .. sh_quote(copy))
            local t = now() - t0
            assert(exists(copy .. "/" .. format("%020d.log", 0)), "cp -a: no copy")
            rm_rf(copy)
            sh("sync")
            return t
        end
    end
    -- cp -a, then fsync every copied file and the directory (coreutils
    -- `sync FILE...`): durable like takhin's create and restore.  Info only.
    local function cp_a_fsync(src)
        return function()
            collectgarbage()
            local t0 = now()
            sh("cp -a " .. sh_quote(src) .. " " .. sh_quote(copy)
               .. " && sync " .. sh_quote(copy) .. " " .. sh_quote(copy) .. "/*")
            local t = now() - t0
            assert(exists(copy .. "/" .. format("%020d.log", 0)), "cp -a: no copy")
            rm_rf(copy)
            sh("sync")
            return t
        end
    end
    local function tk_restore(sm, id, hwm)
        return function()
            collectgarbage()
            local t0 = now()
            local okr, msg, code = sm:restore(id, restored)
            local t = now() - t0
            check("restore", okr, msg, code)
            local l = check("open restored", takhin.open_log({ dir = restored, readonly = true }))
            assert(l:high_water_mark() == hwm, "restore: wrong high water mark")
            l:close()
            rm_rf(restored)
            sh("sync")
            return t
        end
    end

    -- warm-up, untimed: first use of fresh memory costs more in a VM
    cp_a(dirA)()
    tk_create(smA, logA, SEALED_A)()

    local rows = {
        create = { name = "create(link) / cp -a", target = 20, bytes_a = bytesA, bytes_b = bytesA },
        scale  = { name = format("create(link): %dx log / 1x log", FACTOR), target = 1.5, le = true,
                   bytes_a = bytesB, bytes_b = bytesA },
        ccopy  = { name = "create(copy) / cp -a", target = 0.8, bytes_a = bytesA, bytes_b = bytesA },
        ccopyf = { name = "create(copy) / cp -a+fsync", info = true, bytes_a = bytesA, bytes_b = bytesA },
        rcopy  = { name = "restore(copy) / cp -a", target = 0.8, bytes_a = bytesA, bytes_b = bytesA },
        rcopyf = { name = "restore(copy) / cp -a+fsync", info = true, bytes_a = bytesA, bytes_b = bytesA },
        rlink  = { name = "restore(link) / cp -a", target = 0.8, bytes_a = bytesA, bytes_b = bytesA },
        verify = { name = "verify / cat >/dev/null", target = 0.5, bytes_a = bytesA, bytes_b = bytesA },
        vthreads = { name = format("verify: %d threads / 1 thread", NCPU), info = true,
                     bytes_a = bytesA, bytes_b = bytesA },
    }
    local results = { rows.create, rows.scale, rows.ccopy, rows.ccopyf, rows.rcopy, rows.rcopyf,
                      rows.rlink, rows.verify, rows.vthreads }

    -- 1. link-mode create vs cp -a ----------------------------------------
    run_pair(rows.create, tk_create(smA, logA, SEALED_A), cp_a(dirA), speedup)

    -- 2. link-mode create: FACTOR x the sealed segments, same active -------
    run_pair(rows.scale, tk_create(smB, logB, SEALED_B), tk_create(smA, logA, SEALED_A),
             function(ta, tb) return ta / tb end)

    -- 3. copy-mode create vs cp -a -----------------------------------------
    run_pair(rows.ccopy, tk_create(smA_copy, logA, SEALED_A), cp_a(dirA), speedup)
    run_pair(rows.ccopyf, tk_create(smA_copy, logA, SEALED_A), cp_a_fsync(dirA), speedup)

    -- one link-mode snapshot of A for restore and verify: its files are A's
    -- (hard links), so it costs no space and is as warm as A
    local snap = check("create", smA:create(logA))
    local hwm = snap.high_water_mark

    -- 4. restore: copy mode (bytes copied) and link mode, vs cp -a ---------
    run_pair(rows.rcopy, tk_restore(smA_copy, snap.id, hwm), cp_a(dirA), speedup)
    run_pair(rows.rcopyf, tk_restore(smA_copy, snap.id, hwm), cp_a_fsync(dirA), speedup)
    run_pair(rows.rlink, tk_restore(smA, snap.id, hwm), cp_a(dirA), speedup)

    -- 5. verify vs cat of the same files --------------------------------------
    local files = seg_files(snap.path)
    assert(#files == #seg_files(dirA), "snapshot: file count differs from the log's")
    local quoted = {}
    for i, p in ipairs(files) do quoted[i] = sh_quote(p) end
    local cat_cmd = "cat " .. concat(quoted, " ") .. " >/dev/null"
    run_pair(rows.verify,
             function()
                 collectgarbage()
                 local t0 = now()
                 local okv, msg, code = smA:verify(snap.id)
                 local t = now() - t0
                 check("verify", okv, msg, code)
                 return t
             end,
             function()
                 local t0 = now()
                 sh(cat_cmd)
                 return now() - t0
             end, speedup)

    -- 6. verify with one thread per CPU (threads unset) vs threads = 1 ---------
    local function tk_verify(opts)
        return function()
            collectgarbage()
            local t0 = now()
            local okv, msg, code = smA:verify(snap.id, opts)
            local t = now() - t0
            check("verify", okv, msg, code)
            return t
        end
    end
    run_pair(rows.vthreads, tk_verify(nil), tk_verify({ threads = 1 }), speedup)
    check("delete", smA:delete(snap.id))
    local elapsed = now() - t_start

    -- table ----------------------------------------------------------------
    print()
    print(format("%-32s %-27s %-27s %7s %15s %7s %s", "operation (takhin / baseline)",
                 "takhin", "baseline", "ratio", "(min..max)", "target", "result"))
    print(("-"):rep(32 + 1 + 27 + 1 + 27 + 1 + 7 + 1 + 15 + 1 + 7 + 1 + 6))
    local met, total, missed, errors = 0, 0, {}, {}
    for _, row in ipairs(results) do
        local tgt = row.info and "-" or (row.le and "<=" or ">=") .. format("%.1f", row.target)
        if not row.info then total = total + 1 end
        if row.err then
            errors[#errors + 1] = format("%s: %s", row.name, row.err)
            print(format("%-32s %-27s %-27s %7s %15s %7s %s", row.name, "-", "-", "-", "",
                         tgt, "ERROR"))
            goto continue
        end
        if row.info then
            print(format("%-32s %-27s %-27s %7.2f %15s %7s %s", row.name,
                         fmt_cell(row.a, row.bytes_a), fmt_cell(row.b, row.bytes_b), row.ratio,
                         format("(%.2f..%.2f)", row.lo, row.hi), tgt, "info"))
            goto continue
        end
        local pass
        if row.le then pass = row.ratio <= row.target else pass = row.ratio >= row.target end
        if pass then met = met + 1
        else missed[#missed + 1] = format("%s %.2f %s %.1f", row.name, row.ratio,
                                          row.le and ">" or "<", row.target) end
        print(format("%-32s %-27s %-27s %7.2f %15s %7s %s", row.name,
                     fmt_cell(row.a, row.bytes_a), fmt_cell(row.b, row.bytes_b), row.ratio,
                     format("(%.2f..%.2f)", row.lo, row.hi), tgt, pass and "PASS" or "MISS"))
        ::continue::
    end
    print()
    print(format("times: medians of %d reps; MB/s = 10^6 bytes of segment files "
                 .. "(.log, .index, .timeindex: %s for A, %s for B) per second", REPS,
                 fmt_size(bytesA), fmt_size(bytesB)))
    print("ratio: median of per-rep ratios; baseline time / takhin time, except the "
          .. FACTOR .. "x row: create(B) / create(A)")
    print("create and restore fsync what they write (cp -a does not); cp -a and cat include "
          .. "~1 ms of sh + exec; between runs the output is deleted and `sync` runs, untimed")
    print("cp -a+fsync rows (info, no target): cp -a, then `sync COPY COPY/*` fsyncs every "
          .. "copied file and the directory, as takhin does")
    print(format("verify threads row (info): sm:verify with threads unset (one per CPU: %d) against "
                 .. "threads = 1, same snapshot (%d segments); at most %dx expected", NCPU,
                 #seg_files(dirA) // 3, NCPU))
    for _, e in ipairs(errors) do print("ERROR " .. e) end
    print(format("summary: %d/%d targets met%s%s%s (%.1f s)", met, total,
                 #missed > 0 and "; MISS: " or "", concat(missed, "; "),
                 #errors > 0 and format("; %d row(s) failed", #errors) or "", elapsed))
    return #errors
end

local ok, err = xpcall(main, debug.traceback)   -- err: the failed rows when ok
for _, sm in ipairs(sms) do pcall(sm.close, sm) end
if logA then pcall(logA.close, logA) end
if logB then pcall(logB.close, logB) end
rm_rf(TMP)
if not ok then
    io.stderr:write("bench failed: " .. tostring(err) .. "\n")
    os.exit(1)
end
if err > 0 then
    io.stderr:write(format("bench failed: %d row(s) failed, see ERROR above\n", err))
    os.exit(1)
end
os.exit(0)
