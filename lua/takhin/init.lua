--- takhin: a Kafka-style segmented commit log with point-in-time snapshots.
-- The storage engine is the C core (takhin.core); this module adds the
-- pure-Lua parts on top: duration parsing, snapshot policies and their
-- scheduler, and the option handling of the snapshot methods that take
-- durations or policies.  Option tables follow takhin.policy's checker
-- (misuse raises, bad values are INVALID).  See docs/API.md.
local core = require("takhin.core")
local duration = require("takhin.duration")
local policy = require("takhin.policy")
local scheduler = require("takhin.scheduler")

local M = {
    version = core.version,
    format_version = core.format_version,
    snapshot_manager = core.snapshot_manager,
    check_snapshot_id = core.check_snapshot_id,
    crc32c = core.crc32c,
    crc32c_hw = core.crc32c_hw,         -- true: CRC32C runs on the CPU's instruction
    duration = duration,
    policy = policy,
    scheduler = scheduler,
    core = core,
    forwarder = function(opts) return require("takhin.forwarder").new(opts) end,  -- loads librdkafka on first use
}

--- The seed's DefaultSnapshotConfig: { max_snapshots = 5,
-- retention_time = "24h", min_interval = "1h" }, a new table each call.
M.default_snapshot_config = policy.defaults

local check_options = policy._check_options

local function invalid(msg) return nil, msg, "INVALID" end

-------------------------------------------------------------------------
-- Logs
-------------------------------------------------------------------------

local LOG_KEYS = { "dir", "max_segment_size", "index_interval_bytes", "max_record_size", "sync",
                   "sync_interval", "readonly", "shared", "max_open_segments", "retention" }
local RETENTION_KEYS = { "max_bytes", "max_age", "discard", "keep_uncommitted" }

-- A plain copy of an option table, proxies (__index) included.
local function copy_options(t, keys)
    local c = {}
    for k, v in pairs(t) do c[k] = v end
    for _, k in ipairs(keys) do
        if c[k] == nil then c[k] = t[k] end
    end
    return c
end

--- takhin.open_log(opts) -> log | nil, msg, code: the C core's, with
-- durations given as people write them: sync_interval ("100ms") and
-- retention.max_age ("7d"), or seconds.
function M.open_log(opts)
    if type(opts) ~= "table" or (opts.retention == nil and opts.sync_interval == nil) then
        return core.open_log(opts)          -- the core words every misuse
    end
    local o = copy_options(opts, LOG_KEYS)
    if o.sync_interval_ms ~= nil then error("open_log: unknown option 'sync_interval_ms'", 2) end
    if o.sync_interval ~= nil then
        local ms, err = duration.parse(o.sync_interval)
        if not ms then return invalid("open_log: sync_interval: " .. err) end
        o.sync_interval, o.sync_interval_ms = nil, ms
    end
    if type(o.retention) == "table" then
        local r = copy_options(o.retention, RETENTION_KEYS)
        if r.max_age_ms ~= nil then error("open_log: retention: unknown option 'max_age_ms'", 2) end
        if r.max_age ~= nil then
            local ms, err = duration.parse(r.max_age)
            if not ms then return invalid("open_log: retention max_age: " .. err) end
            r.max_age, r.max_age_ms = nil, ms
        end
        o.retention = r
    end
    return core.open_log(o)
end

local Log = core.Log

--- log:wait(offset [, timeout]) -> true | false, "timeout"
-- Sleeps until high_water_mark() > offset, woken by appends from any
-- process; timeout is a duration ("250ms", seconds), default: for ever.
-- In nginx it blocks the worker: poll high_water_mark() with ngx.sleep.
function Log:wait(offset, timeout)
    local ms = -1
    if timeout ~= nil then
        local t, err = duration.parse(timeout)
        if not t then return invalid("wait: timeout: " .. err) end
        ms = t
    end
    if self:_wait(offset, ms) then return true end
    return false, "timeout"
end

-- Methods written in Lua are added to the C metatable's method table;
-- doing it again (a second require in another state) is harmless.
local Snap = core.SnapshotManager

local CREATE_OPTS = { min_interval = true, label = true, progress = true, async = true,
                      threads = true }

--- sm:create(log [, { min_interval = "1h", label = "...", progress = fn,
--                     async = bool, threads = n }]) -> snapshot (or a takhin.Job)
function Snap:create(log, opts)
    local o = opts == nil and {} or check_options(opts, "create", CREATE_OPTS)
    local c = { label = o.label, progress = o.progress, async = o.async, threads = o.threads }
    if o.min_interval ~= nil then
        local ms, err = duration.parse(o.min_interval)
        if not ms then return invalid("create: min_interval: " .. err) end
        c.min_interval_ms = ms
    end
    return self:_create(log, c)
end

--- sm:cleanup([rules]) -> number deleted, plan
-- rules: a takhin.policy, a table of policy fields, or nil (the seed's
-- defaults: 5 snapshots, 24 hours).  See takhin.policy for the rules; the
-- newest snapshot is never deleted and ages are measured from it.  With
-- dry_run = true nothing is deleted: 0, plan.  All deletions are one
-- metadata update.  Bad values: nil, msg, "INVALID"; unknown names raise.
-- Damaged snapshots are always deleted (takhin.policy).
-- async = true asks for a job; it is not a policy field.
local function split_async(rules)
    if type(rules) ~= "table" or getmetatable(rules) == policy.Policy or rules.async == nil then
        return rules, false
    end
    local r = {}
    for k, v in pairs(rules) do if k ~= "async" then r[k] = v end end
    if type(rules.async) ~= "boolean" then
        error(("cleanup: option 'async': boolean expected, got %s"):format(type(rules.async)), 3)
    end
    return r, rules.async
end

function Snap:cleanup(rules)
    local async
    rules, async = split_async(rules)
    local pol, msg, code = policy.check(rules, "cleanup")
    if not pol then return nil, msg, code end
    local snaps
    snaps, msg, code = self:list()
    if not snaps then return nil, msg, code end
    local plan = policy.plan(snaps, pol)
    local ids = {}
    if not pol.dry_run then
        for i, s in ipairs(plan.delete) do ids[i] = s.id end
    end
    if async then                       -- a job whose wait gives n, plan
        local job
        job, msg, code = self:_delete_many(ids, true)
        if not job then return nil, msg, code end
        job:_set_plan(plan)
        return job
    end
    if #ids == 0 then return 0, plan end
    local n
    n, msg, code = self:_delete_many(ids)
    if not n then return nil, msg, code end
    return n, plan
end

--- sm:stats() -> { snapshots =, damaged =, bytes =, newest_timestamp =, newest_id = }
-- Gauges read from the catalog (shared by every process using the
-- directory); newest_* describe the newest healthy snapshot by creation.
function Snap:stats()
    local snaps, msg, code = self:list()
    if not snaps then return nil, msg, code end
    local s = { snapshots = #snaps, damaged = 0, bytes = 0 }
    for _, x in ipairs(snaps) do
        s.bytes = s.bytes + (x.total_size or 0)
        if x.damaged then
            s.damaged = s.damaged + 1
        elseif s.newest_id == nil then
            s.newest_id, s.newest_timestamp = x.id, x.timestamp
        end
    end
    return s
end

local Job = core.Job

--- job:wait([timeout]) -> what the synchronous call returns | false, "timeout"
-- timeout: a duration ("250ms", seconds); default: until the job is done.
-- It blocks the thread: in nginx use takhin.ngx.wait(job).
function Job:wait(timeout)
    local ms = -1
    if timeout ~= nil then
        local t, err = duration.parse(timeout)
        if not t then return invalid("wait: timeout: " .. err) end
        ms = t
    end
    return self:_wait(ms)
end

-- Loaded on first use: takhin.ngx (OpenResty helpers), takhin.metrics.
setmetatable(M, { __index = function(t, k)
    if k == "ngx" or k == "metrics" then
        local mod = require("takhin." .. k)
        rawset(t, k, mod)
        return mod
    end
end })

return M
