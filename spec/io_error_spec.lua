-- The outside world failing: directories the user may not write, files it
-- may not read, snapshot directories removed behind a manager's back.
-- Every failure is `nil, message, CODE` naming the path or id, never a
-- crash or a raise, and the log itself keeps working.
--
-- root ignores file modes, so each test runs its takhin calls in a lua5.4
-- child as nobody (setpriv); the child notes what every call returned in a
-- report file that the spec then loads and checks.  A child that crashes
-- or raises fails the test with its output.

local takhin = require("takhin")
local util = require("helpers.util")

local NOBODY, no_nobody = util.nobody_prefix()
local BUILD = os.getenv("TAKHIN_BUILD")
if BUILD == nil or BUILD == "" then BUILD = "build" end

-- Prepended to every child.  note(name, ...) writes what a call returned
-- as `R[name] = { n = ..., [1] = ..., ... }` to the report (arg[1]); values
-- other than strings, numbers and booleans are written as "<type>".
-- try(name, f, ...) notes f's results, or nil, "raised: ...", "RAISED".
-- The children run on Lua 5.4 and on LuaJIT: there %q quotes numbers,
-- booleans and nil as strings, table.pack and table.unpack are missing,
-- and os.execute returns a number.
local PRELUDE = [[
local takhin = require("takhin")
local report = assert(io.open(arg[1], "w"))
local pack = table.pack or function(...) return { n = select("#", ...), ... } end
local unpack = table.unpack or unpack
local function literal(v)
    if math.type or type(v) == "string" then return ("%q"):format(v) end
    if type(v) == "number" then return ("%.17g"):format(v) end
    return tostring(v)
end
local function note(name, ...)
    local parts = { ("n = %d"):format(select("#", ...)) }
    for i = 1, select("#", ...) do
        local v = select(i, ...)
        local t = type(v)
        if t ~= "nil" and t ~= "string" and t ~= "number" and t ~= "boolean" then v = "<" .. t .. ">" end
        parts[#parts + 1] = ("[%d] = %s"):format(i, literal(v))
    end
    report:write(("R[%q] = { %s }\n"):format(name, table.concat(parts, ", ")))
    report:flush()
end
local function try(name, f, ...)
    local r = pack(pcall(f, ...))
    if r[1] then note(name, unpack(r, 2, r.n))
    else note(name, nil, "raised: " .. tostring(r[2]), "RAISED") end
end
local function sh(cmd) local r = os.execute(cmd); assert(r == true or r == 0, cmd) end
local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
]]

local CODES = {
    NOT_FOUND = true, OUT_OF_RANGE = true, LOCKED = true, CORRUPT = true, EXISTS = true,
    NOT_EMPTY = true, TOO_SOON = true, INVALID = true, NOSPC = true, READONLY = true, IO = true,
}

-- r (what a child noted) is a failure: nil, a message that names `path`
-- (when given; a list: any one of them), and a code from codes.
local function assert_failed(r, codes, path)
    assert.is_table(r, "the child noted nothing for this call")
    assert.is_nil(r[1], "expected a failure, got " .. tostring(r[1]))
    assert.is_string(r[2])
    assert.truthy(codes[r[3]], "code " .. tostring(r[3]) .. ": " .. r[2])
    if path then
        local any = type(path) == "table" and path or { path }
        local named = false
        for _, p in ipairs(any) do named = named or r[2]:find(p, 1, true) ~= nil end
        assert.is_true(named, "'" .. table.concat(any, "' or '") .. "' is not named in: " .. r[2])
    end
    return r[2]
end

-- r is either a success or a failure as assert_failed describes.
local function assert_ok_or_failed(r, path)
    assert.is_table(r, "the child noted nothing for this call")
    if r[1] ~= nil then return end
    assert_failed(r, CODES, path)
end

local function codes(...)
    local set = {}
    for _, c in ipairs({ ... }) do set[c] = true end
    return set
end

describe("I/O errors seen by an unprivileged user", function()
    local tmp, seq

    before_each(function()
        tmp = util.tmpdir()
        seq = 0
        assert(util.sh("chown 65534:65534 " .. util.q(tmp)))
    end)
    after_each(function()
        util.rmtree(tmp)
    end)

    -- Runs source (after PRELUDE) as nobody; returns the report's table.
    local function as_nobody(source, args)
        seq = seq + 1
        local report = ("%s/report%d.lua"):format(tmp, seq)
        local out, ok = util.run_lua_as(NOBODY, tmp, PRELUDE .. source, { report, util.unpack(args or {}) })
        assert.is_true(ok, "the child did not run to its end (crash or raise):\n" .. out)
        local R = {}
        assert(load(util.read_file(report), "=report", "t", { R = R }))()
        return R, out
    end

    local function skip()
        local why = no_nobody
        local so = BUILD .. "/takhin/core.so"
        if NOBODY and not util.sh(NOBODY .. " test -w " .. util.q(tmp) .. " -a -r " .. util.q(so) .. " 2>/dev/null") then
            why = "nobody cannot reach " .. tmp .. " or " .. so .. " (set TMPDIR to a directory every user can reach)"
        end
        if NOBODY and not why then return false end
        pending("cannot run a child as nobody: " .. why)
        return true
    end

    -- A log written by this (root) process, then handed to nobody.
    local function make_log(dir, n, opts)
        local o = { dir = dir }
        for k, v in pairs(opts or {}) do o[k] = v end
        local log = assert(takhin.open_log(o))
        for i = 0, n - 1 do assert.are.equal(i, log:append("k" .. i, ("value-%03d"):format(i) .. ("x"):rep(60), i)) end
        local segs = log:segments()
        log:close()
        assert(util.sh("chown -R 65534:65534 " .. util.q(dir)))
        return segs
    end

    local function listing(dir)
        return util.capture("cd " .. util.q(dir) .. " && find . | sort")
    end

    it("refuses a writer on a log directory it cannot write, naming the path; read-only handles still read it", function()
        if skip() then return end
        local dir, parent = tmp .. "/log", tmp .. "/ro"
        make_log(dir, 5)
        assert(util.sh("chmod -R a-w " .. util.q(dir)))
        assert(util.sh("mkdir " .. util.q(parent) .. " && chown 65534:65534 " .. util.q(parent)
            .. " && chmod 0555 " .. util.q(parent)))
        local before = listing(dir) .. listing(parent)

        local R = as_nobody([[
            local dir, new = arg[2], arg[3]
            local log, msg, code = takhin.open_log({ dir = dir })
            note("writer", log, msg, code)
            if log then log:close() end
            local ro
            ro, msg, code = takhin.open_log({ dir = dir, readonly = true })
            note("readonly", ro, msg, code)
            if ro then
                note("hwm", ro:high_water_mark())
                for o = 0, ro:high_water_mark() - 1 do
                    local rec, m, c = ro:read(o)
                    note("read" .. o, rec and rec.value, m, c)
                end
                note("append", ro:append("k", "v"))
                ro:close()
            end
            note("new", takhin.open_log({ dir = new }))
            note("new_readonly", takhin.open_log({ dir = new, readonly = true }))
            note("manager", takhin.snapshot_manager(dir))
        ]], { dir, parent .. "/new" })

        local msg = assert_failed(R.writer, codes("IO"), dir)
        assert.truthy(msg:find("Permission denied", 1, true), msg)
        assert.are.equal("<userdata>", R.readonly[1], R.readonly[2])
        assert.are.equal(5, R.hwm[1])
        for o = 0, 4 do assert.are.equal(("value-%03d"):format(o) .. ("x"):rep(60), R["read" .. o][1]) end
        assert_failed(R.append, codes("READONLY"), dir)
        msg = assert_failed(R.new, codes("IO"), parent .. "/new")
        assert.truthy(msg:find("Permission denied", 1, true), msg)
        assert_failed(R.new_readonly, codes("NOT_FOUND"), parent .. "/new")
        assert_failed(R.manager, codes("IO"), dir)
        -- Nothing was created or removed.
        assert.are.equal(before, listing(dir) .. listing(parent))
    end)

    it("fails reads of a sealed segment it cannot read, naming the file; the other segments still read and the log appends", function()
        if skip() then return end
        local dir = tmp .. "/log"
        local segs = make_log(dir, 20, { max_segment_size = 300 })
        assert.is_true(#segs >= 4)
        local bad = segs[2]
        local bad_file = dir .. "/" .. util.segment_name(bad.base_offset, "log")
        assert(util.sh("chmod 000 " .. util.q(bad_file)))

        local R = as_nobody([[
            local dir = arg[2]
            local log, msg, code = takhin.open_log({ dir = dir })
            note("writer", log, msg, code)
            if not log then return end
            for o = 0, log:high_water_mark() - 1 do
                local rec, m, c = log:read(o)
                note("read" .. o, rec and rec.value, m, c)
            end
            local n = 0
            note("iterate", pcall(function() for _ in log:records() do n = n + 1 end end))
            note("iterated", n)
            note("append", log:append("k20", "after"))
            note("read20", log:read(20).value)
            local ro = assert(takhin.open_log({ dir = dir, readonly = true }))
            for o = 0, ro:high_water_mark() - 1 do
                local rec, m, c = ro:read(o)
                note("ro" .. o, rec and rec.value, m, c)
            end
            ro:close()
            -- A copy snapshot must read the segment: it fails and leaves nothing.
            local sm = assert(takhin.snapshot_manager(dir, { mode = "copy" }))
            local snap
            snap, msg, code = sm:create(log)
            note("snapshot", snap and snap.id, msg, code)
            note("list", #assert(sm:list()))
            sm:close()
            log:close()
        ]], { dir })

        assert.are.equal("<userdata>", R.writer[1], R.writer[2])
        for _, prefix in ipairs({ "read", "ro" }) do
            for o = 0, 19 do
                local r = R[prefix .. o]
                if o >= bad.base_offset and o < bad.next_offset then
                    local msg = assert_failed(r, codes("IO"), bad_file)
                    assert.truthy(msg:find("Permission denied", 1, true), msg)
                else
                    assert.are.equal(("value-%03d"):format(o) .. ("x"):rep(60), r[1], r[2])
                end
            end
        end
        assert.is_false(R.iterate[1])
        assert.truthy(R.iterate[2]:find(bad_file, 1, true), R.iterate[2])
        assert.are.equal(bad.base_offset, R.iterated[1])
        assert.are.equal(20, R.append[1], R.append[2])
        assert.are.equal("after", R.read20[1])
        assert_failed(R.snapshot, codes("IO"), bad_file)
        assert.are.equal(0, R.list[1])
        for _, name in ipairs(util.ls(dir .. "/.snapshots")) do
            assert.is_nil(name:match("^%.tmp%-"), "left behind: " .. name)
        end
        -- The file itself was left as it was.
        assert(util.sh("chmod 644 " .. util.q(bad_file)))
        local log = assert(takhin.open_log({ dir = dir, readonly = true }))
        assert.are.equal(("value-%03d"):format(bad.base_offset) .. ("x"):rep(60), log:read(bad.base_offset).value)
        log:close()
    end)

    it("reports a snapshot directory removed behind a manager's back as an error naming it, and leaves the log alone", function()
        if skip() then return end
        local dir = tmp .. "/log"
        local R = as_nobody([[
            local dir, target = arg[2], arg[3]
            local log = assert(takhin.open_log({ dir = dir, max_segment_size = 300 }))
            for i = 0, 9 do log:append("k" .. i, "v" .. i) end
            local sm = assert(takhin.snapshot_manager(dir))
            local s1 = assert(sm:create(log))
            note("s1", s1.id)
            sh("rm -rf " .. q(sm:dir()))
            local function first(f) return function(...) local v, m, c = f(...); return v and true, m, c end end
            try("list", first(sm.list), sm)
            try("latest", first(sm.latest), sm)
            try("create", first(sm.create), sm, log)
            try("get", first(sm.get), sm, s1.id)
            try("verify", sm.verify, sm, s1.id)
            try("restore", sm.restore, sm, s1.id, target)
            try("delete", sm.delete, sm, s1.id)
            try("size", sm.size, sm)
            try("cleanup", first(sm.cleanup), sm, { max_snapshots = 1 })
            -- The log does not care.
            note("append", log:append("k10", "v10"))
            local values = {}
            for rec in log:records() do values[#values + 1] = rec.value end
            note("values", table.concat(values, ","))
            -- A new manager starts a new directory.
            local sm2, m, c = takhin.snapshot_manager(dir)
            note("manager2", sm2, m, c)
            if sm2 then
                try("create2", function() local s = assert(sm2:create(log)); return s.high_water_mark end)
                try("verify2", function() return sm2:verify(sm2:latest().id) end)
            end
            log:close()
        ]], { dir, tmp .. "/target" })

        local snapdir = dir .. "/.snapshots"
        for _, op in ipairs({ "list", "latest", "create", "size", "cleanup" }) do
            assert_ok_or_failed(R[op], snapdir)
        end
        for _, op in ipairs({ "get", "verify", "restore", "delete" }) do
            assert_ok_or_failed(R[op], { snapdir, R.s1[1] })
        end
        assert.is_false(util.exists(tmp .. "/target"))
        assert.are.equal(10, R.append[1], R.append[2])
        assert.are.equal("v0,v1,v2,v3,v4,v5,v6,v7,v8,v9,v10", R.values[1])
        assert.are.equal("<userdata>", R.manager2[1], R.manager2[2])
        assert.are.equal(11, R.create2[1], R.create2[2])
        assert.is_true(R.verify2[1], R.verify2[2])
    end)

    it("reports a snapshot whose directory was deleted by hand as NOT_FOUND or CORRUPT naming it; the next manager fixes the catalog", function()
        if skip() then return end
        local dir, target1, target2 = tmp .. "/log", tmp .. "/target1", tmp .. "/target2"
        local R = as_nobody([[
            local dir, target1, target2 = arg[2], arg[3], arg[4]
            local log = assert(takhin.open_log({ dir = dir, max_segment_size = 300 }))
            for i = 0, 9 do log:append("k" .. i, "v" .. i) end
            local sm = assert(takhin.snapshot_manager(dir))
            local s1 = assert(sm:create(log))
            for i = 10, 14 do log:append("k" .. i, "v" .. i) end
            local s2 = assert(sm:create(log))
            log:close()
            note("ids", s1.id, s2.id)
            sh("rm -rf " .. q(s1.path))
            -- The next manager, before anything else runs.
            local sm2 = assert(takhin.snapshot_manager(dir))
            local f = assert(io.open(sm2:dir() .. "/snapshots.json", "rb"))
            local catalog = f:read("a")
            f:close()
            note("catalog", catalog:find(s1.id, 1, true) ~= nil, catalog:find(s2.id, 1, true) ~= nil)
            local function first(fn) return function(...) local v, m, c = fn(...); return v and true, m, c end end
            local function ids(l) local t = {} for i, s in ipairs(l) do t[i] = s.id end return table.concat(t, ",") end
            for name, m in pairs({ old = sm, new = sm2 }) do
                try(name .. "_get", first(m.get), m, s1.id)
                try(name .. "_verify", m.verify, m, s1.id)
                try(name .. "_restore", m.restore, m, s1.id, target1)
                try(name .. "_get2", function() return m:get(s2.id).high_water_mark end)
                try(name .. "_verify2", m.verify, m, s2.id)
                try(name .. "_list", function() return ids(assert(m:list())) end)
            end
            try("delete", sm.delete, sm, s1.id)
            try("restore2", sm2.restore, sm2, s2.id, target2)
            local r = assert(takhin.open_log({ dir = target2, readonly = true }))
            note("restored", r:high_water_mark(), r:read(14).value)
            r:close()
        ]], { dir, target1, target2 })

        local s1, s2 = R.ids[1], R.ids[2]
        assert.are.same({ n = 2, false, true }, R.catalog)
        for _, m in ipairs({ "old", "new" }) do
            for _, op in ipairs({ "get", "verify", "restore" }) do
                assert_failed(R[m .. "_" .. op], codes("NOT_FOUND", "CORRUPT"), s1)
            end
            assert.are.equal(15, R[m .. "_get2"][1], R[m .. "_get2"][2])
            assert.is_true(R[m .. "_verify2"][1], R[m .. "_verify2"][2])
            assert.are.equal(s2, R[m .. "_list"][1], R[m .. "_list"][2])
        end
        assert_failed(R.delete, codes("NOT_FOUND"), s1)
        assert.is_false(util.exists(target1))
        for _, name in ipairs(util.ls(tmp)) do
            assert.is_nil(name:match("^%.target1%."), "left behind: " .. name)
        end
        assert.is_true(R.restore2[1], R.restore2[2])
        assert.are.same({ n = 2, 15, "v14" }, R.restored)
        assert.is_nil(util.read_file(dir .. "/.snapshots/snapshots.json"):find(s1, 1, true))
    end)
end)
