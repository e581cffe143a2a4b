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
-- With `wait` (scheduler.new's option), create and cleanup run as jobs
-- (async = true) and wait(job) gets their results; scheduler.openresty
-- does that with takhin.ngx.wait, so a tick yields with ngx.sleep while
-- the engine's thread copies and fsyncs, instead of blocking the worker.
--
-- A target is due when its manager has no snapshot, or its newest one is
-- at least the policy's min_interval older than `now` (no min_interval:
-- due at every tick), or is damaged, or is dated more than a minute after
-- `now`.  The last happens when the clock stepped back after a snapshot:
-- waiting for the clock to catch up could leave the log without a new
-- snapshot for as long as the step, so such a target is due at once.
-- (Within a minute, clocks merely disagree: see CLOCK_SLACK_MS.)  The
-- decision reads the manager's own list, so it survives restarts and sees
-- snapshots other processes took.  After a snapshot, cleanup by the
-- policy runs for that target.
--
-- Options follow takhin's rule (takhin.policy, "Option tables"): misuse
-- -- an unknown option, a callback that is not a function, a log that is
-- not one -- raises; a bad value (an interval that does not parse, an
-- empty target list, a bad policy field) returns nil, msg, "INVALID".
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

local check_options, raise = policy._check_options, policy._raise

local Scheduler = {}
Scheduler.__index = Scheduler

local function invalid(fmt, ...)
    return nil, "scheduler: " .. fmt:format(...), "INVALID"
end

local function wall_clock_ms()
    return os.time() * 1000
end

-- The milliseconds of a required duration option, or nil, msg, "INVALID"
-- (a duration is a setting: whatever it holds is a value).
local function interval_ms(v, what)
    if v == nil then raise(what .. ": interval is required (a duration such as \"1m\", or seconds)") end
    local ms, err = duration.parse(v)
    if not ms then return nil, what .. ": interval: " .. err, "INVALID" end
    if ms <= 0 then return nil, what .. ": interval must be more than 0, not " .. tostring(v), "INVALID" end
    return ms
end

local function check_function(v, what, name, optional)
    if (v ~= nil or not optional) and type(v) ~= "function" then
        raise(("%s: %s must be a function, not %s"):format(what, name, type(v)))
    end
end

-------------------------------------------------------------------------
-- Construction
-------------------------------------------------------------------------

local TARGET_KEYS = { name = true, log = true, manager = true, label = true }

local function has_method(obj, name)
    local ok, f = pcall(function() return obj[name] end)
    return ok and type(f) == "function"
end

local function is_object(v)
    return type(v) == "userdata" or type(v) == "table"
end

local function check_target(t, i, seen)
    local what = ("scheduler: target #%d"):format(i)
    if type(t) ~= "table" then raise(("%s: table expected, got %s"):format(what, type(t))) end
    check_options(t, what, TARGET_KEYS)
    if type(t.name) ~= "string" then
        raise(("%s: name must be a string, not %s"):format(what, type(t.name)))
    end
    if t.name == "" then return invalid("target #%d: name must not be empty", i) end
    if seen[t.name] then return invalid("target #%d: name %q given twice", i, t.name) end
    seen[t.name] = true
    what = ("scheduler: target %q"):format(t.name)
    if not is_object(t.log) then
        raise(("%s: log must be a takhin.Log, not %s"):format(what, type(t.log)))
    end
    local m = t.manager
    if not is_object(m) or not has_method(m, "create") or not has_method(m, "latest")
        or not has_method(m, "cleanup") then
        raise(("%s: manager must be a takhin.SnapshotManager, not %s"):format(what, tostring(m)))
    end
    if t.label ~= nil and type(t.label) ~= "string" then
        raise(("%s: label must be a string, not %s"):format(what, type(t.label)))
    end
    return { name = t.name, log = t.log, manager = m, label = t.label }
end

local NEW_KEYS = { targets = true, policy = true, now = true, wait = true }

--- scheduler.new{ targets = {...}, policy = pol, now = fn, wait = fn } -> sched | nil, msg, "INVALID"
-- targets: an array of { name =, log =, manager = [, label =] } (names
-- unique).  policy: a takhin.policy or a table of its fields; default the
-- seed's (policy.defaults()).  now: a function returning ms since the
-- epoch; default the wall clock (seconds resolution).  wait: a function
-- (job) -> the job's results (takhin.ngx.wait); when given, create and
-- cleanup are started as jobs and waited for with it.  Misuse raises; an
-- empty target list, an empty or repeated name and bad policy values are
-- INVALID.
function M.new(opts)
    if type(opts) ~= "table" then
        raise(("bad argument #1 to 'new' (table expected, got %s)"):format(type(opts)))
    end
    check_options(opts, "scheduler", NEW_KEYS)
    if type(opts.targets) ~= "table" then
        raise(("scheduler: targets must be an array of { name =, log =, manager = }, not %s")
              :format(type(opts.targets)))
    end
    if #opts.targets == 0 then return invalid("targets must not be empty") end
    check_function(opts.now, "scheduler", "now", true)
    check_function(opts.wait, "scheduler", "wait", true)
    if opts.policy ~= nil and type(opts.policy) ~= "table" then
        raise(("scheduler: policy must be a takhin.policy or a table of its fields, not %s")
              :format(type(opts.policy)))
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
    return setmetatable({ targets = targets, policy = pol, now = opts.now or wall_clock_ms,
                          wait = opts.wait }, Scheduler)
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

-- What a call that returned a job (or nil, msg, code) would have
-- returned without async: wait(job)'s results.
local function waited(wait, job, msg, code)
    if not job then return nil, msg, code end
    local a, b, c = wait(job)
    if type(job.close) == "function" then job:close() end   -- no need to wait for __gc
    return a, b, c
end

-- sm:create and sm:cleanup for a tick: plain calls, or jobs waited for
-- with `wait`.  ok, results... as call.
local function create(t, wait)
    if not wait then return call(t.manager, "create", t.log, { label = t.label }) end
    return pcall(function()
        return waited(wait, t.manager:create(t.log, { label = t.label, async = true }))
    end)
end

local function cleanup(self, t, wait)
    if not wait then return call(t.manager, "cleanup", self.policy) end
    local rules = {}                        -- a plain copy: a policy has no async field
    for k, v in pairs(self.policy) do rules[k] = v end
    rules.async = true
    return pcall(function() return waited(wait, t.manager:cleanup(rules)) end)
end

-- Clocks disagree a little: the default clock counts whole seconds, an
-- injected one may be cached (ngx.now()), the engine reads the system's.
-- A newest snapshot dated at most this far after `now` was made just
-- now; one dated further ahead was made before the clock stepped back.
local CLOCK_SLACK_MS = 60 * 1000

-- Milliseconds until a target whose newest snapshot is `latest` (or
-- nil) is due; 0 when it is due now.
local function due_in(self, latest, now)
    local min = self.policy.min_interval_ms or 0
    if not latest or latest.damaged or min == 0 then return 0 end
    local age = now - latest.timestamp
    if age < -CLOCK_SLACK_MS or age >= min then return 0 end
    return min - age
end

-- The report entries for one target: one, or two (snapshot, cleanup).
local function tick_target(self, t, now, wait)
    local ok, latest, msg, code = call(t.manager, "latest")
    if not ok then return failed(t.name, "snapshot", latest) end
    if not latest and code ~= "NOT_FOUND" then return failed(t.name, "snapshot", msg, code) end
    local due = due_in(self, latest, now)
    if due > 0 then return { name = t.name, action = "skip", id = latest.id, due_in = due } end
    local snap
    ok, snap, msg, code = create(t, wait)
    if not ok then return failed(t.name, "snapshot", snap) end
    if not snap then return failed(t.name, "snapshot", msg, code) end
    local made = { name = t.name, action = "snapshot", id = snap.id }
    local deleted
    ok, deleted, msg, code = cleanup(self, t, wait)
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
-- the clock is not read.  With scheduler.new's wait, create and cleanup
-- run as jobs.
local function run_tick(self, now_ms, wait)
    local now = now_ms
    if now == nil then now = self.now() end
    if type(now) ~= "number" or now ~= now then
        raise(("tick: now must be a number of milliseconds, not %s"):format(tostring(now)))
    end
    local report = {}
    for _, t in ipairs(self.targets) do
        local ok, first, second = pcall(tick_target, self, t, now, wait)
        if not ok then first, second = failed(t.name, "snapshot", first), nil end
        report[#report + 1] = first
        report[#report + 1] = second
    end
    return report
end

function Scheduler:tick(now_ms)
    return run_tick(self, now_ms, self.wait)
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
-- Returns the number of ticks.  An interval that is not a duration > 0
-- returns nil, msg, "INVALID"; misuse (no interval, no stop, a callback
-- that is not a function, an unknown option) raises.
function Scheduler:run(opts)
    if type(opts) ~= "table" then
        raise(("bad argument #1 to 'run' (table expected, got %s)"):format(type(opts)))
    end
    check_options(opts, "scheduler: run", RUN_KEYS)
    check_function(opts.stop, "scheduler: run", "stop (a function returning true to stop)")
    check_function(opts.sleep, "scheduler: run", "sleep", true)
    check_function(opts.on_report, "scheduler: run", "on_report", true)
    local ms, msg, code = interval_ms(opts.interval, "scheduler: run")
    if not ms then return nil, msg, code end
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

local OPENRESTY_KEYS = { interval = true, worker = true, immediate = true, on_report = true,
                         async = true }

-- The ngx.timer handler: one tick at a time (ngx.timer.every starts a new
-- light thread at each expiry even while the last one still runs, and a
-- tick that waits for jobs yields).  wait: how jobs are waited for, or
-- nil for plain calls.
local function timer_handler(ngx, sched, on_report, wait)
    local running = false
    return function(premature)
        if premature or running then return end
        running = true
        local ok, report = pcall(run_tick, sched, nil, wait)
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

-- Raises unless ngx is OpenResty's, in a worker: calling the adapter
-- anywhere else is a mistake in the caller's code.
local function check_ngx(ngx, what)
    if type(ngx) ~= "table" or type(ngx.timer) ~= "table" or type(ngx.worker) ~= "table" then
        raise(what .. ": ngx is not available (run it in OpenResty)")
    end
end

--- scheduler.openresty(sched, { interval = "1m" [, worker = 0] [, immediate = true]
--                               [, on_report = fn] [, async = bool] }) -> true | nil, msg, code
-- Call from init_worker_by_lua*.  Only the worker whose ngx.worker.id()
-- is `worker` (default 0) schedules anything; in the others this returns
-- true and does nothing.  Ticks run from ngx.timer.every(interval), plus
-- one at once (ngx.timer.at(0)) unless immediate = false.  Errors in
-- reports go to the error log.  async (default: true where ngx.sleep
-- exists): create and cleanup run as jobs on the engine's threads, waited
-- for with takhin.ngx.wait (or sched's own wait), so the worker's event
-- loop goes on; async = false makes them plain calls that block the
-- worker while they copy and fsync.  A bad interval or worker is INVALID; a timer
-- nginx refuses is "IO" (the message carries nginx's reason); misuse --
-- not a scheduler, an unknown option, a wrong type, no ngx or no worker
-- id (not called from init_worker_by_lua*) -- raises.
function M.openresty(sched, opts)
    local what = "scheduler.openresty"
    local ngx = rawget(_G, "ngx")
    if getmetatable(sched) ~= Scheduler then
        raise(("bad argument #1 to 'openresty' (a scheduler from scheduler.new expected, got %s)")
              :format(type(sched)))
    end
    if opts == nil then opts = {} end
    check_options(opts, what, OPENRESTY_KEYS)
    local worker = opts.worker
    if worker == nil then worker = 0 end
    if type(worker) ~= "number" or worker ~= math.floor(worker) or worker == math.huge
        or worker == -math.huge then
        raise(("%s: worker must be an integer, not %s"):format(what, tostring(worker)))
    end
    if opts.immediate ~= nil and type(opts.immediate) ~= "boolean" then
        raise(("%s: immediate must be a boolean, not %s"):format(what, type(opts.immediate)))
    end
    check_function(opts.on_report, what, "on_report", true)
    if opts.async ~= nil and type(opts.async) ~= "boolean" then
        raise(("%s: async must be a boolean, not %s"):format(what, type(opts.async)))
    end
    check_ngx(ngx, what)
    local interval = opts.interval
    if interval == nil then interval = "1m" end
    local ms, msg, code = interval_ms(interval, what)
    if not ms then return nil, msg, code end
    if worker < 0 then return nil, what .. ": worker must be >= 0, not " .. tostring(worker), "INVALID" end
    local id = ngx.worker.id()
    if id == nil then raise(what .. ": no worker id (call it from init_worker_by_lua*)") end
    if id ~= worker then return true end
    local async = opts.async
    if async == nil then async = type(ngx.sleep) == "function" end
    local wait = nil
    if async then wait = sched.wait or require("takhin.ngx").wait end
    local handler = timer_handler(ngx, sched, opts.on_report, wait)
    local ok, terr = ngx.timer.every(ms / 1000, handler)
    if not ok then return nil, what .. ": ngx.timer.every: " .. tostring(terr), "IO" end
    if opts.immediate ~= false then
        ok, terr = ngx.timer.at(0, handler)
        if not ok then return nil, what .. ": ngx.timer.at: " .. tostring(terr), "IO" end
    end
    return true
end

M.Scheduler = Scheduler

return M
