-- Durability modes (SPEC.md section 11): sync = "interval" and sync =
-- "always", shown by counting fsyncs, never by timing them.
--
-- log:stats() counts the fdatasync calls made to make records durable
-- (fsyncs) and says how far they reach (synced_offset: the records below
-- it are durable).  The counters live in the log's shared state, so they
-- add up over every handle and process with the log open, and a read-only
-- handle kept open reads them after the writers closed.  Waiting is
-- bounded polling on a condition; no assertion is about elapsed time.
--
--   sync = "interval"   appends do not fsync; an engine thread per handle
--                       does, over and over while appends go on, each of
--                       its fsyncs covering everything appended before
--                       it began; close (or collection) runs a last one
--                       and stops the thread.  A failed background fsync
--                       is reported by the next call (fault build).
--   sync = "always"     append returns with its records durable, and
--                       writers appending at once share fsyncs (group
--                       commit): here four processes in shared mode;
--                       tests/test_group_commit.c does four threads.

local system = require("system")
local takhin = require("takhin")
local util = require("helpers.util")
local logs = require("helpers.log")
require("helpers.assertions")

local open = logs.open

-- Bounded polling: pred until it gives a true value, at most `tries`
-- looks `pause` seconds apart; returns pred's last result.
local function poll(pred, tries, pause)
    for _ = 1, tries or 4000 do
        local v = pred()
        if v then return v end
        system.sleep(pause or 0.005)
    end
    return pred()
end

-- Threads of this process: entries of /proc/<pid>/task.
local PID = util.getpid()
local function threads()
    local n = 0
    for _ in util.capture("ls -1 /proc/" .. PID .. "/task"):gmatch("%d+") do n = n + 1 end
    return n
end

describe('sync = "interval"', function()
    local tmp

    before_each(function() tmp = util.tmpdir() end)
    after_each(function()
        collectgarbage(); collectgarbage()
        util.rmtree(tmp)
    end)

    it("fsyncs appended records without a call to sync, one fsync for many appends", function()
        local log = open({ dir = tmp .. "/log", sync = "interval", sync_interval = "50ms" })
        for i = 1, 200 do assert.are.equal(i - 1, log:append("k", "v" .. i)) end
        local st = poll(function()
            local s = log:stats()
            return s.synced_offset == 200 and s
        end)
        assert.truthy(st, "the engine thread never made the 200 records durable")
        assert.are.equal(200, st.appends)
        assert.is_true(st.fsyncs >= 1 and st.fsyncs < st.appends,
                       st.fsyncs .. " fsyncs for " .. st.appends .. " appends")
        log:close()
    end)

    it("does not fsync in append: with an interval of an hour, only sync() and close do", function()
        local dir = tmp .. "/log"
        local log = open({ dir = dir, sync = "interval", sync_interval = "1h" })
        local ro = open({ dir = dir, readonly = true })      -- keeps the counters
        for i = 1, 10 do log:append("k", "v" .. i) end
        local st = log:stats()
        assert.are.equal(0, st.fsyncs)
        assert.are.equal(0, st.synced_offset)
        assert.is_true(log:sync())
        st = log:stats()
        assert.are.equal(1, st.fsyncs)
        assert.are.equal(10, st.synced_offset)
        for i = 11, 15 do log:append("k", "v" .. i) end
        assert.are.equal(10, log:stats().synced_offset)
        log:close()                     -- the thread's last pass covers 10 .. 14
        st = ro:stats()
        assert.are.equal(15, st.synced_offset)
        assert.are.equal(2, st.fsyncs)
        ro:close()
    end)

    it("keeps fsyncing while appends go on, each record durable within a few fsyncs", function()
        -- When fsyncs is first seen at k, the high water mark is h[k]: every
        -- record below h[k] was appended before fsync k + 2 began (the count
        -- moves when an fsync ends), so once fsync k + 3 is counted --
        -- fsync k + 2 has ended and published how far it reached -- the
        -- synced offset is at least h[k].  Counted, not timed: a slow
        -- machine makes fewer appends per fsync, never a failure.
        local log = open({ dir = tmp .. "/log", sync = "interval", sync_interval = "5ms" })
        local hwm_at, rounds, appends = {}, 8, 0
        local st = log:stats()
        for _ = 1, 2000000 do
            log:append(nil, "x")
            appends = appends + 1
            st = log:stats()
            local k = st.fsyncs
            if hwm_at[k] == nil then hwm_at[k] = st.high_water_mark end
            for j = 0, k - 3 do
                if hwm_at[j] and st.synced_offset < hwm_at[j] then
                    error(("fsync %d is counted, the synced offset is %d, yet %d records "
                           .. "were appended before fsync %d began"):format(k, st.synced_offset,
                                                                           hwm_at[j], j + 2))
                end
            end
            if k >= rounds then break end
        end
        assert.is_true(st.fsyncs >= rounds, "the engine thread made " .. st.fsyncs .. " fsyncs")
        assert.is_true(st.fsyncs < appends, st.fsyncs .. " fsyncs for " .. appends .. " appends")
        log:close()
    end)

    it("runs one engine thread per handle, which close stops", function()
        collectgarbage(); collectgarbage()  -- no handle of an earlier test stops its thread now
        local before = threads()
        local a = open({ dir = tmp .. "/a", sync = "interval", sync_interval = "10ms" })
        assert.are.equal(before + 1, threads())
        local b = open({ dir = tmp .. "/b", sync = "interval" })
        local c = open({ dir = tmp .. "/c", sync = "always" })
        local d = open({ dir = tmp .. "/d", sync = "none" })
        assert.are.equal(before + 2, threads(), "only the interval handles have a thread")
        a:append("k", "v")
        a:close()
        assert.truthy(poll(function() return threads() == before + 1 end), "close left a's thread")
        b:close(); c:close(); d:close()
        assert.truthy(poll(function() return threads() == before end), "close left b's thread")
    end)

    it("stops the thread of a handle that is garbage collected, and syncs what it appended", function()
        local dir = tmp .. "/log"
        collectgarbage(); collectgarbage()
        local before = threads()
        local ro
        do
            local log = open({ dir = dir, sync = "interval", sync_interval = "1h" })
            ro = open({ dir = dir, readonly = true })
            log:append("k", "v")
            assert.are.equal(before + 1, threads())
        end
        collectgarbage(); collectgarbage()
        assert.truthy(poll(function() return threads() == before end), "the thread outlived its handle")
        assert.are.equal(1, ro:stats().synced_offset)
        ro:close()
    end)

    it("refuses an interval outside 1 ms .. 1 h with INVALID", function()
        for _, bad in ipairs({ "0ms", "2h", "soon", -1 }) do
            local msg = assert.fails_with("INVALID", takhin.open_log({ dir = tmp .. "/bad", sync = "interval",
                                                                  sync_interval = bad }))
            assert.truthy(msg:find("sync_interval", 1, true), msg)
        end
        assert.is_false(util.exists(tmp .. "/bad"))
    end)

    it("reports a background fsync that failed from the next call, then goes on", function()
        if util.is_luajit then
            return pending("Lua 5.4 only: the fault build is a Lua 5.4 module; the Lua 5.4 pass "
                           .. "runs this child already")
        end
        local fault_build, why = util.fault_build()
        if not fault_build then return pending("needs the fault build: " .. why) end
        local out = util.run_fault(tmp, [[
            local takhin = require("takhin")
            local core = require("takhin.core")
            local system = require("system")
            local log = assert(takhin.open_log{ dir = arg[1], sync = "interval", sync_interval = "10ms" })
            core._fault_reset()
            core._fault_arm("fsync", 1, "EIO")          -- the next fsync fails, once
            local ok, msg, code
            for i = 1, 4000 do                           -- until a call reports it
                ok, msg, code = log:append("k", "v" .. i)
                if not ok then break end
                system.sleep(0.002)
            end
            print("failed", tostring(ok), tostring(code), tostring(msg))
            local hwm = log:high_water_mark()
            print("next", tostring(log:append("k", "after")), hwm)
            for _ = 1, 4000 do
                if log:stats().synced_offset == log:high_water_mark() then break end
                system.sleep(0.005)
            end
            print("synced", log:stats().synced_offset, log:high_water_mark())
            log:close()
        ]], { tmp .. "/log" })
        local code, msg = out:match("failed\tnil\t(%S+)\t([^\n]*)")
        assert.are.equal("IO", code, out)
        assert.truthy(msg:find("background fsync", 1, true), out)
        assert.truthy(msg:find(tmp .. "/log", 1, true), "the message names the log: " .. out)
        local next_off, hwm = out:match("next\t(%d+)\t(%d+)")
        assert.are.equal(hwm, next_off, "the call that reported it appended nothing: " .. out)
        local synced, last = out:match("synced\t(%d+)\t(%d+)")
        assert.truthy(synced, out)
        assert.are.equal(last, synced, "the next background fsync covers everything: " .. out)
    end)
end)

describe('sync = "always"', function()
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

    it("returns from append with the records durable", function()
        local log = open({ dir = tmp .. "/log", sync = "always" })
        for i = 1, 20 do
            local o = log:append("k", "v" .. i)
            assert.are.equal(o + 1, log:stats().synced_offset)
            if i % 5 == 0 then
                local first, last = log:append_batch({ { value = "a" }, { value = "b" } })
                assert.are.equal(o + 1, first)
                assert.are.equal(last + 1, log:stats().synced_offset)
            end
        end
        local st = log:stats()
        assert.is_true(st.fsyncs >= 1 and st.fsyncs <= st.appends)
        log:close()
    end)

    -- A shared writer: waits for the go file, then appends (acknowledging
    -- each offset) until the writers together have made at least SHARED
    -- fewer fsyncs than appends -- which only happens when fsyncs are
    -- shared -- and it made at least MIN appends; or it gave up at MAX.
    local WRITER = [[
        local logs = require("helpers.log")
        local proc = require("helpers.proc")
        local dir, name, go, acks = arg[1], arg[2], arg[3], arg[4]
        local SHARED, MIN, MAX = 20, 30, 3000
        local log = logs.open_or_exit({ dir = dir, shared = true, sync = "always" })
        local report = proc.reporter(acks)
        assert(proc.wait_for_file(go, 6000, 0.002), "no go file")
        local n = 0
        while n < MAX do
            local o = assert(log:append(name, name .. ":" .. n))
            report(o, name .. ":" .. n)
            n = n + 1
            local st = log:stats()
            if n >= MIN and st.appends - st.fsyncs >= SHARED then break end
        end
        log:close()
    ]]

    it("shares fsyncs between processes appending at once (group commit)", function()
        local dir = tmp .. "/log"
        open({ dir = dir }):close()
        local ro = open({ dir = dir, readonly = true })     -- keeps the counters
        local go = tmp .. "/go"
        for w = 1, 4 do
            pids[w] = util.spawn_lua(tmp, WRITER, { dir, "w" .. w, go, tmp .. "/acks" .. w })
        end
        util.write_file(go, "go")
        for w = 1, 4 do assert.is_true(util.wait_exit(pids[w], 6000), "writer " .. w .. " did not finish") end
        local acked, total = {}, 0
        for w = 1, 4 do
            for _, line in ipairs(util.lines(tmp .. "/acks" .. w)) do
                local o, v = line:match("^(%d+)\t(.*)$")
                o = tonumber(o)
                assert.is_nil(acked[o], "offset " .. o .. " acknowledged twice")
                acked[o], total = v, total + 1
            end
        end
        local st = ro:stats()
        assert.are.equal(total, st.appends, "every append acknowledged")
        assert.are.equal(total, st.high_water_mark)
        assert.are.equal(total, st.synced_offset)
        assert.is_true(st.fsyncs < st.appends, st.fsyncs .. " fsyncs for " .. st.appends
                       .. " appends: the writers did not share them")
        local expect = 0
        for rec in ro:records() do
            assert.are.equal(expect, rec.offset)
            assert.are.equal(acked[expect], rec.value)
            expect = expect + 1
        end
        assert.are.equal(total, expect)
        ro:close()
    end)
end)
