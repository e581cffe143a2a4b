-- The seed's snapshot example, ported to takhin: append 100 records,
-- snapshot, list, append 50 more, restore the snapshot elsewhere, compare
-- high water marks and read five records back from the restored log.
local takhin = require("takhin")

local function must(ok, msg, code)
    if not ok then error(("%s (%s)"):format(tostring(msg), tostring(code)), 2) end
    return ok
end

local tmp = must(io.popen("mktemp -d /tmp/takhin-snapshot-example.XXXXXX")):read("l")
local log_dir, restore_dir = tmp .. "/log", tmp .. "/restored"

-- NewLog
local log = must(takhin.open_log{ dir = log_dir, max_segment_size = 4096 })
for i = 0, 99 do
    must(log:append(("key-%d"):format(i), ("message %d"):format(i)))
end
print(("Appended 100 messages, high water mark: %d"):format(log:high_water_mark()))

-- NewSnapshotManager + CreateSnapshot
local sm = must(takhin.snapshot_manager(log_dir))
local snap = must(sm:create(log))
print(("Created snapshot %s: offsets [%d, %d), %d segments, %d bytes"):format(
    snap.id, snap.base_offset, snap.high_water_mark, snap.num_segments, snap.total_size))

-- ListSnapshots
for _, s in ipairs(must(sm:list())) do
    print(("  snapshot %s  hwm %d  %d bytes"):format(s.id, s.high_water_mark, s.total_size))
end

-- More appends after the snapshot
for i = 100, 149 do
    must(log:append(("key-%d"):format(i), ("message %d"):format(i)))
end
print(("Appended 50 more messages, high water mark: %d"):format(log:high_water_mark()))

-- RestoreSnapshot
must(sm:restore(snap.id, restore_dir))
local restored = must(takhin.open_log{ dir = restore_dir })
print(("Restored log high water mark: %d (snapshot %d, live log %d)"):format(
    restored:high_water_mark(), snap.high_water_mark, log:high_water_mark()))
assert(restored:high_water_mark() == snap.high_water_mark)

for offset = 0, 4 do
    local rec = must(restored:read(offset))
    print(("  offset %d: key=%s value=%s"):format(rec.offset, rec.key, rec.value))
end

restored:close()
sm:close()
log:close()
os.execute("rm -rf '" .. tmp .. "'")
