-- Crash points: a process killed at any step of a snapshot protocol
-- leaves nothing a new process cannot use.
--
-- For every TK_FAULT step of csrc/snapshot.c and csrc/restore.c, a lua5.4
-- child loads the crash-point build ($TAKHIN_FAULT_BUILD/takhin/core.so,
-- see `make fault`), gets TAKHIN_FAULT=<step> and runs one operation
-- (create, delete, cleanup, restore to a new directory, restore in place)
-- on a copy of a prepared log; the build SIGKILLs it at that step.  A
-- child that prints its "survived" marker never reached the step: that is
-- a failure.  The parent (normal build) then checks what the protocol
-- comments of csrc/snapshot.c promise for that step and that the next
-- operation of the same kind succeeds.
--
-- The prepared log (copied with cp -a for each step):
--   generation A: offsets 0..39, then snapshot SA (label "A", hwm 40);
--   truncated to 0, generation B: offsets 0..59, snapshot SB1 (hwm 60),
--   offsets 60..82, snapshot SB2 (hwm 83).  The log ends at hwm 83 with
--   B records, so "old log" (B, 83) and "restored from SA" (A, 40; or A,
--   25 with upto_offset) cannot be confused.

local takhin = require("takhin")
local util = require("helpers.util")

local FAULT_BUILD, NO_FAULT_BUILD = util.fault_build()

if not FAULT_BUILD then
    describe("snapshot crash points", function()
        pending("skipped: " .. NO_FAULT_BUILD)
    end)
    return
end

local json_ok, json = pcall(require, "cjson")
if not json_ok then json = require("dkjson") end

local LOG_OPTS = { max_segment_size = 1024, index_interval_bytes = 128 }
local A_HWM, B1_HWM, B_HWM, UPTO = 40, 60, 83, 25

-- What the record at offset o of generation gen ("A" or "B") holds.
local function key_for(gen, o)
    if o % 7 == 3 then return nil end
    return gen .. "-key-" .. o
end
local function value_for(gen, o)
    return ("%s:%d:"):format(gen, o) .. string.rep(gen == "A" and "a" or "b", (o * 13) % 50)
end
local function ts_for(gen, o)
    return (gen == "A" and 1700000000000 or 1710000000000) + o * 10
end

local function log_opts(dir)
    return { dir = dir, max_segment_size = LOG_OPTS.max_segment_size,
             index_interval_bytes = LOG_OPTS.index_interval_bytes }
end

local function append_gen(log, gen, from, to)
    for o = from, to - 1 do
        local got = assert(log:append(key_for(gen, o), value_for(gen, o), ts_for(gen, o)))
        assert(got == o, "append gave " .. tostring(got) .. ", expected " .. o)
    end
end

-- nil when the open log holds exactly generation gen at [0, hwm), else why not.
local function mismatch(log, gen, hwm)
    if log:base_offset() ~= 0 then return "base_offset " .. log:base_offset() end
    if log:high_water_mark() ~= hwm then return "high_water_mark " .. log:high_water_mark() end
    local ok, why = pcall(function()
        local expect = 0
        for rec in log:records(0, hwm) do
            if rec.offset ~= expect then error("offset " .. rec.offset .. " where " .. expect .. " was due") end
            if rec.key ~= key_for(gen, expect) or rec.value ~= value_for(gen, expect)
                or rec.timestamp ~= ts_for(gen, expect) then
                error(("offset %d holds %q"):format(expect, tostring(rec.value)))
            end
            expect = expect + 1
        end
        if expect ~= hwm then error("records end at " .. expect) end
    end)
    if not ok then return tostring(why) end
    return nil
end

-- Which of the named states {name = {gen, hwm}} the open log is in, or a
-- description of what it is instead.
local function state_of(log, states)
    local whys = {}
    for name, st in pairs(states) do
        local why = mismatch(log, st[1], st[2])
        if not why then return name end
        whys[#whys + 1] = name .. ": " .. why
    end
    table.sort(whys)
    return "neither (" .. table.concat(whys, "; ") .. ")"
end

-------------------------------------------------------------------------
-- The prepared log
-------------------------------------------------------------------------

local tmp, template, ids

local function prepare()
    if template then return end
    tmp = util.tmpdir()
    template = tmp .. "/template"
    local logdir = template .. "/log"
    local log = assert(takhin.open_log(log_opts(logdir)))
    local sm = assert(takhin.snapshot_manager(logdir))
    append_gen(log, "A", 0, A_HWM)
    local sa = assert(sm:create(log, { label = "A" }))
    assert(log:truncate(0))
    append_gen(log, "B", 0, B1_HWM)
    local sb1 = assert(sm:create(log, { label = "B1" }))
    append_gen(log, "B", B1_HWM, B_HWM)
    local sb2 = assert(sm:create(log, { label = "B2" }))
    assert(sa.high_water_mark == A_HWM and sb1.high_water_mark == B1_HWM and sb2.high_water_mark == B_HWM)
    assert(sa.num_segments > 2 and sb2.num_segments > 2, "the snapshots should hold several segments")
    assert(log:num_segments() > 2)
    assert(#assert(sm:list()) == 3)
    assert(not mismatch(log, "B", B_HWM))
    log:close()
    sm:close()
    ids = { SA = sa.id, SB1 = sb1.id, SB2 = sb2.id }
end

-------------------------------------------------------------------------
-- The child
-------------------------------------------------------------------------

local CHILD = [[
local takhin = require("takhin")
local op, logdir, id, target, upto = arg[1], arg[2], arg[3], arg[4], tonumber(arg[5])
local function check(ok, msg, code)
    if not ok then
        io.stderr:write(op, " failed: ", tostring(msg), " ", tostring(code), "\n")
        os.exit(2)
    end
    return ok
end
local sm = check(takhin.snapshot_manager(logdir))
if op == "create" then
    local log = check(takhin.open_log({ dir = logdir, max_segment_size = 1024, index_interval_bytes = 128 }))
    check(sm:create(log, { label = "crash" }))
elseif op == "delete" then
    check(sm:delete(id))
elseif op == "cleanup" then
    local n = check(sm:cleanup({ max_snapshots = 1 }))
    print("cleanup deleted " .. n)
elseif op == "restore" then
    check(sm:restore(id, target, { upto_offset = upto }))
elseif op == "inplace" then
    check(sm:restore(id, logdir, { replace = true, upto_offset = upto }))
else
    io.stderr:write("unknown op ", op, "\n")
    os.exit(2)
end
print("survived")
os.exit(0)
]]

-- Runs the child under the crash-point build; returns its output and
-- its exit status as sh reports it (137 for SIGKILL).  The crash-point
-- build is made for Lua 5.4: the child is lua5.4 also when the specs run
-- under LuaJIT (util.lua54_bin).
local function run_child(dir, step, args)
    return util.run_fault(dir, CHILD, args, step)
end

local function expect_killed(step, out, status)
    assert(not out:find("survived", 1, true),
           step .. ": the step was never reached (the child survived): " .. out)
    assert.are.equal(137, status, step .. ": the child was not killed by SIGKILL: " .. out)
end

-------------------------------------------------------------------------
-- Checks on the snapshot directory
-------------------------------------------------------------------------

local function set_of(list)
    local s = {}
    for _, id in ipairs(list) do s[id] = true end
    return s
end

-- Opens a manager (normal build) on logdir and checks: list() is `want`
-- (a set of ids) plus, when extra_label is given, exactly one more
-- snapshot with that label; every listed snapshot verifies; no .tmp-* or
-- .del-* is left; the snapshot-* directories are the listed ones; and
-- snapshots.json parses and says what list() says.  Returns the manager
-- and the list.
local function check_snapshots(where, logdir, want, extra_label)
    local sm, msg, code = takhin.snapshot_manager(logdir)
    assert(sm, where .. ": snapshot_manager: " .. tostring(msg) .. " " .. tostring(code))
    local list
    list, msg, code = sm:list()
    assert(list, where .. ": list: " .. tostring(msg) .. " " .. tostring(code))
    local extra = {}
    local seen = {}
    for _, s in ipairs(list) do
        seen[s.id] = true
        if not want[s.id] then extra[#extra + 1] = s end
        local ok, vmsg, vcode = sm:verify(s.id)
        assert(ok, where .. ": listed snapshot " .. s.id .. " does not verify: "
               .. tostring(vmsg) .. " " .. tostring(vcode))
    end
    for id in pairs(want) do
        assert(seen[id], where .. ": snapshot " .. id .. " is missing from list()")
    end
    if extra_label then
        assert.are.equal(1, #extra, where .. ": expected exactly one new snapshot in list()")
        assert.are.equal(extra_label, extra[1].label, where .. ": the new snapshot's label")
    else
        local names = {}
        for _, s in ipairs(extra) do names[#names + 1] = s.id end
        assert.are.equal(0, #extra, where .. ": unexpected snapshots listed: " .. table.concat(names, " "))
    end

    local snapdir = sm:dir()
    local dirs = {}
    for _, name in ipairs(util.ls(snapdir)) do
        assert(not name:find("^%.tmp%-") and not name:find("^%.del%-"),
               where .. ": leftover " .. name .. " in " .. snapdir .. " after a manager opened")
        local id = name:match("^snapshot%-(.+)$")
        if id then dirs[#dirs + 1] = id end
    end
    table.sort(dirs)
    local listed = {}
    for _, s in ipairs(list) do listed[#listed + 1] = s.id end
    table.sort(listed)
    assert.are.same(listed, dirs, where .. ": snapshot directories vs list()")

    local text = util.read_file(snapdir .. "/snapshots.json")
    local ok, cat = pcall(json.decode, text)
    assert(ok and type(cat) == "table" and type(cat.snapshots) == "table",
           where .. ": snapshots.json does not parse: " .. text)
    assert.are.equal(#list, #cat.snapshots, where .. ": snapshots.json vs list()")
    for i, s in ipairs(list) do
        local c = cat.snapshots[i]
        local w = where .. ": snapshots.json entry " .. i
        assert.are.equal(s.id, c.id, w)
        assert.are.equal(s.timestamp, c.timestamp, w)
        assert.are.equal(s.base_offset, c.base_offset, w)
        assert.are.equal(s.high_water_mark, c.high_water_mark, w)
        assert.are.equal(s.num_segments, c.num_segments, w)
        assert.are.equal(s.total_size, c.total_size, w)
        assert.are.equal(s.mode, c.mode, w)
        assert.are.equal(s.label or "", c.label or "", w)
    end
    return sm, list
end

-- Opens dir as a writer and returns the log, or fails naming the error.
local function open_writer(where, dir)
    local log, msg, code = takhin.open_log(log_opts(dir))
    assert(log, where .. ": open_log " .. dir .. ": " .. tostring(msg) .. " " .. tostring(code))
    return log
end

-------------------------------------------------------------------------
-- The steps
-------------------------------------------------------------------------

-- create: before the rename nothing is listed; from the rename on the new
-- snapshot is complete and listed (put back in the catalog if need be).
local CREATE = {
    { "create.tmpdir", false }, { "create.cut", false }, { "create.placing", false },
    { "create.placed", false }, { "create.manifest", false },
    { "create.renamed", true }, { "create.published", true },
}

-- restore into a new directory: the target appears only at the rename.
local RESTORE = {
    { "restore.tmpdir", false }, { "restore.placing", false }, { "restore.placed", false },
    { "restore.truncated", false, UPTO }, { "restore.renamed", true },
}

-- restore in place: the old log up to the commit point, the restored one
-- after it.
local INPLACE = {
    { "restore.placing", "old" }, { "restore.placed", "old" },
    { "restore.truncated", "old", UPTO }, { "inplace.tmpdir", "old" },
    { "inplace.built", "old" }, { "inplace.committed", "restored" },
    { "inplace.removed", "restored" }, { "inplace.moving", "restored" },
    { "inplace.moved", "restored" },
    { "inplace.committed", "restored", UPTO }, { "inplace.moving", "restored", UPTO },
}

describe("a snapshot operation killed at a crash point", function()
    local work, n = nil, 0

    before_each(function()
        prepare()
        n = n + 1
        work = ("%s/w%02d"):format(tmp, n)
        util.copytree(template, work)
    end)

    after_each(function()
        collectgarbage(); collectgarbage()
        if work and os.getenv("TAKHIN_KEEP_FAULT_DIRS") == nil then util.sh("rm -rf " .. util.q(work)) end
    end)

    teardown(function()
        collectgarbage(); collectgarbage()
        if tmp then util.rmtree(tmp) end
    end)

    local function all_ids()
        return set_of({ ids.SA, ids.SB1, ids.SB2 })
    end

    it("covers every literal crash point named in csrc/ (here, or in another spec)", function()
        local covered = {}
        for _, t in ipairs({ CREATE, RESTORE, INPLACE }) do
            for _, c in ipairs(t) do covered[c[1]] = true end
        end
        -- Retention and cursor steps have their cases in retention_spec
        -- and cursor_spec, shared appends in shared_kill_spec: a point
        -- named in a spec file's string counts ("step" or "step@N").
        for _, file in ipairs(util.ls_suffix("spec", "_spec.lua")) do
            for name in util.read_file("spec/" .. file):gmatch('"([%w_]+%.[%w._]+)[@%d]*"') do
                if file ~= "fault_spec.lua" then covered[name] = true end
            end
        end
        local found = 0
        for _, file in ipairs(util.ls_suffix("csrc", ".c")) do
            for name in util.read_file("csrc/" .. file):gmatch('TK_FAULT%("([%w._]+)"%)') do
                found = found + 1
                assert(covered[name], "crash point " .. name .. " (csrc/" .. file .. ") has no case here")
            end
        end
        assert(found >= 15, "found only " .. found .. " TK_FAULT(\"...\") points in csrc/")
    end)

    for _, c in ipairs(CREATE) do
        local step, listed = c[1], c[2]
        it(("create at %s: %s"):format(step, listed and "the new snapshot is listed"
                                                  or "nothing new is listed"), function()
            local logdir = work .. "/log"
            local out, status = run_child(work, step, { "create", logdir, "-", "-", "-" })
            expect_killed(step, out, status)

            local sm, list = check_snapshots(step, logdir, all_ids(), listed and "crash" or nil)
            assert.are.equal(listed and 4 or 3, #list, step)
            local log = open_writer(step, logdir)
            assert.is_nil(mismatch(log, "B", B_HWM), step .. ": the log itself")
            -- The next create succeeds.
            local s, msg, code = sm:create(log, { label = "next" })
            assert(s, step .. ": the next create: " .. tostring(msg) .. " " .. tostring(code))
            assert.are.equal(B_HWM, s.high_water_mark, step)
            assert(sm:verify(s.id))
            assert.are.equal(#list + 1, #assert(sm:list()), step)
            log:close()
            sm:close()
            local want = set_of({ ids.SA, ids.SB1, ids.SB2, s.id })
            local sm2 = check_snapshots(step .. " (after the next create)", logdir, want,
                                        listed and "crash" or nil)
            sm2:close()
        end)
    end

    for _, step in ipairs({ "delete.renamed", "delete.published", "delete.removing" }) do
        it(("delete at %s: the snapshot is gone, the others intact"):format(step), function()
            local logdir = work .. "/log"
            local out, status = run_child(work, step, { "delete", logdir, ids.SB1, "-", "-" })
            expect_killed(step, out, status)

            local sm = check_snapshots(step, logdir, set_of({ ids.SA, ids.SB2 }))
            local _, _, code = sm:get(ids.SB1)
            assert.are.equal("NOT_FOUND", code, step)
            -- The next delete succeeds.
            local ok, msg
            ok, msg, code = sm:delete(ids.SA)
            assert(ok, step .. ": the next delete: " .. tostring(msg) .. " " .. tostring(code))
            sm:close()
            check_snapshots(step .. " (after the next delete)", logdir, set_of({ ids.SB2 })):close()
        end)
    end

    for _, step in ipairs({ "cleanup.renamed", "cleanup.published", "cleanup.removing" }) do
        it(("cleanup at %s: every victim is gone, the newest intact"):format(step), function()
            local logdir = work .. "/log"
            local out, status = run_child(work, step, { "cleanup", logdir, "-", "-", "-" })
            expect_killed(step, out, status)

            local sm = check_snapshots(step, logdir, set_of({ ids.SB2 }))
            -- The next cleanup succeeds (and has a victim: a new snapshot
            -- makes SB2 the older one).
            local log = open_writer(step, logdir)
            local s = assert(sm:create(log, { label = "next" }))
            log:close()
            local deleted, msg, code = sm:cleanup({ max_snapshots = 1 })
            assert(deleted, step .. ": the next cleanup: " .. tostring(msg) .. " " .. tostring(code))
            assert.are.equal(1, deleted, step)
            sm:close()
            check_snapshots(step .. " (after the next cleanup)", logdir, set_of({ s.id })):close()
        end)
    end

    -- The target of a restore from SA: a complete log, checked twice.
    local function expect_restored(where, dir, hwm)
        for round = 1, 2 do
            local log = open_writer(where, dir)
            assert.is_nil(mismatch(log, "A", hwm), ("%s: restored log (open %d)"):format(where, round))
            log:close()
        end
    end

    for _, c in ipairs(RESTORE) do
        local step, present, upto = c[1], c[2], c[3]
        local hwm = upto or A_HWM
        it(("restore to a new directory at %s%s: the target is %s"):format(
            step, upto and " (upto_offset)" or "", present and "complete" or "absent"), function()
            local logdir, target = work .. "/log", work .. "/restored"
            local out, status = run_child(work, step,
                                          { "restore", logdir, ids.SA, target, upto and tostring(upto) or "-" })
            expect_killed(step, out, status)

            -- Any temp dir beside it is not the target; the target is
            -- absent before the rename and complete after it.
            assert.are.equal(present, util.exists(target),
                             step .. ": target exists? entries beside it: " .. table.concat(util.ls(work), " "))
            if present then expect_restored(step, target, hwm) end
            for _, name in ipairs(util.ls(work)) do
                if name:find("restore", 1, true) and name ~= "restored" then
                    assert(name:sub(1, 1) == ".", step .. ": unexpected " .. name)
                end
            end

            local sm = check_snapshots(step, logdir, all_ids())
            local log = open_writer(step, logdir)
            assert.is_nil(mismatch(log, "B", B_HWM), step .. ": the source log")
            log:close()
            -- The next restore succeeds.
            local target2 = work .. "/restored2"
            local ok, msg, code = sm:restore(ids.SA, target2, { upto_offset = upto })
            assert(ok, step .. ": the next restore: " .. tostring(msg) .. " " .. tostring(code))
            sm:close()
            expect_restored(step .. " (next restore)", target2, hwm)
            check_snapshots(step .. " (after the next restore)", logdir, all_ids()):close()
        end)
    end

    for _, c in ipairs(INPLACE) do
        local step, expect, upto = c[1], c[2], c[3]
        local restored_hwm = upto or A_HWM
        it(("restore in place at %s%s: a writer finds the %s log"):format(
            step, upto and " (upto_offset)" or "", expect), function()
            local logdir = work .. "/log"
            local out, status = run_child(work, step,
                                          { "inplace", logdir, ids.SA, "-", upto and tostring(upto) or "-" })
            expect_killed(step, out, status)

            local states = { old = { "B", B_HWM }, restored = { "A", restored_hwm } }
            local log = open_writer(step, logdir)
            local first = state_of(log, states)
            for _, name in ipairs(util.ls(logdir)) do
                assert(not name:find("^%.restore%-tmp%-") and name ~= ".restore-ready",
                       step .. ": leftover " .. name .. " after a writer opened the log")
            end
            log:close()
            log = open_writer(step .. " (second open)", logdir)
            local second = state_of(log, states)
            log:close()
            assert.are.equal(expect, first, step .. ": the log after the first writer open")
            assert.are.equal(first, second, step .. ": the second open differs from the first")

            local sm = check_snapshots(step, logdir, all_ids())
            -- The next in-place restore succeeds (SB1: B records, hwm 60).
            local ok, msg, code = sm:restore(ids.SB1, logdir, { replace = true })
            assert(ok, step .. ": the next in-place restore: " .. tostring(msg) .. " " .. tostring(code))
            sm:close()
            log = open_writer(step .. " (after the next restore)", logdir)
            assert.is_nil(mismatch(log, "B", B1_HWM), step .. ": the log after the next in-place restore")
            log:close()
            check_snapshots(step .. " (after the next restore)", logdir, all_ids()):close()
        end)
    end
end)
