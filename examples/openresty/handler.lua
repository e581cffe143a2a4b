--- takhin behind nginx's Lua module (OpenResty style): a small HTTP front
-- end for one log, written to by every worker process at once.
--
-- examples/openresty/nginx.conf wires it up; examples/openresty/README.md
-- explains how to run it.  Endpoints (every answer is one line of JSON):
--
--   POST /append?key=K         body = value     -> {"offset":N,"worker":W}
--   GET  /read?offset=N                         -> {"offset":N,"timestamp":T,"key":K,"value":V}
--   POST /snapshot                              -> {"id":...,"high_water_mark":N,...}
--   GET  /snapshots                             -> {"snapshots":[...]}  (newest first)
--   POST /verify?id=ID                          -> {"id":...,"verified":true,"bytes":N}
--   POST /restore?id=ID&target=NAME             -> {"id":...,"target":DIR,"high_water_mark":N}
--   GET  /info                                  -> {"worker":W,"pid":P,"high_water_mark":N,...}
--   POST /drain?cursor=NAME&max=N               -> {"cursor":NAME,"from":F,"next":T,"records":[...],...}
--   GET  /metrics                               -> Prometheus' text format (takhin.metrics)
--
-- Errors: HTTP 4xx/5xx with {"error":"message","code":"CODE"}, CODE being
-- takhin's code (NOT_FOUND, OUT_OF_RANGE, INVALID, ...) or one of
-- METHOD_NOT_ALLOWED, UNAVAILABLE, INTERNAL.
--
-- Every worker opens the log with `shared = true` in init_worker_by_lua
-- (after the fork: a handle must never cross a fork).  A shared writer
-- takes the directory lock only while it appends and first catches up
-- with what the other workers appended, so offsets stay unique and
-- contiguous across workers.  Worker `scheduler_worker` (default 0) also
-- runs takhin.scheduler from ngx.timer.every; its snapshots are labelled
-- "scheduler worker=<id> pid=<pid>", those made through POST /snapshot
-- "api worker=<id> pid=<pid>".
--
-- Integers (offsets, timestamps, sizes) are written with string.format("%d"),
-- never through a float formatter: under LuaJIT they are doubles, exact up
-- to 2^53, and %d prints them exactly.  Keys and values that are not valid
-- UTF-8 are returned base64-encoded as "key_base64" / "value_base64".
--
-- POST /drain is a spool's consumer: it answers the records from cursor
-- NAME's committed offset on, and commits the cursor past them only
-- after the answer is out (ngx.eof), with expect = the offset it read the
-- cursor as.  A worker that dies before that leaves the cursor where it
-- was, so the next drain answers the same records again: every record
-- is delivered at least once, none is skipped, and two drains of one
-- cursor at once never both move it.
--
-- What reads or copies whole segments runs as a job on one of the
-- engine's threads: POST /snapshot, /verify and /restore and the
-- scheduler's snapshots and cleanups start one (async = true) and wait
-- for it with takhin.ngx.wait, which yields with ngx.sleep (1 ms doubling
-- up to 100 ms) until the job is done.  The worker's event loop serves
-- other requests meanwhile.  The rest (appends, reads, cursor commits,
-- /info, /metrics) are plain calls of microseconds; an append may wait
-- briefly for the directory lock while another worker appends.
--
-- GET /metrics answers takhin.metrics.prometheus for this worker's log
-- and manager, labelled log="<name>" and manager="<name>" (config `name`,
-- default "log").  The log's counters live in its shared state, so any
-- worker answers the same totals: every worker's appends, reads, ...

local takhin = require("takhin")

local M = {}

local state = {
    log = nil,          -- this worker's shared writer handle
    sm = nil,           -- this worker's snapshot manager
    err = nil,          -- why init_worker failed, if it did
    err_code = nil,
    worker = -1,
    pid = 0,
    restore_dir = nil,
    name = "log",       -- the label of /metrics
}

-------------------------------------------------------------------------
-- JSON output (hand-written: exact integers, binary-safe strings)
-------------------------------------------------------------------------

local fmt = string.format

local ESCAPES = {
    ['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
    ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t',
}

local function json_string(s)
    return '"' .. s:gsub('[%c"\\]', function(c)
        return ESCAPES[c] or fmt("\\u%04x", c:byte())
    end) .. '"'
end

local function int(n)
    return fmt("%d", n)
end

-- Strict UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF).
local function valid_utf8(s)
    if not s:find("[\128-\255]") then return true end
    local i, n = 1, #s
    while i <= n do
        local c = s:byte(i)
        if c < 0x80 then
            i = i + 1
        else
            local len
            if c >= 0xC2 and c <= 0xDF then len = 2
            elseif c >= 0xE0 and c <= 0xEF then len = 3
            elseif c >= 0xF0 and c <= 0xF4 then len = 4
            else return false end
            if i + len - 1 > n then return false end
            for j = i + 1, i + len - 1 do
                local b = s:byte(j)
                if b < 0x80 or b > 0xBF then return false end
            end
            local c2 = s:byte(i + 1)
            if (c == 0xE0 and c2 < 0xA0) or (c == 0xED and c2 > 0x9F)
                or (c == 0xF0 and c2 < 0x90) or (c == 0xF4 and c2 > 0x8F) then
                return false
            end
            i = i + len
        end
    end
    return true
end

-- `"name":"text"`, or `"name_base64":"..."` for bytes that are not UTF-8,
-- or `"name":null` for nil.
local function bytes_field(name, s)
    if s == nil then return '"' .. name .. '":null' end
    if valid_utf8(s) then return '"' .. name .. '":' .. json_string(s) end
    return '"' .. name .. '_base64":' .. json_string(ngx.encode_base64(s))
end

local function snapshot_json(s)
    local parts = {
        '"id":' .. json_string(s.id),
        '"timestamp":' .. int(s.timestamp),
        '"base_offset":' .. int(s.base_offset),
        '"high_water_mark":' .. int(s.high_water_mark),
        '"num_segments":' .. int(s.num_segments),
        '"total_size":' .. int(s.total_size),
        '"mode":' .. json_string(s.mode or "link"),
    }
    if s.label ~= nil then parts[#parts + 1] = '"label":' .. json_string(s.label) end
    return "{" .. table.concat(parts, ",") .. "}"
end

-------------------------------------------------------------------------
-- Responses
-------------------------------------------------------------------------

local STATUS = {
    INVALID = 400, NOT_FOUND = 404, OUT_OF_RANGE = 404, METHOD_NOT_ALLOWED = 405,
    EXISTS = 409, NOT_EMPTY = 409, CONFLICT = 409, TOO_SOON = 429, READONLY = 403,
    LOCKED = 503, UNAVAILABLE = 503, NOSPC = 507, FULL = 507,
    CORRUPT = 500, IO = 500, NOMEM = 500, INTERNAL = 500,
}

local function send(status, body)
    ngx.status = status
    ngx.header["Content-Type"] = "application/json"
    ngx.print(body, "\n")
    return ngx.exit(status)
end

local function fail(code, msg)
    code = code or "INTERNAL"
    local status = STATUS[code] or 500
    if status >= 500 then
        -- the server's fault, or the disk's: worth a line in the error log
        ngx.log(ngx.ERR, "takhin: ", code, ": ", tostring(msg))
    end
    return send(status, '{"error":' .. json_string(tostring(msg)) .. ',"code":'
                        .. json_string(code) .. '}')
end

-- Calls log/sm method `name`; returns its results, or nil, msg, code both
-- when it returned a failure and when it raised (code INTERNAL).
local function call(obj, name, ...)
    local ok, a, b, c = pcall(obj[name], obj, ...)
    if not ok then return nil, tostring(a), "INTERNAL" end
    return a, b, c
end

local function method(expected)
    local m = ngx.req.get_method()
    if m == expected then return true end
    ngx.header["Allow"] = expected
    fail("METHOD_NOT_ALLOWED", fmt("%s %s: use %s", m, ngx.var.uri, expected))
    return false
end

local function ready()
    if state.log then return true end
    fail(state.err_code or "UNAVAILABLE", "takhin is not open in this worker: "
         .. tostring(state.err or "init_worker did not run"))
    return false
end

-- A single query argument: nil when absent, "" for `?name` without a
-- value; a repeated argument is an error (returns false).
local function arg(args, name)
    local v = args[name]
    if v == true then return "" end
    if type(v) == "table" then
        fail("INVALID", fmt("query argument '%s' given %d times", name, #v))
        return false
    end
    return v
end

local function offset_arg(args, name)
    local v = arg(args, name)
    if v == false then return nil end
    if v == nil then
        fail("INVALID", fmt("query argument '%s' is required", name))
        return nil
    end
    if not v:match("^%d+$") or #v > 16 or tonumber(v) > 2 ^ 53 then
        fail("INVALID", fmt("%s must be an integer in 0..2^53, not '%s'", name, v))
        return nil
    end
    return tonumber(v)
end

local function read_body()
    ngx.req.read_body()
    local data = ngx.req.get_body_data()
    if data then return data end
    local path = ngx.req.get_body_file()     -- larger than client_body_buffer_size
    if not path then return "" end           -- no body: an empty value
    local f, err = io.open(path, "rb")
    if not f then return nil, err end
    data = f:read("*a")
    f:close()
    return data
end

-------------------------------------------------------------------------
-- Endpoints
-------------------------------------------------------------------------

-- POST /append?key=K, body = value.  No `key` argument: the record has no
-- key (absent and empty are different: `?key=` is an empty key).
function M.append()
    if not method("POST") or not ready() then return end
    local args = ngx.req.get_uri_args()
    local key = arg(args, "key")
    if key == false then return end
    local value, rerr = read_body()
    if not value then return fail("IO", "reading the request body: " .. tostring(rerr)) end
    local off, msg, code = call(state.log, "append", key, value)
    if not off then return fail(code, msg) end
    return send(200, '{"offset":' .. int(off) .. ',"worker":' .. int(state.worker) .. '}')
end

local function record_json(rec)
    return "{" .. table.concat({
        '"offset":' .. int(rec.offset),
        '"timestamp":' .. int(rec.timestamp),
        bytes_field("key", rec.key),
        bytes_field("value", rec.value),
    }, ",") .. "}"
end

-- GET /read?offset=N
function M.read()
    if not method("GET") or not ready() then return end
    local off = offset_arg(ngx.req.get_uri_args(), "offset")
    if not off then return end
    local rec, msg, code = call(state.log, "read", off)
    if not rec then return fail(code, msg) end
    return send(200, record_json(rec))
end

local DRAIN_DEFAULT, DRAIN_MAX = 100, 1000

-- The records [from, to) as JSON objects, or nil, msg, code.
local function records_json(from, to)
    local out = {}
    local ok, err = pcall(function()
        for rec in state.log:records(from, to) do out[#out + 1] = record_json(rec) end
    end)
    if not ok then
        local code = tostring(err):match("%(([%u_]+)%)%s*$") or "INTERNAL"
        return nil, tostring(err), code
    end
    return out
end

-- POST /drain?cursor=NAME&max=N (N: 1..1000, default 100).  The answer:
--   {"cursor":NAME,"from":F,"next":T,"high_water_mark":H,"lost":L,"records":[...]}
-- records [F, T), each as GET /read gives it.  F is the cursor's committed
-- offset (the log's base offset when never committed); L counts the
-- records retention deleted before the cursor got to them (F is then the
-- base offset).  After the answer is sent the cursor is committed to T
-- with expect = the committed value read; a CONFLICT (another drain of
-- NAME moved it first) only means those records may come again.
function M.drain()
    if not method("POST") or not ready() then return end
    local args = ngx.req.get_uri_args()
    local name, max = arg(args, "cursor"), arg(args, "max")
    if name == false or max == false then return end
    if not name then return fail("INVALID", "query argument 'cursor' is required") end
    if max == nil then
        max = DRAIN_DEFAULT
    elseif not max:match("^%d+$") or #max > 4 or tonumber(max) < 1 or tonumber(max) > DRAIN_MAX then
        return fail("INVALID", fmt("max must be an integer in 1..%d, not '%s'", DRAIN_MAX, max))
    else
        max = tonumber(max)
    end
    local log = state.log
    local committed, msg, code = call(log, "committed", name)
    if committed == nil and msg then return fail(code, msg) end
    local base, hwm = log:base_offset(), log:high_water_mark()
    local from, lost = committed or base, 0
    if from < base then from, lost = base, base - from end
    local to = math.min(hwm, from + max)
    local recs
    recs, msg, code = records_json(from, to)
    if not recs then return fail(code, msg) end
    ngx.status = 200
    ngx.header["Content-Type"] = "application/json"
    ngx.print("{", table.concat({
        '"cursor":' .. json_string(name),
        '"from":' .. int(from),
        '"next":' .. int(to),
        '"high_water_mark":' .. int(hwm),
        '"lost":' .. int(lost),
        '"worker":' .. int(state.worker),
        '"records":[' .. table.concat(recs, ",") .. "]",
    }, ","), "}\n")
    -- The answer is out; only now may the cursor move past it.
    local sent, eof_err = ngx.eof()
    if not sent then
        ngx.log(ngx.INFO, "takhin: drain ", name, ": the answer was not sent (", tostring(eof_err),
                "); the cursor stays at ", int(from))
        return
    end
    if to == committed then return end                  -- nothing new, nothing lost
    local expect = committed
    if expect == nil then expect = false end
    local ok
    ok, msg, code = call(log, "commit", name, to, { expect = expect })
    if ok then return end
    if code == "CONFLICT" then
        ngx.log(ngx.INFO, "takhin: drain ", name, ": ", msg)
    else
        ngx.log(ngx.ERR, "takhin: drain ", name, ": commit: ", code, ": ", tostring(msg))
    end
end

-- Starts obj:name(...) as a job and waits for it without blocking the
-- event loop; returns what the plain call returns (nil, msg, code on
-- failure, INTERNAL when it raised).  The job is closed at once rather
-- than left to the garbage collector.
local function run_job(obj, name, ...)
    local job, msg, code = call(obj, name, ...)
    if not job then return nil, msg, code end
    local ok, a, b, c = pcall(takhin.ngx.wait, job)
    job:close()
    if not ok then return nil, tostring(a), "INTERNAL" end
    return a, b, c
end

-- POST /snapshot: a point-in-time snapshot of the log as it is now (the
-- cut is taken before the job starts; the copying runs on its thread).
function M.snapshot()
    if not method("POST") or not ready() then return end
    local label = fmt("api worker=%d pid=%d", state.worker, state.pid)
    local snap, msg, code = run_job(state.sm, "create", state.log, { label = label, async = true })
    if not snap then return fail(code, msg) end
    return send(200, snapshot_json(snap))
end

-- POST /verify?id=ID: re-reads every file of snapshot ID and compares it
-- with the manifest.  A damaged snapshot is 422 with code CORRUPT (its
-- answer names the first file that differs), logged as a warning: the
-- request was fine, the snapshot is not.
function M.verify()
    if not method("POST") or not ready() then return end
    local id = arg(ngx.req.get_uri_args(), "id")
    if id == false then return end
    if not id or id == "" then return fail("INVALID", "query argument 'id' is required") end
    local snap, msg, code = call(state.sm, "get", id)
    if not snap then return fail(code, msg) end
    local ok
    ok, msg, code = run_job(state.sm, "verify", id, { async = true })
    if not ok and code == "CORRUPT" then
        ngx.log(ngx.WARN, "takhin: verify ", id, ": ", tostring(msg))
        return send(422, '{"error":' .. json_string(tostring(msg)) .. ',"code":"CORRUPT"}')
    end
    if not ok then return fail(code, msg) end
    return send(200, "{" .. table.concat({
        '"id":' .. json_string(snap.id),
        '"verified":true',
        '"bytes":' .. int(snap.total_size),
    }, ",") .. "}")
end

-- GET /snapshots: every snapshot, newest first.
function M.snapshots()
    if not method("GET") or not ready() then return end
    local list, msg, code = call(state.sm, "list")
    if not list then return fail(code, msg) end
    local items = {}
    for i, s in ipairs(list) do items[i] = snapshot_json(s) end
    return send(200, '{"snapshots":[' .. table.concat(items, ",") .. "]}")
end

-- POST /restore?id=ID&target=NAME: restores snapshot ID into
-- <restore_dir>/NAME, which must not exist yet (or be empty).  NAME is a
-- plain name, never a path: clients do not choose where the server writes.
function M.restore()
    if not method("POST") or not ready() then return end
    local args = ngx.req.get_uri_args()
    local id, target = arg(args, "id"), arg(args, "target")
    if id == false or target == false then return end
    if not id or id == "" then return fail("INVALID", "query argument 'id' is required") end
    if not target or target == "" then return fail("INVALID", "query argument 'target' is required") end
    if not target:match("^[%w_][%w_.%-]*$") or #target > 63 then
        return fail("INVALID", fmt("target must be a name of letters, digits, '-', '_', '.' "
                                   .. "(at most 63 bytes), not '%s'", tostring(target)))
    end
    if not state.restore_dir then
        return fail("UNAVAILABLE", "restores are disabled (no restore_dir configured)")
    end
    local snap, msg, code = call(state.sm, "get", id)
    if not snap then return fail(code, msg) end
    local dir = state.restore_dir .. "/" .. target
    local ok
    ok, msg, code = run_job(state.sm, "restore", id, dir, { async = true })
    if not ok then return fail(code, msg) end
    return send(200, "{" .. table.concat({
        '"id":' .. json_string(snap.id),
        '"target":' .. json_string(dir),
        '"base_offset":' .. int(snap.base_offset),
        '"high_water_mark":' .. int(snap.high_water_mark),
    }, ",") .. "}")
end

-- GET /info: which worker answered, and the log as it sees it.
function M.info()
    if not method("GET") or not ready() then return end
    local hwm, msg, code = call(state.log, "high_water_mark")
    if not hwm then return fail(code, msg) end
    return send(200, "{" .. table.concat({
        '"worker":' .. int(state.worker),
        '"pid":' .. int(state.pid),
        '"dir":' .. json_string(state.log:dir()),
        '"base_offset":' .. int(state.log:base_offset()),
        '"high_water_mark":' .. int(hwm),
        '"num_segments":' .. int(state.log:num_segments()),
    }, ",") .. "}")
end

-- GET /metrics: Prometheus' text format (version 0.0.4).  The X-Takhin-Worker
-- header says which worker answered; the numbers are the same from any.
function M.metrics()
    if not method("GET") or not ready() then return end
    local ok, text = pcall(takhin.metrics.prometheus, {
        logs = { [state.name] = state.log }, managers = { [state.name] = state.sm },
    })
    if not ok then return fail("INTERNAL", text) end
    ngx.status = 200
    ngx.header["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
    ngx.header["X-Takhin-Worker"] = int(state.worker)
    ngx.print(text)
    return ngx.exit(200)
end

-- Anything else.
function M.not_found()
    return fail("NOT_FOUND", fmt("no endpoint %s %s", ngx.req.get_method(), ngx.var.uri))
end

-------------------------------------------------------------------------
-- Worker life cycle
-------------------------------------------------------------------------

local CONFIG_KEYS = {
    data_dir = true, restore_dir = true, max_segment_size = true, sync = true,
    snapshot_interval = true, snapshot_min_interval = true, snapshot_keep = true,
    scheduler_worker = true, name = true,
}

local function init_failed(msg, code)
    state.err, state.err_code = msg, code or "UNAVAILABLE"
    ngx.log(ngx.ERR, "takhin: worker ", state.worker, ": ", msg)
    if state.sm then state.sm:close(); state.sm = nil end
    if state.log then state.log:close(); state.log = nil end
end

-- Starts takhin.scheduler for this worker's log and manager; true, or
-- nil, msg, code.  Raises on misuse (takhin's rule for option tables).
local function start_scheduler(cfg, every)
    local sched, msg, code = takhin.scheduler.new{
        targets = { {
            name = "log", log = state.log, manager = state.sm,
            label = fmt("scheduler worker=%d pid=%d", state.worker, state.pid),
        } },
        policy = { min_interval = cfg.snapshot_min_interval, keep_last = cfg.snapshot_keep or 0 },
    }
    if not sched then return nil, msg, code end
    return takhin.scheduler.openresty(sched, {
        interval = every,
        worker = cfg.scheduler_worker or 0,
        async = true,             -- create and cleanup as jobs, waited for with ngx.sleep
        on_report = function(report)
            for _, e in ipairs(report) do
                if e.action == "snapshot" and not e.error then
                    ngx.log(ngx.INFO, "takhin scheduler: worker ", state.worker,
                            " took snapshot ", e.id)
                end
            end
        end,
    })
end

--- handler.init_worker(cfg), from init_worker_by_lua*.
--   data_dir               the log directory (created if missing)
--   restore_dir            where POST /restore may create logs (optional)
--   max_segment_size       bytes (optional; takhin's default otherwise)
--   sync                   "none" (default) or "always"
--   snapshot_interval      how often the scheduler ticks, e.g. "1m"; "off" (or
--                          false): no scheduled snapshots
--   snapshot_min_interval  least time between snapshots (optional; none: one per tick)
--   snapshot_keep          keep_last for cleanup after each scheduled snapshot;
--                          0 keeps everything
--   scheduler_worker       the worker id that runs the scheduler (default 0)
--   name                   the log's and manager's label in /metrics (default "log")
function M.init_worker(cfg)
    state.worker = ngx.worker.id() or 0
    state.pid = ngx.worker.pid()
    for k in pairs(cfg) do
        if not CONFIG_KEYS[k] then return init_failed("unknown config key '" .. tostring(k) .. "'", "INVALID") end
    end
    state.restore_dir = cfg.restore_dir
    state.name = cfg.name or "log"

    local log, msg, code = takhin.open_log{
        dir = cfg.data_dir, shared = true,
        max_segment_size = cfg.max_segment_size, sync = cfg.sync,
    }
    if not log then return init_failed("open_log: " .. tostring(msg), code) end
    state.log = log
    local sm
    sm, msg, code = takhin.snapshot_manager(cfg.data_dir)
    if not sm then return init_failed("snapshot_manager: " .. tostring(msg), code) end
    state.sm = sm

    local every = cfg.snapshot_interval
    if every and every ~= "" and every ~= "off" then
        -- A scheduler that cannot start is logged; appends and reads go on.
        -- Its options come from nginx.conf: a bad value is returned
        -- (INVALID), a mistake such as a wrong type raises; both are logged.
        local ok, started, serr, scode = pcall(start_scheduler, cfg, every)
        if not ok or not started then
            ngx.log(ngx.ERR, "takhin: worker ", state.worker, ": no scheduler: ",
                    tostring(ok and serr or started), scode and (" (" .. scode .. ")") or "")
            return
        end
    end
    ngx.log(ngx.INFO, "takhin: worker ", state.worker, " pid ", state.pid, " opened ",
            tostring(log))
end

--- handler.exit_worker(), from exit_worker_by_lua*: releases the handles.
function M.exit_worker()
    if state.sm then state.sm:close(); state.sm = nil end
    if state.log then state.log:close(); state.log = nil end
end

return M
