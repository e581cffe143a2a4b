--- takhin.cli.common: what every command module of the `takhin` command
-- uses -- its two ways to fail and the opening of logs and snapshot
-- managers that are closed when the command ends.
--
-- A command runs with a context c = { out =, err =, stdin =, isatty =,
-- json =, defer = {...} } (takhin.cli builds it); functions in c.defer run
-- when the command ends, however it ends.
local M = {}

-------------------------------------------------------------------------
-- Failures
-------------------------------------------------------------------------

-- Both are raised as tables and caught by takhin.cli.main: a usage error
-- exits 2, a failed operation 1.

--- Raise a usage error (exit status 2).
function M.usage_error(msg)
    error({ usage = true, msg = msg }, 0)
end

--- Raise a failed operation (exit status 1): "takhin CMD: msg (code)" on
-- stderr, then each line of `notes` (a list, optional) on a line of its own.
function M.fail(msg, code, notes)
    error({ fail = true, msg = msg, code = code, notes = notes }, 0)
end

--- Turn the library's `nil, msg, code` into a failure; pass anything else.
function M.check(v, msg, code, ...)
    if v == nil then M.fail(msg, code) end
    return v, msg, code, ...
end

--- msg, beginning with `path: ` unless it names path already (the
-- library's messages about cursor names, say, name no path).
function M.naming(path, msg)
    if tostring(msg):find(path, 1, true) then return msg end
    return ("%s: %s"):format(path, tostring(msg))
end

-------------------------------------------------------------------------
-- Interrupts
-------------------------------------------------------------------------

--- True when e is the error the interpreter raises on SIGINT (Ctrl-C):
-- lua.c and luajit.c set a hook that raises "interrupted!" as soon as Lua
-- code runs again.  takhin.cli reports it as a failure ("interrupted").
function M.is_interrupt(e)
    return type(e) == "string" and e:find("interrupted!$") ~= nil
end

--- Call f(...) until it returns or Ctrl-C interrupts it: true when it
-- returned, false when interrupted.  Its other errors go on up.
function M.until_interrupted(f, ...)
    local ok, e = xpcall(f, function(err)
        if type(err) == "table" or M.is_interrupt(err) then return err end
        return { internal = true, msg = debug.traceback(tostring(err), 2) }
    end, ...)
    if ok then return true end
    if M.is_interrupt(e) then return false end
    error(e, 0)
end

-------------------------------------------------------------------------
-- The library, logs and managers
-------------------------------------------------------------------------

--- The takhin module (a failure, not a traceback, when it cannot load).
function M.lib()
    local ok, t = pcall(require, "takhin")
    if not ok then M.fail("cannot load the takhin module: " .. tostring(t), "IO") end
    return t
end

-- True when the log handle `log`, opened on dir, has a segment file on
-- disk.  A read-only handle on a directory without segment files shows one
-- empty segment that has no file; a log always has its active segment's.
local function has_segment_files(log, dir)
    for _, s in ipairs(log:segments()) do
        local f = io.open(("%s/%020d.log"):format(dir, s.base_offset), "rb")
        if f then f:close(); return true end
    end
    return false
end

local NO_LOG = "%s: no takhin log there (no segment files)"

--- The log in dir, opened read-only and closed when the command ends.  A
-- directory that is missing or holds no segment file is NOT_FOUND: a
-- mistyped path is not an empty log.
function M.open_existing_log(c, dir)
    local log = M.check(M.lib().open_log{ dir = dir, readonly = true })
    c.defer[#c.defer + 1] = function() log:close() end
    if not has_segment_files(log, dir) then M.fail(NO_LOG:format(dir), "NOT_FOUND") end
    return log
end

--- Fail with NOT_FOUND unless dir holds a log, before a writer opens it
-- (a writer would start a new one); the messages end with `hint` (how to
-- make one), if given.
function M.require_log(dir, hint)
    local tail = hint and ("; " .. hint) or ""
    local log, msg, code = M.lib().open_log{ dir = dir, readonly = true }
    if not log then
        if code == "NOT_FOUND" then msg = msg .. tail end
        M.fail(msg, code)
    end
    local found = has_segment_files(log, dir)
    log:close()
    if not found then M.fail(NO_LOG:format(dir) .. tail, "NOT_FOUND") end
end

--- A writer on the log in dir, closed when the command ends.  opts: the
-- open_log options besides dir.
function M.open_writer(c, dir, opts)
    local o = { dir = dir }
    for k, v in pairs(opts or {}) do o[k] = v end
    local log = M.check(M.lib().open_log(o))
    c.defer[#c.defer + 1] = function() log:close() end
    return log
end

--- The snapshot manager of the log in dir (o.snapshot_dir, o.copy from the
-- command line), closed when the command ends.
function M.open_manager(c, dir, o)
    local sm = M.check(M.lib().snapshot_manager(dir, { dir = o.snapshot_dir, mode = o.copy and "copy" or nil }))
    c.defer[#c.defer + 1] = function() sm:close() end
    return sm
end

return M
