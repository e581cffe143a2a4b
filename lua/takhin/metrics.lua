--- takhin.metrics: logs and snapshot managers in Prometheus' text format.
--
--   local text = takhin.metrics.prometheus{
--       logs = { orders = log },               -- label log="orders"
--       managers = { orders = sm },            -- label manager="orders"
--   }
--
-- A log's counters (log:stats()) live in its shared state, so every
-- process that has the log open -- every nginx worker -- adds to the same
-- numbers, and any of them can serve /metrics.  They start again from
-- zero when the last handle of the log closes, which Prometheus treats as
-- a counter reset.  A manager's numbers are gauges read from its catalog.
-- Pure Lua; runs on Lua 5.4 and LuaJIT.
local policy = require("takhin.policy")

local M = {}

-- name, type, help, and how to get the value from log:stats()
local LOG_COUNTERS = {
    { "appends", "Append calls that succeeded." },
    { "records", "Records appended." },
    { "bytes", "Framed bytes appended (34 + key + value per record)." },
    { "reads", "Records read (read and iterators)." },
    { "fsyncs", "fdatasync calls made to make appended records durable." },
    { "rolls", "Segments sealed." },
    { "truncates", "Truncations." },
    { "segments_deleted", "Segments deleted by retention and delete_before." },
    { "cursor_commits", "Cursor commits." },
}

local LOG_GAUGES = {
    { "base_offset", "First offset the log holds." },
    { "high_water_mark", "Offset the next append gets." },
    { "synced_offset", "Records below this offset are known to be durable." },
    { "size", "Bytes of the .log files.", "size_bytes" },
    { "num_segments", "Segments.", "segments" },
    { "writers", "Shared writers with the log open." },
}

-- Prometheus label values: backslash, double quote and newline escaped.
local function label(v)
    return (tostring(v):gsub("[\\\"\n]", { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

-- A sample value or an `le` bound: integers exactly, other numbers in the
-- fewest digits that read back as the same double (0.00025, not
-- 0.00025000000000000001: an `le` label is compared as text by people).
local function num(v)
    if v == math.huge then return "+Inf" end
    if v == -math.huge then return "-Inf" end
    if v ~= v then return "NaN" end
    if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return ("%d"):format(v) end
    for digits = 15, 16 do
        local s = ("%." .. digits .. "g"):format(v)
        if tonumber(s) == v then return s end
    end
    return ("%.17g"):format(v)
end

-- Sorted names of a { name = object } table (a stable output).
local function names(t)
    local n = {}
    for k in pairs(t or {}) do n[#n + 1] = k end
    table.sort(n, function(a, b) return tostring(a) < tostring(b) end)
    return n
end

local function family(out, name, kind, help)
    out[#out + 1] = ("# HELP %s %s"):format(name, help)
    out[#out + 1] = ("# TYPE %s %s"):format(name, kind)
end

local function sample(out, name, labels, value)
    out[#out + 1] = ("%s{%s} %s"):format(name, labels, num(value))
end

local function log_metrics(out, logs)
    local stats, order = {}, names(logs)
    for _, n in ipairs(order) do
        local s, msg = logs[n]:stats()
        if not s then error(("metrics: log %s: %s"):format(tostring(n), tostring(msg)), 3) end
        stats[n] = s
    end
    if #order == 0 then return end
    for _, c in ipairs(LOG_COUNTERS) do
        local name = "takhin_log_" .. c[1] .. "_total"
        family(out, name, "counter", c[2])
        for _, n in ipairs(order) do sample(out, name, ('log="%s"'):format(label(n)), stats[n][c[1]]) end
    end
    family(out, "takhin_log_errors_total", "counter", "Calls that failed, by error code.")
    for _, n in ipairs(order) do
        local codes = names(stats[n].errors)
        for _, code in ipairs(codes) do
            sample(out, "takhin_log_errors_total", ('log="%s",code="%s"'):format(label(n), label(code)),
                   stats[n].errors[code])
        end
    end
    family(out, "takhin_log_fsync_seconds", "histogram", "Latency of the fsyncs counted in takhin_log_fsyncs_total.")
    for _, n in ipairs(order) do
        local h, l = stats[n].fsync_seconds, label(n)
        for _, b in ipairs(h.buckets) do
            sample(out, "takhin_log_fsync_seconds_bucket", ('log="%s",le="%s"'):format(l, num(b.le)), b.count)
        end
        sample(out, "takhin_log_fsync_seconds_sum", ('log="%s"'):format(l), h.sum)
        sample(out, "takhin_log_fsync_seconds_count", ('log="%s"'):format(l), h.count)
    end
    for _, g in ipairs(LOG_GAUGES) do
        local name = "takhin_log_" .. (g[3] or g[1])
        family(out, name, "gauge", g[2])
        for _, n in ipairs(order) do sample(out, name, ('log="%s"'):format(label(n)), stats[n][g[1]]) end
    end
end

local MANAGER_GAUGES = {
    { "snapshots", "Snapshots in the directory, damaged ones included." },
    { "damaged", "Snapshots whose manifest cannot be read.", "damaged_snapshots" },
    { "bytes", "Bytes of the snapshots' files (hard links counted in full).", "size_bytes" },
    { "newest_timestamp", "When the newest snapshot was taken, in seconds since the epoch.",
      "newest_timestamp_seconds", 1000 },
}

local function manager_metrics(out, managers)
    local stats, order = {}, names(managers)
    for _, n in ipairs(order) do
        local s, msg = managers[n]:stats()
        if not s then error(("metrics: manager %s: %s"):format(tostring(n), tostring(msg)), 3) end
        stats[n] = s
    end
    for _, g in ipairs(MANAGER_GAUGES) do
        local name = "takhin_snapshot_" .. (g[3] or g[1])
        if #order > 0 then family(out, name, "gauge", g[2]) end
        for _, n in ipairs(order) do
            local v = stats[n][g[1]]
            if v ~= nil then sample(out, name, ('manager="%s"'):format(label(n)), v / (g[4] or 1)) end
        end
    end
end

local KEYS = { logs = true, managers = true }

--- takhin.metrics.prometheus{ logs = { name = log, ... }, managers = { name = sm, ... } }
-- -> text in Prometheus' exposition format (version 0.0.4), ending with a
-- newline.  A log or manager that cannot report raises.
function M.prometheus(opts)
    local o = policy._check_options(opts, "metrics.prometheus", KEYS)
    for _, k in ipairs({ "logs", "managers" }) do
        if o[k] ~= nil and type(o[k]) ~= "table" then
            error(("metrics.prometheus: option '%s': table expected, got %s"):format(k, type(o[k])), 2)
        end
    end
    local out = {}
    log_metrics(out, o.logs)
    manager_metrics(out, o.managers)
    return table.concat(out, "\n") .. "\n"
end

return M
