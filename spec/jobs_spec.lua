-- Background jobs (/work/shared/SPEC.md section 9; csrc/takhin.h
-- "Background jobs"; Job:wait in lua/takhin/init.lua): sm:create,
-- sm:restore, sm:verify and sm:cleanup with async = true return a
-- takhin.Job at once, whose wait gives exactly what the synchronous call
-- gives.  Here: the same results, progress, cancel at random moments, the
-- life of a job (garbage collection, closing its manager or its log,
-- job:close, __close, __tostring), failures with the synchronous call's
-- code, and a caller that keeps appending and reading while a verify of
-- a 1 GiB snapshot runs.
--
-- Environment: TAKHIN_JOBS_SEED and TAKHIN_JOBS_ROUNDS for the cancel
-- rounds; TAKHIN_JOBS_BIG_MB for the size of the big log (default 1024).

local takhin = require("takhin")
local util = require("helpers.util")
local logs = require("helpers.log")
require("helpers.assertions")
local cjson = require("cjson")

local KIB, MIB = 1024, 1024 * 1024

-- Several segments of a few dozen records each, so that copies and checks
-- have files to share between threads and progress has steps to show.
local OPTS = { max_segment_size = 256 * KIB, index_interval_bytes = 4096 }
local open = logs.opener(OPTS)

-- What the record at offset o holds: no key at every fifth offset, a value
-- of `size` bytes after its offset, timestamps growing with the offset.
local function key_for(o)
    if o % 5 == 0 then return nil end
    return "key-" .. o
end
local function value_for(o, size)
    return ("%d|"):format(o) .. string.rep(string.char(97 + o % 26), size)
end
local function ts_for(o) return 1600000000000 + o * 10 end

local VALUE = 4000              -- bytes of filler in each record's value

-- Appends records from .. from+n-1 in batches.
local function fill(log, from, n, size)
    size = size or VALUE
    local o = from
    while o < from + n do
        local recs = {}
        for i = o, math.min(o + 63, from + n - 1) do
            recs[#recs + 1] = { key = key_for(i), value = value_for(i, size), timestamp = ts_for(i) }
        end
        assert.are.equal(o, log:append_batch(recs))
        o = o + #recs
    end
end

local function ok(v, msg, code)
    assert(v, tostring(msg) .. " " .. tostring(code))
    return v
end

local function manager(log_dir, opts)
    local sm, msg, code = takhin.snapshot_manager(log_dir, opts)
    assert(sm, "snapshot_manager " .. log_dir .. ": " .. tostring(msg) .. " " .. tostring(code))
    return sm
end

-- All of a call's results, as a table with n.
local function pack(...) return { n = select("#", ...), ... } end

-- The log at dir holds exactly the records 0 .. hwm-1 (values of `size`
-- bytes of filler) and nothing else.
local function assert_log_holds(dir, hwm, size)
    local log = open(dir, { readonly = true })
    assert.are.equal(hwm, log:high_water_mark(), dir)
    local n = 0
    for rec in log:records() do
        assert.are.equal(n, rec.offset)
        assert.are.equal(key_for(n), rec.key, "key at offset " .. n)
        assert(rec.value == value_for(n, size or VALUE), "value at offset " .. n .. " in " .. dir)
        assert.are.equal(ts_for(n), rec.timestamp)
        n = n + 1
    end
    assert.are.equal(hwm, n, dir)
    log:close()
end

-- { name = bytes } of the files of a directory (not of subdirectories),
-- those whose names start with a dot only when dots is true.
local function files_of(dir, dots)
    local out = {}
    for _, name in ipairs(util.ls(dir)) do
        if (dots or name:sub(1, 1) ~= ".") and not util.is_dir(dir .. "/" .. name) then
            out[name] = util.read_file(dir .. "/" .. name)
        end
    end
    return out
end

-- Two { name = bytes } tables are the same, naming the first difference.
local function assert_same_files(want, got, what)
    for name, bytes in pairs(want) do
        assert(got[name] ~= nil, what .. ": " .. name .. " is missing")
        assert(got[name] == bytes, what .. ": " .. name .. " differs")
    end
    for name in pairs(got) do assert(want[name] ~= nil, what .. ": " .. name .. " is extra") end
end

-- The .tmp-* and .del-* entries of a snapshot directory (docs/FORMAT.md):
-- what a create or a delete under way, or one that left its work
-- half-made, leaves there.
local function snapshot_leftovers(sm)
    local out = {}
    for _, name in ipairs(util.ls(sm:dir())) do
        if name:find("^%.tmp%-") or name:find("^%.del%-") then out[#out + 1] = name end
    end
    return out
end

-- Entries of an in-place restore target left by a restore that did not
-- finish (.restore-tmp-*, .restore-ready: docs/FORMAT.md "In-place
-- restore").
local function in_place_leftovers(dir)
    local out = {}
    for _, name in ipairs(util.ls(dir)) do
        if name:find("^%.restore") then out[#out + 1] = name end
    end
    return out
end

local function ids_of(list)
    local ids = {}
    for i, s in ipairs(list) do ids[i] = s.id end
    return ids
end

local function sorted_ids(sm)
    local ids = ids_of(ok(sm:list()))
    table.sort(ids)
    return ids
end

-- The manifest of a snapshot, decoded.
local function manifest(snap)
    return cjson.decode(util.read_file(snap.path .. "/manifest.json"))
end

-- Polls job:progress() until the job is done; returns every value seen
-- (done and total), the last one read after job:done() was true.
local function watch(job)
    local seen = {}
    repeat
        local finished = job:done()
        local d, t = job:progress()
        local last = seen[#seen]
        if not last or last[1] ~= d or last[2] ~= t then seen[#seen + 1] = { d, t } end
        if finished then return seen end
    until false
end

-- The progress a synchronous call reports: every (done, total) given to
-- its callback.
local function recorder()
    local calls = {}
    return calls, function(d, t) calls[#calls + 1] = { d, t } end
end

describe("an async job", function()
    local tmp, dir

    before_each(function()
        tmp = util.memory_tmpdir()
        dir = tmp .. "/log"
    end)
    after_each(function()
        collectgarbage(); collectgarbage()
        util.rmtree(tmp)
    end)

    -------------------------------------------------------------------------
    -- The same results as the synchronous calls
    -------------------------------------------------------------------------

    describe("gives what the synchronous call gives", function()
        it("create: a snapshot with the same fields and files, in link and copy mode", function()
            local log = open(dir)
            fill(log, 0, 300)
            for _, mode in ipairs({ "link", "copy" }) do
                local sm = manager(dir, { mode = mode, dir = tmp .. "/snaps-" .. mode })
                local sync = ok(sm:create(log, { label = "same" }))
                local job = ok(sm:create(log, { async = true, label = "same", threads = 2 }))
                assert.matches("^takhin%.Job%(create, ", tostring(job))
                local async = ok(job:wait())
                assert.are_not.equal(sync.id, async.id)
                for k, v in pairs(sync) do
                    if k ~= "id" and k ~= "timestamp" and k ~= "seq" and k ~= "path" then
                        assert.are.same(v, async[k], mode .. ": field " .. k)
                    end
                end
                for k in pairs(async) do assert(sync[k] ~= nil, mode .. ": extra field " .. k) end
                assert.are.equal(mode, async.mode)
                assert.are.equal(sync.seq + 1, async.seq)
                assert.are.equal(sm:dir() .. "/snapshot-" .. async.id, async.path)
                assert.are.same(manifest(sync).files, manifest(async).files)
                assert.are.same(async, ok(sm:get(async.id)))
                -- wait again: the same snapshot
                assert.are.same(async, ok(job:wait()))
                assert.is_true(ok(sm:verify(async.id)))
                -- Refused before any job starts: the same TOO_SOON.
                -- (The messages say how old the newest snapshot is, in ms.)
                local s = pack(sm:create(log, { min_interval = "1h" }))
                local a = pack(sm:create(log, { min_interval = "1h", async = true }))
                assert.fails_with("TOO_SOON", s[1], s[2], s[3])
                assert.fails_with("TOO_SOON", a[1], a[2], a[3])
                assert.are.equal(s[2]:gsub("%d+ ms old", "N ms old"), (a[2]:gsub("%d+ ms old", "N ms old")))
                sm:close()
            end
            log:close()
        end)

        it("restore: the same files, whole, up to an offset or a time, and in place", function()
            local log = open(dir)
            fill(log, 0, 300)
            local sm = manager(dir)
            local old = ok(sm:create(log))
            fill(log, 300, 200)
            local snap = ok(sm:create(log))
            log:close()
            local variants = {
                {}, { threads = 1 }, { threads = 2 }, { upto_offset = 123 },
                { upto_timestamp = ts_for(321) },
            }
            for i, v in ipairs(variants) do
                local a, b = ("%s/sync-%d"):format(tmp, i), ("%s/async-%d"):format(tmp, i)
                local opts = {}
                for k, x in pairs(v) do opts[k] = x end
                assert.is_true(ok(sm:restore(snap.id, a, opts)))
                opts.async = true
                local job = ok(sm:restore(snap.id, b, opts))
                assert.are.same(pack(true), pack(job:wait()))
                assert_same_files(files_of(a, true), files_of(b, true), "restore variant " .. i)
                local want = v.upto_offset or (v.upto_timestamp and 322) or 500
                assert_log_holds(b, want)
            end
            -- In place, over two copies of the same older log.
            local a, b = tmp .. "/inplace-sync", tmp .. "/inplace-async"
            assert.is_true(ok(sm:restore(old.id, a)))
            assert.is_true(ok(sm:restore(old.id, b)))
            assert.is_true(ok(sm:restore(snap.id, a, { replace = true })))
            local job = ok(sm:restore(snap.id, b, { replace = true, async = true, threads = 2 }))
            assert.are.same(pack(true), pack(job:wait()))
            assert_same_files(files_of(a), files_of(b), "restore in place")
            assert_log_holds(b, 500)
            assert.are.same({}, in_place_leftovers(b))
            -- A target that is not empty: the same refusal.
            local s = pack(sm:restore(snap.id, a))
            local j = pack(ok(sm:restore(snap.id, a, { async = true })):wait())
            assert.fails_with("NOT_EMPTY", s[1], s[2], s[3])
            assert.are.same(s, j)
            sm:close()
        end)

        it("verify: true for a healthy snapshot, the same failure for a missing or a bad id", function()
            local log = open(dir)
            fill(log, 0, 200)
            local sm = manager(dir)
            local snap = ok(sm:create(log))
            log:close()
            for _, threads in ipairs({ 1, 2 }) do
                local job = ok(sm:verify(snap.id, { async = true, threads = threads }))
                assert.are.same(pack(sm:verify(snap.id, { threads = threads })), pack(job:wait()))
                assert.are.same(pack(true), pack(job:wait()))
            end
            local missing = "1700000000000-00000000"
            local s = pack(sm:verify(missing))
            assert.fails_with("NOT_FOUND", s[1], s[2], s[3])
            assert.are.same(s, pack(ok(sm:verify(missing, { async = true })):wait()))
            -- A bad id is refused before any job starts.
            s = pack(sm:verify("../x"))
            assert.fails_with("INVALID", s[1], s[2], s[3])
            assert.are.same(s, pack(sm:verify("../x", { async = true })))
            sm:close()
        end)

        it("cleanup: the same number deleted and the same plan", function()
            local log = open(dir)
            fill(log, 0, 40)
            local sm = manager(dir)
            for i = 1, 6 do
                ok(sm:create(log, { label = "c" .. i }))
                fill(log, log:high_water_mark(), 10)
            end
            log:close()
            sm:close()
            -- Two copies of the directory, snapshots and all.
            local dir2 = tmp .. "/log2"
            util.copytree(dir, dir2)
            local a, b = manager(dir), manager(dir2)
            assert.are.same(sorted_ids(a), sorted_ids(b))
            local function plan_ids(plan)
                local keep = {}
                for i, k in ipairs(plan.keep) do keep[i] = k.snapshot.id end
                return { keep = keep, delete = ids_of(plan.delete) }
            end
            -- A dry run, then the real thing, then nothing left to delete.
            for _, rules in ipairs({ { max_snapshots = 3, dry_run = true }, { max_snapshots = 3 },
                                     { max_snapshots = 3 } }) do
                local n1, plan1 = a:cleanup(rules)
                local async_rules = { async = true }
                for k, v in pairs(rules) do async_rules[k] = v end
                local job = ok(b:cleanup(async_rules))
                local n2, plan2 = job:wait()
                assert.are.equal(n1, n2)
                -- A cleanup's progress counts snapshots: all it removed.
                if not rules.dry_run then
                    assert.are.same({ n2, n2 }, { job:progress() })
                end
                assert.are.same(plan_ids(plan1), plan_ids(plan2))
                assert.are.same(sorted_ids(a), sorted_ids(b))
            end
            assert.are.equal(3, #ok(b:list()))
            -- Bad rules: the same refusal, before any job.
            assert.are.same(pack(a:cleanup({ max_snapshots = 0 })),
                            pack(b:cleanup({ max_snapshots = 0, async = true })))
            a:close()
            b:close()
        end)
    end)

    -------------------------------------------------------------------------
    -- Progress
    -------------------------------------------------------------------------

    describe("progress", function()
        -- Every (done, total) seen moves forward and ends at (total, total),
        -- the total the synchronous call reports.
        local function assert_moves_to(seen, total, what)
            assert.is_true(total > 0, what)
            for i, p in ipairs(seen) do
                assert(p[1] >= 0 and p[1] <= p[2] or p[2] == 0, what .. ": done " .. p[1] .. " of " .. p[2])
                if i > 1 then
                    assert(p[1] >= seen[i - 1][1], ("%s: done went from %d back to %d")
                           :format(what, seen[i - 1][1], p[1]))
                end
            end
            assert.are.same({ total, total }, seen[#seen], what)
        end

        local function check_progress(threads)
            local log = open(dir)
            fill(log, 0, 1500)              -- about 6 MB, 24 segments
            local sm = manager(dir, { mode = "copy" })
            local calls, fn = recorder()
            local snap = ok(sm:create(log, { progress = fn, threads = threads }))
            local sync_total = calls[#calls][2]
            assert.are.equal(log:size(), sync_total)
            local job = ok(sm:create(log, { async = true, threads = threads }))
            local first_d, first_t = job:progress()
            assert(first_d <= first_t or first_t == 0)
            assert_moves_to(watch(job), sync_total, "create")
            ok(job:wait())

            job = ok(sm:verify(snap.id, { async = true, threads = threads }))
            assert_moves_to(watch(job), snap.total_size, "verify")
            ok(job:wait())

            calls, fn = recorder()
            ok(sm:restore(snap.id, tmp .. "/r-sync", { progress = fn, threads = threads }))
            assert.are.equal(snap.total_size, calls[#calls][2])
            job = ok(sm:restore(snap.id, tmp .. "/r-async", { async = true, threads = threads }))
            assert_moves_to(watch(job), snap.total_size, "restore")
            ok(job:wait())
            log:close()
            sm:close()
        end

        it("never goes back and ends at the total the synchronous call reports (one thread)", function()
            check_progress(1)
        end)

        it("never goes back and ends at the total with several threads", function()
            check_progress(2)
        end)

        it("callbacks are for synchronous calls: async with progress raises, nothing starts", function()
            local log = open(dir)
            fill(log, 0, 10)
            local sm = manager(dir)
            local snap = ok(sm:create(log))
            local fn = function() end
            local msg = "option 'progress': not called for an async job (use job:progress())"
            assert.has_error(function() sm:create(log, { async = true, progress = fn }) end, msg)
            assert.has_error(function() sm:verify(snap.id, { async = true, progress = fn }) end, msg)
            assert.has_error(function()
                sm:restore(snap.id, tmp .. "/r", { async = true, progress = fn })
            end, msg)
            assert.has_error(function() sm:verify(snap.id, { async = true, threads = 0 }) end,
                             "option 'threads': 0 is outside 1 .. 64")
            assert.has_error(function() sm:verify(snap.id, { async = true, threads = 65 }) end,
                             "option 'threads': 65 is outside 1 .. 64")
            assert.are.same({ snap.id }, ids_of(ok(sm:list())))
            assert.is_false(util.exists(tmp .. "/r"))
            assert.are.same({}, snapshot_leftovers(sm))
            log:close()
            sm:close()
        end)
    end)

    -------------------------------------------------------------------------
    -- Cancel
    -------------------------------------------------------------------------

    describe("cancel", function()
        local SEED = tonumber(os.getenv("TAKHIN_JOBS_SEED") or "") or 20240611
        local ROUNDS = tonumber(os.getenv("TAKHIN_JOBS_ROUNDS") or "") or 60

        it("at random moments leaves nothing half-made, and the manager works after", function()
            math.randomseed(SEED)
            local N, HALF = 2048, 1024              -- about 8 MB in 32 segments
            local log = open(dir)
            fill(log, 0, HALF)
            local link_sm = manager(dir)
            local copy_sm = manager(dir, { mode = "copy", dir = tmp .. "/snaps-copy" })
            local clean_sm = manager(dir, { dir = tmp .. "/snaps-clean" })
            local old = ok(link_sm:create(log))
            fill(log, HALF, N - HALF)
            local full = ok(link_sm:create(log))
            local copied = ok(copy_sm:create(log))
            local protected = { [old.id] = true, [full.id] = true, [copied.id] = true }
            local restores = tmp .. "/restores"
            assert(util.sh("mkdir " .. util.q(restores)))
            local inplace = tmp .. "/inplace"
            assert.is_true(ok(link_sm:restore(old.id, inplace)))
            local inplace_hwm = old.high_water_mark

            local tally = { canceled = 0, finished = 0 }
            local by_op = {}

            -- Cancels job at a random moment: at once, once progress has
            -- passed a random fraction, after a random number of polls,
            -- or after it is done (which changes nothing).
            local function cancel_at_random(job)
                local moment = math.random(4)
                if moment == 2 then
                    local f = math.random()
                    while not job:done() do
                        local d, t = job:progress()
                        if t > 0 and d >= f * t then break end
                    end
                elseif moment == 3 then
                    for _ = 1, math.random(0, 3000) do
                        if job:done() then break end
                    end
                elseif moment == 4 then
                    assert(job:wait())
                end
                job:cancel()
                return moment
            end

            -- Outcome of a job: true when it finished, false when canceled;
            -- anything else fails the test.
            local function outcome(what, moment, ...)
                local v, msg, code = ...
                local where = ("%s (seed %d, moment %d)"):format(what, SEED, moment)
                if v == nil then
                    assert(code == "CANCELED", where .. ": " .. tostring(msg) .. " " .. tostring(code))
                    assert(moment ~= 4, where .. ": canceled after it was done")
                    assert.are.equal("string", type(msg))
                    tally.canceled = tally.canceled + 1
                    by_op[what .. " canceled"] = (by_op[what .. " canceled"] or 0) + 1
                    return false
                end
                tally.finished = tally.finished + 1
                by_op[what .. " finished"] = (by_op[what .. " finished"] or 0) + 1
                return true
            end

            local ops = {}

            function ops.create(round)
                local sm = math.random(2) == 1 and link_sm or copy_sm
                local before = sorted_ids(sm)
                local job = ok(sm:create(log, { async = true, threads = math.random(2),
                                                label = "round " .. round }))
                local moment = cancel_at_random(job)
                local r = pack(job:wait())
                local snap = r[1]
                local after = sorted_ids(sm)
                if outcome("create", moment, r[1], r[2], r[3]) then
                    assert.are.equal(#before + 1, #after)
                    assert.are.equal(log:high_water_mark(), snap.high_water_mark)
                    assert.is_true(ok(sm:verify(snap.id)))
                    if #after > 4 then
                        for _, id in ipairs(after) do
                            if not protected[id] then ok(sm:delete(id)) break end
                        end
                    end
                else
                    assert.are.same(before, after)
                end
            end

            function ops.verify()
                local sm, id = link_sm, (math.random(2) == 1 and old or full).id
                if math.random(3) == 1 then sm, id = copy_sm, copied.id end
                local job = ok(sm:verify(id, { async = true, threads = math.random(2) }))
                local moment = cancel_at_random(job)
                local r = pack(job:wait())
                if outcome("verify", moment, r[1], r[2], r[3]) then assert.are.same(pack(true), r) end
            end

            function ops.restore(round)
                local snap = math.random(3) == 1 and old or full
                local target = restores .. "/r" .. round
                local existed = math.random(3) == 1
                if existed then assert(util.sh("mkdir " .. util.q(target))) end
                local opts = { async = true, threads = math.random(2) }
                local want = snap.high_water_mark
                if math.random(3) == 1 then
                    opts.upto_offset = math.random(0, want)
                    want = opts.upto_offset
                end
                local job = ok(link_sm:restore(snap.id, target, opts))
                local moment = cancel_at_random(job)
                local r = pack(job:wait())
                if outcome("restore", moment, r[1], r[2], r[3]) then
                    assert.are.same({ "r" .. round }, util.ls(restores))
                    assert_log_holds(target, want)
                elseif existed then
                    assert.are.same({ "r" .. round }, util.ls(restores))
                    assert.are.same({}, util.ls(target))
                else
                    assert.are.same({}, util.ls(restores))
                end
                assert(util.sh("rm -rf " .. util.q(target)))
            end

            function ops.restore_in_place()
                local snap = math.random(2) == 1 and old or full
                local before = files_of(inplace)
                local job = ok(link_sm:restore(snap.id, inplace, { replace = true, async = true,
                                                                   threads = math.random(2) }))
                local moment = cancel_at_random(job)
                local r = pack(job:wait())
                if outcome("restore in place", moment, r[1], r[2], r[3]) then
                    inplace_hwm = snap.high_water_mark
                else
                    assert_same_files(before, files_of(inplace), "canceled in-place restore")
                end
                assert.are.same({}, in_place_leftovers(inplace))
                assert_log_holds(inplace, inplace_hwm)
            end

            function ops.cleanup()
                while #ok(clean_sm:list()) < 4 do ok(clean_sm:create(log)) end
                local before = sorted_ids(clean_sm)
                local job = ok(clean_sm:cleanup({ max_snapshots = 1, async = true }))
                local moment = cancel_at_random(job)
                local r = pack(job:wait())
                if outcome("cleanup", moment, r[1], r[2], r[3]) then
                    assert.are.equal(3, r[1])
                    assert.are.equal(1, #ok(clean_sm:list()))
                else
                    assert.are.same(before, sorted_ids(clean_sm))
                end
            end

            local names = { "create", "create", "verify", "restore", "restore", "restore_in_place",
                            "cleanup" }
            for round = 1, ROUNDS do
                ops[names[math.random(#names)]](round)
                for _, sm in ipairs({ link_sm, copy_sm, clean_sm }) do
                    assert.are.same({}, snapshot_leftovers(sm), "round " .. round)
                end
                assert.are.same({}, util.ls(restores), "round " .. round)
            end
            assert.is_true(tally.canceled > 0)
            assert.is_true(tally.finished > 0)

            -- The managers work: create, verify, restore, async and not.
            for _, sm in ipairs({ link_sm, copy_sm }) do
                local s = ok(sm:create(log))
                assert.is_true(ok(sm:verify(s.id)))
                assert.is_true(ok(ok(sm:verify(s.id, { async = true })):wait()))
                local t = ok(ok(sm:create(log, { async = true })):wait())
                assert.is_true(ok(sm:restore(t.id, restores .. "/after-" .. s.mode)))
                assert_log_holds(restores .. "/after-" .. s.mode, N)
            end
            assert_log_holds(inplace, inplace_hwm)
            local parts = {}
            for k, v in pairs(by_op) do parts[#parts + 1] = k .. " " .. v end
            table.sort(parts)
            print(("\n# jobs: %d cancel rounds (seed %d): %s"):format(ROUNDS, SEED, table.concat(parts, ", ")))
            log:close()
            link_sm:close(); copy_sm:close(); clean_sm:close()
        end)

        it("on a finished job changes nothing; wait gives the result again", function()
            local log = open(dir)
            fill(log, 0, 100)
            local sm = manager(dir)
            local job = ok(sm:create(log, { async = true }))
            local snap = ok(job:wait())
            assert.is_true(job:done())
            assert.is_true(job:cancel())
            assert.are.same(snap, ok(job:wait()))
            assert.are.same({ snap.id }, ids_of(ok(sm:list())))
            log:close()
            sm:close()
        end)
    end)

    -------------------------------------------------------------------------
    -- The life of a job
    -------------------------------------------------------------------------

    describe("life", function()
        local N = 4096                  -- about 16 MB: jobs run a little while

        -- Starts a job with start() and keeps it only in a weak table:
        -- once this returns, nothing references it.  Returns whether it
        -- was still running then.
        local function start_and_drop(weak, start)
            local job = ok(start())
            weak[#weak + 1] = job
            return not job:done()
        end

        it("a running job whose references are dropped is canceled and joined when collected", function()
            local log = open(dir)
            fill(log, 0, N)
            local sm = manager(dir, { mode = "copy" })
            local snap = ok(sm:create(log))
            local starts = {
                function() return sm:create(log, { async = true }) end,
                function() return sm:verify(snap.id, { async = true }) end,
                function() return sm:restore(snap.id, tmp .. "/r", { async = true }) end,
            }
            local running = 0
            for _, start in ipairs(starts) do
                local weak = setmetatable({}, { __mode = "v" })
                if start_and_drop(weak, start) then running = running + 1 end
                collectgarbage(); collectgarbage()
                assert.is_nil(weak[1], "the job was not collected")
                assert.are.same({}, snapshot_leftovers(sm))
                -- A restore that finished first left the whole log.
                if util.exists(tmp .. "/r") then
                    assert_log_holds(tmp .. "/r", N)
                    assert(util.sh("rm -rf " .. util.q(tmp .. "/r")))
                end
                assert.are.same({ "log" }, util.ls(tmp))
            end
            print(("\n# jobs: %d of 3 jobs were still running when dropped and collected"):format(running))
            -- Whatever the collected create did, what is listed verifies.
            for _, s in ipairs(ok(sm:list())) do assert.is_true(ok(sm:verify(s.id))) end
            local s = ok(ok(sm:create(log, { async = true })):wait())
            assert.is_true(ok(ok(sm:restore(s.id, tmp .. "/r", { async = true })):wait()))
            assert_log_holds(tmp .. "/r", N)
            log:close()
            sm:close()
        end)

        it("a job collected with its manager and its log releases the log", function()
            local weak = setmetatable({}, { __mode = "v" })
            start_and_drop(weak, function()
                local log = open(dir)
                fill(log, 0, N)
                local sm = manager(dir, { mode = "copy" })
                weak.log, weak.sm = log, sm
                return sm:create(log, { async = true })
            end)
            collectgarbage(); collectgarbage(); collectgarbage()
            assert.is_nil(next(weak), "the job, its manager or its log was not collected")
            -- The log was closed (a new writer gets its lock) and nothing is
            -- half-made.
            local log = open(dir)
            local sm = manager(dir)
            assert.are.same({}, snapshot_leftovers(sm))
            for _, s in ipairs(ok(sm:list())) do assert.is_true(ok(sm:verify(s.id))) end
            local s = ok(ok(sm:create(log, { async = true })):wait())
            assert.are.equal(N, s.high_water_mark)
            log:close()
            sm:close()
        end)

        it("sm:close() cancels its running jobs and waits for them", function()
            local log = open(dir)
            fill(log, 0, N)
            local sm = manager(dir, { mode = "copy" })
            local snap = ok(sm:create(log))
            local jobs = {
                ok(sm:create(log, { async = true })),
                ok(sm:verify(snap.id, { async = true })),
                ok(sm:restore(snap.id, tmp .. "/r", { async = true })),
            }
            assert.is_true(sm:close())
            for _, job in ipairs(jobs) do
                -- Done at once: close waited.  Canceled, or finished first.
                assert.is_true(job:done())
                local r = pack(job:wait())
                if r[1] == nil then assert.fails_with("CANCELED", r[1], r[2], r[3]) end
                local d, t = job:progress()
                assert(d <= t, tostring(job))
                assert.matches("^takhin%.Job%(%a+, done%)$", tostring(job))
            end
            if jobs[3]:wait() == nil then
                assert.are.same({ "log" }, util.ls(tmp))
            else
                assert_log_holds(tmp .. "/r", N)
            end
            -- The log is free again, and a new manager finds nothing half-made.
            assert.is_true(log:close())
            local sm2 = manager(dir)
            assert.are.same({}, snapshot_leftovers(sm2))
            for _, s in ipairs(ok(sm2:list())) do assert.is_true(ok(sm2:verify(s.id))) end
            sm2:close()
            assert.has_error(function() sm:verify(snap.id, { async = true }) end,
                             "attempt to use a closed takhin.SnapshotManager")
        end)

        it("log:close() while a create uses the log raises; the job goes on; close works after", function()
            local log = open(dir)
            fill(log, 0, N)
            local sm = manager(dir, { mode = "copy" })
            local refused = 0
            for _ = 1, 5 do
                local job = ok(sm:create(log, { async = true, threads = 1 }))
                local closed, err = pcall(log.close, log)
                if closed then
                    -- The job had let go of the log already.
                    ok(job:wait())
                    log = open(dir)
                else
                    refused = refused + 1
                    assert.matches("attempt to close a takhin.Log while a snapshot job uses it", err, 1, true)
                    assert.are.equal(N, log:high_water_mark())
                    local snap = ok(job:wait())
                    assert.are.equal(N, snap.high_water_mark)
                    assert.is_true(log:close())
                    log = open(dir)
                end
                if refused > 0 then break end
            end
            assert.is_true(refused > 0, "the create always finished before log:close() ran")
            log:close()
            sm:close()
        end)

        it("job:close() and __close cancel and wait; a closed job raises when used", function()
            local log = open(dir)
            fill(log, 0, N)
            local sm = manager(dir, { mode = "copy" })
            local job = ok(sm:create(log, { async = true }))
            assert.matches("^takhin%.Job%(create, [%a%d%%, ]+%)$", tostring(job))
            assert.is_true(job:close())
            assert.is_true(job:close())     -- again: nothing
            assert.are.equal("takhin.Job(closed)", tostring(job))
            assert.has_error(function() job:done() end, "attempt to use a closed takhin.Job")
            assert.has_error(function() job:wait() end, "attempt to use a closed takhin.Job")
            assert.are.same({}, snapshot_leftovers(sm))

            local snap = ok(sm:create(log))
            local target = tmp .. "/r"
            local scope
            if util.is_luajit then
                scope = function(f)         -- what <close> does at the end of a scope
                    local j = f()
                    getmetatable(j).__close(j)
                    return j
                end
            else
                scope = assert(load([[
                    local f = ...
                    local j <close> = f()
                    return j
                ]]))
            end
            local closed_job = scope(function() return ok(sm:restore(snap.id, target, { async = true })) end)
            assert.are.equal("takhin.Job(closed)", tostring(closed_job))
            -- Canceled, or it finished: either the whole log or nothing.
            if util.exists(target) then assert_log_holds(target, N) end
            for _, name in ipairs(util.ls(tmp)) do
                assert(name == "log" or name == "r", "left in " .. tmp .. ": " .. name)
            end
            log:close()
            sm:close()
        end)
    end)

    -------------------------------------------------------------------------
    -- Failures
    -------------------------------------------------------------------------

    describe("that fails reports the code the synchronous call gives", function()
        it("verify and restore of a snapshot with a flipped byte: CORRUPT, naming the file", function()
            local log = open(dir)
            fill(log, 0, 300)
            local sm = manager(dir, { mode = "copy" })
            local snap = ok(sm:create(log))
            log:close()
            local name = util.ls_suffix(snap.path, ".log")[2]
            util.flip_byte(snap.path .. "/" .. name, 100)
            for _, threads in ipairs({ 1, 2 }) do
                local s = pack(sm:verify(snap.id, { threads = threads }))
                local msg = assert.fails_with("CORRUPT", s[1], s[2], s[3])
                assert.matches(name, msg, 1, true)
                assert.are.same(s, pack(ok(sm:verify(snap.id, { async = true, threads = threads })):wait()))
            end
            local s = pack(sm:restore(snap.id, tmp .. "/r1"))
            assert.fails_with("CORRUPT", s[1], s[2], s[3])
            local a = pack(ok(sm:restore(snap.id, tmp .. "/r2", { async = true })):wait())
            assert.fails_with("CORRUPT", a[1], a[2], a[3])
            assert.are.same({ "log" }, util.ls(tmp))
            sm:close()
        end)

        it("create on a full filesystem: NOSPC, and nothing is left", function()
            local mnt = tmp .. "/fs"
            assert(util.sh("mkdir " .. util.q(mnt)))
            local why = util.capture("mount -t tmpfs -o size=1m tmpfs " .. util.q(mnt) .. " 2>&1; echo \"exit=$?\"")
            if not why:find("exit=0\n", 1, true) then
                return pending("cannot mount a tmpfs here (needs root): " .. why)
            end
            local log, sm
            local okay, err = pcall(function()
                log = logs.open({ dir = mnt .. "/log" }, { max_segment_size = 64 * KIB, index_interval_bytes = 4096 })
                fill(log, 0, 150)               -- about 600 KB: no room for a copy
                sm = manager(mnt .. "/log", { mode = "copy" })
                local s = pack(sm:create(log))
                local msg = assert.fails_with("NOSPC", s[1], s[2], s[3])
                assert.matches(mnt, msg, 1, true)
                for _, threads in ipairs({ 1, 2 }) do
                    local a = pack(ok(sm:create(log, { async = true, threads = threads })):wait())
                    assert.fails_with("NOSPC", a[1], a[2], a[3])
                end
                assert.are.same({}, ok(sm:list()))
                assert.are.same({}, snapshot_leftovers(sm))
                assert.are.equal(150, log:high_water_mark())
            end)
            if sm then sm:close() end
            if log then log:close() end
            collectgarbage(); collectgarbage()
            if not util.sh("umount " .. util.q(mnt) .. " 2>/dev/null") then util.sh("umount -l " .. util.q(mnt)) end
            assert(okay, err)
        end)

        it("create with another log's handle: INVALID at once, no job", function()
            local log = open(dir)
            local other = open(tmp .. "/other")
            local sm = manager(dir)
            local s = pack(sm:create(other))
            assert.fails_with("INVALID", s[1], s[2], s[3])
            assert.are.same(s, pack(sm:create(other, { async = true })))
            log:close(); other:close(); sm:close()
        end)
    end)
end)

-----------------------------------------------------------------------------
-- The caller's thread while a big job runs
-----------------------------------------------------------------------------

describe("while an async verify of a big snapshot runs", function()
    local BIG_MB = tonumber(os.getenv("TAKHIN_JOBS_BIG_MB") or "") or 1024
    local tmp

    after_each(function()
        collectgarbage(); collectgarbage()
        util.rmtree(tmp)
    end)

    -- nice of each thread of this process: { [tid] = nice }, and the pid
    -- (the main thread's tid).  /proc/<pid>/task/<tid>/stat, field 19.
    local function thread_nices()
        local f = assert(io.open("/proc/self/stat"))
        local pid = f:read("l"):match("^(%d+)")
        f:close()
        local nices = {}
        for _, tid in ipairs(util.ls("/proc/" .. pid .. "/task")) do
            local t = io.open(("/proc/%s/task/%s/stat"):format(pid, tid))
            if t then
                local rest = (t:read("l") or ""):match("^%d+ %b() (.*)$")
                t:close()
                local fields = {}
                for v in (rest or ""):gmatch("%S+") do fields[#fields + 1] = v end
                nices[tid] = tonumber(fields[17])
            end
        end
        return nices, pid
    end

    it("the calling thread keeps appending and reading", function()
        tmp = util.memory_tmpdir(BIG_MB * MIB + 256 * MIB)
        local dir = tmp .. "/log"
        local log = logs.open({ dir = dir }, { max_segment_size = 64 * MIB })
        -- BIG_MB records of 1 MiB each.
        local filler = string.rep("x", MIB - 16)
        local function big_value(o) return ("%15d|"):format(o) .. filler end
        local o = 0
        while o < BIG_MB do
            local recs = {}
            for i = o, math.min(o + 15, BIG_MB - 1) do recs[#recs + 1] = { key = "big", value = big_value(i) } end
            assert.are.equal(o, log:append_batch(recs))
            o = o + #recs
        end
        assert.is_true(log:size() >= BIG_MB * MIB)
        local sm = manager(dir)
        local snap = ok(sm:create(log))
        assert.is_true(snap.total_size >= BIG_MB * MIB)

        local base = log:high_water_mark()
        local appends, reads, midway = 0, 0, 0
        local job = ok(sm:verify(snap.id, { async = true }))
        -- wait with a timeout: false, "timeout" while the job runs.
        local w = pack(job:wait(0))
        if w[1] == false then
            assert.are.same(pack(false, "timeout"), w)
        else
            assert.are.same(pack(true), w)
        end
        assert.fails_with("INVALID", job:wait("soon"))
        -- The job's workers run at nice 19 (background work yields the CPU
        -- to the thread serving requests), one fewer than the CPUs (at
        -- least 1: `threads` unset); the caller's thread stays at 0.
        local nices, pid = thread_nices()
        local before = nices[pid]
        local cpus = tonumber(util.capture("nproc"):match("%d+"))
        local want = math.max(1, cpus - 1)
        local niced, seen_running, looks = 0, false, 0
        local function look()
            if job:done() or looks >= 40 then return end
            looks = looks + 1
            local n = 0
            for _, v in pairs(thread_nices()) do if v == 19 then n = n + 1 end end
            if not job:done() then
                seen_running = true
                niced = math.max(niced, n)
            end
        end
        while not job:done() do
            if niced < want then look() end
            local off = log:append("live", "appended during verify " .. appends)
            assert.are.equal(base + appends, off)
            appends = appends + 1
            local rec = ok(log:read(off))
            assert.are.equal("appended during verify " .. (appends - 1), rec.value)
            reads = reads + 1
            if appends % 8 == 0 then                -- a big record of the snapshot
                local at = (appends * 7919) % BIG_MB
                local r = ok(log:read(at))
                assert.are.equal(MIB, #r.value)
                assert(r.value == big_value(at), "record " .. at .. " differs")
                reads = reads + 1
            end
            local d, t = job:progress()
            if d < t then midway = midway + 1 end
        end
        assert.are.same(pack(true), pack(job:wait()))
        assert.are.equal(0, before)
        assert.are.equal(0, thread_nices()[pid])
        -- (at most `want`: fewer when the snapshot has fewer files)
        if seen_running then
            assert.is_true(niced >= 1 and niced <= want,
                           ("%d threads at nice 19 while the job ran, want 1 to %d"):format(niced, want))
        end
        assert.is_true(appends > 0, "no append completed while the verify ran")
        assert.is_true(reads > 0)
        -- What was appended is there, in order, after the job too.
        assert.are.equal(base + appends, log:high_water_mark())
        for i = 0, appends - 1 do
            assert.are.equal("appended during verify " .. i, ok(log:read(base + i)).value)
        end
        print(("\n# jobs: while an async verify of a %d MiB snapshot ran, the caller made %d appends "
               .. "and %d reads (%d of the appends with the job's progress below its total)")
              :format(BIG_MB, appends, reads, midway))
        log:close()
        sm:close()
    end)
end)
