-- takhin.Log: the Lua API of docs/API.md.

local takhin = require("takhin")
local util = require("helpers.util")
local logs = require("helpers.log")
require("helpers.assertions")

-- Assert that fn raises an error whose text contains each plain string.
local function raises(fn, ...)
    local ok, err = pcall(fn)
    assert.is_false(ok, "expected an error")
    for _, s in ipairs({ ... }) do
        assert.truthy(tostring(err):find(s, 1, true),
                      "error '" .. tostring(err) .. "' lacks '" .. s .. "'")
    end
    return err
end

local function collect(iter)
    local out = {}
    for rec in iter do out[#out + 1] = rec end
    return out
end

local function all_bytes()
    local t = {}
    for i = 0, 255 do t[#t + 1] = string.char(i) end
    return table.concat(t)
end

describe("takhin.Log", function()
    local dir

    before_each(function() dir = util.tmpdir() end)
    after_each(function()
        collectgarbage(); collectgarbage()
        util.rmtree(dir)
    end)

    local function open(given)
        return logs.open({ dir = dir }, given)
    end

    describe("open_log", function()
        it("creates the directory, with parents, for a writer", function()
            local sub = dir .. "/a/b/log"
            local log = open({ dir = sub })
            assert.is_true(util.is_dir(sub))
            assert.are.equal(0, log:high_water_mark())
            assert.are.equal(0, log:base_offset())
            assert.are.equal(1, log:num_segments())
            log:close()
        end)

        it("gives an empty log one empty active segment", function()
            local log = open()
            local segs = log:segments()
            assert.are.equal(1, #segs)
            assert.are.same({ base_offset = 0, next_offset = 0, size = 0, active = true }, segs[1])
            assert.are.equal(0, log:size())
            log:close()
        end)

        it("returns NOT_FOUND naming the path when read-only and the directory is missing", function()
            local missing = dir .. "/nope"
            local msg = assert.fails_with("NOT_FOUND", takhin.open_log({ dir = missing, readonly = true }))
            assert.truthy(msg:find(missing, 1, true), msg)
            assert.is_false(util.exists(missing))
        end)

        it("raises on an unknown option, naming it", function()
            raises(function() takhin.open_log({ dir = dir, max_segment_sise = 1024 }) end,
                   "max_segment_sise")
        end)

        it("returns INVALID for option values out of range", function()
            local bad = {
                { max_segment_size = 0 },
                { max_segment_size = util.pow2(30) + 1 },
                { index_interval_bytes = 0 },
                { max_record_size = 63 },
                { max_record_size = util.pow2(30) + 1 },
                { sync = "sometimes" },
            }
            for _, opts in ipairs(bad) do
                opts.dir = dir .. "/bad"
                assert.fails_with("INVALID", takhin.open_log(opts))
            end
        end)

        it("returns INVALID naming the range for an index_interval_bytes beyond 32 bits", function()
            local msg = assert.fails_with("INVALID", takhin.open_log({ dir = dir .. "/bad",
                                                                        index_interval_bytes = util.pow2(32) }))
            assert.truthy(msg:find("index_interval_bytes", 1, true), msg)
            assert.truthy(msg:find("outside 1 .. 4294967295", 1, true), msg)
            assert.is_false(util.exists(dir .. "/bad"))
            local log = open({ dir = dir .. "/max", index_interval_bytes = util.pow2(32) - 1 })
            log:close()
        end)

        it("reads its options through __index, so a proxy table works", function()
            -- Each option is a string made afresh on every lookup, and the
            -- collector runs inside __index: the directory the log opens
            -- is still the one asked for.  (The name is longer than the
            -- strings Lua 5.4 interns, so each lookup's copy is its own.)
            local sub = dir .. "/a-log-opened-through-a-proxy-table"
            local given = { dir = sub, max_segment_size = 200, index_interval_bytes = 50, sync = "always" }
            local proxy = setmetatable({}, { __index = function(_, k)
                collectgarbage("collect")
                local v = given[k]
                if type(v) == "string" then return (v .. "#"):sub(1, -2) end
                return v
            end })
            local log = assert(takhin.open_log(proxy))
            assert.are.equal(sub, log:dir())
            for i = 0, 9 do log:append("k" .. i, ("v"):rep(60)) end
            assert.is_true(log:num_segments() >= 3, "max_segment_size was not read")
            log:close()
            assert.is_true(util.is_dir(sub))
            assert.is_true(util.exists(sub .. "/" .. util.segment_name(0, "log")))
            log = assert(takhin.open_log(setmetatable({}, { __index = function(_, k)
                if k == "dir" then return (sub .. "#"):sub(1, -2) end
                if k == "readonly" then return true end
            end })))
            assert.are.equal(10, log:high_water_mark())
            assert.fails_with("READONLY", log:append("k", "v"))
            log:close()
        end)

        it("accepts the limits of each option", function()
            local log = open({ dir = dir .. "/lo", max_segment_size = 1, index_interval_bytes = 1,
                               max_record_size = 64, sync = "none" })
            log:close()
            log = open({ dir = dir .. "/hi", max_segment_size = util.pow2(30),
                         max_record_size = util.pow2(30), sync = "always" })
            log:close()
        end)
    end)

    describe("append and read", function()
        it("round-trips values holding any bytes, NUL included", function()
            local log = open()
            local values = { "a\0b", "\0", all_bytes(), "\0\0\0\255\254", ("x\0"):rep(1000) }
            for i, v in ipairs(values) do
                assert.are.equal(i - 1, log:append("k\0" .. i, v))
            end
            for i, v in ipairs(values) do
                local rec = log:read(i - 1)
                assert.are.equal(v, rec.value)
                assert.are.equal("k\0" .. i, rec.key)
                assert.are.equal(i - 1, rec.offset)
            end
            log:close()
        end)

        it("round-trips 1 MiB values", function()
            local log = open()
            local big = {}
            for i = 1, 3 do
                big[i] = (string.char(i) .. all_bytes()):rep(4096):sub(1, util.pow2(20))
                assert.are.equal(util.pow2(20), #big[i])
                log:append("big" .. i, big[i])
            end
            for i = 1, 3 do assert.are.equal(big[i], log:read(i - 1).value) end
            log:close()
            log = open()
            for i = 1, 3 do assert.are.equal(big[i], log:read(i - 1).value) end
            log:close()
        end)

        it("round-trips an empty value", function()
            local log = open()
            log:append(nil, "")
            log:append("", "")
            local r0, r1 = log:read(0), log:read(1)
            assert.are.equal("", r0.value)
            assert.are.equal("", r1.value)
            log:close()
        end)

        it("distinguishes an absent key from an empty key, also after reopening", function()
            local log = open()
            assert.are.equal(0, log:append(nil, "absent"))
            assert.are.equal(1, log:append("", "empty"))
            assert.are.equal(2, log:append("k", "present"))
            local function check(l)
                local r0, r1, r2 = l:read(0), l:read(1), l:read(2)
                assert.is_nil(r0.key)
                assert.are.equal("", r1.key)
                assert.are.equal("k", r2.key)
                assert.are.equal("absent", r0.value)
                assert.are.equal("empty", r1.value)
            end
            check(log)
            log:close()
            log = open()
            check(log)
            log:close()
        end)

        it("stores an explicit timestamp", function()
            local log = open()
            log:append("a", "1", 1234)
            log:append("b", "2", 0)
            log:append("c", "3", 1700000000123)
            assert.are.equal(1234, log:read(0).timestamp)
            assert.are.equal(0, log:read(1).timestamp)
            assert.are.equal(1700000000123, log:read(2).timestamp)
            assert.are.equal("integer", util.math_type(log:read(2).timestamp))
            log:close()
        end)

        it("stamps a record with the current time in milliseconds by default", function()
            local log = open()
            local before = os.time()
            log:append("a", "1")
            local after = os.time()
            local ts = log:read(0).timestamp
            assert.are.equal("integer", util.math_type(ts))
            -- os.time() reads the kernel's coarse clock, which may lag the
            -- engine's (CLOCK_REALTIME) by a tick: a second of slack.
            assert.is_true(ts >= (before - 1) * 1000 and ts < (after + 2) * 1000,
                           "timestamp " .. ts .. " not within [" .. before .. "," .. after .. "] s")
            log:close()
        end)

        it("returns integer offsets and record fields", function()
            local log = open()
            local o = log:append("k", "v", 7)
            assert.are.equal("integer", util.math_type(o))
            local rec = log:read(0)
            assert.are.same({ offset = 0, timestamp = 7, key = "k", value = "v" }, rec)
            log:close()
        end)

        it("accepts floats with an exact integer value as offsets and timestamps", function()
            local log = open()
            log:append("k", "v", 5.0)
            assert.are.equal(5, log:read(0.0).timestamp)
            assert.are.equal(0, log:offset_for_time(5.0))
            log:close()
        end)

        it("returns OUT_OF_RANGE naming the offset when reading at the high water mark or below zero", function()
            local log = open()
            assert.fails_with("OUT_OF_RANGE", log:read(0))
            log:append("k", "v")
            log:append("k", "v")
            local msg = assert.fails_with("OUT_OF_RANGE", log:read(2))
            assert.truthy(msg:find("2", 1, true), msg)
            msg = assert.fails_with("OUT_OF_RANGE", log:read(-1))
            assert.truthy(msg:find("-1", 1, true), msg)
            msg = assert.fails_with("OUT_OF_RANGE", log:read(123456789))
            assert.truthy(msg:find("123456789", 1, true), msg)
            log:close()
        end)

        it("returns INVALID for a record larger than max_record_size and writes nothing", function()
            local log = open({ max_record_size = 128 })
            log:append(nil, "first")
            local size, hwm = log:size(), log:high_water_mark()
            -- 34 header bytes + 94 value bytes == 128: the largest allowed.
            assert.fails_with("INVALID", log:append(nil, ("x"):rep(95)))
            assert.fails_with("INVALID", log:append("k", ("x"):rep(94)))
            assert.fails_with("INVALID", log:append_batch({ { value = "ok" }, { value = ("x"):rep(1000) } }))
            assert.are.equal(size, log:size())
            assert.are.equal(hwm, log:high_water_mark())
            assert.are.equal(size, util.log_bytes(dir))
            assert.are.equal(1, log:append(nil, ("x"):rep(94)))
            assert.are.equal(("x"):rep(94), log:read(1).value)
            log:close()
            log = open({ max_record_size = 128 })
            assert.are.equal(2, log:high_water_mark())
            log:close()
        end)

        it("works with sync = \"always\"", function()
            local log = open({ sync = "always" })
            assert.are.equal(0, log:append("k", "v1"))
            local first, last = log:append_batch({ { value = "v2" }, { value = "v3" } })
            assert.are.equal(1, first)
            assert.are.equal(2, last)
            log:close()
            log = open({ sync = "always" })
            assert.are.equal(3, log:high_water_mark())
            assert.are.equal("v3", log:read(2).value)
            log:close()
        end)
    end)

    describe("append_batch", function()
        it("returns the first and last offsets, and every record reads back", function()
            local log = open()
            log:append(nil, "before")
            local first, last = log:append_batch({
                { key = "a", value = "1", timestamp = 10 },
                { value = "2" },
                { key = "", value = "\0", timestamp = 30 },
            })
            assert.are.equal(1, first)
            assert.are.equal(3, last)
            assert.are.equal(4, log:high_water_mark())
            local r1, r2, r3 = log:read(1), log:read(2), log:read(3)
            assert.are.same({ offset = 1, key = "a", value = "1", timestamp = 10 }, r1)
            assert.is_nil(r2.key)
            assert.are.equal("2", r2.value)
            assert.are.equal("", r3.key)
            assert.are.equal("\0", r3.value)
            assert.are.equal(30, r3.timestamp)
            log:close()
        end)

        it("returns INVALID for an empty array", function()
            local log = open()
            assert.fails_with("INVALID", log:append_batch({}))
            assert.are.equal(0, log:high_water_mark())
            log:close()
        end)

        it("reads elements through __index: 100 proxy tables, each record written with its own bytes", function()
            -- Every field is a string built afresh on each lookup (longer
            -- than Lua interns), and __index runs a full collection first:
            -- a string the binding stopped referencing is freed while it
            -- still reads the next element.
            local log = open()
            local n = 100
            local function key(i) return ("key-%03d:"):format(i) .. ("k"):rep(40 + i % 13) end
            local function value(i) return ("value-%03d:"):format(i) .. string.char(i % 256):rep(50 + i) end
            local function ts(i) return 1700000000000 + i * 7 end
            local batch = {}
            for i = 1, n do
                batch[i] = setmetatable({}, { __index = function(_, k)
                    collectgarbage("collect")
                    if k == "key" then return key(i) end
                    if k == "value" then return value(i) end
                    if k == "timestamp" then return ts(i) end
                end })
            end
            local first, last = log:append_batch(batch)
            assert.are.equal(0, first)
            assert.are.equal(n - 1, last)
            collectgarbage("collect")
            local function check(l)
                assert.are.equal(n, l:high_water_mark())
                for i = 1, n do
                    assert.are.same({ offset = i - 1, key = key(i), value = value(i), timestamp = ts(i) },
                                    l:read(i - 1), "record " .. i)
                end
            end
            check(log)
            log:close()
            log = open()
            check(log)
            log:close()
        end)

        it("reads an absent key through __index as absent", function()
            local log = open()
            local first = log:append_batch({
                setmetatable({}, { __index = function(_, k) if k == "value" then return "no key" end end }),
                setmetatable({}, { __index = { key = "", value = "empty key", timestamp = 5 } }),
            })
            assert.are.equal(0, first)
            assert.is_nil(log:read(0).key)
            assert.are.equal("no key", log:read(0).value)
            assert.are.same({ offset = 1, key = "", value = "empty key", timestamp = 5 }, log:read(1))
            log:close()
        end)

        it("spans segment rolls", function()
            local log = open({ max_segment_size = 256 })
            local batch = {}
            for i = 1, 50 do batch[i] = { key = "k" .. i, value = ("v"):rep(i) } end
            local first, last = log:append_batch(batch)
            assert.are.equal(0, first)
            assert.are.equal(49, last)
            assert.is_true(log:num_segments() > 5)
            for i = 1, 50 do assert.are.equal(("v"):rep(i), log:read(i - 1).value) end
            log:close()
        end)
    end)

    describe("records", function()
        local log
        before_each(function()
            log = open()
            for i = 0, 9 do log:append("k" .. i, "v" .. i, 100 + i) end
        end)
        after_each(function() log:close() end)

        local function offsets(iter)
            local out = {}
            for rec in iter do out[#out + 1] = rec.offset end
            return out
        end

        it("iterates from..to-1", function()
            assert.are.same({ 3, 4, 5, 6 }, offsets(log:records(3, 7)))
            local recs = collect(log:records(2, 4))
            assert.are.same({ offset = 2, key = "k2", value = "v2", timestamp = 102 }, recs[1])
            assert.are.same({ offset = 3, key = "k3", value = "v3", timestamp = 103 }, recs[2])
        end)

        it("defaults to the whole log", function()
            assert.are.same({ 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 }, offsets(log:records()))
            assert.are.same({ 7, 8, 9 }, offsets(log:records(7)))
            assert.are.same(offsets(log:records()), offsets(log:records(0, log:high_water_mark())))
        end)

        it("stops at the high water mark as it was when the iterator was made", function()
            assert.are.same({ 8, 9 }, offsets(log:records(8, 1000)))
            local iter = log:records()
            log:append("late", "late")
            local got = offsets(iter)
            assert.are.same({ 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 }, got)
        end)

        it("yields nothing from the high water mark or for an empty range", function()
            assert.are.same({}, offsets(log:records(10)))
            assert.are.same({}, offsets(log:records(4, 4)))
        end)

        it("raises OUT_OF_RANGE for a start outside [base_offset, high_water_mark]", function()
            raises(function() log:records(11) end, "OUT_OF_RANGE")
            raises(function() log:records(-1) end, "OUT_OF_RANGE")
        end)
    end)

    describe("segments", function()
        it("keeps offsets contiguous across hundreds of segment rolls", function()
            local log = open({ max_segment_size = 256, index_interval_bytes = 64 })
            local n = 3000
            local function value(i) return ("%d:"):format(i) .. ("v"):rep(i % 61) end
            for i = 0, n - 1 do
                assert.are.equal(i, log:append("k" .. i, value(i), i))
            end
            assert.are.equal(n, log:high_water_mark())
            assert.is_true(log:num_segments() > 100, "only " .. log:num_segments() .. " segments")

            local segs = log:segments()
            assert.are.equal(log:num_segments(), #segs)
            assert.are.equal(0, segs[1].base_offset)
            local total = 0
            for i, s in ipairs(segs) do
                if i > 1 then assert.are.equal(segs[i - 1].next_offset, s.base_offset) end
                assert.is_true(s.next_offset > s.base_offset)
                assert.is_true(s.size <= 256)
                assert.are.equal(i == #segs, s.active)
                assert.are.equal(s.size, util.file_size(dir .. "/" .. util.segment_name(s.base_offset, "log")))
                total = total + s.size
            end
            assert.are.equal(n, segs[#segs].next_offset)
            assert.are.equal(total, log:size())
            assert.are.equal(#segs, #util.ls_suffix(dir, ".log"))

            local expect = 0
            for rec in log:records() do
                assert.are.equal(expect, rec.offset)
                assert.are.equal("k" .. expect, rec.key)
                assert.are.equal(value(expect), rec.value)
                expect = expect + 1
            end
            assert.are.equal(n, expect)
            for _, o in ipairs({ 0, 1, 2, 777, 1500, n - 1 }) do
                assert.are.equal(value(o), log:read(o).value)
            end
            log:close()

            log = open({ max_segment_size = 256, index_interval_bytes = 64 })
            assert.are.equal(n, log:high_water_mark())
            assert.are.equal(#segs, log:num_segments())
            assert.are.equal(value(2345), log:read(2345).value)
            log:close()
        end)

        it("gives a record larger than max_segment_size a segment of its own", function()
            local log = open({ max_segment_size = 256 })
            log:append("a", "small")
            local big = ("B"):rep(1000)
            assert.are.equal(1, log:append("b", big))
            assert.are.equal(2, log:append("c", "small"))
            local segs = log:segments()
            local alone
            for _, s in ipairs(segs) do
                if s.base_offset == 1 then alone = s end
            end
            assert.is_not_nil(alone, "no segment starts at offset 1")
            assert.are.equal(2, alone.next_offset)
            assert.are.equal(34 + 1 + 1000, alone.size)
            assert.is_false(alone.active)
            assert.are.equal(big, log:read(1).value)
            assert.are.equal("small", log:read(2).value)
            log:close()
        end)

        it("reports size() as the sum of the .log files on disk", function()
            local log = open({ max_segment_size = 1000 })
            for i = 1, 100 do log:append("k", ("x"):rep(i)) end
            assert.is_true(log:num_segments() > 1)
            assert.are.equal(util.log_bytes(dir), log:size())
            log:close()
        end)

        it("returns the directory as given", function()
            local log = open()
            assert.are.equal(dir, log:dir())
            log:close()
        end)
    end)

    describe("reopening", function()
        it("keeps the high water mark, base offset, keys, values and timestamps", function()
            local opts = { max_segment_size = 512, index_interval_bytes = 100 }
            local log = open(opts)
            local want = {}
            for i = 0, 199 do
                local key = (i % 3 == 0) and nil or ((i % 3 == 1) and "" or "key" .. i)
                local rec = { offset = i, key = key, value = ("%d\0"):format(i):rep(i % 7), timestamp = 5000 + i * 3 }
                want[i] = rec
                log:append(rec.key, rec.value, rec.timestamp)
            end
            local segs = log:segments()
            log:close()

            log = open(opts)
            assert.are.equal(200, log:high_water_mark())
            assert.are.equal(0, log:base_offset())
            assert.are.same(segs, log:segments())
            for i = 0, 199 do assert.are.same(want[i], log:read(i)) end
            assert.are.equal(200, log:append("next", "next"))
            log:close()
        end)
    end)

    describe("offset_for_time", function()
        it("finds the first record at or after a time", function()
            local log = open()
            assert.are.equal(0, log:offset_for_time(0))
            for i = 1, 5 do log:append("k", "v", i * 100) end -- offsets 0..4: 100..500
            assert.are.equal(0, log:offset_for_time(50))      -- before the first
            assert.are.equal(0, log:offset_for_time(100))     -- exact hit
            assert.are.equal(1, log:offset_for_time(101))     -- between
            assert.are.equal(2, log:offset_for_time(300))
            assert.are.equal(4, log:offset_for_time(450))
            assert.are.equal(4, log:offset_for_time(500))
            assert.are.equal(5, log:offset_for_time(501))     -- after the last
            -- far in the future (2^60; LuaJIT takes timestamps up to 2^53)
            assert.are.equal(5, log:offset_for_time(util.is_luajit and util.maxinteger or util.pow2(60)))
            log:close()
        end)

        it("returns the first offset whose timestamp is >= t when timestamps go backwards", function()
            local log = open()
            for _, ts in ipairs({ 100, 300, 200, 400, 250 }) do log:append(nil, "v", ts) end
            assert.are.equal(0, log:offset_for_time(100))
            assert.are.equal(1, log:offset_for_time(150))
            assert.are.equal(1, log:offset_for_time(200))
            assert.are.equal(1, log:offset_for_time(250))
            assert.are.equal(1, log:offset_for_time(300))
            assert.are.equal(3, log:offset_for_time(301))
            assert.are.equal(3, log:offset_for_time(400))
            assert.are.equal(5, log:offset_for_time(401))
            log:close()
        end)

        it("agrees with a linear scan over many segments and index entries", function()
            local opts = { max_segment_size = 600, index_interval_bytes = 50 }
            local log = open(opts)
            local rnd = 12345
            local function rand(n) rnd = (rnd * 1103515245 + 12345) % 2147483648; return rnd % n end
            local ts = {}
            for i = 0, 299 do
                ts[i] = 1000 + i * 10 + rand(200) - 100 -- mostly rising, often backwards
                log:append("k", ("v"):rep(rand(40)), ts[i])
            end
            local function scan(t)
                for i = 0, 299 do if ts[i] >= t then return i end end
                return 300
            end
            local function check(l)
                for t = 850, 4150, 7 do
                    assert.are.equal(scan(t), l:offset_for_time(t), "t = " .. t)
                end
                for i = 0, 299 do
                    for d = -1, 1 do
                        local t = ts[i] + d
                        assert.are.equal(scan(t), l:offset_for_time(t), "t = " .. t)
                    end
                end
            end
            assert.is_true(log:num_segments() > 5)
            check(log)
            log:close()
            log = open(opts)
            check(log)
            log:close()
        end)
    end)

    describe("truncate", function()
        local opts = { max_segment_size = 300, index_interval_bytes = 40 }
        local function fill(log, n)
            for i = 0, n - 1 do log:append("k" .. i, ("v%03d"):format(i):rep(5), i * 10) end
        end

        it("removes records from the middle of a sealed segment on", function()
            local log = open(opts)
            fill(log, 100)
            local segs = log:segments()
            assert.is_true(#segs > 4)
            local s = segs[2]
            assert.is_true(s.next_offset - s.base_offset >= 2)
            local cut = s.base_offset + 1
            assert.is_true(log:truncate(cut))
            assert.are.equal(cut, log:high_water_mark())
            assert.are.equal(2, log:num_segments())
            assert.fails_with("OUT_OF_RANGE", log:read(cut))
            assert.are.equal(("v%03d"):format(cut - 1):rep(5), log:read(cut - 1).value)
            local after = log:segments()
            assert.are.equal(cut, after[#after].next_offset)
            assert.is_true(after[#after].active)
            assert.are.equal(util.log_bytes(dir), log:size())
            assert.are.equal(cut, log:offset_for_time(util.pow2(40)))

            assert.are.equal(cut, log:append("new", "new", 5))
            assert.are.equal("new", log:read(cut).value)
            log:close()

            log = open(opts)
            assert.are.equal(cut + 1, log:high_water_mark())
            assert.are.equal("new", log:read(cut).value)
            assert.are.equal(("v%03d"):format(cut - 1):rep(5), log:read(cut - 1).value)
            assert.are.equal(2, log:num_segments())
            log:close()
        end)

        it("is a no-op at the high water mark", function()
            local log = open(opts)
            fill(log, 30)
            local segs, size = log:segments(), log:size()
            assert.is_true(log:truncate(30))
            assert.are.equal(30, log:high_water_mark())
            assert.are.same(segs, log:segments())
            assert.are.equal(size, log:size())
            assert.are.equal(30, log:append("k", "v"))
            log:close()
        end)

        it("empties the log when truncating to the base offset", function()
            local log = open(opts)
            fill(log, 30)
            assert.is_true(log:truncate(0))
            assert.are.equal(0, log:high_water_mark())
            assert.are.equal(1, log:num_segments())
            assert.are.equal(0, log:size())
            assert.are.equal(0, log:append("k", "again"))
            log:close()
            log = open(opts)
            assert.are.equal(1, log:high_water_mark())
            assert.are.equal("again", log:read(0).value)
            log:close()
        end)

        it("returns OUT_OF_RANGE outside [base_offset, high_water_mark]", function()
            local log = open(opts)
            fill(log, 10)
            local msg = assert.fails_with("OUT_OF_RANGE", log:truncate(11))
            assert.truthy(msg:find("11", 1, true), msg)
            assert.fails_with("OUT_OF_RANGE", log:truncate(-1))
            assert.are.equal(10, log:high_water_mark())
            log:close()
        end)
    end)

    describe("closing", function()
        it("is harmless twice", function()
            local log = open()
            assert.is_true(log:close())
            assert.is_true(log:close())
        end)

        it("releases the lock so that another writer can open", function()
            local log = open()
            assert.fails_with("LOCKED", takhin.open_log({ dir = dir }))
            log:close()
            local again = open()
            again:close()
        end)

        it("happens at the end of the scope of a <close> variable", function()
            if util.is_luajit then return pending("Lua 5.4 only (log_spec, closing at the end of a <close> scope): LuaJIT has no <close> variables") end
            -- Compiled here: `<close>` is a syntax error for LuaJIT.
            assert(load([[
                local open, takhin, dir, assert = ...
                do
                    local log <close> = open()
                    log:append("k", "v")
                    assert.fails_with("LOCKED", takhin.open_log({ dir = dir }))
                end
            ]], "=<close> scope", "t"))(open, takhin, dir, assert)
            local again = open()
            assert.are.equal(1, again:high_water_mark())
            again:close()
        end)

        it("happens when the garbage collector frees an unreachable log", function()
            local function open_and_drop()
                local log = open()
                log:append("k", "v")
            end
            open_and_drop()
            collectgarbage()
            collectgarbage()
            local again = open()
            assert.are.equal(1, again:high_water_mark())
            again:close()
        end)

        it("makes every other method raise \"attempt to use a closed takhin.Log\"", function()
            local log = open()
            log:append("k", "v")
            log:close()
            local calls = {
                append = function() return log:append("k", "v") end,
                append_batch = function() return log:append_batch({ { value = "v" } }) end,
                read = function() return log:read(0) end,
                records = function() return log:records() end,
                offset_for_time = function() return log:offset_for_time(0) end,
                high_water_mark = function() return log:high_water_mark() end,
                base_offset = function() return log:base_offset() end,
                num_segments = function() return log:num_segments() end,
                size = function() return log:size() end,
                segments = function() return log:segments() end,
                dir = function() return log:dir() end,
                flush = function() return log:flush() end,
                sync = function() return log:sync() end,
                truncate = function() return log:truncate(0) end,
            }
            for name, fn in pairs(calls) do
                local ok, err = pcall(fn)
                assert.is_false(ok, name .. " did not raise")
                assert.truthy(tostring(err):find("attempt to use a closed takhin.Log", 1, true),
                              name .. ": " .. tostring(err))
            end
        end)

        it("leaves an iterator made before the close safe to resume", function()
            local log = open()
            log:append("k", "v")
            log:append("k", "v")
            local iter = log:records()
            log:close()
            -- Not specified beyond "no crash": it may end or raise, and if it
            -- raises it says the log is closed.
            local ok, err = pcall(function() for _ in iter do end end)
            if not ok then
                assert.truthy(tostring(err):find("closed", 1, true), tostring(err))
            end
        end)
    end)

    describe("memory", function()
        -- The process's resident set, in bytes (Linux).
        local function rss()
            local kb = util.read_file("/proc/self/status"):match("VmRSS:%s*(%d+)%s*kB")
            assert(kb, "no VmRSS in /proc/self/status")
            return tonumber(kb) * 1024
        end

        -- A sanitizer or valgrind keeps freed memory (quarantine, its own
        -- heap): the resident set then says nothing about takhin's buffers.
        local function instrumented()
            local maps = util.read_file("/proc/self/maps")
            for _, lib in ipairs({ "libasan", "libtsan", "vgpreload" }) do
                if maps:find(lib, 1, true) then return lib end
            end
        end

        it("is given back by an idle handle after a 64 MiB append and a read of it", function()
            local tool = instrumented()
            if tool then return pending("the resident set is not takhin's to measure under " .. tool) end
            local MiB = util.pow2(20)
            local log = open({ max_record_size = 80 * MiB, max_segment_size = 256 * MiB })
            log:append("small", "warms up the handle")
            assert.are.equal("warms up the handle", log:read(0).value)
            collectgarbage(); collectgarbage()
            local before = rss()
            do
                local big = ("0123456789abcdef"):rep(4 * MiB)
                assert.are.equal(64 * MiB, #big)
                assert.are.equal(1, log:append("big", big))
                local rec = log:read(1)
                assert.is_true(rec.value == big, "the 64 MiB record did not read back")
            end
            collectgarbage(); collectgarbage()
            local grown = rss() - before
            -- Without shrinking, the write and the read buffer would each
            -- keep 64 MiB.
            assert.is_true(grown < 32 * MiB,
                           ("the idle handle keeps %.1f MiB more than before"):format(grown / MiB))
            assert.are.equal(2, log:append("after", "small again"))
            assert.are.equal("small again", log:read(2).value)
            log:close()
        end)
    end)

    describe("open files", function()
        -- Under `ulimit -n 64` (a worker that must keep descriptors for its
        -- sockets), a child reads every record of a log of 300+ segments
        -- in a shuffled order, twice, through a writer and then through a
        -- read-only handle next to it.  With "append" it first writes the
        -- log itself; with "reopen" the log exists and the writer reopens
        -- it.  It checks each record, counts the descriptors it holds
        -- (/proc/<pid>/fd) as it goes, and prints "OK <start> <most>".
        local CHILD = [[
            local takhin = require("takhin")
            local proc = require("helpers.proc")
            local dir, how = arg[1], arg[2]
            local pid = proc.getpid()
            local function open_fds()
                local p = assert(io.popen("ls /proc/" .. pid .. "/fd"))
                local n = 0
                for _ in p:lines() do n = n + 1 end
                p:close()
                return n - 1                -- the pipe of this popen
            end
            local function fail(...)
                local t = {}
                for i = 1, select("#", ...) do t[i] = tostring((select(i, ...))) end
                io.write("FAIL ", table.concat(t, " "), "\n")
                os.exit(1)
            end
            local function value(o) return ("record %d "):format(o) .. ("x"):rep(o % 50) end
            local start = open_fds()
            local most = start
            local function note() local n = open_fds(); if n > most then most = n end end

            local log, msg, code = takhin.open_log({ dir = dir, max_segment_size = 150, index_interval_bytes = 32 })
            if not log then fail("open", msg, code) end
            if how == "append" then
                local o = 0
                while log:num_segments() < 320 do
                    local got, m, c = log:append("k" .. o, value(o))
                    if got ~= o then fail("append", o, got, m, c) end
                    o = o + 1
                    if o % 50 == 0 then note() end
                end
            end
            local n = log:high_water_mark()
            if log:num_segments() < 300 then fail("only", log:num_segments(), "segments") end
            local order, seed = {}, 7
            for o = 0, n - 1 do order[#order + 1] = o end
            local function shuffle()
                for i = #order, 2, -1 do
                    seed = (seed * 1103515245 + 12345) % 2147483648
                    local j = seed % i + 1
                    order[i], order[j] = order[j], order[i]
                end
            end
            local function read_all(h, who)
                for _ = 1, 2 do
                    shuffle()
                    for i, o in ipairs(order) do
                        local rec, m, c = h:read(o)
                        if not rec then fail(who, "read", o, m, c) end
                        if rec.value ~= value(o) or rec.key ~= "k" .. o then fail(who, "read", o, "wrong record") end
                        if i % 50 == 0 then note() end
                    end
                end
            end
            read_all(log, "writer")
            local ro
            ro, msg, code = takhin.open_log({ dir = dir, readonly = true })
            if not ro then fail("open read-only", msg, code) end
            if ro:num_segments() ~= log:num_segments() then fail("read-only sees", ro:num_segments(), "segments") end
            read_all(ro, "read-only")
            local got, m, c = log:append("k" .. n, value(n))
            if got ~= n then fail("append after the reads", got, m, c) end
            if ro:read(n).value ~= value(n) then fail("read-only misses the last append") end
            note()
            ro:close()
            log:close()
            io.write("OK ", start, " ", most, "\n")
        ]]

        -- Runs CHILD under ulimit -n 64; returns the descriptors it had
        -- at the start and the most it held.
        local function run_child(how)
            local out, ok = util.run_lua_as("ulimit -n 64 &&", dir, CHILD, { dir .. "/log", how })
            assert.is_true(ok, out)
            local start, most = out:match("OK (%d+) (%d+)")
            assert(start, out)
            return tonumber(start), tonumber(most)
        end

        -- Each handle may keep a quarter of the limit (16) of sealed .log
        -- files, plus its own few (.lock, .state, the active segment's
        -- three files, the cursors); two handles are open at once.
        local PER_HANDLE = 16 + 8

        it("stay bounded for a writer and a reader reading 300+ segments under ulimit -n 64", function()
            local log = open({ dir = dir .. "/log", max_segment_size = 150, index_interval_bytes = 32 })
            local o = 0
            while log:num_segments() < 320 do
                assert.are.equal(o, log:append("k" .. o, ("record %d "):format(o) .. ("x"):rep(o % 50)))
                o = o + 1
            end
            log:close()
            local start, most = run_child("reopen")
            assert.is_true(most <= start + 2 * PER_HANDLE,
                           ("%d descriptors open at most, %d at the start"):format(most, start))
        end)

        it("stay bounded for a writer appending across 300+ segments under ulimit -n 64", function()
            local start, most = run_child("append")
            assert.is_true(most <= start + 2 * PER_HANDLE,
                           ("%d descriptors open at most, %d at the start"):format(most, start))
        end)
    end)

    describe("max_open_segments", function()
        local function open_fds()
            return util.fds_under(util.getpid(), dir)
        end

        it("bounds the sealed segments whose .log a handle keeps open", function()
            local log = open({ max_segment_size = 150 })
            local o = 0
            while log:num_segments() < 60 do
                log:append("k", ("record %d "):format(o) .. ("x"):rep(80))
                o = o + 1
            end
            log:close()
            local before = open_fds()
            local ro = open({ readonly = true, max_open_segments = 4 })
            for _ = 1, 2 do
                for i = 0, o - 1 do
                    assert.are.equal(("record %d "):format(i) .. ("x"):rep(80), ro:read(i).value)
                    local now = open_fds()
                    assert.is_true(now <= before + 4 + 8,
                                   ("%d descriptors open after reading offset %d, %d before"):format(now, i, before))
                end
            end
            ro:close()
            assert.is_true(open_fds() <= before, "descriptors left open after close")
        end)

        it("returns INVALID outside 1 .. 1000000", function()
            for _, v in ipairs({ 0, -1, 1000001 }) do
                local msg = assert.fails_with("INVALID", takhin.open_log({ dir = dir, max_open_segments = v }))
                assert.truthy(msg:find("max_open_segments", 1, true), msg)
            end
        end)
    end)

    describe("tostring", function()
        it("describes an open log and a closed one", function()
            local log = open({ max_segment_size = 100 })
            for i = 1, 5 do log:append("k", ("x"):rep(40)) end
            local s = tostring(log)
            local esc = dir:gsub("%p", "%%%0")
            assert.truthy(s:find("^takhin%.Log%(" .. esc .. ", offsets %[0, 5%), %d+ segments?%)$"), s)
            assert.truthy(s:find(log:num_segments() .. " segment", 1, true), s)
            log:close()
            assert.are.equal("takhin.Log(closed)", tostring(log))
        end)
    end)

    describe("flush and sync", function()
        it("return true", function()
            local log = open()
            log:append("k", "v")
            assert.is_true(log:flush())
            assert.is_true(log:sync())
            log:close()
        end)
    end)

    describe("argument checking", function()
        local log
        before_each(function()
            log = open()
            log:append("k", "v")
        end)
        after_each(function() log:close() end)

        it("raises when a value is not a string", function()
            raises(function() log:append("k", nil) end)
            raises(function() log:append("k", {}) end)
            raises(function() log:append("k", true) end)
            raises(function() log:append_batch({ { key = "k" } }) end)
            raises(function() log:append_batch({ { value = {} } }) end)
            assert.are.equal(1, log:high_water_mark())
        end)

        it("raises when a key is a number or a table", function()
            raises(function() log:append(1, "v") end)
            raises(function() log:append({}, "v") end)
            raises(function() log:append_batch({ { key = 1, value = "v" } }) end)
            assert.are.equal(1, log:high_water_mark())
        end)

        it("raises when a batch is not an array of tables", function()
            raises(function() log:append_batch("v") end)
            raises(function() log:append_batch({ "v" }) end)
        end)

        it("raises when an offset is a string", function()
            raises(function() log:read("abc") end)
            raises(function() log:truncate("abc") end)
            raises(function() log:records("abc") end)
        end)

        it("raises when an offset is a numeric string (offsets are integers)", function()
            raises(function() log:read("0") end)
            raises(function() log:truncate("0") end)
            raises(function() log:records("0") end)
        end)

        it("raises when an offset or timestamp is a float without an integer value", function()
            raises(function() log:read(0.5) end)
            raises(function() log:truncate(0.5) end)
            raises(function() log:records(0, 1.5) end)
            raises(function() log:offset_for_time(1.5) end)
            raises(function() log:append("k", "v", 1.5) end)
            raises(function() log:append_batch({ { value = "v", timestamp = 2.5 } }) end)
            assert.are.equal(1, log:high_water_mark())
        end)
    end)
end)
