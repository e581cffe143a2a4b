-- bench/nginx_bench.lua -- takhin inside Debian's nginx + Lua module
-- (LuaJIT, build/luajit/), loaded by wrk.
--
--   make bench                          (LUA_PATH / LUA_CPATH set by the Makefile)
--   BENCH_NGX_QUICK=1 make bench        (shorter windows, a 0.25 GiB log)
--   LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='build/?.so;;' lua5.4 bench/nginx_bench.lua
--
-- A. Appends per second through HTTP: `wrk -t2 -c32`, one
--    log:append(nil, 200-byte value) per request, against a trivial Lua
--    endpoint, for 1 worker exclusive, 1 worker shared, 2 workers shared,
--    and 2 workers shared with sync = "interval" and "always"; each set-up
--    on a fresh log and on one whose active segment is past 64 MiB
--    (max_segment_size 128 MiB).  The sync rows are set against the
--    fdatasync floor of the same filesystem, measured in the same run.
--    After each run: the log grew by exactly the 200 answers wrk counted,
--    and every new record reads back at consecutive offsets.
-- B. Latency of a trivial endpoint (2 workers, wrk at a moderate rate)
--    (a) idle, (b) while a copy-mode snapshot of a 1 GiB log and its
--    verify run as jobs (async + takhin.ngx.wait) in the same nginx,
--    (c) the same through the synchronous calls, (d) the same in a Lua 5.4
--    process of its own (info: the machine's share of the cost).
--
-- bench/README.md ("nginx bench") says how each number is taken.  Targets
-- are reported PASS/MISS, never fatal; the script exits 1 only when
-- something failed (an error, a count that does not match, a record that
-- does not read back).  Every nginx is started here on 127.0.0.1 at a
-- free port with its own prefix, and stopped through its own pid at the
-- end, also after an error (and by a watchdog shell should this process
-- die first).  Skipped (exit 0) when nginx, its Lua module, lua-resty-core,
-- wrk or lua-socket is missing.
--
-- Environment:
--   BENCH_NGX_SECTIONS    which sections run ("A,B")
--   BENCH_NGX_SECONDS     A: seconds each run appends (3)
--   BENCH_NGX_THREADS     A: wrk threads (2)
--   BENCH_NGX_CONNS       A: wrk connections (32)
--   BENCH_NGX_REPS        A: rounds; each runs every cell once, rates are medians (3)
--   BENCH_NGX_GROWN_MB    A: MiB in the grown logs' active segment (65)
--   BENCH_NGX_LAT_SECONDS B: length of the idle run (5)
--   BENCH_NGX_LAT_CONNS   B: wrk connections (16)
--   BENCH_NGX_LAT_REPS    B: rounds of (a) and (b); the ratio is the median of the rounds' (3)
--   BENCH_NGX_LAT_DELAY_MS  B: pause of each connection between requests (10)
--   BENCH_NGX_SNAP_GB     B: the log's size in GiB (1)
--   BENCH_NGX_JOB_THREADS B: `threads` of create and verify (unset: the default -- jobs one fewer than the CPUs, the synchronous calls one per CPU)
--   BENCH_NGX_QUICK       1: 1 round of 1 s runs, a 2 s idle run, a 0.25 GiB log
--   TMPDIR                where the data goes (else the larger of /var/tmp, /tmp)

local format, concat = string.format, table.concat

local C = dofile((arg[0]:match("^(.*)/") or ".") .. "/common.lua")
local proc = require("helpers.proc")
local fmt_int, q = C.fmt_int, C.q

local QUICK = os.getenv("BENCH_NGX_QUICK") == "1"
local function env_int(name, default, min) return C.env_num(name, default, min or 1, true) end

local SECTIONS    = (os.getenv("BENCH_NGX_SECTIONS") or "A,B"):upper()
local SECONDS     = C.env_num("BENCH_NGX_SECONDS", QUICK and 1 or 3, 0.5)
local THREADS     = env_int("BENCH_NGX_THREADS", 2)
local CONNS       = env_int("BENCH_NGX_CONNS", 32)
local REPS        = env_int("BENCH_NGX_REPS", QUICK and 1 or 3)
local GROWN_MB    = env_int("BENCH_NGX_GROWN_MB", 65)
local LAT_SECONDS = C.env_num("BENCH_NGX_LAT_SECONDS", QUICK and 2 or 5, 0.5)
local LAT_CONNS   = env_int("BENCH_NGX_LAT_CONNS", 16)
local LAT_REPS    = env_int("BENCH_NGX_LAT_REPS", QUICK and 1 or 3)
local LAT_DELAY   = env_int("BENCH_NGX_LAT_DELAY_MS", 10, 0)
local SNAP_GB     = C.env_num("BENCH_NGX_SNAP_GB", QUICK and 0.25 or 1, 0.01)
local JOB_THREADS = (os.getenv("BENCH_NGX_JOB_THREADS") or "") ~= "" and env_int("BENCH_NGX_JOB_THREADS", 1)
                    or nil
local RUN_A, RUN_B = SECTIONS:find("A", 1, true) ~= nil, SECTIONS:find("B", 1, true) ~= nil

local MIB, GIB = 1024 * 1024, 1024 * 1024 * 1024
local VALUE = string.rep("0123456789", 20)          -- the 200-byte value of every append
local FRAMED = 34 + #VALUE                          -- framed bytes of one record (no key)
local MAX_SEG = 128 * MIB                           -- A's max_segment_size
local TAIL = 0.5                                    -- s of closed gate before wrk stops
local FLOOR_SECONDS = QUICK and 1 or 1.5            -- length of one fdatasync floor measurement

local now = C.now
local T_START = now()
local ENV = "env -u LD_PRELOAD -u ASAN_OPTIONS -u LSAN_OPTIONS -u UBSAN_OPTIONS "

-------------------------------------------------------------------------
-- What is installed
-------------------------------------------------------------------------

local function skip(why)
    print("takhin nginx bench: skipped: " .. why)
    os.exit(0)
end

local ok_tk, takhin = pcall(require, "takhin")
if not ok_tk then skip("takhin is not loadable: " .. tostring(takhin):match("^[^\n]*")) end
local has_socket, socket = pcall(require, "socket")
if not has_socket then skip("lua-socket is not installed (make deps)") end

local ROOT = C.capture("cd " .. q((arg[0]:match("^(.*)/") or ".") .. "/..") .. " && pwd"):gsub("%s+$", "")

local function which(name)
    local out = C.capture("PATH=\"$PATH:/usr/sbin:/sbin:/usr/local/sbin\" command -v " .. q(name)
                          .. " 2>/dev/null"):gsub("%s+$", "")
    return out ~= "" and out or nil
end

local function first_file(dirs, name)
    for _, d in ipairs(dirs) do
        if C.exists(d .. "/" .. name) then return d .. "/" .. name, d end
    end
end

local NGINX = which("nginx")
local WRK = which("wrk")
local MODULE_DIRS = { "/usr/lib/nginx/modules", "/usr/share/nginx/modules", "/usr/local/nginx/modules",
                      "/etc/nginx/modules" }
local NDK = first_file(MODULE_DIRS, "ndk_http_module.so")
local LUA_MODULE = first_file(MODULE_DIRS, "ngx_http_lua_module.so")
local _, RESTY_CORE = first_file({ "/usr/share/lua/5.1", "/usr/local/share/lua/5.1",
                                   "/usr/local/openresty/lualib" }, "resty/core.lua")
do
    local missing = {}
    if not NGINX then missing[#missing + 1] = "nginx" end
    if not NDK or not LUA_MODULE then missing[#missing + 1] = "libnginx-mod-http-lua" end
    if not RESTY_CORE then missing[#missing + 1] = "lua-resty-core" end
    if not WRK then missing[#missing + 1] = "wrk" end
    if #missing > 0 then skip(concat(missing, ", ") .. " not installed (make deps)") end
end

-------------------------------------------------------------------------
-- Temp dir: on a real disk (fdatasync and copies must hit the device)
-------------------------------------------------------------------------

local fs_type = C.fs_type

local NEED = (RUN_B and SNAP_GB * GIB * 2.1 or 0) + (RUN_A and (0.25 + 0.75 * REPS) * GIB or 0)
local TMP, TMP_AVAIL = C.bench_tmp("nginx", NEED, { "/var/tmp", "/tmp" }, "BENCH_NGX_SNAP_GB, TMPDIR", true)

-------------------------------------------------------------------------
-- HTTP (lua-socket; one request per connection)
-------------------------------------------------------------------------

local function http(port, path, timeout)
    local c = assert(socket.tcp())
    c:settimeout(timeout or 30)
    local ok, err = c:connect("127.0.0.1", port)
    if not ok then c:close(); return 0, tostring(err) end
    c:send("GET " .. path .. " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    local data, rerr, partial = c:receive("*a")
    c:close()
    data = data or partial or ""
    local status = tonumber(data:match("^HTTP/%d%.%d (%d%d%d)"))
    if not status then return 0, tostring(rerr) end
    return status, (data:match("\r\n\r\n(.*)$") or ""):gsub("\n$", "")
end

-- A field of the handler's flat JSON answers.
local function jnum(body, name) return tonumber(body:match('"' .. name .. '":(%-?[%d.e+-]+)')) end
local function jstr(body, name) return body:match('"' .. name .. '":"([^"]*)"') end

-------------------------------------------------------------------------
-- The server: a handler module and an nginx.conf written into its prefix
-------------------------------------------------------------------------

-- LuaJIT, in every worker.  /ok and /append/NAME answer 503 while the
-- gate (a shared dict flag the bench sets through /gate) is closed, so
-- the requests in flight when wrk stops append nothing.
local HANDLER = [==[
local takhin = require("takhin")
local tngx = require("takhin.ngx")

local M = {}
local VALUE = string.rep("0123456789", 20)
local gate = ngx.shared.bench
local logs, sm = {}, nil

function M.init_worker(cfg)
    for name, dir in pairs(cfg.logs) do
        local log, msg, code = takhin.open_log{ dir = dir, shared = cfg.shared, sync = cfg.sync,
                                                max_segment_size = cfg.max_segment_size }
        if not log then
            ngx.log(ngx.ERR, "bench: open_log ", dir, ": ", tostring(msg), " (", tostring(code), ")")
        end
        logs[name] = log
    end
    if cfg.snap_dir then
        local msg, code
        sm, msg, code = takhin.snapshot_manager(cfg.logs.main, { dir = cfg.snap_dir, mode = "copy" })
        if not sm then
            ngx.log(ngx.ERR, "bench: snapshot_manager: ", tostring(msg), " (", tostring(code), ")")
        end
    end
end

function M.exit_worker()
    if sm then sm:close() end
    for _, log in pairs(logs) do log:close() end
end

local function closed()
    if gate:get("open") then return false end
    ngx.status = 503
    ngx.say("closed")
    return true
end

function M.ok()
    if closed() then return end
    ngx.say("ok")
end

function M.append(name)
    if closed() then return end
    local off, msg, code = logs[name]:append(nil, VALUE)
    if not off then
        ngx.status = 500
        ngx.say(tostring(code), ": ", tostring(msg))
        return
    end
    ngx.say("ok")
end

-- /gate?open=1|0 -> the time it was set (nginx's clock)
function M.gate()
    gate:set("open", ngx.var.arg_open == "1")
    ngx.update_time()
    ngx.say(string.format('{"t":%.6f}', ngx.now()))
end

function M.ping()
    ngx.say(string.format('{"pid":%d}', ngx.worker.pid()))
end

local function fail(what, msg, code)
    ngx.status = 500
    ngx.say(string.format('{"error":"%s: %s (%s)"}', what, tostring(msg):gsub('["\\]', ""), tostring(code)))
end

local function clock()
    ngx.update_time()
    return ngx.now()
end

-- /admin/snapshot?mode=async|sync: a copy-mode snapshot of log "main",
-- then its verify; async: jobs waited for with takhin.ngx.wait.
function M.snapshot()
    local async = ngx.var.arg_mode == "async"
    local threads = tonumber(ngx.var.arg_threads)           -- nil: the engine's default
    local t0 = clock()
    local snap, job, msg, code
    if async then
        job, msg, code = sm:create(logs.main, { async = true, threads = threads })
        if not job then return fail("create", msg, code) end
        snap, msg, code = tngx.wait(job)
        job:close()
    else
        snap, msg, code = sm:create(logs.main, { threads = threads })
    end
    if not snap then return fail("create", msg, code) end
    local t1 = clock()
    local ok
    if async then
        job, msg, code = sm:verify(snap.id, { async = true, threads = threads })
        if not job then return fail("verify", msg, code) end
        ok, msg, code = tngx.wait(job)
        job:close()
    else
        ok, msg, code = sm:verify(snap.id, { threads = threads })
    end
    if not ok then return fail("verify", msg, code) end
    local t2 = clock()
    ngx.say(string.format('{"id":"%s","create":%.6f,"verify":%.6f,"segments":%d,"bytes":%d,"mode":"%s"}',
                          snap.id, t1 - t0, t2 - t1, snap.num_segments, snap.total_size, snap.mode))
end

function M.delete()
    local ok, msg, code = sm:delete(ngx.var.arg_id)
    if not ok then return fail("delete", msg, code) end
    ngx.say('{"deleted":true}')
end

return M
]==]

local CONF = [==[
load_module {{NDK}};
load_module {{LUA_MODULE}};
user {{USER}} {{GROUP}};
worker_processes {{WORKERS}};
daemon on;
master_process on;
pid {{PREFIX}}/nginx.pid;
error_log {{PREFIX}}/error.log warn;

events {
    worker_connections 1024;
}

http {
    access_log off;
    default_type text/plain;
    keepalive_requests 10000000;
    client_body_temp_path {{PREFIX}}/client_body_temp;
    proxy_temp_path {{PREFIX}}/proxy_temp;
    fastcgi_temp_path {{PREFIX}}/fastcgi_temp;
    uwsgi_temp_path {{PREFIX}}/uwsgi_temp;
    scgi_temp_path {{PREFIX}}/scgi_temp;

    lua_package_path "{{ROOT}}/lua/?.lua;{{ROOT}}/lua/?/init.lua;{{PREFIX}}/?.lua;{{RESTY_CORE}}/?.lua;;";
    lua_package_cpath "{{ROOT}}/build/luajit/?.so;;";
    lua_shared_dict bench 1m;

    init_by_lua_block {
        require("resty.core")
        require("takhin")
        require("benchhandler")
    }
    init_worker_by_lua_block { require("benchhandler").init_worker({{CFG}}) }
    exit_worker_by_lua_block { require("benchhandler").exit_worker() }

    server {
        listen 127.0.0.1:{{PORT}} reuseport;
        location = /ok             { content_by_lua_block { require("benchhandler").ok() } }
        location = /hello          { content_by_lua_block { ngx.say("ok") } }
{{APPEND_LOCATIONS}}        location = /gate           { content_by_lua_block { require("benchhandler").gate() } }
        location = /ping           { content_by_lua_block { require("benchhandler").ping() } }
        location = /admin/snapshot { content_by_lua_block { require("benchhandler").snapshot() } }
        location = /admin/delete   { content_by_lua_block { require("benchhandler").delete() } }
    }
}
]==]

-- A Lua table constructor for the worker's cfg (strings, numbers, booleans).
local function lua_literal(v)
    if type(v) == "table" then
        local keys, out = {}, {}
        for k in pairs(v) do keys[#keys + 1] = k end
        table.sort(keys)
        for _, k in ipairs(keys) do out[#out + 1] = k .. " = " .. lua_literal(v[k]) end
        return "{ " .. concat(out, ", ") .. " }"
    elseif type(v) == "string" then
        return format("%q", v)
    end
    return tostring(v)
end



local function wait_until(pred, seconds, pause)
    local limit = now() + seconds
    repeat
        local v = pred()
        if v then return v end
        C.sleep(pause or 0.01)
    until now() > limit
    return pred()
end

local read_pid, children_of, error_lines = proc.read_pid, proc.children_of, proc.error_lines

local servers = {}              -- every nginx started, until stopped
local MYPID = proc.getpid()
local USER = C.capture("id -un"):gsub("%s+$", "")
local GROUP = C.capture("id -gn"):gsub("%s+$", "")


-- Starts nginx with `workers` workers and the worker cfg; returns the
-- server { master, workers, port, prefix, error_log }.
local function nginx_start(name, workers, cfg)
    local prefix = TMP .. "/nginx-" .. name
    C.run("mkdir -p " .. q(prefix))
    local hf = assert(io.open(prefix .. "/benchhandler.lua", "w"))
    hf:write(HANDLER)
    hf:close()
    local last
    for draw = 1, 5 do
        local port = C.free_port(MYPID, draw)
        -- one exact location per log (no regex, no capture: as cheap as /ok)
        local locs = {}
        for lname in pairs(cfg.logs) do
            locs[#locs + 1] = format('        location = /append/%s { content_by_lua_block { '
                                     .. 'require("benchhandler").append("%s") } }\n', lname, lname)
        end
        table.sort(locs)
        local vars = { NDK = NDK, LUA_MODULE = LUA_MODULE, USER = USER, GROUP = GROUP, WORKERS = workers,
                       PREFIX = prefix, PORT = port, ROOT = ROOT, RESTY_CORE = RESTY_CORE,
                       CFG = lua_literal(cfg), APPEND_LOCATIONS = concat(locs) }
        local conf = CONF:gsub("{{([%u_]+)}}", function(k) return tostring(assert(vars[k], k)) end)
        local cf = assert(io.open(prefix .. "/nginx.conf", "w"))
        cf:write(conf)
        cf:close()
        os.remove(prefix .. "/nginx.pid")
        local out = C.capture(ENV .. q(NGINX) .. " -p " .. q(prefix) .. " -c " .. q(prefix .. "/nginx.conf")
                              .. " -e " .. q(prefix .. "/error.log") .. " 2>&1; echo \"rc=$?\"")
        if tonumber(out:match("rc=(%d+)%s*$")) == 0 then
            local master = wait_until(function() return read_pid(prefix .. "/nginx.pid") end, 5)
            if not master then error("nginx started but wrote no pid file:\n" .. out) end
            local srv = { name = name, master = master, prefix = prefix, port = port,
                          error_log = prefix .. "/error.log" }
            servers[#servers + 1] = srv
            -- the watchdog: stops this nginx, by its own pid, should this
            -- script die first
            local m, me = format("%d", master), format("%d", MYPID)
            C.sh("sh -c " .. q("while kill -0 " .. me .. " && kill -0 " .. m .. "; do sleep 1; done; "
                 .. "grep -qF " .. q(prefix) .. " /proc/" .. m .. "/cmdline && kill -QUIT " .. m)
                 .. " </dev/null >/dev/null 2>&1 &")
            wait_until(function() return #children_of(master) >= workers end, 5)
            srv.workers = children_of(master)
            local ours = {}
            for _, w in ipairs(srv.workers) do ours[w] = true end
            local answered = wait_until(function()
                local st, body = http(port, "/ping", 2)
                return st == 200 and ours[jnum(body, "pid")]
            end, 10, 0.02)
            if not answered or #srv.workers ~= workers then
                error(format("nginx on port %d: %d workers (expected %d), answering: %s\n%s", port,
                             #srv.workers, workers, tostring(answered),
                             C.capture("tail -n 20 " .. q(srv.error_log))))
            end
            return srv
        end
        last = out
        if not out:find("Address already in use", 1, true) then break end
    end
    error("nginx did not start:\n" .. tostring(last))
end

-- QUIT (graceful), then TERM, then KILL, each with a bounded wait.
local function nginx_stop(srv)
    if not srv.master then return end
    local function gone()
        if proc.alive(srv.master) then return false end
        for _, w in ipairs(srv.workers or {}) do if proc.alive(w) then return false end end
        return true
    end
    local m = format("%d", srv.master)
    for _, sig in ipairs({ "QUIT", "TERM", "KILL" }) do
        C.sh("kill -" .. sig .. " " .. m .. " 2>/dev/null")
        if sig == "KILL" then for _, w in ipairs(srv.workers or {}) do proc.kill9(w) end end
        if wait_until(gone, sig == "QUIT" and 15 or 5) then break end
    end
    srv.master = nil
end

-------------------------------------------------------------------------
-- wrk: started in the background, stopped with SIGINT (it then prints
-- its summary and calls the script's done())
-------------------------------------------------------------------------

-- done() prints one machine-readable line; delay() (B) paces each connection.
local WRK_SCRIPT = [==[
%s
function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("@@wrk requests=%%d duration_us=%%d connect=%%d read=%%d write=%%d status=%%d "
        .. "timeout=%%d p50=%%.0f p90=%%.0f p99=%%.0f p999=%%.0f max=%%.0f mean=%%.1f\n",
        summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
        latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
        latency.max, latency.mean))
end
]==]

local wrk_seq = 0
local wrks = {}                 -- running wrk processes

local function wrk_start(port, path, opts)
    wrk_seq = wrk_seq + 1
    local base = format("%s/wrk%d", TMP, wrk_seq)
    local sf = assert(io.open(base .. ".lua", "w"))
    sf:write(format(WRK_SCRIPT, opts.delay_ms and format("function delay() return %d end", opts.delay_ms) or ""))
    sf:close()
    -- -d bounds a wrk this script never stops; SIGINT ends every run
    local cmd = format("exec %s -t%d -c%d -d%ds --timeout %ds -s %s %s", q(WRK), opts.threads, opts.conns,
                       math.floor(opts.bound), opts.timeout or 10, q(base .. ".lua"),
                       q(format("http://127.0.0.1:%d%s", port, path)))
    local pid = tonumber(C.capture("sh -c " .. q(cmd) .. " </dev/null >" .. q(base .. ".out") .. " 2>&1 & echo $!")
                         :match("%d+"))
    assert(pid, "wrk did not start")
    -- a watchdog, as for nginx: should this script die, wrk stops too
    local me, wp = format("%d", MYPID), format("%d", pid)
    C.sh("sh -c " .. q("while kill -0 " .. me .. " && kill -0 " .. wp .. "; do sleep 1; done; "
         .. "grep -qF " .. q(base) .. " /proc/" .. wp .. "/cmdline && kill -INT " .. wp)
         .. " </dev/null >/dev/null 2>&1 &")
    local w = { pid = pid, out = base .. ".out", t0 = now() }
    wrks[#wrks + 1] = w
    return w
end

local function wrk_stop(w)
    C.sh(format("kill -INT %d 2>/dev/null", w.pid))
    if not wait_until(function() return not proc.alive(w.pid) end, 10) then
        proc.kill9(w.pid)
        error("wrk did not stop on SIGINT")
    end
    w.pid = nil
    local out = C.read_file(w.out)
    local line = out:match("@@wrk ([^\n]*)")
    if not line then error("wrk printed no summary:\n" .. out) end
    local r = {}
    for k, v in line:gmatch("([%w_]+)=([%d.]+)") do r[k] = tonumber(v) end
    r.window_wrk = r.duration_us / 1e6
    return r
end

-------------------------------------------------------------------------
-- Section A: appends per second
-------------------------------------------------------------------------

-- A read-only handle's view of a log, to count and read back what a run wrote.
local function log_view(dir)
    return assert(takhin.open_log({ dir = dir, readonly = true }))
end

-- Every record in [from, to) reads back at its offset with the value sent.
local function contiguous(ro, from, to)
    for o = from, to - 1 do
        local r, msg = ro:read(o)
        if not r then return false, format("read(%d): %s", o, tostring(msg)) end
        if r.offset ~= o or r.value ~= VALUE or r.key ~= nil then
            return false, format("record %d: offset %s, %d-byte value", o, tostring(r.offset), #tostring(r.value))
        end
    end
    return true
end

local function set_gate(srv, open)
    local st, body = http(srv.port, "/gate?open=" .. (open and "1" or "0"), 30)
    if st ~= 200 then error("gate: " .. st .. " " .. body) end
    return jnum(body, "t")
end

-- One wrk run against path: the gate opens ~0.3 s after wrk starts and
-- closes SECONDS later; wrk stops TAIL s after that.  rate = the 200
-- answers / the time the gate was open.  With a log (dir), checks that it
-- grew by exactly that many records, all readable in order.
local function gated_run(srv, path, dir, seconds)
    local ro, hwm0, st0
    if dir then
        ro = log_view(dir)
        hwm0, st0 = ro:high_water_mark(), ro:stats()
    end
    collectgarbage()
    local w = wrk_start(srv.port, path, { threads = THREADS, conns = CONNS, bound = SECONDS + 60 })
    C.sleep(0.3)
    local t_open = set_gate(srv, true)
    C.sleep(seconds or SECONDS)
    local t_close = set_gate(srv, false)
    C.sleep(TAIL)
    local r = wrk_stop(w)
    r.ok = r.requests - r.status
    r.window = t_close - t_open
    r.rate = r.ok / r.window
    r.sock_errors = r.connect + r.read + r.write + r.timeout
    if ro then
        local hwm1, st1 = ro:high_water_mark(), ro:stats()
        r.appended = hwm1 - hwm0
        r.count_ok = r.appended == r.ok
        r.contig_ok, r.contig_err = contiguous(ro, hwm0, hwm1)
        r.fsyncs = st1.fsyncs - st0.fsyncs
        r.fsync_s = st1.fsync_seconds.sum - st0.fsync_seconds.sum
        r.rolls = st1.rolls - st0.rolls
        r.active = ro:segments()[#ro:segments()].size
        ro:close()
    end
    return r
end

-- The grown logs start as copies of one log whose active segment holds
-- GROWN_MB MiB of the same records the endpoint appends.
local function build_grown(dir)
    local log = assert(takhin.open_log({ dir = dir, max_segment_size = MAX_SEG }))
    local batch = {}
    for i = 1, 4096 do batch[i] = { value = VALUE } end
    local want = math.ceil(GROWN_MB * MIB / FRAMED)
    while log:high_water_mark() + #batch <= want do assert(log:append_batch(batch)) end
    local segs = log:segments()
    assert(#segs == 1 and segs[1].size > 64 * MIB, "the grown log's active segment is not past 64 MiB")
    local n, size = log:high_water_mark(), segs[1].size
    log:close()
    return n, size
end

-- The fdatasync floor: a C loop appending FRAMED-byte records to a new
-- file on TMP's filesystem, write + fdatasync each, for ~2 s.
local FLOOR_C = [==[
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static double mono(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
    size_t n = (size_t)atoi(argv[2]);
    double limit = atof(argv[3]), t0, t;
    char buf[4096];
    long k = 0;
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
    if (fd < 0 || n > sizeof buf) { perror("open"); return 1; }
    memset(buf, 'x', n);
    t0 = mono();
    do {
        if (write(fd, buf, n) != (ssize_t)n || fdatasync(fd) != 0) { perror("write/fdatasync"); return 1; }
        k++;
        t = mono() - t0;
    } while (t < limit);
    printf("%ld %.6f\n", k, t);
    return close(fd) != 0;
}
]==]

local function fdatasync_floor(seconds)
    local src, bin = TMP .. "/floor.c", TMP .. "/floor"
    if not C.exists(bin) then
        local f = assert(io.open(src, "w"))
        f:write(FLOOR_C)
        f:close()
        if not C.sh("cc -O2 -o " .. q(bin) .. " " .. q(src) .. " 2>/dev/null") then return nil end
    end
    local out = C.capture(q(bin) .. " " .. q(TMP .. "/floor.dat") .. " " .. FRAMED .. " " .. seconds)
    os.remove(TMP .. "/floor.dat")
    local k, t = out:match("^(%d+) ([%d.]+)")
    return k and tonumber(k) / tonumber(t), tonumber(k)
end

local function fmt_rate(r) return r and (fmt_int(r) .. "/s") or "-" end

local results = { targets = {}, failures = {} }

local function target(name, ratio, want, le)
    local pass = (le and ratio <= want) or (not le and ratio >= want)
    results.targets[#results.targets + 1] = { name = name, ratio = ratio, want = want, le = le, pass = pass }
    return pass
end

local function failure(msg)
    results.failures[#results.failures + 1] = msg
    print("FAILED: " .. msg)
end

local SETUPS = {
    { key = "excl1", name = "1 worker exclusive", workers = 1, shared = false, sync = "none", trivial = true },
    { key = "shared1", name = "1 worker shared", workers = 1, shared = true, sync = "none" },
    { key = "shared2", name = "2 workers shared", workers = 2, shared = true, sync = "none", trivial = true },
    { key = "interval2", name = "2 workers sync=interval", workers = 2, shared = true, sync = "interval" },
    { key = "always2", name = "2 workers sync=always", workers = 2, shared = true, sync = "always" },
}

local function median_of(runs, field)
    local t = {}
    for i, r in ipairs(runs) do t[i] = r[field] end
    return C.median(t)
end

local function section_a()
    print(format("\nA. appends through nginx: wrk -t%d -c%d, gate open %.1f s a run; one log:append(nil, "
                 .. "%d-byte value) per request (%d framed bytes); max_segment_size %d MiB; %d round(s)",
                 THREADS, CONNS, SECONDS, #VALUE, FRAMED, MAX_SEG // MIB, REPS))
    local t0 = now()
    local template = TMP .. "/grown-template"
    local grown_n, grown_size = build_grown(template)
    print(format("   grown logs: copies of a log of %s records, active segment %.1f MiB (built in %.1f s)",
                 fmt_int(grown_n), grown_size / MIB, now() - t0))
    io.flush()

    -- Every set-up's nginx runs from the start (idle but for the one under
    -- load), so that one round measures all cells within a short time.
    -- Each run appends to a log of its own: freshN is empty, grownN a copy
    -- of the template.
    local rows = {}
    for _, s in ipairs(SETUPS) do
        local dir = TMP .. "/A-" .. s.key
        local logs = { warm = dir .. "/warm" }
        C.run("mkdir -p " .. q(dir))
        for rep = 1, REPS do
            logs["fresh" .. rep] = dir .. "/fresh" .. rep
            logs["grown" .. rep] = dir .. "/grown" .. rep
            C.run("cp -a " .. q(template) .. " " .. q(logs["grown" .. rep]))
        end
        local srv = nginx_start("A-" .. s.key, s.workers, {
            logs = logs, shared = s.shared, sync = s.sync, max_segment_size = MAX_SEG,
        })
        -- warm-up, untimed: connections, LuaJIT traces
        gated_run(srv, "/append/warm", nil, 1)
        if s.trivial then gated_run(srv, "/ok", nil, 1) end
        rows[#rows + 1] = { setup = s, srv = srv, dir = dir, fresh = {}, grown = {}, trivial = {} }
    end
    print(format("   %d nginx servers up (%.0f s)", #rows, now() - t0))

    -- the fdatasync floor, measured in each round just before the
    -- sync = "always" set-up runs (the disk is shared: its speed drifts)
    local floors = {}
    for rep = 1, REPS do
        for k = 0, #rows - 1 do
            local row = rows[(k + rep - 1) % #rows + 1]
            local s = row.setup
            if s.sync == "always" then
                floors[rep] = fdatasync_floor(FLOOR_SECONDS) or false
                print(format("   round %d  fdatasync floor (C loop: write %d B + fdatasync, one writer, "
                             .. "same filesystem, %.1f s): %s", rep, FRAMED, FLOOR_SECONDS,
                             floors[rep] and fmt_rate(floors[rep]) or "not measured (no cc)"))
            end
            local cells = { "fresh", "grown" }
            if s.trivial then table.insert(cells, 1, "trivial") end
            if rep % 2 == 0 then                         -- reversed order in even rounds
                local rev = {}
                for i = #cells, 1, -1 do rev[#rev + 1] = cells[i] end
                cells = rev
            end
            for _, cell in ipairs(cells) do
                local r
                if cell == "trivial" then
                    r = gated_run(row.srv, "/ok", nil)
                else
                    local name = cell .. rep
                    r = gated_run(row.srv, "/append/" .. name, row.dir .. "/" .. name)
                    if not r.count_ok then
                        failure(format("%s %s: the log grew by %d records, wrk counted %d answers 200",
                                       s.name, name, r.appended, r.ok))
                    end
                    if not r.contig_ok then failure(format("%s %s: %s", s.name, name, r.contig_err)) end
                end
                if r.sock_errors > 0 then
                    print(format("   note: %s %s: wrk socket errors connect %d read %d write %d timeout %d",
                                 s.name, cell, r.connect, r.read, r.write, r.timeout))
                end
                row[cell][rep] = r
            end
            print(format("   round %d  %-26s trivial %-10s fresh %-10s grown %-10s (%.0f s)", rep, s.name,
                         s.trivial and fmt_rate(row.trivial[rep].rate) or "-", fmt_rate(row.fresh[rep].rate),
                         fmt_rate(row.grown[rep].rate), now() - t0))
            io.flush()
        end
    end
    for _, row in ipairs(rows) do
        nginx_stop(row.srv)
        for _, line in ipairs(error_lines(row.srv.error_log)) do failure(row.setup.name .. ": nginx: " .. line) end
        C.rm_rf(row.dir, "takhin-bench.")
        row.fresh_rate = median_of(row.fresh, "rate")
        row.grown_rate = median_of(row.grown, "rate")
        row.trivial_rate = row.setup.trivial and median_of(row.trivial, "rate") or nil
    end
    C.rm_rf(template, "takhin-bench.")
    local floor = #floors > 0 and floors[1] and C.median(floors) or nil

    -- table
    local by = {}
    for _, row in ipairs(rows) do by[row.setup.key] = row end
    local line = "%-24s %-8s %10s %9s %6s %8s %8s %9s %7s %6s %s"
    print()
    print(format(line, "set-up", "log", "200s/s", "records", "rolls", "wrk p99", "fsyncs", "rec/fsync",
                 "fsync", "count", "read back"))
    print(("-"):rep(112))
    for _, row in ipairs(rows) do
        for rep = 1, REPS do
            if row.setup.trivial then
                local r = row.trivial[rep]
                print(format(line, row.setup.name, "trivial", fmt_int(r.rate), "-", "-",
                             format("%.1fms", r.p99 / 1e3), "-", "-", "-", "-", "-"))
            end
            for _, which in ipairs({ "fresh", "grown" }) do
                local r = row[which][rep]
                print(format(line, row.setup.name, which .. (REPS > 1 and rep or ""), fmt_int(r.rate),
                             fmt_int(r.appended), fmt_int(r.rolls), format("%.1fms", r.p99 / 1e3),
                             fmt_int(r.fsyncs), r.fsyncs > 0 and format("%.1f", r.appended / r.fsyncs) or "-",
                             r.fsyncs > 0 and format("%.2fms", r.fsync_s / r.fsyncs * 1e3) or "-",
                             r.count_ok and "OK" or "FAILED", r.contig_ok and "OK" or "FAILED"))
            end
        end
    end
    print()
    print("200s/s: answers 200 / time the gate was open (nginx's clock); records: what the log grew by;")
    print("count: OK when that is the number of 200s wrk counted; read back: OK when every new offset reads back,")
    print("in order, with its value; rolls: segments rolled during the run (the grown log rolls at 128 MiB);")
    print("wrk p99: latency of every answer wrk counted (503s of the closed gate included); fsyncs: fdatasyncs")
    print("the engine counted (log:stats), records per fdatasync and the mean time of one")
    if REPS > 1 then print(format("rates below: medians of %d rounds", REPS)) end
    if floor then print(format("fdatasync floor: %s (median of the rounds)", fmt_rate(floor))) end

    local e, s2 = by.excl1, by.shared2
    print()
    local function check(name, ratio, want)
        local pass = target(name, ratio, want)
        print(format("  %-60s %6.2f  >= %.1f  %s", name, ratio, want, pass and "PASS" or "MISS"))
    end
    check("2 workers shared / 1 worker exclusive (fresh)", s2.fresh_rate / e.fresh_rate, 0.8)
    check("2 workers shared / trivial endpoint, 2 workers (fresh)", s2.fresh_rate / s2.trivial_rate, 0.5)
    for _, row in ipairs(rows) do
        if row.setup.sync == "none" then
            check(row.setup.name .. ": grown / fresh", row.grown_rate / row.fresh_rate, 0.9)
        end
    end
    local function info(name, v) print(format("  %-60s %6.2f  info", name, v)) end
    info("1 worker exclusive / trivial endpoint, 1 worker (fresh)", e.fresh_rate / e.trivial_rate)
    info("trivial endpoint: 2 workers / 1 worker", s2.trivial_rate / e.trivial_rate)
    info("1 worker shared / 1 worker exclusive (fresh)", by.shared1.fresh_rate / e.fresh_rate)
    for _, k in ipairs({ "interval2", "always2" }) do
        local row = by[k]
        info(row.setup.name .. ": grown / fresh", row.grown_rate / row.fresh_rate)
        info(row.setup.name .. " / 2 workers sync=none (fresh)", row.fresh_rate / s2.fresh_rate)
        if floor then info(row.setup.name .. " / fdatasync floor (fresh)", row.fresh_rate / floor) end
    end
end

-------------------------------------------------------------------------
-- Section B: latency while a snapshot runs
-------------------------------------------------------------------------

-- B's log: 16 (or more) sealed segments of at most 64 MiB holding
-- SNAP_GB GiB of 64 KiB values, and a small active segment.
local B_SEG = math.min(64 * MIB, math.floor(SNAP_GB * GIB / 16) + 65536)

local function build_big(dir)
    local vsize = 65536
    local per_seg = B_SEG // (34 + 10 + vsize)
    local sealed = math.max(16, math.ceil(SNAP_GB * GIB / (per_seg * (34 + 10 + vsize))))
    local n = sealed * per_seg + 16
    local vals = {}
    for j = 1, 16 do
        local b = {}
        for i = 1, vsize // 8 do b[i] = string.pack("<i8", math.random(math.mininteger, math.maxinteger)) end
        vals[j] = concat(b)
    end
    local log = assert(takhin.open_log({ dir = dir, max_segment_size = B_SEG }))
    local o = 0
    while o < n do
        local batch = {}
        for i = 1, math.min(16, n - o) do
            batch[i] = { key = format("key%07d", (o + i) % 10000000), value = vals[(o + i) % 16 + 1] }
        end
        local _, last = assert(log:append_batch(batch))
        o = last + 1
    end
    local segs, bytes = log:segments(), 0
    for _, s in ipairs(segs) do bytes = bytes + s.size end
    log:close()
    return #segs, bytes
end

-- (d): the same snapshot and verify, synchronous, in a Lua 5.4 process of
-- its own (a read-only handle of the log): what the machine does to the
-- endpoint's latency when the copying is not in nginx's workers.
local SNAP_CHILD = [==[
local takhin = require("takhin")
local now = require("socket").gettime
local dir, snaps = arg[1], arg[2]
local log = assert(takhin.open_log({ dir = dir, readonly = true }))
local sm = assert(takhin.snapshot_manager(dir, { dir = snaps, mode = "copy" }))
local t0 = now()
local threads = tonumber(arg[3])
local snap = assert(sm:create(log, { threads = threads }))
local t1 = now()
assert(sm:verify(snap.id, { threads = threads }))
local t2 = now()
print(string.format('@@{"id":"%s","create":%.6f,"verify":%.6f,"segments":%d,"bytes":%d,"mode":"%s"}',
                    snap.id, t1 - t0, t2 - t1, snap.num_segments, snap.total_size, snap.mode))
sm:close()
log:close()
]==]

-- Where the CPU went during a run: the workers' processes (their event
-- loops and takhin's job threads), the time their event-loop threads
-- spent runnable but waiting for a CPU (schedstat), and the machine.
local CLK_TCK = tonumber((C.capture("getconf CLK_TCK 2>/dev/null"):match("%d+"))) or 100

local function read_line(path)
    local f = io.open(path, "r")
    if not f then return "" end
    local line = f:read("l") or ""
    f:close()
    return line
end

local function cpu_sample(workers)
    local x = { proc = 0, loop_run = 0, loop_wait = 0 }
    for _, pid in ipairs(workers) do
        local rest = read_line("/proc/" .. pid .. "/stat"):match("^%d+ %b() (.*)$") or ""
        local f = {}
        for v in rest:gmatch("%S+") do f[#f + 1] = v end
        -- utime, stime: fields 14, 15 of stat (12, 13 after pid and comm)
        x.proc = x.proc + ((tonumber(f[12]) or 0) + (tonumber(f[13]) or 0)) / CLK_TCK
        local run, wait = read_line(format("/proc/%d/task/%d/schedstat", pid, pid)):match("^(%d+) (%d+)")
        x.loop_run = x.loop_run + (tonumber(run) or 0) / 1e9
        x.loop_wait = x.loop_wait + (tonumber(wait) or 0) / 1e9
    end
    local cpu = {}
    for v in read_line("/proc/stat"):gmatch("%d+") do cpu[#cpu + 1] = tonumber(v) end
    x.idle = (cpu[4] or 0) + (cpu[5] or 0)
    x.total = 0
    for i = 1, math.min(8, #cpu) do x.total = x.total + cpu[i] end
    x.t = now()
    return x
end

local function cpu_delta(a, b)
    return { proc = b.proc - a.proc, loop_run = b.loop_run - a.loop_run, loop_wait = b.loop_wait - a.loop_wait,
             busy = 1 - (b.idle - a.idle) / math.max(1, b.total - a.total), secs = b.t - a.t,
             load = tonumber(read_line("/proc/loadavg"):match("^(%S+)")) }
end

local function lat_run(srv, admin, dir, snaps)
    collectgarbage()
    local cpu0 = cpu_sample(srv.workers)
    local w = wrk_start(srv.port, "/hello", { threads = 2, conns = LAT_CONNS, delay_ms = LAT_DELAY,
                                             bound = 600, timeout = 60 })
    local job
    if admin then
        C.sleep(0.3)
        local st, body
        if admin == "process" then
            local out, ok = proc.run_lua(TMP, SNAP_CHILD, { dir, snaps, tostring(JOB_THREADS or "") })
            st, body = ok and 200 or 0, out:match("@@(%b{})") or out
        else
            st, body = http(srv.port, "/admin/snapshot?mode=" .. admin
                                      .. (JOB_THREADS and "&threads=" .. JOB_THREADS or ""), 600)
        end
        if st ~= 200 then
            wrk_stop(w)
            error("snapshot (" .. admin .. "): " .. st .. " " .. body)
        end
        job = { id = jstr(body, "id"), create = jnum(body, "create"), verify = jnum(body, "verify"),
                segments = jnum(body, "segments"), bytes = jnum(body, "bytes"), mode = jstr(body, "mode") }
    else
        C.sleep(LAT_SECONDS)
    end
    local cpu1 = cpu_sample(srv.workers)
    local r = wrk_stop(w)
    r.job = job
    r.cpu = cpu_delta(cpu0, cpu1)
    if job then
        local st, body = http(srv.port, "/admin/delete?id=" .. job.id, 120)
        if st ~= 200 then error("delete: " .. st .. " " .. body) end
        C.run("sync")
    end
    return r
end

local function section_b()
    local SERVER_DELAY_NOTE = LAT_DELAY > 0 and format("%d ms pause per connection between requests", LAT_DELAY)
                              or "no pause"
    print(format("\nB. latency of a trivial endpoint (content_by_lua: ngx.say), 2 workers, wrk -t2 -c%d, %s; "
                 .. "create and verify with threads = %s", LAT_CONNS, SERVER_DELAY_NOTE,
                 JOB_THREADS and tostring(JOB_THREADS) or "unset (jobs: one fewer than the CPUs; synchronous: one per CPU)"))
    local t0 = now()
    local dir, snaps = TMP .. "/B-log", TMP .. "/B-snaps"
    local nsegs, bytes = build_big(dir)
    local tb = now()
    C.run("sync")
    print(format("   log: %d segments, %.2f GiB (append_batch, Lua 5.4: %.1f s; sync %.1f s); "
                 .. "snapshots: mode copy, into %s", nsegs, bytes / GIB, tb - t0, now() - tb, snaps))
    io.flush()
    local srv = nginx_start("B", 2, { logs = { main = dir }, shared = true, snap_dir = snaps,
                                            max_segment_size = B_SEG })
    -- warm-up, untimed: wrk and the workers, and one snapshot + verify (the
    -- first copy after the log was written costs more than the next ones)
    lat_run(srv, "async")
    -- (a) and (b) in rounds, alternating which goes first: a tail
    -- latency moves a lot from one run to the next on a shared machine
    local rounds, row = {}, {}
    C.run_pair(row, LAT_REPS, function(r)
        rounds[r] = rounds[r] or {}
        rounds[r].b = lat_run(srv, "async")
        return rounds[r].b.p99
    end, function(r)
        rounds[r] = rounds[r] or {}
        rounds[r].a = lat_run(srv, nil)
        return rounds[r].a.p99
    end, function(b, a) return b / a end)
    local d = lat_run(srv, "process", dir, snaps)
    local c = lat_run(srv, "sync")
    nginx_stop(srv)
    for _, line in ipairs(error_lines(srv.error_log)) do failure("B: nginx: " .. line) end
    C.rm_rf(dir, "takhin-bench.")
    C.rm_rf(snaps, "takhin-bench.")

    print()
    local line = "%-40s %6s %7s %8s %8s %9s %9s %9s  %6s %6s %6s %5s %5s"
    print(format(line, "case", "window", "answers", "p50", "p90", "p99", "p99.9", "max",
                 "nginx", "loops", "wait", "busy", "load"))
    print(("-"):rep(135))
    local function ms(us)
        if us >= 1e6 then return format("%.2fs", us / 1e6) end
        return format("%.2fms", us / 1e3)
    end
    local cases = {}
    for r, x in ipairs(rounds) do
        local tag = LAT_REPS > 1 and format(", round %d", r) or ""
        cases[#cases + 1] = { "(a) idle" .. tag, x.a }
        cases[#cases + 1] = { "(b) snapshot + verify as jobs" .. tag, x.b }
    end
    cases[#cases + 1] = { "(c) snapshot + verify, synchronous", c }
    cases[#cases + 1] = { "(d) info: the same in another process", d }
    for _, x in ipairs(cases) do
        local r, u = x[2], x[2].cpu
        print(format(line, x[1], format("%.1fs", r.window_wrk), fmt_int(r.requests), ms(r.p50), ms(r.p90),
                     ms(r.p99), ms(r.p999), ms(r.max), format("%.2fs", u.proc), format("%.2fs", u.loop_run),
                     format("%.2fs", u.loop_wait), format("%.0f%%", u.busy * 100), format("%.1f", u.load or 0)))
        local errs = r.connect + r.read + r.write + r.timeout + r.status
        if errs > 0 then
            print(format("   note: errors connect %d read %d write %d timeout %d status %d", r.connect, r.read,
                         r.write, r.timeout, r.status))
        end
    end
    print()
    for _, x in ipairs(cases) do
        local j = x[2].job
        if j then
            print(format("%-40s create %.2f s + verify %.2f s: %d segments, %.2f GiB, mode %s", x[1], j.create,
                         j.verify, j.segments, j.bytes / GIB, j.mode))
        end
    end
    print()
    print("window: wrk's run (b, c, d: from 0.3 s before the snapshot starts until its verify returns);")
    print("latency: wrk's, from a request's write to its answer; nginx: CPU time of the worker processes")
    print("(event loops + takhin's job threads); loops: CPU time of the workers' main threads; wait: time")
    print("those threads were runnable but not running (schedstat); busy: the machine's CPUs not idle;")
    print("load: 1-minute load average at the end; (d): sm:create + sm:verify (copy mode, synchronous) in a")
    print("Lua 5.4 process with a read-only handle, nginx only serving /hello")
    -- the median of the rounds' ratios; (c) and (d) against the median idle p99
    -- (run_pair: row.a is the jobs' side, row.b the idle baseline's)
    local ratio, a = row.ratio, { p99 = row.b }
    if LAT_REPS > 1 then
        local each = {}
        for r, x in ipairs(rounds) do each[r] = format("%.2f", x.b.p99 / x.a.p99) end
        print(format("p99 (b) / (a), round by round: %s; the target takes their median", concat(each, ", ")))
    end
    local pass = target("B: p99 (b) jobs / (a) idle", ratio, 1.5, true)
    print(format("  %-58s %6.2f  <= 1.5  %s", "p99 (b) snapshot + verify as jobs / (a) idle", ratio,
                 pass and "PASS" or "MISS"))
    print(format("  %-58s %6.2f  info", "p99 (c) synchronous / (a) idle (median)", c.p99 / a.p99))
    print(format("  %-58s %6.2f  info", "p99 (d) another process / (a) idle (median)", d.p99 / a.p99))
end

-------------------------------------------------------------------------
-- Main
-------------------------------------------------------------------------

local function main()
    local build = C.capture(ENV .. "make -s -C " .. q(ROOT) .. " luajit 2>&1; echo \"rc=$?\"")
    assert(build:match("rc=0%s*$"), "make luajit failed:\n" .. build)
    local ngx_version = C.capture(q(NGINX) .. " -v 2>&1"):match("nginx/([%w%.]+)") or "?"
    print(format("takhin nginx bench: nginx %s + %s (build/luajit), %s; takhin %s; %d CPUs",
                 ngx_version, LUA_MODULE:match("[^/]+$"), C.capture(q(WRK) .. " -v 2>&1"):match("^(wrk %S+)") or "wrk",
                 takhin.version, tonumber(C.capture("nproc")) or 0))
    print(format("  temp dir: %s (%s, %.1f GiB free); clock: %s", TMP, fs_type(TMP), TMP_AVAIL / GIB, C.CLOCK))
    io.flush()
    if RUN_A then section_a() end
    if RUN_B then section_b() end

    print()
    local met, missed = 0, {}
    for _, t in ipairs(results.targets) do
        if t.pass then met = met + 1
        else missed[#missed + 1] = format("%s %.2f %s %.1f", t.name, t.ratio, t.le and ">" or "<", t.want) end
    end
    print(format("summary: %d/%d targets met%s%s%s (%.0f s)", met, #results.targets,
                 #missed > 0 and "; MISS: " or "", concat(missed, "; "),
                 #results.failures > 0 and format("; %d check(s) FAILED", #results.failures) or "",
                 now() - T_START))
    return #results.failures
end

local ok, err = xpcall(main, debug.traceback)
for _, w in ipairs(wrks) do if w.pid and proc.alive(w.pid) then proc.kill9(w.pid) end end
for _, srv in ipairs(servers) do pcall(nginx_stop, srv) end
C.rm_rf(TMP, "takhin-bench.")
if not ok then
    io.stderr:write("nginx bench failed: " .. tostring(err) .. "\n")
    os.exit(1)
end
if err > 0 then
    io.stderr:write(format("nginx bench failed: %d check(s) failed, see FAILED above\n", err))
    os.exit(1)
end
os.exit(0)
