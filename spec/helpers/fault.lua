-- Errno injection: the child side of spec/errno_spec.lua.
--
-- A lua5.4 child loads the fault build of takhin.core (`make fault`;
-- csrc/sys.h), in which the Nth open, write, fsync, rename, link,
-- ftruncate or malloc from now on can be made to fail:
-- core._fault_arm(kind, n, errno).  For one operation (OPS below) the
-- child
--
--   1. builds a template once: a log, its snapshots, what else the
--      operation needs, and the model of what they hold;
--   2. measures: on a fresh copy of the template, runs the operation once
--      and counts the calls of each kind it makes;
--   3. for every kind and every N from 1 to that count (cases_of): on a
--      fresh copy, arms the Nth call to fail -- once ("write"), or from
--      then on ("write*"), or once while no ftruncate works either, so
--      that undoing fails too ("write!") -- runs the operation, disarms
--      everything, and checks (one_run) that the operation succeeded or
--      failed cleanly, that the log and the snapshots are what the model
--      allows, that nothing half-made is left, and that the next
--      operations work.
--
-- It prints one line per fact, which the spec parses (<case> is the
-- kind with its suffix):
--
--   calls <kind> <count>           what step 2 counted
--   cases <count>                  how many runs step 3 makes
--   begin <case> <n>               a run starts
--   run <case> <n> ok|failed <CODE|-> <snapshots listed after it>
--   bad <case> <n> <what> <text>   a check failed; <what> is one of
--                                  broken, model, leftover, next,
--                                  message, code, fd
--   crash <case> <n> <how>         (supervise) the run never finished
--   done <runs>
--
-- Two entry points, both from `require("helpers.fault").main(arg)`:
--
--   work <op> <workdir> [<case> <n>]
--       the runs above; resumes after run (case, n) when given.
--   supervise <lua> <script> <op> <workdir> <seconds>
--       runs `work` under <lua> (killed after <seconds>) until it prints
--       "done"; a run that crashed or hung is reported as a crash line
--       and the work resumes after it.
--
-- The faults are injected above the system calls, so the filesystem makes
-- no difference to what runs; the spec puts workdir on a RAM filesystem
-- when there is one, where the thousands of fsyncs cost nothing.

local takhin = require("takhin")
local core = require("takhin.core")
local fs = require("helpers.fs")
local sh = require("helpers.sh")
local logs = require("helpers.log")

local json_ok, json = pcall(require, "cjson")
if not json_ok then json = require("dkjson") end

local q = sh.q
local unpack = table.unpack or rawget(_G, "unpack")
local pack = table.pack or function(...) return { n = select("#", ...), ... } end

local M = {}

M.KINDS = { "open", "write", "fsync", "rename", "link", "ftruncate", "malloc" }

-- The errno each kind fails with, and the code that errno must come back
-- as: a write fails as a full disk does, an allocation as memory running
-- out, everything else as a failing disk.
M.ERRNO = { open = "EIO", write = "ENOSPC", fsync = "EIO", rename = "EIO", link = "EIO",
            ftruncate = "EIO", malloc = "ENOMEM" }
M.CODE_OF = { EIO = "IO", ENOSPC = "NOSPC", ENOMEM = "NOMEM" }

-- The codes an operation may fail with when a system call or an
-- allocation fails under it (docs/API.md).
M.CODES = { IO = true, NOSPC = true, NOMEM = true, CORRUPT = true, CONFLICT = true }

local LOG_OPTS = { max_segment_size = 1024, index_interval_bytes = 128 }

-------------------------------------------------------------------------
-- Output
-------------------------------------------------------------------------

local function one_line(s)
    return (tostring(s):gsub("[\r\n\t]", " "))
end

local function emit(...)
    local t = {}
    for i = 1, select("#", ...) do t[i] = one_line((select(i, ...))) end
    io.stdout:write(table.concat(t, " "), "\n")
    io.stdout:flush()
end

local function show(...)
    local t = {}
    for i = 1, select("#", ...) do t[i] = tostring((select(i, ...))) end
    return table.concat(t, " ")
end

-------------------------------------------------------------------------
-- The model: what the log holds, record by record
-------------------------------------------------------------------------

-- A model is a list of records { key =, value =, timestamp = }: the
-- record at offset o is model[o + 1] (every log here starts at 0).

local key_for, value_for, ts_for = logs.derived_records(40)

-- The record a fixture puts at offset o; generation "B" is what a log
-- truncated and written again holds, so that it cannot be taken for the
-- first generation (a snapshot of it, say).
local function derived(o, gen)
    if gen == "B" then
        return { key = "B-" .. o, value = "B:" .. value_for(o + 7), timestamp = ts_for(o) + 1 }
    end
    return { key = key_for(o), value = value_for(o), timestamp = ts_for(o) }
end

-- A record of exactly `size` framed bytes (docs/FORMAT.md) for offset o.
local function sized(o, size)
    local key, head = "op-" .. o, ("op:%d:"):format(o)
    assert(size >= 34 + #key + #head, "record too small")
    return { key = key, value = head .. ("z"):rep(size - 34 - #key - #head), timestamp = ts_for(o) }
end

local function extend(model, recs)
    local m = {}
    for i, r in ipairs(model) do m[i] = r end
    for _, r in ipairs(recs) do m[#m + 1] = r end
    return m
end

-- nil when the open log holds exactly model[1 .. hwm], else what differs.
local function mismatch(log, model, hwm)
    if log:base_offset() ~= 0 then return "base_offset is " .. tostring(log:base_offset()) end
    if log:high_water_mark() ~= hwm then
        return ("high_water_mark is %s, the model says %d"):format(tostring(log:high_water_mark()), hwm)
    end
    local ok, why = pcall(function()
        local expect = 0
        for rec in log:records(0, hwm) do
            local want = model[expect + 1]
            if rec.offset ~= expect then error(("offset %d where %d was due"):format(rec.offset, expect)) end
            if rec.key ~= want.key or rec.value ~= want.value or rec.timestamp ~= want.timestamp then
                error(("offset %d holds %q, the model says %q"):format(expect, tostring(rec.value), want.value))
            end
            expect = expect + 1
        end
        if expect ~= hwm then error("the records end at " .. expect) end
    end)
    if not ok then return tostring(why) end
    return nil
end

-------------------------------------------------------------------------
-- Files
-------------------------------------------------------------------------

local function read_or_nil(path)
    local f = io.open(path, "rb")
    if not f then return nil end
    local data = f:read("a")
    f:close()
    return data
end

-- The commands a worker runs for every run (copying the template,
-- listing directories) go to one shell it starts once, through a FIFO,
-- and that shell runs without LD_PRELOAD: under `make test-asan` every
-- process started from the worker would otherwise load the sanitizers
-- and check for leaks when it exits, which made this file take many
-- minutes.
local shell = {}

function shell.start(dir)
    shell.fifo = dir .. "/shell.fifo"
    assert(sh.sh("mkdir -p " .. q(dir) .. " && rm -f " .. q(shell.fifo) .. " && mkfifo " .. q(shell.fifo)),
           "mkfifo " .. shell.fifo)
    local loop = 'while IFS= read -r line; do eval "$line" >' .. q(shell.fifo) .. ' 2>&1; done'
    shell.p = assert(io.popen("exec env -u LD_PRELOAD /bin/sh -c " .. q(loop), "w"))
end

-- Runs a one-line command in that shell; returns what it printed.
function shell.run(cmd)
    shell.p:write(cmd, "\n")
    shell.p:flush()
    local f = assert(io.open(shell.fifo, "r"))
    local out = f:read("a")
    f:close()
    return out
end

function shell.stop()
    shell.p:close()
end

local PID
local function pid()
    if not PID then
        PID = assert(read_or_nil("/proc/self/stat")):match("^(%d+)")
    end
    return PID
end

-- Descriptors of this process open on files under dir (one per line of
-- `ls -l /proc/<pid>/fd` naming a path there), from a command's output.
local function fds_under(out, dir)
    local t = {}
    for line in out:gmatch("[^\n]+") do
        local target = line:match(" %-> (.*)$")
        if target and target:sub(1, #dir + 1) == dir .. "/" then t[#t + 1] = target end
    end
    return t
end

-- Replaces the run directory by a fresh copy of the template; returns the
-- descriptors the last run left open under it.
local function fresh_copy(fx)
    local out = shell.run("ls -l /proc/" .. pid() .. "/fd 2>/dev/null; rm -rf " .. q(fx.root)
                          .. " && cp -a " .. q(fx.template) .. " " .. q(fx.root) .. " && echo @@copied")
    assert(out:find("@@copied", 1, true), "could not copy " .. fx.template)
    return fds_under(out, fx.root)
end

-- Everything under root, as paths relative to it.
local function survey(root)
    local paths = {}
    for line in shell.run("find " .. q(root) .. " -mindepth 1 -printf '%P\\n'"):gmatch("[^\n]+") do
        paths[#paths + 1] = line
    end
    return paths
end

-- What an operation that has returned must not leave behind
-- (docs/FORMAT.md): temp files of an atomic replace or a copy-on-write
-- (*.tmp), snapshots being built or removed (.tmp-*, .del-*), restores
-- being built (.<name>.restore-*, .restore-tmp-*).  (.restore-ready is
-- a committed in-place restore: see inplace_op.)
local function is_leftover(path)
    local name = path:match("([^/]+)$")
    return name:find("%.tmp$") or name:find("^%.tmp%-") or name:find("^%.del%-")
        or name:find("^%.restore%-tmp%-") or name:find("^%..+%.restore%-") ~= nil
end

local function has(paths, want)
    for _, p in ipairs(paths) do
        if p == want then return true end
    end
    return false
end

local function snapshot_dirs(paths)
    local ids = {}
    for _, p in ipairs(paths) do
        local id = p:match("^log/%.snapshots/snapshot%-([^/]+)$")
        if id then ids[id] = true end
    end
    return ids
end

-------------------------------------------------------------------------
-- The template
-------------------------------------------------------------------------

-- A log of `records` derived records in segments of 1024 bytes, with a
-- link-mode snapshot labelled L taken when the log reached snapshots[L]
-- records; with `rewrite_from`, the log is then truncated there and
-- written again up to `records` with generation B; with `outside`, hard
-- links to the active segment's three files in outside/ (as a backup
-- tool would hold them).  Returns the fixture: paths, the model, the
-- snapshots by label (id, high water mark, the model of what they hold),
-- the bytes of snapshots.json, the layout of the segments.
local function build_template(work, spec)
    local root = work .. "/template"
    local logdir = root .. "/log"
    assert(sh.sh("rm -rf " .. q(root) .. " && mkdir -p " .. q(root)), "mkdir " .. root)
    local log = logs.open({ dir = logdir }, LOG_OPTS)
    local sm = assert(takhin.snapshot_manager(logdir))
    local fx = { model = {}, snaps = {}, label_of = {} }
    local function snapshot_at(n)
        local labels = {}
        for label, at in pairs(spec.snapshots) do
            if at == n then labels[#labels + 1] = label end
        end
        table.sort(labels)
        for _, label in ipairs(labels) do
            local s = assert(sm:create(log, { label = label }))
            fx.snaps[label] = { id = s.id, high_water_mark = s.high_water_mark, model = extend(fx.model, {}) }
            fx.label_of[s.id] = label
        end
    end
    for o = 0, spec.records - 1 do
        snapshot_at(o)
        local r = derived(o)
        fx.model[o + 1] = r
        assert(log:append(r.key, r.value, r.timestamp) == o)
    end
    snapshot_at(spec.records)
    if spec.rewrite_from then
        assert(log:truncate(spec.rewrite_from))
        for o = spec.rewrite_from, spec.records - 1 do
            local r = derived(o, "B")
            fx.model[o + 1] = r
            assert(log:append(r.key, r.value, r.timestamp) == o)
        end
    end
    local segs = log:segments()
    assert(#segs >= 3, "the template should have several segments")
    fx.hwm = log:high_water_mark()
    fx.num_segments = #segs
    fx.second = { base = segs[2].base_offset, next = segs[2].next_offset }
    fx.room = LOG_OPTS.max_segment_size - segs[#segs].size
    fx.active_base = segs[#segs].base_offset
    assert(log:sync())
    log:close()
    sm:close()
    if spec.outside then
        local cmds = { "mkdir " .. q(root .. "/outside") }
        for _, ext in ipairs({ "log", "index", "timeindex" }) do
            local name = fs.segment_name(fx.active_base, ext)
            cmds[#cmds + 1] = "ln " .. q(logdir .. "/" .. name) .. " " .. q(root .. "/outside/" .. name)
        end
        assert(sh.sh(table.concat(cmds, " && ")), "ln")
    end
    fx.catalog = read_or_nil(logdir .. "/.snapshots/snapshots.json")
    fx.template = root
    fx.root = work .. "/run"
    fx.logdir = fx.root .. "/log"
    fx.snapdir = fx.logdir .. "/.snapshots"
    return fx
end

-- The bytes of the outside links, by name.
local function outside_bytes(fx)
    local t = {}
    for _, ext in ipairs({ "log", "index", "timeindex" }) do
        local name = fs.segment_name(fx.active_base, ext)
        t[name] = read_or_nil(fx.root .. "/outside/" .. name)
    end
    return t
end

-------------------------------------------------------------------------
-- The operations
-------------------------------------------------------------------------

-- Each operation has:
--   fixture     the template (build_template)
--   handles     what is open when it runs: log (a writer, sync =
--               "always"; shared mode with shared = true), sm (a
--               manager), sm_copy (a copy-mode manager)
--   undo        it cuts files back when it fails (the "!" cases)
--   setup(c)    before arming: c holds the fixture (c.fx) and the handles
--   run(c)      the operation
--   returned(c, ...)  for a success: nil, or what is wrong with its results
--   log(c, ok)  the log after it: a list of the states it may be in, each
--               { model, lo, hi }: the log holds model[1 .. h] for some h
--               in [lo, hi]
--   snaps(c, ok)  the snapshots after it, by label: "must" (listed),
--               "may", "gone"; "new" is the one the operation creates
--   target(c, ok)  (restores) the directory restored into: its path,
--               whether it is there, the model and high water mark of
--               what it holds
--   check(c, ok)  anything else (nil, or what is wrong), run after the
--               operation, after the next append and after the reopen
--   again(c, log, sm)  the operation once more, after the checks; it must
--               succeed (again_target: what that one restored;
--               again_without_writer: the log is closed for it)

local OPS = {}
M.OPS = OPS

local function unchanged_log(c) return { { c.fx.model, c.fx.hwm, c.fx.hwm } } end

local function all_must(c)
    local t = {}
    for label in pairs(c.fx.snaps) do t[label] = "must" end
    return t
end

local function returned_true(_, v)
    if v ~= true then return "returned " .. tostring(v) .. ", not true" end
end

local function returned_offset(c, off)
    if off ~= c.fx.hwm then return "append returned " .. tostring(off) .. ", not " .. c.fx.hwm end
end

-- An append whose records were written and published before its fsync
-- failed keeps them (other handles may have read them already); its
-- message says so, and only then may they be there.
local function one_more_record(c, ok)
    local written = ok or (c.msg and c.msg:find("are written but may not survive a power loss", 1, true))
    local h = c.fx.hwm + (written and #c.recs or 0)
    -- A batch whose undo the disk refused too: the message names the
    -- records that may stay (a prefix of them, as the files say).
    local from, to = (not ok and c.msg or ""):match("offsets %[(%d+), (%d+)%) written before it may not all have been taken back")
    if from then return { { extend(c.fx.model, c.recs), tonumber(from), tonumber(to) } } end
    return { { extend(c.fx.model, c.recs), h, h } }
end

local function append_recs(c)
    local r = c.recs[1]
    return c.log:append(r.key, r.value, r.timestamp)
end

-- One record that fits the active segment and is longer than
-- index_interval_bytes, so that it writes an index entry too.
local function fitting_record(c)
    local size = math.min(c.fx.room, 200)
    assert(size > LOG_OPTS.index_interval_bytes, "the active segment has no room left")
    return sized(c.fx.hwm, size)
end

-- Appends are all or nothing: a failed one leaves no record behind.
OPS.append = {
    fixture = { records = 40, snapshots = { S1 = 30 } },
    handles = { log = true },
    undo = true,
    setup = function(c) c.recs = { fitting_record(c) } end,
    run = append_recs,
    returned = returned_offset,
    log = one_more_record,
    snaps = all_must,
}

-- The same in shared mode, where an append that needs no roll reserves
-- its place under the lock and writes outside it (csrc/log.c, "Shared
-- appends"): a failed write voids the reservation, and the files are cut
-- back by name.
OPS.append_shared = {
    fixture = OPS.append.fixture,
    handles = { log = true, shared = true },
    undo = true,
    setup = OPS.append.setup,
    run = append_recs,
    returned = returned_offset,
    log = one_more_record,
    snaps = all_must,
}

-- Five records, the third of which does not fit the active segment: the
-- batch rolls in its middle, so undoing it drops a whole new segment.
OPS.append_batch = {
    fixture = { records = 40, snapshots = { S1 = 30 } },
    handles = { log = true },
    undo = true,
    setup = function(c)
        local h, room = c.fx.hwm, c.fx.room
        local first = math.floor(room / 2)
        assert(first >= 60 and room - first - 30 >= 60, "the active segment has too little room for the batch")
        c.recs = { sized(h, first), sized(h + 1, room - first - 30), sized(h + 2, 300),
                   derived(h + 3), sized(h + 4, 200) }
        c.batch = {}
        for i, r in ipairs(c.recs) do c.batch[i] = { key = r.key, value = r.value, timestamp = r.timestamp } end
        c.segments = c.log:num_segments()
    end,
    run = function(c) return c.log:append_batch(c.batch) end,
    returned = function(c, first, last)
        if first ~= c.fx.hwm or last ~= c.fx.hwm + 4 then
            return ("append_batch returned %s, %s"):format(tostring(first), tostring(last))
        end
        if c.log:num_segments() <= c.segments then return "the batch did not roll" end
    end,
    log = one_more_record,
    snaps = all_must,
}

-- One record one byte too big for the room left: the append seals the
-- active segment (its trailer, fsyncs) and starts a new one.
OPS.roll = {
    fixture = { records = 40, snapshots = { S1 = 30 } },
    handles = { log = true },
    undo = true,
    setup = function(c)
        c.recs = { sized(c.fx.hwm, c.fx.room + 1) }
        c.segments = c.log:num_segments()
    end,
    run = append_recs,
    returned = function(c, off)
        if c.log:num_segments() ~= c.segments + 1 then return "the append did not roll" end
        return returned_offset(c, off)
    end,
    log = one_more_record,
    snaps = all_must,
}

-- Truncate into the middle of the second segment, which the snapshot S1
-- holds by hard link: the engine copies that segment before it cuts it,
-- and removes the newer segments.  A truncate is not all or nothing: one
-- that fails leaves a prefix of the old log, never less than the cut.
OPS.truncate = {
    fixture = { records = 50, snapshots = { S1 = 50 } },
    handles = { log = true },
    setup = function(c)
        local s = c.fx.second
        c.cut = s.base + math.floor((s.next - s.base) / 2)
        assert(c.cut > s.base and c.cut < s.next)
    end,
    run = function(c) return c.log:truncate(c.cut) end,
    returned = returned_true,
    log = function(c, ok)
        return { { c.fx.model, c.cut, ok and c.cut or c.fx.hwm } }
    end,
    snaps = all_must,
    again = function(c, log)
        if log:high_water_mark() > c.cut then return log:truncate(c.cut) end
        return true
    end,
}

-- An append to a log whose active segment's three files have other hard
-- links (outside/): the engine copies each before writing to it (copy,
-- fsync, rename, fsync the directory).  Whatever fails, the outside files
-- keep their bytes -- after the failed append, after the next append on
-- the same handle and after a reopen.  Issue 9, item 5: when the
-- directory fsync fails after a rename, the handle must not stay on the
-- old inode, or the next append writes into outside/.
OPS.unshare = {
    fixture = { records = 40, snapshots = { S1 = 30 }, outside = true },
    handles = { log = true },
    undo = true,
    setup = function(c)
        c.recs = { fitting_record(c) }
        c.outside = outside_bytes(c.fx)
    end,
    run = append_recs,
    returned = returned_offset,
    log = one_more_record,
    snaps = all_must,
    check = function(c)
        for name, bytes in pairs(outside_bytes(c.fx)) do
            if bytes ~= c.outside[name] then
                return ("outside/%s changed: %d bytes, it had %d"):format(name, #(bytes or ""),
                                                                        #(c.outside[name] or ""))
            end
        end
    end,
}

-- A create that fails after its commit point (the rename of .tmp-<id> to
-- snapshot-<id>: fsyncing the snapshot directory, publishing the catalog)
-- leaves a complete snapshot, which the catalog takes back in; before it,
-- nothing.
local function create_op(handle)
    return {
        fixture = { records = 40, snapshots = { S1 = 30 } },
        handles = { log = true, [handle] = true },
        run = function(c) return c[handle]:create(c.log, { label = "new" }) end,
        returned = function(c, s)
            if type(s) ~= "table" or s.high_water_mark ~= c.fx.hwm or s.label ~= "new" then
                return "create returned " .. tostring(s and s.high_water_mark)
            end
        end,
        log = unchanged_log,
        snaps = function(_, ok) return { S1 = "must", new = ok and "must" or "may" } end,
    }
end

OPS.create = create_op("sm")
OPS.create_copy = create_op("sm_copy")

-- Restores of S1 (30 records: two sealed segments and part of the
-- active one) into a new directory.  Nothing outside that directory
-- changes, so a restore that fails can and must leave the target as it
-- was: missing.  The log was truncated to 10 after S1 and written again,
-- so that the old log and a restored one differ from offset 10 on.
local RESTORE_FIXTURE = { records = 40, snapshots = { S1 = 30 }, rewrite_from = 10 }

local function restore_op(opts, hwm)
    local function target(c, name, present)
        return { path = c.fx.root .. "/" .. name, name = name, present = present,
                 model = c.fx.snaps.S1.model, hwm = hwm or c.fx.snaps.S1.high_water_mark }
    end
    return {
        fixture = RESTORE_FIXTURE,
        handles = { sm = true },
        run = function(c) return c.sm:restore(c.fx.snaps.S1.id, c.fx.root .. "/restored", opts) end,
        returned = returned_true,
        log = unchanged_log,
        snaps = all_must,
        target = function(c, ok) return target(c, "restored", ok) end,
        again = function(c) return c.sm:restore(c.fx.snaps.S1.id, c.fx.root .. "/again", opts) end,
        again_target = function(c) return target(c, "again", true) end,
    }
end

OPS.restore = restore_op(nil, nil)
OPS.restore_upto = restore_op({ upto_offset = 20 }, 20)

-- In place, with no writer open.  Before the commit point (the rename of
-- .restore-tmp-* to .restore-ready) a failure leaves the old log.  After
-- it the old files are being removed and the new ones moved in: there is
-- no going back, and a failure leaves the committed restore in
-- .restore-ready, which the next writer to open the log completes.
-- Either way, never a mix.
local function inplace_op(opts, hwm)
    return {
        fixture = RESTORE_FIXTURE,
        handles = { sm = true },
        run = function(c) return c.sm:restore(c.fx.snaps.S1.id, c.fx.logdir, opts) end,
        returned = returned_true,
        log = function(c, ok)
            local restored = { c.fx.snaps.S1.model, hwm, hwm }
            if ok then return { restored } end
            return { { c.fx.model, c.fx.hwm, c.fx.hwm }, restored }
        end,
        snaps = all_must,
        again = function(c) return c.sm:restore(c.fx.snaps.S1.id, c.fx.logdir, opts) end,
        again_without_writer = true,
    }
end

OPS.restore_replace = inplace_op({ replace = true }, 30)
OPS.restore_replace_upto = inplace_op({ replace = true, upto_offset = 20 }, 20)

-- Delete S2 of three.
OPS.delete = {
    fixture = { records = 40, snapshots = { S1 = 10, S2 = 20, S3 = 30 } },
    handles = { sm = true },
    run = function(c) return c.sm:delete(c.fx.snaps.S2.id) end,
    returned = returned_true,
    log = unchanged_log,
    snaps = function(_, ok) return { S1 = "must", S2 = ok and "gone" or "may", S3 = "must" } end,
    again = function(c, _, sm)
        if sm:get(c.fx.snaps.S2.id) then return sm:delete(c.fx.snaps.S2.id) end
        return true
    end,
}

-- Keep the newest of four: S1, S2 and S3 go in one metadata update.  A
-- cleanup that fails may have deleted some of them, never S4.  (Issue 9,
-- item 21: one victim that cannot be renamed stays listed; the others
-- still go -- the spec checks that from the survivors each run reports.)
OPS.cleanup = {
    fixture = { records = 40, snapshots = { S1 = 10, S2 = 20, S3 = 30, S4 = 40 } },
    handles = { sm = true },
    run = function(c) return c.sm:cleanup({ max_snapshots = 1 }) end,
    returned = function(_, n)
        if n ~= 3 then return "cleanup returned " .. tostring(n) .. ", not 3" end
    end,
    log = unchanged_log,
    snaps = function(_, ok)
        local victim = ok and "gone" or "may"
        return { S1 = victim, S2 = victim, S3 = victim, S4 = "must" }
    end,
}

-- Listing four snapshots: all of them, each as it was made, or a failure
-- -- never part of the list (issue 9, item 21: out of memory while
-- reading the snapshot directory).
OPS.list = {
    fixture = { records = 40, snapshots = { S1 = 10, S2 = 20, S3 = 30, S4 = 40 } },
    handles = { sm = true },
    run = function(c) return c.sm:list() end,
    returned = function(c, list)
        if type(list) ~= "table" then return "list returned " .. tostring(list) end
        if #list ~= 4 then return ("list returned %d snapshots of 4"):format(#list) end
        for _, s in ipairs(list) do
            local label = c.fx.label_of[s.id]
            if not label then return "list returned an unknown snapshot " .. tostring(s.id) end
            if s.damaged then return "list returned " .. label .. " as damaged" end
            if s.high_water_mark ~= c.fx.snaps[label].high_water_mark or s.label ~= label then
                return ("list returned %s with high water mark %s and label %s"):format(label,
                    tostring(s.high_water_mark), tostring(s.label))
            end
        end
    end,
    log = unchanged_log,
    snaps = all_must,
}

-------------------------------------------------------------------------
-- The checks
-------------------------------------------------------------------------

local LABELS = { "S1", "S2", "S3", "S4", "new" }

-- What came back: true (a success), false and the code and message (a
-- clean failure), or nil and what is wrong with it.
local function outcome(r)
    if not r[1] then return nil, "raised: " .. tostring(r[2]) end
    if r[2] ~= nil then return true end
    local msg, code = r[3], r[4]
    if type(msg) ~= "string" or type(code) ~= "string" then
        return nil, "returned " .. show(nil, msg, code)
    end
    if not M.CODES[code] then return nil, ("failed with %s: %s"):format(code, msg) end
    return false, code, msg
end

-- The message names the run's directory (every path in it does) or the
-- snapshot involved.
local function names_something(c, msg)
    if msg:find(c.fx.root, 1, true) then return true end
    for _, s in pairs(c.fx.snaps) do
        if msg:find(s.id, 1, true) then return true end
    end
    return false
end

-- snapshots.json as the operation left it: as it was, or listing exactly
-- the snapshot directories there are -- never a catalog that forgets a
-- snapshot still on disk or lists one that is gone (it is derived data,
-- but a manager trusts it while it matches the directories).
local function check_catalog(c, paths, bad)
    local text = read_or_nil(c.fx.snapdir .. "/snapshots.json")
    if text == nil or text == c.fx.catalog then return end
    local ok, cat = pcall(json.decode, text)
    if not ok or type(cat) ~= "table" or type(cat.snapshots) ~= "table" then
        return bad("model", "snapshots.json does not parse: " .. text:sub(1, 200))
    end
    local dirs, listed = snapshot_dirs(paths), {}
    for _, s in ipairs(cat.snapshots) do
        listed[s.id] = true
        if not dirs[s.id] then bad("model", "snapshots.json lists " .. tostring(s.id) .. ", which has no directory") end
    end
    for id in pairs(dirs) do
        if not listed[id] then bad("model", "snapshots.json leaves out snapshot-" .. id .. ", which is there") end
    end
end

-- The snapshots, through a new manager: each listed one is allowed by
-- `want`, is not damaged, has the high water mark it was made with and
-- verifies; every "must" is listed; the directories are the listed ones.
-- Sets c.survivors; returns the manager.
local function check_snapshots(c, want, bad)
    local sm, msg, code = takhin.snapshot_manager(c.fx.logdir)
    if not sm then return bad("next", "snapshot_manager: " .. show(msg, code)) end
    local list
    list, msg, code = sm:list()
    if not list then
        bad("next", "list: " .. show(msg, code))
        return sm
    end
    local seen, ids = {}, {}
    for _, s in ipairs(list) do
        local label = c.fx.label_of[s.id] or s.label or ("unlabelled " .. s.id)
        seen[label] = s
        ids[s.id] = true
        if want[label] ~= "must" and want[label] ~= "may" then
            bad("model", "snapshot " .. label .. " (" .. s.id .. ") is listed")
        end
        if s.damaged then bad("model", "snapshot " .. label .. " is listed as damaged") end
        local hwm = label == "new" and c.fx.hwm or (c.fx.snaps[label] or {}).high_water_mark
        if not s.damaged and s.high_water_mark ~= hwm then
            bad("model", ("snapshot %s has high water mark %s, not %s"):format(label,
                tostring(s.high_water_mark), tostring(hwm)))
        end
        local vok, vmsg, vcode = sm:verify(s.id)
        if not vok then bad("model", ("snapshot %s does not verify: %s"):format(label, show(vmsg, vcode))) end
    end
    c.survivors = {}
    for _, label in ipairs(LABELS) do
        if want[label] == "must" and not seen[label] then bad("model", "snapshot " .. label .. " is missing") end
        if seen[label] then c.survivors[#c.survivors + 1] = label end
    end
    for id in pairs(snapshot_dirs(survey(c.fx.root))) do
        if not ids[id] then bad("model", "snapshot-" .. id .. " is on disk but not listed") end
    end
    return sm
end

-- A restore's target: there or not as `t` says; when there, a log
-- holding the snapshot's first t.hwm records that takes an append.
local function check_restored(c, t, paths, bad, what)
    local present = has(paths, t.name)
    if present ~= t.present then
        return bad(what, t.path .. (present and " exists after a failed restore" or " is missing"))
    end
    if not present then return end
    local log, msg, code = takhin.open_log({ dir = t.path, max_segment_size = LOG_OPTS.max_segment_size })
    if not log then return bad(what, "open the restored log: " .. show(msg, code)) end
    local why = mismatch(log, t.model, t.hwm)
    if why then bad(what, "the restored log: " .. why) end
    local r = derived(t.hwm)
    local off
    off, msg, code = log:append(r.key, r.value, r.timestamp)
    if off ~= t.hwm then bad("next", "append to the restored log: " .. show(off, msg, code)) end
    log:close()
end

-- A writer's view: in one of the states the model allows (a list of
-- { model, lo, hi }); then one more record, appended and read back,
-- which must land where one of those states ends -- also when the view
-- was wrong.  Returns the one state the log is in now, with that record.
local function check_writer(log, states, bad, where, label)
    local h, seen, whys = log:high_water_mark(), nil, {}
    for _, st in ipairs(states) do
        local why
        if h < st[2] or h > st[3] then
            why = ("high_water_mark is %d, not in [%d, %d]"):format(h, st[2], st[3])
        else
            why = mismatch(log, st[1], h)
        end
        if not why then seen = st break end
        whys[#whys + 1] = why
    end
    if not seen then bad("model", where .. ": " .. table.concat(whys, "; or ")) end
    local rec = { key = label, value = "appended " .. where, timestamp = ts_for(h) }
    local off, msg, code = log:append(rec.key, rec.value, rec.timestamp)
    if not off then
        bad("next", where .. ": the next append: " .. show(off, msg, code))
        return states
    end
    local into
    for _, st in ipairs(seen and { seen } or states) do
        if off >= st[2] and off <= st[3] and (not seen or off == h) then into = st break end
    end
    if not into then
        bad("model", ("%s: the next append went to offset %d, where the log had %d records"):format(where, off, h))
        into = states[1]
    end
    local got = log:read(off)
    if not got or got.value ~= rec.value then bad("next", where .. ": the next append does not read back") end
    local m = {}
    for i = 1, off do m[i] = into[1][i] end
    m[off + 1] = rec
    return { { m, off + 1, off + 1 } }
end

-- One run: a fresh copy of the template, the handles, the case's fault
-- armed around the operation, then every check with nothing armed.
-- case nil: the measuring run.  Returns the outcome, the code, the problems found,
-- the calls counted and the snapshots listed afterwards.
local function one_run(fx, op, case)
    local problems = {}
    local function bad(what, text) problems[#problems + 1] = { what, text } end
    local c = { fx = fx }
    if op.handles.log then
        c.log = logs.open({ dir = fx.logdir, sync = "always", shared = op.handles.shared }, LOG_OPTS)
    end
    if op.handles.sm then c.sm = assert(takhin.snapshot_manager(fx.logdir)) end
    if op.handles.sm_copy then c.sm_copy = assert(takhin.snapshot_manager(fx.logdir, { mode = "copy" })) end
    if op.setup then op.setup(c) end

    core._fault_reset()
    local kind = case and case.kind
    if case then
        core._fault_arm(kind, case.n, M.ERRNO[kind], case.persist)
        if case.no_undo then core._fault_arm("ftruncate", 1, M.ERRNO.ftruncate, true) end
    end
    local r = pack(pcall(op.run, c))
    local counts = {}
    for _, k in ipairs(M.KINDS) do counts[k] = core._fault_calls(k) end
    core._fault_reset()

    -- 1. It succeeded, or failed with nil, a message naming a path or id,
    --    and the code of what failed.
    local ok, code, msg = outcome(r)
    c.msg = msg
    if ok == nil then bad("broken", code) end
    if ok and op.returned then
        local why = op.returned(c, unpack(r, 2, r.n))
        if why then bad("model", why) end
    end
    if ok == false then
        if not names_something(c, msg) then bad("message", ("%s names no path or id: %s"):format(code, msg)) end
        if kind and code ~= M.CODE_OF[M.ERRNO[kind]] then
            bad("code", ("%s failing with %s came back as %s: %s"):format(kind, M.ERRNO[kind], code, msg))
        end
    end
    local succeeded = ok == true

    -- 2. Nothing half-made is left; the catalog agrees with the directories.
    local paths = survey(fx.root)
    for _, p in ipairs(paths) do
        if is_leftover(p) then bad("leftover", p) end
    end
    check_catalog(c, paths, bad)
    local function check_op(where)
        local why = op.check and op.check(c, succeeded)
        if why then bad("model", where .. why) end
    end
    check_op("")

    -- 3. The log, through the handle the operation ran on, then through a
    --    new one; each takes one more record.
    local states = op.log(c, succeeded)
    if c.log then
        states = check_writer(c.log, states, bad, "the same handle", "next-1")
        check_op("after the next append: ")
        c.log:close()
    end
    local log, lmsg, lcode = takhin.open_log({ dir = fx.logdir, sync = "always",
                                               max_segment_size = LOG_OPTS.max_segment_size,
                                               index_interval_bytes = LOG_OPTS.index_interval_bytes })
    if not log then
        bad("next", "reopen the log: " .. show(lmsg, lcode))
    else
        check_writer(log, states, bad, "reopened", "next-2")
        check_op("after the reopen: ")
    end
    if op.target then check_restored(c, op.target(c, succeeded), paths, bad, "model") end

    -- 4. The snapshots, through a new manager; the operation once more;
    --    one more snapshot.
    local sm = check_snapshots(c, op.snaps(c, succeeded), bad)
    if op.again then
        if log and op.again_without_writer then
            log:close()
            log = nil
        end
        local aok, amsg, acode = op.again(c, log, sm)
        if not aok then bad("next", "the operation once more: " .. show(amsg, acode)) end
        if op.again_target then check_restored(c, op.again_target(c), survey(fx.root), bad, "next") end
    end
    if sm then
        if not log then log = takhin.open_log({ dir = fx.logdir }) end
        local s, smsg, scode = log and sm:create(log, { label = "next" })
        if not s then
            bad("next", "the next snapshot: " .. show(smsg, scode))
        else
            local vok, vmsg, vcode = sm:verify(s.id)
            if not vok then bad("next", "the next snapshot does not verify: " .. show(vmsg, vcode)) end
        end
        sm:close()
    end
    if log then log:close() end
    for _, key in ipairs({ "sm", "sm_copy" }) do
        if c[key] then c[key]:close() end
    end
    return ok, code, problems, counts, c.survivors
end

-------------------------------------------------------------------------
-- work: every run of one operation
-------------------------------------------------------------------------

-- The cases, from the calls counted: for every kind and every N up to its
-- count, the Nth call fails once ("write"); for the system calls, it and
-- every later one of its kind fail -- the disk stays full or broken
-- ("write*"); for the operations that cut files back when they fail
-- (undo), the Nth call fails and no ftruncate works, so the undo fails
-- too ("write!").
local function cases_of(op, counts)
    local cases = {}
    local function add(suffix, kind, extra)
        for n = 1, counts[kind] do
            local c = { token = kind .. suffix, kind = kind, n = n }
            for k, v in pairs(extra) do c[k] = v end
            cases[#cases + 1] = c
        end
    end
    for _, kind in ipairs(M.KINDS) do add("", kind, {}) end
    for _, kind in ipairs(M.KINDS) do
        if kind ~= "malloc" then add("*", kind, { persist = true }) end
    end
    if op.undo then
        for _, kind in ipairs(M.KINDS) do
            if kind ~= "ftruncate" then add("!", kind, { no_undo = true }) end
        end
    end
    return cases
end

local function work(name, dir, from_token, from_n)
    local op = assert(OPS[name], "unknown operation " .. tostring(name))
    shell.start(dir)
    local fx = build_template(dir, op.fixture)
    local last = { "-", 0 }
    local function start_run(token, n)
        local open = fresh_copy(fx)
        if #open > 0 then
            emit("bad", last[1], last[2], "fd", "descriptors left open after the run: " .. table.concat(open, " "))
        end
        last = { token or "-", n }
        collectgarbage()
    end

    start_run(nil, 0)
    local ok, code, problems, counts = one_run(fx, op, nil)
    if ok ~= true then emit("bad", "-", 0, "broken", "it fails with no fault armed: " .. tostring(code)) end
    for _, p in ipairs(problems) do emit("bad", "-", 0, p[1], p[2]) end
    for _, k in ipairs(M.KINDS) do emit("calls", k, counts[k]) end
    local cases = cases_of(op, counts)
    emit("cases", #cases)

    local runs, skipping = 0, from_token ~= nil
    for _, case in ipairs(cases) do
        if skipping then
            skipping = not (case.token == from_token and case.n == from_n)
        else
            start_run(case.token, case.n)
            emit("begin", case.token, case.n)
            local rok, rcode, rproblems, _, survivors = one_run(fx, op, case)
            emit("run", case.token, case.n, rok and "ok" or "failed", rok and "-" or tostring(rcode),
                 survivors and table.concat(survivors, ",") or "")
            for _, p in ipairs(rproblems) do emit("bad", case.token, case.n, p[1], p[2]) end
            runs = runs + 1
        end
    end
    start_run(nil, 0)
    shell.stop()
    emit("done", runs)
end

-------------------------------------------------------------------------
-- supervise: work to the end, across crashes and hangs
-------------------------------------------------------------------------

-- The lines of a crash report worth repeating: everything but the
-- stack frames, and the first few frames.
local function crash_text(lines)
    local t, frames = {}, 0
    for _, line in ipairs(lines) do
        if line:find("^%s*#%d+ ") then
            frames = frames + 1
            if frames <= 6 then t[#t + 1] = line end
        elseif line:find("%S") and #t < 30 then
            t[#t + 1] = line
        end
    end
    return table.concat(t, " | ")
end

local function supervise(lua, script, name, dir, seconds)
    local from, crashes, calls_seen = nil, 0, false
    while true do
        local args = { "work", name, dir }
        if from then args[4], args[5] = from[1], tostring(from[2]) end
        for i, a in ipairs(args) do args[i] = q(a) end
        local cmd = ("timeout -s KILL %d %s %s %s 2>&1; echo \"@@exit=$?\""):format(
            seconds, q(lua), q(script), table.concat(args, " "))
        local p = assert(io.popen(cmd, "r"))
        local began, finished, tail = nil, false, {}
        for line in p:lines() do
            local word = line:match("^(%a+) ")
            local kind, n = line:match("^%a+ (%S+) (%S+)")
            local status = line:match("^@@exit=(%d+)")
            if status then
                -- A sanitizer's report at exit (a leak) comes after "done".
                if not finished or status ~= "0" then
                    local how = status == "137" and "killed (a crash, or it hung for " .. seconds .. " s)"
                                or ("exit status " .. status)
                    if finished then how = how .. " after it finished" end
                    emit("crash", began and began[1] or "-", began and began[2] or 0,
                         how .. ": " .. crash_text(tail))
                end
            elseif word == "calls" or word == "cases" then
                if not calls_seen then io.stdout:write(line, "\n") end
            else
                if word == "begin" then began, tail = { kind, tonumber(n) }, {} end
                if word == "done" then finished = true end
                if word ~= "begin" and word ~= "run" and word ~= "bad" and word ~= "done" then
                    if #tail < 200 then tail[#tail + 1] = line end
                end
                io.stdout:write(line, "\n")
            end
            io.stdout:flush()
        end
        p:close()
        calls_seen = true
        if finished then return end
        crashes = crashes + 1
        if not began or crashes > 200 then
            emit("crash", "-", 0, "giving up")
            return
        end
        from = began
    end
end

function M.main(argv)
    io.stdout:setvbuf("line")
    if argv[1] == "work" then
        return work(argv[2], argv[3], argv[4], tonumber(argv[5]))
    elseif argv[1] == "supervise" then
        return supervise(argv[2], argv[3], argv[4], argv[5], tonumber(argv[6]))
    end
    error("usage: work <op> <dir> [<kind> <n>] | supervise <lua> <script> <op> <dir> <seconds>")
end

return M
