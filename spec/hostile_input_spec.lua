-- Hostile input: arguments of the wrong type, offsets and timestamps at the
-- edges of the integers (and beyond them), NUL bytes in paths and ids,
-- snapshot ids and manifests crafted to reach outside the snapshot
-- directory, and symlinks planted where takhin expects its own files.
--
-- What a user relies on: misuse raises (and changes nothing); bad values
-- are `nil, message, CODE`; and nothing takhin does with hostile input
-- reads, writes or removes anything outside the directories it owns.  A
-- marker directory beside the log, and a listing of the whole temporary
-- tree taken before and after, check the last point.

local takhin = require("takhin")
local util = require("helpers.util")
require("helpers.assertions")

local OPTS = { max_segment_size = 300, index_interval_bytes = 64 }
local N = 10                                -- records 0 .. N-1, timestamps 1000 + i

local function value(i) return ("value-%03d-"):format(i) .. ("x"):rep(50) end

-- f raises an error with a message (it is misuse, not a failure).
local function raises(what, f)
    local ok, err = pcall(f)
    assert.is_false(ok, what .. " did not raise")
    assert.is_string(err, what .. " raised a non-string")
    return err
end

local function describe_value(v)
    if type(v) == "string" then
        if #v > 40 then return ("%q..(%d bytes)"):format(v:sub(1, 20), #v) end
        return ("%q"):format(v)
    end
    return tostring(v)
end

-- Every file and directory under dir, with sizes, one per line.
local function tree(dir)
    return util.capture("cd " .. util.q(dir) .. " && find . -printf '%p %y %s\\n' | sort")
end

describe("hostile input", function()
    local tmp, dir, outside, log, sm, snap, before

    before_each(function()
        tmp = util.tmpdir()
        dir = tmp .. "/log"
        outside = tmp .. "/outside"
        assert(util.sh("mkdir " .. util.q(outside)))
        util.write_file(outside .. "/marker", "not takhin's\n")
        local opts = { dir = dir }
        for k, v in pairs(OPTS) do opts[k] = v end
        log = assert(takhin.open_log(opts))
        for i = 0, N - 1 do assert.are.equal(i, log:append("k" .. i, value(i), 1000 + i)) end
        sm = assert(takhin.snapshot_manager(dir))
        snap = assert(sm:create(log))
        before = tree(tmp)
    end)

    after_each(function()
        if log then log:close() end
        if sm then sm:close() end
        collectgarbage(); collectgarbage()
        util.rmtree(tmp)
    end)

    -- The log and its snapshot are as before_each left them.
    local function assert_unchanged()
        assert.are.equal(N, log:high_water_mark())
        assert.are.equal(0, log:base_offset())
        for i = 0, N - 1 do assert.are.equal(value(i), log:read(i).value) end
        local list = assert(sm:list())
        assert.are.equal(1, #list)
        assert.are.equal(snap.id, list[1].id)
        assert.is_true(sm:verify(snap.id))
        assert.are.equal("not takhin's\n", util.read_file(outside .. "/marker"))
    end

    ---------------------------------------------------------------------
    describe("arguments of the wrong type", function()
        it("raise from every Log method and change nothing", function()
            local cases = {
                { "append(1, 'v')", function() return log:append(1, "v") end },
                { "append({}, 'v')", function() return log:append({}, "v") end },
                { "append(true, 'v')", function() return log:append(true, "v") end },
                { "append('k')", function() return log:append("k") end },
                { "append('k', nil)", function() return log:append("k", nil) end },
                { "append('k', 5)", function() return log:append("k", 5) end },
                { "append('k', {})", function() return log:append("k", {}) end },
                { "append('k', 'v', '5')", function() return log:append("k", "v", "5") end },
                { "append('k', 'v', {})", function() return log:append("k", "v", {}) end },
                { "append('k', 'v', true)", function() return log:append("k", "v", true) end },
                { "append('k', 'v', 1.5)", function() return log:append("k", "v", 1.5) end },
                { "append_batch()", function() return log:append_batch() end },
                { "append_batch('x')", function() return log:append_batch("x") end },
                { "append_batch(5)", function() return log:append_batch(5) end },
                { "append_batch({ 'x' })", function() return log:append_batch({ "x" }) end },
                { "append_batch({ { key = 'k' } })", function() return log:append_batch({ { key = "k" } }) end },
                { "append_batch({ { value = 5 } })", function() return log:append_batch({ { value = 5 } }) end },
                { "append_batch({ { key = 5, value = 'v' } })",
                  function() return log:append_batch({ { key = 5, value = "v" } }) end },
                { "append_batch({ { value = 'v', timestamp = '1' } })",
                  function() return log:append_batch({ { value = "v", timestamp = "1" } }) end },
                { "append_batch({ { value = 'v', timestamp = 0.5 } })",
                  function() return log:append_batch({ { value = "v", timestamp = 0.5 } }) end },
                { "append_batch with a bad last element",
                  function() return log:append_batch({ { value = "a" }, { value = "b" }, false }) end },
                { "read()", function() return log:read() end },
                { "read('0')", function() return log:read("0") end },
                { "read({})", function() return log:read({}) end },
                { "read(true)", function() return log:read(true) end },
                { "read(0.5)", function() return log:read(0.5) end },
                { "records('0')", function() return log:records("0") end },
                { "records(0, '5')", function() return log:records(0, "5") end },
                { "records({})", function() return log:records({}) end },
                { "records(0.5)", function() return log:records(0.5) end },
                { "offset_for_time()", function() return log:offset_for_time() end },
                { "offset_for_time('0')", function() return log:offset_for_time("0") end },
                { "offset_for_time(0.5)", function() return log:offset_for_time(0.5) end },
                { "truncate()", function() return log:truncate() end },
                { "truncate('0')", function() return log:truncate("0") end },
                { "truncate(0.5)", function() return log:truncate(0.5) end },
                { "truncate({})", function() return log:truncate({}) end },
            }
            for _, c in ipairs(cases) do raises(c[1], c[2]) end
            assert_unchanged()
        end)

        it("raise from open_log, snapshot_manager and crc32c", function()
            local cases = {
                { "open_log()", function() return takhin.open_log() end },
                { "open_log('dir')", function() return takhin.open_log(dir) end },
                { "open_log({})", function() return takhin.open_log({}) end },
                { "open_log{ dir = 5 }", function() return takhin.open_log({ dir = 5 }) end },
                { "open_log{ dir = {} }", function() return takhin.open_log({ dir = {} }) end },
                { "open_log{ max_segment_size = '1' }",
                  function() return takhin.open_log({ dir = tmp .. "/new", max_segment_size = "1" }) end },
                { "open_log{ max_segment_size = 1.5 }",
                  function() return takhin.open_log({ dir = tmp .. "/new", max_segment_size = 1.5 }) end },
                { "open_log{ readonly = 'yes' }",
                  function() return takhin.open_log({ dir = tmp .. "/new", readonly = "yes" }) end },
                { "open_log{ sync = 1 }", function() return takhin.open_log({ dir = tmp .. "/new", sync = 1 }) end },
                { "open_log{ sync = true }", function() return takhin.open_log({ dir = tmp .. "/new", sync = true }) end },
                { "open_log{ unknown option }",
                  function() return takhin.open_log({ dir = tmp .. "/new", max_segment_sise = 1 }) end },
                { "open_log{ [1] = 'x' }", function() return takhin.open_log({ dir = tmp .. "/new", "x" }) end },
                { "snapshot_manager()", function() return takhin.snapshot_manager() end },
                { "snapshot_manager(5)", function() return takhin.snapshot_manager(5) end },
                { "snapshot_manager({})", function() return takhin.snapshot_manager({}) end },
                { "snapshot_manager(dir, 'x')", function() return takhin.snapshot_manager(dir, "x") end },
                { "snapshot_manager(dir, { dir = 5 })", function() return takhin.snapshot_manager(dir, { dir = 5 }) end },
                { "snapshot_manager(dir, { mode = 1 })", function() return takhin.snapshot_manager(dir, { mode = 1 }) end },
                { "snapshot_manager(dir, { unknown option })",
                  function() return takhin.snapshot_manager(dir, { mdoe = "copy" }) end },
                { "crc32c()", function() return takhin.crc32c() end },
                { "crc32c(5)", function() return takhin.crc32c(5) end },
                { "crc32c('x', 'y')", function() return takhin.crc32c("x", "y") end },
                { "crc32c('x', 0.5)", function() return takhin.crc32c("x", 0.5) end },
                { "crc32c('x', -1)", function() return takhin.crc32c("x", -1) end },
                { "check_snapshot_id(5)", function() return takhin.check_snapshot_id(5) end },
            }
            for _, c in ipairs(cases) do raises(c[1], c[2]) end
            assert.is_false(util.exists(tmp .. "/new"))
            assert.are.equal(before, tree(tmp))
            assert_unchanged()
        end)

        it("raise from every SnapshotManager method and change nothing", function()
            local target = tmp .. "/target"
            local id = snap.id
            local closed = assert(takhin.open_log({ dir = dir, readonly = true }))
            closed:close()
            local cases = {
                { "create()", function() return sm:create() end },
                { "create('log')", function() return sm:create("log") end },
                { "create(manager)", function() return sm:create(sm) end },
                { "create(closed log)", function() return sm:create(closed) end },
                { "create(log, 'x')", function() return sm:create(log, "x") end },
                { "create(log, { label = 5 })", function() return sm:create(log, { label = 5 }) end },
                { "create(log, { progress = 'f' })", function() return sm:create(log, { progress = "f" }) end },
                { "create(log, { unknown option })", function() return sm:create(log, { lable = "x" }) end },
                { "restore()", function() return sm:restore() end },
                { "restore(5, target)", function() return sm:restore(5, target) end },
                { "restore(id)", function() return sm:restore(id) end },
                { "restore(id, 5)", function() return sm:restore(id, 5) end },
                { "restore(id, target, 'x')", function() return sm:restore(id, target, "x") end },
                { "restore{ replace = 'yes' }", function() return sm:restore(id, target, { replace = "yes" }) end },
                { "restore{ upto_offset = '1' }", function() return sm:restore(id, target, { upto_offset = "1" }) end },
                { "restore{ upto_offset = 0.5 }", function() return sm:restore(id, target, { upto_offset = 0.5 }) end },
                { "restore{ upto_timestamp = '1' }",
                  function() return sm:restore(id, target, { upto_timestamp = "1" }) end },
                { "restore{ progress = 1 }", function() return sm:restore(id, target, { progress = 1 }) end },
                { "restore{ unknown option }", function() return sm:restore(id, target, { replcae = true }) end },
                { "get()", function() return sm:get() end },
                { "get(5)", function() return sm:get(5) end },
                { "get({})", function() return sm:get({}) end },
                { "delete()", function() return sm:delete() end },
                { "delete(5)", function() return sm:delete(5) end },
                { "delete({ id })", function() return sm:delete({ id }) end },
                { "verify()", function() return sm:verify() end },
                { "verify(5)", function() return sm:verify(5) end },
                { "verify(id, 'x')", function() return sm:verify(id, "x") end },
                { "verify(id, { progress = 1 })", function() return sm:verify(id, { progress = 1 }) end },
                { "verify(id, { unknown option })", function() return sm:verify(id, { progres = print }) end },
                { "cleanup('x')", function() return sm:cleanup("x") end },
                { "cleanup(5)", function() return sm:cleanup(5) end },
                { "cleanup({ unknown rule })", function() return sm:cleanup({ keep_dialy = 1 }) end },
                { "list on a log", function() return sm.list(log) end },
                { "get on a string", function() return sm.get("sm", id) end },
                { "delete on a log", function() return sm.delete(log, id) end },
                { "verify on nil", function() return sm.verify(nil, id) end },
                { "size on a table", function() return sm.size({}) end },
            }
            for _, c in ipairs(cases) do raises(c[1], c[2]) end
            assert.is_false(util.exists(target))
            assert.are.equal(before, tree(tmp))
            assert_unchanged()
        end)

        it("raise from every method called on anything but its own kind of object", function()
            local strangers = { "log", 5, {}, true, false, function() end, io.stdout }
            local n = 0
            for kind, methods in pairs({ Log = takhin.core.Log, SnapshotManager = takhin.core.SnapshotManager }) do
                local other = kind == "Log" and sm or log
                for name, f in pairs(methods) do
                    for _, self in ipairs({ other, util.unpack(strangers) }) do
                        raises(("%s.%s on %s"):format(kind, name, tostring(self)), function() return f(self, 0) end)
                    end
                    raises(("%s.%s on nil"):format(kind, name), function() return f(nil, 0) end)
                    n = n + 1
                end
            end
            assert.is_true(n >= 25, n .. " methods")
            assert.are.equal(before, tree(tmp))
            assert_unchanged()
        end)

        it("raise from every method of a closed log or manager", function()
            local ro = assert(takhin.open_log({ dir = dir, readonly = true }))
            local sm2 = assert(takhin.snapshot_manager(dir))
            ro:close()
            sm2:close()
            for _, name in ipairs({ "append", "append_batch", "read", "records", "offset_for_time",
                                    "high_water_mark", "base_offset", "num_segments", "size",
                                    "segments", "dir", "flush", "sync", "truncate" }) do
                local err = raises("closed log:" .. name, function() return ro[name](ro, 0, "v") end)
                assert.truthy(err:find("closed", 1, true), err)
            end
            local calls = {
                create = { log }, restore = { snap.id, tmp .. "/t" }, list = {}, get = { snap.id },
                latest = {}, delete = { snap.id }, verify = { snap.id }, cleanup = {}, size = {}, dir = {},
            }
            for name, args in pairs(calls) do
                local err = raises("closed manager:" .. name, function() return sm2[name](sm2, util.unpack(args)) end)
                assert.truthy(err:find("closed", 1, true), err)
            end
            assert.is_false(util.exists(tmp .. "/t"))
            assert.is_true(ro:close())
            assert.is_true(sm2:close())
            assert_unchanged()
        end)
    end)

    ---------------------------------------------------------------------
    describe("offsets and timestamps at the edges", function()
        -- The integers: math.mininteger..math.maxinteger on Lua 5.4;
        -- -(2^53-1)..2^53-1 on LuaJIT, whose numbers are doubles.
        local MIN, MAX = util.mininteger, util.maxinteger
        local EDGES = { -1, MIN, MIN + 1, MAX, MAX - 1, N + 1 }

        it("read returns OUT_OF_RANGE naming the offset", function()
            for _, o in ipairs(EDGES) do
                local msg = assert.fails_with("OUT_OF_RANGE", log:read(o))
                assert.truthy(msg:find(util.int_str(o), 1, true), msg)
            end
            assert.fails_with("OUT_OF_RANGE", log:read(N))
            -- A float with an exact integer value is that integer.
            assert.fails_with("OUT_OF_RANGE", log:read(MIN + 0.0))                 -- -2.0^63 on Lua 5.4
            assert.are.equal(value(3), log:read(3.0).value)
            assert_unchanged()
        end)

        it("refuses, under LuaJIT, an integer at or beyond 2^53, saying why", function()
            if not util.is_luajit then
                return pending("LuaJIT only: Lua 5.4 has 64-bit integers")
            end
            -- 2^53 + 1 in a script is already 2^53: both are refused
            for _, o in ipairs({ 2 ^ 53, 2 ^ 53 + 1, -(2 ^ 53), 2 ^ 60 }) do
                local err = raises("read(" .. tostring(o) .. ")", function() return log:read(o) end)
                assert.truthy(err:find("beyond 2^53", 1, true), err)
            end
            assert_unchanged()
        end)

        it("truncate returns OUT_OF_RANGE and keeps every record", function()
            for _, o in ipairs(EDGES) do assert.fails_with("OUT_OF_RANGE", log:truncate(o)) end
            assert.is_true(log:truncate(N))                -- the high water mark: nothing to remove
            assert_unchanged()
        end)

        it("records raises OUT_OF_RANGE for a start outside the log, and clamps the end", function()
            for _, o in ipairs(EDGES) do
                local err = raises("records(" .. o .. ")", function() return log:records(o) end)
                assert.truthy(err:find("OUT_OF_RANGE", 1, true), err)
            end
            local function count(...)
                local n = 0
                for _ in log:records(...) do n = n + 1 end
                return n
            end
            assert.are.equal(0, count(N))
            assert.are.equal(N, count(0, MAX))
            assert.are.equal(N - 3, count(3, MAX))
            assert.are.equal(0, count(0, -1))
            assert.are.equal(0, count(0, MIN))
            assert.are.equal(0, count(5, 2))
            assert_unchanged()
        end)

        it("offset_for_time answers for any integer timestamp", function()
            assert.are.equal(0, log:offset_for_time(MIN))
            assert.are.equal(0, log:offset_for_time(-1))
            assert.are.equal(N, log:offset_for_time(MAX))
            assert.are.equal(N, log:offset_for_time(MAX - 1))
            assert.are.equal(4, log:offset_for_time(1004))
        end)

        it("append refuses negative timestamps with INVALID and writes nothing", function()
            for _, ts in ipairs({ -1, MIN }) do
                assert.fails_with("INVALID", log:append("k", "v", ts))
                assert.fails_with("INVALID", log:append_batch({ { value = "a" }, { value = "b", timestamp = ts } }))
            end
            assert_unchanged()
        end)

        it("restore refuses upto_offset outside the snapshot with OUT_OF_RANGE naming it, and creates nothing", function()
            local target = tmp .. "/target"
            local unnamed = {}
            for _, o in ipairs(EDGES) do
                local msg = assert.fails_with("OUT_OF_RANGE", sm:restore(snap.id, target, { upto_offset = o }))
                if not msg:find(util.int_str(o), 1, true) then unnamed[#unnamed + 1] = util.int_str(o) .. ": " .. msg end
                assert.is_false(util.exists(target))
            end
            assert.are.equal(before, tree(tmp))
            assert.are.same({}, unnamed)
        end)

        it("restore takes any integer upto_timestamp", function()
            local cases = { { MIN, 0 }, { -1, 0 }, { 1004, 5 }, { MAX - 1, N }, { MAX, N } }
            for i, c in ipairs(cases) do
                local target = tmp .. "/target" .. i
                assert.is_true(sm:restore(snap.id, target, { upto_timestamp = c[1] }))
                local r = assert(takhin.open_log({ dir = target, readonly = true }))
                assert.are.equal(c[2], r:high_water_mark(), "upto_timestamp " .. util.int_str(c[1]))
                r:close()
            end
        end)

        it("NaN, infinities and floats beyond the integers raise wherever an offset or timestamp goes", function()
            local nan, inf = 0 / 0, math.huge
            local target = tmp .. "/target"
            for _, bad in ipairs({ nan, inf, -inf, 2.0 ^ 63, -2.0 ^ 64, 1e300 }) do
                local what = " with " .. tostring(bad)
                raises("read" .. what, function() return log:read(bad) end)
                raises("records" .. what, function() return log:records(bad) end)
                raises("records(0, x)" .. what, function() return log:records(0, bad) end)
                raises("truncate" .. what, function() return log:truncate(bad) end)
                raises("offset_for_time" .. what, function() return log:offset_for_time(bad) end)
                raises("append" .. what, function() return log:append("k", "v", bad) end)
                raises("append_batch" .. what,
                       function() return log:append_batch({ { value = "v" }, { value = "v", timestamp = bad } }) end)
                raises("open_log max_segment_size" .. what,
                       function() return takhin.open_log({ dir = tmp .. "/new", max_segment_size = bad }) end)
                raises("open_log index_interval_bytes" .. what,
                       function() return takhin.open_log({ dir = tmp .. "/new", index_interval_bytes = bad }) end)
                raises("restore upto_offset" .. what,
                       function() return sm:restore(snap.id, target, { upto_offset = bad }) end)
                raises("restore upto_timestamp" .. what,
                       function() return sm:restore(snap.id, target, { upto_timestamp = bad }) end)
                raises("crc32c" .. what, function() return takhin.crc32c("x", bad) end)
            end
            assert.is_false(util.exists(target))
            assert.is_false(util.exists(tmp .. "/new"))
            assert_unchanged()
        end)

        it("a min_interval that is not a finite duration is INVALID", function()
            for _, bad in ipairs({ 0 / 0, math.huge, -math.huge, -1, {}, true, "1x" }) do
                assert.fails_with("INVALID", sm:create(log, { min_interval = bad }))
            end
            assert_unchanged()
        end)

        it("a min_interval too large to count in milliseconds is INVALID, not an error about an internal option", function()
            local wrong = {}
            for _, big in ipairs({ 1e300, 2.0 ^ 63, "99999999999999999999d", MAX }) do
                local ok, v, msg, code = pcall(sm.create, sm, log, { min_interval = big })
                local what = describe_value(big) .. ": "
                if not ok then
                    wrong[#wrong + 1] = what .. "raised " .. tostring(v)
                elseif v ~= nil or code ~= "INVALID" then
                    wrong[#wrong + 1] = what .. "returned " .. tostring(v) .. " " .. tostring(msg) .. " " .. tostring(code)
                elseif msg:find(">= 0", 1, true) then
                    wrong[#wrong + 1] = what .. "a positive value is said to be negative: " .. msg
                end
            end
            assert_unchanged()
            assert.are.same({}, wrong)
        end)
    end)

    ---------------------------------------------------------------------
    describe("durations at the edges", function()
        -- A duration in seconds so large that its milliseconds do not fit
        -- an integer must not wrap around to a small or negative age.
        it("cleanup with an enormous retention_time or keep_within deletes nothing, or refuses it as INVALID", function()
            local second = assert(sm:create(log))
            local huge = { util.maxinteger, util.idiv(util.maxinteger, 100), 2 ^ 62, 1e300 }
            local wrong = {}
            for _, field in ipairs({ "retention_time", "keep_within" }) do
                for _, v in ipairs(huge) do
                    local rules = { [field] = v, dry_run = true }
                    local n, plan, code = sm:cleanup(rules)
                    if n == nil and code ~= "INVALID" then
                        wrong[#wrong + 1] = ("%s = %s: %s %s"):format(field, describe_value(v), tostring(plan), tostring(code))
                    elseif n ~= nil and #plan.delete > 0 then
                        wrong[#wrong + 1] = ("%s = %s would delete %d of 2 snapshots"):format(field, describe_value(v), #plan.delete)
                    end
                end
            end
            -- Without dry_run, too.
            local n, msg = sm:cleanup({ retention_time = util.maxinteger })
            if n ~= nil and n > 0 then wrong[#wrong + 1] = "retention_time = math.maxinteger deleted " .. n end
            assert.is_true(n ~= nil or msg ~= nil)
            local ids = {}
            for _, s in ipairs(assert(sm:list())) do ids[#ids + 1] = s.id end
            assert.are.same({}, wrong)
            assert.are.same({ second.id, snap.id }, ids)
        end)
    end)

    ---------------------------------------------------------------------
    describe("NUL bytes", function()
        it("in a log directory, a snapshot directory, an id, a target or a label are INVALID and create nothing", function()
            local id, target = snap.id, tmp .. "/target"
            assert.fails_with("INVALID", takhin.open_log({ dir = tmp .. "/a\0b" }))
            assert.fails_with("INVALID", takhin.open_log({ dir = tmp .. "/a\0b", readonly = true }))
            assert.fails_with("INVALID", takhin.open_log({ dir = dir .. "\0" }))
            assert.fails_with("INVALID", takhin.snapshot_manager(tmp .. "/a\0b"))
            assert.fails_with("INVALID", takhin.snapshot_manager(dir .. "\0/../outside"))
            assert.fails_with("INVALID", takhin.snapshot_manager(dir, { dir = tmp .. "/s\0x" }))
            assert.fails_with("INVALID", takhin.check_snapshot_id("a\0b"))
            -- An id that is a real one up to the NUL is not that one.
            for _, bad in ipairs({ "a\0b", id .. "\0", id .. "\0/../../outside", "\0" .. id }) do
                assert.fails_with("INVALID", sm:get(bad))
                assert.fails_with("INVALID", sm:verify(bad))
                assert.fails_with("INVALID", sm:delete(bad))
                assert.fails_with("INVALID", sm:restore(bad, target))
            end
            assert.fails_with("INVALID", sm:restore(id, target .. "\0"))
            assert.fails_with("INVALID", sm:restore(id, target .. "\0/../outside/x"))
            assert.fails_with("INVALID", sm:restore(id, ""))
            assert.fails_with("INVALID", sm:create(log, { label = "a\0b" }))
            assert.is_false(util.exists(tmp .. "/a"))
            assert.is_false(util.exists(target))
            assert.are.equal(before, tree(tmp))
            assert_unchanged()
        end)
    end)

    ---------------------------------------------------------------------
    describe("snapshot ids", function()
        it("that could name something outside the snapshot directory are INVALID everywhere, and touch nothing", function()
            local target = tmp .. "/target"
            local hostile = {
                "", ".", "..", "...", "../x", "../../outside", "a/../../b", "x/y", "/etc",
                outside, outside .. "/marker", ".tmp-x", ".del-x", ".tmp-" .. snap.id, ".del-" .. snap.id,
                "snapshot-x/..", "../snapshot-" .. snap.id, snap.id .. "/..", snap.id .. "/../..",
                "snapshot-" .. snap.id .. "/../../..", ".hidden", "a..b", "a\nb", "a b", "~", "*", "$(touch x)",
                ("a"):rep(64), ("a"):rep(4096), ("a"):rep(1024 * 1024), ("../"):rep(2000),
            }
            for _, id in ipairs(hostile) do
                local what = describe_value(id)
                assert.fails_with("INVALID", takhin.check_snapshot_id(id))
                local msg = assert.fails_with("INVALID", sm:get(id))
                assert.is_true(#msg < 1024, "a message of " .. #msg .. " bytes for " .. what)
                assert.fails_with("INVALID", sm:verify(id))
                assert.fails_with("INVALID", sm:restore(id, target))
                if id ~= "/etc" then assert.fails_with("INVALID", sm:delete(id)) end
            end
            assert.is_false(util.exists(target))
            assert.are.equal(before, tree(tmp))
            assert_unchanged()
        end)

        it("that are well formed but unknown are NOT_FOUND, up to 63 bytes", function()
            for _, id in ipairs({ "a", "a.b", "snapshot-x", "x_y-z", ("a"):rep(63) }) do
                assert.is_true(takhin.check_snapshot_id(id))
                assert.fails_with("NOT_FOUND", sm:get(id))
                assert.fails_with("NOT_FOUND", sm:delete(id))
            end
            assert.are.equal(before, tree(tmp))
        end)
    end)

    ---------------------------------------------------------------------
    describe("paths that are not what they should be", function()
        it("a log directory that is a regular file: open_log returns an error naming it", function()
            local file = tmp .. "/file"
            util.write_file(file, "just a file\n")
            for _, ro in ipairs({ false, true }) do
                local log2, msg, code = takhin.open_log({ dir = file, readonly = ro })
                assert.is_nil(log2)
                assert.is_string(code)
                assert.truthy(msg:find(file, 1, true), msg)
                log2, msg, code = takhin.open_log({ dir = file .. "/sub", readonly = ro })
                assert.is_nil(log2)
                assert.is_string(code)
                assert.truthy(msg:find(file, 1, true), msg)
            end
            local msg = assert.fails_with("INVALID", takhin.snapshot_manager(file))
            assert.truthy(msg:find(file, 1, true), msg)
            msg = assert.fails_with("INVALID", takhin.snapshot_manager(dir, { dir = file }))
            assert.truthy(msg:find(file, 1, true), msg)
            assert.are.equal("just a file\n", util.read_file(file))
        end)

        it("a restore target that is a symlink to a directory is refused with EXISTS; the directory stays empty", function()
            local empty = outside .. "/empty"
            assert(util.sh("mkdir " .. util.q(empty) .. " && ln -s " .. util.q(empty) .. " " .. util.q(tmp .. "/link")))
            local msg = assert.fails_with("EXISTS", sm:restore(snap.id, tmp .. "/link"))
            -- It says what the path is (it used to say "not a directory").
            assert.truthy(msg:find("symbolic link", 1, true) and msg:find(empty, 1, true), msg)
            assert.are.same({}, util.ls(empty))
            assert.are.equal(empty, util.capture("readlink " .. util.q(tmp .. "/link")):gsub("\n$", ""))
        end)
    end)

    ---------------------------------------------------------------------
    describe("a snapshot edited to reach outside", function()
        local seg0, manifest, copy, original

        -- A copy of the snapshot's first segment outside: identical bytes,
        -- so a manifest or link that led to it would pass its checksum.
        before_each(function()
            seg0 = util.segment_name(0, "log")
            manifest = snap.path .. "/manifest.json"
            copy = outside .. "/" .. seg0
            original = util.read_file(snap.path .. "/" .. seg0)
            util.write_file(copy, original)
            before = tree(tmp)
        end)

        local function assert_outside_untouched()
            assert(util.read_file(copy) == original, "the outside file changed")
            local _, nlink = util.stat(copy)
            assert.are.equal(1, nlink, "the outside file gained a hard link")
            assert.are.equal("not takhin's\n", util.read_file(outside .. "/marker"))
        end

        local function edit_manifest(name)
            local text = util.read_file(manifest)
            local from = '"name": "' .. seg0 .. '"'
            local i, j = text:find(from, 1, true)
            assert(i, "no entry for " .. seg0 .. " in " .. manifest)
            util.write_file(manifest, text:sub(1, i - 1) .. '"name": "' .. name .. '"' .. text:sub(j + 1))
        end

        local NAMES = {
            "../../outside",
            "../../../outside/" .. "00000000000000000000.log",
            "00000000000000000000.log/../../../../outside/00000000000000000000.log",
            "00000000000000000000.log\\u0000/../../../outside/00000000000000000000.log",
            "subdir/00000000000000000000.log",
        }

        for _, name in ipairs(NAMES) do
            it("a manifest naming " .. describe_value(name) .. " is CORRUPT for verify and restore", function()
                edit_manifest(name)
                local target = tmp .. "/target"
                local msg = assert.fails_with("CORRUPT", sm:verify(snap.id))
                assert.truthy(msg:find(manifest, 1, true) or msg:find(snap.id, 1, true), msg)
                assert.fails_with("CORRUPT", sm:restore(snap.id, target))
                assert.is_false(util.exists(target))
                -- A new manager, a listing and a cleanup do not trip over it.
                local sm2 = assert(takhin.snapshot_manager(dir))
                assert.are.equal(1, #assert(sm2:list()))
                assert.fails_with("CORRUPT", sm2:verify(snap.id))
                sm2:close()
                assert_outside_untouched()
            end)
        end

        it("a manifest naming an absolute path is CORRUPT for verify and restore", function()
            edit_manifest(copy)
            local target = tmp .. "/target"
            assert.fails_with("CORRUPT", sm:verify(snap.id))
            assert.fails_with("CORRUPT", sm:restore(snap.id, target))
            assert.is_false(util.exists(target))
            assert_outside_untouched()
        end)

        it("a segment file replaced by a symlink to a file outside is refused by verify and restore, naming it", function()
            local inside = snap.path .. "/" .. seg0
            assert(util.sh("mv " .. util.q(inside) .. " " .. util.q(inside .. ".orig")
                .. " && ln -s " .. util.q(copy) .. " " .. util.q(inside)))
            local target = tmp .. "/target"
            for _, try in ipairs({
                function() return sm:verify(snap.id) end,
                function() return sm:restore(snap.id, target) end,
                function() return sm:restore(snap.id, tmp .. "/empty-dir") end,
            }) do
                assert(util.sh("mkdir -p " .. util.q(tmp .. "/empty-dir")))
                local ok, msg, code = try()
                assert.is_nil(ok, "a symlinked segment file was accepted")
                assert.truthy(code == "CORRUPT" or code == "IO", tostring(code) .. ": " .. tostring(msg))
                assert.truthy(msg:find(inside, 1, true), msg)
            end
            assert.is_false(util.exists(target))
            assert.are.same({}, util.ls(tmp .. "/empty-dir"))
            assert_outside_untouched()
            -- The symlink in the snapshot still points where it did.
            assert.are.equal(copy, (util.capture("readlink " .. util.q(inside)):gsub("\n$", "")))
        end)
    end)

    ---------------------------------------------------------------------
    describe("symlinks where a snapshot directory should be", function()
        it("a snapshot-<id> that is a symlink: delete removes the link, never what it points to", function()
            -- The first snapshot moves outside and is linked back in.
            local elsewhere = outside .. "/snapshot-" .. snap.id
            assert(util.sh("mv " .. util.q(snap.path) .. " " .. util.q(elsewhere)
                .. " && ln -s " .. util.q(elsewhere) .. " " .. util.q(snap.path)))
            local second = assert(sm:create(log))
            local kept = tree(outside)
            local contents = {}
            for _, name in ipairs(util.ls(elsewhere)) do contents[name] = util.read_file(elsewhere .. "/" .. name) end

            local sm2 = assert(takhin.snapshot_manager(dir))
            assert(sm2:list())
            local ok, msg, code = sm2:delete(snap.id)
            assert.truthy(ok or code == "NOT_FOUND" or code == "INVALID", tostring(msg))
            assert.are.equal(kept, tree(outside))
            for name, data in pairs(contents) do
                assert(util.read_file(elsewhere .. "/" .. name) == data, name .. " changed")
            end
            -- The other snapshot is whole.
            assert.is_true(sm2:verify(second.id))
            sm2:close()
        end)

        it("a snapshot-<id> that is a symlink: cleanup never removes what it points to", function()
            local elsewhere = outside .. "/snapshot-" .. snap.id
            assert(util.sh("mv " .. util.q(snap.path) .. " " .. util.q(elsewhere)
                .. " && ln -s " .. util.q(elsewhere) .. " " .. util.q(snap.path)))
            local second = assert(sm:create(log))
            local kept = tree(outside)
            local n = sm:cleanup({ max_snapshots = 1 })
            assert.is_number(n)
            assert.are.equal(kept, tree(outside))
            assert.is_true(sm:verify(second.id))
        end)

        it("leftover-looking symlinks (.tmp-*, .del-*) are not followed when a manager sweeps leftovers", function()
            local victim = outside .. "/victim"
            assert(util.sh("mkdir " .. util.q(victim)))
            util.write_file(victim .. "/precious", "keep me\n")
            local snapdir = sm:dir()
            for _, name in ipairs({ ".tmp-evil", ".del-evil", ".tmp-" .. snap.id .. "x" }) do
                assert(util.sh("ln -s " .. util.q(victim) .. " " .. util.q(snapdir .. "/" .. name)))
            end
            local sm2 = assert(takhin.snapshot_manager(dir))
            assert.is_true(sm2:verify(snap.id))
            sm2:close()
            assert.are.same({ "precious" }, util.ls(victim))
            assert.are.equal("keep me\n", util.read_file(victim .. "/precious"))
        end)
    end)
end)
