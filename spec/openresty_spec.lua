-- takhin inside nginx's Lua module (SPEC §6, examples/openresty/): a real
-- nginx with several workers, all appending to one log in shared mode,
-- worker 0 taking scheduled snapshots, more snapshots and a restore made
-- through HTTP while 8 curl clients send >= 10,000 appends over keep-alive
-- connections.  Afterwards, in this process (the module built for the Lua
-- that runs the spec, lua5.4 or LuaJIT, reading the same files): every
-- acknowledged append is in the log, offsets are exactly 0..N-1, every
-- snapshot verifies and is a prefix of the log, the scheduler's snapshots
-- all come from one worker, and the error log is clean.  A second test
-- drains a cursor through POST /drain while the workers append and one
-- of them is killed with SIGKILL: every acknowledged append is drained at
-- least once, none is skipped.  A third counts appends spread over both
-- workers and checks that GET /metrics (takhin.metrics.prometheus, which
-- promtool accepts) reports exactly that many from either worker, and
-- verifies and restores snapshots through the job-based endpoints.  A
-- fourth starts the example with `make openresty-demo PORT=...`, curls an
-- append and /metrics, and stops it with `make openresty-demo-stop`.
--
-- Pending when nginx, its Lua module (with NDK) or lua-resty-core is not
-- installed, or curl is missing (scripts/deps.sh installs them).  Builds
-- build/luajit/takhin/core.so, which nginx loads, with `make luajit` (a
-- no-op when up to date).  nginx is always stopped through its own pid
-- (SIGQUIT, bounded wait) in after_each; a watchdog shell stops it the same
-- way should this process be killed before after_each runs.

local takhin = require("takhin")
local util = require("helpers.util")
local cjson = require("cjson")

local q = util.q

-- 8 * 1300 = 10,400 appends into 2 workers; TAKHIN_OPENRESTY_CLIENTS,
-- TAKHIN_OPENRESTY_PER_CLIENT and TAKHIN_OPENRESTY_WORKERS make a longer
-- run by hand.
local WORKERS = tonumber(os.getenv("TAKHIN_OPENRESTY_WORKERS") or "") or 2
local CLIENTS = tonumber(os.getenv("TAKHIN_OPENRESTY_CLIENTS") or "") or 8
local PER_CLIENT = tonumber(os.getenv("TAKHIN_OPENRESTY_PER_CLIENT") or "") or 1300
local API_SNAPSHOTS = 4
local SEGMENT_SIZE = 128 * 1024          -- small: the workers roll segments under load
-- cleanup's keep_last: far more than a run takes (about 1 a second), so
-- nothing is deleted, yet bounded should an nginx ever outlive its spec.
local SNAPSHOT_KEEP = 200
-- Children must not inherit a sanitizer preload (make test-asan).
local ENV = "env -u LD_PRELOAD -u ASAN_OPTIONS -u LSAN_OPTIONS -u UBSAN_OPTIONS "

-------------------------------------------------------------------------
-- What is installed
-------------------------------------------------------------------------

local function root_dir()
    local src = debug.getinfo(1, "S").source:gsub("^@", "")
    local dir = src:match("^(.*)/spec/[^/]*$") or "."
    return (util.capture("cd " .. q(dir) .. " && pwd"):gsub("%s+$", ""))
end

local function which(name)
    local out = util.capture("PATH=\"$PATH:/usr/sbin:/sbin:/usr/local/sbin\" command -v "
                             .. q(name) .. " 2>/dev/null")
    out = out:gsub("%s+$", "")
    return out ~= "" and out or nil
end

local function first_file(dirs, name)
    for _, d in ipairs(dirs) do
        local p = d .. "/" .. name
        if util.sh("test -f " .. q(p)) then return p, d end
    end
end

local MODULE_DIRS = { "/usr/lib/nginx/modules", "/usr/share/nginx/modules",
                      "/usr/local/nginx/modules", "/etc/nginx/modules" }
local RESTY_DIRS = { "/usr/share/lua/5.1", "/usr/local/share/lua/5.1",
                     "/usr/local/openresty/lualib", "/usr/local/lib/lua" }

-- Everything the test needs from the system, or nil and what is missing.
local function environment()
    local env, missing = {}, {}
    env.nginx = which("nginx")
    if not env.nginx then missing[#missing + 1] = "nginx" end
    env.ndk = first_file(MODULE_DIRS, "ndk_http_module.so")
    env.lua_module = first_file(MODULE_DIRS, "ngx_http_lua_module.so")
    if not env.ndk or not env.lua_module then
        missing[#missing + 1] = "the nginx Lua module (libnginx-mod-http-lua)"
    end
    local _, resty = first_file(RESTY_DIRS, "resty/core.lua")
    env.resty_core = resty
    if not resty then missing[#missing + 1] = "lua-resty-core" end
    env.curl = which("curl")
    if not env.curl then missing[#missing + 1] = "curl" end
    if #missing > 0 then
        return nil, table.concat(missing, ", ") .. " not installed (apt-get install nginx "
            .. "libnginx-mod-http-lua lua-resty-core curl, or `make deps`)"
    end
    return env
end

-------------------------------------------------------------------------
-- Processes, ports, HTTP
-------------------------------------------------------------------------




-- A port below the ephemeral range (so curl's own ports never take it),
-- another one at each call.
local port_draws = 0
local function free_port()
    port_draws = port_draws + 1
    return util.free_port(util.getpid(), port_draws)
end
local read_pid, children_of, error_lines = util.read_pid, util.children_of, util.error_lines

-- curl one request; returns status (number, 0 when no answer), body and
-- the answer's X-Takhin-Worker header (a number, or nil).
local function http(port, method, path, body_file)
    local cmd = ENV .. "curl -s -m 30 -o - -w '\\n@@ %{http_code} %header{x-takhin-worker}' -X " .. method
    if body_file then cmd = cmd .. " --data-binary @" .. q(body_file) end
    local out = util.capture(cmd .. " " .. q("http://127.0.0.1:" .. port .. path) .. " 2>/dev/null")
    local body, code, worker = out:match("^(.-)\n@@ (%d%d%d) ?(%d*)$")
    if not body then return 0, out end
    return tonumber(code), (body:gsub("\n$", "")), tonumber(worker)
end

local function json_int(body, name)
    return tonumber(body:match('"' .. name .. '":(%-?%d+)[,}]'))
end

-------------------------------------------------------------------------
-- The load: what client c sends as its i-th append
-------------------------------------------------------------------------

local SPECIAL = 'quote " back\\slash tab\t newline\n caf\u{e9} \u{20ac} {"json":[1]}'

local function request_for(c, i)
    local name = ("c%d-%d"):format(c, i)
    local key
    if i % 50 == 0 then key = nil                -- absent key
    elseif i % 50 == 25 then key = ""            -- empty key
    else key = ("k%d-%d"):format(c, i) end
    local value
    if i % 97 == 0 then
        value = ""
    elseif i % 7 == 0 then
        value = name .. ":" .. SPECIAL
    elseif i % 400 == 0 then
        value = name .. ":" .. string.rep("L", 8000)
    else
        value = name .. ":" .. string.rep(string.char(97 + (c + i) % 26), (c * 31 + i * 7) % 300)
    end
    local path = "/append?n=" .. name
    if key then path = path .. "&key=" .. key end
    return { name = name, key = key, value = value, path = path }
end

-- A value inside double quotes in a curl config file.
local function curl_quote(s)
    return '"' .. s:gsub('[\\"\t\n\r]', {
        ["\\"] = "\\\\", ['"'] = '\\"', ["\t"] = "\\t", ["\n"] = "\\n", ["\r"] = "\\r",
    }) .. '"'
end

-- Writes a curl config that sends `reqs` one after another on one
-- keep-alive connection (with `close`: a new connection each, so that
-- reuseport spreads them over the workers; with `rate`, e.g. "150/s", no
-- faster than that), each answer followed by "\n@@ CODE URL\n".
local function write_curl_config(path, port, reqs, close, rate)
    local out = {}
    if rate then out[#out + 1] = "rate = " .. curl_quote(rate) end
    for k, r in ipairs(reqs) do
        if k > 1 then out[#out + 1] = "next" end
        out[#out + 1] = "url = " .. curl_quote("http://127.0.0.1:" .. port .. r.path)
        out[#out + 1] = "data-binary = " .. curl_quote(r.value)
        out[#out + 1] = 'header = "Expect:"'
        if close then out[#out + 1] = 'header = "Connection: close"' end
        out[#out + 1] = 'write-out = "\\n@@ %{http_code} %{url_effective}\\n"'
    end
    util.write_file(path, table.concat(out, "\n") .. "\n")
end

-- Starts curl in the background; returns the paths of its output, its
-- exit status file and its pid file.
local function spawn_curl(dir, name, config)
    local out, rc, pidf = dir .. "/" .. name .. ".out", dir .. "/" .. name .. ".rc",
                          dir .. "/" .. name .. ".pid"
    local script = ENV .. "curl -s -S -m 120 -K " .. q(config) .. " >" .. q(out)
        .. " 2>" .. q(out .. ".err") .. " & echo $! >" .. q(pidf) .. "; wait $!; echo $? >" .. q(rc)
    util.sh("sh -c " .. q(script) .. " </dev/null >/dev/null 2>&1 &")
    return { out = out, rc = rc, pidfile = pidf, name = name }
end

-- Pairs each request with curl's answer: { status =, body =, url = }.
local function parse_answers(path)
    local answers = {}
    for body, code, url in util.read_file(path):gmatch("(.-)\n@@ (%d%d%d) (%S*)\n") do
        answers[#answers + 1] = { status = tonumber(code), body = body:gsub("\n$", ""), url = url }
    end
    return answers
end

-------------------------------------------------------------------------
-- nginx
-------------------------------------------------------------------------

local function render(template, vars)
    local out = template:gsub("{{([%u_]+)}}", function(name)
        local v = vars[name]
        assert(v ~= nil, "nginx.conf template: no value for {{" .. name .. "}}")
        return tostring(v)
    end)
    return out
end


local function tail(path, n)
    return util.capture("tail -n " .. (n or 30) .. " " .. q(path) .. " 2>/dev/null")
end

-------------------------------------------------------------------------

describe("takhin in nginx (OpenResty style)", function()
    local env, why = environment()
    local root = root_dir()
    local tmp, server          -- server = { master =, workers =, prefix = }
    local curls = {}

    -- n curl clients, client c sending `per` requests (request_for(c, i))
    -- from one config, started in the background into curls; returns the
    -- requests by client.  close, rate: as write_curl_config.
    local function start_clients(port, name, n, per, close, rate)
        local sent = {}
        for c = 1, n do
            local reqs = {}
            for i = 1, per do reqs[i] = request_for(c, i) end
            sent[c] = reqs
            write_curl_config(tmp .. "/" .. name .. c .. ".curl", port, reqs, close, rate)
        end
        for c = 1, n do
            curls[c] = spawn_curl(tmp, name .. c, tmp .. "/" .. name .. c .. ".curl")
        end
        return sent
    end

    -- Whether every curl client started has finished.
    local function clients_done()
        for _, cl in ipairs(curls) do
            if not util.exists(cl.rc) then return false end
        end
        return true
    end

    -- Stops nginx through its own pid: QUIT (graceful), bounded wait, then
    -- TERM and KILL for a master that hangs.  Returns true when it and its
    -- workers are gone.
    local function stop_nginx()
        if not server or not server.master then return true end
        local master = server.master
        local all_gone = function()
            if util.alive(master) then return false end
            for _, w in ipairs(server.workers or {}) do
                if util.alive(w) then return false end
            end
            return true
        end
        local clean = true
        util.sh("kill -QUIT " .. string.format("%d", master) .. " 2>/dev/null")
        if not util.wait_until(all_gone, 1500, 0.01) then
            clean = false
            util.sh("kill -TERM " .. string.format("%d", master) .. " 2>/dev/null")
            if not util.wait_until(all_gone, 500, 0.01) then
                util.sh("kill -KILL " .. string.format("%d", master) .. " 2>/dev/null")
                for _, w in ipairs(server.workers or {}) do util.kill9(w) end
                util.wait_until(all_gone, 500, 0.01)
            end
        end
        server.master = nil
        return clean
    end

    local function stop_curls()
        for _, c in ipairs(curls) do
            local pid = read_pid(c.pidfile)
            if pid and not util.exists(c.rc) and util.alive(pid) then util.kill9(pid) end
        end
        curls = {}
    end

    before_each(function()
        tmp = util.tmpdir()
        server = nil
        curls = {}
    end)

    after_each(function()
        stop_curls()
        stop_nginx()
        collectgarbage(); collectgarbage()
        util.rmtree(tmp)
    end)

    -- A watchdog: should this process die without its after_each (SIGKILL,
    -- a timeout), it stops nginx, by nginx's own pid, within a second.  It
    -- exits as soon as nginx is gone.
    local function watchdog(master, prefix)
        local m, me = string.format("%d", master), string.format("%d", util.getpid())
        util.sh("sh -c " .. q("while kill -0 " .. me .. " && kill -0 " .. m .. "; do sleep 1; done; "
            .. "grep -qF " .. q(prefix) .. " /proc/" .. m .. "/cmdline && kill -QUIT " .. m)
            .. " </dev/null >/dev/null 2>&1 &")
    end

    -- Renders the template, starts nginx on a free port and waits until it
    -- answers.  Returns the server table.
    local function start_nginx(opts)
        local prefix = tmp .. "/nginx"
        util.sh("mkdir -p " .. q(prefix))
        local user = util.capture("id -un"):gsub("%s+$", "")
        local group = util.capture("id -gn"):gsub("%s+$", "")
        local template = util.read_file(root .. "/examples/openresty/nginx.conf")
        local last_err
        for _ = 1, 5 do
            local port = free_port()
            local conf = prefix .. "/nginx.conf"
            util.write_file(conf, render(template, {
                NDK_MODULE = env.ndk, LUA_MODULE = env.lua_module,
                USER = user, GROUP = group, WORKERS = opts.workers,
                PREFIX = prefix, PORT = port,
                TAKHIN_LUA = root .. "/lua", TAKHIN_CPATH = root .. "/build/luajit",
                RESTY_CORE = env.resty_core, HANDLER_DIR = root .. "/examples/openresty",
                DATA_DIR = opts.data_dir, RESTORE_DIR = opts.restore_dir,
                MAX_SEGMENT_SIZE = opts.max_segment_size,
                SNAPSHOT_INTERVAL = opts.snapshot_interval, SNAPSHOT_KEEP = SNAPSHOT_KEEP,
            }))
            local out = util.capture(ENV .. q(env.nginx) .. " -p " .. q(prefix) .. " -c " .. q(conf)
                                     .. " -e " .. q(prefix .. "/error.log") .. " 2>&1; echo \"rc=$?\"")
            local rc = tonumber(out:match("rc=(%d+)%s*$"))
            if rc == 0 then
                local master = util.wait_until(function() return read_pid(prefix .. "/nginx.pid") end, 500)
                assert(master, "nginx started but wrote no pid file:\n" .. out .. tail(prefix .. "/error.log"))
                server = { master = master, prefix = prefix, port = port, error_log = prefix .. "/error.log" }
                watchdog(master, prefix)
                -- every worker up (their pids, to check they are gone at the end)
                util.wait_until(function()
                    return #children_of(master) >= opts.workers
                end, 500)
                server.workers = children_of(master)
                assert(#server.workers >= opts.workers, "nginx has " .. #server.workers
                       .. " workers, expected " .. opts.workers .. "\n" .. tail(server.error_log))
                local ok = util.wait_until(function()
                    return http(port, "GET", "/info") == 200
                end, 500, 0.02)
                local status, body = http(port, "GET", "/info")
                assert(ok, "nginx does not answer on port " .. port .. ": " .. status .. " "
                       .. body .. "\n" .. tail(server.error_log))
                -- it is our nginx answering (not another server on that port)
                local pid = json_int(body, "pid")
                local ours = false
                for _, w in ipairs(server.workers) do ours = ours or w == pid end
                assert(ours, "port " .. port .. " answered by pid " .. tostring(pid)
                       .. ", not one of our workers")
                return server
            end
            last_err = out
            if not out:find("Address already in use", 1, true) then break end
        end
        error("nginx did not start:\n" .. tostring(last_err) .. tail(prefix .. "/error.log"))
    end

    -- The LuaJIT build of the module (incremental: nothing to do when up to date).
    local function build_luajit()
        local build_out = util.capture(ENV .. "make -s -C " .. q(root) .. " luajit 2>&1; echo \"rc=$?\"")
        assert(build_out:match("rc=0%s*$"), "make luajit failed:\n" .. build_out)
        assert(util.exists(root .. "/build/luajit/takhin/core.so"), "make luajit made no core.so")
    end

    it("serves >= 10,000 concurrent appends from several workers into one log, with snapshots",
       function()
        if not env then
            pending("skipped: " .. why)
            return
        end
        build_luajit()

        local data_dir, restore_dir = tmp .. "/data", tmp .. "/restored"
        start_nginx({ workers = WORKERS, data_dir = data_dir, restore_dir = restore_dir,
                      max_segment_size = SEGMENT_SIZE, snapshot_interval = "1s" })
        local port = server.port

        -- The load: 8 curl processes, each with all its requests in one config.
        local sent = start_clients(port, "client", CLIENTS, PER_CLIENT)   -- client -> requests
        local all_done = clients_done

        -- Meanwhile, snapshots through the server.
        local api_snaps = {}
        local function take_snapshot()
            local status, body = http(port, "POST", "/snapshot")
            assert.are.equal(200, status, "POST /snapshot: " .. body)
            api_snaps[#api_snaps + 1] = {
                id = body:match('"id":"([^"]+)"'),
                hwm = json_int(body, "high_water_mark"),
                label = body:match('"label":"([^"]*)"'),
                during_load = not all_done(),
            }
        end
        -- One when the log holds about 10%, 30%, 50%, 70% of the load.
        local total = CLIENTS * PER_CLIENT
        for _ = 1, 6000 do                   -- bounded: >= 6000 * 20 ms = 2 minutes
            if all_done() then break end
            if #api_snaps < API_SNAPSHOTS then
                local st, info = http(port, "GET", "/info")
                assert.are.equal(200, st, "GET /info: " .. info)
                if json_int(info, "high_water_mark") >= total * (0.1 + 0.2 * #api_snaps) then
                    take_snapshot()
                end
            end
            util.nap(0.02)
        end
        assert.is_true(all_done(), "the curl clients did not finish")
        while #api_snaps < API_SNAPSHOTS do take_snapshot() end
        for _, cl in ipairs(curls) do
            local rc = util.read_file(cl.rc):gsub("%s+$", "")
            assert.are.equal("0", rc, cl.name .. ": curl exited " .. rc .. ": "
                             .. util.read_file(cl.out .. ".err"))
        end

        -- Every request answered 200 with an offset.
        local acks = {}          -- array of { offset =, worker =, req = }
        local workers_seen = {}
        local function collect(reqs, out_path, who)
            local answers = parse_answers(out_path)
            assert.are.equal(#reqs, #answers, who .. ": answers")
            for k, a in ipairs(answers) do
                local r = reqs[k]
                assert.are.equal("http://127.0.0.1:" .. port .. r.path, a.url, who .. " #" .. k)
                assert.are.equal(200, a.status, who .. " " .. r.path .. ": " .. a.body)
                local off, w = json_int(a.body, "offset"), json_int(a.body, "worker")
                assert(off and w, who .. ": bad answer " .. a.body)
                acks[#acks + 1] = { offset = off, worker = w, req = r }
                workers_seen[w] = (workers_seen[w] or 0) + 1
            end
        end
        for c = 1, CLIENTS do collect(sent[c], curls[c].out, "client " .. c) end

        -- Both workers must have appended.  reuseport spreads connections at
        -- random, so a few more (one connection each) settle a rare tie.
        local n_workers_seen = function()
            local n = 0
            for _ in pairs(workers_seen) do n = n + 1 end
            return n
        end
        local extra = 0
        while n_workers_seen() < 2 and extra < 64 do
            extra = extra + 1
            local r = request_for(CLIENTS + 1, extra)
            local cfg = tmp .. "/extra" .. extra .. ".curl"
            write_curl_config(cfg, port, { r })
            local cl = spawn_curl(tmp, "extra" .. extra, cfg)
            curls[#curls + 1] = cl
            assert(util.wait_until(function() return util.exists(cl.rc) end, 3000), "extra curl hangs")
            collect({ r }, cl.out, "extra " .. extra)
        end
        assert.is_true(n_workers_seen() >= 2, "only one worker appended")

        -- A binary value (NUL, 0xFF) through the server.
        local bin = "bin\0\255\254value\0"
        util.write_file(tmp .. "/bin.value", bin)
        do
            local status, body = http(port, "POST", "/append?key=bin", tmp .. "/bin.value")
            assert.are.equal(200, status, body)
            acks[#acks + 1] = { offset = json_int(body, "offset"), worker = json_int(body, "worker"),
                                req = { name = "binary", key = "bin", value = bin } }
        end
        local N = #acks
        assert.is_true(N > CLIENTS * PER_CLIENT, "only " .. N .. " appends acknowledged")

        -- Reads through the server: a sample, the binary one, and errors.
        local sample = { 1, N, #acks - 1 }
        for j = 1, 40 do sample[#sample + 1] = 1 + (j * 2579) % N end
        for _, k in ipairs(sample) do
            local a = acks[k]
            local status, body = http(port, "GET", "/read?offset=" .. a.offset)
            assert.are.equal(200, status, body)
            local t = cjson.decode(body)
            assert.are.equal(a.offset, json_int(body, "offset"))
            assert.is_truthy(json_int(body, "timestamp"), body)
            if a.req.key == nil then
                assert.are.equal(cjson.null, t.key, body)
            else
                assert.are.equal(a.req.key, t.key, body)
            end
            if t.value_base64 then
                assert.are.equal("binary", a.req.name, body)
                local raw = util.capture("printf %s " .. q(t.value_base64) .. " | base64 -d")
                assert.are.equal(bin, raw)
            else
                assert.are.equal(a.req.value, t.value, body)
            end
        end
        local status, body = http(port, "GET", "/read?offset=" .. N)
        assert.are.equal(404, status, body)
        assert.are.equal("OUT_OF_RANGE", cjson.decode(body).code)
        status, body = http(port, "GET", "/read?offset=-1")
        assert.are.equal(400, status, body)
        assert.are.equal("INVALID", cjson.decode(body).code)
        status, body = http(port, "GET", "/append?key=x")
        assert.are.equal(405, status, body)
        status, body = http(port, "POST", "/restore?id=..%2Fx&target=r0")
        assert.are.equal(400, status, body)
        assert.are.equal("INVALID", cjson.decode(body).code)
        status, body = http(port, "POST", "/restore?id=" .. api_snaps[1].id)
        assert.are.equal(400, status, body)
        assert.truthy(body:find("query argument 'target' is required", 1, true), body)

        -- A restore through the server, of a snapshot taken during the load
        -- when there is one.
        local rsnap = api_snaps[1]
        for _, s in ipairs(api_snaps) do if s.during_load and s.hwm > 0 then rsnap = s; break end end
        status, body = http(port, "POST", "/restore?id=" .. rsnap.id .. "&target=r1")
        assert.are.equal(200, status, body)
        assert.are.equal(rsnap.hwm, json_int(body, "high_water_mark"), body)
        assert.are.equal(restore_dir .. "/r1", cjson.decode(body).target)
        -- ... and a verify (a job too), of the same snapshot and of none.
        status, body = http(port, "POST", "/verify?id=" .. rsnap.id)
        assert.are.equal(200, status, body)
        assert.is_true(cjson.decode(body).verified, body)
        status, body = http(port, "POST", "/verify?id=1-00000000")
        assert.are.equal(404, status, body)
        assert.are.equal("NOT_FOUND", cjson.decode(body).code)

        -- The scheduler goes on: wait (bounded) for one of its snapshots to
        -- hold every append.
        local function sched_snaps()
            status, body = http(port, "GET", "/snapshots")
            assert.are.equal(200, status, body)
            local list = {}
            for _, s in ipairs(cjson.decode(body).snapshots) do
                if s.label and s.label:find("^scheduler ") then list[#list + 1] = s end
            end
            return list, body
        end
        local full = util.wait_until(function()
            for _, s in ipairs((sched_snaps())) do
                if s.high_water_mark == N then return true end
            end
            return false
        end, 100, 0.1)
        assert.is_true(full, "no scheduled snapshot holds all " .. N .. " records")
        local _, listing = sched_snaps()

        -- Stop nginx through its pid, before looking at the files.
        local workers = server.workers
        assert.is_true(stop_nginx(), "nginx did not stop on SIGQUIT")
        for _, w in ipairs(workers) do assert.is_false(util.alive(w), "worker " .. w .. " still runs") end

        -- Offsets: unique and exactly 0..N-1.
        local by_offset = {}
        for _, a in ipairs(acks) do
            if a.offset < 0 or a.offset >= N then
                error("offset " .. a.offset .. " outside 0.." .. (N - 1) .. " (" .. a.req.name .. ")")
            end
            if by_offset[a.offset] then
                error("offset " .. a.offset .. " acknowledged twice: "
                      .. by_offset[a.offset].req.name .. " and " .. a.req.name)
            end
            by_offset[a.offset] = a
        end

        -- The log, read-only in this process (the lua5.4 build).
        local log = assert(takhin.open_log({ dir = data_dir, readonly = true }))
        assert.are.equal(0, log:base_offset())
        assert.are.equal(N, log:high_water_mark())
        assert.is_true(log:num_segments() > 1, "expected several segments")
        local records, n_records = {}, 0
        for rec in log:records(0, N) do
            n_records = n_records + 1
            local a = by_offset[rec.offset]
            assert(a.req.value == rec.value, "value at " .. rec.offset .. " is not " .. a.req.name .. "'s")
            assert(a.req.key == rec.key, "key at " .. rec.offset .. " is not " .. a.req.name .. "'s")
            records[rec.offset] = rec
        end
        assert.are.equal(N, n_records)

        -- Snapshots: each verifies and holds a prefix of the log.
        local sm = assert(takhin.snapshot_manager(data_dir))
        local list = sm:list()
        local labels, sched_by, n_sched, n_api = {}, {}, 0, 0
        local check_dir = tmp .. "/check"
        for k, s in ipairs(list) do
            assert(sm:verify(s.id))
            assert.are.equal(0, s.base_offset)
            assert.is_true(s.high_water_mark <= N)
            local target = check_dir .. k
            assert(sm:restore(s.id, target))
            local r = assert(takhin.open_log({ dir = target, readonly = true }))
            assert.are.equal(s.high_water_mark, r:high_water_mark(), s.id)
            for rec in r:records() do
                local want = records[rec.offset]
                assert(rec.value == want.value and rec.key == want.key
                       and rec.timestamp == want.timestamp,
                       "snapshot " .. s.id .. " differs from the log at offset " .. rec.offset)
            end
            r:close()
            util.sh("rm -rf " .. q(target))
            labels[s.id] = s.label
            local who = s.label and s.label:match("^scheduler (worker=%d+ pid=%d+)$")
            if who then
                n_sched = n_sched + 1
                sched_by[who] = true
            else
                assert.truthy(s.label and s.label:match("^api worker=%d+ pid=%d+$"), tostring(s.label))
                n_api = n_api + 1
            end
        end
        for _, s in ipairs(api_snaps) do
            assert.are.equal(s.label, labels[s.id], "API snapshot " .. tostring(s.id) .. " listed")
        end
        assert.are.equal(#api_snaps, n_api)
        assert.is_true(n_sched >= 2, "scheduler snapshots: " .. n_sched .. "\n" .. listing)
        local schedulers = {}
        for who in pairs(sched_by) do schedulers[#schedulers + 1] = who end
        assert.are.equal(1, #schedulers, "scheduler snapshots by " .. table.concat(schedulers, ", "))
        assert.truthy(schedulers[1]:match("^worker=0 "), schedulers[1])
        sm:close()

        -- The restore made through the server.
        local r = assert(takhin.open_log({ dir = restore_dir .. "/r1", readonly = true }))
        assert.are.equal(rsnap.hwm, r:high_water_mark())
        for rec in r:records() do
            assert(rec.value == records[rec.offset].value, "restored r1 differs at " .. rec.offset)
        end
        r:close()
        log:close()

        -- A clean error log.
        local bad = error_lines(server.error_log)
        assert.are.equal(0, #bad, "error log:\n" .. table.concat(bad, "\n"))

        local wl = {}
        for w, n in pairs(workers_seen) do wl[#wl + 1] = ("worker %d: %d"):format(w, n) end
        table.sort(wl)
        local cuts = {}
        for _, s in ipairs(api_snaps) do
            cuts[#cuts + 1] = ("%d%s"):format(s.hwm, s.during_load and "" or " (after)")
        end
        print(("\n# openresty: %d appends acknowledged (%s), %d snapshots (%d scheduled by %s, "
               .. "%d through POST /snapshot at %s), %d segments")
              :format(N, table.concat(wl, ", "), #list, n_sched, schedulers[1], n_api,
                      table.concat(cuts, ", "), #util.ls_suffix(data_dir, ".log")))
    end)

    -- POST /drain (a spool's consumer, handler.lua): a client drains cursor
    -- "spool" over and over while 6 curl clients append through both
    -- workers; midway one worker is killed with SIGKILL and nginx starts
    -- another.  At the end every acknowledged append was drained at least
    -- once, with its key and value, and no drain ever began past what the
    -- drains before it had delivered.
    it("drains every acknowledged append at least once while a worker is killed", function()
        if not env then
            pending("skipped: " .. why)
            return
        end
        build_luajit()
        local data_dir = tmp .. "/data"
        start_nginx({ workers = 2, data_dir = data_dir, restore_dir = tmp .. "/restored",
                      max_segment_size = 64 * 1024, snapshot_interval = "off" })
        local port = server.port
        local D_CLIENTS, D_PER = 6, 250
        local sent = start_clients(port, "drain-client", D_CLIENTS, D_PER, true, "150/s")
        local all_done = clients_done

        -- The drainer.  delivered: what the drains answered so far, as a
        -- prefix [0, upto) of the log: a drain that began past it skipped.
        local drained, upto, drains, repeats, failed = {}, 0, 0, 0, 0
        local function drain()
            local status, body = http(port, "POST", "/drain?cursor=spool&max=50")
            if status == 0 then failed = failed + 1; return nil end   -- the worker died under it
            assert.are.equal(200, status, "POST /drain: " .. body)
            local d = cjson.decode(body)
            drains = drains + 1
            assert.are.equal("spool", d.cursor)
            assert.are.equal(0, d.lost)
            assert(d.from <= upto, ("a drain began at %d, past %d, all that was delivered"):format(d.from, upto))
            if d.from < upto then repeats = repeats + 1 end
            assert.are.equal(d.next - d.from, #d.records, body)
            for k, rec in ipairs(d.records) do
                assert.are.equal(d.from + k - 1, rec.offset)
                local v = { key = rec.key ~= cjson.null and rec.key or nil, value = rec.value }
                local before = drained[rec.offset]
                if before then
                    assert.are.same(before, v, "offset " .. rec.offset .. " drained twice, differently")
                end
                drained[rec.offset] = v
            end
            if d.next > upto then upto = d.next end
            return d
        end

        local total = D_CLIENTS * D_PER
        local killed, replaced, during_load
        for _ = 1, 3000 do                         -- bounded: >= 3000 * 10 ms
            if all_done() and killed then break end
            local d = drain()
            if not killed and d and d.high_water_mark >= total / 2 then
                local workers = children_of(server.master)
                killed = workers[1]
                during_load = not all_done()
                util.kill9(killed)
                assert.is_true(util.wait_exit(killed), "the worker did not die")
                -- nginx starts another in its place
                replaced = util.wait_until(function()
                    local now = children_of(server.master)
                    if #now < 2 then return false end
                    for _, w in ipairs(now) do if w == killed then return false end end
                    return now
                end, 1000)
                assert(replaced, "nginx did not replace the killed worker")
            end
            util.nap(0.01)
        end
        assert.is_true(all_done(), "the curl clients did not finish")
        assert(killed and during_load, "the load ended before the drains saw half of it in: "
               .. "no worker was killed while the workers took appends")
        server.workers = replaced

        -- What the clients were told: every 200 carries an offset; a
        -- request the dead worker never answered has no status.
        local acks, workers_seen, lost = {}, {}, 0
        for c = 1, D_CLIENTS do
            local answers = parse_answers(curls[c].out)
            assert.are.equal(D_PER, #answers, "client " .. c .. ": answers")
            for k, a in ipairs(answers) do
                if a.status == 0 then
                    lost = lost + 1
                else
                    assert.are.equal(200, a.status, "client " .. c .. " " .. sent[c][k].path .. ": " .. a.body)
                    local off = json_int(a.body, "offset")
                    acks[#acks + 1] = { offset = off, req = sent[c][k] }
                    workers_seen[json_int(a.body, "worker")] = true
                end
            end
        end
        assert.is_true(lost <= D_CLIENTS, lost .. " appends unanswered")
        assert.is_true(workers_seen[0] and workers_seen[1], "both workers took appends")

        -- Drain what is left: until a drain answers nothing new at the end.
        local st, info = http(port, "GET", "/info")
        assert.are.equal(200, st, info)
        local hwm = json_int(info, "high_water_mark")
        assert.is_true(hwm >= #acks)
        local tail_ok = util.wait_until(function()
            local d = drain()
            return d and d.from == hwm and #d.records == 0
        end, 500)
        assert(tail_ok, "the drains never caught up with " .. hwm)

        -- Every acknowledged append was drained, as it was sent ...
        for _, a in ipairs(acks) do
            local d = drained[a.offset]
            assert(d, "acknowledged offset " .. a.offset .. " (" .. a.req.name .. ") was never drained")
            assert(d.key == a.req.key and d.value == a.req.value, "offset " .. a.offset .. " drained "
                   .. "something other than " .. a.req.name)
        end
        -- ... and so was every other record of the log: none skipped.
        assert.is_true(stop_nginx(), "nginx did not stop on SIGQUIT")
        local log = assert(takhin.open_log({ dir = data_dir, readonly = true }))
        assert.are.equal(hwm, log:high_water_mark())
        for rec in log:records(0, hwm) do
            local d = drained[rec.offset]
            assert(d, "offset " .. rec.offset .. " was skipped")
            assert(d.value == rec.value and d.key == rec.key, "offset " .. rec.offset .. " drained differently")
        end
        assert.are.equal(hwm, log:committed("spool"))
        log:close()

        -- The error log: nothing but the master's word about the killed worker.
        local bad = {}
        for _, line in ipairs(error_lines(server.error_log)) do
            if not line:find("exited on signal 9", 1, true) then bad[#bad + 1] = line end
        end
        assert.are.equal(0, #bad, "error log:\n" .. table.concat(bad, "\n"))
        print(("\n# openresty drain: %d appends acknowledged (%d unanswered when worker %d was killed), "
               .. "%d records, %d drains (%d began again below what was delivered, %d unanswered)")
              :format(#acks, lost, killed, hwm, drains, repeats, failed))
    end)

    -- promtool, for the /metrics checks; nil when not installed.
    local function promtool()
        return which("promtool")
    end

    local function promtool_check(text)
        local tool = promtool()
        local path = tmp .. "/metrics.prom"
        util.write_file(path, text)
        local out = util.capture(ENV .. q(tool) .. " check metrics < " .. q(path) .. " 2>&1; echo \"rc=$?\"")
        return tonumber(out:match("rc=(%d+)%s*$")), (out:gsub("rc=%d+%s*$", ""))
    end

    -- The value of sample `name{log="log"}` (or manager) in /metrics' text.
    local function sample(text, name, label)
        return tonumber(text:match("\n" .. name .. "{" .. (label or 'log="log"') .. "} (%S+)"))
    end

    -- GET /metrics (a new connection each: reuseport picks the worker)
    -- until both workers answered; returns { [worker] = text }.
    local function metrics_from_both(port)
        local by_worker, tries = {}, 0
        while (by_worker[0] == nil or by_worker[1] == nil) and tries < 200 do
            tries = tries + 1
            local status, body, w = http(port, "GET", "/metrics")
            assert.are.equal(200, status, "GET /metrics: " .. body)
            assert(w, "GET /metrics: no X-Takhin-Worker header")
            by_worker[w] = "\n" .. body .. "\n"
        end
        assert(by_worker[0] and by_worker[1], "GET /metrics: only one worker answered in 200 tries")
        return by_worker
    end

    -- GET /metrics, the counters summed by the engine across workers: N
    -- appends spread over 2 workers by reuseport (a connection each) are
    -- exactly N in takhin_log_appends_total, whichever worker answers, and
    -- promtool accepts the text.  Snapshots, verify (also of a damaged
    -- snapshot) and restore go through the job-based endpoints.
    it("reports in /metrics the appends of both workers, as counted by the clients", function()
        if not env then
            pending("skipped: " .. why)
            return
        end
        build_luajit()
        local data_dir = tmp .. "/data"
        start_nginx({ workers = 2, data_dir = data_dir, restore_dir = tmp .. "/restored",
                      max_segment_size = 64 * 1024, snapshot_interval = "off" })
        local port = server.port
        local M_CLIENTS, M_PER = 4, 150
        local sent = start_clients(port, "m-client", M_CLIENTS, M_PER, true)
        assert(util.wait_until(clients_done, 6000, 0.02), "the curl clients did not finish")

        -- What the clients counted: every answer 200, by worker.
        local acked, by_worker = 0, {}
        for c = 1, M_CLIENTS do
            local answers = parse_answers(curls[c].out)
            assert.are.equal(M_PER, #answers, "client " .. c .. ": answers")
            for k, a in ipairs(answers) do
                assert.are.equal(200, a.status, "client " .. c .. " " .. sent[c][k].path .. ": " .. a.body)
                local w = json_int(a.body, "worker")
                by_worker[w] = (by_worker[w] or 0) + 1
                acked = acked + 1
            end
        end
        -- Both workers must have appended; a few more appends (a
        -- connection each) settle a rare tie of reuseport.
        local extra = 0
        while not (by_worker[0] and by_worker[1]) and extra < 64 do
            extra = extra + 1
            local status, body = http(port, "POST", "/append?key=extra" .. extra)
            assert.are.equal(200, status, body)
            local w = json_int(body, "worker")
            by_worker[w] = (by_worker[w] or 0) + 1
            acked = acked + 1
        end
        assert(by_worker[0] and by_worker[1], "only one worker appended")

        -- Either worker reports every append, records and high water mark alike.
        local texts = metrics_from_both(port)
        for w, text in pairs(texts) do
            local who = "worker " .. w .. "'s /metrics"
            assert.are.equal(acked, sample(text, "takhin_log_appends_total"), who .. text)
            assert.are.equal(acked, sample(text, "takhin_log_records_total"), who)
            assert.are.equal(acked, sample(text, "takhin_log_high_water_mark"), who)
            assert.are.equal(2, sample(text, "takhin_log_writers"), who)
            assert.truthy(text:find("\n# TYPE takhin_log_appends_total counter\n", 1, true), who)
        end
        if promtool() then
            local rc, out = promtool_check(texts[0]:sub(2))
            assert.are.equal(0, rc, "promtool check metrics (GET /metrics):\n" .. out)
            assert.are.equal("", (out:gsub("%s+", "")), "promtool check metrics (GET /metrics):\n" .. out)
        end

        -- Jobs through HTTP: two snapshots, a verify of each, a restore.
        local ids = {}
        for k = 1, 2 do
            local status, body = http(port, "POST", "/snapshot")
            assert.are.equal(200, status, "POST /snapshot: " .. body)
            local snap = cjson.decode(body)
            assert.are.equal(acked, snap.high_water_mark)
            ids[k] = snap.id
            status, body = http(port, "POST", "/verify?id=" .. snap.id)
            assert.are.equal(200, status, "POST /verify: " .. body)
            assert.is_true(cjson.decode(body).verified)
        end
        local status, body = http(port, "POST", "/restore?id=" .. ids[1] .. "&target=m1")
        assert.are.equal(200, status, "POST /restore: " .. body)
        assert.are.equal(acked, cjson.decode(body).high_water_mark)
        status, body = http(port, "POST", "/restore?id=" .. ids[1] .. "&target=m1")
        assert.are.equal(409, status, body)                      -- the target exists now
        -- A damaged snapshot: a byte of one of its .log files flipped, in a
        -- copy of its own (its files are hard links the log shares until
        -- it writes them).  /verify says 422 CORRUPT, naming the file.
        local sm = assert(takhin.snapshot_manager(data_dir))
        local sdir = assert(sm:get(ids[2])).path
        sm:close()
        local damaged
        for _, f in ipairs(util.ls(sdir)) do
            if f:match("%.log$") and (util.file_size(sdir .. "/" .. f) or 0) > 40 then damaged = f; break end
        end
        assert(damaged, "snapshot " .. ids[2] .. " has no .log file")
        local path = sdir .. "/" .. damaged
        assert(util.sh("cp -p " .. q(path) .. " " .. q(path .. ".copy") .. " && mv " .. q(path .. ".copy")
                       .. " " .. q(path)), "cannot copy " .. path)
        util.flip_byte(path, 40)
        status, body = http(port, "POST", "/verify?id=" .. ids[2])
        assert.are.equal(422, status, body)
        assert.are.equal("CORRUPT", cjson.decode(body).code)
        assert.truthy(body:find(damaged, 1, true), body)

        -- The manager's gauges, and the counters once more.
        texts = metrics_from_both(port)
        for w, text in pairs(texts) do
            assert.are.equal(2, sample(text, "takhin_snapshot_snapshots", 'manager="log"'), "worker " .. w)
            assert.are.equal(acked, sample(text, "takhin_log_appends_total"), "worker " .. w)
        end
        -- the restored copy is whole
        assert.is_true(stop_nginx(), "nginx did not stop on SIGQUIT")
        local r = assert(takhin.open_log({ dir = tmp .. "/restored/m1", readonly = true }))
        assert.are.equal(acked, r:high_water_mark())
        r:close()
        local bad = error_lines(server.error_log)
        assert.are.equal(0, #bad, "error log:\n" .. table.concat(bad, "\n"))
        local wl = {}
        for w, n in pairs(by_worker) do wl[#wl + 1] = ("worker %d: %d"):format(w, n) end
        table.sort(wl)
        print(("\n# openresty metrics: %d appends acknowledged (%s) = takhin_log_appends_total from "
               .. "both workers; promtool %s"):format(acked, table.concat(wl, ", "),
               promtool() and "check metrics: ok" or "not installed"))
    end)

    -- make openresty-demo PORT=... starts the example in one command; an
    -- append and /metrics answer; make openresty-demo-stop stops nginx.
    it("starts with `make openresty-demo PORT=...` and stops with `make openresty-demo-stop`", function()
        if not env then
            pending("skipped: " .. why)
            return
        end
        -- As root the demo's workers run as nobody: its directory must be
        -- reachable by them (tmpdir's is 0700).
        util.sh("chmod 755 " .. q(tmp))
        local dir = tmp .. "/demo"
        local started, out, port
        for _ = 1, 5 do
            port = free_port()
            out = util.capture(ENV .. "make -s -C " .. q(root) .. " openresty-demo PORT=" .. port
                               .. " OPENRESTY_DEMO_DIR=" .. q(dir) .. " 2>&1; echo \"rc=$?\"")
            started = out:match("rc=0%s*$")
            if started or not out:find("in use", 1, true) then break end
        end
        local master = read_pid(dir .. "/nginx.pid")
        if master then
            server = { master = master, workers = children_of(master), prefix = dir }
            watchdog(master, dir)
        end
        assert(started, "make openresty-demo failed:\n" .. out .. tail(dir .. "/error.log"))
        assert.truthy(out:find("http://127.0.0.1:" .. port, 1, true), out)
        assert.truthy(out:find("make openresty-demo-stop", 1, true), out)
        local status, body = http(port, "POST", "/append?key=demo")
        assert.are.equal(200, status, body)
        assert.are.equal(0, json_int(body, "offset"))
        status, body = http(port, "GET", "/metrics")
        assert.are.equal(200, status, body)
        assert.truthy(body:find('\ntakhin_log_appends_total{log="log"} 1\n', 1, true), body)
        if util.capture("id -u"):match("^0") then
            -- workers as nobody, the log theirs
            -- (read from /proc: a `ps` started under make test-asan's
            -- LD_PRELOAD can deadlock in the sanitizer's start-up)
            for _, w in ipairs(children_of(master)) do
                local status_text = util.read_file(("/proc/%d/status"):format(w)) or ""
                local uid = status_text:match("\nUid:%s+(%d+)")
                assert.are.equal("65534", uid, "worker " .. w .. " (nobody is uid 65534)")
            end
        end
        local stopped = util.capture(ENV .. "make -s -C " .. q(root) .. " openresty-demo-stop OPENRESTY_DEMO_DIR="
                                     .. q(dir) .. " 2>&1; echo \"rc=$?\"")
        assert.truthy(stopped:match("rc=0%s*$"), stopped)
        assert.is_false(util.alive(master), "nginx " .. master .. " still runs after openresty-demo-stop")
        server.master = nil
        assert.truthy(util.exists(dir .. "/data/00000000000000000000.log"))
        print("\n# openresty demo: " .. (out:match("^[^\n]*") or "") .. " / " .. (stopped:match("^[^\n]*") or ""))
    end)
end)
