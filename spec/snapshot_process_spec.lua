-- Snapshots and other processes (docs/API.md "SnapshotManager"):
-- several lua5.4 children creating snapshots of one log at once, and a
-- snapshot taken while a child appends to the log without pause.

local takhin = require("takhin")
local util = require("helpers.util")
local logs = require("helpers.log")
local cjson = require("cjson")

-- Parent and children derive each record from its offset the same way.
local key_for, value_for, ts_for = logs.derived_records(200)

local function ok(v, msg, code)
    assert(v, tostring(msg) .. " " .. tostring(code))
    return v
end

local open = logs.open

local function expect_record(rec, o, where)
    assert.are.equal(o, rec.offset, where)
    assert.are.equal(key_for(o), rec.key, where .. ": key at " .. o)
    assert.are.equal(value_for(o), rec.value, where .. ": value at " .. o)
    assert.are.equal(ts_for(o), rec.timestamp, where .. ": timestamp at " .. o)
end

-- A child that opens the log read-only, makes a manager, says "ready",
-- waits for the go file, then creates `n` snapshots and reports each id.
local CREATOR = [[
local takhin = require("takhin")
local util = require("helpers.util")
local dir, go, report_path, n = arg[1], arg[2], arg[3], tonumber(arg[4])
local say = util.reporter(report_path)
local log, msg, code = takhin.open_log({ dir = dir, readonly = true })
if not log then say("error", msg, code); os.exit(1) end
local sm
sm, msg, code = takhin.snapshot_manager(dir)
if not sm then say("error", msg, code); os.exit(1) end
say("ready")
if not util.wait_for_file(go, 3000, 0.005) then say("error", "no go file"); os.exit(1) end
for i = 1, n do
    local s, m, c = sm:create(log, { label = arg[5] .. "-" .. i })
    if s then say("id", s.id, s.high_water_mark) else say("error", m, c) end
end
say("done")
]]

-- A child that appends records derived from their offsets, without
-- pause, and writes each offset to the ack file once append returned.  It
-- stays below the offset in the budget file, waiting for the file to
-- change when it gets there (so the parent sets the pace and the log
-- stays small), and stops when the budget file says "stop".
local APPENDER = [[
local logs = require("helpers.log")
local key_for, value_for, ts_for = logs.derived_records(200)
local dir, ack_path, budget_path = arg[1], arg[2], arg[3]
local log = logs.open_or_exit({ dir = dir, max_segment_size = 32768, index_interval_bytes = 1024 })
local function budget()
    local f = io.open(budget_path, "r")
    if not f then return 0 end
    local s = f:read("a")
    f:close()
    if s:find("stop", 1, true) then return nil end
    return tonumber(s:match("%d+")) or 0
end
local ack = assert(io.open(ack_path, "w"))
local o = log:high_water_mark()
local limit = budget()
while limit do
    while limit and o >= limit do
        os.execute("sleep 0.002")
        limit = budget()
    end
    if not limit then break end
    local got, m, c = log:append(key_for(o), value_for(o), ts_for(o))
    if got ~= o then
        io.stderr:write("append gave ", tostring(got), " ", tostring(m), " ", tostring(c), "\n")
        os.exit(4)
    end
    ack:write(o, "\n")
    ack:flush()
    o = o + 1
    if o % 32 == 0 then limit = budget() end
end
log:close()
ack:write("done\n")
ack:close()
]]

-- A shared writer that rewrites the log without pause until the stop
-- file appears: each round truncates to a random offset and appends
-- again, half the rounds with exactly the sizes the records it removed
-- had (the files come back with the same names and sizes), half with new
-- sizes.  Every record describes itself (see check_rewritten).  It writes
-- "ready" to the report file after its first round and "rounds <n>" when
-- it stops.
local REWRITER = [[
local takhin = require("takhin")
local proc = require("helpers.proc")
local dir, report_path, stop_path = arg[1], arg[2], arg[3]
local say = proc.reporter(report_path)
local log, msg, code = takhin.open_log({ dir = dir, shared = true, max_segment_size = 1024,
                                          index_interval_bytes = 64 })
if not log then say("error", msg, code); os.exit(1) end
local seed = 12345
local function rand(n) seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n end
local sizes = {}            -- value length at each offset now in the log
local gen = 0
local function append(o, len)
    local head = ("%06d|%08d|"):format(gen, o)
    local value = head .. string.char(97 + (gen + o) % 26):rep(len - #head)
    local got, m, c = log:append(("g%06d"):format(gen), value, 1000000000000 + gen * 100000 + o)
    if got ~= o then say("error", "append", o, tostring(got), m, c); os.exit(1) end
    sizes[o] = len
end
local function stopped()
    local f = io.open(stop_path, "r")
    if f then f:close() end
    return f ~= nil
end
local rounds = 0
repeat
    gen = gen + 1
    local hwm = log:high_water_mark()
    local cut = hwm > 0 and rand(hwm + 1) or 0
    if not log:truncate(cut) then say("error", "truncate", cut); os.exit(1) end
    if rounds % 2 == 0 and cut < hwm then
        for o = cut, hwm - 1 do append(o, sizes[o]) end             -- same sizes
    else
        for o = cut, cut + 40 + rand(160) do append(o, 16 + rand(90)) end  -- other sizes
    end
    rounds = rounds + 1
    if rounds == 1 then say("ready") end
until stopped()
log:close()
say("rounds", rounds)
]]

-- A record written by REWRITER: its key names its generation, its value
-- holds generation, offset and filler derived from both, its timestamp
-- both too.
local function check_rewritten(rec, where)
    local gen, o = rec.value:match("^(%d%d%d%d%d%d)|(%d%d%d%d%d%d%d%d)|")
    assert(gen, where .. ": offset " .. rec.offset .. " holds " .. ("%q"):format(rec.value:sub(1, 40)))
    gen, o = tonumber(gen), tonumber(o)
    assert.are.equal(rec.offset, o, where .. ": a record of offset " .. o .. " at offset " .. rec.offset)
    assert.are.equal(("g%06d"):format(gen), rec.key, where .. ": key at " .. o)
    local filler = string.char(97 + (gen + o) % 26):rep(#rec.value - 16)
    assert.are.equal(filler, rec.value:sub(17), where .. ": value at " .. o)
    assert.are.equal(1000000000000 + gen * 100000 + o, rec.timestamp, where .. ": timestamp at " .. o)
end

describe("snapshots shared between processes", function()
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

    describe("concurrent creation", function()
        it("lists every snapshot made by three processes at once, with unique ids", function()
            local log = open({ dir = dir, max_segment_size = 2048, index_interval_bytes = 128 })
            for o = 0, 99 do assert.are.equal(o, log:append(key_for(o), value_for(o), ts_for(o))) end
            local hwm = log:high_water_mark()
            assert.is_true(log:num_segments() > 2)

            local go = tmp .. "/go"
            local PER_CHILD, CHILDREN = 3, 3
            local reports, outs = {}, {}
            for c = 1, CHILDREN do
                reports[c] = ("%s/report%d"):format(tmp, c)
                pids[c], outs[c] = util.spawn_lua(tmp, CREATOR, { dir, go, reports[c], PER_CHILD, "child" .. c })
            end
            for c = 1, CHILDREN do
                local data = util.wait_for_content(reports[c], "ready\n", 3000) or ""
                assert.truthy(data:find("ready\n", 1, true),
                              "child " .. c .. " not ready: " .. data .. (util.read_file(outs[c]) or ""))
            end
            util.write_file(go, "go\n")
            for c = 1, CHILDREN do
                assert.is_true(util.wait_exit(pids[c], 3000), "child " .. c .. " did not finish")
            end

            local ids, seen = {}, {}
            for c = 1, CHILDREN do
                local got = util.lines(reports[c])
                local where = "child " .. c .. ": " .. table.concat(got, " | ") .. util.read_file(outs[c])
                assert.are.equal("done", got[#got], where)
                local made = 0
                for _, line in ipairs(got) do
                    local kind, id, mark = line:match("^(%a+)\t?([^\t]*)\t?(.*)$")
                    assert.are_not.equal("error", kind, where)
                    if kind == "id" then
                        assert.is_nil(seen[id], "duplicate id " .. id)
                        assert.are.equal(tostring(hwm), mark, where)
                        seen[id] = c
                        ids[#ids + 1] = id
                        made = made + 1
                    end
                end
                assert.are.equal(PER_CHILD, made, where)
            end
            assert.are.equal(CHILDREN * PER_CHILD, #ids)

            local sm = ok(takhin.snapshot_manager(dir))
            local list = sm:list()
            assert.are.equal(#ids, #list)
            local listed = {}
            for i, s in ipairs(list) do
                assert.is_nil(listed[s.id], "listed twice: " .. s.id)
                listed[s.id] = true
                assert.is_truthy(seen[s.id], "not made by a child: " .. s.id)
                assert.are.equal(hwm, s.high_water_mark)
                assert.are.equal("child" .. seen[s.id], s.label:match("^(child%d+)%-"))
                if i > 1 then assert.is_true(list[i - 1].timestamp >= s.timestamp) end
                assert.is_true(sm:verify(s.id))
            end

            local doc = cjson.decode(util.read_file(dir .. "/.snapshots/snapshots.json"))
            assert.are.equal(#ids, #doc.snapshots)
            local in_catalog = {}
            for _, s in ipairs(doc.snapshots) do in_catalog[s.id] = true end
            for _, id in ipairs(ids) do assert.is_true(in_catalog[id], id .. " missing from snapshots.json") end

            -- Nothing half-built was left behind.
            for _, name in ipairs(util.ls(dir .. "/.snapshots")) do
                assert.is_nil(name:find("^%.tmp"), name)
                assert.is_nil(name:find("^%.del"), name)
            end

            -- A restore of any of them is the log as it was.
            ok(sm:restore(list[#list].id, tmp .. "/restored"))
            local r = open({ dir = tmp .. "/restored" })
            assert.are.equal(hwm, r:high_water_mark())
            for rec in r:records() do expect_record(rec, rec.offset, "restored") end
            r:close()
            sm:close()
            log:close()
        end)
    end)

    describe("point in time", function()
        it("holds a valid prefix of a log another process is appending to", function()
            local ack, budget = tmp .. "/ack", tmp .. "/budget"
            local STEP = 3000
            util.write_file(budget, "200\n")
            local pid, out = util.spawn_lua(tmp, APPENDER, { dir, ack, budget })
            pids[1] = pid
            local function n_acked() return util.count_lines(ack) end
            util.wait_lines(ack, 200, pid)
            assert.are.equal(200, n_acked(), "the child did not start: " .. (util.read_file(out) or ""))

            local ro = open({ dir = dir, readonly = true })
            local sm = ok(takhin.snapshot_manager(dir))
            local snaps, acked_before, limits = {}, {}, {}
            for round = 1, 6 do
                -- Let the child run (at most STEP records), snapshot while
                -- it appends, then hold it.
                local start, start_size = n_acked(), util.file_size(ack)
                limits[round] = start + STEP
                util.write_file(budget, limits[round] .. "\n")
                -- Wait for the child to be under way (20 acks of at most 6
                -- bytes), polling without a pause at first: it needs only a
                -- few milliseconds for STEP records.
                local function running() return util.file_size(ack) >= start_size + 120 end
                for _ = 1, 100000 do
                    if running() then break end
                end
                util.wait_until(function() return running() or not util.alive(pid) end)
                assert.is_true(util.alive(pid), "the child stopped: " .. (util.read_file(out) or ""))
                acked_before[round] = n_acked()
                snaps[round] = ok(sm:create(ro))
                util.write_file(budget, "0\n")
            end
            util.write_file(budget, "stop\n")
            assert.is_true(util.wait_exit(pid, 3000), "the child did not stop")
            local acks = util.lines(ack)
            assert.are.equal("done", acks[#acks], util.read_file(out) or "")
            local acked = #acks - 1
            assert.are.equal(tostring(acked - 1), acks[acked])
            ro:close()

            local live = open({ dir = dir })
            assert.are.equal(acked, live:high_water_mark())
            live:close()

            for round, s in ipairs(snaps) do
                local where = ("snapshot %d (%s, hwm %d)"):format(round, s.id, s.high_water_mark)
                assert.are.equal(0, s.base_offset, where)
                assert.is_true(s.high_water_mark >= acked_before[round],
                               where .. ": misses records acknowledged before it was taken ("
                               .. acked_before[round] .. ")")
                assert.is_true(s.high_water_mark <= acked, where .. ": more records than the child wrote")
                assert.is_true(s.high_water_mark <= limits[round], where .. ": more records than the child had written")
                if round > 1 then
                    assert.is_true(s.high_water_mark >= snaps[round - 1].high_water_mark, where)
                end
                local vok, vmsg, vcode = sm:verify(s.id)
                assert.is_true(vok, where .. ": " .. tostring(vmsg) .. " " .. tostring(vcode))
                local target = ("%s/restored%d"):format(tmp, round)
                ok(sm:restore(s.id, target))
                local r = open({ dir = target })
                assert.are.equal(s.high_water_mark, r:high_water_mark(), where)
                local n = 0
                for rec in r:records() do
                    expect_record(rec, n, where)
                    n = n + 1
                end
                assert.are.equal(s.high_water_mark, n, where)
                r:close()
            end
            assert.is_true(snaps[#snaps].num_segments > 1, "the log never rolled a segment")
            sm:close()
        end)
    end)
    describe("a log truncated and written again while snapshots are taken", function()
        it("gives snapshots that verify and restore, or CONFLICT naming the race, never IO", function()
            local report, stop = tmp .. "/report", tmp .. "/stop"
            local pid, out = util.spawn_lua(tmp, REWRITER, { dir, report, stop })
            pids[1] = pid
            local text = util.wait_for_content(report, "ready", 3000) or ""
            assert.truthy(text:find("ready", 1, true), text .. (util.read_file(out) or ""))

            local log = open({ dir = dir, shared = true, max_segment_size = 1024, index_interval_bytes = 64 })
            local sm = ok(takhin.snapshot_manager(dir))
            local made, failed = {}, {}
            for _ = 1, 40 do
                local s, msg, code = sm:create(log)
                if s then made[#made + 1] = s else failed[#failed + 1] = { msg = msg, code = code } end
            end
            util.write_file(stop, "stop\n")
            assert.is_true(util.wait_exit(pid, 3000), "the rewriter did not stop")
            local lines = util.lines(report)
            assert.truthy(lines[#lines]:find("^rounds"), table.concat(lines, " | ") .. (util.read_file(out) or ""))
            assert.is_true(tonumber(lines[#lines]:match("%d+")) > 1, "the log was never rewritten")

            for _, f in ipairs(failed) do
                assert.are.equal("CONFLICT", f.code, tostring(f.msg))
                assert.truthy(f.msg:find("the log was truncated or restored while the snapshot was being built",
                                         1, true), f.msg)
                assert.is_nil(f.msg:find("Input/output error", 1, true), f.msg)
            end
            assert.is_true(#made > 0, "no snapshot was made in 40 attempts: " .. ((failed[1] or {}).msg or ""))

            -- Whatever create returned verifies, and restores to a log of
            -- records that each are what the rewriter wrote at that offset.
            for i, s in ipairs(made) do
                local where = ("snapshot %d (%s, hwm %d)"):format(i, s.id, s.high_water_mark)
                local vok, vmsg, vcode = sm:verify(s.id)
                assert.is_true(vok, where .. ": " .. tostring(vmsg) .. " " .. tostring(vcode))
                local target = ("%s/restored%d"):format(tmp, i)
                ok(sm:restore(s.id, target))
                local r = open({ dir = target, readonly = true })
                assert.are.equal(s.high_water_mark, r:high_water_mark(), where)
                local n = 0
                for rec in r:records() do
                    check_rewritten(rec, where)
                    n = n + 1
                end
                assert.are.equal(s.high_water_mark, n, where)
                r:close()
            end
            assert.are.equal(#made, #sm:list())
            for _, name in ipairs(util.ls(dir .. "/.snapshots")) do
                assert.is_nil(name:find("^%.tmp"), name)
            end
            sm:close()
            log:close()
        end)
    end)
end)
