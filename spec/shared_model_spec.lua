-- Shared mode under truncates: writers that cut the log while others
-- append, checked against a model of what every writer was told.
--
-- The danger (issue 9, item 1).  A shared writer that finds the active
-- .log with the inode and size it last saw used to conclude "nobody else
-- wrote".  A truncate followed by appends of the same number of bytes (a
-- "same-size rewrite") brings both back, so that writer appended at the
-- byte position of the old end while being told an offset one too high,
-- and the next open cut its record as a garbage tail.  The engine now
-- bumps a generation in the shared state on every truncate (state.h).
--
-- Specs, from the exact case to a random one:
--
--   1. The issue's sequence with two shared handles in this process: the
--      stale writer's append, and a stale handle's offset_for_time.
--   2. The same between two child processes, for many rounds with random
--      record sizes.  Each round one of them appends, the other appends,
--      the first truncates back over the other's records and rewrites --
--      mostly with exactly the bytes it removed -- and the other appends
--      (or is asked for times) without having looked.  The parent drives
--      both step by step, so it knows the whole log at every moment and
--      checks every offset it is told, and at the end every byte of every
--      record.
--   3. Four writer processes running freely, two of them also truncating,
--      and a model check of what they report, described next.
--   4. A read racing a truncate in another process (an engine bug that
--      spec 3 found; see READ_RACE).
--
-- The model (spec 3).  Every writer logs each operation it completed:
-- for an append, the offset it was told and the record's unique id
-- ("w2:417") and shape (key, length of the padding); for a truncate, the
-- target offset and whether it succeeded; for a read, what it gave.  Each
-- line carries two clock readings, taken right before the call and right
-- after it returned: what the call did to the log took effect at some
-- instant between them.  We do not know the order of two operations whose
-- intervals overlap, so every rule below asks only for what MUST hold
-- whatever that order was:
--
--   - The log holds every offset from its base (0) to its high water
--     mark, each readable, in order.
--   - No phantom: every record in the log is one that some writer was
--     told it appended, at the offset it was told, with the key and value
--     it wrote.
--   - No loss: a record that was acknowledged but is not in the log must
--     have been removed by a truncate to an offset at or below its own
--     that may have happened after it (the truncate ended after the
--     append began).
--   - No reuse: two appends acknowledged at the same offset must be
--     separated by a truncate to an offset at or below it that may lie
--     between them; and the record in the log at an offset is one whose
--     append may have been the last there: no truncate over it began
--     after it was acknowledged, and no other append at that offset began
--     after it was acknowledged.
--   - Reads made while the writers ran (each writer now and then reads
--     an offset near the end) give a record acknowledged at that offset,
--     whose append began before the read ended, and that no truncate or
--     later append at that offset surely replaced before the read began;
--     or OUT_OF_RANGE, when a truncate to that offset or below may have
--     been under way.  Any other answer is wrong -- except, for now, the
--     NOT_FOUND and CORRUPT of the engine bug spec 4 shows, let pass under
--     the same condition as OUT_OF_RANGE.
--   - One writer's offsets only go down across a truncate: when a writer
--     is told a first offset not above the last offset it was told
--     before, some truncate to that first offset or below may lie between
--     the two calls.
--
-- A truncate that failed (OUT_OF_RANGE: another writer cut below its
-- target first) changed nothing and counts for nothing.  After the
-- writers exit the log is checked through a read-only handle, then again
-- through a writer's open, whose recovery is what used to cut the
-- misplaced records.
--
-- The writers work in bursts between pauses of a millisecond or two, and
-- a truncating writer truncates at the start of a burst and often pauses
-- right after its same-size rewrite: so the next append is often by a
-- writer that has not looked since, and the old trust in (inode, size)
-- would be caught.  Run against an engine patched back to that trust
-- (catch-up ignoring the generation and the high water mark), specs 1 and
-- 2 fail at once and spec 3 failed in every run tried.
--
-- The clock.  The intervals must come from one clock that every process
-- reads alike, fine enough to order calls that take microseconds.
-- os.clock() is CPU time of one process; os.time() and /proc/uptime tick
-- in seconds and centiseconds; the wall clock can step.  luasystem's
-- system.monotime() is clock_gettime(CLOCK_MONOTONIC): one clock for the
-- whole machine, in nanoseconds, never stepped, and there for Lua 5.4 and
-- LuaJIT alike -- it is the Debian package lua-system, which busted itself
-- depends on, so it is installed wherever the specs can run.  Its
-- readings are only used to decide what MAY have happened in which
-- order; nothing asserts on how long anything took.
--
-- Waiting is bounded polling (system.sleep between looks, a bounded
-- number of looks); children are stopped in after_each.  TAKHIN_MODEL_SEED
-- replays a run's random choices (not its interleaving);
-- TAKHIN_MODEL_VERBOSE prints what a run did.

local system = require("system")
local util = require("helpers.util")
local logs = require("helpers.log")
require("helpers.assertions")

local open = logs.open
local HEADER = 34                       -- framed size = 34 + key + value
local SEGMENT = 4096                    -- small, so that segments roll

-- Bounded polling: pred until it gives a true value, at most `tries`
-- looks a fifth of a millisecond apart; returns pred's last result.
local function poll(pred, tries)
    for _ = 1, tries or 100000 do
        local v = pred()
        if v then return v end
        system.sleep(0.0002)
    end
    return pred()
end

-- What a run did, on stderr, when TAKHIN_MODEL_VERBOSE is set.
local function verbose(fmt, ...)
    if (os.getenv("TAKHIN_MODEL_VERBOSE") or "") ~= "" then
        io.stderr:write(fmt:format(...), "\n")
    end
end

-- A seed printed in every failure message: TAKHIN_MODEL_SEED replays
-- the random choices of a failing run.
local function new_seed()
    local s = tonumber(os.getenv("TAKHIN_MODEL_SEED") or "")
    if s then return s end
    return os.time() % 1000000 + util.getpid() % 1000
end

-------------------------------------------------------------------------
-- Records of an exact framed size (specs 1 and 2): no key, the value is
-- the record's id, a bar, and padding up to the size.
-------------------------------------------------------------------------

local function sized_value(id, framed)
    local head = id .. "|"
    local pad = framed - HEADER - #head
    assert(pad >= 0, "a record of " .. framed .. " bytes cannot carry id " .. id)
    return head .. string.rep("x", pad)
end

-------------------------------------------------------------------------
-- Spec 2's children: each holds one shared handle and carries out the
-- parent's commands, one at a time, through files in its mailbox: the
-- parent renames cmd-N into place, the child renames rep-N into place.
--
--   append TS ID SIZE [TS ID SIZE ...]  one record, or a batch of several
--                                       -> ok FIRST LAST | err CODE MSG
--   truncate OFFSET                     -> ok | err CODE MSG
--   oft TS                              -> ok OFFSET | err CODE MSG
--   quit                                -> bye
-------------------------------------------------------------------------

local SERVER = [[
local takhin = require("takhin")
local system = require("system")
local dir, box, seg = arg[1], arg[2], tonumber(arg[3])
local HEADER = 34

local function put(n, text)
    local path = box .. "rep-" .. n
    local f = assert(io.open(path .. ".tmp", "wb"))
    f:write(text)
    f:close()
    assert(os.rename(path .. ".tmp", path))
end

local function sized_value(id, framed)
    local head = id .. "|"
    return head .. string.rep("x", framed - HEADER - #head)
end

local function fail(n, msg, code)
    put(n, "err " .. tostring(code) .. " " .. tostring(msg))
end

local log, msg, code = takhin.open_log{ dir = dir, shared = true, max_segment_size = seg }
if not log then fail(0, msg, code) os.exit(3) end
put(0, "ready")

local n = 0
while true do
    n = n + 1
    local path, f = box .. "cmd-" .. n, nil
    for _ = 1, 600000 do            -- the parent is gone after two minutes
        f = io.open(path, "rb")
        if f then break end
        system.sleep(0.0002)
    end
    if not f then os.exit(4) end
    local w = {}
    for word in f:read("a"):gmatch("%S+") do w[#w + 1] = word end
    f:close()
    if w[1] == "append" then
        local recs = {}
        for i = 2, #w, 3 do
            recs[#recs + 1] = { value = sized_value(w[i + 1], tonumber(w[i + 2])),
                                timestamp = tonumber(w[i]) }
        end
        local first, last
        if #recs == 1 then
            first, msg, code = log:append(nil, recs[1].value, recs[1].timestamp)
            last = first
        else
            first, last, code = log:append_batch(recs)
            msg = last
        end
        if first then put(n, ("ok %d %d"):format(first, last)) else fail(n, msg, code) end
    elseif w[1] == "truncate" then
        local ok
        ok, msg, code = log:truncate(tonumber(w[2]))
        if ok then put(n, "ok") else fail(n, msg, code) end
    elseif w[1] == "oft" then
        local off
        off, msg, code = log:offset_for_time(tonumber(w[2]))
        if off then put(n, ("ok %d"):format(off)) else fail(n, msg, code) end
    elseif w[1] == "quit" then
        log:close()
        put(n, "bye")
        break
    else
        fail(n, "unknown command " .. tostring(w[1]), "INVALID")
    end
end
]]

-- A handle on a server child: c:call("append ...") -> the reply's words.
local function start_server(tmp, name, dir)
    local box = tmp .. "/" .. name .. "-"
    local pid, out = util.spawn_lua(tmp, SERVER, { dir, box, tostring(SEGMENT) })
    local c = { name = name, pid = pid, out = out, n = 0 }

    local function reply(n)
        local path = box .. "rep-" .. n
        local text, dead
        poll(function()
            local f = io.open(path, "rb")
            if f then
                text = f:read("a")
                f:close()
                return true
            end
            dead = not util.alive(pid)
            return dead
        end)
        if not text then
            local f = io.open(out, "rb")
            local said = f and f:read("a") or ""
            if f then f:close() end
            error(("child %s gave no reply %d (alive: %s): %s"):format(
                name, n, tostring(util.alive(pid)), said), 3)
        end
        local w = {}
        for word in text:gmatch("%S+") do w[#w + 1] = word end
        w.text = text
        return w
    end

    function c.call(_, line)
        c.n = c.n + 1
        local path = box .. "cmd-" .. c.n
        util.write_file(path .. ".tmp", line)
        assert(os.rename(path .. ".tmp", path))
        return reply(c.n)
    end

    local ready = reply(0)
    assert(ready[1] == "ready", "child " .. name .. ": " .. ready.text)
    return c
end

-------------------------------------------------------------------------
-- The read race's child: a shared writer that, round after round, cuts
-- the last few records (deleting the newest small segments) and appends
-- as many again.  arg: dir, rounds, segment size, done file.
-------------------------------------------------------------------------

local CUTTER = [[
local takhin = require("takhin")
local dir, rounds, seg, done = arg[1], tonumber(arg[2]), tonumber(arg[3]), arg[4]
local log = assert(takhin.open_log{ dir = dir, shared = true, max_segment_size = seg })
for _ = 1, rounds do
    local hwm = log:high_water_mark()
    assert(log:truncate(hwm - math.random(5, 15)))
    for _ = 1, math.random(5, 15) do
        local o = log:high_water_mark()
        assert(log:append("k", ("%d|"):format(o) .. string.rep("v", 60)))
    end
end
log:close()
assert(io.open(done, "w")):close()
]]

-------------------------------------------------------------------------
-- Spec 3's writers
-------------------------------------------------------------------------

-- arg: dir, name, number of operations, "truncate" or "append", seed,
-- go file, report file.  Report lines, tab-separated:
--   R  t0  t1  offset  id  key ("-" for none)  padding
--   T  t0  t1  target  "ok" or the code
--   G  t0  t1  offset  the id read, or "!", the code and the message
-- (every record of a batch gets its own R line, with the batch's times).
local WRITER = [[
local takhin = require("takhin")
local system = require("system")
local dir, name, ops, mode, seed, go, report =
    arg[1], arg[2], tonumber(arg[3]), arg[4], tonumber(arg[5]), arg[6], arg[7]
local HEADER, SEGMENT = 34, tonumber(arg[8])
local now = system.monotime
math.randomseed(seed)

local log, msg, code = takhin.open_log{ dir = dir, shared = true, max_segment_size = SEGMENT }
if not log then io.stderr:write("open_log: ", tostring(msg), " ", tostring(code), "\n") os.exit(3) end
local out = assert(io.open(report, "w"))
for _ = 1, 30000 do
    local f = io.open(go, "r")
    if f then f:close() break end
    system.sleep(0.001)
end

local seq = 0
local function new_record(pad)
    seq = seq + 1
    local id = name .. ":" .. seq
    local key = (seq % 5 ~= 0) and name or nil
    if not pad then
        pad = math.random() < 0.05 and math.random(400, 2500) or math.random(0, 120)
    end
    return { id = id, key = key, pad = pad, value = id .. "|" .. string.rep(".", pad) }
end

local function record_size(r)
    return HEADER + #(r.key or "") + #r.value
end

local function acked(t0, t1, first, recs)
    for i, r in ipairs(recs) do
        out:write(("R\t%.9f\t%.9f\t%d\t%s\t%s\t%d\n"):format(
            t0, t1, first + i - 1, r.id, r.key or "-", r.pad))
    end
end

local function failed(what, m, c)
    out:close()
    io.stderr:write(name, ": ", what, " failed: ", tostring(m), " ", tostring(c), "\n")
    os.exit(1)
end

local function append_one(r)
    local t0 = now()
    local off, m, c = log:append(r.key, r.value)
    local t1 = now()
    if not off then failed("append", m, c) end
    acked(t0, t1, off, { r })
end

-- A read of a recent offset: what it returned, or why not.  t0 is taken
-- before the high water mark is, so that a truncate ending before t0 is
-- one the choice of offset already knew of.
local function read_recent(depth)
    local t0 = now()
    local hwm = log:high_water_mark()
    if hwm == 0 then return end
    local o = hwm - math.random(1, math.min(depth, hwm))
    local rec, m, c = log:read(o)
    local t1 = now()
    local got
    if not rec then
        got = "!" .. tostring(c) .. " " .. tostring(m):gsub("%s", " ")
    elseif rec.offset ~= o then
        got = "!OFFSET:" .. rec.offset
    else
        got = rec.value:match("^([^|]+)|") or "!VALUE"
    end
    out:write(("G\t%.9f\t%.9f\t%d\t%s\n"):format(t0, t1, o, got))
end

-- A truncate into the last few records followed by a record of exactly
-- the bytes that went -- a same-size rewrite, unless another writer
-- appended in between, which is fine too -- or, less often, a truncate to
-- a random offset in the last few hundred records.
local function truncate_some()
    local hwm = log:high_water_mark()
    local small = math.random() < 0.8
    local depth = small and math.random(1, 4) or math.random(1, 300)
    local target = hwm - depth
    if target < 0 then target = 0 end
    local bytes = 0
    for o = target, hwm - 1 do
        local rec = log:read(o)
        if not rec then bytes = nil break end   -- another writer cut first
        bytes = bytes + record_size(rec)
    end
    local t0 = now()
    local ok, m, c = log:truncate(target)
    local t1 = now()
    if not ok and c ~= "OUT_OF_RANGE" then failed("truncate", m, c) end
    out:write(("T\t%.9f\t%.9f\t%d\t%s\n"):format(t0, t1, target, ok and "ok" or c))
    if ok and small and bytes and bytes > 0 then
        local pad = bytes - HEADER - #name - #(name .. ":" .. (seq + 1) .. "|")
        if pad >= 0 and pad < 3000 then
            local r = new_record(pad)
            if r.key == nil then r.key = name end  -- the size above counts a key
            assert(record_size(r) == bytes)
            append_one(r)
            return 1
        end
    end
    return 0
end

local function append_some()
    if math.random() < 0.7 then return append_one(new_record()) end
    local recs = {}
    for i = 1, math.random(2, 8) do recs[i] = new_record() end
    local t0 = now()
    local first, last, c = log:append_batch(recs)
    local t1 = now()
    if not first then failed("append_batch", last, c) end
    if last - first + 1 ~= #recs then failed("append_batch", "returned " .. first .. ".." .. last, "") end
    acked(t0, t1, first, recs)
end

-- Bursts of operations between short pauses, as a web server's workers
-- see requests.  A truncating writer truncates at the start of a burst,
-- right after a pause -- the others' last appends are then the log's
-- last, and their views are what it was -- and after a same-size rewrite
-- often pauses again: the next writer to append may then be one that
-- has not looked since the truncate, the case that used to go wrong.
local rewrites, done = 0, 0
while done < ops do
    local burst = math.random(1, 10)
    if mode == "truncate" and math.random() < 0.25 then
        rewrites = rewrites + truncate_some()
        done = done + 1
        if math.random() < 0.5 then burst = 0 end
    end
    for _ = 1, burst do
        if math.random() < 0.1 then read_recent(50) else append_some() end
        done = done + 1
    end
    system.sleep(math.random(1, 2) / 1000)
end
assert(out:close())
log:close()
print("done " .. rewrites)
]]

-- Reads the writers' reports: acks (by id), acks by offset, successful
-- truncates, each writer's acks in its order (batches as one entry).
local function read_reports(paths)
    local m = { by_id = {}, at = {}, truncs = {}, failed_truncs = 0, per_writer = {}, n = 0,
                reads = {}, read_races = 0 }
    for w, path in ipairs(paths) do
        local mine = {}
        m.per_writer[w] = mine
        for _, line in ipairs(util.lines(path)) do
            local f = {}
            for field in (line .. "\t"):gmatch("([^\t]*)\t") do f[#f + 1] = field end
            if f[1] == "R" then
                local a = { t0 = tonumber(f[2]), t1 = tonumber(f[3]), off = tonumber(f[4]),
                            id = f[5], key = f[6] ~= "-" and f[6] or nil, pad = tonumber(f[7]) }
                assert(m.by_id[a.id] == nil, "id " .. a.id .. " reported twice")
                m.by_id[a.id] = a
                m.at[a.off] = m.at[a.off] or {}
                table.insert(m.at[a.off], a)
                m.n = m.n + 1
                local last = mine[#mine]
                if last and last.t0 == a.t0 and last.t1 == a.t1 and last.last + 1 == a.off then
                    last.last = a.off           -- the next record of one batch
                else
                    mine[#mine + 1] = { t0 = a.t0, t1 = a.t1, first = a.off, last = a.off }
                end
            elseif f[1] == "G" then
                table.insert(m.reads, { t0 = tonumber(f[2]), t1 = tonumber(f[3]),
                                        off = tonumber(f[4]), got = f[5], writer = w })
            elseif f[1] == "T" then
                if f[5] == "ok" then
                    table.insert(m.truncs, { t0 = tonumber(f[2]), t1 = tonumber(f[3]),
                                             target = tonumber(f[4]) })
                else
                    m.failed_truncs = m.failed_truncs + 1
                end
            else
                error("bad report line in " .. path .. ": " .. line)
            end
        end
    end
    return m
end

-- What a read racing a truncate may answer besides OUT_OF_RANGE: nothing
-- (a read that finds the files changed under its view looks again; the
-- spec "answers a read that races a truncate ..." below shows it alone).
local READ_RACE = {}

-- Clock readings are printed with nine decimals; a justification allows
-- for that much rounding (a violation never does).
local EPS = 1e-6

-- Some successful truncate to `off` or below that may have taken effect
-- after the start of a (a.t0) and before the end of b (b.t1); b nil: any
-- time after a's start.
local function truncate_between(m, off, a, b)
    for _, t in ipairs(m.truncs) do
        if t.target <= off and t.t1 + EPS >= a.t0 and (b == nil or t.t0 <= b.t1 + EPS) then
            return t
        end
    end
    return nil
end

local function fmt_ack(a)
    return ("%s at offset %d, acknowledged in [%.6f, %.6f]"):format(a.id, a.off, a.t0, a.t1)
end

-- The records in the log, by offset, read through one handle; checks
-- that the offsets run without a gap from the base and every record reads.
local function log_contents(log)
    local base, hwm = log:base_offset(), log:high_water_mark()
    local recs, expect = {}, base
    for rec in log:records() do
        assert(rec.offset == expect, ("offset %d follows %d"):format(rec.offset, expect - 1))
        recs[rec.offset] = rec
        expect = expect + 1
    end
    assert(expect == hwm, ("records end at %d, high water mark %d"):format(expect, hwm))
    return recs, base, hwm
end

-- The model check (the file's header says it in words).  Returns a list
-- of violations (empty when the log agrees with the model) and the
-- number of acknowledged records the log no longer holds.
local function check_model(m, recs, base, hwm)
    local bad = {}
    m.read_races = 0
    local function violation(s)
        if #bad < 20 then bad[#bad + 1] = s end
    end
    if base ~= 0 then violation("base offset " .. base .. ", nothing deleted it") end
    local present = {}
    -- No phantom, right place, right bytes.
    for off = base, hwm - 1 do
        local rec = recs[off]
        local id = rec.value:match("^([^|]+)|")
        local a = id and m.by_id[id]
        if not a then
            violation(("offset %d holds %q, which no writer acknowledged"):format(off, rec.value:sub(1, 40)))
        elseif a.off ~= off then
            violation(("offset %d holds %s"):format(off, fmt_ack(a)))
        elseif rec.value ~= id .. "|" .. string.rep(".", a.pad) or rec.key ~= a.key then
            violation(("offset %d holds %s with other bytes: key %s, %d value bytes"):format(
                off, id, tostring(rec.key), #rec.value))
        else
            present[id] = a
        end
    end
    -- No loss.
    local lost = 0
    for id, a in pairs(m.by_id) do
        if not present[id] then
            lost = lost + 1
            if not truncate_between(m, a.off, a, nil) then
                violation("lost " .. fmt_ack(a) .. ": no truncate to it or below may have followed")
            end
        end
    end
    -- No reuse.
    for off, list in pairs(m.at) do
        for i = 1, #list do
            for j = i + 1, #list do
                local p, q = list[i], list[j]
                if not truncate_between(m, off, p, q) and not truncate_between(m, off, q, p) then
                    violation(("offset %d given to %s and to %s with no truncate between"):format(
                        off, fmt_ack(p), fmt_ack(q)))
                end
            end
        end
        local r = recs[off] and present[recs[off].value:match("^([^|]+)|")]
        if r then
            for _, q in ipairs(list) do
                if q ~= r and q.t0 > r.t1 then
                    violation(("offset %d still holds %s though %s came after it"):format(
                        off, fmt_ack(r), fmt_ack(q)))
                end
            end
            for _, t in ipairs(m.truncs) do
                if t.target <= off and t.t0 > r.t1 then
                    violation(("offset %d still holds %s though a truncate to %d began at %.6f"):format(
                        off, fmt_ack(r), t.target, t.t0))
                end
            end
        end
    end
    -- Reads while the writers ran: a record that was appended there and
    -- not yet surely gone, or OUT_OF_RANGE when a truncate may have cut
    -- it meanwhile.
    for _, g in ipairs(m.reads) do
        local what = ("writer %d read offset %d in [%.6f, %.6f]: %s"):format(
            g.writer, g.off, g.t0, g.t1, g.got)
        local a = m.by_id[g.got]
        local code = g.got:match("^!(%u[%u_]*) ")
        if code == "OUT_OF_RANGE" or (code and READ_RACE[code]) then
            local cut = false
            for _, t in ipairs(m.truncs) do
                if t.target <= g.off and t.t1 + EPS >= g.t0 and t.t0 <= g.t1 + EPS then cut = true end
            end
            if not cut then violation(what .. ", with no truncate to it or below under way") end
            if code ~= "OUT_OF_RANGE" then m.read_races = m.read_races + 1 end
        elseif not a then
            violation(what .. ", which no writer acknowledged")
        elseif a.off ~= g.off then
            violation(what .. ", acknowledged at offset " .. a.off)
        elseif a.t0 > g.t1 + EPS then
            violation(what .. ", appended only after the read ended")
        else
            for _, t in ipairs(m.truncs) do
                if t.target <= g.off and t.t0 > a.t1 and t.t1 < g.t0 then
                    violation(what .. ", though a truncate to " .. t.target .. " cut it before")
                end
            end
            for _, q in ipairs(m.at[g.off]) do
                if q ~= a and q.t0 > a.t1 and q.t1 < g.t0 then
                    violation(what .. ", though " .. fmt_ack(q) .. " replaced it before")
                end
            end
        end
    end
    -- Each writer's offsets go down only across a truncate.
    for w, mine in ipairs(m.per_writer) do
        for i = 2, #mine do
            local p, q = mine[i - 1], mine[i]
            if q.first <= p.last and not truncate_between(m, q.first, p, q) then
                violation(("writer %d was told %d..%d, then %d..%d, with no truncate between"):format(
                    w, p.first, p.last, q.first, q.last))
            end
        end
    end
    return bad, lost
end

describe("a log in shared mode, with writers that truncate while others append", function()
    local tmp, dir, pids

    before_each(function()
        tmp = util.tmpdir()
        dir = tmp .. "/log"
        pids = {}
    end)
    after_each(function()
        for _, pid in ipairs(pids) do util.stop(pid) end
        collectgarbage(); collectgarbage()
        util.rmtree(tmp)
    end)

    ---------------------------------------------------------------------
    -- 1. The issue's sequence
    ---------------------------------------------------------------------

    local TS = 1700000000000
    local active_log = function() return dir .. "/" .. util.segment_name(0, "log") end

    -- A appends ten records of 40 bytes, B one of 41; A truncates to 9
    -- (81 bytes go) and appends one record of 81 bytes: the active .log
    -- has the inode and the size B last saw.  Returns A and B, B stale.
    local function same_size_rewrite()
        local a = open({ dir = dir, shared = true })
        local b = open({ dir = dir, shared = true })
        for i = 0, 9 do assert.are.equal(i, a:append(nil, sized_value("a" .. i, 40), TS + i)) end
        assert.are.equal(10, b:append(nil, sized_value("b10", 41), TS + 100))
        local ino, size = util.stat(active_log()), util.file_size(active_log())
        assert.are.equal(10 * 40 + 41, size)
        assert.is_true(a:truncate(9))
        assert.are.equal(size - 81, util.file_size(active_log()))
        assert.are.equal(9, a:append(nil, sized_value("a9-again", 81), TS + 50))
        -- what B last saw, back again
        assert.are.equal(ino, (util.stat(active_log())))
        assert.are.equal(size, util.file_size(active_log()))
        return a, b
    end

    it("gives a writer that missed a same-size rewrite the next offset, and keeps its record", function()
        local a, b = same_size_rewrite()
        assert.are.equal(10, b:append(nil, "b, after the rewrite", TS + 200))
        assert.are.equal(11, a:high_water_mark())
        a:close()
        b:close()
        -- A writer's open runs recovery, which used to cut B's record.
        for _, opts in ipairs({ { readonly = true }, {} }) do
            local log = open({ dir = dir }, opts)
            assert.are.equal(11, log:high_water_mark())
            for i = 0, 8 do assert.are.equal(sized_value("a" .. i, 40), log:read(i).value) end
            assert.are.equal(sized_value("a9-again", 81), log:read(9).value)
            assert.are.equal(TS + 50, log:read(9).timestamp)
            assert.are.equal("b, after the rewrite", log:read(10).value)
            assert.are.equal(TS + 200, log:read(10).timestamp)
            log:close()
        end
    end)

    it("answers offset_for_time on a stale handle as a fresh handle does", function()
        local a, b = same_size_rewrite()
        local fresh = open({ dir = dir, readonly = true })
        -- B's first call after the rewrite: 101 and later used to give 11.
        for _, ts in ipairs({ TS + 101, TS + 100, TS + 5000, TS + 50, TS + 51, TS + 9, TS + 8, TS }) do
            local want = { fresh:offset_for_time(ts) }
            assert.are.same(want, { b:offset_for_time(ts) }, "offset_for_time(" .. ts .. ")")
        end
        assert.are.equal(10, b:offset_for_time(TS + 101))
        assert.are.equal(10, b:high_water_mark())
        assert.are.equal(sized_value("a9-again", 81), b:read(9).value)
        assert.fails_with("OUT_OF_RANGE", b:read(10))
        fresh:close()
        a:close()
        b:close()
    end)

    ---------------------------------------------------------------------
    -- 2. The same between two processes, many rounds
    ---------------------------------------------------------------------

    it("loses nothing over many rounds of truncates and same-size rewrites between two processes", function()
        local seed = new_seed()
        math.randomseed(seed)
        local why = " (seed " .. seed .. ")"
        local kids = { start_server(tmp, "A", dir), start_server(tmp, "B", dir) }
        pids[1], pids[2] = kids[1].pid, kids[2].pid

        local model = {}                -- model[offset + 1] = { id, size, ts }
        local ts, ids = TS, 0
        local stats = { rounds = 0, same_size = 0, stale_appends = 0, oft = 0 }

        -- Appends `sizes` through kid as one record or a batch; checks the
        -- offsets it is told against the model.
        local function append(kid, sizes, batch)
            local groups = {}
            if batch then groups[1] = sizes else
                for i, s in ipairs(sizes) do groups[i] = { s } end
            end
            for _, group in ipairs(groups) do
                local words, recs = { "append" }, {}
                for _, size in ipairs(group) do
                    ts, ids = ts + 1, ids + 1
                    local r = { id = kid.name .. ids, size = size, ts = ts }
                    recs[#recs + 1] = r
                    words[#words + 1] = ("%d %s %d"):format(r.ts, r.id, r.size)
                end
                local rep = kid:call(table.concat(words, " "))
                local want = #model
                assert.are.equal("ok", rep[1], kid.name .. ": " .. rep.text .. why)
                assert.are.equal(want, tonumber(rep[2]),
                                 kid.name .. " told the wrong first offset in round "
                                 .. stats.rounds .. why)
                assert.are.equal(want + #recs - 1, tonumber(rep[3]), rep.text .. why)
                for _, r in ipairs(recs) do model[#model + 1] = r end
            end
        end

        local function random_sizes(n)
            local t = {}
            for i = 1, n do t[i] = math.random(60, 300) end
            return t
        end

        -- first offset with a timestamp >= t (timestamps grow with the offset)
        local function model_oft(t)
            for o, r in ipairs(model) do if r.ts >= t then return o - 1 end end
            return #model
        end

        for round = 1, 120 do
            stats.rounds = round
            local w, s = kids[1], kids[2]          -- w truncates, s is left stale
            if math.random() < 0.5 then w, s = s, w end
            append(w, random_sizes(math.random(1, 8)), math.random() < 0.3)
            local m = math.random(1, 3)
            append(s, random_sizes(m), math.random() < 0.3)
            local s_last_ts = model[#model].ts
            -- w cuts s's records and up to three of its own ...
            local target = #model - m - math.random(0, 3)
            if target < 0 then target = 0 end
            local removed = 0
            for o = target + 1, #model do removed = removed + model[o].size end
            local rep = w:call("truncate " .. target)
            assert.are.equal("ok", rep[1], w.name .. ": " .. rep.text .. why)
            for o = #model, target + 1, -1 do model[o] = nil end
            -- ... and writes them again: mostly the same bytes exactly
            local p = math.random()
            if p < 0.7 then
                append(w, { removed })
                stats.same_size = stats.same_size + 1
            elseif p < 0.85 and removed >= 120 then
                local first = math.random(60, removed - 60)
                append(w, { first, removed - first }, math.random() < 0.5)
                stats.same_size = stats.same_size + 1
            else
                append(w, { math.max(60, removed + math.random(-40, 40)) })
            end
            -- s has not looked since its append; sometimes it is asked for
            -- a time first (a stale offset_for_time), mostly it appends.
            if math.random() < 0.3 then
                for _, t in ipairs({ s_last_ts, model[#model].ts, ts + 1000, model[#model].ts - 1 }) do
                    local r = s:call("oft " .. t)
                    assert.are.equal("ok", r[1], s.name .. ": " .. r.text .. why)
                    assert.are.equal(model_oft(t), tonumber(r[2]),
                                     s.name .. ": offset_for_time(" .. t .. ") in round " .. round .. why)
                end
                stats.oft = stats.oft + 1
            else
                stats.stale_appends = stats.stale_appends + 1
            end
            append(s, random_sizes(math.random(1, 2)), math.random() < 0.3)
        end
        for _, kid in ipairs(kids) do
            assert.are.equal("bye", kid:call("quit")[1])
            assert.is_true(util.wait_exit(kid.pid), kid.name .. " did not exit")
        end

        -- Every record, as the model has it, through a reader and then
        -- through a writer's open (recovery).
        for _, opts in ipairs({ { readonly = true }, {} }) do
            local log = open({ dir = dir, max_segment_size = SEGMENT }, opts)
            assert.are.equal(#model, log:high_water_mark(), why)
            local n = 0
            for rec in log:records() do
                local r = model[rec.offset + 1]
                assert.are.equal(n, rec.offset, why)
                assert.are.equal(sized_value(r.id, r.size), rec.value, "offset " .. rec.offset .. why)
                assert.are.equal(r.ts, rec.timestamp, "offset " .. rec.offset .. why)
                assert.is_nil(rec.key)
                n = n + 1
            end
            assert.are.equal(#model, n, why)
            assert.is_true(log:num_segments() > 1, "segments rolled" .. why)
            log:close()
        end
        verbose("two processes: %d rounds, %d records, %d same-size rewrites, %d stale appends, "
                .. "%d rounds asking a stale handle for times%s", stats.rounds, #model,
                stats.same_size, stats.stale_appends, stats.oft, why)
        assert.is_true(stats.same_size >= 50, "same-size rewrites: " .. stats.same_size .. why)
        assert.is_true(stats.stale_appends >= 50, "stale appends: " .. stats.stale_appends .. why)
    end)

    ---------------------------------------------------------------------
    -- 3. Free-running writers against the model
    ---------------------------------------------------------------------

    it("matches the model: no acknowledged record lost, no offset reused, no phantom", function()
        local seed = new_seed()
        local why = " (seed " .. seed .. ")"
        local modes = { "truncate", "truncate", "append", "append" }
        local ops = 1500
        local go = tmp .. "/go"
        local reports, outs = {}, {}
        for w, mode in ipairs(modes) do
            reports[w] = tmp .. "/report-w" .. w
            pids[w], outs[w] = util.spawn_lua(tmp, WRITER, { dir, "w" .. w, tostring(ops), mode,
                                                   tostring(seed * 10 + w), go, reports[w],
                                                   tostring(SEGMENT) })
        end
        util.write_file(go, "go\n")
        local rewrites = 0
        for w = 1, #modes do
            assert.is_true(util.wait_exit(pids[w], 12000), "writer " .. w .. " did not finish" .. why)
            local out = util.read_file(outs[w])
            local n = out:match("^done (%d+)\n$")
            assert.is_truthy(n, "writer " .. w .. ": " .. out .. why)
            rewrites = rewrites + tonumber(n)
        end

        local m = read_reports(reports)
        local checked = {}
        for _, opts in ipairs({ { readonly = true }, {} }) do
            local log = open({ dir = dir, max_segment_size = SEGMENT }, opts)
            local ok, recs, base, hwm = pcall(log_contents, log)
            assert(ok, "reading the log back: " .. tostring(recs) .. why)
            local segments = log:num_segments()
            log:close()
            local bad, lost = check_model(m, recs, base, hwm)
            assert.are.same({}, bad, (opts.readonly and "reader" or "writer") .. why)
            checked[#checked + 1] = { hwm = hwm, lost = lost, segments = segments }
        end
        local multi = 0
        for _, list in pairs(m.at) do if #list > 1 then multi = multi + 1 end end
        verbose("model: %d records acknowledged, %d truncates (%d refused), %d same-size rewrites, "
                .. "%d reads (%d racing a truncate: NOT_FOUND/CORRUPT), %d offsets given more than "
                .. "once; the log: %d records, %d lost to truncates, %d segments%s",
                m.n, #m.truncs, m.failed_truncs, rewrites, #m.reads, m.read_races, multi,
                checked[1].hwm, checked[1].lost, checked[1].segments, why)
        -- Recovery changed nothing the reader saw.
        assert.are.same(checked[1], checked[2], why)
        -- The run did what it is for.
        assert.is_true(#m.truncs >= 40, "truncates: " .. #m.truncs .. why)
        assert.is_true(rewrites >= 15, "same-size rewrites: " .. rewrites .. why)
        assert.is_true(checked[1].lost > 0 and checked[1].hwm > 0, why)
        assert.is_true(checked[1].segments > 10, "segments: " .. checked[1].segments .. why)
        assert.is_true(m.n >= 4 * ops, "records acknowledged: " .. m.n .. why)
    end)

    ---------------------------------------------------------------------
    -- 4. A read racing a truncate in another process
    ---------------------------------------------------------------------

    -- Found by spec 3.  A handle brings its view up to date and only then
    -- opens and reads the segment files; a truncate in another process in
    -- between deletes the newest segments or cuts the active one.  The
    -- read used to answer NOT_FOUND ("open|stat .../<base>.log: No such
    -- file or directory") or CORRUPT ("damaged record header"); it must
    -- look again and answer the record or OUT_OF_RANGE.  Read-only and shared handles both.  The window is
    -- short: many small segments (so that a reader's reload takes a
    -- while) and hundreds of truncates make it show in every run here.
    it("answers a read that races a truncate in another process with the record or OUT_OF_RANGE", function()
        local seg, rounds = 512, 400
        local w = open({ dir = dir, max_segment_size = seg })
        for o = 0, 1499 do w:append("k", ("%d|"):format(o) .. string.rep("v", 60)) end
        w:close()
        local done = tmp .. "/done"
        pids[1] = util.spawn_lua(tmp, CUTTER, { dir, tostring(rounds), tostring(seg), done })
        local handles = { readonly = open({ dir = dir, readonly = true }),
                          shared = open({ dir = dir, shared = true, max_segment_size = seg }) }
        local answers, examples, reads = {}, {}, 0
        local finished = false
        while not finished and reads < 3000000 do
            for kind, log in pairs(handles) do
                local o = log:high_water_mark() - math.random(1, 30)
                local rec, msg, code = log:read(o)
                local what = code or "ok"
                if rec and (rec.offset ~= o or rec.value:match("^(%d+)|") ~= tostring(o)) then
                    what, msg = "WRONG", ("offset %d gave %d %q"):format(o, rec.offset, rec.value:sub(1, 12))
                end
                answers[kind .. " " .. what] = (answers[kind .. " " .. what] or 0) + 1
                if what ~= "ok" and what ~= "OUT_OF_RANGE" and #examples < 8 then
                    examples[#examples + 1] = kind .. ": " .. what .. " " .. tostring(msg)
                end
            end
            reads = reads + 2
            if reads % 400 == 0 then
                finished = util.exists(done) or not util.alive(pids[1])
            end
        end
        for _, log in pairs(handles) do log:close() end
        assert.is_true(util.wait_exit(pids[1]), "the cutter did not finish")
        assert.is_true(util.exists(done), "the cutter failed")
        local summary = {}
        for k, n in pairs(answers) do summary[#summary + 1] = k .. ": " .. n end
        table.sort(summary)
        assert.are.same({}, examples, table.concat(summary, ", "))
    end)
end)
