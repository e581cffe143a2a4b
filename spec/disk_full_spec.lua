-- A full filesystem: appends, batches, snapshots and restores that run out
-- of space fail with NOSPC (or IO) naming the path, leave nothing half
-- written behind, and work again once space is freed.
--
-- Each test mounts its own 2 MiB tmpfs (so it needs root; it is pending
-- when mount is not permitted) and fills most of it with a ballast file,
-- which it removes to free the space again.

local takhin = require("takhin")
local util = require("helpers.util")
local logs = require("helpers.log")
require("helpers.assertions")

local FS_SIZE = "2m"
local SEGMENT = 64 * 1024
local LOG_OPTS = { max_segment_size = SEGMENT, index_interval_bytes = 1024 }

-- Records of a fixed size, so the bytes on disk say how many there are.
local function key(i) return ("k%06d"):format(i) end
local function value(i) return ("value-%06d-"):format(i) .. ("v"):rep(1000 - 13) end
local RECORD_BYTES = 34 + #key(0) + #value(0)

-- Small records, for filling index pages quickly.
local function small(i) return ("%010d"):format(i) end
local SMALL_BYTES = 34 + #key(0) + #small(0)

local function batch(from, n)
    local recs = {}
    for i = from, from + n - 1 do recs[#recs + 1] = { key = key(i), value = value(i), timestamp = i } end
    return recs
end

-- Bytes a non-root user could still write on the filesystem holding path.
local function free_bytes(path)
    local avail, bsize = util.capture("stat -f -c '%a %S' " .. util.q(path)):match("(%d+) (%d+)")
    return tonumber(avail) * tonumber(bsize)
end

-- Writes a ballast file that leaves about `leave` bytes free (none at all
-- for 0).
local function fill(path, dir, leave)
    local size = free_bytes(dir) - leave
    size = size - size % 4096
    assert(size > 0, "not enough room for a ballast file")
    util.write_file(path, ("\0"):rep(size))
    assert(free_bytes(dir) <= leave + 4096)
    if leave == 0 then assert.are.equal(0, free_bytes(dir)) end
end

-- tmpfs allocates whole pages: true when writing `grow` bytes at the end
-- of a file of `size` bytes needs a new one.
local PAGE = 4096
local function needs_page(size, grow)
    return math.ceil((size + grow) / PAGE) > math.ceil(size / PAGE)
end

local NOSPC = { NOSPC = true }
local NOSPC_OR_IO = { NOSPC = true, IO = true }

-- Every record 0 .. hwm-1 reads back as it was written (with values made
-- by val, default value).
local function assert_records(log, hwm, val)
    val = val or value
    assert.are.equal(hwm, log:high_water_mark())
    for i = 0, hwm - 1 do
        local rec, msg, code = log:read(i)
        assert(rec, ("read %d: %s %s"):format(i, tostring(msg), tostring(code)))
        assert.are.equal(key(i), rec.key)
        assert(rec.value == val(i), "record " .. i .. " differs")
    end
    local n = 0
    for rec in log:records() do
        assert.are.equal(n, rec.offset)
        n = n + 1
    end
    assert.are.equal(hwm, n)
end

describe("a full filesystem", function()
    local tmp, mnt, logdir, ballast, mounted, why
    local opened

    -- Every log and manager a test opens is closed before the unmount.
    local function track(obj)
        opened[#opened + 1] = obj
        return obj
    end

    local function open(opts)
        return track(logs.open({ dir = logdir }, opts or LOG_OPTS))
    end

    -- A log holding records 0 .. n-1.
    local function log_with(n)
        local log = open()
        if n > 0 then assert.are.equal(0, log:append_batch(batch(0, n))) end
        return log
    end

    before_each(function()
        opened = {}
        tmp = util.tmpdir()
        mnt = tmp .. "/fs"
        logdir = mnt .. "/log"
        ballast = mnt .. "/ballast"
        assert(util.sh("mkdir " .. util.q(mnt)))
        why = util.capture("mount -t tmpfs -o size=" .. FS_SIZE .. " tmpfs " .. util.q(mnt) .. " 2>&1; echo \"exit=$?\"")
        mounted = why:find("exit=0\n", 1, true) ~= nil
    end)

    after_each(function()
        for _, obj in ipairs(opened) do obj:close() end
        opened = {}
        collectgarbage(); collectgarbage()
        if mounted and not util.sh("umount " .. util.q(mnt) .. " 2>/dev/null") then
            util.sh("umount -l " .. util.q(mnt))
        end
        util.rmtree(tmp)
    end)

    local function skip_unless_mounted()
        if mounted then return false end
        pending("cannot mount a tmpfs here (needs root): " .. why)
        return true
    end

    -- The same story with a sparse index, with an index entry for every
    -- record, and with a new segment every four records.
    local APPEND_CASES = {
        { name = "sparse index", opts = LOG_OPTS },
        { name = "dense index", opts = { max_segment_size = SEGMENT, index_interval_bytes = 1 } },
        { name = "tiny segments", opts = { max_segment_size = 4 * RECORD_BYTES, index_interval_bytes = 1 } },
    }

    for _, case in ipairs(APPEND_CASES) do
        it("fails an append with NOSPC naming the log (" .. case.name .. "), keeps every earlier record, and resumes at the same offset once space is freed", function()
            if skip_unless_mounted() then return end
            local log = open(case.opts)
            fill(ballast, mnt, 300 * 1024)
            local n, msg, code = 0, nil, nil
            for i = 0, 5000 do
                local o, m, c = log:append(key(i), value(i), i)
                if not o then msg, code = m, c; break end
                assert.are.equal(i, o)
                n = i + 1
            end
            assert.is_true(n > 20, "the filesystem filled up too early: " .. n)
            assert.are.equal("NOSPC", code, msg)
            assert.truthy(msg:find(logdir, 1, true), msg)
            assert.are.equal(n, log:high_water_mark())

            -- Still full: the next try fails the same way and changes nothing.
            assert.fails_with(NOSPC, log:append(key(n), value(n), n))
            assert.are.equal(n, log:high_water_mark())
            assert_records(log, n)
            -- No torn record: the .log files hold exactly n whole records.
            assert.are.equal(n * RECORD_BYTES, util.log_bytes(logdir))

            assert.is_true(os.remove(ballast))
            assert.are.equal(n, log:append(key(n), value(n), n))
            for i = n + 1, n + 9 do assert.are.equal(i, log:append(key(i), value(i), i)) end
            assert_records(log, n + 10)
            log:close()

            log = open(case.opts)
            assert_records(log, n + 10)
            assert.are.equal((n + 10) * RECORD_BYTES, util.log_bytes(logdir))
            assert.are.equal(n + 10, log:append(key(n + 10), value(n + 10), n + 10))
            assert.are.equal(n + 11, log:offset_for_time(n + 11))
            assert.are.equal(n - 1, log:offset_for_time(n - 1))
        end)
    end

    -- The filesystem is left full at a moment when the next record still
    -- fits in the .log's last page but another write of the same append
    -- needs a new page: an index entry written after the record (which
    -- must then be cut back), or the seal trailer of a roll before it.
    describe("when a write other than the record's fails", function()
        local BIG = { max_segment_size = 1024 * 1024, index_interval_bytes = 1 }
        local ROLLING = { max_segment_size = 257 * SMALL_BYTES, index_interval_bytes = 1 }
        local CASES = {
            { name = "the .timeindex entry", ext = ".timeindex", opts = BIG,
              ready = function(f)
                  return not needs_page(f.log, SMALL_BYTES) and needs_page(f.timeindex, 16)
              end },
            { name = "the .index entry", ext = ".index", opts = BIG,
              ready = function(f)
                  return not needs_page(f.log, SMALL_BYTES) and not needs_page(f.timeindex, 16)
                      and needs_page(f.index, 12)
              end },
            { name = "the seal trailer of a roll", ext = ".timeindex", opts = ROLLING,
              ready = function(f)
                  return f.log + SMALL_BYTES > ROLLING.max_segment_size and needs_page(f.timeindex, 24)
              end },
        }

        -- Sizes of the active segment's files.
        local function active_files(log)
            local segs = log:segments()
            local base = segs[#segs].base_offset
            local f = { base = base }
            for _, ext in ipairs({ "log", "index", "timeindex" }) do
                f[ext] = util.file_size(logdir .. "/" .. util.segment_name(base, ext)) or 0
            end
            return f
        end

        for _, case in ipairs(CASES) do
            it("(" .. case.name .. ") fails with NOSPC naming that file and leaves every file as it was", function()
                if skip_unless_mounted() then return end
                local log = open(case.opts)
                local n = 0
                while n < 5000 and not (n > 0 and case.ready(active_files(log))) do
                    assert.are.equal(n, log:append(key(n), small(n), n))
                    n = n + 1
                end
                local f = active_files(log)
                assert.is_true(case.ready(f), "no such moment within 5000 records")
                local listing = util.ls(logdir)
                fill(ballast, mnt, 0)

                local msg = assert.fails_with(NOSPC, log:append(key(n), small(n), n))
                local file = logdir .. "/" .. util.segment_name(f.base, case.ext:sub(2))
                assert.truthy(msg:find(file, 1, true), msg)
                assert.are.same(f, active_files(log))
                assert.are.same(listing, util.ls(logdir))
                assert.are.equal(n * SMALL_BYTES, util.log_bytes(logdir))
                assert_records(log, n, small)

                assert.is_true(os.remove(ballast))
                assert.are.equal(n, log:append(key(n), small(n), n))
                assert.are.equal(n + 1, log:append(key(n + 1), small(n + 1), n + 1))
                log:close()
                log = open(case.opts)
                assert_records(log, n + 2, small)
                assert.are.equal((n + 2) * SMALL_BYTES, util.log_bytes(logdir))
                assert.are.equal(n, log:offset_for_time(n))
            end)
        end
    end)

    it("writes nothing of an append_batch that runs out of space, across segments", function()
        if skip_unless_mounted() then return end
        local log = log_with(20)
        fill(ballast, mnt, 200 * 1024)
        local files = util.ls(logdir)
        local bytes = util.log_bytes(logdir)

        -- 400 records of about 1 KB: several segments, twice the free space.
        local msg = assert.fails_with(NOSPC, log:append_batch(batch(20, 400)))
        assert.truthy(msg:find(logdir, 1, true), msg)
        assert.are.equal(20, log:high_water_mark())
        assert.are.equal(bytes, util.log_bytes(logdir))
        assert.are.same(files, util.ls(logdir))
        assert.fails_with({ OUT_OF_RANGE = true }, log:read(20))
        assert_records(log, 20)

        assert.is_true(os.remove(ballast))
        local first, last = log:append_batch(batch(20, 400))
        assert.are.equal(20, first)
        assert.are.equal(419, last)
        assert_records(log, 420)
        log:close()

        log = open()
        assert_records(log, 420)
        assert.are.equal(420 * RECORD_BYTES, util.log_bytes(logdir))
    end)

    describe("snapshots in copy mode", function()
        local HWM = 300                         -- about 300 KiB of records

        -- The hidden work directories a restore to `target` makes beside it.
        local function restore_leftovers(target)
            local parent, name = target:match("^(.*)/([^/]+)$")
            local left = {}
            for _, e in ipairs(util.ls(parent)) do
                if e:sub(1, #name + 2) == "." .. name .. "." then left[#left + 1] = e end
            end
            return left
        end

        it("fail a create with NOSPC or IO, leave no .tmp-* directory and list nothing new; the next create works", function()
            if skip_unless_mounted() then return end
            local log = log_with(HWM)
            local sm = track(assert(takhin.snapshot_manager(logdir, { mode = "copy" })))
            local s1 = assert(sm:create(log))
            local snapdir = sm:dir()
            fill(ballast, mnt, 100 * 1024)
            local before = util.ls(snapdir)

            local msg = assert.fails_with(NOSPC_OR_IO, sm:create(log, { label = "too big" }))
            assert.truthy(msg:find(snapdir, 1, true), msg)
            assert.are.same(before, util.ls(snapdir))
            local list = assert(sm:list())
            assert.are.equal(1, #list)
            assert.are.equal(s1.id, list[1].id)
            -- A manager opened now sees the same.
            local sm2 = track(assert(takhin.snapshot_manager(logdir, { mode = "copy" })))
            assert.are.equal(1, #assert(sm2:list()))
            assert.are.same(before, util.ls(snapdir))
            assert_records(log, HWM)

            assert.is_true(os.remove(ballast))
            local s2 = assert(sm:create(log, { label = "fits" }))
            assert.are.equal(HWM, s2.high_water_mark)
            assert.is_true(sm:verify(s2.id))
            list = assert(sm:list())
            assert.are.equal(2, #list)
            assert.are.equal(s2.id, list[1].id)
            assert.is_true(sm:verify(s1.id))
        end)

        it("fail a restore into a new directory cleanly: no target, no hidden work directory; the next restore works", function()
            if skip_unless_mounted() then return end
            local log = log_with(HWM)
            local sm = track(assert(takhin.snapshot_manager(logdir, { mode = "copy" })))
            local s1 = assert(sm:create(log))
            log:close()
            fill(ballast, mnt, 100 * 1024)

            local target = mnt .. "/restored"
            local msg = assert.fails_with(NOSPC_OR_IO, sm:restore(s1.id, target))
            assert.truthy(msg:find(mnt .. "/", 1, true) and msg:find("restored", 1, true), msg)
            assert.is_false(util.exists(target))
            assert.are.same({}, restore_leftovers(target))

            -- An empty directory as target stays as it was: there and empty.
            local empty = mnt .. "/empty"
            assert(util.sh("mkdir " .. util.q(empty)))
            assert.fails_with(NOSPC_OR_IO, sm:restore(s1.id, empty))
            assert.is_true(util.is_dir(empty))
            assert.are.same({}, util.ls(empty))
            assert.are.same({}, restore_leftovers(empty))
            assert.is_true(sm:verify(s1.id))

            assert.is_true(os.remove(ballast))
            assert.is_true(sm:restore(s1.id, target))
            assert.are.same({}, restore_leftovers(target))
            local r = track(assert(takhin.open_log({ dir = target })))
            assert_records(r, HWM)
        end)

        it("fail an in-place restore cleanly: the log stays the old one, with no work directory left", function()
            if skip_unless_mounted() then return end
            local log = log_with(HWM)
            local sm = track(assert(takhin.snapshot_manager(logdir, { mode = "copy" })))
            local s1 = assert(sm:create(log))
            log:append_batch(batch(HWM, 20))
            log:close()
            local files = util.ls(logdir)
            fill(ballast, mnt, 100 * 1024)

            local msg = assert.fails_with(NOSPC_OR_IO, sm:restore(s1.id, logdir, { replace = true }))
            assert.truthy(msg:find(logdir, 1, true), msg)
            assert.are.same(files, util.ls(logdir))
            log = open()
            assert_records(log, HWM + 20)
            log:close()

            assert.is_true(os.remove(ballast))
            assert.is_true(sm:restore(s1.id, logdir, { replace = true }))
            log = open()
            assert_records(log, HWM)
        end)
    end)
end)
