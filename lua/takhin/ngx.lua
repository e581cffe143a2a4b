--- takhin.ngx: waiting inside OpenResty without blocking nginx's event loop.
--
--   local job = assert(sm:verify(id, { async = true }))
--   local ok, msg, code = takhin.ngx.wait(job, "30s")     -- yields, never blocks
--
--   takhin.ngx.wait_log(log, offset, "5s")   -- until high_water_mark() > offset
--
-- Both poll with ngx.sleep, from 1 ms doubling up to 100 ms: a job or an
-- append never wakes an nginx worker directly (the engine's thread cannot
-- touch the worker's Lua state, and a futex wait would block the event
-- loop).  Why not ngx.run_worker_thread: it runs a Lua function in a
-- separate Lua VM of a thread pool, and only plain values cross (a
-- takhin.Log argument fails: "unsupported Lua type: LUA_TUSERDATA"), so
-- the job's objects (the log, the manager) would have to be opened again
-- there; a snapshot's cut would wait for a free pool thread, a queued call
-- cannot be canceled, and the pool's size caps how many run at once.
-- takhin's jobs already run off the event loop and only their completion
-- needs polling: at most 100 ms late, about ten wake-ups a second.  Runs
-- under LuaJIT in nginx; needs ngx.sleep (available in rewrite, access,
-- content and timer contexts).
local duration = require("takhin.duration")

local M = {}

local FIRST, MAX = 0.001, 0.1

local function deadline(what, timeout)
    if timeout == nil then return nil end
    local ms, err = duration.parse(timeout)
    if not ms then return nil, what .. ": timeout: " .. err end
    return ngx.now() + ms / 1000
end

local function poll(until_done, limit)
    local nap = FIRST
    while not until_done() do
        if limit and ngx.now() >= limit then return false end
        local left = limit and (limit - ngx.now()) or nap
        ngx.sleep(math.max(0.001, math.min(nap, left)))
        nap = math.min(nap * 2, MAX)
    end
    return true
end

--- takhin.ngx.wait(job [, timeout]) -> the job's results | false, "timeout"
function M.wait(job, timeout)
    local limit, err = deadline("wait", timeout)
    if err then return nil, err, "INVALID" end
    if not poll(function() return job:done() end, limit) then return false, "timeout" end
    return job:wait()
end

--- takhin.ngx.wait_log(log, offset [, timeout]) -> true | false, "timeout"
function M.wait_log(log, offset, timeout)
    local limit, err = deadline("wait_log", timeout)
    if err then return nil, err, "INVALID" end
    if not poll(function() return log:high_water_mark() > offset end, limit) then
        return false, "timeout"
    end
    return true
end

return M
