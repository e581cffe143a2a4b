-- takhin quickstart: create a log, append, read back, reopen, recover.
-- Run with `make demo` (or, after `make`, from the repository root:
--   LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='build/?.so;;' lua5.4 examples/quickstart.lua)
local takhin = require("takhin")

local function check(ok, ...)
    if not ok then
        local msg, code = ...
        error(("%s (%s)"):format(tostring(msg), tostring(code)), 2)
    end
    return ok, ...
end

local tmp = check(io.popen("mktemp -d /tmp/takhin-demo.XXXXXX")):read("l")
local dir = tmp .. "/orders"
print(("takhin %s -- demo log in %s"):format(takhin.version, dir))

-- 1. Open (creates the directory) with small segments so rolls show.
local log = check(takhin.open_log{ dir = dir, max_segment_size = 64 * 1024 })

-- 2. Append single records and a batch.
for i = 1, 1000 do
    check(log:append("order-" .. i, ('{"id":%d,"amount":%d}'):format(i, i * 7 % 100)))
end
local batch = {}
for i = 1001, 2000 do
    batch[#batch + 1] = { key = "order-" .. i, value = ('{"id":%d}'):format(i) }
end
local first, last = check(log:append_batch(batch))
print(("appended 1000 single records and a batch of %d (offsets [%d, %d))"):format(
    #batch, first, last + 1))
print(tostring(log))

-- 3. Read by offset, iterate a range, look up by time.
local rec = check(log:read(41))
print(("offset 41: key=%s value=%s"):format(rec.key, rec.value))
local n = 0
for r in log:records(100, 110) do n = n + 1 end
print(("records(100, 110) yields %d records"):format(n))
print(("offset_for_time(0) = %d"):format(log:offset_for_time(0)))

-- 4. A second writer is refused while this one holds the log.
local _, msg, code = takhin.open_log{ dir = dir }
print(("second writer: %s (%s)"):format(msg, code))

-- 5. Close, simulate a torn write at the tail, reopen: recovery trims it.
local hwm = log:high_water_mark()
log:close()
local segs = {}
for name in io.popen("ls " .. dir):lines() do
    if name:match("%.log$") then segs[#segs + 1] = name end
end
table.sort(segs)
local f = assert(io.open(dir .. "/" .. segs[#segs], "ab"))
f:write("\0\0\1\0garbage from a torn write")
f:close()
log = check(takhin.open_log{ dir = dir, max_segment_size = 64 * 1024 })
print(("reopened after a torn tail: high water mark %d (was %d), %d segments, %d bytes"):format(
    log:high_water_mark(), hwm, log:num_segments(), log:size()))
assert(log:high_water_mark() == hwm)
print(("next append gets offset %d"):format(check(log:append(nil, "after recovery"))))

-- 6. Snapshot, keep appending, restore the snapshot elsewhere, verify.
local sm = check(takhin.snapshot_manager(dir))
local snap = check(sm:create(log, { label = "demo" }))
print(("snapshot %s: offsets [%d, %d) in %d segments (%d bytes)"):format(
    snap.id, snap.base_offset, snap.high_water_mark, snap.num_segments, snap.total_size))
for i = 1, 500 do check(log:append("late-" .. i, "after the snapshot")) end
check(sm:verify(snap.id))
check(sm:restore(snap.id, tmp .. "/restored"))
local restored = check(takhin.open_log{ dir = tmp .. "/restored" })
print(("live log at %d, restored log at %d (the snapshot's %d); snapshot verified"):format(
    log:high_water_mark(), restored:high_water_mark(), snap.high_water_mark))
assert(restored:high_water_mark() == snap.high_water_mark)
assert(check(restored:read(41)).value == check(log:read(41)).value)

print("summary:")
print(("  log       %s"):format(tostring(log)))
print(("  restored  %s"):format(tostring(restored)))
print(("  snapshots %d, %d bytes in %s"):format(#check(sm:list()), check(sm:size()), sm:dir()))
restored:close()
sm:close()
log:close()

os.execute("rm -rf '" .. tmp .. "'")
print("demo done")
