-- Following a log (SPEC §8): log:wait(offset [, timeout]) sleeps until
-- high_water_mark() > offset, woken by an append from any process -- it
-- sleeps, it does not poll (its CPU time stays near zero while it waits);
-- it returns false, "timeout" when the time runs out and raises on a
-- closed log.  high_water_mark() of any handle follows the writers by
-- itself, without the handle calling anything else.
--
-- Nothing here asserts on elapsed time: waits are bounded polls on
-- conditions, and "it sleeps" is a bound on the CPU time the kernel
-- charged the waiting process (utime + stime in /proc/<pid>/stat).

local takhin = require("takhin")
local util = require("helpers.util")
require("helpers.assertions")

local function open(dir, extra)
    local opts = { dir = dir }
    for k, v in pairs(extra or {}) do opts[k] = v end
    local log, msg, code = takhin.open_log(opts)
    assert(log, "open_log " .. dir .. ": " .. tostring(msg) .. " " .. tostring(code))
    return log
end

-- A waiter: opens the log at arg[1] (read-only, or a shared writer when
-- arg[2] is "shared"), reports "waiting HWM", calls wait(HWM + arg[3])
-- with the timeout arg[4] ("-": none), reports "woke RESULT HWM".
local WAITER = [[
local takhin = require("takhin")
local proc = require("helpers.proc")
local dir, mode, ahead, timeout, report_path = arg[1], arg[2], tonumber(arg[3]), arg[4], arg[5]
timeout = tonumber(timeout) or timeout          -- seconds, or a duration
local log = assert(takhin.open_log{ dir = dir, readonly = mode ~= "shared", shared = mode == "shared" })
local report = proc.reporter(report_path)
local hwm = log:high_water_mark()
report("waiting", hwm)
local ok, why
if timeout == "-" then ok, why = log:wait(hwm - 1 + ahead)
else ok, why = log:wait(hwm - 1 + ahead, timeout) end
report("woke", tostring(ok) .. (why and ("/" .. why) or ""), log:high_water_mark(), hwm - 1 + ahead)
log:close()
]]

-- utime + stime of pid in clock ticks, and its state letter.
local function cpu_ticks(pid)
    local f = io.open("/proc/" .. pid .. "/stat", "r")
    if not f then return nil end
    local stat = f:read("a")
    f:close()
    local rest = stat:match("^%d+ %b() (.*)$")
    local fields = {}
    for w in rest:gmatch("%S+") do fields[#fields + 1] = w end
    -- after the command: state is field 3 of stat(5), utime 14, stime 15
    return tonumber(fields[12]) + tonumber(fields[13]), fields[1]
end

local function fields(line)
    local t = {}
    for f in (line or ""):gmatch("[^\t]+") do t[#t + 1] = f end
    return t
end

describe("log:wait", function()
    local tmp, pids
    before_each(function()
        tmp = util.tmpdir()
        pids = {}
    end)
    after_each(function()
        for _, pid in ipairs(pids) do util.stop(pid) end
        collectgarbage(); collectgarbage()
        util.rmtree(tmp)
    end)

    it("returns true at once when the high water mark is already past the offset", function()
        local log = open(tmp .. "/log")
        for i = 1, 3 do log:append(nil, "v" .. i) end
        assert.is_true(log:wait(2))
        assert.is_true(log:wait(0, 0))
        assert.is_true(log:wait(-1, "1ms"))
        log:close()
    end)

    it('returns false, "timeout" when nothing arrives in time', function()
        local log = open(tmp .. "/log")
        log:append(nil, "v")
        for _, timeout in ipairs({ 0, "0ms", "10ms", 0.02 }) do
            local ok, why = log:wait(1, timeout)
            assert.is_false(ok)
            assert.are.equal("timeout", why)
        end
        local ro = open(tmp .. "/log", { readonly = true })
        assert.are.same({ false, "timeout" }, { ro:wait(5, "5ms") })
        ro:close()
        log:close()
    end)

    it("takes its timeout as a duration or seconds; a bad one is INVALID, a bad offset raises", function()
        local log = open(tmp .. "/log")
        local msg = assert.fails_with("INVALID", log:wait(0, "soon"))
        assert.matches("timeout", msg)
        assert.fails_with("INVALID", log:wait(0, "5 fortnights"))
        assert.has_error(function() log:wait() end)
        assert.has_error(function() log:wait("0") end)
        assert.has_error(function() log:wait(0.5, 0) end)
        log:close()
    end)

    it("raises on a closed log", function()
        local log = open(tmp .. "/log")
        log:append(nil, "v")
        log:close()
        assert.has_error(function() log:wait(0) end)
        local ok, err = pcall(log.wait, log, 5, "1ms")
        assert.is_false(ok)
        assert.matches("closed", tostring(err))
    end)

    it("sleeps without using the CPU until an append in another process wakes it", function()
        local dir = tmp .. "/log"
        local log = open(dir, { shared = true })
        log:append(nil, "first")
        local report = tmp .. "/waiter"
        pids[1] = util.spawn_lua(tmp, WAITER, { dir, "readonly", "1", "-", report })
        assert.are.equal(1, util.wait_lines(report, 1, pids[1]), "the waiter did not start")
        assert.are.same({ "waiting", "1" }, fields(util.lines(report)[1]))
        -- Let it settle into wait(), then measure 2 s of it: a poll loop
        -- would be charged most of them, a sleeper nothing.
        util.nap(0.1)
        local hz = tonumber((util.capture("getconf CLK_TCK"):match("%d+"))) or 100
        local t0 = cpu_ticks(pids[1])
        util.nap(2)
        local t1, state = cpu_ticks(pids[1])
        assert(t0 and t1, "the waiter is gone")
        assert.are.equal(1, #util.lines(report), "it woke with nothing appended")
        assert.are.equal("S", state, "the waiter is not asleep")
        assert(t1 - t0 <= hz / 10, ("the waiter used %d ticks (of %d a second) in 2 s"):format(t1 - t0, hz))
        -- one append wakes it
        assert.are.equal(1, log:append(nil, "second"))
        assert.are.equal(2, util.wait_lines(report, 2, pids[1]), "the append did not wake it")
        assert.are.same({ "woke", "true", "2", "1" }, fields(util.lines(report)[2]))
        assert.is_true(util.wait_exit(pids[1]))
        log:close()
    end)

    it("wakes every waiter, in any process and mode, with or without a timeout", function()
        local dir = tmp .. "/log"
        local log = open(dir, { shared = true })
        for i = 1, 5 do log:append(nil, "v" .. i) end
        log:close()
        local waiters = {
            { "readonly", "-" }, { "shared", "-" }, { "readonly", "60s" }, { "shared", 600 },
        }
        for i, w in ipairs(waiters) do
            pids[i] = util.spawn_lua(tmp, WAITER, { dir, w[1], "1", tostring(w[2]), tmp .. "/w" .. i })
        end
        for i = 1, #waiters do
            assert.are.equal(1, util.wait_lines(tmp .. "/w" .. i, 1, pids[i]), "waiter " .. i .. " did not start")
        end
        -- the append comes from yet another process
        local out, ok = util.run_lua(tmp, [[
local takhin = require("takhin")
local log = assert(takhin.open_log{ dir = arg[1], shared = true })
assert(log:append(nil, "wake up") == 5)
]], { dir })
        assert(ok, out)
        for i = 1, #waiters do
            assert.are.equal(2, util.wait_lines(tmp .. "/w" .. i, 2, pids[i]), "waiter " .. i .. " slept on")
            assert.are.same({ "woke", "true", "6", "5" }, fields(util.lines(tmp .. "/w" .. i)[2]), "waiter " .. i)
        end
    end)

    it("returns only once the high water mark is past the offset", function()
        local dir = tmp .. "/log"
        local log = open(dir, { shared = true })
        log:append(nil, "v")
        local report = tmp .. "/waiter"
        pids[1] = util.spawn_lua(tmp, WAITER, { dir, "readonly", "3", "-", report })
        assert.are.equal(1, util.wait_lines(report, 1, pids[1]))
        -- wait(3): the appends of offsets 1 and 2 do not satisfy it; the
        -- pauses only give a wrong early return the chance to show
        log:append(nil, "1")
        util.nap(0.05)
        log:append_batch({ { value = "2" } })
        util.nap(0.05)
        log:append(nil, "3")
        assert.are.equal(2, util.wait_lines(report, 2, pids[1]))
        local r = fields(util.lines(report)[2])
        assert.are.same({ "woke", "true" }, { r[1], r[2] })
        assert.are.equal("3", r[4])
        assert.is_true(tonumber(r[3]) > 3, "it returned with high_water_mark " .. r[3])
        log:close()
    end)

    it('returns false, "timeout" in another process too', function()
        local dir = tmp .. "/log"
        local log = open(dir)
        log:append(nil, "v")
        local report = tmp .. "/waiter"
        local out, ok = util.run_lua(tmp, WAITER, { dir, "readonly", "1", "30ms", report })
        assert(ok, out)
        assert.are.same({ "woke", "false/timeout", "1", "1" }, fields(util.lines(report)[2]))
        log:close()
    end)
end)

describe("high_water_mark()", function()
    local tmp, pid
    before_each(function() tmp = util.tmpdir() end)
    after_each(function()
        util.stop(pid)
        pid = nil
        collectgarbage(); collectgarbage()
        util.rmtree(tmp)
    end)

    it("of a read-only handle in another process moves without it calling anything else", function()
        local dir = tmp .. "/log"
        local log = open(dir, { max_segment_size = 256 })
        local report = tmp .. "/follower"
        -- Between reports the follower looks only at its go files (plain
        -- io.open); it calls high_water_mark() and base_offset() alone.
        pid = util.spawn_lua(tmp, [[
local takhin = require("takhin")
local proc = require("helpers.proc")
local log = assert(takhin.open_log{ dir = arg[1], readonly = true })
local report = proc.reporter(arg[2])
report(0, log:high_water_mark(), log:base_offset())
for round = 1, 3 do
    assert(proc.wait_for_file(arg[1] .. "/../go" .. round, 3000, 0.005))
    report(round, log:high_water_mark(), log:base_offset())
end
]], { dir, report })
        assert.are.equal(1, util.wait_lines(report, 1, pid))
        local want = { { "0", "0", "0" } }
        local function round(r, base)
            util.write_file(tmp .. "/go" .. r, "")
            assert.are.equal(r + 1, util.wait_lines(report, r + 1, pid))
            want[#want + 1] = { tostring(r), tostring(log:high_water_mark()), tostring(base) }
        end
        for i = 1, 7 do log:append(nil, "first " .. i) end
        round(1, 0)
        for i = 1, 40 do log:append("k", string.rep("x", 40) .. i) end   -- several rolls
        round(2, 0)
        log:delete_before(30)
        log:append(nil, "last")
        round(3, 30)
        local got = {}
        for _, line in ipairs(util.lines(report)) do got[#got + 1] = fields(line) end
        assert.are.same(want, got)
        assert.is_true(util.wait_exit(pid))
        log:close()
    end)
end)
