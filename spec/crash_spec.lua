-- A writer killed with SIGKILL loses nothing it acknowledged.
--
-- A lua5.4 child appends records whose key, value and timestamp are
-- derived from their offset, and writes each offset to an ack file only
-- after append returned.  The parent kills it at a random moment (once the
-- ack file holds a random number of lines), reopens the log, and checks
-- every acknowledged record and the contiguity of offsets.  Each round
-- continues on the same log.

local takhin = require("takhin")
local util = require("helpers.util")
local logs = require("helpers.log")

-- Parent and child derive each record from its offset the same way.
local CHILD = [[
local logs = require("helpers.log")
local key_for, value_for, ts_for = logs.derived_records(300)
local dir, ack_path, seed = arg[1], arg[2], tonumber(arg[3])
local log = logs.open_or_exit({ dir = dir, max_segment_size = 8192, index_interval_bytes = 256 })
local ack = assert(io.open(ack_path, "w"))
math.randomseed(seed)
local function fail(...)
    io.stderr:write(table.concat({ ... }, " "), "\n")
    os.exit(4)
end
while true do
    local nxt = log:high_water_mark()
    if math.random(4) == 1 then
        local n = math.random(2, 6)
        local batch = {}
        for i = 0, n - 1 do
            local o = nxt + i
            batch[#batch + 1] = { key = key_for(o), value = value_for(o), timestamp = ts_for(o) }
        end
        local first, last = log:append_batch(batch)
        if first ~= nxt or last ~= nxt + n - 1 then
            fail("append_batch gave", tostring(first), tostring(last), "expected", nxt)
        end
        for o = first, last do ack:write(o, "\n") end
        ack:flush()
    else
        local o, m, c = log:append(key_for(nxt), value_for(nxt), ts_for(nxt))
        if o ~= nxt then fail("append gave", tostring(o), tostring(m), tostring(c), "expected", nxt) end
        ack:write(o, "\n")
        ack:flush()
    end
end
]]

local key_for, value_for, ts_for = logs.derived_records(300)

local ROUNDS = 15

describe("a writer killed with SIGKILL", function()
    local tmp, pid

    before_each(function() tmp = util.tmpdir() end)
    after_each(function()
        util.stop(pid)
        collectgarbage(); collectgarbage()
        util.rmtree(tmp)
    end)

    local function expect_record(rec, o, where)
        assert.are.equal(o, rec.offset, where)
        assert.are.equal(key_for(o), rec.key, where)
        assert.are.equal(value_for(o), rec.value, where)
        assert.are.equal(ts_for(o), rec.timestamp, where)
    end

    -- Every record in [from, hwm) is the one derived from its offset, in
    -- order; returns the high water mark.
    local function verify(log, from, where)
        local hwm = log:high_water_mark()
        local expect = from
        for rec in log:records(from) do
            expect_record(rec, expect, where)
            expect = expect + 1
        end
        assert.are.equal(hwm, expect, where .. ": offsets not contiguous")
        return hwm
    end

    it("loses no acknowledged record, round after round on the same log", function()
        local seed = tonumber(os.getenv("TAKHIN_CRASH_SEED")) or os.time()
        math.randomseed(seed)
        local dir = tmp .. "/log"
        local verified = 0     -- offsets below this were checked in an earlier round
        local acked_total = 0

        for round = 1, ROUNDS do
            local where = ("seed %d, round %d"):format(seed, round)
            local ack = ("%s/ack%d"):format(tmp, round)
            local target = math.random(1, 300)
            local out
            pid, out = util.spawn_lua(tmp, CHILD, { dir, ack, seed * 100 + round })
            util.wait_lines(ack, target, pid)
            util.kill9(pid)
            assert.is_true(util.wait_exit(pid), where .. ": child did not die")
            local lines = util.count_lines(ack)
            assert.is_true(lines >= target,
                           where .. ": child stopped after " .. lines .. " acks: " .. util.read_file(out))

            local acked = {}
            for _, line in ipairs(util.lines(ack)) do acked[#acked + 1] = tonumber(line) end
            assert.are.equal(lines, #acked)
            acked_total = acked_total + #acked

            local log, msg, code = takhin.open_log({ dir = dir, max_segment_size = 8192, index_interval_bytes = 256 })
            assert(log, where .. ": open_log: " .. tostring(msg) .. " " .. tostring(code))
            local hwm = log:high_water_mark()
            assert.are.equal(verified, acked[1], where .. ": the child did not resume at the old high water mark")
            for i, o in ipairs(acked) do
                if i > 1 then assert.are.equal(acked[i - 1] + 1, o, where .. ": acks not contiguous") end
                assert.is_true(o < hwm, where .. ": acknowledged offset " .. o .. " lost (hwm " .. hwm .. ")")
                local rec, m, c = log:read(o)
                assert(rec, where .. ": read " .. o .. ": " .. tostring(m) .. " " .. tostring(c))
                expect_record(rec, o, where)
            end
            verified = verify(log, verified, where)
            assert.are.equal(util.log_bytes(dir), log:size(), where)
            log:close()
        end

        -- One last look at everything, from a fresh handle.
        local log = assert(takhin.open_log({ dir = dir, max_segment_size = 8192, index_interval_bytes = 256 }))
        assert.are.equal(verified, verify(log, 0, ("seed %d, final"):format(seed)))
        assert.is_true(acked_total >= ROUNDS)
        assert.is_true(log:num_segments() > 1)
        log:close()
    end)
end)
