-- Processes sharing a log: one writer (flock on <dir>/.lock), any number
-- of read-only handles that follow what the writer appends.

local takhin = require("takhin")
local util = require("helpers.util")
local logs = require("helpers.log")
require("helpers.assertions")

local open = logs.open

-- A child that tries to open the log as a writer and prints the outcome
-- as three lines: "opened" or "nil", the message, the code.
local TRY_WRITER = [[
local takhin = require("takhin")
local log, msg, code = takhin.open_log({ dir = arg[1] })
if log then
    local o = log:append("child", arg[2] or "from a child")
    io.write("opened\n", tostring(o), "\n", "nil\n")
    log:close()
else
    io.write("nil\n", tostring(msg), "\n", tostring(code), "\n")
end
]]

local function try_writer(tmp, dir, value)
    local out, ok = util.run_lua(tmp, TRY_WRITER, { dir, value })
    assert.is_true(ok, out)
    local lines = {}
    for line in out:gmatch("([^\n]*)\n") do lines[#lines + 1] = line end
    return lines[1], lines[2], lines[3], out
end

describe("a log shared between processes", function()
    local tmp, dir, pid

    before_each(function()
        tmp = util.tmpdir()
        dir = tmp .. "/log"
        pid = nil
    end)
    after_each(function()
        util.stop(pid)
        collectgarbage(); collectgarbage()
        util.rmtree(tmp)
    end)

    describe("writer lock", function()
        it("refuses a second writer in another process with LOCKED, naming the holder's pid", function()
            local log = open({ dir = dir })
            log:append("k", "v")
            local me = util.getpid()
            local status, msg, code, out = try_writer(tmp, dir)
            assert.are.equal("nil", status, out)
            assert.are.equal("LOCKED", code, out)
            assert.truthy(msg:find(tostring(me), 1, true), msg)
            assert.are.equal("pid " .. me .. "\n", util.read_file(dir .. "/.lock"))
            assert.are.equal(1, log:high_water_mark())
            log:close()
        end)

        it("refuses a second writer in the same process with LOCKED", function()
            local log = open({ dir = dir })
            local msg = assert.fails_with("LOCKED", takhin.open_log({ dir = dir }))
            assert.truthy(msg:find(tostring(util.getpid()), 1, true), msg)
            log:append("k", "still mine")
            assert.are.equal("still mine", log:read(0).value)
            log:close()
        end)

        it("lets another process write once the writer has closed", function()
            local log = open({ dir = dir })
            log:append("parent", "first")
            log:close()
            local status, offset, _, out = try_writer(tmp, dir, "second")
            assert.are.equal("opened", status, out)
            assert.are.equal("1", offset, out)
            log = open({ dir = dir })
            assert.are.equal(2, log:high_water_mark())
            assert.are.equal("second", log:read(1).value)
            assert.are.equal("child", log:read(1).key)
            log:close()
        end)

        it("is released when the writer process is killed", function()
            local ready, never = tmp .. "/ready", tmp .. "/never"
            -- The child blocks opening a FIFO nobody writes to.  It must not
            -- sit in a loop of os.execute: a forked child holds a copy of
            -- the lock's descriptor until it execs, and would keep the lock
            -- for a moment after the kill.
            assert.is_true(util.sh("mkfifo " .. util.q(never)))
            local out
            pid, out = util.spawn_lua(tmp, [[
                local takhin = require("takhin")
                local log = assert(takhin.open_log({ dir = arg[1] }))
                log:append("k", "held")
                local f = assert(io.open(arg[2], "w")); f:write("ready\n"); f:close()
                io.open(arg[3], "r")
            ]], { dir, ready, never })
            util.wait_for_content(ready, "ready")
            assert.are.equal("ready\n", util.read_file(ready) or "", util.read_file(out))
            local msg = assert.fails_with("LOCKED", takhin.open_log({ dir = dir }))
            assert.truthy(msg:find(tostring(pid), 1, true), msg)
            util.kill9(pid)
            assert.is_true(util.wait_exit(pid))
            local log = open({ dir = dir })
            assert.are.equal("held", log:read(0).value)
            log:close()
        end)
    end)

    describe("LOCKED", function()
        it("names the shared writers that hold the log, never a writer that has exited", function()
            -- An exclusive writer in a child opens, appends, closes and
            -- exits: its pid stays written in .lock.
            local out, ok = util.run_lua(tmp, [[
                local takhin = require("takhin")
                local proc = require("helpers.proc")
                local log = assert(takhin.open_log({ dir = arg[1] }))
                assert(log:append("exited", "writer"))
                log:close()
                io.write("pid ", proc.getpid(), "\n")
            ]], { dir })
            assert.is_true(ok, out)
            local exited = out:match("pid (%d+)")
            assert(exited, out)
            assert.truthy(util.read_file(dir .. "/.lock"):find("pid " .. exited, 1, true),
                          "the exited writer's pid is not in .lock: this test needs it there")
            assert.is_false(util.alive(tonumber(exited)))

            -- A shared writer in another child stays open until told to stop.
            local report, stop = tmp .. "/report", tmp .. "/stop"
            local shared_out
            pid, shared_out = util.spawn_lua(tmp, [[
                local takhin = require("takhin")
                local proc = require("helpers.proc")
                local say = proc.reporter(arg[2])
                local log, msg, code = takhin.open_log({ dir = arg[1], shared = true })
                if not log then say("error", msg, code); os.exit(1) end
                local o = log:append("shared", "writer")
                say("ready", proc.getpid(), o)
                proc.wait_for_file(arg[3], 3000)
                log:close()
                say("done")
            ]], { dir, report, stop })
            local text = util.wait_for_content(report, "ready", 3000) or ""
            assert.truthy(text:find("ready", 1, true), text .. (util.read_file(shared_out) or ""))
            assert.are.equal(tostring(pid), text:match("ready\t(%d+)"))
            assert.are.equal("1", text:match("ready\t%d+\t(%d+)"))

            local msg = assert.fails_with("LOCKED", takhin.open_log({ dir = dir }))
            assert.truthy(msg:find("shared writers (pid " .. pid .. ")", 1, true), msg)
            for number in msg:gmatch("%d+") do
                assert.are_not.equal(exited, number, "LOCKED names the exited writer: " .. msg)
            end

            util.write_file(stop, "stop\n")
            assert.is_true(util.wait_exit(pid, 3000), "the shared writer did not stop")
            assert.truthy((util.read_file(report) or ""):find("done", 1, true), util.read_file(shared_out))
            local log = open({ dir = dir })
            assert.are.equal(2, log:high_water_mark())
            assert.are.equal("writer", log:read(1).value)
            log:close()
        end)
    end)

    describe("read-only handle", function()
        it("in another process sees what the writer appended, then what it appends later", function()
            local opts = { dir = dir, max_segment_size = 200, index_interval_bytes = 50 }
            local log = open(opts)
            local function value(i) return ("value-%d-"):format(i) .. ("z"):rep(30) end
            for i = 0, 2 do log:append("k" .. i, value(i), i) end

            local report, go = tmp .. "/report", tmp .. "/go"
            local out
            pid, out = util.spawn_lua(tmp, [[
                local takhin = require("takhin")
                local util = require("helpers.util")
                local dir, report_path, go_path, want = arg[1], arg[2], arg[3], tonumber(arg[4])
                local say = util.reporter(report_path)
                local ro, msg, code = takhin.open_log({ dir = dir, readonly = true })
                if not ro then say("error", msg, code); os.exit(1) end
                say("hwm", ro:high_water_mark())
                for rec in ro:records() do say("rec", rec.offset, rec.value) end
                say("ready")
                util.wait_for_file(go_path, 3000)
                util.wait_until(function() return ro:high_water_mark() >= want end, 3000)
                say("hwm", ro:high_water_mark())
                say("segments", ro:num_segments())
                for o = 0, ro:high_water_mark() - 1 do
                    local rec, m, c = ro:read(o)
                    if rec then say("read", o, rec.value) else say("read", o, "error", m, c) end
                end
                local r, m, c = ro:append("k", "v")
                say("append", r, c)
                ro:close()
                say("done")
            ]], { dir, report, go, 8 })

            local first = util.wait_for_content(report, "ready\n")
            assert.truthy(first and first:find("ready\n", 1, true), (first or "") .. util.read_file(out))
            assert.are.equal(table.concat({
                "hwm\t3",
                "rec\t0\t" .. value(0),
                "rec\t1\t" .. value(1),
                "rec\t2\t" .. value(2),
                "ready", "" }, "\n"), first)

            log:append("k3", value(3), 3)
            log:append_batch({
                { key = "k4", value = value(4), timestamp = 4 },
                { key = "k5", value = value(5), timestamp = 5 },
            })
            for i = 6, 7 do log:append("k" .. i, value(i), i) end
            assert.is_true(log:num_segments() >= 4)
            util.write_file(go, "go\n")

            local all = util.wait_for_content(report, "done\n")
            assert.truthy(all and all:find("done\n", 1, true), (all or "") .. util.read_file(out))
            local rest = all:sub(#first + 1)
            local want = { "hwm\t8", "segments\t" .. log:num_segments() }
            for i = 0, 7 do want[#want + 1] = ("read\t%d\t%s"):format(i, value(i)) end
            want[#want + 1] = "append\tnil\tREADONLY"
            want[#want + 1] = "done"
            want[#want + 1] = ""
            assert.are.equal(table.concat(want, "\n"), rest)
            log:close()
        end)

        it("takes no lock: a writer opens while it is open", function()
            open({ dir = dir }):close()
            local ro = open({ dir = dir, readonly = true })
            local w = open({ dir = dir })
            w:append("k", "v")
            assert.are.equal(1, ro:high_water_mark())
            assert.are.equal("v", ro:read(0).value)
            w:close()
            ro:close()
        end)

        it("refuses writes with READONLY", function()
            local w = open({ dir = dir })
            w:append("k", "v")
            local ro = open({ dir = dir, readonly = true })
            assert.fails_with("READONLY", ro:append("k", "v"))
            assert.fails_with("READONLY", ro:append_batch({ { value = "v" } }))
            assert.fails_with("READONLY", ro:truncate(0))
            assert.are.equal(1, w:high_water_mark())
            assert.are.equal(1, ro:high_water_mark())
            assert.are.equal("v", ro:read(0).value)
            ro:close()
            w:close()
            -- Without a writer present, too.
            ro = open({ dir = dir, readonly = true })
            assert.fails_with("READONLY", ro:append("k", "v"))
            assert.fails_with("READONLY", ro:truncate(1))
            ro:close()
            w = open({ dir = dir })
            assert.are.equal(1, w:high_water_mark())
            w:close()
        end)
    end)
end)
