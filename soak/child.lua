-- soak/child.lua: the writer process of the soak (see soak/README.md).
--
-- Also the record scheme shared with soak/soak.lua, which loads this file
-- with SOAK_LIBRARY set and gets the table M back.
--
-- As a process:
--   lua5.4 soak/child.lua DIR ACK GEN SEED STOPFILE RATE SNAPSHOTS SYNC PARENT_PID
-- opens DIR as the writer and appends records of generation GEN (single
-- appends and batches) at about RATE bytes a second, until STOPFILE exists
-- (then it closes the log and exits 0), its parent is gone, or it is killed.
-- Everything it learns is appended to the ACK file, one line each, written
-- and flushed only after the call returned:
--   s H          opened; the high water mark was H (first offset it writes)
--   a F L        offsets F..L were acknowledged (append or append_batch returned)
--   n ID HWM     it took snapshot ID (high water mark HWM) with SNAPSHOTS=1
--   e TEXT       an unexpected error; it exits non-zero after this
--   x            it closed the log and is exiting cleanly

local M = {}

M.SEGMENT_SIZE = 1024 * 1024        -- max_segment_size of every open
M.INDEX_INTERVAL = 4096
M.TS_BASE = 1700000000000

local function mix(o, g)
    local h = (o * 2654435761 + g * 40503 + 12345) & 0xffffffff
    h = ((h ~ (h >> 15)) * 2246822519) & 0xffffffff
    h = h ~ (h >> 13)
    return h
end

-- What the record at offset o of generation g holds.  Timestamps grow
-- with the offset whatever the generation (o * 10 + g % 10).
function M.key(o, g)
    if (o + g) % 7 == 0 then return nil end
    return ("k%d.%d"):format(o, g)
end

function M.size(o, g)
    local h = mix(o, g)
    if h % 211 == 0 then return 65536 + h % 196608 end     -- now and then 64..256 KiB
    return h % 1536
end

function M.value(o, g)
    local h = mix(o, g)
    return ("%d:%d:"):format(o, g) .. string.rep(string.char(97 + h % 26), M.size(o, g))
end

function M.ts(o, g)
    return M.TS_BASE + o * 10 + g % 10
end

function M.open_opts(dir, extra)
    local o = { dir = dir, max_segment_size = M.SEGMENT_SIZE, index_interval_bytes = M.INDEX_INTERVAL }
    for k, v in pairs(extra or {}) do o[k] = v end
    return o
end

-- The clock and a sleep, and exists: bench/common.lua (this file is in
-- soak/ both as a process and when soak.lua loads it).
local C = dofile((arg[0]:match("^(.*)/[^/]*$") or ".") .. "/../bench/common.lua")
M.now, M.sleep = C.now, C.sleep

if SOAK_LIBRARY then return M end

-------------------------------------------------------------------------
-- The writer
-------------------------------------------------------------------------

local takhin = require("takhin")
local dir, ack_path, gen, seed = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4])
local stop_path, rate = arg[5], tonumber(arg[6]) or 1e6
local snapshots, sync, parent = arg[7] == "1", arg[8] == "1", arg[9]

local ack = assert(io.open(ack_path, "a"))
local function say(...)
    ack:write(table.concat({ ... }, " "), "\n")
    ack:flush()
end
local function die(...)
    say("e", ...)
    os.exit(4)
end

math.randomseed(seed)
local log, msg, code = takhin.open_log(M.open_opts(dir, sync and { sync = "always" } or nil))
if not log then die("open_log:", tostring(msg), tostring(code)) end
local nxt = log:high_water_mark()
say("s", nxt)

local managers = {}
if snapshots then
    for _, mode in ipairs({ "link", "copy" }) do
        local sm, m, c = takhin.snapshot_manager(dir, { mode = mode })
        if not sm then die("snapshot_manager:", tostring(m), tostring(c)) end
        managers[#managers + 1] = sm
    end
end

local exists = C.exists

local started = M.now()
local written = 0
local next_check = started + 1
local next_snap = started + 1 + math.random() * 4

while true do
    local now = M.now()
    if exists(stop_path) then
        log:close()
        say("x")
        os.exit(0)
    end
    if now >= next_check then
        next_check = now + 1
        if parent and not exists("/proc/" .. parent) then os.exit(5) end
    end
    if snapshots and now >= next_snap then
        next_snap = now + 1 + math.random() * 6
        local sm = managers[math.random(#managers)]
        local s, m, c = sm:create(log, { label = "child-" .. gen })
        if not s then die("create:", tostring(m), tostring(c)) end
        say("n", s.id, s.high_water_mark)
    end
    local bytes = 0
    if math.random(4) == 1 then
        local n = math.random(2, 20)
        local batch = {}
        for i = 0, n - 1 do
            local o = nxt + i
            local v = M.value(o, gen)
            bytes = bytes + #v
            batch[#batch + 1] = { key = M.key(o, gen), value = v, timestamp = M.ts(o, gen) }
        end
        local first, last, c = log:append_batch(batch)
        if first ~= nxt or last ~= nxt + n - 1 then
            die("append_batch gave", tostring(first), tostring(last), tostring(c), "expected", nxt)
        end
        say("a", first, last)
        nxt = last + 1
    else
        local v = M.value(nxt, gen)
        bytes = #v
        local o, m, c = log:append(M.key(nxt, gen), v, M.ts(nxt, gen))
        if o ~= nxt then die("append gave", tostring(o), tostring(m), tostring(c), "expected", nxt) end
        say("a", o, o)
        nxt = o + 1
    end
    written = written + bytes
    -- Keep to about `rate` bytes a second, in bursts.
    local ahead = written / rate - (M.now() - started)
    if ahead > 0.05 then M.sleep(ahead * math.random()) end
end
