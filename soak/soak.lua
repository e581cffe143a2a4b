-- soak/soak.lua: a long randomized run of takhin against a model of what
-- the log and its snapshots must hold.  `make soak`; see soak/README.md.
--
-- Environment: SOAK_SECONDS (1800), SOAK_DIR (a new temporary directory),
-- SOAK_SEED (the clock), SOAK_RATE (writer bytes/s, 1500000), SOAK_LOG_CAP
-- (bytes, 24 MiB), SOAK_DISK_LIMIT (bytes, 500 MB), SOAK_VERBOSE (1: print
-- every step), TAKHIN_LUA (lua5.4).  LUA_PATH/LUA_CPATH must find takhin
-- (the Makefile sets them).
--
-- Exit status: 0 when no invariant was violated, 1 otherwise.

SOAK_LIBRARY = true
local here = (arg[0]:match("^(.*)/[^/]*$") or ".")
local R = dofile(here .. "/child.lua")
SOAK_LIBRARY = nil
local C = dofile(here .. "/../bench/common.lua")   -- the shell, the clock
local proc = require("helpers.proc")   -- spec/helpers/proc.lua (common.lua puts spec/ on the path)

local takhin = require("takhin")

local function env_num(name, default)
    local v = tonumber(os.getenv(name) or "")
    return v or default
end

local SECONDS = env_num("SOAK_SECONDS", 1800)
local SEED = math.tointeger(env_num("SOAK_SEED", os.time())) or os.time()
local RATE = env_num("SOAK_RATE", 1500000)
local LOG_CAP = env_num("SOAK_LOG_CAP", 24 * 1024 * 1024)
local DISK_LIMIT = env_num("SOAK_DISK_LIMIT", 500 * 1000 * 1000)
local MAX_SNAPSHOTS = 8
local VERBOSE = os.getenv("SOAK_VERBOSE") == "1"
local LUA = os.getenv("TAKHIN_LUA")
if LUA == nil or LUA == "" then LUA = "lua5.4" end

-------------------------------------------------------------------------
-- Shell helpers
-------------------------------------------------------------------------

local q, sh, capture = C.q, C.sh, C.capture
local getpid, alive = proc.getpid, proc.alive
local function disk_usage(dir)
    return tonumber(capture("du -sb " .. q(dir) .. " 2>/dev/null"):match("^(%d+)")) or 0
end

-------------------------------------------------------------------------
-- Set-up
-------------------------------------------------------------------------

local WORK = os.getenv("SOAK_DIR")
local own_work = false
if WORK == nil or WORK == "" then
    WORK = C.mktemp_dir("takhin-soak.")
    own_work = true
else
    assert(sh("mkdir -p " .. q(WORK)), "cannot create " .. WORK)
    assert(capture("ls -A " .. q(WORK)) == "", "SOAK_DIR " .. WORK .. " is not empty")
end
local LOG = WORK .. "/log"
local PARENT = getpid()
math.randomseed(SEED)

local t_start = R.now()
local deadline = t_start + SECONDS

local counts = setmetatable({}, { __index = function() return 0 end })
local function count(name, n) counts[name] = counts[name] + (n or 1) end
local violations = {}
local step, op_name = 0, "setup"

local function violation(fmt, ...)
    local msg = ("step %d (%s): " .. fmt):format(step, op_name, ...)
    violations[#violations + 1] = msg
    io.stdout:write("VIOLATION: ", msg, "\n")
    io.stdout:flush()
end

local function note(fmt, ...)
    if VERBOSE then
        io.stdout:write(("[%7.1fs step %d] "):format(R.now() - t_start, step), fmt:format(...), "\n")
        io.stdout:flush()
    end
end

-------------------------------------------------------------------------
-- The model: which generation wrote each offset.
--
-- `ranges` is an array of { from = offset, gen = g }, ascending: offset o
-- holds the record of the generation of the last range with from <= o.
-- Every writer incarnation gets a new generation, as do restores and
-- truncations, so a stale record (an old generation at an offset that was
-- rewritten) never matches.
-------------------------------------------------------------------------

local ranges = {}
local next_gen = 1
local floor_hwm = 0          -- every acknowledged offset is below this
local function new_gen()
    next_gen = next_gen + 1
    return next_gen
end

local function gen_at(rs, o)
    local lo, hi, found = 1, #rs, nil
    while lo <= hi do
        local mid = (lo + hi) // 2
        if rs[mid].from <= o then found = rs[mid]; lo = mid + 1 else hi = mid - 1 end
    end
    return found and found.gen or nil
end

local function clip(rs, hwm)
    local out = {}
    for _, r in ipairs(rs) do
        if r.from < hwm then out[#out + 1] = { from = r.from, gen = r.gen } end
    end
    return out
end

-- Check one record against a model; returns nil or a description.
local function bad_record(rs, rec, o)
    if rec == nil then return "missing" end
    if rec.offset ~= o then return ("offset %s instead of %d"):format(tostring(rec.offset), o) end
    local g = gen_at(rs, o)
    if g == nil then return "no generation in the model" end
    if rec.value ~= R.value(o, g) then
        return ("value %q... (%d bytes), expected generation %d (%d bytes)"):format(
            tostring(rec.value):sub(1, 24), #tostring(rec.value), g, #R.value(o, g))
    end
    if rec.key ~= R.key(o, g) then return ("key %s, expected %s"):format(tostring(rec.key), tostring(R.key(o, g))) end
    if rec.timestamp ~= R.ts(o, g) then return ("timestamp %s, expected %d"):format(tostring(rec.timestamp), R.ts(o, g)) end
    return nil
end

-- Every record of log in [from, to) matches the model; returns the number
-- checked.  `what` names the log in messages.
local function verify_records(log, rs, from, to, what)
    local expect, checked, reported = from, 0, false
    local ok, err = pcall(function()
        for rec in log:records(from, to) do
            local bad = bad_record(rs, rec, expect)
            if bad then
                violation("%s: record %d: %s", what, expect, bad)
                reported = true
                return
            end
            expect = expect + 1
            checked = checked + 1
        end
    end)
    if not ok then
        violation("%s: reading records [%d, %d) failed at %d: %s", what, from, to, expect, tostring(err))
    elseif not reported and expect ~= to then
        violation("%s: records [%d, %d) ended at %d", what, from, to, expect)
    end
    count("records checked", checked)
    return checked
end

-------------------------------------------------------------------------
-- The writer child
-------------------------------------------------------------------------

local child = nil            -- { pid, gen, ack, pos, next, started, stop, out }
local incarnation = 0

-- snapshots we know: id -> { hwm, base, ranges, bad }
local snaps = {}
local snap_count = 0
local function register_snapshot(id, hwm, base, origin)
    if snaps[id] then
        if snaps[id].hwm ~= hwm then
            violation("snapshot %s: high water mark %d, %s said %d", id, snaps[id].hwm, origin, hwm)
        end
        return
    end
    snaps[id] = { hwm = hwm, base = base or 0, ranges = clip(ranges, hwm), origin = origin }
    snap_count = snap_count + 1
end

-- Read what the child acknowledged since last time.
local function sync_acks()
    if not child then return end
    local f = io.open(child.ack, "rb")
    if not f then return end
    f:seek("set", child.pos)
    local data = f:read("a") or ""
    f:close()
    local last_nl = data:match(".*()\n")
    if not last_nl then return end
    child.pos = child.pos + last_nl
    for line in data:sub(1, last_nl):gmatch("([^\n]*)\n") do
        local kind, rest = line:match("^(%a) ?(.*)$")
        if kind == "s" then
            local h = math.tointeger(tonumber(rest))
            if h < floor_hwm then
                violation("writer %d opened the log at high water mark %d, below the acknowledged %d",
                          child.gen, h, floor_hwm)
            end
            -- offsets from h on belong to this incarnation
            local keep = {}
            for _, r in ipairs(ranges) do if r.from < h then keep[#keep + 1] = r end end
            keep[#keep + 1] = { from = h, gen = child.gen }
            ranges = keep
            child.next = h
            child.started = true
        elseif kind == "a" then
            local f1, l1 = rest:match("^(%d+) (%d+)$")
            f1, l1 = math.tointeger(tonumber(f1)), math.tointeger(tonumber(l1))
            if f1 ~= child.next or l1 < f1 then
                violation("writer %d acknowledged [%d, %d], expected to start at %s",
                          child.gen, f1, l1, tostring(child.next))
            end
            child.next = l1 + 1
            if l1 + 1 > floor_hwm then floor_hwm = l1 + 1 end
            count("records acknowledged", l1 - f1 + 1)
            count(f1 == l1 and "appends (single)" or "appends (batch)")
        elseif kind == "n" then
            local id, hwm = rest:match("^(%S+) (%d+)$")
            register_snapshot(id, math.tointeger(tonumber(hwm)), 0, "writer")
            count("snapshots by the writer")
        elseif kind == "x" then
            child.clean_exit = true
        elseif kind == "e" then
            violation("writer %d failed: %s", child.gen, rest)
        end
    end
end

local function spawn_child()
    assert(not child or not alive(child.pid))
    incarnation = incarnation + 1
    local gen = new_gen()
    local ack = ("%s/ack.%d"):format(WORK, incarnation)
    local stop = ("%s/stop.%d"):format(WORK, incarnation)
    local out = ("%s/child.%d.out"):format(WORK, incarnation)
    local path, cpath = os.getenv("LUA_PATH") or "", os.getenv("LUA_CPATH") or ""
    local rate = RATE * (0.25 + math.random() * 1.5)
    local args = { LOG, ack, gen, SEED * 1000 + incarnation, stop, ("%d"):format(math.floor(rate)),
                   math.random(3) == 1 and "1" or "0", math.random(10) == 1 and "1" or "0", PARENT }
    local parts = { "env", "LUA_PATH=" .. q(path), "LUA_CPATH=" .. q(cpath),
                    q(LUA), q(here .. "/child.lua") }
    for _, a in ipairs(args) do parts[#parts + 1] = q(a) end
    local cmd = "sh -c " .. q("exec " .. table.concat(parts, " ")) .. " </dev/null >" .. q(out) .. " 2>&1 & echo $!"
    local pid = math.tointeger(tonumber(capture(cmd):match("%d+")))
    assert(pid, "could not start the writer")
    child = { pid = pid, gen = gen, ack = ack, pos = 0, stop = stop, out = out,
              snapshots = args[7] == "1", sync = args[8] == "1" }
    count("writer starts")
    note("writer %d started (pid %d, gen %d, rate %d, snapshots %s, sync %s)", incarnation, pid, gen,
         math.floor(rate), args[7], args[8])
end

local function wait_dead(pid, seconds)
    local until_t = R.now() + seconds
    while alive(pid) do
        if R.now() > until_t then return false end
        R.sleep(0.01)
    end
    return true
end

local function child_alive() return child ~= nil and alive(child.pid) end

local function child_output()
    local f = io.open(child.out, "rb")
    if not f then return "" end
    local s = f:read("a")
    f:close()
    return s
end

-- SIGKILL the writer (at a random moment: after a random pause).
local function kill_child(pause)
    if not child_alive() then return false end
    if pause then R.sleep(math.random() * 0.3) end
    sh("kill -9 " .. child.pid .. " 2>/dev/null")
    if not wait_dead(child.pid, 30) then violation("writer pid %d did not die after SIGKILL", child.pid) end
    count("kills (SIGKILL)")
    sync_acks()
    return true
end

-- Ask the writer to close the log and exit.
local function stop_child()
    if not child_alive() then return false end
    local f = assert(io.open(child.stop, "w"))
    f:close()
    if not wait_dead(child.pid, 60) then
        violation("writer pid %d did not stop within 60 s", child.pid)
        sh("kill -9 " .. child.pid .. " 2>/dev/null")
        wait_dead(child.pid, 30)
    end
    sync_acks()
    if not child.clean_exit then
        violation("writer %d stopped without closing cleanly: %s", child.gen, child_output())
    end
    count("writer clean stops")
    return true
end

-- The writer must be gone, one way or the other.
local function no_writer()
    if child_alive() then
        if math.random(2) == 1 then kill_child(true) else stop_child() end
    end
    sync_acks()
end

-------------------------------------------------------------------------
-- Followers and managers
-------------------------------------------------------------------------

local follower = nil
local function open_follower()
    local log, msg, code = takhin.open_log(R.open_opts(LOG, { readonly = true }))
    if not log then
        violation("open read-only: %s %s", tostring(msg), tostring(code))
        return nil
    end
    count("follower opens")
    return log
end
local function close_follower()
    if follower then follower:close(); follower = nil end
end

local managers = {}
local function manager(mode, reopen)
    if not managers[mode] or reopen then
        if managers[mode] then managers[mode]:close(); managers[mode] = nil end
        local sm, msg, code = takhin.snapshot_manager(LOG, { mode = mode })
        if not sm then
            violation("snapshot_manager(%s): %s %s", mode, tostring(msg), tostring(code))
            return nil
        end
        managers[mode] = sm
        count("manager opens")
    end
    return managers[mode]
end

-------------------------------------------------------------------------
-- Checks run after every step
-------------------------------------------------------------------------

local last_hwm = 0
local reset_allowed = false      -- set by an in-place restore or a truncate

local function check_log()
    if not follower then follower = open_follower() end
    if not follower then return end
    sync_acks()
    local acked = floor_hwm
    local ok, hwm, base = pcall(function() return follower:high_water_mark(), follower:base_offset() end)
    if not ok then
        violation("follower: %s", tostring(hwm))
        close_follower()
        return
    end
    sync_acks()       -- the start line of a writer whose records we may read
    if hwm < acked then
        violation("high water mark %d is below the last acknowledged offset + 1 = %d", hwm, acked)
    end
    if hwm < last_hwm and not reset_allowed then
        violation("high water mark went back from %d to %d", last_hwm, hwm)
    end
    if base ~= 0 then violation("base offset %d, expected 0", base) end
    last_hwm, reset_allowed = hwm, false
    verify_records(follower, ranges, base, hwm, "log")
    count("log checks")
end

local bad_snaps = {}
local function check_snapshots()
    local sm = manager("link")
    if not sm then return end
    local list = sm:list()
    sync_acks()
    local listed = {}
    for _, s in ipairs(list) do
        listed[s.id] = true
        if not snaps[s.id] then
            -- made by a writer killed before it said so: adopt it (no
            -- truncate or restore ran since, the model still covers it)
            register_snapshot(s.id, s.high_water_mark, s.base_offset, "adopted")
            count("snapshots adopted (writer killed before acknowledging)")
        end
        if s.base_offset ~= 0 then violation("snapshot %s: base offset %d", s.id, s.base_offset) end
        if not bad_snaps[s.id] then
            local ok, msg, code = sm:verify(s.id)
            count("snapshot verifies")
            if not ok then
                bad_snaps[s.id] = true
                snaps[s.id].bad = true
                violation("snapshot %s (hwm %d, %s, made by %s) does not verify: %s %s", s.id,
                          s.high_water_mark, s.mode, snaps[s.id].origin, tostring(msg), tostring(code))
            end
        end
    end
    for id in pairs(snaps) do
        if not listed[id] then
            violation("snapshot %s vanished from the list", id)
            snaps[id] = nil
        end
    end
    return list
end

local function forget_deleted(list_after)
    local listed = {}
    for _, s in ipairs(list_after) do listed[s.id] = true end
    for id in pairs(snaps) do if not listed[id] then snaps[id] = nil end end
end

-------------------------------------------------------------------------
-- Operations
-------------------------------------------------------------------------

local restore_seq = 0
local ops = {}

function ops.wait()
    R.sleep(math.random() * 0.5)
end

function ops.kill()
    if not kill_child(true) then return ops.start() end
    if math.random(10) <= 7 then spawn_child() end
end

function ops.stop()
    if not stop_child() then return ops.start() end
end

function ops.start()
    if child_alive() then return ops.wait() end
    spawn_child()
    R.sleep(math.random() * 0.2)
end

-- A snapshot by the soak itself: from the follower (while the writer
-- appends in its own process) or from a writer handle of our own.
function ops.snapshot()
    local mode = math.random(2) == 1 and "link" or "copy"
    local sm = manager(mode)
    if not sm then return end
    local src, own = follower, false
    if not child_alive() and math.random(2) == 1 then
        local log, msg, code = takhin.open_log(R.open_opts(LOG))
        if not log then
            violation("open writer (no writer running): %s %s", tostring(msg), tostring(code))
            return
        end
        src, own = log, true
    end
    if not src then follower = open_follower(); src = follower end
    if not src then return end
    sync_acks()
    local acked = floor_hwm
    if math.random(12) == 1 and next(snaps) ~= nil then
        -- min_interval: the newest snapshot is seconds old
        local s, msg, code = sm:create(src, { min_interval = "1h" })
        if s or code ~= "TOO_SOON" then
            violation("create with min_interval 1h gave %s %s %s", tostring(s and s.id), tostring(msg), tostring(code))
            if s then register_snapshot(s.id, s.high_water_mark, s.base_offset, "soak") end
        end
        count("snapshots refused (TOO_SOON)")
    else
        local s, msg, code = sm:create(src, { label = "soak-" .. step })
        if not s then
            violation("create (%s): %s %s", mode, tostring(msg), tostring(code))
        else
            sync_acks()
            if s.high_water_mark < acked then
                violation("snapshot %s: high water mark %d is below the acknowledged %d", s.id, s.high_water_mark, acked)
            end
            if s.mode ~= mode then violation("snapshot %s: mode %s, expected %s", s.id, s.mode, mode) end
            register_snapshot(s.id, s.high_water_mark, s.base_offset, own and "soak (writer handle)" or "soak (follower)")
            count("snapshots (" .. mode .. ")")
        end
    end
    if own then src:close() end
end

function ops.cleanup()
    local sm = manager("link")
    if not sm then return end
    local before = sm:list()
    local n = math.random(1, 6)
    local rules, limit, dry
    local kind = math.random(6)
    if kind == 1 then rules, limit = { max_snapshots = n }, n
    elseif kind == 2 then rules, limit = { keep_last = n }, n
    elseif kind == 3 then rules, limit = { max_snapshots = n, retention_time = "20s" }, n
    elseif kind == 4 then rules = takhin.policy.new({ keep_within = math.random(5, 60), keep_last = 1 })
    elseif kind == 5 then rules = { keep_hourly = n, keep_last = 2 }
    else rules, limit, dry = { max_snapshots = 1, dry_run = true }, nil, true
    end
    local deleted, plan, code = sm:cleanup(rules)
    if not deleted then
        violation("cleanup: %s %s", tostring(plan), tostring(code))
        return
    end
    local after = sm:list()
    if dry then
        if deleted ~= 0 or #after ~= #before then violation("dry-run cleanup deleted %d", deleted) end
        count("cleanups (dry run)")
        return
    end
    if #after ~= #before - deleted then
        violation("cleanup deleted %d of %d, %d left", deleted, #before, #after)
    end
    if limit and #after > math.max(limit, 1) then
        violation("cleanup keeping %d left %d snapshots", limit, #after)
    end
    if #before > 0 and (#after == 0 or after[1].id ~= before[1].id) then
        violation("cleanup deleted the newest snapshot %s", before[1].id)
    end
    forget_deleted(after)
    count("cleanups")
    count("snapshots deleted by cleanup", deleted)
end

function ops.delete()
    local sm = manager("copy")
    if not sm then return end
    local list = sm:list()
    if #list == 0 then return ops.snapshot() end
    local s = list[math.random(#list)]
    local ok, msg, code = sm:delete(s.id)
    if not ok then violation("delete %s: %s %s", s.id, tostring(msg), tostring(code)); return end
    snaps[s.id] = nil
    local again, _, code2 = sm:get(s.id)
    if again or code2 ~= "NOT_FOUND" then violation("deleted snapshot %s is still there", s.id) end
    count("snapshot deletes")
end

-- A known, verifying snapshot at random (nil when there is none).
local function pick_snapshot(sm)
    local list = sm:list()
    local good = {}
    for _, s in ipairs(list) do if snaps[s.id] and not snaps[s.id].bad then good[#good + 1] = s end end
    if #good == 0 then return nil end
    return good[math.random(#good)]
end

-- Options for a partial restore of s and the high water mark they give.
local function restore_opts(s)
    local o, hwm = {}, s.high_water_mark
    local r = math.random(10)
    local model = snaps[s.id]
    if r <= 2 and s.high_water_mark > s.base_offset then
        hwm = math.random(s.base_offset, s.high_water_mark)
        o.upto_offset = hwm
    elseif r == 3 and s.high_water_mark > s.base_offset then
        local k = math.random(s.base_offset, s.high_water_mark - 1)
        o.upto_timestamp = R.ts(k, gen_at(model.ranges, k))
        hwm = k + 1
    end
    return o, hwm
end

function ops.restore_new()
    local sm = manager(math.random(2) == 1 and "link" or "copy")
    if not sm then return end
    local s = pick_snapshot(sm)
    if not s then return ops.snapshot() end
    local model = snaps[s.id]
    restore_seq = restore_seq + 1
    local target = ("%s/restore.%d"):format(WORK, restore_seq)
    if math.random(3) == 1 then sh("mkdir -p " .. q(target)) end     -- an empty directory is fine
    local o, hwm = restore_opts(s)
    local ok, msg, code = sm:restore(s.id, target, o)
    if not ok then
        violation("restore %s to a new directory: %s %s", s.id, tostring(msg), tostring(code))
        sh("rm -rf " .. q(target))
        return
    end
    local log, m2, c2 = takhin.open_log(R.open_opts(target))
    if not log then
        violation("open restored log %s: %s %s", target, tostring(m2), tostring(c2))
    else
        if log:high_water_mark() ~= hwm then
            violation("restored %s (upto %s/%s): high water mark %d, expected %d", s.id,
                      tostring(o.upto_offset), tostring(o.upto_timestamp), log:high_water_mark(), hwm)
        end
        verify_records(log, model.ranges, log:base_offset(), math.min(hwm, log:high_water_mark()),
                       "restored " .. s.id)
        -- appending to the restored log never changes the snapshot
        local g = new_gen()
        local at = log:high_water_mark()
        for i = 0, math.random(1, 30) - 1 do
            local off = log:append(R.key(at + i, g), R.value(at + i, g), R.ts(at + i, g))
            if off ~= at + i then violation("append to restored log gave %s, expected %d", tostring(off), at + i) end
        end
        if math.random(3) == 1 and at > 0 then
            log:truncate(math.random(0, at))                 -- and neither does truncating it
        end
        log:close()
        local vok, vmsg, vcode = sm:verify(s.id)
        count("snapshot verifies")
        if not vok then
            snaps[s.id].bad = true
            bad_snaps[s.id] = true
            violation("snapshot %s does not verify after its restored copy was written: %s %s",
                      s.id, tostring(vmsg), tostring(vcode))
        end
    end
    sh("rm -rf " .. q(target))
    count("restores (new directory)")
end

function ops.restore_inplace()
    local sm = manager(math.random(2) == 1 and "link" or "copy")
    if not sm then return end
    local s = pick_snapshot(sm)
    if not s then return ops.snapshot() end
    local model = snaps[s.id]
    -- only a writer that has opened the log holds its lock (a child still
    -- starting up does not: the restore would rightly go ahead)
    if child_alive() and child.started and math.random(3) == 1 then
        -- a writer holds the log: refused, nothing changes
        local ok, msg, code = sm:restore(s.id, LOG, { replace = true })
        if ok or code ~= "LOCKED" then
            violation("in-place restore under a running writer gave %s %s %s", tostring(ok), tostring(msg), tostring(code))
        end
        count("in-place restores refused (LOCKED)")
        return
    end
    no_writer()
    check_snapshots()                 -- adopt what the writer made before it died
    close_follower()
    local o, hwm = restore_opts(s)
    o.replace = true
    local ok, msg, code = sm:restore(s.id, LOG, o)
    if not ok then
        violation("in-place restore of %s: %s %s", s.id, tostring(msg), tostring(code))
        return
    end
    -- the log is now the snapshot's (up to hwm); acknowledged offsets reset
    ranges = clip(model.ranges, hwm)
    floor_hwm = hwm
    reset_allowed = true
    follower = open_follower()
    if follower and follower:high_water_mark() ~= hwm then
        violation("after in-place restore of %s: high water mark %d, expected %d", s.id,
                  follower:high_water_mark(), hwm)
    end
    count("restores (in place)")
    if math.random(2) == 1 then spawn_child() end
end

local function truncate_to(t)
    local log, msg, code = takhin.open_log(R.open_opts(LOG))
    if not log then
        violation("open writer for truncate: %s %s", tostring(msg), tostring(code))
        return false
    end
    local hwm = log:high_water_mark()
    if hwm < floor_hwm then violation("writer open: high water mark %d below acknowledged %d", hwm, floor_hwm) end
    if t > hwm then t = hwm end
    local ok, m2, c2 = log:truncate(t)
    if not ok then
        violation("truncate(%d): %s %s", t, tostring(m2), tostring(c2))
        log:close()
        return false
    end
    if log:high_water_mark() ~= t then violation("after truncate(%d): high water mark %d", t, log:high_water_mark()) end
    log:close()
    ranges = clip(ranges, t)
    floor_hwm = t
    reset_allowed = true
    return true
end

function ops.truncate()
    no_writer()
    check_snapshots()
    close_follower()
    local f = open_follower()
    if not f then return end
    local hwm = f:high_water_mark()
    f:close()
    -- mostly near the end (a torn tail), sometimes deep
    local t = math.random(2) == 1 and math.max(0, hwm - math.random(0, 50)) or math.random(0, hwm)
    if truncate_to(t) then count("truncates") end
    follower = open_follower()
    if math.random(2) == 1 then spawn_child() end
end

-- Reopen the follower; open a writer (LOCKED while the child runs).
function ops.reopen()
    close_follower()
    follower = open_follower()
    -- a writer that has not opened the log yet does not hold the lock:
    -- wait until it says it has
    local until_t = R.now() + 30
    while child_alive() and not child.started and R.now() < until_t do
        R.sleep(0.01)
        sync_acks()
    end
    local running = child_alive()
    if running and not child.started then
        violation("writer %d did not open the log within 30 s: %s", child.gen, child_output())
        return
    end
    local log, msg, code = takhin.open_log(R.open_opts(LOG))
    if running then
        if log then
            -- the child may have died just now: only a violation if it still runs
            log:close()
            if child_alive() then violation("opened a second writer while writer pid %d runs", child.pid) end
        elseif code ~= "LOCKED" then
            violation("open writer under a running writer: %s %s (expected LOCKED)", tostring(msg), tostring(code))
        else
            count("writer opens refused (LOCKED)")
        end
    else
        if not log then
            violation("open writer (none running): %s %s", tostring(msg), tostring(code))
        else
            sync_acks()
            if log:high_water_mark() < floor_hwm then
                violation("writer open: high water mark %d below acknowledged %d", log:high_water_mark(), floor_hwm)
            end
            log:close()
            count("writer reopens")
        end
    end
    -- a second, short-lived follower sees at least what the first saw
    local f2 = open_follower()
    if f2 then
        local h2 = f2:high_water_mark()
        if h2 < last_hwm and not reset_allowed then
            violation("a new follower sees high water mark %d, below %d", h2, last_hwm)
        end
        f2:close()
    end
    count("reopens")
end

local OPS = {
    { "wait", 14 }, { "kill", 10 }, { "stop", 3 }, { "start", 6 }, { "snapshot", 12 },
    { "cleanup", 5 }, { "delete", 2 }, { "restore_new", 6 }, { "restore_inplace", 3 },
    { "truncate", 2 }, { "reopen", 6 },
}
local total_weight = 0
for _, o in ipairs(OPS) do total_weight = total_weight + o[2] end
local function pick_op()
    local r = math.random(total_weight)
    for _, o in ipairs(OPS) do
        r = r - o[2]
        if r <= 0 then return o[1] end
    end
end

-- Disk: a log above LOG_CAP is cut back (truncate or in-place restore of
-- a small snapshot); too many snapshots are cleaned up.
local max_disk, max_log = 0, 0
local function bound_disk(force_check)
    local size = follower and follower:size() or 0
    if size > max_log then max_log = size end
    if size > LOG_CAP then
        op_name = "cap log"
        no_writer()
        check_snapshots()
        close_follower()
        local f = open_follower()
        if f then
            local hwm = f:high_water_mark()
            f:close()
            if truncate_to(math.random(0, hwm // 8)) then count("truncates (log over the cap)") end
        end
        follower = open_follower()
        spawn_child()
    end
    local sm = manager("link")
    if sm and #sm:list() > MAX_SNAPSHOTS then
        op_name = "cap snapshots"
        local deleted = sm:cleanup({ max_snapshots = MAX_SNAPSHOTS // 2 })
        count("cleanups (too many snapshots)")
        count("snapshots deleted by cleanup", deleted or 0)
        forget_deleted(sm:list())
    end
    if force_check or step % 10 == 0 then
        local du = disk_usage(WORK)
        if du > max_disk then max_disk = du end
        if du > DISK_LIMIT then
            op_name = "disk limit"
            io.stdout:write(("soak: %d bytes on disk, over the limit: cleaning up\n"):format(du))
            no_writer()
            check_snapshots()
            local s = manager("link")
            if s then s:cleanup({ max_snapshots = 1 }); forget_deleted(s:list()) end
            close_follower()
            truncate_to(0)
            follower = open_follower()
            count("disk limit cleanups")
            spawn_child()
        end
    end
end

-------------------------------------------------------------------------
-- Main loop
-------------------------------------------------------------------------

io.stdout:write(("soak: seed %d, %d s, dir %s, writer ~%d bytes/s, log cap %d, disk limit %d\n")
    :format(SEED, SECONDS, WORK, RATE, LOG_CAP, DISK_LIMIT))
io.stdout:flush()

spawn_child()
R.sleep(0.3)
follower = open_follower()
local next_report = t_start + 60

while R.now() < deadline do
    step = step + 1
    op_name = pick_op()
    note("%s", op_name)
    -- now and then a fresh manager (it cleans up after crashed operations)
    for _, mode in ipairs({ "link", "copy" }) do
        if math.random(10) == 1 then manager(mode, true) end
    end
    count("op " .. op_name)
    local ok, err = pcall(ops[op_name])
    if not ok then violation("raised: %s", tostring(err)) end
    op_name = op_name .. " (check)"
    ok, err = pcall(check_log)
    if not ok then violation("check_log raised: %s", tostring(err)) end
    ok, err = pcall(check_snapshots)
    if not ok then violation("check_snapshots raised: %s", tostring(err)) end
    ok, err = pcall(bound_disk)
    if not ok then violation("bound_disk raised: %s", tostring(err)) end
    if child and not child_alive() and child.started == nil and not child.reported then
        sync_acks()
        if not child.started then
            child.reported = true
            local out = child_output()
            if out ~= "" then violation("writer %d died before starting: %s", child.gen, out) end
        end
    end
    if R.now() >= next_report then
        next_report = next_report + 60
        io.stdout:write(("soak: %4d s, step %d, hwm %d, %d records checked, %d violations\n"):format(
            math.floor(R.now() - t_start), step, last_hwm, counts["records checked"], #violations))
        io.stdout:flush()
    end
    if #violations >= 50 then
        io.stdout:write("soak: 50 violations, stopping early\n")
        break
    end
end

-- Wind down: stop the writer cleanly, check everything once more.
op_name = "final"
if child_alive() then stop_child() end
pcall(check_log)
local final_list = check_snapshots() or {}
-- every snapshot we still know restores to exactly its records
for _, s in ipairs(final_list) do
    local sm = manager("copy")
    if sm and snaps[s.id] and not snaps[s.id].bad then
        local target = ("%s/final.%s"):format(WORK, s.id)
        local ok, msg, code = sm:restore(s.id, target)
        if not ok then
            violation("final restore %s: %s %s", s.id, tostring(msg), tostring(code))
        else
            local log = takhin.open_log(R.open_opts(target, { readonly = true }))
            if log then
                verify_records(log, snaps[s.id].ranges, 0, s.high_water_mark, "final restore " .. s.id)
                log:close()
            else
                violation("final restore %s does not open", s.id)
            end
            count("restores (final)")
        end
        sh("rm -rf " .. q(target))
    end
end
do
    local du = disk_usage(WORK)
    if du > max_disk then max_disk = du end
end
close_follower()
for _, sm in pairs(managers) do sm:close() end

-- Summary
local names = {}
for k in pairs(counts) do names[#names + 1] = k end
table.sort(names)
print(("\nsoak summary: seed %d, %.0f s, %d steps, %d writer generations"):format(
    SEED, R.now() - t_start, step, incarnation))
for _, k in ipairs(names) do print(("  %-58s %d"):format(k, counts[k])) end
print(("  %-58s %d"):format("snapshots known at the end", #final_list))
print(("  %-58s %.1f MB"):format("largest log", max_log / 1e6))
print(("  %-58s %.1f MB"):format("most disk used (du of the soak directory)", max_disk / 1e6))
print(("  %-58s %d"):format("invariant violations", #violations))
for i, v in ipairs(violations) do print(("  violation %d: %s"):format(i, v)) end
if #violations == 0 then
    if own_work then sh("rm -rf " .. q(WORK)) end
    print("soak: OK")
    os.exit(0)
else
    print("soak: FAILED -- the soak directory is kept: " .. WORK)
    print(("soak: reproduce with SOAK_SEED=%d (timing differs from run to run)"):format(SEED))
    os.exit(1)
end
