--- takhin.policy: which snapshots to keep.
--
--   local pol = assert(policy.new{ preset = "production", keep_daily = 7 })
--   local plan = policy.plan(sm:list(), pol)   -- { keep = {...}, delete = {...} }
--
-- Two kinds of rule, combined as restic's `forget` does -- a snapshot is
-- kept when ANY rule keeps it, and the newest snapshot is always kept:
--
-- * the seed's SnapshotConfig limits, max_snapshots and retention_time.
--   Together they are ONE rule with the seed's meaning (CleanupSnapshots;
--   the C engine's sm:_cleanup keeps the same rule, and spec/policy_spec.lua
--   checks that both agree): a snapshot passes when it is among the newest
--   max_snapshots AND at most retention_time older than the newest.
--   Either limit may be given alone.
-- * restic-style keep rules: keep_last, keep_hourly, keep_daily,
--   keep_weekly, keep_monthly, keep_yearly (counts) and keep_within (a
--   duration).  Buckets are UTC hours, days, ISO weeks, months and years.
--
-- "Newest" is by creation (the engine's seq), not by timestamp.  Ages are
-- measured from the newest snapshot's timestamp, never the wall clock, so
-- a log whose snapshots stopped keeps what it had; a snapshot dated after
-- the newest (the clock stepped back) is as new as the newest.  A policy
-- with no rule at all keeps everything, except damaged snapshots, which
-- are always deleted.  min_interval is not a keep rule: it is read by
-- sm:create and takhin.scheduler.
--
-- Pure Lua; runs on Lua 5.1-5.4 and LuaJIT.
local duration = require("takhin.duration")

local M = {}

-------------------------------------------------------------------------
-- Defaults and presets
-------------------------------------------------------------------------

--- The seed's DefaultSnapshotConfig (also takhin.default_snapshot_config()).
function M.defaults()
    return { max_snapshots = 5, retention_time = "24h", min_interval = "1h" }
end

-- The seed's three presets.  The seed's exact numbers are not known; these
-- are ours (docs/API.md, "takhin.policy"):
--   production      10 snapshots, 7 days, at most one an hour
--   development      3 snapshots, 1 hour, at most one a minute
--   high_frequency  48 snapshots, 24 hours, at most one every 5 minutes
local PRESETS = {
    production = { max_snapshots = 10, retention_time = "7d", min_interval = "1h" },
    development = { max_snapshots = 3, retention_time = "1h", min_interval = "1m" },
    high_frequency = { max_snapshots = 48, retention_time = "24h", min_interval = "5m" },
}

local function copy(t)
    local c = {}
    for k, v in pairs(t) do c[k] = v end
    return c
end

-- Copies: changing policy.presets.production does not change what
-- { preset = "production" } means.
M.presets = {}
for name, p in pairs(PRESETS) do M.presets[name] = copy(p) end

-------------------------------------------------------------------------
-- Option tables
--
-- Every Lua function of takhin that takes options follows one rule, the
-- C binding's (docs/API.md, "Conventions"):
--
-- * misuse raises: an unknown option name, an argument or option of the
--   wrong type, a required one missing;
-- * a value that is not acceptable returns nil, "<what>: ...", "INVALID".
--   Settings -- durations and the fields of a policy -- are values through
--   and through: they are usually read from configuration (a file, a
--   command line, nginx.conf), so whatever they hold, of whatever type,
--   is reported that way, naming the field and the value.
--
-- check_options is the one checker of option names, used by init.lua
-- (sm:create, sm:cleanup), this module and takhin.scheduler.  It lives
-- here because every module that takes options already loads this one.
-------------------------------------------------------------------------

local getinfo = debug and debug.getinfo
-- The directory of takhin's Lua modules, as their chunk names spell it.
local HOME = getinfo and getinfo(1, "S").source:match("^(@.*[/\\])[^/\\]+$")

-- The level, for error(), of the first caller outside takhin's Lua
-- modules: misuse is reported where the user called takhin (as the C
-- binding's luaL_error does), however deep inside takhin it is found.
local function caller_level()
    if not HOME then return 3 end
    local level = 3                     -- 1: here, 2: raise, 3: raise's caller
    while true do
        local info = getinfo(level, "S")
        if not info then return 0 end
        if info.source:sub(1, #HOME) ~= HOME then return level - 1 end
        level = level + 1
    end
end

--- Raises msg for misuse, positioned at the user's call.
local function raise(msg)
    error(msg, caller_level())
end

local function tostring_key(k)
    return type(k) == "string" and k or tostring(k)
end

--- Raises "<what>: unknown option 'k'" for a key of opts that is not in
-- the set known (the first in sorted order, so the message does not
-- depend on pairs), and "bad argument to '<what>' (table expected, got
-- T)" when opts is not a table.  Returns opts.
local function check_options(opts, what, known)
    if type(opts) ~= "table" then
        raise(("bad argument to '%s' (table expected, got %s)"):format(what, type(opts)))
    end
    local unknown
    for k in pairs(opts) do
        if not known[k] and (unknown == nil or tostring_key(k) < unknown) then
            unknown = tostring_key(k)
        end
    end
    if unknown then raise(("%s: unknown option '%s'"):format(what, unknown)) end
    return opts
end

M._check_options, M._raise = check_options, raise

-------------------------------------------------------------------------
-- Validation
-------------------------------------------------------------------------

local Policy = {}

local DURATIONS = { "retention_time", "min_interval", "keep_within" }
local COUNTS = { "keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly",
                 "keep_yearly" }

-- Option names: the fields, and X_ms (as a policy holds them) next to X.
local FIELDS = { preset = true, max_snapshots = true, dry_run = true }
for _, f in ipairs(COUNTS) do FIELDS[f] = true end
for _, f in ipairs(DURATIONS) do FIELDS[f], FIELDS[f .. "_ms"] = true, true end

local function invalid(what, fmt, ...)
    return nil, what .. ": " .. fmt:format(...), "INVALID"
end

local function is_integer(v, min)
    return type(v) == "number" and v == v and v >= min and v ~= math.huge and v == math.floor(v)
end

local function show(v)
    if type(v) == "string" then return ("%q"):format(v) end
    return tostring(v)
end

-- Raises on unknown names.  X_ms is accepted next to X (a plain copy of a
-- policy) and recomputed from it; alone, it is a mistake.
local function check_names(cfg, what)
    check_options(cfg, what, FIELDS)
    for _, f in ipairs(DURATIONS) do
        if cfg[f .. "_ms"] ~= nil and cfg[f] == nil then
            raise(("%s: option '%s_ms' is derived from %s: give %s"):format(what, f, f, f))
        end
    end
end

-- The fields of cfg over those of its preset.
local function merged(cfg, what)
    local preset = cfg.preset
    if preset == nil then return copy(cfg) end
    if type(preset) ~= "string" or not PRESETS[preset] then
        return invalid(what, "unknown preset %s (production, development, high_frequency)",
                       show(preset))
    end
    local m = copy(PRESETS[preset])
    for k, v in pairs(cfg) do m[k] = v end
    return m
end

local function validate(cfg, what)
    check_names(cfg, what)
    local m, msg, code = merged(cfg, what)
    if not m then return nil, msg, code end
    local p = setmetatable({ preset = m.preset }, Policy)
    if m.max_snapshots ~= nil then
        if not is_integer(m.max_snapshots, 1) then
            return invalid(what, "max_snapshots must be an integer >= 1, not %s", show(m.max_snapshots))
        end
        p.max_snapshots = m.max_snapshots
    end
    for _, f in ipairs(COUNTS) do
        if m[f] ~= nil then
            if not is_integer(m[f], 0) then
                return invalid(what, "%s must be an integer >= 0, not %s", f, show(m[f]))
            end
            p[f] = m[f]
        end
    end
    for _, f in ipairs(DURATIONS) do
        if m[f] ~= nil then
            local ms, err = duration.parse(m[f])
            if not ms then return invalid(what, "%s: %s", f, err) end
            p[f], p[f .. "_ms"] = m[f], ms
        end
    end
    if m.dry_run ~= nil then
        if type(m.dry_run) ~= "boolean" then
            return invalid(what, "dry_run must be a boolean, not %s", show(m.dry_run))
        end
        p.dry_run = m.dry_run
    end
    return p
end

--- policy.new(cfg) -> policy | nil, msg, "INVALID"
-- cfg holds the fields above (all optional) and may name a preset that the
-- other fields override.  Duration fields keep the text given (so
-- sm:create(log, { min_interval = pol.min_interval }) works) and gain an
-- X_ms twin in milliseconds.  Passing a policy again re-validates a copy.
-- Bad values return INVALID; unknown names and a cfg that is not a table
-- raise.
function M.new(cfg)
    if type(cfg) ~= "table" then
        raise(("bad argument #1 to 'new' (table expected, got %s)"):format(type(cfg)))
    end
    return validate(cfg, "policy")
end

--- Like new, for takhin's own callers: `what` names the caller in
-- messages ("cleanup: ..."), nil stands for the seed's defaults, and argn
-- (default 1) is cfg's place among the caller's arguments.
function M.check(cfg, what, argn)
    if cfg == nil then cfg = M.defaults() end
    if type(cfg) ~= "table" then
        raise(("bad argument #%d to '%s' (table expected, got %s)"):format(argn or 1, what, type(cfg)))
    end
    return validate(cfg, what)
end

--- True when p has a keep rule (a policy without one keeps everything).
function M.has_rules(p)
    if p.max_snapshots or p.retention_time_ms or p.keep_within_ms then return true end
    for _, f in ipairs(COUNTS) do
        if (p[f] or 0) > 0 then return true end
    end
    return false
end

local function display(p, f)
    local v = p[f]
    if type(v) == "string" then return v end
    return duration.format(p[f .. "_ms"])
end

--- "max_snapshots=5 retention_time=24h min_interval=1h"
function Policy:__tostring()
    local parts = {}
    if self.preset then parts[#parts + 1] = "preset=" .. self.preset end
    if self.max_snapshots then parts[#parts + 1] = "max_snapshots=" .. self.max_snapshots end
    for _, f in ipairs(DURATIONS) do
        if self[f] ~= nil then parts[#parts + 1] = f .. "=" .. display(self, f) end
    end
    for _, f in ipairs(COUNTS) do
        if self[f] ~= nil then parts[#parts + 1] = f .. "=" .. self[f] end
    end
    if self.dry_run then parts[#parts + 1] = "dry_run" end
    if #parts == 0 then return "takhin.policy(keep everything)" end
    return "takhin.policy(" .. table.concat(parts, " ") .. ")"
end

-------------------------------------------------------------------------
-- Calendar buckets (UTC), without os.date: exact for any year and the
-- same on every platform.
-------------------------------------------------------------------------

local floor = math.floor
local DAY_MS = 86400000

-- Year, month, day of a count of days since 1970-01-01 (H. Hinnant's
-- civil_from_days).
local function civil(z)
    z = z + 719468
    local era = floor(z / 146097)
    local doe = z - era * 146097
    local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
    local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
    local mp = floor((5 * doy + 2) / 153)
    local d = doy - floor((153 * mp + 2) / 5) + 1
    local m = mp < 10 and mp + 3 or mp - 9
    local y = yoe + era * 400
    if m <= 2 then y = y + 1 end
    return y, m, d
end

-- Days since 1970-01-01 of January 1st of year y.
local function jan1(y)
    y = y - 1                                   -- January counts in the year before March
    local era = floor(y / 400)
    local yoe = y - era * 400
    local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + 306
    return era * 146097 + doe - 719468
end

-- ISO 8601 year and week of a day: the week's Thursday decides the year.
local function iso_week(z)
    local weekday = (z + 3) % 7 + 1             -- 1970-01-01 was a Thursday; Monday = 1
    local thursday = z - weekday + 4
    local y = civil(thursday)
    return y, floor((thursday - jan1(y)) / 7) + 1
end

local BUCKETS = {
    { rule = "keep_hourly", label = "hourly", key = function(ts)
        local z = floor(ts / DAY_MS)
        local y, m, d = civil(z)
        return ("%04d-%02d-%02d %02d:00"):format(y, m, d, floor((ts - z * DAY_MS) / 3600000))
    end },
    { rule = "keep_daily", label = "daily", key = function(ts)
        return ("%04d-%02d-%02d"):format(civil(floor(ts / DAY_MS)))
    end },
    { rule = "keep_weekly", label = "weekly", key = function(ts)
        return ("%04d-W%02d"):format(iso_week(floor(ts / DAY_MS)))
    end },
    { rule = "keep_monthly", label = "monthly", key = function(ts)
        local y, m = civil(floor(ts / DAY_MS))
        return ("%04d-%02d"):format(y, m)
    end },
    { rule = "keep_yearly", label = "yearly", key = function(ts)
        return ("%04d"):format((civil(floor(ts / DAY_MS))))
    end },
}

--- The bucket names a snapshot timestamp (ms) falls in, for display and
-- tests: { hourly = "2026-11-25 14:00", daily = "2026-11-25",
-- weekly = "2026-W48", monthly = "2026-11", yearly = "2026" }.
function M.buckets(ts)
    local b = {}
    for _, r in ipairs(BUCKETS) do b[r.label] = r.key(ts) end
    return b
end

-------------------------------------------------------------------------
-- Planning
-------------------------------------------------------------------------

-- The snapshots the rules rank, newest first, and the damaged ones (in
-- the order given).  Newest means newest by creation: by seq when every
-- ranked snapshot has one (the engine numbers snapshots as it makes
-- them), else by timestamp, which a clock stepped back can make lie.
-- Equal keys keep the order given.
local function ranked(snapshots)
    local rows, damaged, by_seq = {}, {}, true
    for i, s in ipairs(snapshots) do
        if type(s) ~= "table" then
            raise(("plan: snapshot #%d is a %s, not a table"):format(i, type(s)))
        end
        if s.damaged then
            damaged[#damaged + 1] = s
        else
            if type(s.timestamp) ~= "number" or s.timestamp ~= s.timestamp then
                raise(("plan: snapshot #%d has no numeric timestamp"):format(i))
            end
            if s.seq == nil then
                by_seq = false
            elseif type(s.seq) ~= "number" or s.seq ~= s.seq then
                raise(("plan: snapshot #%d has a seq that is not a number"):format(i))
            end
            rows[#rows + 1] = { s = s, i = i }
        end
    end
    local key = by_seq and "seq" or "timestamp"
    table.sort(rows, function(a, b)
        local x, y = a.s[key], b.s[key]
        if x ~= y then return x > y end
        return a.i < b.i
    end)
    return rows, damaged
end

-- How much older than the newest snapshot s is, in ms.  A snapshot dated
-- after the newest one (made before the clock stepped back) counts as
-- just as new: a lying clock never makes a snapshot deletable by age.
local function age(rows, s)
    local a = rows[1].s.timestamp - s.timestamp
    if a < 0 then return 0 end
    return a
end

local function add(reasons, i, why)
    local r = reasons[i]
    r[#r + 1] = why
end

-- The seed rule: among the newest max_snapshots and within retention_time.
local function seed_rule(p, rows, reasons)
    if not (p.max_snapshots or p.retention_time_ms) then return end
    for i, row in ipairs(rows) do
        local by_count = not p.max_snapshots or i <= p.max_snapshots
        local by_age = not p.retention_time_ms or age(rows, row.s) <= p.retention_time_ms
        if by_count and by_age then
            if p.max_snapshots then add(reasons, i, "max_snapshots " .. p.max_snapshots) end
            if p.retention_time_ms then add(reasons, i, "retention_time " .. display(p, "retention_time")) end
        end
    end
end

local function last_rule(p, rows, reasons)
    for i = 1, math.min(p.keep_last or 0, #rows) do add(reasons, i, "last " .. i) end
end

-- The newest snapshot of each of the n most recent buckets with snapshots
-- (most recent: holding the newest snapshots, in creation order).
local function bucket_rule(p, rows, reasons, b)
    local left, seen = p[b.rule] or 0, {}
    for i, row in ipairs(rows) do
        if left == 0 then return end
        local key = b.key(row.s.timestamp)
        if not seen[key] then
            add(reasons, i, b.label .. " " .. key)
            seen[key], left = true, left - 1
        end
    end
end

local function within_rule(p, rows, reasons)
    if not p.keep_within_ms then return end
    for i, row in ipairs(rows) do
        if age(rows, row.s) <= p.keep_within_ms then
            add(reasons, i, "within " .. display(p, "keep_within"))
        end
    end
end

--- policy.plan(snapshots, pol) -> { keep = { {snapshot =, reasons =}, ... },
--                                    delete = { snapshot, ... }, policy = p }
-- keep is newest first; delete lists what no rule keeps, newest first,
-- then every damaged snapshot (damaged = true: it cannot be restored, so
-- no rule counts or keeps it).  pol is a policy, a table of policy
-- fields, or nil (the seed's defaults); a bad value returns nil, msg,
-- "INVALID", an unknown name raises.
function M.plan(snapshots, pol)
    if type(snapshots) ~= "table" then
        raise(("bad argument #1 to 'plan' (table expected, got %s)"):format(type(snapshots)))
    end
    local p, msg, code = M.check(pol, "plan", 2)
    if not p then return nil, msg, code end
    local rows, damaged = ranked(snapshots)
    local reasons = {}
    for i = 1, #rows do reasons[i] = {} end
    if #rows > 0 then
        add(reasons, 1, "newest")
        if not M.has_rules(p) then
            for i = 1, #rows do add(reasons, i, "no rules") end
        end
        seed_rule(p, rows, reasons)
        last_rule(p, rows, reasons)
        for _, b in ipairs(BUCKETS) do bucket_rule(p, rows, reasons, b) end
        within_rule(p, rows, reasons)
    end
    local plan = { keep = {}, delete = {}, policy = p }
    for i, row in ipairs(rows) do
        if #reasons[i] > 0 then
            plan.keep[#plan.keep + 1] = { snapshot = row.s, reasons = reasons[i] }
        else
            plan.delete[#plan.delete + 1] = row.s
        end
    end
    for _, s in ipairs(damaged) do plan.delete[#plan.delete + 1] = s end
    return plan
end

M.Policy = Policy

return M
