-- takhin.scheduler: periodic snapshots and cleanup for the partitions of a
-- topic (docs/API.md "takhin.policy").  Real logs and managers in a
-- temporary directory; the decisions are driven by an injected clock.
--
-- Snapshot timestamps come from the wall clock (the engine takes them), so
-- the injected clock starts at the wall clock and moves by whole minutes
-- and hours, far more than a test takes.

local takhin = require("takhin")
local scheduler = require("takhin.scheduler")
local util = require("helpers.util")

local MINUTE, HOUR = 60 * 1000, 3600 * 1000

local function invalid(named, v, msg, code)
    assert.is_nil(v, "accepted: " .. named)
    assert.are.equal("INVALID", code, tostring(msg))
    assert.truthy(tostring(msg):find(named, 1, true), "message does not name " .. named .. ": " .. tostring(msg))
end

-- f() raises an error whose message holds `text` and does not point
-- inside takhin's own modules.
local function raises(text, f)
    local ok, err = pcall(f)
    assert.is_false(ok, "did not raise: " .. text)
    err = tostring(err)
    assert.truthy(err:find(text, 1, true), "message does not hold " .. text .. ": " .. err)
    assert.is_nil(err:find("lua/takhin/", 1, true), "points inside takhin: " .. err)
    return err
end

-- Entries of a report for one target, as "action" or "action:detail".
local function actions(report, name)
    local out = {}
    for _, e in ipairs(report) do
        if e.name == name then out[#out + 1] = e.action end
    end
    return out
end

local function entry(report, name, action)
    for _, e in ipairs(report) do
        if e.name == name and e.action == action then return e end
    end
end

describe("takhin.scheduler", function()
    local tmp, targets, T

    -- n partitions of topic "orders", each with one record.
    local function topic(n)
        local list = {}
        for i = 1, n do
            local name = "orders-" .. (i - 1)
            local dir = tmp .. "/" .. name
            local log = assert(takhin.open_log{ dir = dir })
            log:append(nil, "first record of " .. name)
            list[i] = { name = name, log = log, manager = assert(takhin.snapshot_manager(dir)) }
        end
        return list
    end

    local function count(t) return #t.manager:list() end

    before_each(function()
        tmp = util.tmpdir()
        targets = topic(3)
        T = os.time() * 1000
    end)

    after_each(function()
        for _, t in ipairs(targets) do
            t.manager:close()
            t.log:close()
        end
        util.rmtree(tmp)
    end)

    it("is takhin.scheduler", function()
        assert.are.equal(scheduler, takhin.scheduler)
    end)

    describe("new", function()
        it("defaults to the seed's policy", function()
            local s = assert(scheduler.new{ targets = targets })
            assert.are.equal(5, s.policy.max_snapshots)
            assert.are.equal(HOUR, s.policy.min_interval_ms)
        end)

        it("returns INVALID for bad values, naming what is wrong", function()
            invalid("targets must not be empty", scheduler.new{ targets = {} })
            invalid("target #1: name must not be empty", scheduler.new{
                targets = { { name = "", log = targets[1].log, manager = targets[1].manager } } })
            invalid('"orders-0" given twice', scheduler.new{ targets = { targets[1], targets[1] } })
            invalid("scheduler: policy: max_snapshots", scheduler.new{ targets = targets, policy = { max_snapshots = 0 } })
            invalid("min_interval", scheduler.new{ targets = targets, policy = { min_interval = "soon" } })
        end)

        it("raises on misuse: unknown options, wrong types, missing targets", function()
            local log, sm = targets[1].log, targets[1].manager
            raises("scheduler: unknown option 'clock'", function() scheduler.new{ targets = targets, clock = os.time } end)
            raises("scheduler: target #1: unknown option 'partition'", function()
                scheduler.new{ targets = { { name = "x", log = log, manager = sm, partition = 0 } } }
            end)
            raises("scheduler: policy: unknown option 'keep_dialy'", function()
                scheduler.new{ targets = targets, policy = { keep_dialy = 1 } }
            end)
            raises("scheduler: targets must be an array", function() scheduler.new{} end)
            raises("scheduler: targets must be an array", function() scheduler.new{ targets = "orders-0" } end)
            raises("scheduler: target #1: table expected, got string", function()
                scheduler.new{ targets = { "orders-0" } }
            end)
            raises("scheduler: target #1: name must be a string, not nil", function()
                scheduler.new{ targets = { { log = log, manager = sm } } }
            end)
            raises('scheduler: target "x": log must be a takhin.Log, not nil', function()
                scheduler.new{ targets = { { name = "x", manager = sm } } }
            end)
            raises('scheduler: target "x": manager must be a takhin.SnapshotManager', function()
                scheduler.new{ targets = { { name = "x", log = log, manager = {} } } }
            end)
            raises('scheduler: target "x": label must be a string, not number', function()
                scheduler.new{ targets = { { name = "x", log = log, manager = sm, label = 5 } } }
            end)
            raises("scheduler: now must be a function, not number", function()
                scheduler.new{ targets = targets, now = 5 }
            end)
            raises("scheduler: policy must be a takhin.policy or a table of its fields, not string", function()
                scheduler.new{ targets = targets, policy = "production" }
            end)
        end)

        it("raises when given no table", function()
            raises("bad argument #1 to 'new' (table expected, got nil)", function() scheduler.new() end)
        end)
    end)

    describe("tick", function()
        local function sched(pol)
            return assert(scheduler.new{ targets = targets, policy = pol or { min_interval = "1h", max_snapshots = 2 },
                                         now = function() error("the clock was read") end })
        end

        it("snapshots every target on the first tick, then cleans up", function()
            local report = sched():tick(T)
            for _, t in ipairs(targets) do
                assert.are.same({ "snapshot", "cleanup" }, actions(report, t.name))
                local e = entry(report, t.name, "snapshot")
                assert.are.equal(t.manager:latest().id, e.id)
                assert.is_nil(e.error)
                assert.are.equal(0, entry(report, t.name, "cleanup").deleted)
                assert.are.equal(1, count(t))
            end
            assert.are.equal(6, #report)
        end)

        it("does nothing inside min_interval and snapshots after it", function()
            local s = sched()
            s:tick(T)
            local report = s:tick(T + 30 * MINUTE)
            for _, t in ipairs(targets) do
                assert.are.same({ "skip" }, actions(report, t.name))
                local e = entry(report, t.name, "skip")
                assert.are.equal(t.manager:latest().id, e.id)
                assert.truthy(e.due_in > 29 * MINUTE and e.due_in <= 31 * MINUTE, tostring(e.due_in))
                assert.are.equal(1, count(t))
            end
            report = s:tick(T + 61 * MINUTE)
            for _, t in ipairs(targets) do
                assert.are.same({ "snapshot", "cleanup" }, actions(report, t.name))
                assert.are.equal(2, count(t))
            end
        end)

        it("applies the policy's cleanup after each snapshot", function()
            local s = sched()
            s:tick(T)
            s:tick(T + 2 * HOUR)
            local report = s:tick(T + 4 * HOUR)
            for _, t in ipairs(targets) do
                assert.are.equal(1, entry(report, t.name, "cleanup").deleted)
                assert.are.equal(2, count(t))
                assert.are.equal(entry(report, t.name, "snapshot").id, t.manager:latest().id)
            end
        end)

        it("decides from the manager's snapshots, so a new scheduler sees the old one's", function()
            sched():tick(T)
            local report = sched():tick(T + 10 * MINUTE)
            for _, t in ipairs(targets) do assert.are.same({ "skip" }, actions(report, t.name)) end
        end)

        it("snapshots at every tick when the policy has no min_interval", function()
            local s = sched({ keep_last = 2 })
            s:tick(T)
            s:tick(T)
            local report = s:tick(T)
            for _, t in ipairs(targets) do
                assert.are.same({ "snapshot", "cleanup" }, actions(report, t.name))
                assert.are.equal(1, entry(report, t.name, "cleanup").deleted)
            end
        end)

        it("reports a closed log on its target and goes on with the others", function()
            local s = sched()
            targets[2].log:close()
            local report = s:tick(T)
            local e = entry(report, "orders-1", "snapshot")
            assert.truthy(e.error:find("closed takhin.Log", 1, true), e.error)
            assert.is_nil(e.code)
            assert.is_nil(e.id)
            assert.are.same({ "snapshot" }, actions(report, "orders-1"))
            assert.are.equal(0, count(targets[2]))
            for _, i in ipairs({ 1, 3 }) do
                assert.are.same({ "snapshot", "cleanup" }, actions(report, targets[i].name))
                assert.are.equal(1, count(targets[i]))
            end
            -- Reopened, the partition catches up at the next tick.
            targets[2].log = assert(takhin.open_log{ dir = tmp .. "/orders-1" })
            s = sched()
            report = s:tick(T + 5 * MINUTE)
            assert.are.same({ "snapshot", "cleanup" }, actions(report, "orders-1"))
            assert.are.same({ "skip" }, actions(report, "orders-0"))
        end)

        it("reports a manager's nil, msg, code and goes on with the others", function()
            local real = targets[1].manager
            local failing = {
                latest = function() return real:latest() end,
                cleanup = function() return real:cleanup() end,
                create = function() return nil, "create /x: No space left on device", "NOSPC" end,
            }
            local s = assert(scheduler.new{ targets = {
                { name = "full", log = targets[1].log, manager = failing },
                targets[2], targets[3] } })
            local report = s:tick(T)
            local e = entry(report, "full", "snapshot")
            assert.are.equal("NOSPC", e.code)
            assert.are.equal("create /x: No space left on device", e.error)
            assert.are.same({ "snapshot", "cleanup" }, actions(report, "orders-1"))
            assert.are.same({ "snapshot", "cleanup" }, actions(report, "orders-2"))
        end)

        it("reports a closed manager", function()
            local s = sched()
            targets[3].manager:close()
            local report = s:tick(T)
            assert.truthy(entry(report, "orders-2", "snapshot").error:find("closed takhin.SnapshotManager", 1, true))
            assert.are.equal(1, count(targets[1]))
            targets[3].manager = assert(takhin.snapshot_manager(tmp .. "/orders-2"))
        end)

        -- A stand-in manager whose newest snapshot is `latest`; records
        -- the snapshots it is asked to take.
        local function manager_with(latest)
            local m = { made = 0 }
            function m.latest() return latest end
            function m.create() m.made = m.made + 1; return { id = "new-" .. m.made, timestamp = T } end
            function m.cleanup() return 0 end
            return m
        end

        local function one_target(m, pol)
            return assert(scheduler.new{ targets = { { name = "p", log = targets[1].log, manager = m } },
                                         policy = pol or { min_interval = "1h" } })
        end

        it("is due at once when the newest snapshot is dated after now (the clock stepped back)", function()
            local m = manager_with({ id = "ahead", timestamp = T + 2 * HOUR })
            local report = one_target(m):tick(T)
            assert.are.same({ "snapshot", "cleanup" }, actions(report, "p"))
            assert.are.equal(1, m.made)
            -- with a real manager, too
            local sm = targets[1].manager
            local s = assert(scheduler.new{ targets = { targets[1] }, policy = { min_interval = "1h" } })
            assert.are.same({ "snapshot", "cleanup" }, actions(s:tick(T), "orders-0"))
            assert.are.same({ "snapshot", "cleanup" }, actions(s:tick(sm:latest().timestamp - 2 * HOUR), "orders-0"))
        end)

        it("takes a newest snapshot dated at most a minute ahead as made just now: clocks disagree that much", function()
            local m = manager_with({ id = "just-made", timestamp = T + 59 * 1000 })
            local report = one_target(m):tick(T)
            local e = entry(report, "p", "skip")
            assert.are.equal("just-made", e.id)
            assert.are.equal(HOUR + 59 * 1000, e.due_in)
            assert.are.equal(0, m.made)
            m = manager_with({ id = "ahead", timestamp = T + 61 * 1000 })
            assert.are.same({ "snapshot", "cleanup" }, actions(one_target(m):tick(T), "p"))
        end)

        it("is due at once when the newest snapshot is damaged", function()
            local m = manager_with({ id = "broken", timestamp = T - MINUTE, damaged = true })
            assert.are.same({ "snapshot", "cleanup" }, actions(one_target(m):tick(T), "p"))
            m = manager_with({ id = "fine", timestamp = T - MINUTE })
            assert.are.same({ "skip" }, actions(one_target(m):tick(T), "p"))
        end)

        it("raises on a time that is not a number", function()
            raises("tick: now must be a number of milliseconds, not x", function() sched():tick("x") end)
            raises("tick: now must be a number of milliseconds", function() sched():tick(0 / 0) end)
            local s = assert(scheduler.new{ targets = targets, now = function() return "late" end })
            raises("tick: now must be a number of milliseconds, not late", function() s:tick() end)
        end)

        it("reads its clock only when not given the time", function()
            local now = T
            local s = assert(scheduler.new{ targets = targets, policy = { min_interval = "1h" },
                                            now = function() return now end })
            assert.are.same({ "snapshot", "cleanup" }, actions(s:tick(), "orders-0"))
            now = T + 10 * MINUTE
            assert.are.same({ "skip" }, actions(s:tick(), "orders-0"))
            assert.are.same({ "snapshot", "cleanup" }, actions(s:tick(T + 2 * HOUR), "orders-0"))
        end)
    end)

    describe("run", function()
        it("ticks, sleeps the interval, and stops when stop() says so", function()
            local now, slept, reports = T, {}, {}
            local s = assert(scheduler.new{ targets = targets, policy = { min_interval = "1m", max_snapshots = 2 },
                                            now = function() return now end })
            local ticks = s:run{
                interval = "2m",
                stop = function() return #reports == 3 end,
                sleep = function(seconds)
                    slept[#slept + 1] = seconds
                    now = now + seconds * 1000
                end,
                on_report = function(report) reports[#reports + 1] = report end,
            }
            assert.are.equal(3, ticks)
            assert.are.same({ 120, 120 }, slept)
            for _, t in ipairs(targets) do assert.are.equal(2, count(t)) end
            assert.are.equal(1, entry(reports[3], "orders-0", "cleanup").deleted)
        end)

        it("takes the interval as seconds and sleeps for real by default", function()
            local s = assert(scheduler.new{ targets = targets, policy = { min_interval = "1h" } })
            local calls = 0
            local ticks = s:run{ interval = 0.01, stop = function() calls = calls + 1; return calls == 2 end }
            assert.are.equal(2, ticks)
            for _, t in ipairs(targets) do assert.are.equal(1, count(t)) end
        end)

        it("returns INVALID for an interval that is not a duration > 0", function()
            local s = assert(scheduler.new{ targets = targets })
            local stop = function() return true end
            invalid('"5x"', s:run{ interval = "5x", stop = stop })
            invalid("interval must be more than 0", s:run{ interval = 0, stop = stop })
            invalid("interval", s:run{ interval = -1, stop = stop })
            invalid("interval", s:run{ interval = {}, stop = stop })
            for _, t in ipairs(targets) do assert.are.equal(0, count(t)) end
        end)

        it("raises on misuse and ticks nothing", function()
            local s = assert(scheduler.new{ targets = targets })
            local stop = function() return true end
            raises("scheduler: run: unknown option 'intervall'", function() s:run{ intervall = "1m", stop = stop } end)
            raises("scheduler: run: interval is required", function() s:run{ stop = stop } end)
            raises("scheduler: run: stop (a function returning true to stop) must be a function, not nil",
                   function() s:run{ interval = "1m" } end)
            raises("scheduler: run: sleep must be a function, not number",
                   function() s:run{ interval = "1m", stop = stop, sleep = 5 } end)
            raises("scheduler: run: on_report must be a function, not string",
                   function() s:run{ interval = "1m", stop = stop, on_report = "print" } end)
            raises("bad argument #1 to 'run' (table expected, got string)", function() s:run("1m") end)
            for _, t in ipairs(targets) do assert.are.equal(0, count(t)) end
        end)
    end)

    -- Not OpenResty: a stand-in ngx that records timers, to check the
    -- adapter's own logic (which worker, which timers, what a timer does).
    describe("openresty adapter (with a stand-in ngx)", function()
        local fake, saved

        before_each(function()
            saved = rawget(_G, "ngx")
            fake = { ERR = 4, logged = {}, timers = {}, id = 0 }
            fake.worker = { id = function() return fake.id end }
            fake.timer = {
                every = function(delay, fn) fake.timers[#fake.timers + 1] = { "every", delay, fn }; return true end,
                at = function(delay, fn) fake.timers[#fake.timers + 1] = { "at", delay, fn }; return true end,
            }
            fake.log = function(level, ...) fake.logged[#fake.logged + 1] = { level, table.concat({ ... }) } end
            rawset(_G, "ngx", fake)
        end)

        after_each(function() rawset(_G, "ngx", saved) end)

        it("runs ticks from ngx.timer.every in worker 0, with one at once", function()
            local now = T
            local s = assert(scheduler.new{ targets = targets, policy = { min_interval = "1h" },
                                            now = function() return now end })
            local reports = {}
            assert.is_true(scheduler.openresty(s, { interval = "5m", on_report = function(r) reports[#reports + 1] = r end }))
            assert.are.equal(2, #fake.timers)
            assert.are.same({ "every", 300 }, { fake.timers[1][1], fake.timers[1][2] })
            assert.are.same({ "at", 0 }, { fake.timers[2][1], fake.timers[2][2] })
            fake.timers[2][3](false)
            assert.are.equal(1, #reports)
            for _, t in ipairs(targets) do assert.are.equal(1, count(t)) end
            fake.timers[1][3](true)                 -- premature: nginx is exiting
            assert.are.equal(1, #reports)
            now = T + 2 * HOUR
            fake.timers[1][3](false)
            assert.are.equal(2, #reports)
            for _, t in ipairs(targets) do assert.are.equal(2, count(t)) end
        end)

        it("does nothing in other workers", function()
            local s = assert(scheduler.new{ targets = targets })
            fake.id = 3
            assert.is_true(scheduler.openresty(s, { interval = 60 }))
            assert.are.equal(0, #fake.timers)
            assert.is_true(scheduler.openresty(s, { interval = 60, worker = 3, immediate = false }))
            assert.are.equal(1, #fake.timers)
        end)

        it("logs the errors of a tick", function()
            local s = assert(scheduler.new{ targets = targets })
            targets[1].log:close()
            assert.is_true(scheduler.openresty(s, { immediate = false }))
            fake.timers[1][3](false)
            assert.are.equal(1, #fake.logged)
            assert.are.equal(fake.ERR, fake.logged[1][1])
            assert.truthy(fake.logged[1][2]:find("orders-0: snapshot: ", 1, true), fake.logged[1][2])
            targets[1].log = assert(takhin.open_log{ dir = tmp .. "/orders-0" })
        end)

        it("returns INVALID for a bad interval or worker, and starts no timer", function()
            local s = assert(scheduler.new{ targets = targets })
            invalid('"5x"', scheduler.openresty(s, { interval = "5x" }))
            invalid("interval must be more than 0", scheduler.openresty(s, { interval = 0 }))
            invalid("scheduler.openresty: interval", scheduler.openresty(s, { interval = false }))
            invalid("worker must be >= 0", scheduler.openresty(s, { worker = -1 }))
            assert.are.equal(0, #fake.timers)
        end)

        it("returns nil, msg, \"IO\" when nginx refuses a timer", function()
            local s = assert(scheduler.new{ targets = targets })
            fake.timer.every = function() return nil, "too many pending timers" end
            local ok, err, code = scheduler.openresty(s, {})
            assert.is_nil(ok)
            assert.are.equal("IO", code)
            assert.truthy(err:find("scheduler.openresty: ngx.timer.every: too many pending timers", 1, true), err)
            fake.timer.every = function() return true end
            fake.timer.at = function() return nil, "process exiting" end
            ok, err, code = scheduler.openresty(s, {})
            assert.is_nil(ok)
            assert.are.equal("IO", code)
            assert.truthy(err:find("ngx.timer.at: process exiting", 1, true), err)
        end)

        it("raises on misuse: unknown options, wrong types, not a scheduler, not in a worker", function()
            local s = assert(scheduler.new{ targets = targets })
            raises("scheduler.openresty: unknown option 'intervall'",
                   function() scheduler.openresty(s, { intervall = "1m" }) end)
            raises("scheduler.openresty: worker must be an integer, not 0", function() scheduler.openresty(s, { worker = "0" }) end)
            raises("scheduler.openresty: worker must be an integer, not 0.5", function() scheduler.openresty(s, { worker = 0.5 }) end)
            raises("scheduler.openresty: immediate must be a boolean, not string",
                   function() scheduler.openresty(s, { immediate = "no" }) end)
            raises("scheduler.openresty: on_report must be a function, not table",
                   function() scheduler.openresty(s, { on_report = {} }) end)
            raises("bad argument to 'scheduler.openresty' (table expected, got string)",
                   function() scheduler.openresty(s, "1m") end)
            raises("bad argument #1 to 'openresty' (a scheduler from scheduler.new expected, got table)",
                   function() scheduler.openresty({}, {}) end)
            fake.id = nil
            raises("scheduler.openresty: no worker id (call it from init_worker_by_lua*)",
                   function() scheduler.openresty(s, {}) end)
            rawset(_G, "ngx", nil)
            raises("scheduler.openresty: ngx is not available", function() scheduler.openresty(s, {}) end)
            assert.are.equal(0, #fake.timers)
        end)
    end)
end)
