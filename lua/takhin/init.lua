--- takhin: a Kafka-style segmented commit log with point-in-time snapshots.
-- The storage engine is the C core (takhin.core); this module adds the
-- pure-Lua parts on top: duration parsing and the option handling of the
-- snapshot methods that take durations.  See docs/API.md.
local core = require("takhin.core")
local duration = require("takhin.duration")

local M = {
    version = core.version,
    format_version = core.format_version,
    open_log = core.open_log,
    snapshot_manager = core.snapshot_manager,
    check_snapshot_id = core.check_snapshot_id,
    crc32c = core.crc32c,
    duration = duration,
    core = core,
}

--- The seed's DefaultSnapshotConfig.
function M.default_snapshot_config()
    return { max_snapshots = 5, retention_time = "24h", min_interval = "1h" }
end

local function invalid(msg) return nil, msg, "INVALID" end

local function check_opts(opts, what, known)
    if opts == nil then return {} end
    if type(opts) ~= "table" then
        error(("bad argument to '%s' (table expected, got %s)"):format(what, type(opts)), 3)
    end
    for k in pairs(opts) do
        if not known[k] then error(("%s: unknown option '%s'"):format(what, tostring(k)), 3) end
    end
    return opts
end

-- Methods written in Lua are added to the C metatable's method table;
-- doing it again (a second require in another state) is harmless.
local Snap = core.SnapshotManager

local CREATE_OPTS = { min_interval = true, label = true, progress = true }

--- sm:create(log [, { min_interval = "1h", label = "...", progress = fn }])
function Snap:create(log, opts)
    local o = check_opts(opts, "create", CREATE_OPTS)
    local c = { label = o.label, progress = o.progress }
    if o.min_interval ~= nil then
        local ms, err = duration.parse(o.min_interval)
        if not ms then return invalid("create: min_interval: " .. err) end
        c.min_interval_ms = ms
    end
    return self:_create(log, c)
end

local CLEANUP_OPTS = { max_snapshots = true, retention_time = true }

--- sm:cleanup([{ max_snapshots = 5, retention_time = "24h" }]) -> number deleted
-- With no argument the seed's defaults apply; with a table, only the rules
-- it names.  The newest snapshot is never deleted; age is measured from it.
function Snap:cleanup(opts)
    if opts == nil then
        local d = M.default_snapshot_config()
        opts = { max_snapshots = d.max_snapshots, retention_time = d.retention_time }
    end
    local o = check_opts(opts, "cleanup", CLEANUP_OPTS)
    local max, retention = 0, -1
    if o.max_snapshots ~= nil then
        max = o.max_snapshots
        if type(max) ~= "number" or max ~= max or max < 1 or max ~= math.floor(max) then
            return invalid(("cleanup: max_snapshots must be an integer >= 1, not %s"):format(tostring(o.max_snapshots)))
        end
    end
    if o.retention_time ~= nil then
        local ms, err = duration.parse(o.retention_time)
        if not ms then return invalid("cleanup: retention_time: " .. err) end
        retention = ms
    end
    return self:_cleanup(max, retention)
end

return M
