-- bench/redis.lua: a redis-server for the benches that compare with Redis
-- (follow_bench.lua, append_bench.lua), and a client speaking its
-- protocol (RESP) over lua-socket.  Loaded by path, after common.lua:
--
--     local C = dofile((arg[0]:match("^(.*)/") or ".") .. "/common.lua")
--     local Redis = dofile((arg[0]:match("^(.*)/") or ".") .. "/redis.lua")
--     local server = Redis.start(C, tmp, { "--appendonly", "no" })
--     if server.pid then
--         local c = Redis.resp.connect(server.port)
--         Redis.resp.call(c, "SET", "k", "v")
--     end
--     Redis.stop(C, server)
--
-- The server is Debian's redis-server, started on 127.0.0.1 at a free
-- port with no RDB snapshots, its files in the bench's temp dir, stopped
-- through its pid (SIGTERM, then SIGKILL) -- and by a watchdog shell
-- should the bench die first.  No client library to install, and no
-- redis-cli process per command, which would time a fork and exec
-- instead of Redis.

local M = {}

local has_socket = pcall(require, "socket")
local proc = require("helpers.proc")
local format = string.format

-------------------------------------------------------------------------
-- RESP over lua-socket.  M.RESP is the module's text, for child
-- processes to load (`load(M.RESP)()`) without a path to this file.
-------------------------------------------------------------------------

M.RESP = [=[
local socket = require("socket")
local resp = {}
function resp.connect(port)
    local c = assert(socket.tcp())
    assert(c:connect("127.0.0.1", port))
    c:setoption("tcp-nodelay", true)
    return c
end
local function read_reply(c)
    local line = assert(c:receive("*l"))
    local kind, rest = line:sub(1, 1), line:sub(2)
    if kind == "+" then return rest
    elseif kind == "-" then error("redis: " .. rest, 0)
    elseif kind == ":" then return tonumber(rest)
    elseif kind == "$" then
        local n = tonumber(rest)
        if n < 0 then return nil end
        return assert(c:receive(n + 2)):sub(1, n)
    elseif kind == "*" then
        local n = tonumber(rest)
        if n < 0 then return nil end
        local t = {}
        for i = 1, n do t[i] = read_reply(c) end
        return t
    end
    error("redis: unexpected reply " .. line, 0)
end
resp.read_reply = read_reply
-- One command in RESP: an array of bulk strings.
function resp.encode(...)
    local args, n = { ... }, select("#", ...)
    local parts = { "*" .. n .. "\r\n" }
    for i = 1, n do
        local a = tostring(args[i])
        parts[i + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n"
    end
    return table.concat(parts)
end
function resp.call(c, ...)
    assert(c:send(resp.encode(...)))
    return read_reply(c)
end
-- Pipelining: n commands already encoded and concatenated in one
-- string, sent at once; then their n replies, of which the last is
-- returned (an error reply raises).
function resp.pipeline(c, encoded, n)
    assert(c:send(encoded))
    local last
    for _ = 1, n do last = read_reply(c) end
    return last
end
return resp
]=]

M.resp = has_socket and load(M.RESP)() or nil

-------------------------------------------------------------------------
-- redis-server: started here, stopped by its pid
-------------------------------------------------------------------------

-- Stops a server M.start started (nothing when it did not start).
function M.stop(C, server)
    if not server.pid then return end
    local pid = format("%d", server.pid)
    C.sh("kill -TERM " .. pid .. " 2>/dev/null")
    local gone = false
    for _ = 1, 300 do
        if not proc.alive(server.pid) then gone = true break end
        C.sleep(0.01)
    end
    if not gone then C.sh("kill -KILL " .. pid .. " 2>/dev/null") end
    server.pid = nil
end

-- Starts redis-server on 127.0.0.1 at a free port, its files (pid file,
-- log, AOF) in dir, with `--save ''` and the options in args (a list of
-- words, quoted here).  Returns { pid =, port = } once it answers PING,
-- or { why = "..." } when it cannot run.
function M.start(C, dir, args)
    local bin = C.capture("PATH=\"$PATH:/usr/sbin:/sbin\" command -v redis-server 2>/dev/null"):gsub("%s+$", "")
    if bin == "" then return { why = "redis-server is not installed (make deps)" } end
    if not M.resp then return { why = "lua-socket is not installed (make deps)" } end
    local extra = {}
    for i, a in ipairs(args or {}) do extra[i] = C.q(a) end
    for attempt = 1, 5 do
        local port = C.free_port(proc.getpid(), attempt)
        local pidfile = dir .. "/redis.pid"
        os.remove(pidfile)
        local cmd = table.concat({
            C.q(bin), "--bind 127.0.0.1", "--port", format("%d", port), "--save ''",
            table.concat(extra, " "), "--dir", C.q(dir), "--logfile", C.q(dir .. "/redis.log"),
            "--daemonize yes", "--pidfile", C.q(pidfile),
        }, " ")
        if C.sh(cmd .. " </dev/null >/dev/null 2>&1") then
            local pid
            for _ = 1, 300 do
                local f = io.open(pidfile, "r")
                if f then pid = tonumber((f:read("a") or ""):match("%d+")); f:close() end
                if pid then break end
                C.sleep(0.01)
            end
            if pid then
                local server = { pid = pid, port = port }
                -- a watchdog: should the bench die first, it stops redis
                -- (redis names itself "redis-server 127.0.0.1:PORT")
                local me, p = format("%d", proc.getpid()), format("%d", pid)
                C.sh("sh -c " .. C.q("while kill -0 " .. me .. " 2>/dev/null && kill -0 " .. p
                     .. " 2>/dev/null; do sleep 1; done; grep -qF " .. C.q("127.0.0.1:" .. port)
                     .. " /proc/" .. p .. "/cmdline 2>/dev/null && kill -TERM " .. p)
                     .. " </dev/null >/dev/null 2>&1 &")
                for _ = 1, 300 do
                    local ok, c = pcall(M.resp.connect, port)
                    if ok then
                        local pong = M.resp.call(c, "PING")
                        c:close()
                        if pong == "PONG" then return server end
                    end
                    C.sleep(0.01)
                end
                M.stop(C, server)
            end
        end
    end
    return { why = "redis-server did not start (see its log in the temp dir)" }
end

-- "7.0.15" (INFO server's redis_version), or "?".
function M.version(server)
    local c = M.resp.connect(server.port)
    local info = M.resp.call(c, "INFO", "server")
    c:close()
    return info:match("redis_version:([%w%.]+)") or "?"
end

return M
