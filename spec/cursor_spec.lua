-- Cursors (SPEC §8): a consumer's committed offset, the next offset it
-- will read, kept per log in <dir>/.cursors.  A commit stays within
-- [base_offset, high_water_mark], never moves back unless forced, and with
-- `expect` is a compare-and-set that several processes can race on; it
-- survives a reopen and SIGKILL (at every step of a commit, with the
-- crash-point build: never torn, the old value or the new one); consumers
-- that read, send and commit get every record at least once, also when
-- killed between read and commit; snapshots carry the cursors and a
-- restore brings them back, clamped to what it restored.

local takhin = require("takhin")
local util = require("helpers.util")
require("helpers.assertions")

-- The value of the record at offset o (the same in children).
local VALUES = [[
local function value_for(o) return ("rec-%d"):format(o) end
]]
local value_for = load(VALUES .. " return value_for")()

local T0 = 1700000000000

local function open(dir, extra)
    local opts = { dir = dir, max_segment_size = 1024 }
    for k, v in pairs(extra or {}) do opts[k] = v end
    local log, msg, code = takhin.open_log(opts)
    assert(log, "open_log " .. dir .. ": " .. tostring(msg) .. " " .. tostring(code))
    return log
end

local function fill(log, to)
    for o = log:high_water_mark(), to - 1 do
        assert.are.equal(o, log:append("k", value_for(o), T0 + o))
    end
end

-- A failed commit returns nil, a message and a code, and changes nothing.
local function refused(code, log, name, offset, opts)
    local before = log:committed(name)
    local msg = assert.fails_with(code, log:commit(name, offset, opts))
    assert.are.equal(before, log:committed(name), "a refused commit changed " .. name)
    return msg
end

describe("a cursor", function()
    local tmp, log
    before_each(function()
        tmp = util.tmpdir()
        log = open(tmp .. "/log")
        fill(log, 20)
    end)
    after_each(function()
        if log then log:close() end
        log = nil
        collectgarbage(); collectgarbage()
        util.rmtree(tmp)
    end)

    it("is nil until committed, then the offset committed", function()
        assert.is_nil(log:committed("c"))
        assert.are.equal(1, select("#", log:committed("c")), "never committed is a plain nil")
        assert.are.same({}, log:cursors())
        assert.is_true(log:commit("c", 7))
        assert.are.equal(7, log:committed("c"))
        assert.is_true(log:commit("d", 0))
        assert.are.same({ c = 7, d = 0 }, log:cursors())
    end)

    it("stays within [base_offset, high_water_mark]", function()
        log:delete_before(5)
        assert.is_true(log:commit("c", 5))
        assert.is_true(log:commit("c", 20))
        local msg = refused("OUT_OF_RANGE", log, "c", 21)
        assert.matches("21", msg)
        refused("OUT_OF_RANGE", log, "d", 4)
        refused("OUT_OF_RANGE", log, "d", -1)
        assert.is_nil(log:committed("d"))
        -- an empty log takes offset 0, its high water mark
        local empty = open(tmp .. "/empty")
        assert.is_true(empty:commit("c", 0))
        refused("OUT_OF_RANGE", empty, "c", 1)
        empty:close()
    end)

    it("past the end of a truncate is moved back to the new end, so its consumer reads what comes next", function()
        assert.is_true(log:commit("ahead", 18))
        assert.is_true(log:commit("behind", 4))
        assert.is_true(log:truncate(10))
        assert.are.same({ ahead = 10, behind = 4 }, log:cursors())
        fill(log, 15)
        assert.is_true(log:commit("ahead", 12), "commits go on from the new end")
        log:close()
        log = open(tmp .. "/log")
        assert.are.same({ ahead = 12, behind = 4 }, log:cursors())
    end)

    it("passed by retention stays where it was, below base_offset: its consumer knows what it lost", function()
        assert.is_true(log:commit("slow", 3))
        log:delete_before(10)
        assert.are.equal(3, log:committed("slow"))
        assert.is_true(log:base_offset() > log:committed("slow"))
        assert.fails_with("OUT_OF_RANGE", log:read(3))
        assert.is_true(log:commit("slow", 10), "and commits from base_offset on")
    end)

    it("never moves backwards unless forced", function()
        assert.is_true(log:commit("c", 10))
        local msg = refused("INVALID", log, "c", 9)
        assert.matches("force", msg)
        assert.is_true(log:commit("c", 10), "committing the same offset again is fine")
        assert.is_true(log:commit("c", 3, { force = true }))
        assert.are.equal(3, log:committed("c"))
        assert.is_true(log:commit("c", 12, { force = true }))
        assert.are.equal(12, log:committed("c"))
        refused("INVALID", log, "c", 11, { force = false })
    end)

    it("commits with expect only when the stored value is the expected one", function()
        -- expect = false: only when never committed
        assert.is_true(log:commit("c", 4, { expect = false }))
        local msg = refused("CONFLICT", log, "c", 6, { expect = false })
        assert.matches("4", msg)
        refused("CONFLICT", log, "new", 6, { expect = 0 })
        assert.is_nil(log:committed("new"))
        -- expect = offset
        assert.is_true(log:commit("c", 8, { expect = 4 }))
        refused("CONFLICT", log, "c", 9, { expect = 4 })
        refused("CONFLICT", log, "c", 9, { expect = 9 })
        assert.is_true(log:commit("c", 8, { expect = 8 }))
        -- the other rules still hold when expect does
        refused("INVALID", log, "c", 2, { expect = 8 })
        assert.is_true(log:commit("c", 2, { expect = 8, force = true }))
        refused("OUT_OF_RANGE", log, "c", 99, { expect = 2 })
        assert.are.equal(2, log:committed("c"))
    end)

    it("is named by 1 to 128 bytes of letters, digits, '.', '_' and '-'", function()
        local good = { "a", "Z", "0", "consumer-1", "kafka.forwarder_v2", "...", "-", string.rep("n", 128) }
        for i, name in ipairs(good) do
            assert.is_true(log:commit(name, i), name)
            assert.are.equal(i, log:committed(name), name)
        end
        local bad = { "", string.rep("n", 129), "a b", "a/b", "a\\b", "caf\u{e9}", "a\0b", "tab\t",
                      "new\nline", "a:b", "*" }
        for _, name in ipairs(bad) do
            assert.fails_with("INVALID", log:commit(name, 1))
            assert.fails_with("INVALID", log:committed(name))
            assert.fails_with("INVALID", log:delete_cursor(name))
        end
        local n = 0
        for _ in pairs(log:cursors()) do n = n + 1 end
        assert.are.equal(#good, n)
    end)

    it("raises on misuse", function()
        assert.has_error(function() log:commit(nil, 1) end)
        assert.has_error(function() log:commit("c") end)
        assert.has_error(function() log:commit("c", "1") end)
        assert.has_error(function() log:commit("c", 1.5) end)
        assert.has_error(function() log:commit("c", 1, "expect") end)
        assert.has_error(function() log:commit("c", 1, { expect = "0" }) end)
        assert.has_error(function() log:commit("c", 1, { expect = true }) end)
        assert.has_error(function() log:commit("c", 1, { expects = 0 }) end)
        assert.has_error(function() log:committed() end)
        assert.has_error(function() log:delete_cursor({}) end)
        assert.is_nil(log:committed("c"))
    end)

    it("is deleted by delete_cursor, and starts afresh when committed again", function()
        assert.is_true(log:commit("c", 15))
        assert.is_true(log:commit("d", 3))
        assert.is_true(log:delete_cursor("c"))
        assert.is_nil(log:committed("c"))
        assert.are.same({ d = 3 }, log:cursors())
        local msg = assert.fails_with("NOT_FOUND", log:delete_cursor("c"))
        assert.matches("c", msg)
        assert.fails_with("NOT_FOUND", log:delete_cursor("never"))
        assert.is_true(log:commit("c", 2, { expect = false }), "a deleted cursor is as if never committed")
        assert.are.same({ c = 2, d = 3 }, log:cursors())
    end)

    it("is read by read-only handles, which see commits as they happen but cannot commit", function()
        local ro = open(tmp .. "/log", { readonly = true })       -- before any .cursors exists
        assert.is_nil(ro:committed("c"))
        assert.are.same({}, ro:cursors())
        assert.is_true(log:commit("c", 5))
        assert.are.equal(5, ro:committed("c"))
        assert.is_true(log:commit("c", 9))
        assert.are.same({ c = 9 }, ro:cursors())
        assert.fails_with("READONLY", ro:commit("c", 10))
        assert.fails_with("READONLY", ro:commit("x", 1))
        assert.fails_with("READONLY", ro:delete_cursor("c"))
        assert.are.equal(9, log:committed("c"))
        log:delete_cursor("c")
        assert.is_nil(ro:committed("c"))
        ro:close()
    end)

    it("holds 1024 cursors; one more is refused until one is deleted", function()
        for i = 1, 1024 do assert.is_true(log:commit("c" .. i, i % 20)) end
        assert.fails_with("FULL", log:commit("one-more", 1))
        assert.is_true(log:commit("c7", 19), "existing cursors still commit")
        assert(log:delete_cursor("c500"))
        assert.is_true(log:commit("one-more", 1))
        local all = log:cursors()
        assert.is_nil(all.c500)
        assert.are.equal(1, all["one-more"])
        assert.are.equal(19, all.c7)
        assert.are.equal(1024 % 20, all.c1024)
    end)

    it("survives a reopen, with sync = \"always\" too", function()
        assert.is_true(log:commit("a", 3))
        assert.is_true(log:commit("b", 17))
        assert.is_true(log:commit("gone", 1))
        assert(log:delete_cursor("gone"))
        log:close()
        log = nil
        for _, extra in ipairs({ { readonly = true }, { sync = "always" }, { shared = true } }) do
            local l = open(tmp .. "/log", extra)
            assert.are.same({ a = 3, b = 17 }, l:cursors())
            l:close()
        end
        log = open(tmp .. "/log", { sync = "always" })
        assert.is_true(log:commit("a", 4, { expect = 3 }))
        log:close()
        log = open(tmp .. "/log", { readonly = true })
        assert.are.equal(4, log:committed("a"))
    end)

    it("survives SIGKILL of the process that committed it", function()
        log:close()
        log = nil
        local pid, out = util.spawn_lua(tmp, [[
local takhin = require("takhin")
local log = assert(takhin.open_log{ dir = arg[1] })
assert(log:commit("a", 7))
assert(log:commit("b", 12, { expect = false }))
assert(log:commit("a", 9, { expect = 7 }))
print("committed")
io.stdout:flush()
log:wait(2 ^ 40)                      -- killed here
]], { tmp .. "/log" })
        util.wait_for_content(out, "committed", 3000)
        util.stop(pid)
        log = open(tmp .. "/log")
        assert.are.same({ a = 9, b = 12 }, log:cursors())
    end)
end)

-------------------------------------------------------------------------
-- Several processes
-------------------------------------------------------------------------

-- Drains cursor "q" of the log at arg[1] up to arg[2] records, in
-- batches of 1 to 5: reads [from, to), checks every record, commits `to`
-- with expect = what it read the cursor as.  Reports each batch it moved
-- the cursor over ("took from to") and, at the end, how many commits lost
-- the race ("done conflicts").
local DRAINER = VALUES .. [[
local takhin = require("takhin")
local proc = require("helpers.proc")
local dir, n, seed, report_path = arg[1], tonumber(arg[2]), tonumber(arg[3]), arg[4]
local log = assert(takhin.open_log{ dir = dir, shared = true })
local report = proc.reporter(report_path)
assert(proc.wait_for_file(dir .. "/../go", 3000, 0.005))
math.randomseed(seed)
local conflicts = 0
while true do
    local c = log:committed("q")
    local from = c or log:base_offset()
    if from >= n then break end
    local hwm = log:high_water_mark()
    if from >= hwm then
        log:wait(from, "20ms")
    else
        local to = math.min(hwm, from + math.random(1, 5))
        local k = from
        for rec in log:records(from, to) do
            assert(rec.offset == k and rec.value == value_for(k), "bad record at " .. k)
            k = k + 1
        end
        assert(k == to)
        local expect = c
        if expect == nil then expect = false end
        local ok, msg, code = log:commit("q", to, { expect = expect })
        if ok then
            report("took", from, to)
        elseif code == "CONFLICT" then
            conflicts = conflicts + 1
        else
            error(tostring(msg) .. " " .. tostring(code))
        end
    end
end
report("done", conflicts)
log:close()
]]

-- A consumer of cursor "q": reads from the committed offset, "sends" each
-- record (a line "sent OFFSET" in arg[2], flushed), commits after each
-- batch of 7.  It first writes "start COMMITTED".  With arg[4] = "hold"
-- it stops after the first batch is sent, before committing it; with
-- "slow" it pauses 2 ms there (without a fork: a wait that times out).
local CONSUMER = [[
local takhin = require("takhin")
local dir, sent_path, n, mode = arg[1], arg[2], tonumber(arg[3]), arg[4]
local log = assert(takhin.open_log{ dir = dir, shared = true })
local sent = assert(io.open(sent_path, "a"))
local c = log:committed("q")
sent:write("start ", c and ("%d"):format(c) or "none", "\n")
sent:flush()
local from = c or log:base_offset()
while from < n do
    local to = math.min(from + 7, n)
    for rec in log:records(from, to) do
        sent:write(("sent %d\n"):format(rec.offset))
        sent:flush()
    end
    if mode == "hold" then log:wait(2 ^ 40) end           -- killed here
    if mode == "slow" then log:wait(2 ^ 40, "2ms") end
    local expect = c
    if expect == nil then expect = false end
    assert(log:commit("q", to, { expect = expect }))
    c, from = to, to
end
sent:write("done\n")
sent:close()
log:close()
]]

describe("cursors shared by several processes", function()
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

    it("let two processes draining one log with expect never both advance the same range", function()
        local dir = tmp .. "/log"
        local N = 600
        local log = open(dir, { shared = true })
        fill(log, 300)                               -- the rest arrives while they drain
        local outs = {}
        for i = 1, 2 do
            pids[i], outs[i] = util.spawn_lua(tmp, DRAINER, { dir, tostring(N), tostring(i * 7919),
                                                              tmp .. "/drainer" .. i })
        end
        util.write_file(tmp .. "/go", "")
        fill(log, N)
        for i = 1, 2 do
            assert.is_true(util.wait_exit(pids[i], 6000), "drainer " .. i .. " did not finish")
        end
        -- Every offset was taken by exactly one commit of one drainer.
        local owner, ranges = {}, 0
        for i = 1, 2 do
            local lines = util.lines(tmp .. "/drainer" .. i)
            assert.matches("^done\t%d+$", lines[#lines] or "", 1, false,
                           "drainer " .. i .. " did not end well: " .. util.read_file(outs[i]))
            for k = 1, #lines - 1 do
                local from, to = lines[k]:match("^took\t(%d+)\t(%d+)$")
                from, to = tonumber(from), tonumber(to)
                assert.is_true(from < to)
                ranges = ranges + 1
                for o = from, to - 1 do
                    assert.is_nil(owner[o], ("offset %d taken by drainer %s and %d"):format(o, tostring(owner[o]), i))
                    owner[o] = i
                end
            end
        end
        for o = 0, N - 1 do assert(owner[o], "offset " .. o .. " was never taken") end
        assert.is_nil(owner[N])
        assert.is_true(ranges >= N / 5)
        assert.are.equal(N, log:committed("q"))
        log:close()
    end)

    it("let several processes count with compare-and-set and lose no update", function()
        local dir = tmp .. "/log"
        local log = open(dir, { shared = true })
        local per, procs = 60, 3
        fill(log, per * procs)
        assert(log:commit("counter", 0))
        for i = 1, procs do
            pids[i] = util.spawn_lua(tmp, [[
local takhin = require("takhin")
local proc = require("helpers.proc")
local log = assert(takhin.open_log{ dir = arg[1], shared = true })
local report = proc.reporter(arg[3])
assert(proc.wait_for_file(arg[1] .. "/../go", 3000, 0.005))
for _ = 1, tonumber(arg[2]) do
    while true do
        local c = log:committed("counter")
        local ok, msg, code = log:commit("counter", c + 1, { expect = c })
        if ok then report(c) break end
        assert(code == "CONFLICT", tostring(msg))
    end
end
log:close()
]], { dir, tostring(per), tmp .. "/counter" .. i })
        end
        util.write_file(tmp .. "/go", "")
        local seen = {}
        for i = 1, procs do
            assert.is_true(util.wait_exit(pids[i], 6000))
            local lines = util.lines(tmp .. "/counter" .. i)
            assert.are.equal(per, #lines, "process " .. i .. " made all its increments")
            for _, l in ipairs(lines) do
                local v = tonumber(l)
                assert.is_nil(seen[v], "two processes moved the counter from " .. l)
                seen[v] = true
            end
        end
        assert.are.equal(per * procs, log:committed("counter"))
        log:close()
    end)

    it("make a consumer killed between read and commit read that range again", function()
        local dir = tmp .. "/log"
        local log = open(dir)
        fill(log, 40)
        assert(log:commit("q", 5))
        log:close()
        local sent = tmp .. "/sent"
        pids[1] = util.spawn_lua(tmp, CONSUMER, { dir, sent, "40", "hold" })
        assert.are.equal(8, util.wait_lines(sent, 8, pids[1]))         -- start + 7 sent
        util.stop(pids[1])
        assert.are.same({ "start 5", "sent 5", "sent 6", "sent 7", "sent 8", "sent 9", "sent 10",
                          "sent 11" }, util.lines(sent))
        -- the next consumer starts where the cursor is: the same range again
        local out, ok = util.run_lua(tmp, CONSUMER, { dir, sent, "40", "all" })
        assert(ok, out)
        local lines = util.lines(sent)
        assert.are.equal("start 5", lines[9])
        assert.are.equal("sent 5", lines[10])
        assert.are.equal("done", lines[#lines])
        assert.are.equal(9 + 1 + 35, #lines)
        log = open(dir, { readonly = true })
        assert.are.equal(40, log:committed("q"))
        log:close()
    end)

    it("deliver every record at least once to a consumer killed at arbitrary points", function()
        local dir = tmp .. "/log"
        local N = 300
        local log = open(dir)
        fill(log, N)
        log:close()
        local sent = tmp .. "/sent"
        local runs = 0
        for kill = 1, 5 do
            runs = runs + 1
            local pid = util.spawn_lua(tmp, CONSUMER, { dir, sent, tostring(N), "slow" })
            pids[#pids + 1] = pid
            local have = util.count_lines(sent)
            util.wait_lines(sent, have + 10 + 7 * kill, pid)
            util.stop(pid)
        end
        local out, ok = util.run_lua(tmp, CONSUMER, { dir, sent, tostring(N), "all" })
        assert(ok, out)
        -- no gap: every record was sent; a restart never starts past what was sent
        local got, last = {}, -1
        local starts = 0
        for _, line in ipairs(util.lines(sent)) do
            local o = tonumber(line:match("^sent (%d+)$"))
            local s = line:match("^start (%w+)$")
            if o then
                got[o] = true
                last = math.max(last, o)
            elseif s then
                starts = starts + 1
                local from = s == "none" and 0 or tonumber(s)
                assert(from <= last + 1, ("a restart began at %d, after %d was the last sent"):format(from, last))
            end
        end
        assert.are.equal(runs + 1, starts)
        for o = 0, N - 1 do assert(got[o], "offset " .. o .. " was never sent") end
        log = open(dir, { readonly = true })
        assert.are.equal(N, log:committed("q"))
        log:close()
    end)
end)

-------------------------------------------------------------------------
-- Snapshots
-------------------------------------------------------------------------

describe("cursors and snapshots", function()
    local tmp, log, sm, snap
    local AT_CUT = { a = 10, b = 30, c = 40 }
    before_each(function()
        tmp = util.tmpdir()
        log = open(tmp .. "/log")
        fill(log, 40)
        for name, o in pairs(AT_CUT) do assert(log:commit(name, o)) end
        sm = assert(takhin.snapshot_manager(tmp .. "/log"))
        snap = assert(sm:create(log))
        -- after the cut
        assert(log:commit("a", 35))
        assert(log:delete_cursor("b"))
        fill(log, 50)
        assert(log:commit("d", 45))
    end)
    after_each(function()
        if log then log:close() end
        if sm then sm:close() end
        log, sm = nil, nil
        collectgarbage(); collectgarbage()
        util.rmtree(tmp)
    end)

    local function cursors_of(dir)
        local l = open(dir, { readonly = true })
        local c = l:cursors()
        l:close()
        return c
    end

    it("are carried as they were at the cut", function()
        local ok, json = pcall(require, "cjson")
        if not ok then json = require("dkjson") end
        local manifest = json.decode(util.read_file(sm:dir() .. "/snapshot-" .. snap.id .. "/manifest.json"))
        assert.are.same(AT_CUT, manifest.cursors)
        assert(sm:restore(snap.id, tmp .. "/restored"))
        assert.are.same(AT_CUT, cursors_of(tmp .. "/restored"))
        -- the live log kept its own
        assert.are.same({ a = 35, c = 40, d = 45 }, log:cursors())
        -- and the restored log's cursors go on by the rules
        local r = open(tmp .. "/restored")
        assert.fails_with("INVALID", r:commit("a", 9))
        assert.is_true(r:commit("a", 11, { expect = 10 }))
        assert.fails_with("OUT_OF_RANGE", r:commit("b", 41))
        r:close()
    end)

    it("are clamped to the high water mark of a restore with upto_offset or upto_timestamp", function()
        assert(sm:restore(snap.id, tmp .. "/upto", { upto_offset = 20 }))
        assert.are.same({ a = 10, b = 20, c = 20 }, cursors_of(tmp .. "/upto"))
        assert(sm:restore(snap.id, tmp .. "/upto0", { upto_offset = 0 }))
        assert.are.same({ a = 0, b = 0, c = 0 }, cursors_of(tmp .. "/upto0"))
        assert(sm:restore(snap.id, tmp .. "/uptots", { upto_timestamp = T0 + 24 }))
        local l = open(tmp .. "/uptots", { readonly = true })
        assert.are.equal(25, l:high_water_mark())
        assert.are.same({ a = 10, b = 25, c = 25 }, l:cursors())
        l:close()
    end)

    it("replace the log's own in an in-place restore", function()
        log:close()
        log = nil
        assert(sm:restore(snap.id, tmp .. "/log", { replace = true }))
        assert.are.same(AT_CUT, cursors_of(tmp .. "/log"))
        log = open(tmp .. "/log")
        assert.are.equal(40, log:high_water_mark())
        assert.is_true(log:commit("a", 12, { expect = 10 }))
        assert.is_nil(log:committed("d"))
    end)

    it("are none in the restore of a snapshot taken with none", function()
        local l = open(tmp .. "/plain")
        fill(l, 5)
        local sm2 = assert(takhin.snapshot_manager(tmp .. "/plain"))
        local s = assert(sm2:create(l))
        assert(sm2:restore(s.id, tmp .. "/plain-restored"))
        assert.are.same({}, cursors_of(tmp .. "/plain-restored"))
        l:close()
        sm2:close()
    end)
end)

-------------------------------------------------------------------------
-- Crash points (the fault build)
-------------------------------------------------------------------------

-- (children: util.run_fault, the crash-point build under lua5.4)
local FAULT_BUILD, NO_FAULT_BUILD = util.fault_build()

local CRASH_CHILD = [[
local takhin = require("takhin")
local op, dir = arg[1], arg[2]
local log = assert(takhin.open_log{ dir = dir })
if op == "update" then assert(log:commit("c", 30))
elseif op == "new" or op == "reuse" then assert(log:commit("n", 25))
elseif op == "delete" then assert(log:delete_cursor("c")) end
print("survived")
]]

-- The template's cursors: keep = 7, c = 20; "gone" was committed first
-- and deleted, so a new name takes its slot ("reuse") unless the parent
-- commits "gone" again first ("new": a slot never used).  What each op
-- may leave, per cursor: the old value or the new one (false: none).
local BEFORE = { keep = 7, c = 20 }
local CASES = {
    update = { step = { "cursor.writing", "cursor.written" }, cursor = "c", old = 20, new = 30 },
    new = { step = { "cursor.named", "cursor.writing", "cursor.written" }, cursor = "n", old = false, new = 25 },
    reuse = { step = { "cursor.named", "cursor.writing", "cursor.written" }, cursor = "n", old = false, new = 25 },
    delete = { step = { "cursor.writing" }, cursor = "c", old = 20, new = false },
}

describe("a cursor commit killed at a crash point", function()
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
        fill(log, 50)
        assert(log:commit("gone", 3))
        assert(log:commit("keep", 7))
        assert(log:commit("c", 20))
        assert(log:delete_cursor("gone"))
        log:close()
    end)
    teardown(function() collectgarbage(); collectgarbage(); util.rmtree(tmp) end)

    it("covers every cursor crash point named in csrc/", function()
        local covered = {}
        for _, c in pairs(CASES) do
            for _, s in ipairs(c.step) do covered[s] = true end
        end
        local found = 0
        for _, file in ipairs(util.ls_suffix("csrc", ".c")) do
            for name in util.read_file("csrc/" .. file):gmatch('TK_FAULT%("(cursor%.[%w_]+)"%)') do
                found = found + 1
                assert(covered[name], "crash point " .. name .. " (csrc/" .. file .. ") has no case here")
            end
        end
        assert.is_true(found >= 3)
    end)

    local n = 0
    for _, op in ipairs({ "update", "new", "reuse", "delete" }) do
        local case = CASES[op]
        for _, step in ipairs(case.step) do
            for _, watched in ipairs({ false, true }) do
                n = n + 1
                local id = n
                it(("%s at %s%s: the old value or the new one, the others intact"):format(
                       op, step, watched and " (a reader holds the log open)" or ""), function()
                    local work = ("%s/w%02d"):format(tmp, id)
                    assert(util.sh("mkdir -p " .. util.q(work)))
                    local dir = work .. "/log"
                    util.copytree(template, dir)
                    local others = {}
                    for k, v in pairs(BEFORE) do others[k] = v end
                    others[case.cursor] = nil
                    if op == "new" then
                        local l = open(dir)
                        assert(l:commit("gone", 3))
                        l:close()
                        others.gone = 3
                    end
                    local reader = watched and open(dir, { readonly = true }) or nil
                    local out, status = util.run_fault(work, CRASH_CHILD, { op, dir }, step)
                    assert(not out:find("survived", 1, true), step .. ": never reached: " .. out)
                    assert.are.equal(137, status, step .. ": not killed by SIGKILL: " .. out)

                    -- what every handle finds: the others as they were, ours old or new
                    local function check(l, where)
                        local all = l:cursors()
                        local v = all[case.cursor]
                        if v == nil then v = false end
                        assert(v == case.old or v == case.new, ("%s: %s is %s, neither %s nor %s"):format(
                            where, case.cursor, tostring(v), tostring(case.old), tostring(case.new)))
                        if step == "cursor.written" then
                            assert.are.equal(case.new, v, where .. ": a complete copy was lost")
                        end
                        local want = {}
                        for k, o in pairs(others) do want[k] = o end
                        if v then want[case.cursor] = v end
                        assert.are.same(want, all, where)
                        local c = l:committed(case.cursor)
                        assert.are.equal(v or nil, c, where)
                        return v
                    end
                    local seen
                    if reader then seen = check(reader, step .. " (the reader that stayed open)") end
                    local ro = open(dir, { readonly = true })
                    local v = check(ro, step .. " (read-only, opened after)")
                    if seen ~= nil then assert.are.equal(seen, v) end
                    ro:close()
                    local log = open(dir)
                    assert.are.equal(v, check(log, step .. " (writer)"))
                    -- compare-and-set on what is there works, and sticks
                    local expect = v
                    assert.is_true(log:commit(case.cursor, 40, { expect = expect }))
                    assert.is_true(log:commit("keep", 8, { expect = 7 }))
                    log:close()
                    log = open(dir, { readonly = true })
                    assert.are.equal(40, log:committed(case.cursor))
                    assert.are.equal(8, log:committed("keep"))
                    if op ~= "new" then assert.is_nil(log:committed("gone"), "a deleted cursor came back") end
                    log:close()
                    if reader then
                        assert.are.equal(40, reader:committed(case.cursor))
                        reader:close()
                    end
                    collectgarbage(); collectgarbage()
                    util.sh("rm -rf " .. util.q(work))
                end)
            end
        end
    end
end)
