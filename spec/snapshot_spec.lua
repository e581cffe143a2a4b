-- Snapshots of a log (docs/API.md "SnapshotManager", /work/shared/SPEC.md
-- section 3): create, list, get, delete, cleanup, restore, verify; what a
-- snapshot shares with the live log; damage to its files and to the
-- catalog; and the errors a caller can get.
--
-- Snapshots taken while another process appends, and snapshots created by
-- several processes at once, are in spec/snapshot_process_spec.lua.

local takhin = require("takhin")
local util = require("helpers.util")
local logs = require("helpers.log")
require("helpers.assertions")
local cjson = require("cjson")

-- Small segments and a dense index, so a few dozen records make several
-- sealed segments with non-empty index files.
local OPTS = { max_segment_size = 1024, index_interval_bytes = 64 }

local MINUTE, HOUR, DAY = 60 * 1000, 3600 * 1000, 24 * 3600 * 1000

-- What the record at offset i holds: absent, empty and ordinary keys,
-- values with arbitrary bytes, increasing timestamps.
local function key_for(i)
    if i % 7 == 0 then return nil end
    if i % 7 == 1 then return "" end
    return "key-" .. i
end
local function value_for(i)
    return ("%d|"):format(i) .. string.rep(string.char(i % 256), (i * 37) % 90) .. "\0\255"
end
local function ts_for(i) return 1600000000000 + i * 10 end

local open = logs.opener(OPTS)

local function manager(log_dir, opts)
    local sm, msg, code = takhin.snapshot_manager(log_dir, opts)
    assert(sm, "snapshot_manager " .. log_dir .. ": " .. tostring(msg) .. " " .. tostring(code))
    return sm
end

-- Appends the records for offsets from..to (inclusive).
local function fill(log, from, to)
    for i = from, to do
        assert.are.equal(i, log:append(key_for(i), value_for(i), ts_for(i)))
    end
end

local function ok(v, msg, code)
    assert(v, tostring(msg) .. " " .. tostring(code))
    return v
end

-- Every record of a log, as plain tables.
local function records_of(log)
    local out = {}
    for rec in log:records() do
        out[#out + 1] = { offset = rec.offset, key = rec.key, value = rec.value, timestamp = rec.timestamp }
    end
    return out
end

-- The restored log at dir holds exactly `want` (a records_of result, or
-- its first n entries) and nothing else.
local function assert_log_holds(dir, want, n)
    n = n or #want
    local log = open(dir)
    assert.are.equal(n, log:high_water_mark(), dir)
    local got = records_of(log)
    assert.are.equal(n, #got, dir)
    for i = 1, n do
        local w, g = want[i], got[i]
        assert.are.equal(w.offset, g.offset)
        assert.are.equal(w.key, g.key, "key at offset " .. w.offset)
        assert.are.equal(w.value, g.value, "value at offset " .. w.offset)
        assert.are.equal(w.timestamp, g.timestamp, "timestamp at offset " .. w.offset)
    end
    log:close()
end

local function ids_of(list)
    local ids = {}
    for i, s in ipairs(list) do ids[i] = s.id end
    return ids
end

local function reversed(t)
    local r = {}
    for i = #t, 1, -1 do r[#r + 1] = t[i] end
    return r
end

-- The manifest of a snapshot, decoded.
local function manifest(snap)
    return cjson.decode(util.read_file(snap.path .. "/manifest.json"))
end

-- The catalog, decoded (fails the test when it does not parse).
local function catalog(sm)
    local text = util.read_file(sm:dir() .. "/snapshots.json")
    local okay, doc = pcall(cjson.decode, text)
    assert(okay, "snapshots.json does not parse: " .. tostring(doc))
    return doc
end

local function catalog_ids(sm)
    local ids = {}
    for i, s in ipairs(catalog(sm).snapshots) do ids[i] = s.id end
    return ids
end

-- Sets the "timestamp" of snapshots' manifests ({ [id] = ms }) and removes
-- snapshots.json, so the next manager rebuilds the catalog from them.
-- The number is written with %d: cjson may print big integers with an
-- exponent.
local function set_timestamps(snap_dir, stamps)
    for id, ts in pairs(stamps) do
        local path = ("%s/snapshot-%s/manifest.json"):format(snap_dir, id)
        local text = util.read_file(path)
        assert.are.equal(id, cjson.decode(text).id)
        local new, n = text:gsub('("timestamp"%s*:%s*)[-+%d.eE]+', function(prefix)
            return prefix .. string.format("%d", ts)
        end)
        assert.are.equal(1, n, path)
        util.write_file(path, new)
        assert.are.equal(ts, util.tointeger(cjson.decode(new).timestamp))
    end
    assert(os.remove(snap_dir .. "/snapshots.json"))
end

-- dev:inode of a path.
local function file_id(path)
    local out = util.capture("stat -c '%d:%i' " .. util.q(path) .. " 2>/dev/null")
    local id = out:match("%d+:%d+")
    assert(id, "stat " .. path)
    return id
end

local function device(path)
    return util.capture("stat -c '%d' " .. util.q(path)):match("%d+")
end

-- { name = bytes } of every file in a directory tree, for "untouched".
local function tree(dir)
    local out = {}
    local list = util.capture("cd " .. util.q(dir) .. " && find . -mindepth 1 | LC_ALL=C sort")
    for rel in list:gmatch("[^\n]+") do
        local path = dir .. "/" .. rel:sub(3)
        out[rel] = util.is_dir(path) and "<dir>" or util.read_file(path)
    end
    return out
end

-- The entries of a snapshot directory that hold or build a snapshot
-- (snapshot-<id>, and the .tmp-* / .del-* of an operation under way).
local function snapshot_entries(snap_dir)
    local out = {}
    for _, name in ipairs(util.ls(snap_dir)) do
        if name:find("^snapshot%-") or name:find("^%.tmp") or name:find("^%.del") then
            out[#out + 1] = name
        end
    end
    return out
end

-- A table whose fields are only reachable through __index, which runs a
-- full garbage collection and returns a fresh copy of each string value:
-- for strings longer than Lua 5.4 interns (40 bytes), nothing else
-- references that copy, so a binding that stops referencing it before it
-- is used reads freed memory.
local function proxy(fields)
    return setmetatable({}, { __index = function(_, k)
        collectgarbage("collect")
        local v = fields[k]
        if type(v) == "string" then return (v .. "#"):sub(1, -2) end
        return v
    end })
end

describe("a snapshot manager", function()
    local tmp, dir

    before_each(function()
        tmp = util.tmpdir()
        dir = tmp .. "/log"
    end)
    after_each(function()
        collectgarbage(); collectgarbage()
        util.rmtree(tmp)
    end)

    -- A log of n records (several segments) and a manager for it.
    local function setup(n, sm_opts)
        local log = open(dir)
        if n > 0 then fill(log, 0, n - 1) end
        return log, manager(dir, sm_opts)
    end

    -- n snapshots of the log, oldest first.
    local function snapshots(sm, log, n)
        local made = {}
        for i = 1, n do made[i] = ok(sm:create(log, { label = "s" .. i })) end
        return made
    end

    describe("create", function()
        it("returns a snapshot describing the log at that moment", function()
            local log, sm = setup(60)
            assert.is_true(log:num_segments() > 2)
            local before = os.time() * 1000
            local s = ok(sm:create(log, { label = "nightly" }))
            local after = (os.time() + 1) * 1000
            assert.matches("^%d+%-%x%x%x%x%x%x%x%x$", s.id)
            assert.is_true(s.timestamp >= before - 1000 and s.timestamp <= after, tostring(s.timestamp))
            assert.are.equal(0, s.base_offset)
            assert.are.equal(60, s.high_water_mark)
            assert.are.equal(log:num_segments(), s.num_segments)
            local bases = {}
            for i, seg in ipairs(log:segments()) do bases[i] = seg.base_offset end
            assert.are.same(bases, s.segment_offsets)
            assert.are.equal("link", s.mode)
            assert.are.equal("nightly", s.label)
            assert.are.equal(dir .. "/.snapshots/snapshot-" .. s.id, s.path)
            assert.is_true(util.is_dir(s.path))
            assert.is_true(util.exists(s.path .. "/manifest.json"))
            for _, base in ipairs(s.segment_offsets) do
                for _, ext in ipairs({ "log", "index", "timeindex" }) do
                    assert.is_true(util.exists(s.path .. "/" .. util.segment_name(base, ext)), ext)
                end
            end
            assert.are.equal(dir .. "/.snapshots", sm:dir())
            assert.is_true(sm:verify(s.id))
            log:close()
        end)

        it("gives unique ids to snapshots made in quick succession", function()
            local log, sm = setup(5)
            local seen = {}
            for _, s in ipairs(snapshots(sm, log, 12)) do
                assert.is_nil(seen[s.id], "duplicate id " .. s.id)
                seen[s.id] = true
            end
            assert.are.equal(12, #sm:list())
            log:close()
        end)

        it("copies a multi-segment log whole", function()
            local log, sm = setup(80)
            local want = records_of(log)
            local n = log:num_segments()
            assert.is_true(n >= 4, "only " .. n .. " segments")
            local s = ok(sm:create(log))
            assert.are.equal(n, s.num_segments)
            assert.are.equal(n, #s.segment_offsets)
            log:close()
            ok(sm:restore(s.id, tmp .. "/restored"))
            assert_log_holds(tmp .. "/restored", want)
            local r = open(tmp .. "/restored")
            assert.are.equal(n, r:num_segments())
            r:close()
        end)

        it("snapshots an empty log, which restores as an empty log", function()
            local log, sm = setup(0)
            local s = ok(sm:create(log))
            assert.are.equal(0, s.base_offset)
            assert.are.equal(0, s.high_water_mark)
            assert.are.equal(1, s.num_segments)
            assert.is_true(sm:verify(s.id))
            log:close()
            assert.is_true(sm:restore(s.id, tmp .. "/restored"))
            local r = open(tmp .. "/restored")
            assert.are.equal(0, r:high_water_mark())
            assert.are.equal(0, r:append("k", "v", 1))
            assert.are.equal("v", r:read(0).value)
            r:close()
            assert.is_true(sm:verify(s.id))
        end)

        it("accepts a read-only handle of the log", function()
            local log, sm = setup(30)
            local ro = open(dir, { readonly = true })
            local s = ok(sm:create(ro))
            assert.are.equal(30, s.high_water_mark)
            local want = records_of(ro)
            ro:close()
            log:close()
            ok(sm:restore(s.id, tmp .. "/restored"))
            assert_log_holds(tmp .. "/restored", want)
        end)
    end)

    describe("create, given a log that is not the manager's", function()
        it("returns INVALID naming both directories and creates nothing", function()
            local log, sm = setup(20)
            local other_dir = tmp .. "/other"
            local other = open(other_dir)
            fill(other, 0, 9)
            local msg = assert.fails_with("INVALID", sm:create(other))
            assert.truthy(msg:find(dir, 1, true), msg)
            assert.truthy(msg:find(other_dir, 1, true), msg)
            local ro = open(other_dir, { readonly = true })
            assert.fails_with("INVALID", sm:create(ro))
            ro:close()
            assert.are.same({}, sm:list())
            assert.are.same({}, snapshot_entries(sm:dir()))
            assert.is_false(util.exists(other_dir .. "/.snapshots"))
            other:close()
            log:close()
        end)

        it("accepts the manager's log opened under another spelling of its path", function()
            local log, sm = setup(20)
            assert.is_true(util.sh("ln -s " .. util.q(dir) .. " " .. util.q(tmp .. "/link")))
            for _, spelling in ipairs({ dir .. "/", tmp .. "/link", tmp .. "/../" .. tmp:match("[^/]+$") .. "/log" }) do
                local ro = open(spelling, { readonly = true })
                local s = ok(sm:create(ro))
                assert.are.equal(20, s.high_water_mark, spelling)
                ro:close()
            end
            assert.are.equal(3, #sm:list())
            log:close()
        end)
    end)

    describe("labels", function()
        it("are stored and returned exactly, multibyte UTF-8 included", function()
            local log, sm = setup(5)
            local labels = { "nightly", "caf\195\169 \226\128\148 \230\151\165\230\156\172 \240\159\154\128",
                             ("\206\169"):rep(127), "" }
            local made = {}
            for i, label in ipairs(labels) do
                made[i] = ok(sm:create(log, { label = label }))
                if label ~= "" then assert.are.equal(label, made[i].label) end
                assert.are.equal(made[i].label, ok(sm:get(made[i].id)).label)
            end
            assert.are.equal(labels[2], manifest(made[2]).label)
            sm:close()
            local sm2 = manager(dir)
            for i = 1, 3 do assert.are.equal(labels[i], ok(sm2:get(made[i].id)).label) end
            log:close()
        end)

        it("that are not valid UTF-8 are refused with INVALID, and nothing is created", function()
            local log, sm = setup(5)
            local bad = {
                "\255",                    -- never in UTF-8
                "caf\195",                 -- a sequence cut short
                "\192\175",               -- an overlong "/"
                "\237\160\128",          -- a UTF-16 surrogate
                "\244\144\128\128",     -- beyond U+10FFFF
                "ok so far \128",          -- a lone continuation byte
            }
            for _, label in ipairs(bad) do
                local msg = assert.fails_with("INVALID", sm:create(log, { label = label }))
                assert.truthy(msg:find("label", 1, true), msg)
            end
            assert.are.same({}, sm:list())
            assert.are.same({}, snapshot_entries(sm:dir()))
            log:close()
        end)
    end)

    describe("options read through __index (proxy tables)", function()
        it("snapshot_manager takes dir and mode from a proxy", function()
            local log = open(dir)
            fill(log, 0, 29)
            -- Longer than the strings Lua 5.4 interns: each lookup's copy
            -- is its own, and the collector can free it.
            local snap_dir = tmp .. "/snapshots-somewhere-else-given-by-a-proxy"
            local sm = manager(dir, proxy({ dir = snap_dir, mode = "copy" }))
            assert.are.equal(snap_dir, sm:dir())
            local s = ok(sm:create(log))
            assert.are.equal(snap_dir .. "/snapshot-" .. s.id, s.path)
            assert.are.equal("copy", s.mode)
            assert.is_true(util.is_dir(s.path))
            assert.is_false(util.exists(dir .. "/.snapshots"))
            log:close()
        end)

        it("create stores the label a proxy gives, exactly", function()
            local log, sm = setup(10)
            local label = "label made by __index: " .. ("\206\169"):rep(40)
            local s = ok(sm:create(log, proxy({ label = label })))
            assert.are.equal(label, s.label)
            assert.are.equal(label, ok(sm:get(s.id)).label)
            assert.are.equal(label, manifest(s).label)
            log:close()
        end)

        it("restore and verify take their options from a proxy", function()
            local log, sm = setup(30)
            local want = records_of(log)
            local s = ok(sm:create(log))
            log:close()
            local calls = 0
            assert.is_true(sm:verify(s.id, proxy({ progress = function() calls = calls + 1 end })))
            assert.is_true(calls > 0, "verify never called the progress function")
            assert.is_true(sm:restore(s.id, tmp .. "/restored", proxy({ upto_offset = 17 })))
            assert_log_holds(tmp .. "/restored", want, 17)
        end)
    end)

    describe("progress callbacks", function()
        local CLOSE_SM = "attempt to close a takhin.SnapshotManager while one of its calls is in progress"
        local CLOSE_LOG = "attempt to close a takhin.Log while a call using it is in progress"

        -- Nothing half-made in the snapshot directory, and every snapshot
        -- listed verifies.
        local function assert_whole(sm)
            for _, name in ipairs(snapshot_entries(sm:dir())) do
                assert.is_nil(name:find("^%.tmp"), name)
                assert.is_nil(name:find("^%.del"), name)
            end
            for _, snap in ipairs(sm:list()) do assert.is_true(sm:verify(snap.id)) end
        end

        -- Calls f under pcall; it must raise an error containing text.
        local function raises_with(text, f)
            local okay, err = pcall(f)
            assert.is_false(okay, "expected an error: " .. text)
            assert.truthy(tostring(err):find(text, 1, true), tostring(err))
        end

        it("that close the manager make create raise; the manager stays usable", function()
            local log, sm = setup(60)
            local calls = 0
            raises_with(CLOSE_SM, function()
                return sm:create(log, { progress = function() calls = calls + 1; sm:close() end })
            end)
            assert.is_true(calls > 0, "progress was never called")
            assert.are.equal(dir .. "/.snapshots", sm:dir())
            assert_whole(sm)
            local s = ok(sm:create(log))
            assert.is_true(sm:verify(s.id))
            assert.is_true(sm:close())
            log:close()
        end)

        it("that close the manager make restore raise; the manager stays usable", function()
            local log, sm = setup(60)
            local want = records_of(log)
            local s = ok(sm:create(log))
            log:close()
            local target = tmp .. "/restored"
            raises_with(CLOSE_SM, function()
                return sm:restore(s.id, target, { progress = function() sm:close() end })
            end)
            assert_whole(sm)
            -- The restore either finished or left nothing.
            if util.exists(target) then assert_log_holds(target, want) end
            for _, name in ipairs(util.ls(tmp)) do
                assert.truthy(name == "log" or name == "restored", "left beside the target: " .. name)
            end
            assert.is_true(sm:restore(s.id, tmp .. "/again"))
            assert_log_holds(tmp .. "/again", want)
        end)

        it("that close the manager make verify raise; the manager stays usable", function()
            local log, sm = setup(60)
            local s = ok(sm:create(log))
            raises_with(CLOSE_SM, function()
                return sm:verify(s.id, { progress = function() sm:close() end })
            end)
            assert.are.equal(1, #sm:list())
            assert.is_true(sm:verify(s.id))
            log:close()
        end)

        it("that close the log being snapshotted make create raise; the log stays usable", function()
            local log, sm = setup(60)
            raises_with(CLOSE_LOG, function()
                return sm:create(log, { progress = function() log:close() end })
            end)
            assert_whole(sm)
            assert.are.equal(60, log:append("k", "still open", 1))
            assert.are.equal("still open", log:read(60).value)
            local s = ok(sm:create(log))
            assert.are.equal(61, s.high_water_mark)
            assert.is_true(log:close())
        end)

        it("that drop every other reference and collect garbage are safe", function()
            fill(open(dir), 0, 59)      -- a log of several segments, closed by the collector
            collectgarbage(); collectgarbage()
            local want
            do
                local log = open(dir)
                want = records_of(log)
                log:close()
            end
            local function drop_and_collect(h)
                return function()
                    h.sm, h.log = nil, nil
                    collectgarbage(); collectgarbage()
                end
            end
            local h = { sm = manager(dir), log = open(dir) }
            local s = ok(h.sm:create(h.log, { progress = drop_and_collect(h) }))
            h = { sm = manager(dir) }
            assert.is_true(h.sm:verify(s.id, { progress = drop_and_collect(h) }))
            h = { sm = manager(dir) }
            assert.is_true(h.sm:restore(s.id, tmp .. "/restored", { progress = drop_and_collect(h) }))
            collectgarbage(); collectgarbage()
            -- The collected writer released its lock; the snapshot is whole.
            local log = open(dir)
            assert.are.equal(60, log:high_water_mark())
            log:close()
            local sm = manager(dir)
            assert.are.same({ s.id }, ids_of(sm:list()))
            assert.is_true(sm:verify(s.id))
            assert_log_holds(tmp .. "/restored", want)
        end)
    end)

    describe("a snapshot dated in the future (the clock stepped back after it)", function()
        -- A snapshot whose manifest says it was taken a day from now, and
        -- a manager that rebuilt its catalog from the manifests.
        local function future_snapshot()
            local log, sm = setup(20)
            local future = ok(sm:create(log, { label = "future" }))
            sm:close()
            set_timestamps(dir .. "/.snapshots", { [future.id] = os.time() * 1000 + DAY })
            sm = manager(dir)
            assert.is_true(sm:get(future.id).timestamp > os.time() * 1000 + DAY - HOUR)
            return log, sm, future
        end

        it("is listed after the snapshots made later: list is in creation order, by seq", function()
            local log, sm, future = future_snapshot()
            local a = ok(sm:create(log))
            fill(log, 20, 29)
            local b = ok(sm:create(log))
            local list = sm:list()
            assert.are.same({ b.id, a.id, future.id }, ids_of(list))
            for _, snap in ipairs(list) do
                assert.are.equal("integer", util.math_type(snap.seq), snap.id)
            end
            assert.is_true(list[1].seq > list[2].seq and list[2].seq > list[3].seq)
            assert.are.equal(b.seq, list[1].seq)
            assert.are.same(ids_of(list), catalog_ids(sm))
            sm:close()
            assert.are.same({ b.id, a.id, future.id }, ids_of(manager(dir):list()))
            log:close()
        end)

        it("is not what latest returns once another snapshot is made", function()
            local log, sm, future = future_snapshot()
            assert.are.equal(future.id, ok(sm:latest()).id)
            local a = ok(sm:create(log))
            assert.are.equal(a.id, ok(sm:latest()).id)
            local b = ok(sm:create(log))
            assert.are.equal(b.id, ok(sm:latest()).id)
            log:close()
        end)

        it("never makes cleanup delete the snapshot just taken", function()
            local log, sm, future = future_snapshot()
            local a = ok(sm:create(log))
            assert.are.equal(0, (sm:cleanup()))
            assert.are.same({ a.id, future.id }, ids_of(sm:list()))
            local b = ok(sm:create(log))
            assert.are.equal(0, (sm:cleanup()))
            assert.are.same({ b.id, a.id, future.id }, ids_of(sm:list()))
            -- Keeping one keeps the one made last.
            assert.are.equal(2, (sm:cleanup({ max_snapshots = 1 })))
            assert.are.same({ b.id }, ids_of(sm:list()))
            assert.is_true(sm:verify(b.id))
            log:close()
        end)

        it("does not make create with min_interval refuse TOO_SOON", function()
            local log, sm, future = future_snapshot()
            local a = ok(sm:create(log, { min_interval = "1h" }))
            assert.are.same({ a.id, future.id }, ids_of(sm:list()))
            -- The snapshot just made does count.
            assert.fails_with("TOO_SOON", sm:create(log, { min_interval = "1h" }))
            log:close()
        end)
    end)

    describe("list, get, latest and delete", function()
        it("lists every snapshot, newest first", function()
            local log, sm = setup(10)
            assert.are.same({}, sm:list())
            local made = snapshots(sm, log, 4)
            local list = sm:list()
            assert.are.same(reversed(ids_of(made)), ids_of(list))
            for i = 2, #list do
                assert.is_true(list[i - 1].timestamp >= list[i].timestamp)
            end
            assert.are.same(list[1], sm:latest())
            log:close()
        end)

        it("deletes in the background with async = true, as delete does", function()
            local log, sm = setup(25)
            local made = snapshots(sm, log, 2)
            local job = ok(sm:delete(made[1].id, { async = true }))
            assert.truthy(tostring(job):find("takhin.Job(delete", 1, true))
            assert.is_true(job:wait())
            assert.are.same({ 1, 1 }, { job:progress() })    -- in snapshots
            assert.fails_with("NOT_FOUND", sm:get(made[1].id))
            assert.fails_with("NOT_FOUND", sm:delete(made[1].id, { async = true }):wait())
            assert.fails_with("INVALID", sm:delete("../x", { async = true }))
            assert.has_error(function() sm:delete(made[2].id, { asink = true }) end)
            assert.are.same({ made[2].id }, ids_of(sm:list()))
            log:close()
        end)

        it("gets a snapshot by id, with the fields create returned", function()
            local log, sm = setup(25)
            local made = snapshots(sm, log, 3)
            for _, s in ipairs(made) do
                assert.are.same(s, ok(sm:get(s.id)))
            end
            log:close()
        end)

        it("deletes a snapshot: unlisted, its directory gone, the others kept", function()
            local log, sm = setup(25)
            local made = snapshots(sm, log, 3)
            assert.is_true(sm:delete(made[2].id))
            assert.are.same({ made[3].id, made[1].id }, ids_of(sm:list()))
            assert.is_false(util.exists(made[2].path))
            assert.fails_with("NOT_FOUND", sm:get(made[2].id))
            assert.fails_with("NOT_FOUND", sm:delete(made[2].id))
            assert.are.same({ made[3].id, made[1].id }, catalog_ids(sm))
            assert.is_true(sm:verify(made[1].id))
            assert.is_true(sm:verify(made[3].id))
            -- Deleting a snapshot leaves the live log alone.
            assert.are.equal(25, log:high_water_mark())
            assert.are.equal(value_for(3), log:read(3).value)
            log:close()
        end)

        it("reports NOT_FOUND from latest when there are no snapshots", function()
            local log, sm = setup(3)
            assert.fails_with("NOT_FOUND", sm:latest())
            log:close()
        end)

        it("keeps its metadata: a new manager lists the same snapshots", function()
            local log, sm = setup(40)
            local made = snapshots(sm, log, 3)
            local list = sm:list()
            assert.is_true(sm:close())
            local sm2 = manager(dir)
            assert.are.same(list, sm2:list())
            for _, s in ipairs(made) do assert.are.same(s, ok(sm2:get(s.id))) end
            local doc = catalog(sm2)
            assert.are.equal(3, #doc.snapshots)
            assert.are.same(ids_of(list), catalog_ids(sm2))
            log:close()
        end)

        it("reports its size: the sum of total_size, and of the files in each manifest", function()
            local log, sm = setup(50)
            assert.are.equal(0, sm:size())
            snapshots(sm, log, 2)
            fill(log, 50, 70)
            snapshots(sm, log, 1)
            local sum = 0
            for _, s in ipairs(sm:list()) do
                local files = 0
                for _, f in ipairs(manifest(s).files) do
                    local size = util.tointeger(f.size)
                    assert.are.equal(size, util.file_size(s.path .. "/" .. f.name), f.name)
                    files = files + size
                end
                assert.are.equal(s.total_size, files, s.id)
                sum = sum + s.total_size
            end
            assert.is_true(sum > 0)
            assert.are.equal(sum, sm:size())
            log:close()
        end)

        it("has a printable form", function()
            local log, sm = setup(1)
            assert.are.equal("takhin.SnapshotManager(" .. dir .. "/.snapshots)", tostring(sm))
            sm:close()
            assert.are.equal("takhin.SnapshotManager(closed)", tostring(sm))
            log:close()
        end)
    end)

    describe("default configuration", function()
        it("is the seed's: 5 snapshots, 24 hours, 1 hour between snapshots", function()
            assert.are.same({ max_snapshots = 5, retention_time = "24h", min_interval = "1h" },
                            takhin.default_snapshot_config())
        end)
    end)

    describe("cleanup", function()
        -- Snapshots whose manifests say they are `ages` ms older than the
        -- newest (ages[1] == 0), long before the wall clock; returns a new
        -- manager and the ids, in the order of ages.
        local function aged(ages)
            local log, sm = setup(12)
            local made = snapshots(sm, log, #ages)
            log:close()
            sm:close()
            local T = 1000000000000           -- 2001: age is not taken from the wall clock
            local stamps, ids = {}, {}
            for i, age in ipairs(ages) do
                local s = made[#ages + 1 - i]     -- made oldest first, ages newest first
                stamps[s.id] = T - age
                ids[i] = s.id
            end
            set_timestamps(dir .. "/.snapshots", stamps)
            local sm2 = manager(dir)
            assert.are.same(ids, ids_of(sm2:list()))
            for i, id in ipairs(ids) do assert.are.equal(T - ages[i], sm2:get(id).timestamp) end
            return sm2, ids
        end

        local function pick(ids, ...)
            local out = {}
            for _, i in ipairs({ ... }) do out[#out + 1] = ids[i] end
            return out
        end

        local function assert_kept(sm, want)
            assert.are.same(want, ids_of(sm:list()))
            assert.are.same(want, catalog_ids(sm))
            local present = {}
            for _, name in ipairs(util.ls(sm:dir())) do
                local id = name:match("^snapshot%-(.+)$")
                if id then present[#present + 1] = id end
            end
            table.sort(present)
            local sorted = { util.unpack(want) }
            table.sort(sorted)
            assert.are.same(sorted, present)
        end

        local AGES = { 0, 10 * MINUTE, 40 * MINUTE, 2 * HOUR, 23 * HOUR, 25 * HOUR, 3 * DAY }

        it("by count keeps the newest max_snapshots", function()
            local log, sm = setup(20)
            local made = snapshots(sm, log, 7)
            assert.are.equal(4, (sm:cleanup({ max_snapshots = 3 })))
            assert_kept(sm, { made[7].id, made[6].id, made[5].id })
            assert.are.equal(0, (sm:cleanup({ max_snapshots = 3 })))
            assert.are.equal(2, (sm:cleanup({ max_snapshots = 1 })))
            assert_kept(sm, { made[7].id })
            log:close()
        end)

        it("by age removes snapshots older than retention_time, measured from the newest", function()
            local sm, ids = aged(AGES)
            assert.are.equal(2, (sm:cleanup({ retention_time = "24h" })))
            assert_kept(sm, pick(ids, 1, 2, 3, 4, 5))
        end)

        it("by age accepts minutes", function()
            local sm, ids = aged(AGES)
            assert.are.equal(5, (sm:cleanup({ retention_time = "30m" })))
            assert_kept(sm, pick(ids, 1, 2))
        end)

        it("by age accepts a number of seconds", function()
            local sm, ids = aged(AGES)
            assert.are.equal(4, (sm:cleanup({ retention_time = 3600 })))
            assert_kept(sm, pick(ids, 1, 2, 3))
        end)

        it("never deletes the newest snapshot, however old", function()
            local sm, ids = aged({ 0, 2 * DAY, 9 * DAY })
            assert.are.equal(2, (sm:cleanup({ retention_time = "1m" })))
            assert_kept(sm, pick(ids, 1))
            assert.are.equal(0, (sm:cleanup({ retention_time = "1m", max_snapshots = 1 })))
            assert_kept(sm, pick(ids, 1))
        end)

        it("with both rules deletes what the count condemns", function()
            local sm, ids = aged(AGES)
            assert.are.equal(5, (sm:cleanup({ max_snapshots = 2, retention_time = "24h" })))
            assert_kept(sm, pick(ids, 1, 2))
        end)

        it("with both rules deletes what the age condemns", function()
            local sm, ids = aged(AGES)
            assert.are.equal(4, (sm:cleanup({ max_snapshots = 5, retention_time = "1h" })))
            assert_kept(sm, pick(ids, 1, 2, 3))
        end)

        it("with no rules given applies the defaults: 24 hours", function()
            local sm, ids = aged({ 0, HOUR, 25 * HOUR })
            assert.are.equal(1, (sm:cleanup()))
            assert_kept(sm, pick(ids, 1, 2))
        end)

        it("with no rules given applies the defaults: 5 snapshots", function()
            local sm, ids = aged({ 0, MINUTE, 2 * MINUTE, 3 * MINUTE, 4 * MINUTE, 5 * MINUTE, 6 * MINUTE })
            assert.are.equal(2, (sm:cleanup()))
            assert_kept(sm, pick(ids, 1, 2, 3, 4, 5))
        end)

        it("rejects a bad max_snapshots or retention_time with INVALID and deletes nothing", function()
            local log, sm = setup(5)
            local made = snapshots(sm, log, 3)
            local all = reversed(ids_of(made))
            for _, rules in ipairs({
                { max_snapshots = 0 },
                { max_snapshots = -1 },
                { max_snapshots = 2.5 },
                { max_snapshots = 0, retention_time = "24h" },
                { retention_time = "forever" },
                { retention_time = "24x" },
                { retention_time = "" },
                { max_snapshots = 1, retention_time = "soon" },
            }) do
                assert.fails_with("INVALID", sm:cleanup(rules))
                assert.are.same(all, ids_of(sm:list()))
            end
            log:close()
        end)

        it("that cannot delete one victim deletes the others, keeps that one listed and "
           .. "says how many it deleted", function()
            local log, sm = setup(5)
            local made = snapshots(sm, log, 4)
            -- A non-empty .del-<id> makes the rename of snapshot-<id> fail.
            local stuck = made[2].id
            local trash = dir .. "/.snapshots/.del-" .. stuck
            assert(util.sh("mkdir -p " .. util.q(trash .. "/x")))
            util.write_file(trash .. "/x/y", "y")
            local n, msg, code = sm:cleanup({ max_snapshots = 1 })
            assert.is_nil(n)
            assert.are.equal("NOT_EMPTY", code)
            assert.truthy(msg:find("cleanup in " .. dir .. "/.snapshots: 2 of 3 snapshots deleted: "
                                   .. "rename ", 1, true), msg)
            assert.truthy(msg:find(stuck, 1, true), msg)
            assert.are.same({ made[4].id, stuck }, ids_of(sm:list()))
            -- The same through a job; once the way is clear, it goes.
            local job = ok(sm:cleanup({ max_snapshots = 1, async = true }))
            n, msg, code = job:wait()
            assert.is_nil(n)
            assert.are.equal("NOT_EMPTY", code)
            assert.truthy(msg:find("0 of 1 snapshots deleted", 1, true), msg)
            util.rmtree(trash)
            job = ok(sm:cleanup({ max_snapshots = 1, async = true }))
            assert.are.equal(1, job:wait())
            assert.are.same({ 1, 1 }, { job:progress() })
            assert.are.same({ made[4].id }, ids_of(sm:list()))
            log:close()
        end)
    end)

    describe("min_interval", function()
        it("refuses a snapshot with TOO_SOON while the newest is younger, and lists nothing new", function()
            local log, sm = setup(5)
            local first = ok(sm:create(log))
            assert.fails_with("TOO_SOON", sm:create(log, { min_interval = "1h" }))
            assert.fails_with("TOO_SOON", sm:create(log, { min_interval = 3600 }))
            assert.are.same({ first.id }, ids_of(sm:list()))
            assert.are.same({ first.id }, catalog_ids(sm))
            local names = {}
            for _, name in ipairs(util.ls(sm:dir())) do
                if name:find("^snapshot%-") then names[#names + 1] = name end
            end
            assert.are.same({ "snapshot-" .. first.id }, names)
            log:close()
        end)

        it("allows a snapshot once the newest is older than min_interval", function()
            local log, sm = setup(5)
            local first = ok(sm:create(log))
            sm:close()
            set_timestamps(dir .. "/.snapshots", { [first.id] = os.time() * 1000 - 2 * HOUR })
            sm = manager(dir)
            local second = ok(sm:create(log, { min_interval = "1h" }))
            assert.are.same({ second.id, first.id }, ids_of(sm:list()))
            assert.fails_with("TOO_SOON", sm:create(log, { min_interval = "1h" }))
            log:close()
        end)
    end)

    describe("restore", function()
        it("brings back exactly the records of the snapshot, however the log went on", function()
            local log, sm = setup(45)
            local want = records_of(log)
            local s = ok(sm:create(log))
            fill(log, 45, 120)
            assert.is_true(log:truncate(30))
            fill(log, 30, 90)
            local target = tmp .. "/restored"
            assert.is_true(sm:restore(s.id, target))
            assert_log_holds(target, want)
            local r = open(target)
            assert.are.equal(s.high_water_mark, r:high_water_mark())
            assert.are.equal(s.base_offset, r:base_offset())
            r:close()
            log:close()
        end)

        it("makes a log that can be appended to without changing the snapshot", function()
            local log, sm = setup(45)
            local want = records_of(log)
            local s = ok(sm:create(log))
            local target = tmp .. "/restored"
            ok(sm:restore(s.id, target))
            local r = open(target)
            fill(r, 45, 110)
            assert.is_true(r:truncate(20))
            fill(r, 20, 60)
            r:close()
            fill(log, 45, 140)
            assert.is_true(sm:verify(s.id))
            -- A second restore still gives the snapshot's records.
            ok(sm:restore(s.id, tmp .. "/again"))
            assert_log_holds(tmp .. "/again", want)
            log:close()
        end)

        it("restores into an existing empty directory", function()
            local log, sm = setup(20)
            local want = records_of(log)
            local s = ok(sm:create(log))
            local target = tmp .. "/empty"
            assert.is_true(util.sh("mkdir " .. util.q(target)))
            assert.is_true(sm:restore(s.id, target))
            assert_log_holds(target, want)
            log:close()
        end)

        it("keeps only offsets below upto_offset", function()
            local log, sm = setup(60)
            local want = records_of(log)
            local s = ok(sm:create(log))
            log:close()
            for _, cut in ipairs({ 0, 1, 17, 59, 60 }) do
                local target = tmp .. "/upto" .. cut
                assert.is_true(sm:restore(s.id, target, { upto_offset = cut }))
                assert_log_holds(target, want, cut)
            end
            assert.is_true(sm:verify(s.id))
        end)

        it("keeps records up to the first one newer than upto_timestamp", function()
            local log, sm = setup(60)
            local want = records_of(log)
            local s = ok(sm:create(log))
            log:close()
            local cases = {
                { ts_for(0) - 1, 0 },         -- before every record
                { ts_for(0), 1 },
                { ts_for(25), 26 },
                { ts_for(25) + 5, 26 },       -- between two records
                { ts_for(59), 60 },
                { ts_for(59) + 1000, 60 },    -- after every record
            }
            for i, case in ipairs(cases) do
                local target = tmp .. "/time" .. i
                assert.is_true(sm:restore(s.id, target, { upto_timestamp = case[1] }))
                assert_log_holds(target, want, case[2])
            end
        end)

        it("rejects upto_offset outside [base_offset, high_water_mark] with OUT_OF_RANGE", function()
            local log, sm = setup(20)
            local s = ok(sm:create(log))
            log:close()
            for i, cut in ipairs({ 21, 1000 }) do
                local target = tmp .. "/bad" .. i
                local msg = assert.fails_with("OUT_OF_RANGE", sm:restore(s.id, target, { upto_offset = cut }))
                assert.is_false(util.exists(target), msg)
            end
            assert.are.same({ "log" }, util.ls(tmp))
            assert.is_true(sm:verify(s.id))
        end)

        it("rejects a negative upto_offset (below base_offset) with OUT_OF_RANGE", function()
            local log, sm = setup(20)
            local s = ok(sm:create(log))
            log:close()
            local target = tmp .. "/bad"
            local msg = assert.fails_with("OUT_OF_RANGE", sm:restore(s.id, target, { upto_offset = -1 }))
            assert.is_false(util.exists(target), msg)
            assert.are.same({ "log" }, util.ls(tmp))
        end)

        it("reports NOT_FOUND for a missing id and creates nothing", function()
            local log, sm = setup(5)
            ok(sm:create(log))
            local target = tmp .. "/restored"
            assert.fails_with("NOT_FOUND", sm:restore("1600000000000-deadbeef", target))
            assert.is_false(util.exists(target))
            log:close()
        end)

        it("refuses a directory that is not empty with NOT_EMPTY and leaves it untouched", function()
            local log, sm = setup(10)
            local s = ok(sm:create(log))
            log:close()
            local target = tmp .. "/busy"
            assert.is_true(util.sh("mkdir -p " .. util.q(target .. "/sub")))
            util.write_file(target .. "/keep.txt", "precious\n")
            util.write_file(target .. "/sub/" .. util.segment_name(0, "log"), "not a segment")
            local before = tree(target)
            assert.fails_with("NOT_EMPTY", sm:restore(s.id, target))
            assert.are.same(before, tree(target))
            -- A lone dot file is enough to make it not empty.
            local dotted = tmp .. "/dotted"
            assert.is_true(util.sh("mkdir " .. util.q(dotted)))
            util.write_file(dotted .. "/.hidden", "x")
            assert.fails_with("NOT_EMPTY", sm:restore(s.id, dotted))
            assert.are.same({ ".hidden" }, util.ls(dotted))
        end)

        it("refuses a target that is a regular file with EXISTS and leaves it untouched", function()
            local log, sm = setup(10)
            local s = ok(sm:create(log))
            log:close()
            local target = tmp .. "/afile"
            util.write_file(target, "just a file\n")
            assert.fails_with("EXISTS", sm:restore(s.id, target))
            assert.are.equal("just a file\n", util.read_file(target))
        end)

        describe("with replace", function()
            it("refuses with LOCKED while a writer holds the log, and leaves the log alone", function()
                local log, sm = setup(30)
                local s = ok(sm:create(log))
                fill(log, 30, 50)
                local want = records_of(log)
                local msg = assert.fails_with("LOCKED", sm:restore(s.id, dir, { replace = true }))
                assert.truthy(msg:find(tostring(util.getpid()), 1, true), msg)
                assert.are.equal(51, log:high_water_mark())
                assert.are.equal(51, log:append("k", "still writing", 1))
                log:close()
                want[#want + 1] = { offset = 51, key = "k", value = "still writing", timestamp = 1 }
                assert_log_holds(dir, want)
                assert.is_true(sm:verify(s.id))
            end)

            -- The snapshot holds 60 records; the log is then cut to 20 and
            -- written again with other bytes up to `upto`, read through a
            -- read-only handle, and restored in place (no writer open).
            -- Returns the read-only handle, the snapshot and its records.
            local function restored_under(upto)
                local log, sm = setup(60)
                local want = records_of(log)
                local s = ok(sm:create(log))
                assert.is_true(log:truncate(20))
                for o = 20, upto - 1 do
                    assert.are.equal(o, log:append("other", "other bytes at " .. o, 5))
                end
                local ro = open(dir, { readonly = true })
                assert.are.equal(upto, ro:high_water_mark())
                for o = 0, upto - 1 do assert.are.equal(o, ro:read(o).offset) end
                log:close()
                assert.is_true(sm:restore(s.id, dir, { replace = true }))
                return ro, s, want
            end

            for _, case in ipairs({ { "longer", 30 }, { "shorter", 120 } }) do
                it("gives a read-only handle kept open across it the restored records (snapshot "
                   .. case[1] .. " than the log)", function()
                    local ro, s, want = restored_under(case[2])
                    for _, w in ipairs(want) do
                        local rec, msg, code = ro:read(w.offset)
                        assert(rec, "read " .. w.offset .. ": " .. tostring(msg) .. " " .. tostring(code))
                        assert.are.same(w, rec, "offset " .. w.offset)
                    end
                    assert.are.equal(s.high_water_mark, ro:high_water_mark())
                    assert.are.equal(s.base_offset, ro:base_offset())
                    assert.fails_with("OUT_OF_RANGE", ro:read(60))
                    local n = 0
                    for rec in ro:records() do
                        n = n + 1
                        assert.are.same(want[n], rec)
                    end
                    assert.are.equal(60, n)
                    assert.are.equal(40, ro:offset_for_time(ts_for(40)))
                    ro:close()
                end)

                it("gives a read-only handle kept open across it the snapshot's high water mark at once (snapshot "
                   .. case[1] .. " than the log)", function()
                    local ro, s = restored_under(case[2])
                    assert.are.equal(s.high_water_mark, ro:high_water_mark())
                    assert.are.equal(s.base_offset, ro:base_offset())
                    assert.are.equal(s.high_water_mark, ro:high_water_mark())
                    ro:close()
                end)
            end

            it("replaces a closed log in place and keeps its snapshots", function()
                local log, sm = setup(40)
                local want = records_of(log)
                local s = ok(sm:create(log))
                local other = ok(sm:create(log, { label = "other" }))
                fill(log, 40, 100)
                log:close()
                local snap_tree = tree(sm:dir())
                local list = sm:list()
                assert.is_true(sm:restore(s.id, dir, { replace = true }))
                assert_log_holds(dir, want)
                local r = open(dir)
                assert.are.equal(s.high_water_mark, r:high_water_mark())
                assert.are.equal(40, r:append("after", "restore", 7))
                r:close()
                assert.are.same(snap_tree, tree(sm:dir()))
                assert.are.same(list, sm:list())
                assert.is_true(sm:verify(s.id))
                assert.is_true(sm:verify(other.id))
                local sm2 = manager(dir)
                assert.are.same(list, sm2:list())
            end)
        end)
    end)

    describe("link mode", function()
        it("hard-links sealed segments and copies the active one", function()
            local log, sm = setup(70)
            local s = ok(sm:create(log))
            assert.is_true(s.num_segments >= 3)
            for i, base in ipairs(s.segment_offsets) do
                local name = util.segment_name(base, "log")
                local shared = file_id(s.path .. "/" .. name) == file_id(dir .. "/" .. name)
                if i < s.num_segments then
                    assert.is_true(shared, name .. " (sealed) is not shared with the log")
                else
                    assert.is_false(shared, name .. " (active) is shared with the log")
                end
            end
            -- Appending to the live log leaves the linked files intact.
            fill(log, 70, 160)
            assert.is_true(sm:verify(s.id))
            log:close()
        end)

        it("copies everything in copy mode", function()
            local log, sm = setup(70, { mode = "copy" })
            local s = ok(sm:create(log))
            assert.are.equal("copy", s.mode)
            local live = {}
            for _, name in ipairs(util.ls(dir)) do
                if not name:find("^%.") then live[file_id(dir .. "/" .. name)] = name end
            end
            for _, f in ipairs(manifest(s).files) do
                local id = file_id(s.path .. "/" .. f.name)
                assert.is_nil(live[id], f.name .. " shares its inode with " .. tostring(live[id]))
                local _, nlink = util.stat(s.path .. "/" .. f.name)
                assert.are.equal(1, nlink, f.name)
            end
            assert.is_true(sm:verify(s.id))
            log:close()
        end)

        describe("with the snapshot directory on another filesystem", function()
            local shm

            before_each(function()
                shm = util.capture("mktemp -d /dev/shm/takhin-spec.XXXXXX"):gsub("%s+$", "")
                assert(shm ~= "" and util.is_dir(shm), "mktemp -d in /dev/shm failed")
            end)
            after_each(function()
                collectgarbage(); collectgarbage()
                util.rmtree(shm)
            end)

            it("reports mode \"copy\" when every file was copied", function()
                local log = open(dir)
                fill(log, 0, 69)
                if device(dir) == device(shm) then
                    log:close()
                    return pending("/dev/shm is on the same filesystem as " .. tmp)
                end
                local sm = manager(dir, { dir = shm })
                local s = ok(sm:create(log))
                assert.is_true(s.num_segments >= 3)
                assert.are.equal("copy", s.mode)
                assert.are.equal("copy", ok(sm:get(s.id)).mode)
                assert.are.equal("copy", manifest(s).mode)
                log:close()
                sm:close()
            end)

            it("copies instead of linking, and the snapshot verifies and restores", function()
                local log = open(dir)
                fill(log, 0, 69)
                assert.are_not.equal(device(dir), device(shm), "/dev/shm is on the same filesystem as " .. tmp)
                local sm = manager(dir, { dir = shm })
                assert.are.equal(shm, sm:dir())
                local s = ok(sm:create(log))
                assert.are.equal(shm .. "/snapshot-" .. s.id, s.path)
                assert.is_true(s.num_segments >= 3)
                for _, f in ipairs(manifest(s).files) do
                    local _, nlink = util.stat(s.path .. "/" .. f.name)
                    assert.are.equal(1, nlink, f.name)
                    assert.are_not.equal(file_id(dir .. "/" .. f.name), file_id(s.path .. "/" .. f.name))
                end
                assert.is_false(util.exists(dir .. "/.snapshots/snapshot-" .. s.id))
                assert.is_true(sm:verify(s.id))
                local want = records_of(log)
                fill(log, 70, 100)
                ok(sm:restore(s.id, tmp .. "/restored"))
                assert_log_holds(tmp .. "/restored", want)
                assert.are.same({ s.id }, ids_of(sm:list()))
                log:close()
                sm:close()
            end)
        end)
    end)

    describe("damage", function()
        -- The snapshot's files of each kind: a sealed .log, a sealed
        -- .index and .timeindex (non-empty), the active .log copy.
        local function victims(s)
            local first, last = s.segment_offsets[1], s.segment_offsets[s.num_segments]
            return {
                { "sealed .log", util.segment_name(first, "log") },
                { ".index", util.segment_name(first, "index") },
                { ".timeindex", util.segment_name(first, "timeindex") },
                { "active .log", util.segment_name(last, "log") },
            }
        end

        for _, mode in ipairs({ "link", "copy" }) do
            it("to any file of a snapshot (" .. mode .. " mode) fails verify and restore with CORRUPT naming the file", function()
                local log, sm = setup(70, { mode = mode })
                local s = ok(sm:create(log))
                log:close()
                assert.is_true(s.num_segments >= 3)
                for _, v in ipairs(victims(s)) do
                    local kind, name = v[1], v[2]
                    local path = s.path .. "/" .. name
                    local size = util.file_size(path)
                    assert.is_true(size > 0, kind .. " " .. name .. " is empty")
                    local pos = math.floor(size / 2)
                    util.flip_byte(path, pos)

                    local msg = assert.fails_with("CORRUPT", sm:verify(s.id))
                    assert.truthy(msg:find(path, 1, true), kind .. ": " .. msg)
                    local target = tmp .. "/restored"
                    msg = assert.fails_with("CORRUPT", sm:restore(s.id, target))
                    assert.truthy(msg:find(path, 1, true), kind .. ": " .. msg)
                    assert.is_false(util.exists(target), kind .. ": the target was created")
                    assert.are.same({ "log" }, util.ls(tmp), kind .. ": something was left beside the target")

                    util.flip_byte(path, pos)
                    assert.is_true(sm:verify(s.id), kind)
                end
                assert.is_true(sm:restore(s.id, tmp .. "/restored"))
            end)
        end

        it("to a file's length fails verify with CORRUPT naming the file", function()
            local log, sm = setup(70)
            local s = ok(sm:create(log))
            log:close()
            local path = s.path .. "/" .. util.segment_name(s.segment_offsets[s.num_segments], "log")
            util.append_file(path, "extra")
            local msg = assert.fails_with("CORRUPT", sm:verify(s.id))
            assert.truthy(msg:find(path, 1, true), msg)
        end)

        local damages = {
            { "deleted", function(path) assert(os.remove(path)) end },
            { "truncated", function(path) util.truncate(path, math.floor(util.file_size(path) / 2)) end },
            { "overwritten with random bytes", function(path)
                local size = util.file_size(path)
                math.randomseed(1234)
                local bytes = {}
                for i = 1, size do bytes[i] = string.char(math.random(0, 255)) end
                util.write_file(path, table.concat(bytes))
            end },
            { "emptied", function(path) util.write_file(path, "") end },
        }
        for _, d in ipairs(damages) do
            it("to snapshots.json (" .. d[1] .. ") is repaired from the manifests by the next manager", function()
                local log, sm = setup(30)
                snapshots(sm, log, 3)
                log:close()
                local list = sm:list()
                sm:close()
                local path = dir .. "/.snapshots/snapshots.json"
                d[2](path)
                local sm2 = manager(dir)
                assert.are.same(list, sm2:list())
                assert.are.same(ids_of(list), catalog_ids(sm2))
                for _, s in ipairs(list) do assert.is_true(sm2:verify(s.id)) end
                local sm3 = manager(dir)
                assert.are.same(list, sm3:list())
            end)
        end
    end)

    describe("a damaged manifest.json", function()
        -- Three snapshots; the manifest of `which` (1 oldest .. 3 newest)
        -- overwritten with garbage, snapshots.json removed; a new manager
        -- rebuilds the catalog.  Returns the log, the manager, the
        -- snapshots as create returned them and the damaged one.
        local function damaged(which)
            local log, sm = setup(40)
            local made = {}
            for i = 1, 3 do
                made[i] = ok(sm:create(log, { label = "s" .. i }))
                fill(log, 35 + i * 5, 39 + i * 5)
            end
            sm:close()
            local bad = made[which]
            util.write_file(bad.path .. "/manifest.json", "\0\255{ not json \1\2\3")
            assert(os.remove(dir .. "/.snapshots/snapshots.json"))
            return log, manager(dir), made, bad
        end

        -- Bytes of the regular files in a directory.
        local function bytes_in(path)
            local total = 0
            for _, name in ipairs(util.ls(path)) do total = total + util.file_size(path .. "/" .. name) end
            return total
        end

        it("leaves its snapshot listed, marked damaged, with what can still be known", function()
            local log, sm, made, bad = damaged(2)
            local list = sm:list()
            assert.are.equal(3, #list)
            local entry
            for _, snap in ipairs(list) do
                if snap.id == bad.id then entry = snap else assert.is_nil(snap.damaged, snap.id) end
            end
            assert.is_not_nil(entry, "the damaged snapshot is not listed")
            assert.is_true(entry.damaged)
            assert.are.equal(tonumber(bad.id:match("^(%d+)%-")), entry.timestamp)
            assert.are.equal(bytes_in(bad.path), entry.total_size)
            assert.are.equal(bad.path, entry.path)
            local got = ok(sm:get(bad.id))
            assert.is_true(got.damaged)
            assert.are.equal(bad.id, got.id)
            -- The healthy ones keep their order and their fields.
            assert.are.same({ made[3].id, made[1].id }, (function()
                local ids = {}
                for _, snap in ipairs(list) do if not snap.damaged then ids[#ids + 1] = snap.id end end
                return ids
            end)())
            assert.are.same(made[1], ok(sm:get(made[1].id)))
            assert.are.equal(made[1].total_size + made[3].total_size + entry.total_size, sm:size())
            log:close()
        end)

        it("makes verify and restore of its snapshot fail with CORRUPT, creating nothing", function()
            local log, sm, _, bad = damaged(2)
            local msg = assert.fails_with("CORRUPT", sm:verify(bad.id))
            assert.truthy(msg:find(bad.id, 1, true), msg)
            local target = tmp .. "/restored"
            assert.fails_with("CORRUPT", sm:restore(bad.id, target))
            assert.is_false(util.exists(target))
            assert.are.same({ "log" }, util.ls(tmp))
            log:close()
        end)

        it("is skipped by latest, even as the newest", function()
            local log, sm, made = damaged(3)
            assert.are.equal(made[2].id, ok(sm:latest()).id)
            log:close()
        end)

        it("can be deleted by id", function()
            local log, sm, made, bad = damaged(2)
            assert.is_true(sm:delete(bad.id))
            assert.is_false(util.exists(bad.path))
            assert.fails_with("NOT_FOUND", sm:get(bad.id))
            assert.are.same({ made[3].id, made[1].id }, ids_of(sm:list()))
            assert.are.equal(made[1].total_size + made[3].total_size, sm:size())
            log:close()
        end)

        it("is deleted by cleanup, even under a policy that keeps everything", function()
            for _, rules in ipairs({ { max_snapshots = 100 }, { keep_last = 100 }, {}, "defaults" }) do
                local log, sm, made, bad = damaged(2)
                local n = sm:cleanup(rules ~= "defaults" and rules or nil)
                assert.are.equal(1, n)
                assert.is_false(util.exists(bad.path))
                assert.are.same({ made[3].id, made[1].id }, ids_of(sm:list()))
                assert.are.same({ made[3].id, made[1].id }, catalog_ids(sm))
                log:close()
                sm:close()
                util.rmtree(tmp)
                tmp = util.tmpdir()
                dir = tmp .. "/log"
            end
        end)
    end)

    describe("a manifest of another format", function()
        it("makes verify and restore fail with CORRUPT saying the format is not supported", function()
            local log, sm = setup(30)
            local s = ok(sm:create(log))
            log:close()
            local path = s.path .. "/manifest.json"
            local text, n = util.read_file(path):gsub('("format"%s*:%s*)1', "%12")
            assert.are.equal(1, n)
            util.write_file(path, text)
            for _, call in ipairs({
                function() return sm:verify(s.id) end,
                function() return sm:restore(s.id, tmp .. "/restored") end,
            }) do
                local msg = assert.fails_with("CORRUPT", call())
                assert.truthy(msg:find("format 2", 1, true), msg)
                assert.truthy(msg:find("not supported", 1, true), msg)
            end
            assert.is_false(util.exists(tmp .. "/restored"))
        end)
    end)

    describe("bad input", function()
        local BAD_IDS = { "a/b", "/", "/etc", "..", "../x", "a..b", ".hidden", "", ("x"):rep(64), "a b" }

        it("rejects malformed ids with INVALID in get, delete, verify and restore", function()
            local log, sm = setup(5)
            ok(sm:create(log))
            log:close()
            local target = tmp .. "/restored"
            for _, id in ipairs(BAD_IDS) do
                local where = ("id %q"):format(id)
                local _, msg, code = sm:get(id)
                assert.are.equal("INVALID", code, where .. ": " .. tostring(msg))
                _, msg, code = sm:delete(id)
                assert.are.equal("INVALID", code, where .. ": " .. tostring(msg))
                _, msg, code = sm:verify(id)
                assert.are.equal("INVALID", code, where .. ": " .. tostring(msg))
                _, msg, code = sm:restore(id, target)
                assert.are.equal("INVALID", code, where .. ": " .. tostring(msg))
                assert.is_false(util.exists(target), where)
            end
            assert.are.equal(1, #sm:list())
        end)

        it("reports NOT_FOUND for an unknown id in get, delete, verify and restore", function()
            local log, sm = setup(5)
            ok(sm:create(log))
            log:close()
            local target = tmp .. "/restored"
            for _, id in ipairs({ "1600000000000-deadbeef", "nope", "snapshot-x" }) do
                assert.fails_with("NOT_FOUND", sm:get(id))
                assert.fails_with("NOT_FOUND", sm:delete(id))
                assert.fails_with("NOT_FOUND", sm:verify(id))
                assert.fails_with("NOT_FOUND", sm:restore(id, target))
                assert.is_false(util.exists(target))
            end
            assert.are.equal(1, #sm:list())
        end)

        it("raises on a closed log and lists nothing", function()
            local log, sm = setup(5)
            log:close()
            local okay, err = pcall(sm.create, sm, log)
            assert.is_false(okay)
            assert.truthy(tostring(err):find("attempt to use a closed takhin.Log", 1, true), tostring(err))
            assert.are.same({}, sm:list())
            for _, name in ipairs(util.ls(sm:dir())) do
                assert.is_nil(name:find("^snapshot%-"), name)
                assert.is_nil(name:find("^%.tmp"), name)
            end
        end)

        it("raises on arguments of the wrong type", function()
            local log, sm = setup(5)
            local s = ok(sm:create(log))
            local target = tmp .. "/restored"
            assert.has_error(function() sm:get(42) end)
            assert.has_error(function() sm:get() end)
            assert.has_error(function() sm:delete(42) end)
            assert.has_error(function() sm:verify(42) end)
            assert.has_error(function() sm:restore(42, target) end)
            assert.has_error(function() sm:restore(s.id, nil) end)
            assert.has_error(function() sm:restore(s.id, 7) end)
            assert.has_error(function() sm:restore(s.id, target, "replace") end)
            assert.has_error(function() sm:restore(s.id, target, { replace = "yes" }) end)
            assert.has_error(function() sm:restore(s.id, target, { upto_offset = "3" }) end)
            assert.has_error(function() sm:restore(s.id, target, { upto_offset = 1.5 }) end)
            assert.has_error(function() sm:create("not a log") end)
            assert.has_error(function() sm:create(nil) end)
            assert.has_error(function() sm:create(log, "label") end)
            assert.has_error(function() sm:create(log, { label = 5 }) end)
            assert.has_error(function() sm:create(log, { progress = "no" }) end)
            assert.has_error(function() sm:cleanup("all") end)
            assert.has_error(function() takhin.snapshot_manager(42) end)
            assert.has_error(function() takhin.snapshot_manager(dir, "copy") end)
            assert.has_error(function() takhin.snapshot_manager(dir, { dir = 5 }) end)
            assert.is_false(util.exists(target))
            assert.are.same({ s.id }, ids_of(sm:list()))
            log:close()
        end)

        it("raises on unknown option names", function()
            local log, sm = setup(5)
            local s = ok(sm:create(log))
            local target = tmp .. "/restored"
            local cases = {
                function() takhin.snapshot_manager(dir, { mdoe = "copy" }) end,
                function() sm:create(log, { lable = "x" }) end,
                function() sm:create(log, { min_intreval = "1h" }) end,
                function() sm:restore(s.id, target, { upto = 3 }) end,
                function() sm:restore(s.id, target, { replcae = true }) end,
                function() sm:cleanup({ max_snapshot = 1 }) end,
            }
            for i, f in ipairs(cases) do
                local okay, err = pcall(f)
                assert.is_false(okay, "case " .. i .. " did not raise")
                assert.truthy(tostring(err):find("unknown option", 1, true), "case " .. i .. ": " .. tostring(err))
            end
            assert.is_false(util.exists(target))
            assert.are.same({ s.id }, ids_of(sm:list()))
            log:close()
        end)

        it("raises on an unknown option name given to verify", function()
            local log, sm = setup(5)
            local s = ok(sm:create(log))
            log:close()
            local okay, err = pcall(sm.verify, sm, s.id, { progres = function() end })
            assert.is_false(okay, "verify accepted the option 'progres'")
            assert.truthy(tostring(err):find("unknown option", 1, true), tostring(err))
        end)

        it("refuses the log's own directory as the snapshot directory with INVALID naming it", function()
            -- It used to take the log's .lock as its own and hang with the
            -- writer open in the same process: the child is bounded.
            local log = open(dir)
            fill(log, 0, 4)
            log:close()
            assert.is_true(util.sh("ln -s " .. util.q(dir) .. " " .. util.q(tmp .. "/link")))
            local child = [[
                local takhin = require("takhin")
                local dir, snap_dir = arg[1], arg[2]
                local log = assert(takhin.open_log({ dir = dir }))
                local sm, msg, code = takhin.snapshot_manager(dir, { dir = snap_dir })
                io.write(tostring(sm), "\n", tostring(msg), "\n", tostring(code), "\n")
                log:close()
            ]]
            for _, snap_dir in ipairs({ dir, dir .. "/", tmp .. "/link" }) do
                local pid, out = util.spawn_lua(tmp, child, { dir, snap_dir })
                local finished = util.wait_exit(pid, 1000)
                util.stop(pid)
                assert.is_true(finished, "snapshot_manager hung with snapshot dir " .. snap_dir)
                local text = util.read_file(out)
                local sm, msg, code = text:match("^([^\n]*)\n([^\n]*)\n([^\n]*)\n$")
                assert.are.equal("nil", sm, text)
                assert.are.equal("INVALID", code, text)
                assert.truthy(msg:find(snap_dir, 1, true), msg)
            end
            assert.is_false(util.exists(dir .. "/snapshots.json"))
            assert.is_false(util.exists(dir .. "/.snapshots"))
        end)

        it("reports a missing log directory with NOT_FOUND and a bad mode with INVALID", function()
            assert.fails_with("NOT_FOUND", takhin.snapshot_manager(tmp .. "/no-such-log"))
            local log = open(dir)
            assert.fails_with("INVALID", takhin.snapshot_manager(dir, { mode = "hardlink" }))
            log:close()
        end)

        it("raises on every method after close", function()
            local log, sm = setup(5)
            local s = ok(sm:create(log))
            assert.is_true(sm:close())
            assert.is_true(sm:close())
            local calls = {
                create = function() return sm:create(log) end,
                restore = function() return sm:restore(s.id, tmp .. "/restored") end,
                list = function() return sm:list() end,
                get = function() return sm:get(s.id) end,
                latest = function() return sm:latest() end,
                delete = function() return sm:delete(s.id) end,
                verify = function() return sm:verify(s.id) end,
                cleanup = function() return sm:cleanup({ max_snapshots = 1 }) end,
                cleanup_defaults = function() return sm:cleanup() end,
                size = function() return sm:size() end,
                dir = function() return sm:dir() end,
            }
            for name, f in pairs(calls) do
                local okay, err = pcall(f)
                assert.is_false(okay, name .. " did not raise")
                assert.truthy(tostring(err):find("attempt to use a closed takhin.SnapshotManager", 1, true),
                              name .. ": " .. tostring(err))
            end
            assert.is_false(util.exists(tmp .. "/restored"))
            local sm2 = manager(dir)
            assert.are.same({ s.id }, ids_of(sm2:list()))
            log:close()
        end)
    end)
end)
