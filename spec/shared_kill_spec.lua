-- Shared mode: a writer killed with SIGKILL -- often while it holds the
-- log's lock -- wedges nobody and loses nothing acknowledged.
--
-- Every change to a log's files happens under a process-shared robust
-- mutex in <dir>/.state (csrc/state.c).  A shared writer (an nginx
-- worker) killed while holding it leaves it "owner died"; the next
-- writer to lock it repairs the log from its files, as an open would,
-- and goes on.  A writer killed while it leads a group commit
-- (sync = "always") is replaced as leader by one of the writers waiting
-- for that fsync.
--
-- Random moments.  Three shared-mode children append in a tight loop --
-- single records and batches of up to 40, segments of 64 KiB, so that
-- rolls happen under the lock too -- and write "first last seq" to their
-- ack file, flushed, after each append returned: those offsets are
-- acknowledged.  Round after round the parent kills one of them at a
-- random moment (when its ack file reached a random length), checks
-- that the two others go on appending (a mutex left owner-dead and never
-- repaired, or a dead group-commit leader never replaced, would stop
-- them), and starts a new writer in its place.  In the end it kills the
-- rest and checks the log through a new shared writer:
--
--   - offsets are contiguous from 0 to the high water mark, each record
--     intact and one that some writer appended (no phantom, no torn
--     record), none twice, each writer's in the order it appended them;
--   - every acknowledged offset holds the record acknowledged there;
--   - the next append gets the high water mark.
--
-- Much of a writer's time is spent inside append, under the lock (rolls
-- and catching up with the others' rolls included), so many kills land
-- there: measured while writing this spec, about one kill in six made the
-- next writer repair the log (the generation in .state moved).  This spec
-- found a lost wake-up of the robust mutex (a waiter killed just after an
-- unlock woke it left another asleep on the free lock: csrc/state.c
-- tk_state_lock waits in slices since); a writer that stops appending
-- fails it.
--
-- Crash points.  The fault build (`make fault`) kills a child with
-- SIGKILL at named steps (csrc/fault.h); the steps of delete_before's
-- retention and of a cursor commit run under the lock; those of a shared
-- append run outside it, between its reservation and its turn to
-- publish, and hold up every append reserved after it until another
-- writer finds it dead and voids them.  For each of them
-- a child in shared mode appends, commits cursors and deletes old
-- segments until it dies exactly there, while two others append; they
-- must go on, and the log must hold every acknowledged record from its
-- new start on, contiguous.  Lua 5.4 only (the fault build is a Lua 5.4
-- module); the LuaJIT pass runs the random rounds.
--
-- Waiting is bounded polling; children are stopped in after_each.
-- TAKHIN_KILL_SEED replays the parent's random choices.

local util = require("helpers.util")
local logs = require("helpers.log")

local SEGMENT = 64 * 1024
local LOG_OPTS = "max_segment_size = " .. SEGMENT .. ", index_interval_bytes = 512"

-- The record a writer appends as its seq-th: parent and children share
-- this text.
local RECORD_SRC = [[
local function record(name, seq)
    local pad = (seq * 7919) % 600
    return name, ("%s:%d:"):format(name, seq) .. string.rep(string.char(97 + seq % 26), pad)
end
]]
local record = load(RECORD_SRC .. "return record")()

-- A shared writer: appends, acknowledging "first last seq", until it is
-- killed -- or, so that nothing runs away, after MAX appends ("done").
-- arg: dir, name, ack file, sync mode, seed.
local WRITER = RECORD_SRC .. [[
local logs = require("helpers.log")
local dir, name, ack_path, sync, seed = arg[1], arg[2], arg[3], arg[4], tonumber(arg[5])
local log = logs.open_or_exit({ dir = dir, shared = true, sync = sync, ]] .. LOG_OPTS .. [[ })
local ack = assert(io.open(ack_path, "w"))
math.randomseed(seed)
local seq = 0
for _ = 1, 4000 do
    local n = math.random(1, 40)
    local first, last
    if n <= 12 then
        local key, value = record(name, seq)
        first = log:append(key, value)
        last = first
        n = 1
    else
        local batch = {}
        for i = 1, n do
            local key, value = record(name, seq + i - 1)
            batch[i] = { key = key, value = value }
        end
        first, last = log:append_batch(batch)
    end
    if not first then
        io.stderr:write("append failed: ", tostring(last), "\n")
        os.exit(4)
    end
    ack:write(first, " ", last, " ", seq, "\n")
    ack:flush()
    seq = seq + n
end
log:close()
print("done")
]]

-- Offsets acknowledged in an ack file: acked[offset] = { name, seq }.
local function read_acks(path, name, acked, where)
    local n = 0
    for _, line in ipairs(util.lines(path)) do
        local first, last, seq = line:match("^(%d+) (%d+) (%d+)$")
        assert(first, where .. ": bad ack line in " .. path .. ": " .. line)
        first, last, seq = tonumber(first), tonumber(last), tonumber(seq)
        for o = first, last do
            assert(acked[o] == nil, where .. ": offset " .. o .. " acknowledged twice ("
                   .. tostring(acked[o] and acked[o][1]) .. ", " .. name .. ")")
            acked[o] = { name, seq + o - first }
            n = n + 1
        end
    end
    return n
end

-- The whole log against what was acknowledged (see the header).  Records
-- below the log's start (delete_before) are not looked for.  Returns the
-- high water mark.
local function verify(log, acked, where)
    local base, hwm = log:base_offset(), log:high_water_mark()
    local last_seq, seen, expect = {}, {}, base
    for rec in log:records() do
        assert(rec.offset == expect, where .. ": offset " .. rec.offset .. " where " .. expect .. " was due")
        local name, seq = rec.value:match("^([%w]+):(%d+):")
        assert(name, where .. ": offset " .. expect .. " holds a record no writer appended")
        seq = tonumber(seq)
        local key, value = record(name, seq)
        assert(rec.key == key and rec.value == value, where .. ": offset " .. expect .. " is damaged")
        local id = name .. ":" .. seq
        assert(not seen[id], where .. ": " .. id .. " is in the log twice")
        seen[id] = true
        assert((last_seq[name] or -1) < seq, where .. ": " .. id .. " comes after seq " .. tostring(last_seq[name]))
        last_seq[name] = seq
        local a = acked[expect]
        assert(a == nil or (a[1] == name and a[2] == seq), where .. ": offset " .. expect
               .. " was acknowledged to " .. (a and (a[1] .. ":" .. a[2]) or "") .. " but holds " .. id)
        expect = expect + 1
    end
    assert(expect == hwm, where .. ": the records end at " .. expect .. ", the high water mark is " .. hwm)
    for o in pairs(acked) do
        assert(o < hwm, where .. ": acknowledged offset " .. o .. " is lost (high water mark " .. hwm .. ")")
    end
    return hwm
end

-- Waits (bounded) until every writer in `slots` but `except` has
-- acknowledged more than it had; returns those that did not.
local function stalled(slots, except)
    local base = {}
    for i, s in ipairs(slots) do
        if i ~= except then base[i] = util.count_lines(s.acks) end
    end
    local function behind()
        local t = {}
        for i, n in pairs(base) do
            local s = slots[i]
            if util.count_lines(s.acks) < n + 3 and util.alive(s.pid) then t[#t + 1] = s end
        end
        return t
    end
    util.wait_until(function() return #behind() == 0 end, 1000, 0.005)
    return behind()
end

local function names(list)
    local t = {}
    for i, s in ipairs(list) do t[i] = s.name end
    return table.concat(t, ", ")
end

describe("a shared-mode writer killed with SIGKILL", function()
    local tmp, slots

    before_each(function()
        tmp = util.tmpdir()
        slots = {}
    end)
    after_each(function()
        for _, s in ipairs(slots) do util.stop(s.pid) end
        collectgarbage(); collectgarbage()
        util.rmtree(tmp)
    end)

    -- Rounds of: kill one writer at a random moment, see the others go
    -- on, start another.  Then kill the rest and check everything.
    local function rounds(sync, count)
        local seed = tonumber(os.getenv("TAKHIN_KILL_SEED")) or os.time()
        math.randomseed(seed)
        local dir = tmp .. "/log"
        local files, outs, nstarted = {}, {}, 0
        local function start(i)
            nstarted = nstarted + 1
            local name = ("w%dx%d"):format(i, nstarted)
            local acks = ("%s/acks-%s"):format(tmp, name)
            local pid, out = util.spawn_lua(tmp, WRITER, { dir, name, acks, sync, tostring(seed + nstarted) })
            slots[i] = { pid = pid, out = out, name = name, acks = acks }
            files[#files + 1] = { acks, name }
            outs[#outs + 1] = out
        end
        for i = 1, 3 do start(i) end
        local wedged
        for round = 1, count do
            local where = ("seed %d, %s, round %d"):format(seed, sync, round)
            local v = math.random(1, 3)
            local s = slots[v]
            local target = util.count_lines(s.acks) + math.random(1, 25)
            util.wait_lines(s.acks, target, s.pid)
            assert.is_true(util.count_lines(s.acks) >= target,
                           where .. ": " .. s.name .. " stopped appending: " .. util.read_file(s.out))
            util.kill9(s.pid)
            assert.is_true(util.wait_exit(s.pid), where .. ": " .. s.name .. " did not die")
            local behind = stalled(slots, v)
            assert.are.equal("", names(behind), where .. ": after " .. s.name .. " was killed, "
                             .. names(behind) .. " stopped appending")
            start(v)
        end
        for _, s in ipairs(slots) do
            util.kill9(s.pid)
            assert.is_true(util.wait_exit(s.pid))
        end

        for _, out in ipairs(outs) do
            local text = util.read_file(out)
            assert.truthy(text == "" or text == "done\n", "a writer failed: " .. text)
        end
        local acked, total = {}, 0
        for _, f in ipairs(files) do total = total + read_acks(f[1], f[2], acked, "seed " .. seed) end
        local log = logs.open({ dir = dir, shared = true, max_segment_size = SEGMENT })
        local hwm = verify(log, acked, ("seed %d, %s"):format(seed, sync))
        assert.are.equal(0, log:base_offset())
        assert.is_true(total >= 3 * count, "acknowledged " .. total)
        assert.are.equal(hwm, log:append("end", "end"))
        log:close()
        return hwm
    end

    it("wedges no other writer and loses no acknowledged record (sync = none)", function()
        local hwm = rounds("none", 24)
        assert.is_true(hwm > 2 * SEGMENT / 300, "the log should span several segments")
    end)

    it("wedges no other writer and loses no acknowledged record (sync = always: killed leading a group commit)", function()
        rounds("always", 8)
    end)
end)

-------------------------------------------------------------------------
-- The fault build's crash points under the lock
-------------------------------------------------------------------------

-- The victim: appends batches, commits a cursor under a new name every
-- third time, and deletes the log's older half every fifth time -- until
-- TAKHIN_FAULT kills it at the step named.  arg: dir, name, ack file.
local VICTIM = RECORD_SRC .. [[
local logs = require("helpers.log")
local dir, name, ack_path = arg[1], arg[2], arg[3]
local log = logs.open_or_exit({ dir = dir, shared = true, ]] .. LOG_OPTS .. [[ })
local ack = assert(io.open(ack_path, "w"))
local seq = 0
for i = 1, 100000 do
    local batch = {}
    for j = 1, 20 do
        local key, value = record(name, seq + j - 1)
        batch[j] = { key = key, value = value }
    end
    local first, last = assert(log:append_batch(batch))
    ack:write(first, " ", last, " ", seq, "\n")
    ack:flush()
    seq = seq + 20
    if i % 3 == 0 then assert(log:commit("c" .. i, log:high_water_mark())) end
    if i % 5 == 0 and log:num_segments() > 3 then
        assert(log:delete_before(log:high_water_mark() - 300))
    end
end
io.stderr:write("never reached the crash point\n")
os.exit(5)
]]

-- The steps under the lock, then those of a shared append outside it
-- (csrc/log.c, "Shared appends"): after its reservation, after its write,
-- inside the seqlock as it publishes at its turn, and after it freed its
-- reservation but before it passed the turn on.  "@N": the Nth time the
-- step is reached, so that the victim has appended before.
local CRASH_POINTS = {
    "retention.start", "retention.published", "retention.removing", "retention.removed",
    "cursor.named", "cursor.writing", "cursor.written",
    "append.reserved@7", "append.written@7", "append.publishing@7", "append.freed@7",
}

describe("a shared-mode writer killed at a crash point (under the lock, or in an append's reservation)", function()
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

    local skip
    if util.is_luajit then
        skip = "Lua 5.4 only: the fault build is a Lua 5.4 module; the Lua 5.4 pass runs these children already"
    else
        local build, why = util.fault_build()
        if not build then skip = "needs the fault build: " .. why end
    end

    -- The command line of a lua5.4 child of the fault build; point: the
    -- TAKHIN_FAULT crash point, or nil.  Returns it and an output file.
    local function fault_command(source, args, point)
        local script = util.write_script(tmp, source)
        return util.fault_command(script, args, point), script .. ".out"
    end

    -- That child in the background.  Returns its pid and output file.
    local function spawn_fault(source, args, point)
        local cmd, out = fault_command(source, args, point)
        local pid = tonumber(util.capture("sh -c " .. util.q("exec " .. cmd)
                                          .. " </dev/null >" .. util.q(out) .. " 2>&1 & echo $!"):match("%d+"))
        assert(pid, "could not start " .. cmd)
        pids[#pids + 1] = pid
        return pid, out
    end

    -- A shared writer with sync = "always" holding the log open (so .state
    -- is not rebuilt under the case) until the file `go` exists; then it
    -- appends one record and prints its offset when `append`, and closes.
    -- Returns its pid and output file, once it is ready.
    local function durable_holder(dir, go, append)
        local pid, out = util.spawn_lua(tmp, [[
            local takhin = require("takhin")
            local log = assert(takhin.open_log({ dir = arg[1], shared = true, sync = "always" }))
            print("ready")
            io.stdout:flush()
            while not io.open(arg[2]) do os.execute("sleep 0.01") end
            if arg[3] == "append" then print("offset " .. assert(log:append("k", "next"))) end
            io.stdout:flush()
            log:close()
        ]], { dir, go, append and "append" or "-" })
        pids[#pids + 1] = pid
        assert.truthy(util.wait_for_content(out, "ready"):find("ready", 1, true))
        return pid, out
    end

    for _, point in ipairs(CRASH_POINTS) do
        it("at " .. point .. ": the others go on, every acknowledged record from the new start on is there", function()
            if skip then return pending(skip) end
            local dir = tmp .. "/log"
            local slots, files = {}, {}
            for i = 1, 2 do
                local name = "s" .. i
                local acks = tmp .. "/acks-" .. name
                local pid, out = spawn_fault(WRITER, { dir, name, acks, "none", tostring(i) })
                slots[i] = { pid = pid, out = out, name = name, acks = acks }
                files[#files + 1] = { acks, name }
            end
            local vacks = tmp .. "/acks-v"
            local vpid, vout = spawn_fault(VICTIM, { dir, "v", vacks }, point)
            files[#files + 1] = { vacks, "v" }
            assert.is_true(util.wait_exit(vpid, 3000), "the victim did not reach " .. point)
            assert.is_nil(util.read_file(vout):find("never reached", 1, true), util.read_file(vout))
            assert.is_true(util.count_lines(vacks) > 0, "the victim appended nothing: " .. util.read_file(vout))
            slots[3] = { pid = vpid, name = "v", acks = vacks }
            local behind = stalled(slots, 3)
            assert.are.equal("", names(behind), "after the victim died at " .. point .. ", "
                             .. names(behind) .. " stopped appending: "
                            .. util.read_file(slots[1].out) .. util.read_file(slots[2].out))
            for i = 1, 2 do
                util.kill9(slots[i].pid)
                assert.is_true(util.wait_exit(slots[i].pid))
            end

            local acked = {}
            for _, f in ipairs(files) do read_acks(f[1], f[2], acked, point) end
            local log = logs.open({ dir = dir, shared = true, max_segment_size = SEGMENT })
            local base = log:base_offset()
            for o in pairs(acked) do
                if o < base then acked[o] = nil end
            end
            local hwm = verify(log, acked, point)
            for name, off in pairs(assert(log:cursors())) do
                assert.is_true(off >= 0 and off <= hwm, name .. " = " .. off)
            end
            assert.is_true(log:commit("after", hwm))
            assert.are.equal(hwm, log:append("end", "end"))
            log:close()
        end)
    end

    -- One shared append killed at each step between its reservation and
    -- passing the turn on, with nobody else appending: the next append
    -- (this process's) reserves after it, finds it dead while waiting for
    -- its turn, voids it and appends again -- at the dead one's offset,
    -- unless the dead one had published already ("append.freed": its
    -- record stays, it only never passed the turn on).  Either way the
    -- active .log ends where the published records end (nothing of the
    -- dead one's is left past it to come back at the next open), and a
    -- fresh open of the files finds the same log.
    local DEAD_APPENDS = {
        { "append.reserved", false }, { "append.written", false },
        { "append.publishing", false }, { "append.freed", true },
    }
    for _, case in ipairs(DEAD_APPENDS) do
        local point, stays = case[1], case[2]
        it("at " .. point .. " with nobody appending after it: the next append "
           .. (stays and "follows its record" or "takes its offset") .. ", and no byte of it "
           .. "is left past the end", function()
            if skip then return pending(skip) end
            local takhin = require("takhin")
            local dir = tmp .. "/log"
            local log = assert(takhin.open_log({ dir = dir, shared = true }))
            for i = 1, 3 do assert.are.equal(i - 1, log:append("k", "before " .. i)) end
            local vpid, vout = spawn_fault([[
                local takhin = require("takhin")
                local log = assert(takhin.open_log({ dir = arg[1], shared = true }))
                log:append("k", "the victim's record")
                io.stderr:write("never reached the crash point\n")
                os.exit(5)
            ]], { dir }, point)
            assert.is_true(util.wait_exit(vpid, 3000), "the victim did not reach " .. point)
            assert.is_nil(util.read_file(vout):find("never reached", 1, true), util.read_file(vout))
            local want = { "before 1", "before 2", "before 3" }
            if stays then want[#want + 1] = "the victim's record" end
            want[#want + 1] = "after"
            assert.are.equal(#want - 1, log:append("k", "after"))
            local function check(h, where)
                local got = {}
                for rec in h:records() do got[#got + 1] = rec.value end
                assert.are.same(want, got, where)
                assert.are.equal(#want, h:high_water_mark(), where)
                assert.are.equal(h:size(), util.file_size(dir .. "/" .. util.segment_name(0, "log")),
                                 where .. ": the .log holds bytes past the published records")
            end
            check(log, "the handle that appended after")
            log:close()
            -- no handle open: the next open rebuilds .state from the files
            local again = assert(takhin.open_log({ dir = dir, shared = true }))
            check(again, "reopened from the files")
            assert.are.equal(#want, again:append("k", "next"))
            again:close()
        end)
    end

    -- A group-commit leader that dies but is not reaped -- its parent never
    -- waits: here a `sleep` the shell exec'd -- stays a zombie, which
    -- kill(pid, 0) still finds.  The next durable append must see it dead
    -- and lead, not wait for it until the parent reaps it.
    it("at sync.leading, left a zombie by a parent that never reaps it: the next durable append "
       .. "takes the lead", function()
        if skip then return pending(skip) end
        local dir, go = tmp .. "/log", tmp .. "/go"
        -- the durable writer that must take the lead, holding the log open
        -- throughout (the state the dead leader left is the one it uses)
        local wpid, wout = durable_holder(dir, go, true)
        local victim = [[
            local takhin = require("takhin")
            local log = assert(takhin.open_log({ dir = arg[1], shared = true, sync = "always" }))
            log:append("k", "led")
            io.stderr:write("never reached the crash point\n")
            os.exit(5)
        ]]
        local cmd, out = fault_command(victim, { dir }, "sync.leading")
        local pidfile = tmp .. "/victim.pid"
        local parent = tonumber(util.capture("sh -c " .. util.q("(exec " .. cmd .. ") </dev/null >"
                                             .. util.q(out) .. " 2>&1 & echo $! >" .. util.q(pidfile)
                                             .. "; exec sleep 300")
                                             .. " </dev/null >/dev/null 2>&1 & echo $!"):match("%d+"))
        assert(parent, "could not start the victim's parent")
        pids[#pids + 1] = parent
        local vpid
        util.wait_until(function()
            local f = io.open(pidfile)
            vpid = f and tonumber((f:read("a") or ""):match("%d+"))
            if f then f:close() end
            return vpid
        end, 1000, 0.005)
        assert(vpid, "no victim pid")
        -- dead, still there as a zombie, and seen by kill -0
        assert.is_true(util.wait_exit(vpid, 3000), "the victim did not reach sync.leading")
        assert.is_nil(util.read_file(out):find("never reached", 1, true), util.read_file(out))
        local stat = util.read_file("/proc/" .. vpid .. "/stat") or ""
        assert.are.equal("Z", stat:match("^%d+ %b() (%a)"), "the victim should be a zombie: " .. stat)
        assert.is_true(util.sh("kill -0 " .. vpid .. " 2>/dev/null"))
        -- the durable writer appends: it must take the lead (bounded wait)
        util.write_file(go, "go")
        local res = util.wait_for_content(wout, "offset ", 2000) or ""
        assert.truthy(res:find("offset %d+"), "the durable append did not return: " .. res)
        assert.is_true(util.wait_exit(wpid))
    end)

    -- A durable appender killed between entering append and its group
    -- commit leaves the `appending` hint in .state high: the next leader
    -- waits the whole gathering moment (100 us of sched_yield) for it --
    -- once: then it clears the hint, and the next fsync does not wait.
    it("at append.entered (sync = always): the hint it leaves holds up one fsync, not every "
       .. "one after", function()
        if skip then return pending(skip) end
        assert(util.sh("command -v strace >/dev/null 2>&1"), "strace is not installed")
        local dir, go = tmp .. "/log", tmp .. "/go"
        local hpid = durable_holder(dir, go, false)
        local vpid, vout = spawn_fault([[
            local takhin = require("takhin")
            local log = assert(takhin.open_log({ dir = arg[1], shared = true, sync = "always" }))
            log:append("k", "killed on the way")
            io.stderr:write("never reached the crash point\n")
            os.exit(5)
        ]], { dir }, "append.entered")
        assert.is_true(util.wait_exit(vpid, 3000), "the victim did not reach append.entered")
        assert.is_nil(util.read_file(vout):find("never reached", 1, true), util.read_file(vout))
        local trace = tmp .. "/trace"
        local out, ok = util.run_lua_as("env ASAN_OPTIONS=detect_leaks=0 strace -f -qq "
                                        .. "-e trace=sched_yield,write -o " .. util.q(trace), tmp, [[
            local takhin = require("takhin")
            local log = assert(takhin.open_log({ dir = arg[1], shared = true, sync = "always" }))
            assert(log:append("k", "first"))
            io.stderr:write("MARK-BETWEEN\n")
            assert(log:append("k", "second"))
            io.stderr:write("MARK-END\n")
            log:close()
        ]], { dir })
        assert(ok, out)
        util.write_file(go, "go")
        local first, second, part = 0, 0, 1
        for _, line in ipairs(util.lines(trace)) do
            if line:find("MARK-BETWEEN", 1, true) then part = 2
            elseif line:find("MARK-END", 1, true) then part = 3
            elseif line:find("sched_yield(", 1, true) then
                if part == 1 then first = first + 1 elseif part == 2 then second = second + 1 end
            end
        end
        assert.is_true(first > 0, "the first fsync should have waited for the dead appender")
        assert.are.equal(0, second, "the second fsync waited for the dead appender again")
        assert.is_true(util.wait_exit(hpid))
    end)
end)
