--- takhin.scheduler: periodic snapshots and cleanup for one log or many
-- (the seed's topic-manager integration: every partition of a topic).
--
--   local sched = assert(scheduler.new{
--       targets = { { name = "orders-0", log = log0, manager = sm0 },
--                   { name = "orders-1", log = log1, manager = sm1 } },
--       policy = { preset = "production" },
--   })
--   sched:tick()                              -- does what is due; a report
--   sched:run{ interval = "1m", stop = function() return done end }
--   scheduler.openresty(sched, { interval = "1m" })   -- in init_worker_by_lua
--
-- A target is due when its manager has no snapshot, or its newest one is
-- at least the policy's min_interval older than `now` (no min_interval:
-- due at every tick; a newest snapshot dated after `now`, as after the
-- clock stepped back, is not yet due).  The decision reads the manager's own list, so it
-- survives restarts and sees snapshots other processes took.  After a
-- snapshot, cleanup by the policy runs for that target.
--
-- Clocks: every decision uses the scheduler's clock (`now`, ms since the
-- epoch; injectable for tests), compared with snapshot timestamps, which
-- the engine takes from the wall clock.  sm:create is therefore called
-- WITHOUT min_interval: its TOO_SOON check would use the real clock and
-- could disagree with an injected one.  Two schedulers on one log may
-- both snapshot in the same interval; cleanup trims the excess.
--
-- Pure Lua; runs on Lua 5.1-5.4 and LuaJIT.
local duration = require("takhin.duration")
local policy = require("takhin.policy")

local M = {}

local Scheduler = {}
Scheduler.__index = Scheduler

local function invalid(fmt, ...)
    return nil, "scheduler: " .. fmt:format(...), "INVALID"
end

local function unknown_key(t, known)
    for k in pairs(t) do
        if not known[k] then return tostring(k) end
    end
end

local function wall_clock_ms()
    return os.time() * 1000
end

-------------------------------------------------------------------------
-- Construction
-------------------------------------------------------------------------

local TARGET_KEYS = { name = true, log = true, manager = true, label = true }

local function has_method(obj, name)
    local ok, f = pcall(function() return obj[name] end)
    return ok and type(f) == "function"
end

local function check_target(t, i, seen)
    if type(t) ~= "table" then return invalid("target #%d: table expected, got %s", i, type(t)) end
    local bad = unknown_key(t, TARGET_KEYS)
    if bad then return invalid("target #%d: unknown field '%s'", i, bad) end
    if type(t.name) ~= "string" or t.name == "" then
        return invalid("target #%d: name must be a non-empty string, not %s", i, tostring(t.name))
    end
    if seen[t.name] then return invalid("target #%d: name %q given twice", i, t.name) end
    seen[t.name] = true
    if type(t.log) ~= "userdata" and type(t.log) ~= "table" then
        return invalid("target %q: log must be a takhin.Log, not %s", t.name, type(t.log))
    end
    local m = t.manager
    if (type(m) ~= "userdata" and type(m) ~= "table") or not has_method(m, "create")
        or not has_method(m, "latest") or not has_method(m, "cleanup") then
        return invalid("target %q: manager must be a takhin.SnapshotManager, not %s", t.name, tostring(m))
    end
    if t.label ~= nil and type(t.label) ~= "string" then
        return invalid("target %q: label must be a string, not %s", t.name, type(t.label))
    end
    return { name = t.name, log = t.log, manager = m, label = t.label }
end

local NEW_KEYS = { targets = true, policy = true, now = true }

--- scheduler.new{ targets = {...}, policy = pol, now = fn } -> sched | nil, msg, "INVALID"
-- targets: an array of { name =, log =, manager = [, label =] } (names
-- unique).  policy: a takhin.policy or a table of its fields; default the
-- seed's (policy.defaults()).  now: a function returning ms since the
-- epoch; default the wall clock (seconds resolution).
function M.new(opts)
    if type(opts) ~= "table" then
        error(("bad argument #1 to 'new' (table expected, got %s)"):format(type(opts)), 2)
    end
    local bad = unknown_key(opts, NEW_KEYS)
    if bad then return invalid("unknown field '%s'", bad) end
    if type(opts.targets) ~= "table" or #opts.targets == 0 then
        return invalid("targets must be a non-empty array of { name =, log =, manager = }")
    end
    if opts.now ~= nil and type(opts.now) ~= "function" then
        return invalid("now must be a function returning milliseconds, not %s", type(opts.now))
    end
    local pol, msg, code = policy.check(opts.policy, "scheduler: policy")
    if not pol then return nil, msg, code end
    local targets, seen = {}, {}
    for i, t in ipairs(opts.targets) do
        local target
        target, msg, code = check_target(t, i, seen)
        if not target then return nil, msg, code end
        targets[i] = target
    end
    return setmetatable({ targets = targets, policy = pol, now = opts.now or wall_clock_ms }, Scheduler)
end

-------------------------------------------------------------------------
-- One tick
-------------------------------------------------------------------------

-- The entry for a call that raised or returned nil, msg, code.
local function failed(name, action, err, code)
    return { name = name, action = action, error = tostring(err), code = code }
end

-- Calls manager[method](manager, ...) under pcall: ok, results...
local function call(m, method, ...)
    return pcall(m[method], m, ...)
end

-- The report entries for one target: one, or two (snapshot, cleanup).
local function tick_target(self, t, now)
    local ok, latest, msg, code = call(t.manager, "latest")
    if not ok then return failed(t.name, "snapshot", latest) end
    if not latest and code ~= "NOT_FOUND" then return failed(t.name, "snapshot", msg, code) end
    local min = self.policy.min_interval_ms or 0
    if latest and min > 0 and now - latest.timestamp < min then
        return { name = t.name, action = "skip", id = latest.id,
                 due_in = min - (now - latest.timestamp) }
    end
    local snap
    ok, snap, msg, code = call(t.manager, "create", t.log, { label = t.label })
    if not ok then return failed(t.name, "snapshot", snap) end
    if not snap then return failed(t.name, "snapshot", msg, code) end
    local made = { name = t.name, action = "snapshot", id = snap.id }
    local deleted
    ok, deleted, msg, code = call(t.manager, "cleanup", self.policy)
    if not ok then return made, failed(t.name, "cleanup", deleted) end
    if not deleted then return made, failed(t.name, "cleanup", msg, code) end
    return made, { name = t.name, action = "cleanup", deleted = deleted }
end

--- sched:tick([now_ms]) -> report
-- Snapshots every due target and cleans up after each snapshot.  report
-- is an array, in target order, of { name =, action = "snapshot" |
-- "cleanup" | "skip", id =, deleted =, due_in =, error =, code = }: a
-- snapshot entry has the new id; a cleanup entry the number deleted; a
-- skip entry the newest id and the ms until the target is due.  A failure
-- (a call that returned nil, msg, code -- or raised, code then nil) is
-- reported in its entry and the other targets go on.  With now_ms given
-- the clock is not read.
function Scheduler:tick(now_ms)
    local now = now_ms
    if now == nil then now = self.now() end
    if type(now) ~= "number" then
        error(("tick: now must be a number of milliseconds, got %s"):format(type(now)), 2)
    end
    local report = {}
    for _, t in ipairs(self.targets) do
        local ok, first, second = pcall(tick_target, self, t, now)
        if not ok then first, second = failed(t.name, "snapshot", first), nil end
        report[#report + 1] = first
        report[#report + 1] = second
    end
    return report
end

-------------------------------------------------------------------------
-- Blocking loop
-------------------------------------------------------------------------

-- Sleeps without spinning: LuaSocket's sleep when it is installed, else
-- the sleep(1) command.
local function default_sleep(seconds)
    local ok, socket = pcall(require, "socket")
    if ok and type(socket) == "table" and type(socket.sleep) == "function" then
        return socket.sleep(seconds)
    end
    os.execute(("sleep %.3f"):format(seconds))
end

local RUN_KEYS = { interval = true, stop = true, sleep = true, on_report = true }

--- sched:run{ interval = "1m", stop = fn [, sleep = fn] [, on_report = fn] } -> ticks
-- Ticks, calls on_report(report) if given, asks stop() and, unless it
-- says true, sleeps interval (sleep(seconds)) and goes round again.
-- Returns the number of ticks; bad options return nil, msg, "INVALID".
function Scheduler:run(opts)
    if type(opts) ~= "table" then
        error(("bad argument #1 to 'run' (table expected, got %s)"):format(type(opts)), 2)
    end
    local bad = unknown_key(opts, RUN_KEYS)
    if bad then return invalid("run: unknown field '%s'", bad) end
    if opts.interval == nil then return invalid("run: interval is required") end
    local ms, err = duration.parse(opts.interval)
    if not ms then return invalid("run: interval: %s", err) end
    if ms <= 0 then return invalid("run: interval must be more than 0, not %s", tostring(opts.interval)) end
    for _, f in ipairs({ "stop", "sleep", "on_report" }) do
        if opts[f] ~= nil and type(opts[f]) ~= "function" then
            return invalid("run: %s must be a function, not %s", f, type(opts[f]))
        end
    end
    if opts.stop == nil then return invalid("run: stop is required (a function returning true to stop)") end
    local sleep = opts.sleep or default_sleep
    local ticks = 0
    while true do
        local report = self:tick()
        ticks = ticks + 1
        if opts.on_report then opts.on_report(report) end
        if opts.stop() then return ticks end
        sleep(ms / 1000)
    end
end

-------------------------------------------------------------------------
-- OpenResty
-------------------------------------------------------------------------

local OPENRESTY_KEYS = { interval = true, worker = true, immediate = true, on_report = true }

-- The ngx.timer handler: one tick at a time (ngx.timer.every starts a new
-- light thread at each expiry even while the last one still runs).
local function timer_handler(ngx, sched, on_report)
    local running = false
    return function(premature)
        if premature or running then return end
        running = true
        local ok, report = pcall(sched.tick, sched)
        running = false
        if not ok then
            ngx.log(ngx.ERR, "takhin scheduler: tick failed: ", tostring(report))
            return
        end
        for _, e in ipairs(report) do
            if e.error then
                ngx.log(ngx.ERR, "takhin scheduler: ", e.name, ": ", e.action, ": ", e.error,
                        e.code and (" (" .. e.code .. ")") or "")
            end
        end
        if on_report then
            local cb_ok, cb_err = pcall(on_report, report)
            if not cb_ok then ngx.log(ngx.ERR, "takhin scheduler: on_report: ", tostring(cb_err)) end
        end
    end
end

--- scheduler.openresty(sched, { interval = "1m" [, worker = 0] [, immediate = true]
--                               [, on_report = fn] }) -> true | nil, err
-- Call from init_worker_by_lua*.  Only the worker whose ngx.worker.id()
-- is `worker` (default 0) schedules anything; in the others this returns
-- true and does nothing.  Ticks run from ngx.timer.every(interval), plus
-- one at once (ngx.timer.at(0)) unless immediate = false.  Errors in
-- reports go to the error log.  Snapshots do blocking file I/O in that
-- worker while they run.
function M.openresty(sched, opts)
    local ngx = rawget(_G, "ngx")
    if getmetatable(sched) ~= Scheduler then
        return nil, "scheduler.openresty: a scheduler from scheduler.new expected"
    end
    opts = opts or {}
    if type(opts) ~= "table" then return nil, "scheduler.openresty: options table expected" end
    local bad = unknown_key(opts, OPENRESTY_KEYS)
    if bad then return nil, "scheduler.openresty: unknown option '" .. bad .. "'" end
    if type(ngx) ~= "table" or type(ngx.timer) ~= "table" or type(ngx.worker) ~= "table" then
        return nil, "scheduler.openresty: ngx is not available (run it in OpenResty)"
    end
    local ms, err = duration.parse(opts.interval or "1m")
    if not ms then return nil, "scheduler.openresty: interval: " .. err end
    if ms <= 0 then return nil, "scheduler.openresty: interval must be more than 0" end
    local worker = opts.worker or 0
    if type(worker) ~= "number" then return nil, "scheduler.openresty: worker must be a number" end
    if opts.on_report ~= nil and type(opts.on_report) ~= "function" then
        return nil, "scheduler.openresty: on_report must be a function"
    end
    local id = ngx.worker.id()
    if id == nil then
        return nil, "scheduler.openresty: no worker id (call it from init_worker_by_lua*)"
    end
    if id ~= worker then return true end
    local handler = timer_handler(ngx, sched, opts.on_report)
    local ok, terr = ngx.timer.every(ms / 1000, handler)
    if not ok then return nil, "scheduler.openresty: ngx.timer.every: " .. tostring(terr) end
    if opts.immediate ~= false then
        ok, terr = ngx.timer.at(0, handler)
        if not ok then return nil, "scheduler.openresty: ngx.timer.at: " .. tostring(terr) end
    end
    return true
end

M.Scheduler = Scheduler

return M
