-- Retention (SPEC §8): a log that lives for months stays within its
-- budget by deleting whole sealed segments, oldest first -- by bytes
-- (max_bytes), by age (max_age), never the active one, never what a
-- cursor still needs (keep_uncommitted) -- or refuses appends instead
-- (discard = "new", FULL); delete_before(offset) moves the log start
-- offset for good.  Snapshots keep what they hard-linked; other handles
-- in other processes follow a moved base offset; and a process killed at
-- any step of a retention pass (the crash-point build) leaves a log whose
-- base offset is the old or the new one and whose every record reads.
--
-- Records here are 100 framed bytes (34 + a 1-byte key + a 65-byte value
-- that starts with the offset), so a segment of max_segment_size 1000
-- holds exactly 10: the segments of a log are [0,10), [10,20), ...

local takhin = require("takhin")
local util = require("helpers.util")
require("helpers.assertions")

local SEG = 1000                        -- max_segment_size: 10 records
local PER_SEG = 10

-- The value of the record at offset o (65 bytes; the same in children).
local VALUES = [[
local function value_for(o)
    return ("%08d:"):format(o) .. string.rep(string.char(97 + o % 26), 56)
end
]]
local value_for = load(VALUES .. " return value_for")()

local DAY = 24 * 3600 * 1000

local function now_ms() return os.time() * 1000 end

local function open(dir, extra)
    local opts = { dir = dir, max_segment_size = SEG }
    for k, v in pairs(extra or {}) do opts[k] = v end
    local log, msg, code = takhin.open_log(opts)
    assert(log, "open_log " .. dir .. ": " .. tostring(msg) .. " " .. tostring(code))
    return log
end

-- Appends offsets [hwm, to) with timestamps ts(o) (nil: now).
local function fill(log, to, ts)
    for o = log:high_water_mark(), to - 1 do
        local got, msg, code = log:append("k", value_for(o), ts and ts(o) or nil)
        assert(got == o, ("append %d: %s %s %s"):format(o, tostring(got), tostring(msg), tostring(code)))
    end
end

-- Every record of [from, to) reads back whole, by read() and records().
local function expect_records(log, from, to, where)
    where = where or ""
    for o = from, to - 1 do
        local rec, msg, code = log:read(o)
        assert(rec, ("%s read(%d): %s %s"):format(where, o, tostring(msg), tostring(code)))
        assert.are.equal(value_for(o), rec.value, where .. " read " .. o)
    end
    local expect = from
    for rec in log:records(from, to) do
        assert.are.equal(expect, rec.offset, where)
        assert.are.equal(value_for(expect), rec.value, where)
        expect = expect + 1
    end
    assert.are.equal(to, expect, where .. " records() ended early")
end

-- The base offsets of the segments on disk, from the .log file names.
local function bases_on_disk(dir)
    local out = {}
    for _, name in ipairs(util.ls_suffix(dir, ".log")) do out[#out + 1] = tonumber(name:match("^(%d+)%.log$")) end
    return out
end

-- No index file without its .log (a half-deleted segment).
local function expect_no_orphans(dir, where)
    local logs = {}
    for _, name in ipairs(util.ls_suffix(dir, ".log")) do logs[name:match("^(%d+)")] = true end
    for _, ext in ipairs({ ".index", ".timeindex" }) do
        for _, name in ipairs(util.ls_suffix(dir, ext)) do
            assert(logs[name:match("^(%d+)")], (where or "") .. ": " .. name .. " has no .log")
        end
    end
end

local function range(a, b, step)
    local t = {}
    for v = a, b, step or 1 do t[#t + 1] = v end
    return t
end

describe("retention options", function()
    local tmp
    before_each(function() tmp = util.tmpdir() end)
    after_each(function() collectgarbage(); collectgarbage(); util.rmtree(tmp) end)

    it("refuses bad values with INVALID", function()
        local dir = tmp .. "/log"
        local bad = {
            { max_bytes = 0 }, { max_bytes = -1 },
            { max_age = "7 parsecs" }, { max_age = -5 },
            { max_bytes = 100, discard = "oldest" },
            { discard = "new" },                      -- back-pressure needs a budget
        }
        for _, r in ipairs(bad) do
            assert.fails_with("INVALID", takhin.open_log({ dir = dir, retention = r }))
        end
    end)

    it("raises on an unknown option name or a retention that is not a table", function()
        local dir = tmp .. "/log"
        assert.has_error(function() takhin.open_log({ dir = dir, retention = { max_bytez = 10 } }) end)
        assert.has_error(function() takhin.open_log({ dir = dir, retention = { max_age_ms = 10 } }) end)
        assert.has_error(function() takhin.open_log({ dir = dir, retention = 1000 }) end)
    end)

    it("is off by default: apply_retention deletes nothing", function()
        local log = open(tmp .. "/log")
        fill(log, 55)
        assert.are.equal(0, log:apply_retention())
        assert.are.equal(0, log:base_offset())
        expect_records(log, 0, 55)
        log:close()
    end)
end)

describe("retention by bytes (max_bytes)", function()
    local tmp
    before_each(function() tmp = util.tmpdir() end)
    after_each(function() collectgarbage(); collectgarbage(); util.rmtree(tmp) end)

    it("keeps a log of 10 segments' budget written with 100 segments' worth within max_bytes + one segment at every step",
       function()
        local dir = tmp .. "/log"
        local MAX = 10 * SEG
        local log = open(dir, { retention = { max_bytes = MAX } })
        for o = 0, 100 * PER_SEG - 1 do
            assert.are.equal(o, log:append("k", value_for(o)))
            assert(log:size() <= MAX + SEG, ("after offset %d the log holds %d bytes"):format(o, log:size()))
            if o % PER_SEG == 0 then            -- it just rolled: look at the files too
                local on_disk = util.log_bytes(dir)
                assert(on_disk <= MAX + SEG, ("after offset %d the .log files hold %d bytes"):format(o, on_disk))
                -- whole segments, oldest first: the base is a segment's first offset
                assert.are.equal(0, log:base_offset() % PER_SEG)
            end
        end
        -- Kafka's rule keeps as much as the budget allows: after the last
        -- roll (at offset 990) the 10 sealed segments [890, 990) fill it.
        assert.are.equal(890, log:base_offset())
        assert.are.equal(1000, log:high_water_mark())
        assert.are.same(range(890, 990, PER_SEG), bases_on_disk(dir))
        expect_no_orphans(dir)
        expect_records(log, 890, 1000)
        assert.fails_with("OUT_OF_RANGE", log:read(889))
        assert.fails_with("OUT_OF_RANGE", log:read(0))
        log:close()

        -- The next process sees the same log.
        log = open(dir, { readonly = true })
        assert.are.equal(890, log:base_offset())
        expect_records(log, 890, 1000)
        log:close()
    end)

    it("deletes whole sealed segments but never the active one", function()
        local dir = tmp .. "/log"
        local log = open(dir, { retention = { max_bytes = 1 } })    -- less than one record
        fill(log, 35)
        assert.are.equal(30, log:base_offset())
        assert.are.same({ 30 }, bases_on_disk(dir))
        assert.are.equal(0, log:apply_retention())
        expect_records(log, 30, 35)
        assert.are.equal(35, log:append("k", value_for(35)))
        log:close()
    end)

    it("is applied at once by apply_retention, which counts the segments deleted", function()
        local dir = tmp .. "/log"
        local log = open(dir)
        fill(log, 50)                          -- [0,10) .. [30,40) sealed, [40,50) active
        log:close()
        log = open(dir, { retention = { max_bytes = 2500 } })
        assert.are.equal(0, log:base_offset(), "opening applies nothing by itself")
        -- 5000 bytes: [0,10), [10,20), [20,30) go, 2000 bytes stay
        assert.are.equal(3, log:apply_retention())
        assert.are.equal(30, log:base_offset())
        assert.are.same({ 30, 40 }, bases_on_disk(dir))
        assert.are.equal(0, log:apply_retention())
        expect_records(log, 30, 50)
        log:close()
        log = open(dir)
        assert.are.equal(30, log:base_offset())
        log:close()
    end)
end)

describe("retention by age (max_age)", function()
    local tmp
    before_each(function() tmp = util.tmpdir() end)
    after_each(function() collectgarbage(); collectgarbage(); util.rmtree(tmp) end)

    it("deletes the segments whose newest record is older than max_age, oldest first", function()
        local dir = tmp .. "/log"
        local now = now_ms()
        local ts = function(o)
            if o < 20 then return now - 10 * DAY end            -- [0,10), [10,20): old
            if o < 29 then return now - 10 * DAY end            -- [20,30): old records ...
            if o == 29 then return now - 3600 * 1000 end        -- ... but its newest is 1 h old
            if o < 40 then return now - 30 * DAY end            -- [30,40): older, behind a young one
            return now
        end
        local log = open(dir)
        fill(log, 45, ts)
        log:close()
        log = open(dir, { retention = { max_age = "7d" } })
        assert.are.equal(2, log:apply_retention())
        assert.are.equal(20, log:base_offset())
        assert.are.same({ 20, 30, 40 }, bases_on_disk(dir))
        expect_records(log, 20, 45)
        -- [30,40) is older than max_age, but [20,30) before it is not: the
        -- log start never jumps over a kept segment.
        assert.are.equal(0, log:apply_retention())
        log:close()
    end)

    it("runs when a segment rolls, with max_age in seconds", function()
        local dir = tmp .. "/log"
        local now = now_ms()
        local log = open(dir, { retention = { max_age = 3600 } })
        fill(log, 20, function() return now - 2 * 3600 * 1000 end)
        assert.are.equal(10, log:base_offset(), "the roll at offset 10 deleted [0,10)")
        fill(log, 25)                                             -- now: the roll at 20 deletes [10,20)
        assert.are.equal(20, log:base_offset())
        assert.are.same({ 20 }, bases_on_disk(dir))
        expect_records(log, 20, 25)
        assert.are.equal(0, log:apply_retention())
        log:close()
    end)

    it("keeps records stamped in the future and within max_age", function()
        local dir = tmp .. "/log"
        local now = now_ms()
        local log = open(dir, { retention = { max_age = "1h" } })
        fill(log, 25, function(o) return o < 10 and now + DAY or now - 60 * 1000 end)
        assert.are.equal(0, log:apply_retention())
        assert.are.equal(0, log:base_offset())
        expect_records(log, 0, 25)
        log:close()
    end)
end)

describe('retention with discard = "new"', function()
    local tmp
    before_each(function() tmp = util.tmpdir() end)
    after_each(function() collectgarbage(); collectgarbage(); util.rmtree(tmp) end)

    it("refuses an append past max_bytes with FULL and loses nothing already there", function()
        local dir = tmp .. "/log"
        local log = open(dir, { retention = { max_bytes = 2550, discard = "new" } })
        fill(log, 25)                                             -- 2500 bytes, 2 rolls
        local msg = assert.fails_with("FULL", log:append("k", value_for(25)))
        assert.matches("2550", msg)
        assert.fails_with("FULL", log:append_batch({ { key = "k", value = "small" },
                                                      { key = "k", value = value_for(26) } }))
        assert.are.equal(25, log:high_water_mark())
        assert.are.equal(2500, util.log_bytes(dir), "nothing was written")
        -- a record that fits the 50 bytes left is taken
        assert.are.equal(25, log:append(nil, string.rep("s", 16)))           -- 34 + 16
        assert.fails_with("FULL", log:append(nil, ""))
        -- nothing was deleted to make room, by rolls or on demand
        assert.are.equal(0, log:apply_retention())
        assert.are.equal(0, log:base_offset())
        expect_records(log, 0, 25)
        log:close()

        -- the budget holds for the next process too
        log = open(dir, { retention = { max_bytes = 2550, discard = "new" } })
        assert.fails_with("FULL", log:append("k", value_for(26)))
        expect_records(log, 0, 25)
        assert.are.equal(26, log:high_water_mark())
        log:close()
    end)

    it("takes appends again once delete_before freed whole segments", function()
        local dir = tmp .. "/log"
        local log = open(dir, { retention = { max_bytes = 2500, discard = "new" } })
        fill(log, 25)
        assert.fails_with("FULL", log:append("k", value_for(25)))
        assert.are.equal(10, log:delete_before(10))                -- frees [0,10): 1000 bytes
        fill(log, 35)
        assert.fails_with("FULL", log:append("k", value_for(35)))
        expect_records(log, 10, 35)
        log:close()
    end)

    it("still deletes by age", function()
        local dir = tmp .. "/log"
        local now = now_ms()
        local log = open(dir, { retention = { max_bytes = 100 * SEG, discard = "new", max_age = "1d" } })
        fill(log, 25, function(o) return o < 10 and now - 2 * DAY or now end)
        assert.are.equal(10, log:base_offset())
        expect_records(log, 10, 25)
        log:close()
    end)
end)

describe("delete_before", function()
    local tmp
    before_each(function() tmp = util.tmpdir() end)
    after_each(function() collectgarbage(); collectgarbage(); util.rmtree(tmp) end)

    it("makes records below the offset unreadable and deletes the segments wholly below it", function()
        local dir = tmp .. "/log"
        local log = open(dir)
        fill(log, 45, function(o) return 1700000000000 + o end)
        assert.are.equal(25, log:delete_before(25))
        assert.are.equal(25, log:base_offset())
        assert.are.equal(45, log:high_water_mark())
        assert.are.same({ 20, 30, 40 }, bases_on_disk(dir))
        expect_no_orphans(dir)
        for _, o in ipairs({ 0, 9, 10, 20, 24 }) do
            assert.fails_with("OUT_OF_RANGE", log:read(o))
        end
        expect_records(log, 25, 45)
        local first = log:records()()
        assert.are.equal(25, first.offset, "records() starts at the base offset")
        assert.has_error(function() log:records(24) end)
        -- and the log goes on
        fill(log, 60)
        expect_records(log, 25, 60)
        log:close()
    end)

    it("leaves offset_for_time answering within what is left", function()
        local dir = tmp .. "/log"
        local log = open(dir)
        fill(log, 45, function(o) return 1700000000000 + o end)
        log:delete_before(25)
        assert.are.equal(30, log:offset_for_time(1700000000000 + 30))
        assert.are.equal(45, log:offset_for_time(1700000000000 + 99))
        local sm = assert(takhin.snapshot_manager(dir))
        local snap = assert(sm:create(log))
        assert.are.equal(25, log:offset_for_time(0), "every record left is at or after ts 0")
        assert.are.equal(25, log:offset_for_time(1700000000000 + 22))
        -- every record of the snapshot is after the time: none is restored
        assert(sm:restore(snap.id, tmp .. "/upto", { upto_timestamp = 1700000000000 + 22 }))
        local r = open(tmp .. "/upto", { readonly = true })
        assert.are.same({ 25, 25 }, { r:base_offset(), r:high_water_mark() })
        r:close()
        sm:close()
        log:close()
    end)

    it("does nothing below the base offset and refuses offsets past the high water mark", function()
        local dir = tmp .. "/log"
        local log = open(dir)
        fill(log, 25)
        assert.are.equal(12, log:delete_before(12))
        assert.are.equal(12, log:delete_before(5))
        assert.are.equal(12, log:delete_before(12))
        assert.are.equal(12, log:base_offset())
        local msg = assert.fails_with("OUT_OF_RANGE", log:delete_before(26))
        assert.matches("26", msg)
        assert.are.equal(12, log:base_offset())
        expect_records(log, 12, 25)
        assert.has_error(function() log:delete_before("x") end)
        assert.has_error(function() log:delete_before(1.5) end)
        log:close()
    end)

    it("may move the base offset up to the high water mark; appends go on from there", function()
        local dir = tmp .. "/log"
        local log = open(dir)
        fill(log, 25)
        assert.are.equal(25, log:delete_before(25))
        assert.are.equal(25, log:base_offset())
        assert.are.equal(25, log:high_water_mark())
        assert.fails_with("OUT_OF_RANGE", log:read(24))
        assert.is_nil(log:records()())
        log:close()
        log = open(dir)
        assert.are.equal(25, log:base_offset())
        assert.are.equal(25, log:high_water_mark())
        fill(log, 30)
        expect_records(log, 25, 30)
        log:close()
    end)

    it("survives a reopen, also when the offset falls inside a segment", function()
        local dir = tmp .. "/log"
        local log = open(dir)
        fill(log, 45)
        assert.are.equal(27, log:delete_before(27))
        log:close()
        for _, ro in ipairs({ true, false }) do
            log = open(dir, { readonly = ro })
            assert.are.equal(27, log:base_offset())
            assert.fails_with("OUT_OF_RANGE", log:read(26))
            expect_records(log, 27, 45)
            log:close()
        end
        -- to a segment boundary, and again inside one
        log = open(dir)
        assert.are.equal(30, log:delete_before(30))
        log:close()
        log = open(dir)
        assert.are.equal(30, log:base_offset())
        assert.are.equal(33, log:delete_before(33))
        log:close()
        log = open(dir, { readonly = true })
        assert.are.equal(33, log:base_offset())
        expect_records(log, 33, 45)
        log:close()
    end)

    it("survives SIGKILL of the process that moved it", function()
        local dir = tmp .. "/log"
        local log = open(dir)
        fill(log, 45)
        log:close()
        local pid, out = util.spawn_lua(tmp, [[
local takhin = require("takhin")
local log = assert(takhin.open_log{ dir = arg[1], max_segment_size = 1000 })
local base = assert(log:delete_before(23))
print("moved " .. base)
io.stdout:flush()
log:wait(2 ^ 40)                                      -- killed here (no fork holds the lock)
]], { dir })
        local text = util.wait_for_content(out, "moved", 3000)
        util.stop(pid)
        assert.matches("moved 23", text)
        log = open(dir)
        assert.are.equal(23, log:base_offset())
        assert.fails_with("OUT_OF_RANGE", log:read(22))
        expect_records(log, 23, 45)
        log:close()
    end)

    it("is refused on a read-only handle, as is apply_retention", function()
        local dir = tmp .. "/log"
        local w = open(dir)
        fill(w, 25)
        local r = open(dir, { readonly = true })
        assert.fails_with("READONLY", r:delete_before(10))
        assert.fails_with("READONLY", r:apply_retention())
        assert.are.equal(0, w:base_offset())
        r:close()
        w:close()
    end)

    it("bounds truncate and commit below by the base offset", function()
        local dir = tmp .. "/log"
        local log = open(dir)
        fill(log, 25)
        log:delete_before(15)
        assert.fails_with("OUT_OF_RANGE", log:truncate(14))
        assert.fails_with("OUT_OF_RANGE", log:commit("c", 14))
        assert.is_true(log:commit("c", 15))
        assert.is_true(log:truncate(20))
        assert.are.equal(15, log:base_offset())
        assert.are.equal(20, log:high_water_mark())
        log:close()
    end)
end)

describe("snapshots and retention", function()
    local tmp
    before_each(function() tmp = util.tmpdir() end)
    after_each(function() collectgarbage(); collectgarbage(); util.rmtree(tmp) end)

    it("a snapshot taken before retention deleted its segments still verifies and restores", function()
        local dir = tmp .. "/log"
        local log = open(dir)
        fill(log, 45)
        local sm = assert(takhin.snapshot_manager(dir))
        local snap = assert(sm:create(log))
        local snap_files = util.ls(sm:dir() .. "/snapshot-" .. snap.id)
        log:close()
        log = open(dir, { retention = { max_bytes = 2 * SEG } })
        assert.are.equal(3, log:apply_retention())                -- [0,30): 1500 bytes stay
        assert.are.equal(33, log:delete_before(33))
        fill(log, 70)                          -- the roll at 60 deletes [30,40) too
        assert.are.equal(40, log:base_offset())
        assert.are.same({ 40, 50, 60 }, bases_on_disk(dir))
        -- retention never touches .snapshots/
        assert.are.same(snap_files, util.ls(sm:dir() .. "/snapshot-" .. snap.id))
        assert.is_true(sm:verify(snap.id))
        assert(sm:restore(snap.id, tmp .. "/restored"))
        local r = open(tmp .. "/restored", { readonly = true })
        assert.are.equal(0, r:base_offset())
        assert.are.equal(45, r:high_water_mark())
        expect_records(r, 0, 45)
        r:close()
        log:close()
        sm:close()
    end)

    it("a snapshot taken after delete_before starts at the new base offset", function()
        local dir = tmp .. "/log"
        local log = open(dir)
        fill(log, 45)
        log:delete_before(27)
        local sm = assert(takhin.snapshot_manager(dir))
        local snap = assert(sm:create(log))
        assert.are.equal(27, snap.base_offset)
        assert.are.equal(45, snap.high_water_mark)
        assert(sm:restore(snap.id, tmp .. "/restored"))
        for _, ro in ipairs({ true, false }) do
            local r = open(tmp .. "/restored", { readonly = ro })
            assert.are.equal(27, r:base_offset())
            assert.fails_with("OUT_OF_RANGE", r:read(26))
            expect_records(r, 27, 45)
            r:close()
        end
        log:close()
        sm:close()
    end)
end)

describe("retention with keep_uncommitted", function()
    local tmp
    before_each(function() tmp = util.tmpdir() end)
    after_each(function() collectgarbage(); collectgarbage(); util.rmtree(tmp) end)

    it("deletes nothing while no cursor is committed", function()
        local dir = tmp .. "/log"
        local now = now_ms()
        local log = open(dir, { retention = { max_bytes = SEG, max_age = "1d", keep_uncommitted = true } })
        fill(log, 45, function() return now - 3 * DAY end)
        assert.are.equal(0, log:apply_retention())
        assert.are.equal(0, log:base_offset())
        expect_records(log, 0, 45)
        log:close()
    end)

    it("holds deletion back until the slowest cursor moves", function()
        local dir = tmp .. "/log"
        local log = open(dir, { retention = { max_bytes = 2 * SEG, keep_uncommitted = true } })
        fill(log, 20)
        assert(log:commit("slow", 5))
        assert(log:commit("fast", 15))
        fill(log, 60)                          -- 6000 bytes: 4 rolls, each held back
        assert.are.equal(0, log:base_offset())
        assert.are.equal(0, log:apply_retention())
        assert(log:commit("fast", 35))
        assert.are.equal(0, log:apply_retention(), "the slow cursor still holds [0,10)")
        -- slow moves to 25: [0,10) and [10,20) go; [20,30) holds 25
        assert(log:commit("slow", 25))
        assert.are.equal(2, log:apply_retention())
        assert.are.equal(20, log:base_offset())
        -- slow moves past fast: fast (35) now holds [30,40)
        assert(log:commit("slow", 60))
        assert.are.equal(1, log:apply_retention())
        assert.are.equal(30, log:base_offset())
        -- without fast, only the budget is left: [30,40) goes, 2000 bytes stay
        assert(log:delete_cursor("fast"))
        assert.are.equal(1, log:apply_retention())
        assert.are.equal(40, log:base_offset())
        expect_records(log, 40, 60)
        -- no cursor at all: nothing goes
        assert(log:delete_cursor("slow"))
        fill(log, 80)
        assert.are.equal(40, log:base_offset())
        assert.are.equal(0, log:apply_retention())
        log:close()
    end)

    it("is applied when a segment rolls, and reads cursors other processes commit", function()
        local dir = tmp .. "/log"
        local log = open(dir, { shared = true, retention = { max_bytes = 2 * SEG, keep_uncommitted = true } })
        fill(log, 45)
        assert(log:commit("c", 0))
        local out, ok = util.run_lua(tmp, [[
local takhin = require("takhin")
local log = assert(takhin.open_log{ dir = arg[1], shared = true, max_segment_size = 1000 })
assert(log:commit("c", 32, { expect = 0 }))
print("committed")
]], { dir })
        assert(ok, out)
        assert.are.equal(32, log:committed("c"))
        fill(log, 51)                          -- the roll at 50 deletes [0,30), not [30,40)
        assert.are.equal(30, log:base_offset())
        expect_records(log, 30, 51)
        log:close()
    end)

    it("keeps an old segment that holds uncommitted records", function()
        local dir = tmp .. "/log"
        local now = now_ms()
        local log = open(dir, { retention = { max_age = "1d", keep_uncommitted = true } })
        fill(log, 45, function(o) return o < 30 and now - 3 * DAY or now end)
        assert(log:commit("c", 12))
        assert.are.equal(1, log:apply_retention())                -- [0,10) only
        assert.are.equal(10, log:base_offset())
        assert(log:commit("c", 45))
        assert.are.equal(2, log:apply_retention())                -- [10,20), [20,30): old
        assert.are.equal(30, log:base_offset())
        log:close()
    end)

    it('with discard = "new" the log reports FULL', function()
        local dir = tmp .. "/log"
        local log = open(dir, { retention = { max_bytes = 2000, discard = "new", keep_uncommitted = true } })
        fill(log, 20)
        assert(log:commit("c", 20))
        assert.fails_with("FULL", log:append("k", value_for(20)))
        expect_records(log, 0, 20)
        log:close()
    end)
end)

-------------------------------------------------------------------------
-- Other handles, in other processes
-------------------------------------------------------------------------

-- A child that follows the log at arg[1]: it opens it (read-only, or as
-- a shared writer when arg[2] is "shared"), reads offsets 0, 15 and 44
-- (so it holds those segments open), reports "ready", then for each go
-- file go1, go2 reports one line: base, hwm, the codes of read(0) and
-- read(base - 1), whether every record from base reads whole, and (a
-- shared writer) the offset of one more append.
local FOLLOWER = VALUES .. [[
local takhin = require("takhin")
local proc = require("helpers.proc")
local dir, mode = arg[1], arg[2]
local log = assert(takhin.open_log{ dir = dir, readonly = mode ~= "shared", shared = mode == "shared",
                                    max_segment_size = 1000 })
for _, o in ipairs({ 0, 15, 44 }) do assert(log:read(o)) end
local report = proc.reporter(dir .. "/../follower.report")
report("ready")
for round = 1, 2 do
    assert(proc.wait_for_file(dir .. "/../go" .. round, 3000))
    local function code(o)
        if o < 0 then return "-" end
        local rec, _, c = log:read(o)
        return rec and "OK" or c
    end
    local base, hwm = log:base_offset(), log:high_water_mark()
    local whole, n = "whole", 0
    for rec in log:records(base) do
        if rec.offset ~= base + n or rec.value ~= value_for(rec.offset) then whole = "damaged@" .. rec.offset end
        n = n + 1
    end
    if base + n ~= hwm then whole = "short:" .. (base + n) end
    local appended = "-"
    if mode == "shared" then
        appended = assert(log:append("k", value_for(hwm)))
    end
    report(round, base, hwm, code(0), code(base - 1), whole, appended)
end
log:close()
]]

describe("other handles follow a moved base offset", function()
    local tmp, pid
    before_each(function() tmp = util.tmpdir() end)
    after_each(function()
        util.stop(pid)
        pid = nil
        collectgarbage(); collectgarbage()
        util.rmtree(tmp)
    end)

    local function fields(line)
        local t = {}
        for f in line:gmatch("[^\t]+") do t[#t + 1] = f end
        return t
    end

    for _, mode in ipairs({ "readonly", "shared" }) do
        it(("a %s handle in another process reads no deleted record"):format(
               mode == "shared" and "shared writer" or "read-only"), function()
            local dir = tmp .. "/log"
            local wopts = mode == "shared" and { shared = true } or {}
            local log = open(dir, wopts)
            fill(log, 45)
            local report = tmp .. "/follower.report"
            pid = util.spawn_lua(tmp, FOLLOWER, { dir, mode })
            assert.are.equal(1, util.wait_lines(report, 1, pid), "the follower did not start")

            -- 1: the base moves inside segment [20,30); [0,10), [10,20) are deleted
            assert.are.equal(25, log:delete_before(25))
            util.write_file(tmp .. "/go1", "")
            assert.are.equal(2, util.wait_lines(report, 2, pid), "the follower died")
            local r = fields(util.lines(report)[2])
            assert.are.same({ "1", "25", "45", "OUT_OF_RANGE", "OUT_OF_RANGE", "whole",
                              mode == "shared" and "45" or "-" }, r)

            -- 2: more records, and retention by bytes removes more segments
            log:close()
            log = open(dir, { shared = wopts.shared, retention = { max_bytes = 2 * SEG } })
            fill(log, 90)                      -- the roll at 80 leaves [60,70), [70,80) sealed
            assert.are.equal(60, log:base_offset())
            util.write_file(tmp .. "/go2", "")
            assert.are.equal(3, util.wait_lines(report, 3, pid), "the follower died")
            r = fields(util.lines(report)[3])
            assert.are.same({ "2", "60", "90", "OUT_OF_RANGE", "OUT_OF_RANGE", "whole",
                              mode == "shared" and "90" or "-" }, r)
            assert.is_true(util.wait_exit(pid, 1000))
            log:close()
            log = open(dir, { readonly = true })
            assert.are.equal(60, log:base_offset())
            expect_records(log, 60, mode == "shared" and 91 or 90)
            log:close()
        end)
    end

    -- Three processes race: a shared writer appends with a byte budget
    -- (retention at every roll), a shared writer moves the base with
    -- delete_before(hwm - 15) as fast as it can, a reader reads the tail.
    it("a reader racing with retention in other processes gets OUT_OF_RANGE for what went, and every live record whole",
       function()
        local dir = tmp .. "/log"
        open(dir):close()
        local N = 6000
        local stop = tmp .. "/stop"
        local writer, wout = util.spawn_lua(tmp, VALUES .. [[
local takhin = require("takhin")
local log = assert(takhin.open_log{ dir = arg[1], shared = true, max_segment_size = 1000,
                                    retention = { max_bytes = 5000 } })
for o = 0, tonumber(arg[2]) - 1 do
    local got, msg, code = log:append("k", value_for(o))
    assert(got == o, tostring(got) .. " " .. tostring(msg) .. " " .. tostring(code))
end
print("appended")
]], { dir, tostring(N) })
        pid = writer
        local mover, mout = util.spawn_lua(tmp, [[
local takhin = require("takhin")
local log = assert(takhin.open_log{ dir = arg[1], shared = true, max_segment_size = 1000 })
local moves = 0
while not io.open(arg[2]) do
    local h = log:high_water_mark()
    if h > 20 then assert(log:delete_before(h - 15)); moves = moves + 1 end
    log:wait(h, "1ms")
end
print("moves " .. moves)
]], { dir, stop })
        -- The reader sorts what it gets: a record read whole, a record
        -- gone (below the base offset after the read) and said so with
        -- OUT_OF_RANGE or with another code, a failed read of a record
        -- that was live (at or above the base offset after the failure:
        -- the base never moves back), a damaged record, a failed open.
        local reader, rout = util.spawn_lua(tmp, VALUES .. [[
local takhin = require("takhin")
local n = { reads = 0, gone = 0, wrong = 0, live = 0, damaged = 0, open = 0 }
local first = {}
local function note(kind, text)
    n[kind] = n[kind] + 1
    first[kind] = first[kind] or text
end
local log
while not log do
    local msg, code
    log, msg, code = takhin.open_log{ dir = arg[1], readonly = true }
    if not log then note("open", tostring(msg) .. " " .. tostring(code)) end
end
while not io.open(arg[2]) do
    local base, hwm = log:base_offset(), log:high_water_mark()
    for o = hwm - 1, math.max(base, hwm - 30), -1 do
        local rec, msg, code = log:read(o)
        n.reads = n.reads + 1
        if rec then
            if rec.offset ~= o or rec.value ~= value_for(o) then note("damaged", "offset " .. o) end
        else
            local now = log:base_offset()
            local text = ("read(%d), base %d after it: %s %s"):format(o, now, tostring(msg), tostring(code))
            if o >= now then note("live", text)
            elseif code == "OUT_OF_RANGE" then n.gone = n.gone + 1
            else note("wrong", text) end
        end
    end
end
print(("reads %d gone %d wrong %d live %d damaged %d open %d"):format(n.reads, n.gone, n.wrong, n.live,
                                                                     n.damaged, n.open))
for _, k in ipairs({ "wrong", "live", "damaged", "open" }) do print(k .. ": " .. (first[k] or "-")) end
]], { dir, stop })
        local done = util.wait_exit(writer, 6000)
        util.write_file(stop, "")
        local others = util.wait_exit(mover, 1000) and util.wait_exit(reader, 1000)
        util.stop(mover)
        util.stop(reader)
        assert(done, "the writer did not finish: " .. util.read_file(wout))
        assert(others, "the mover or the reader did not stop")
        assert.matches("appended", util.read_file(wout))
        assert.matches("moves %d+", util.read_file(mout))
        local report = util.read_file(rout)
        local counts = { report:match("reads (%d+) gone (%d+) wrong (%d+) live (%d+) damaged (%d+) open (%d+)") }
        assert(counts[1], "the reader failed: " .. report)
        assert.is_true(tonumber(counts[1]) > 0)
        assert.are.equal("0", counts[5], "damaged records: " .. report)
        local log = open(dir, { readonly = true })
        assert.are.equal(N, log:high_water_mark())
        expect_records(log, log:base_offset(), N)
        log:close()
        assert.are.same({ "0", "0", "0" }, { counts[3], counts[4], counts[6] }, report)
    end)

    it("a second handle in the same process follows too", function()
        local dir = tmp .. "/log"
        local w = open(dir)
        fill(w, 45)
        local r = open(dir, { readonly = true })
        assert(r:read(0))
        w:delete_before(31)
        assert.are.equal(31, r:base_offset())
        assert.fails_with("OUT_OF_RANGE", r:read(0))
        assert.fails_with("OUT_OF_RANGE", r:read(30))
        expect_records(r, 31, 45)
        r:close()
        w:close()
    end)
end)

-------------------------------------------------------------------------
-- Crash points (the fault build)
-------------------------------------------------------------------------

-- (children: util.run_fault, the crash-point build under lua5.4)
local FAULT_BUILD, NO_FAULT_BUILD = util.fault_build()

-- The child: one retention pass on arg[2], killed at the step.
--   delete_before    delete_before(35): .start, then [0,30) go
--   apply_retention  max_bytes 3000 over 6000 bytes: [0,30) go
--   roll             the same budget, applied by the roll of an append
local CRASH_CHILD = VALUES .. [[
local takhin = require("takhin")
local op, dir = arg[1], arg[2]
local retention = op ~= "delete_before" and { max_bytes = 3000 } or nil
local log = assert(takhin.open_log{ dir = dir, max_segment_size = 1000, retention = retention })
if op == "delete_before" then assert(log:delete_before(35))
elseif op == "apply_retention" then assert(log:apply_retention() == 3)
else assert(log:append("k", value_for(60))) end
print("survived")
]]

local OLD_BASE, HWM = 0, 60
local NEW_BASE = { delete_before = 35, apply_retention = 30, roll = 30 }
local STEPS = {
    { "delete_before", "retention.start" }, { "delete_before", "retention.published" },
    { "delete_before", "retention.removing" }, { "delete_before", "retention.removed" },
    { "apply_retention", "retention.published" }, { "apply_retention", "retention.removing" },
    { "apply_retention", "retention.removed" },
    { "roll", "retention.published" }, { "roll", "retention.removing" }, { "roll", "retention.removed" },
}

describe("a retention pass killed at a crash point", function()
    if not FAULT_BUILD then
        it("needs the crash-point build", function()
            pending("skipped: " .. NO_FAULT_BUILD)
        end)
        return
    end

    local tmp, template
    setup(function()
        tmp = util.tmpdir()
        template = tmp .. "/template"
        local log = open(template)
        fill(log, HWM)                        -- [0,10) .. [40,50) sealed, [50,60) active
        log:close()
    end)
    teardown(function() collectgarbage(); collectgarbage(); util.rmtree(tmp) end)

    it("covers every retention crash point named in csrc/", function()
        local covered = {}
        for _, s in ipairs(STEPS) do covered[s[2]] = true end
        local found = 0
        for _, file in ipairs(util.ls_suffix("csrc", ".c")) do
            for name in util.read_file("csrc/" .. file):gmatch('TK_FAULT%("(retention%.[%w_]+)"%)') do
                found = found + 1
                assert(covered[name], "crash point " .. name .. " (csrc/" .. file .. ") has no case here")
            end
        end
        assert.is_true(found >= 4)
    end)

    -- What a handle finds after the crash: the base offset is the old or
    -- the new one, every record from it reads whole, nothing below it does.
    local function check_view(log, op, where)
        local base = log:base_offset()
        assert(base == OLD_BASE or base == NEW_BASE[op],
               ("%s: base offset %d, neither %d nor %d"):format(where, base, OLD_BASE, NEW_BASE[op]))
        assert.are.equal(HWM, log:high_water_mark(), where)
        expect_records(log, base, HWM, where)
        if base > 0 then assert.fails_with("OUT_OF_RANGE", log:read(base - 1)) end
        return base
    end


    for n, s in ipairs(STEPS) do
        local op, step = s[1], s[2]
        for _, watched in ipairs({ false, true }) do
            local function body(work)
                local dir = work .. "/log"
                -- with a reader open the shared state outlives the child,
                -- its lock "owner died": the next locker repairs
                local reader = watched and open(dir, { readonly = true }) or nil
                local out, status = util.run_fault(work, CRASH_CHILD, { op, dir }, step)
                assert(not out:find("survived", 1, true), step .. ": never reached: " .. out)
                assert.are.equal(137, status, step .. ": not killed by SIGKILL: " .. out)

                if reader then
                    check_view(reader, op, step .. " (the reader that stayed open)")
                end
                local ro = open(dir, { readonly = true })
                local seen = check_view(ro, op, step .. " (read-only, opened after)")
                ro:close()
                local log = open(dir)
                local base = check_view(log, op, step .. " (writer)")
                assert.is_true(base >= seen, step .. ": the base offset went back")
                expect_no_orphans(dir, step)
                -- the log goes on: appends, and the pass done again completes it
                assert.are.equal(HWM, log:append("k", value_for(HWM)))
                assert.are.equal(NEW_BASE[op], log:delete_before(NEW_BASE[op]))
                expect_records(log, NEW_BASE[op], HWM + 1, step .. " (after)")
                log:close()
                if reader then
                    assert.are.equal(NEW_BASE[op], reader:base_offset())
                    expect_records(reader, NEW_BASE[op], HWM + 1, step .. " (the reader, after)")
                    reader:close()
                end
                log = open(dir, { readonly = true })
                assert.are.equal(NEW_BASE[op], log:base_offset())
                expect_no_orphans(dir, step .. " (after)")
                log:close()
                local first = NEW_BASE[op] - NEW_BASE[op] % PER_SEG
                assert.are.equal(first, bases_on_disk(dir)[1], step .. ": the first segment left")
            end
            it(("%s at %s%s: the old or the new base offset, every record readable"):format(
                   op, step, watched and " (a reader holds the log open)" or ""), function()
                local work = ("%s/w%02d%s"):format(tmp, n, watched and "r" or "")
                assert(util.sh("mkdir -p " .. util.q(work)))
                util.copytree(template, work .. "/log")
                body(work)
                collectgarbage(); collectgarbage()
                util.sh("rm -rf " .. util.q(work))
            end)
        end
    end
end)
