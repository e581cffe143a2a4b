-- Errno injection: every rollback path of append, roll, truncate,
-- copy-on-write, snapshot create, restore, delete, cleanup and list,
-- driven one failing call at a time (issue 9, "Done when" item 3).
--
-- The fault build (`make fault`; csrc/sys.h) can make the Nth open,
-- write, fsync, rename, link, ftruncate or malloc from now on fail, in
-- the style of SQLite's aSyscall[].  For each operation below a lua5.4
-- child of that build (spec/helpers/fault.lua) counts the calls of each
-- kind the operation makes, then for every kind and every N up to that
-- count runs the operation on a fresh copy of its fixture with the Nth
-- call failing -- with EIO, ENOSPC for writes, ENOMEM for allocations:
-- once; for the system calls also from then on (a disk that stays full
-- or broken); for the appends also while no ftruncate works (the undo
-- fails too) -- and checks, with nothing armed any more:
--
--   * the operation returned (or failed with nil, a message, a code);
--     it never raised, crashed or hung;
--   * the log holds what the model says: every record acknowledged
--     before, the operation's own records all or none (appends), read
--     through the handle the operation ran on and through a new one;
--   * every listed snapshot verifies and is the one that was made;
--     snapshots.json agrees with the directories; nothing half-made is
--     left (*.tmp, .tmp-*, .del-*, .<name>.restore-*, .restore-tmp-*);
--     a restore into a new directory that failed left no target, an
--     in-place one the old log (or, failing past its commit point, the
--     restored one, which the next writer completes -- never a mix);
--   * the next operations work: an append on the same handle and on a
--     new one, read back; the operation once more; a new snapshot that
--     verifies; and no descriptor stays open.
--
-- The children print what they find; each test below reads one
-- operation's report.  Two children run at a time, in a directory on a
-- RAM filesystem when there is one (the faults are injected above the
-- system calls, so the filesystem changes nothing but the cost of the
-- thousands of fsyncs).

local util = require("helpers.util")

local FAULT_BUILD, NO_FAULT_BUILD = util.fault_build()

if util.is_luajit then
    describe("errno injection", function()
        pending("Lua 5.4 only: the fault build is a Lua 5.4 module, so every run happens in "
                .. "lua5.4 children, the same ones the Lua 5.4 pass of the suite starts; "
                .. "running them again from LuaJIT would test nothing new")
    end)
    return
end

if not FAULT_BUILD then
    describe("errno injection", function()
        pending("skipped: " .. NO_FAULT_BUILD)
    end)
    return
end

local JOBS = 2                  -- children at a time
local WORKER_SECONDS = 900      -- a child that takes longer is killed as hung

-------------------------------------------------------------------------
-- The operations, in the order their tests run: name, what it is, what
-- it promises when it fails
-------------------------------------------------------------------------

local OPS = {
    { "append", "an append of one record", "leaves no record behind" },
    { "append_shared", "an append of one record in shared mode (reserved, written outside the lock)",
      "leaves no record behind" },
    { "append_batch", "an append_batch that rolls a segment in its middle",
      "leaves none of its records behind" },
    { "roll", "an append that rolls a segment", "leaves the old segment active and no record behind" },
    { "truncate", "a truncate into a sealed segment a snapshot holds by hard link",
      "leaves a prefix of the log at least as long as the cut, and the snapshot intact" },
    { "unshare", "an append with sync = \"always\" to an active segment hard-linked elsewhere",
      "never writes into the other links, then or later (issue 9, item 5: the directory "
      .. "fsync after the copy's rename among the calls)" },
    { "create", "a link-mode snapshot create", "lists nothing half-made" },
    { "create_copy", "a copy-mode snapshot create", "lists nothing half-made" },
    { "restore", "a restore into a new directory", "leaves no target" },
    { "restore_upto", "a restore with upto_offset into a new directory", "leaves no target" },
    { "restore_replace", "an in-place restore",
      "leaves the old log, or past its commit point the restored one, never a mix" },
    { "restore_replace_upto", "an in-place restore with upto_offset",
      "leaves the old log, or past its commit point the restored one, never a mix" },
    { "delete", "a snapshot delete", "leaves that snapshot listed or gone, the others intact" },
    { "cleanup", "a cleanup of three snapshots out of four",
      "deletes only victims and keeps the catalog in step with the directories" },
    { "list", "a list of four snapshots",
      "returns all of them or an error, never part of the list (issue 9, item 21)" },
}

-- The cases of a run (spec/helpers/fault.lua): the Nth call fails once
-- ("write"), or goes on failing ("write*"), or fails while no ftruncate
-- works, so that undoing fails too ("write!").
local ONCE, STUCK = "once", "stuck"
local function pass_of(case)
    return case:find("[*!]$") and STUCK or ONCE
end

-- What the checks of one run may report (spec/helpers/fault.lua): these
-- fail the operation's own tests; "message" and "code" have tests of
-- their own.
local STATE_PROBLEMS = { crash = true, broken = true, model = true, leftover = true, next = true,
                         fd = true }

-------------------------------------------------------------------------
-- Running the children
-------------------------------------------------------------------------

local work, script
local jobs, queue = {}, {}

local function ram_tmpdir()
    if util.sh("test -d /dev/shm -a -w /dev/shm") then
        local dir = util.capture("mktemp -d /dev/shm/takhin-spec.XXXXXX 2>/dev/null"):gsub("%s+$", "")
        if dir ~= "" and util.is_dir(dir) then return dir end
    end
    return util.tmpdir()
end

local function setup_work()
    if work then return end
    work = ram_tmpdir()
    script = work .. "/child.lua"
    util.write_file(script, 'require("helpers.fault").main(arg)\n')
    for _, op in ipairs(OPS) do queue[#queue + 1] = op[1] end
end

local function start(name)
    local out = ("%s/%s.out"):format(work, name)
    local cmd = util.fault_command(script, { "supervise", util.lua54_bin(), script, name,
                                             work .. "/" .. name, tostring(WORKER_SECONDS) })
    assert(util.sh("mkdir -p " .. util.q(work .. "/" .. name)))
    assert(util.sh("{ " .. cmd .. " </dev/null >" .. util.q(out) .. " 2>&1; echo $? >"
                   .. util.q(out .. ".rc") .. "; } >/dev/null 2>&1 &"))
    jobs[name] = { out = out }
end

local function finished(name)
    return jobs[name] and util.exists(jobs[name].out .. ".rc")
end

-- Keeps JOBS children running, in the order of OPS.
local function pump()
    local running = 0
    for name in pairs(jobs) do
        if not finished(name) then running = running + 1 end
    end
    while running < JOBS and #queue > 0 do
        start(table.remove(queue, 1))
        running = running + 1
    end
end

local function wait_for(name)
    setup_work()
    local done = util.wait_until(function()
        pump()
        return finished(name)
    end, 10000, 0.2)
    assert(done, name .. ": the child did not finish")
end

-------------------------------------------------------------------------
-- Reading a report
-------------------------------------------------------------------------

-- { calls = { kind = n }, cases = n, runs = { { case, n, ok, code, survivors } },
--   problems = { { what, pass, text } }, done = bool, text = ... }
local reports = {}

local function report(name)
    if reports[name] then return reports[name] end
    wait_for(name)
    local text = util.read_file(jobs[name].out)
    local r = { calls = {}, cases = 0, runs = {}, problems = {}, done = false, text = text }
    for line in text:gmatch("[^\n]+") do
        local word, rest = line:match("^(%a+) ?(.*)$")
        if word == "calls" then
            local kind, n = rest:match("^(%S+) (%d+)$")
            r.calls[kind] = tonumber(n)
        elseif word == "cases" then
            r.cases = tonumber(rest)
        elseif word == "run" then
            local case, n, outcome, code, survivors = rest:match("^(%S+) (%d+) (%S+) (%S+) ?(.*)$")
            r.runs[#r.runs + 1] = { case = case, n = tonumber(n), ok = outcome == "ok",
                                    code = code, survivors = survivors }
        elseif word == "bad" or word == "crash" then
            local case, n, what, why
            if word == "bad" then
                case, n, what, why = rest:match("^(%S+) (%S+) (%S+) (.*)$")
            else
                what = "crash"
                case, n, why = rest:match("^(%S+) (%S+) (.*)$")
            end
            r.problems[#r.problems + 1] = { what = what, pass = pass_of(case),
                                            text = ("%s %s: %s"):format(case, n, why) }
        elseif word == "done" then
            r.done = true
        end
    end
    reports[name] = r
    return r
end

-- The problems of the given kinds found in the given passes (nil: all):
-- how many, and, as text for a failure message, how many of each kind
-- and the first few.
local function problems(r, whats, pass)
    local by, n = {}, 0
    for _, p in ipairs(r.problems) do
        if whats[p.what] and (pass == nil or p.pass == pass) then
            by[p.what] = by[p.what] or {}
            table.insert(by[p.what], p.text)
            n = n + 1
        end
    end
    local parts = {}
    for _, what in ipairs({ "crash", "broken", "model", "leftover", "next", "fd", "message", "code" }) do
        local list = by[what]
        if list then
            parts[#parts + 1] = ("%d %s:"):format(#list, what)
            for i = 1, math.min(#list, 6) do parts[#parts + 1] = "  " .. list[i] end
            if #list > 6 then parts[#parts + 1] = "  ..." end
        end
    end
    return n, table.concat(parts, "\n")
end

local function runs_of(r, case)
    local t = {}
    for _, run in ipairs(r.runs) do
        if case == nil or run.case == case or pass_of(run.case) == case then t[#t + 1] = run end
    end
    return t
end

-------------------------------------------------------------------------
-- The tests
-------------------------------------------------------------------------

describe("an operation whose system calls fail one at a time (errno injection)", function()
    teardown(function()
        if work then
            util.wait_until(function()
                for name in pairs(jobs) do
                    if not finished(name) then return false end
                end
                return true
            end, 10000, 0.2)
            util.rmtree(work)
        end
    end)

    -- The runs of one pass of an operation: none of them left a problem,
    -- all of them ran, and the injected failures reached the operation.
    local function check_pass(name, pass)
        local r = report(name)
        assert(r.done, name .. ": the child did not finish:\n" .. r.text:sub(-2000))
        local runs = runs_of(r, pass)
        local n, text = problems(r, STATE_PROBLEMS, pass)
        assert(n == 0, ("%s: %d problems in %d runs:\n%s"):format(name, n, #runs, text))
        local failed, once = 0, 0
        for _, run in ipairs(runs) do
            if not run.ok then failed = failed + 1 end
        end
        for _, calls in pairs(r.calls) do once = once + calls end
        assert.are.equal(pass == ONCE and once or r.cases - once, #runs, name .. ": one run per case")
        assert(#runs > 0 and failed > 0, name .. ": no injected failure made the operation fail")
    end

    for _, op in ipairs(OPS) do
        local name, what, promise = op[1], op[2], op[3]
        it(("%s that fails at any call %s; after it the log and the snapshots are consistent "
            .. "and the next operations work"):format(what, promise), function()
            check_pass(name, ONCE)
        end)
        it(("%s whose failing call goes on failing (a full or broken disk), or whose undo "
            .. "fails too, %s all the same; the next operations work once the disk does"):format(
            what, promise), function()
            check_pass(name, STUCK)
        end)
    end

    it("a cleanup whose rename of one victim fails still deletes the other victims and "
       .. "keeps that one listed (issue 9, item 21)", function()
        local r = report("cleanup")
        local victims = { S1 = true, S2 = true, S3 = true }
        local kept = {}
        for _, run in ipairs(runs_of(r, "rename")) do
            local left = {}
            for label in run.survivors:gmatch("[^,]+") do
                if victims[label] then left[#left + 1] = label end
            end
            if run.n <= 3 then
                -- the Nth rename is the Nth victim's
                assert.is_false(run.ok, "rename " .. run.n .. ": the cleanup should fail")
                assert.are.equal("IO", run.code)
                assert.are.equal(1, #left, ("rename %d: victims left: %s"):format(run.n, run.survivors))
                kept[left[1]] = true
            else
                assert.are.equal(0, #left, ("rename %d: victims left: %s"):format(run.n, run.survivors))
            end
        end
        assert.are.same(victims, kept, "each victim is the one that stays once")
    end)

    it("a failure names the path or the snapshot it concerns", function()
        local parts, total = {}, 0
        for _, op in ipairs(OPS) do
            local n, text = problems(report(op[1]), { message = true })
            total = total + n
            if n > 0 then parts[#parts + 1] = op[1] .. ": " .. text end
        end
        assert(total == 0, table.concat(parts, "\n"))
    end)

    it("a failure reports the code of what failed: IO for EIO, NOSPC for ENOSPC, NOMEM "
       .. "for memory", function()
        local parts, total = {}, 0
        for _, op in ipairs(OPS) do
            local n, text = problems(report(op[1]), { code = true })
            total = total + n
            if n > 0 then parts[#parts + 1] = op[1] .. ": " .. text end
        end
        assert(total == 0, table.concat(parts, "\n"))
    end)
end)
