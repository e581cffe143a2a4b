-- The `takhin` command: bin/takhin run as a real process, the way people
-- and scripts use it.  Logs are prepared (and checked) through the Lua
-- API; the command's text output, its --json output (parsed with cjson,
-- big integers checked digit by digit) and its exit status are checked:
-- 0 success, 1 the operation failed, 2 usage error.

local cjson = require("cjson")
local takhin = require("takhin")
local cli = require("takhin.cli")
local util = require("helpers.util")

local q = util.q
local ROOT = util.capture("pwd"):gsub("%s+$", "")

-------------------------------------------------------------------------
-- Running the command
-------------------------------------------------------------------------

local function env_path(name, default)
    local v = os.getenv(name)
    if v == nil or v == "" then v = default end
    return v
end

-- The command is a Lua 5.4 program: it runs under lua5.4 and the build of
-- takhin for it, also when the specs run under LuaJIT (util.lua54_bin).
local LUA_PATH = env_path("LUA_PATH", "lua/?.lua;lua/?/init.lua;spec/?.lua;;")
local LUA_CPATH = util.lua54_cpath()
local LUA54, BUILD54 = util.lua54_bin(), util.lua54_build()

-- `make test-asan` preloads the sanitizer runtime: the command needs it
-- (it loads the sanitized core.so), other tools (script) do not.
local PRELOAD = os.getenv("LD_PRELOAD") or ""

local tmp                                   -- per-test directory
local seq = 0

-- Run the command; returns stdout, stderr and the exit status.
-- opts.stdin: text fed to it.  opts.plain: run the executable itself from
-- /, with no LUA_PATH/LUA_CPATH (its own path setup).  opts.lua_plain: the
-- same through `lua5.4 <ROOT>/bin/takhin`.  TAKHIN_BUILD always names the
-- build for lua5.4, which bin/takhin puts first on its C path.
local function command_line(args, opts)
    opts = opts or {}
    local parts
    if opts.plain or opts.lua_plain then
        parts = { "cd / && env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4",
            "LD_PRELOAD=" .. q(PRELOAD), "TAKHIN_BUILD=" .. q(BUILD54) }
        if opts.lua_plain then parts[#parts + 1] = q(LUA54) end
        parts[#parts + 1] = q(ROOT .. "/bin/takhin")
    else
        parts = { "cd", q(ROOT), "&&", "env", "LD_PRELOAD=" .. q(PRELOAD), "TAKHIN_BUILD=" .. q(BUILD54),
            "LUA_PATH=" .. q(LUA_PATH), "LUA_PATH_5_4=" .. q(LUA_PATH),
            "LUA_CPATH=" .. q(LUA_CPATH), "LUA_CPATH_5_4=" .. q(LUA_CPATH),
            q(LUA54), "bin/takhin" }
    end
    for _, a in ipairs(args) do parts[#parts + 1] = q(a) end
    return table.concat(parts, " ")
end

local function takhin_cmd(args, opts)
    opts = opts or {}
    seq = seq + 1
    local out, err = ("%s/out.%d"):format(tmp, seq), ("%s/err.%d"):format(tmp, seq)
    local input = "/dev/null"
    if opts.stdin then
        input = ("%s/in.%d"):format(tmp, seq)
        util.write_file(input, opts.stdin)
    end
    local cmd = command_line(args, opts) .. " <" .. q(input) .. " >" .. q(out) .. " 2>" .. q(err)
    local _, _, status = util.execute(cmd)
    return util.read_file(out), util.read_file(err), status
end

local function ok_run(args, opts)
    local out, err, status = takhin_cmd(args, opts)
    assert.are.equal(0, status, "takhin " .. table.concat(args, " ") .. ": " .. err)
    return out, err
end

local function json_run(args, opts)
    local out, err = ok_run(args, opts)
    local ok, v = pcall(cjson.decode, out)
    assert(ok, "not JSON: " .. out)
    return v, out, err
end

-- Expect exit status 1 with a message holding each of `needles`.
local function fails(args, needles, opts)
    local out, err, status = takhin_cmd(args, opts)
    assert.are.equal(1, status, "stdout: " .. out .. "\nstderr: " .. err)
    for _, n in ipairs(needles) do
        assert.truthy(err:find(n, 1, true), ("stderr lacks %q: %s"):format(n, err))
    end
    return err, out
end

-------------------------------------------------------------------------
-- Logs to work on
-------------------------------------------------------------------------

local FOPTS = { max_segment_size = 200 }
local function value(i) return ("value-%03d"):format(i) end
local REC = 34 + 2 + 9                      -- "k0".."k9" + value(i)

-- 20 records in segments of 4 (offsets 0-3, 4-7, ...), timestamps 1000+i.
local function make_log(dir)
    local log = assert(takhin.open_log{ dir = dir, max_segment_size = FOPTS.max_segment_size })
    for i = 0, 19 do log:append("k" .. (i % 10), value(i), 1000 + i) end
    log:close()
    return dir
end

local function snapshot_of(dir)
    local log = assert(takhin.open_log{ dir = dir, readonly = true })
    local sm = assert(takhin.snapshot_manager(dir))
    local s = assert(sm:create(log))
    sm:close()
    log:close()
    return s
end

local function all_files(dir)
    local files = {}
    for _, n in ipairs(util.ls(dir)) do
        if n:sub(1, 1) ~= "." then files[n] = util.read_file(dir .. "/" .. n) end
    end
    return files
end

-- A file-like object that collects what is written (for in-process runs).
local function sink()
    local buf = {}
    return {
        write = function(self, ...)
            for _, s in ipairs({ ... }) do buf[#buf + 1] = tostring(s) end
            return self
        end,
        flush = function() end,
        text = function() return table.concat(buf) end,
    }
end

-- The command started in the background (dump --follow), its stdout and
-- stderr going to files.  Returns { pid =, out =, err =, status = }:
-- status is the file where its exit status is written when it ends.  The
-- test stops it by its pid; after_each kills what is left.
local spawned = {}

local function spawn_cmd(args)
    seq = seq + 1
    local f = {}
    for _, k in ipairs({ "out", "err", "status", "pid" }) do f[k] = ("%s/%s.%d"):format(tmp, k, seq) end
    local pidfile = f.pid
    -- the subshell execs env, which execs lua5.4: $! is the command's pid
    local inner = "(" .. command_line(args):gsub("&&", "&& exec", 1) .. ") </dev/null >" .. q(f.out) ..
        " 2>" .. q(f.err) .. " & echo $! >" .. q(pidfile) .. "; wait $!; echo $? >" .. q(f.status)
    assert(util.sh("sh -c " .. q(inner) .. " >/dev/null 2>&1 &"))
    local text = util.wait_for_content(pidfile, "\n")
    f.pid = assert(tonumber(text and text:match("^(%d+)\n")), "no pid from " .. inner)
    spawned[#spawned + 1] = f.pid
    return f
end

-- Wait (bounded) until the file at path has n complete lines; its lines.
local function wait_lines(path, n)
    util.wait_until(function() return util.count_lines(path) >= n end, 3000)
    return util.lines(path)
end

-- Send the spawned command a signal (INT: Ctrl-C) and wait for its exit
-- status.
local function interrupt(f, signal)
    util.sh(("kill -%s %d"):format(signal or "INT", f.pid))
    local text = util.wait_for_content(f.status, "\n", 3000)
    return tonumber(text and text:match("^(%d+)"))
end

-- Run the command in this process, its log handles made by wrap(log) (a
-- stand-in that may act between the calls the command makes); returns
-- stdout, stderr and the exit status.
local function main_with(args, wrap)
    local real = takhin.open_log
    takhin.open_log = function(o)
        local log, msg, code = real(o)
        if not log or not wrap then return log, msg, code end
        return wrap(log, o)
    end
    local out, err = sink(), sink()
    local ok, status = pcall(cli.main, args, { stdout = out, stderr = err, isatty = function() return false end })
    takhin.open_log = real
    assert(ok, status)
    return out.text(), err.text(), status
end

-- A stand-in for log whose methods named in `over` run instead of the
-- real ones (called as over.name(log, ...)).
local function log_with(log, over)
    return setmetatable({}, { __index = function(_, k)
        local f = over[k] or log[k]
        if type(f) ~= "function" then return f end
        return function(_, ...) return f(log, ...) end
    end })
end

-------------------------------------------------------------------------

describe("the takhin command", function()
    before_each(function() tmp = util.tmpdir() end)
    after_each(function()
        for _, pid in ipairs(spawned) do util.stop(pid) end
        spawned = {}
        util.rmtree(tmp)
    end)

    describe("help and usage", function()
        it("prints its help with every command on --help, -h and `help`, exit 0", function()
            local out = ok_run({ "--help" })
            assert.truthy(out:find("usage: takhin", 1, true))
            for _, c in ipairs({ "info DIR", "dump DIR", "append DIR", "verify DIR",
                                 "snapshot create DIR", "snapshot list DIR", "snapshot show DIR ID",
                                 "snapshot restore DIR ID TARGET", "snapshot delete DIR ID",
                                 "snapshot cleanup DIR", "snapshot verify DIR ID", "cursor list DIR",
                                 "cursor commit DIR NAME OFFSET", "cursor delete DIR NAME", "stats DIR", "--json" }) do
                assert.truthy(out:find(c, 1, true), c)
            end
            assert.are.equal(out, (ok_run({ "-h" })))
            assert.are.equal(out, (ok_run({ "help" })))
        end)

        it("prints each command's help with its options", function()
            local cases = {
                { { "info" }, {} },
                { { "stats" }, { "--prometheus", "--snapshot-dir PATH" } },
                { { "dump" }, { "--from N", "--count N", "--follow", "--cursor NAME", "JSON Lines" } },
                { { "append" }, { "--key K", "VALUE..." } },
                { { "verify" }, { "--progress" } },
                { { "snapshot", "create" }, { "--label L", "--min-interval D", "--progress" } },
                { { "snapshot", "list" }, {} },
                { { "snapshot", "show" }, { "ID" } },
                { { "snapshot", "restore" }, { "--replace", "--upto-offset N", "--upto-timestamp MS" } },
                { { "snapshot", "delete" }, { "ID" } },
                { { "snapshot", "cleanup" }, { "--max-snapshots N", "--retention-time D", "--keep-last N",
                    "--keep-hourly N", "--keep-daily N", "--keep-weekly N", "--keep-monthly N",
                    "--keep-within D", "--dry-run" } },
                { { "snapshot", "verify" }, { "ID" } },
                { { "cursor", "list" }, { "lag" } },
                { { "cursor", "commit" }, { "NAME OFFSET", "--expect OFFSET", "--expect-none", "--force",
                    "CONFLICT", "LOCKED" } },
                { { "cursor", "delete" }, { "NAME" } },
            }
            for _, case in ipairs(cases) do
                local args = { util.unpack(case[1]) }
                args[#args + 1] = "--help"
                local out = ok_run(args)
                local name = table.concat(case[1], " ")
                assert.truthy(out:find("usage: takhin " .. name, 1, true), out)
                assert.truthy(out:find("--json", 1, true), name)
                for _, opt in ipairs(case[2]) do assert.truthy(out:find(opt, 1, true), name .. " " .. opt) end
            end
            assert.truthy(ok_run({ "snapshot", "--help" }):find("snapshot restore DIR ID TARGET", 1, true))
            assert.truthy(ok_run({ "help", "snapshot", "cleanup" }):find("--keep-daily", 1, true))
            assert.truthy(ok_run({ "cursor", "--help" }):find("cursor commit DIR NAME OFFSET", 1, true))
            assert.truthy(ok_run({ "help", "cursor", "commit" }):find("--expect-none", 1, true))
            for _, args in ipairs({ { "--help" }, { "cursor", "--help" }, { "cursor", "list", "--help" },
                                    { "cursor", "commit", "--help" }, { "cursor", "delete", "--help" } }) do
                for line in ok_run(args):gmatch("[^\n]+") do
                    assert.truthy(#line <= 80, table.concat(args, " ") .. ": " .. line)
                end
            end
        end)

        it("says what cleanup's bucket rules keep: the N most recent buckets that have snapshots", function()
            local out = ok_run({ "snapshot", "cleanup", "--help" })
            assert.is_nil(out:find("of the last N", 1, true), out)
            assert.truthy(out:find("\n  %-%-keep%-hourly N +keep the newest snapshot of each of the N most recent\n" ..
                " +hours with a snapshot %(hours without one do not count%)\n"), out)
            for _, unit in ipairs({ "days", "weeks", "months", "years" }) do
                local opt = "--keep-" .. (unit == "days" and "daily" or unit:gsub("s$", "ly"))
                assert.truthy(out:find(opt:gsub("%-", "%%-") .. " N +%.%.%. of each of the N most recent " .. unit ..
                    " with a snapshot\n"), opt .. "\n" .. out)
            end
            assert.truthy(out:find("--max-snapshots N    keep the N newest snapshots (N >= 1)", 1, true), out)
            for line in out:gmatch("[^\n]+") do assert.truthy(#line <= 80, line) end
        end)

        it("prints the version", function()
            assert.are.equal("takhin " .. takhin.version .. "\n", (ok_run({ "--version" })))
        end)

        it("exits 2 with a message and a hint on usage errors", function()
            local dir = make_log(tmp .. "/log")
            local cases = {
                { {}, "missing command" },
                { { "frobnicate" }, 'unknown command "frobnicate"' },
                { { "--bogus" }, "unknown option --bogus" },
                { { "info" }, "missing argument DIR" },
                { { "info", dir, "extra" }, 'unexpected argument "extra"' },
                { { "info", dir, "--bogus" }, "unknown option --bogus" },
                { { "dump", dir, "--from", "x" }, '--from: "x" is not a whole number' },
                { { "dump", dir, "--count", "-1" }, '--count: "-1" is not a whole number' },
                { { "dump", dir, "--from" }, "option --from needs a value" },
                { { "dump", dir, "--from", "99999999999999999999" }, "is not a whole number" },
                { { "dump", dir, "--json=yes" }, "option --json takes no value" },
                { { "append", dir, "--timestamp", "1.5", "v" }, "is not an integer" },
                { { "snapshot" }, "missing snapshot subcommand" },
                { { "snapshot", "frob", dir }, 'unknown snapshot subcommand "frob"' },
                { { "snapshot", "show", dir }, "missing argument ID" },
                { { "snapshot", "restore", dir, "id" }, "missing argument TARGET" },
                { { "snapshot", "create", dir, "--min-interval", "soon" }, "is not a duration" },
                { { "snapshot", "cleanup", dir, "--retention-time", "1y" }, "is not a duration" },
                { { "snapshot", "cleanup", dir, "--keep-last", "many" }, "is not a whole number" },
                -- values the keep rules refuse are usage errors too, not failed operations
                { { "snapshot", "cleanup", dir, "--max-snapshots", "0" },
                    'option --max-snapshots: "0" is not a whole number >= 1' },
                { { "snapshot", "cleanup", dir, "--keep-daily", "-1" },
                    'option --keep-daily: "-1" is not a whole number >= 0' },
                { { "dump", dir, "--follow=yes" }, "option --follow takes no value" },
                { { "dump", dir, "--cursor" }, "option --cursor needs a value (NAME)" },
                { { "dump", dir, "--from", "1", "--cursor", "c" }, "options --from and --cursor cannot be used together" },
                { { "cursor" }, "missing cursor subcommand" },
                { { "cursor", "frob", dir }, 'unknown cursor subcommand "frob"' },
                { { "cursor", "list" }, "missing argument DIR" },
                { { "cursor", "list", dir, "extra" }, 'unexpected argument "extra"' },
                { { "cursor", "commit", dir, "c" }, "missing argument OFFSET" },
                { { "cursor", "commit", dir, "c", "x" }, 'argument OFFSET: "x" is not a whole number >= 0' },
                { { "cursor", "commit", dir, "c", "99999999999999999999" }, "is not a whole number" },
                { { "cursor", "commit", dir, "c", "-1" }, "unknown option -1" },
                { { "cursor", "commit", dir, "c", "1", "--expect", "no" }, 'option --expect: "no" is not a whole number' },
                { { "cursor", "commit", dir, "c", "1", "--expect", "1", "--expect-none" },
                    "options --expect and --expect-none cannot be used together" },
                { { "cursor", "commit", dir, "c", "1", "--force=yes" }, "option --force takes no value" },
                { { "cursor", "delete", dir }, "missing argument NAME" },
                { { "cursor", "delete", dir, "c", "d" }, 'unexpected argument "d"' },
            }
            for _, case in ipairs(cases) do
                local out, err, status = takhin_cmd(case[1])
                local what = "takhin " .. table.concat(case[1], " ")
                assert.are.equal(2, status, what .. ": " .. err)
                assert.truthy(err:find(case[2], 1, true), what .. ": " .. err)
                assert.truthy(err:find("Try 'takhin", 1, true), what .. ": " .. err)
                assert.are.equal("", out, what)
            end
        end)
    end)

    describe("info", function()
        it("shows segments, base offset, high water mark and size", function()
            local dir = make_log(tmp .. "/log")
            local out = ok_run({ "info", dir })
            assert.truthy(out:find("segments%s+5\n"), out)
            assert.truthy(out:find("base offset%s+0\n"), out)
            assert.truthy(out:find("high water mark%s+20\n"), out)
            assert.truthy(out:find(("size%%s+.-%%(%d bytes%%)"):format(20 * REC)), out)
            assert.truthy(out:find("BASE OFFSET", 1, true), out)
            assert.truthy(out:find("16%s+20%s+4%s+" .. 4 * REC .. "%s+active"), out)
        end)

        it("with --json gives the same values as the Lua API", function()
            local dir = make_log(tmp .. "/log")
            local info = json_run({ "info", "--json", dir })
            local log = assert(takhin.open_log{ dir = dir, readonly = true })
            assert.are.equal(log:high_water_mark(), info.high_water_mark)
            assert.are.equal(log:base_offset(), info.base_offset)
            assert.are.equal(log:num_segments(), info.num_segments)
            assert.are.equal(log:size(), info.size)
            assert.are.equal(20, info.records)
            assert.are.equal(1000, info.first_timestamp)
            assert.are.equal(1019, info.last_timestamp)
            for i, s in ipairs(log:segments()) do
                assert.are.equal(s.base_offset, info.segments[i].base_offset)
                assert.are.equal(s.next_offset, info.segments[i].next_offset)
                assert.are.equal(s.size, info.segments[i].size)
                assert.are.equal(s.active, info.segments[i].active)
            end
            log:close()
            assert.are.same(info, json_run({ "--json", "info", dir }))
        end)

        it("fails with exit 1 naming a missing directory and NOT_FOUND", function()
            local err = fails({ "info", tmp .. "/nope" }, { tmp .. "/nope", "(NOT_FOUND)", "takhin info:" })
            assert.falsy(util.exists(tmp .. "/nope"), "info created the directory")
            assert.is_nil(err:find("traceback", 1, true))
        end)
    end)

    describe("a path that holds no log", function()
        -- a mistyped path is an error, never an empty log
        it("is NOT_FOUND for info, dump, verify and snapshot create, which create nothing", function()
            local missing, empty, other = tmp .. "/nope", tmp .. "/empty", tmp .. "/other"
            assert(util.sh("mkdir " .. q(empty) .. " " .. q(other)))
            util.write_file(other .. "/notes.txt", "not a log\n")
            for _, cmd in ipairs({ { "info" }, { "dump" }, { "verify" }, { "snapshot", "create" } }) do
                for _, dir in ipairs({ missing, empty, other }) do
                    for _, json in ipairs({ false, true }) do
                        local args = { util.unpack(cmd) }
                        args[#args + 1] = dir
                        if json then args[#args + 1] = "--json" end
                        local err, out = fails(args, { dir, "(NOT_FOUND)", "takhin " .. table.concat(cmd, " ") .. ":" })
                        assert.are.equal("", out, table.concat(args, " "))
                        assert.is_nil(err:find("traceback", 1, true), err)
                        if dir ~= missing then
                            assert.truthy(err:find("no takhin log there", 1, true), err)
                        end
                    end
                end
            end
            assert.falsy(util.exists(missing))
            assert.are.same({}, util.ls(empty))
            assert.are.same({ "notes.txt" }, util.ls(other))
        end)

        it("is not a log that a writer created and left empty", function()
            local dir = tmp .. "/log"
            assert(takhin.open_log{ dir = dir }):close()
            local info = json_run({ "info", "--json", dir })
            assert.are.equal(0, info.records)
            assert.are.equal(1, info.num_segments)
            assert.are.equal("", (ok_run({ "dump", dir })))
            assert.are.equal(dir .. ": 0 records in 1 segment checked, all OK\n", (ok_run({ "verify", dir })))
            assert.are.equal(0, json_run({ "snapshot", "create", "--json", dir }).high_water_mark)
        end)

        it("is still a log once its base offset moved past 0", function()
            local dir = make_log(tmp .. "/log")
            for _, ext in ipairs({ "log", "index", "timeindex" }) do      -- offsets 0-3 gone: base 4
                os.remove(dir .. "/" .. util.segment_name(0, ext))
            end
            assert.are.equal(4, json_run({ "info", "--json", dir }).base_offset)
        end)
    end)

    describe("append and dump", function()
        it("appends arguments, or stdin lines, and dumps them like Kafka's dump-log", function()
            local dir = tmp .. "/log"
            local out = ok_run({ "append", "--create", dir, "one", "two words", "--", "--three" })
            assert.are.equal(("appended 3 records to %s at offsets [0, 3)\n"):format(dir), out)
            out = ok_run({ "append", "--key", "k", dir }, { stdin = "four\nfive\n" })
            assert.are.equal(("appended 2 records to %s at offsets [3, 5)\n"):format(dir), out)
            local r = json_run({ "append", dir, "--json", "--timestamp", "1700000000000", "six" })
            assert.are.same({ dir = dir, ok = true, count = 1, first = 5, last = 5 }, r)

            local log = assert(takhin.open_log{ dir = dir, readonly = true })
            assert.are.equal(6, log:high_water_mark())
            assert.is_nil(log:read(0).key)
            assert.are.equal("--three", log:read(2).value)
            assert.are.equal("k", log:read(4).key)
            assert.are.equal("five", log:read(4).value)
            local t1 = log:read(1).timestamp
            log:close()

            local lines = {}
            for line in ok_run({ "dump", dir }):gmatch("[^\n]+") do lines[#lines + 1] = line end
            assert.are.equal(6, #lines)
            assert.are.equal(("offset: 1 timestamp: %d keySize: -1 valueSize: 9 key: null " ..
                "value: two words"):format(t1), lines[2])
            assert.are.equal("offset: 5 timestamp: 1700000000000 keySize: -1 valueSize: 3 key: null " ..
                "value: six", lines[6])
            assert.truthy(lines[4]:find("keySize: 1 valueSize: 4 key: k value: four", 1, true), lines[4])

            out = ok_run({ "dump", dir, "--from", "3", "--count", "2" })
            assert.truthy(out:find("^offset: 3 .-\noffset: 4 [^\n]*\n$"), out)
            assert.are.equal("", (ok_run({ "dump", dir, "--from", "6" })))
            assert.are.equal("", (ok_run({ "dump", dir, "--count", "0" })))
        end)

        it("appends nothing from empty stdin", function()
            local dir = tmp .. "/log"
            local r = json_run({ "append", "--create", "--json", dir }, { stdin = "" })
            assert.is_true(r.ok)
            assert.are.equal(0, r.count)
            assert.are.equal(cjson.null, r.first)
        end)

        it("refuses to start a new log without --create, naming the path", function()
            local missing, empty = tmp .. "/nope", tmp .. "/empty"
            assert(util.sh("mkdir " .. q(empty)))
            for _, dir in ipairs({ missing, empty }) do
                for _, case in ipairs({ { { "append", dir, "x" } }, { { "append", dir }, { stdin = "x\n" } },
                                        { { "append", "--json", "--shared", dir, "x" } } }) do
                    local err, out = fails(case[1], { "takhin append:", dir, "(NOT_FOUND)",
                        "--create starts a new log there" }, case[2])
                    assert.are.equal("", out)
                end
            end
            assert.falsy(util.exists(missing), "append created the directory")
            assert.are.same({}, util.ls(empty), "append created files")

            assert.are.equal(("appended 1 record to %s at offset 0\n"):format(missing),
                (ok_run({ "append", "--create", missing, "first" })))
            assert.are.equal(("appended 1 record to %s at offset 1\n"):format(missing),
                (ok_run({ "append", missing, "second" })))                -- a log now
            assert.are.equal(("appended 1 record to %s at offset 2\n"):format(missing),
                (ok_run({ "append", "--create", missing, "third" })))     -- --create: only if missing
            assert.are.equal(1, json_run({ "append", "--create", "--json", empty }, { stdin = "a\nb\n" }).last)
            local log = assert(takhin.open_log{ dir = missing, readonly = true })
            assert.are.equal("third", log:read(2).value)
            log:close()
        end)

        it("--shared appends next to shared writers that stay open (nginx workers)", function()
            local dir = tmp .. "/log"
            local worker = assert(takhin.open_log{ dir = dir, shared = true })
            assert.are.equal(0, worker:append(nil, "worker 1"))
            local r = json_run({ "append", "--shared", "--json", dir, "cli 1", "cli 2" })
            assert.are.equal(1, r.first)
            assert.are.equal(2, r.last)
            assert.are.equal(3, worker:append(nil, "worker 2"))
            assert.are.equal(("appended 1 record to %s at offset 4\n"):format(dir),
                (ok_run({ "append", dir, "--shared" }, { stdin = "cli 3\n" })))
            assert.are.equal(5, worker:append(nil, "worker 3"))
            worker:close()
            local log = assert(takhin.open_log{ dir = dir, readonly = true })
            local values = {}
            for rec in log:records(0) do values[#values + 1] = rec.value end
            log:close()
            assert.are.same({ "worker 1", "cli 1", "cli 2", "worker 2", "cli 3", "worker 3" }, values)
        end)

        it("opens the log as a shared writer with --shared, an exclusive one without", function()
            local dir = tmp .. "/log"
            local real, opened = takhin.open_log, {}
            takhin.open_log = function(o)
                opened[#opened + 1] = o
                return real(o)
            end
            local ok, e = pcall(function()
                local function main(args)
                    local out, err = sink(), sink()
                    local status = cli.main(args, { stdout = out, stderr = err, isatty = function() return false end })
                    assert.are.equal(0, status, err.text())
                    return opened[#opened]                       -- the writer
                end
                local w = main({ "append", "--create", "--shared", dir, "x" })
                assert.is_true(w.shared)
                assert.falsy(w.readonly)
                w = main({ "append", dir, "y" })
                assert.falsy(w.shared)
                assert.falsy(w.readonly)
            end)
            takhin.open_log = real
            assert(ok, e)
        end)

        it("escapes non-printable bytes and tells an absent key from an empty one", function()
            local dir = tmp .. "/log"
            local log = assert(takhin.open_log{ dir = dir })
            log:append(nil, "tab\there\nnul\0del\127back\\slash", 1)
            log:append("", "\255\254binary", 2)
            log:append("ключ", "значение é", 3)
            log:append("k\0", "c1\194\133", 4)
            log:close()
            local lines = {}
            for line in ok_run({ "dump", dir }):gmatch("[^\n]+") do lines[#lines + 1] = line end
            assert.are.equal(4, #lines)
            assert.are.equal("offset: 0 timestamp: 1 keySize: -1 valueSize: 27 key: null " ..
                "value: tab\\there\\nnul\\x00del\\x7fback\\\\slash", lines[1])
            assert.are.equal("offset: 1 timestamp: 2 keySize: 0 valueSize: 8 key:  value: \\xff\\xfebinary", lines[2])
            assert.truthy(lines[3]:find("key: ключ value: значение é", 1, true), lines[3])
            assert.truthy(lines[4]:find("key: k\\x00 value: c1\\xc2\\x85", 1, true), lines[4])
        end)

        it("with --json gives every record; bytes that are not UTF-8 as base64", function()
            local dir = tmp .. "/log"
            local log = assert(takhin.open_log{ dir = dir })
            log:append(nil, "plain \"quoted\" \0 text", 10)
            log:append("", "\255\254\0binary", 11)
            log:append("ключ", "значение", 12)
            log:close()
            local recs = json_run({ "dump", "--json", dir })
            assert.are.equal(3, #recs)
            assert.are.same({ offset = 0, timestamp = 10, key = cjson.null,
                value = "plain \"quoted\" \0 text" }, recs[1])
            assert.are.same({ offset = 1, timestamp = 11, key = "", value = "//4AYmluYXJ5",
                value_encoding = "base64" }, recs[2])
            assert.are.same({ offset = 2, timestamp = 12, key = "ключ", value = "значение" }, recs[3])
            assert.are.same({}, json_run({ "dump", "--json", dir, "--from", "3" }))
            assert.are.same({ recs[2] }, json_run({ "dump", "--json", dir, "--from", "1", "--count", "1" }))
        end)

        it("writes big integers exactly in JSON (2^53-1, 15 digits, 2^63-1)", function()
            if util.is_luajit then
                return pending("Lua 5.4 only (cli_spec, big integers in JSON): timestamp 2^63-1 does not fit a LuaJIT number")
            end
            local dir = tmp .. "/log"
            local big = { 9007199254740991, 123456789012345, math.maxinteger }
            local log = assert(takhin.open_log{ dir = dir })
            for i, ts in ipairs(big) do log:append(nil, "v" .. i, ts) end
            log:close()
            local recs, text = json_run({ "dump", "--json", dir })
            for i, ts in ipairs(big) do
                assert.truthy(text:find(('"timestamp":%d,'):format(ts), 1, true), text)
                assert.are.equal(ts + 0.0, recs[i].timestamp + 0.0)
            end
            assert.is_nil(text:find("e+", 1, true), text)
            local out = ok_run({ "dump", dir, "--from", "2" })
            assert.truthy(out:find("timestamp: 9223372036854775807 ", 1, true), out)
            -- the encoder itself, for floats too
            assert.are.equal("[9007199254740991,123456789012345,9223372036854775807,-1,1.5]",
                cli.json({ 2 ^ 53 - 1, 123456789012345.0, math.maxinteger, -1, 1.5 }, true))
        end)

        it("fails with OUT_OF_RANGE for --from past the high water mark or below the base offset", function()
            local dir = make_log(tmp .. "/log")
            fails({ "dump", dir, "--from", "21" }, { dir,
                "--from 21 is past the high water mark 20 (the log holds offsets [0, 20))", "(OUT_OF_RANGE)" })
            for _, ext in ipairs({ "log", "index", "timeindex" }) do      -- offsets 0-3 gone: base 4
                os.remove(dir .. "/" .. util.segment_name(0, ext))
            end
            fails({ "dump", dir, "--from", "3" }, { dir,
                "--from 3 is below the base offset 4 (the log holds offsets [4, 20))", "(OUT_OF_RANGE)" })
            assert.truthy(ok_run({ "dump", dir, "--from", "4", "--count", "1" }):find("^offset: 4 "))
        end)

        it("prints offset ranges one way, [first, end)", function()
            local dir = make_log(tmp .. "/log")
            local outs = {
                ok_run({ "append", dir, "a", "b" }),
                ok_run({ "snapshot", "create", dir }),
                (ok_run({ "snapshot", "list", dir })),
            }
            local id = json_run({ "snapshot", "list", "--json", dir })[1].id
            outs[#outs + 1] = (ok_run({ "snapshot", "restore", dir, id, tmp .. "/r" }))
            outs[#outs + 1] = select(2, takhin_cmd({ "dump", dir, "--from", "99" }))
            for _, out in ipairs(outs) do
                assert.is_nil(out:find("%d%.%.%d"), out)             -- no 0..21
                assert.is_nil(out:find("%[%d+, %d+%]"), out)         -- no [0, 21]
                assert.truthy(out:find("[0, 2", 1, true) or out:find("[20, 22)", 1, true), out)
            end
        end)

        it("fails with LOCKED naming the writer's pid when another writer holds the log", function()
            local dir = tmp .. "/log"
            local log = assert(takhin.open_log{ dir = dir })
            fails({ "append", dir, "x" }, { "(LOCKED)", "pid " .. util.getpid() })
            log:close()
            ok_run({ "append", dir, "x" })
        end)
    end)

    describe("append that fails part way", function()
        -- stdin goes in batches of 1000 lines, each all or nothing.  A line
        -- longer than max_record_size (16 MiB by default, docs/API.md) fails
        -- its batch; the batches before it are in the log, and a retry must
        -- know that to skip them.
        local BIG = ("x"):rep(16 * 1024 * 1024 + 1)

        local function lines(from, to)
            local t = {}
            for i = from, to do t[#t + 1] = ("line-%04d\n"):format(i) end
            return table.concat(t)
        end

        local function split(text)
            local t = {}
            for line in text:gmatch("[^\n]+") do t[#t + 1] = line end
            return t
        end

        local function values(dir)
            local log = assert(takhin.open_log{ dir = dir, readonly = true })
            local hwm, first, last = log:high_water_mark(), log:read(20), log:read(log:high_water_mark() - 1)
            log:close()
            return hwm, first and first.value, last and last.value
        end

        it("reports on stderr the records it appended before the failure", function()
            local dir = make_log(tmp .. "/log")                  -- offsets [0, 20) already
            local out, err, status = takhin_cmd({ "append", dir },
                { stdin = lines(1, 2500) .. BIG .. "\n" .. lines(2502, 2510) })
            assert.are.equal(1, status, err)
            assert.are.equal("", out)
            local msgs = split(err)
            assert.are.equal(2, #msgs, err)
            assert.truthy(msgs[1]:find("^takhin append: .*max_record_size.*%(INVALID%)$"), msgs[1])
            assert.are.equal(("takhin append: 2000 records were appended to %s before the failure, " ..
                "at offsets [20, 2020): the first 2000 lines of stdin"):format(dir), msgs[2])
            assert.are.same({ 2020, "line-0001", "line-2000" }, { values(dir) })

            -- the rest, appended again, follows them without a gap or a duplicate
            ok_run({ "append", dir }, { stdin = lines(2001, 2500) })
            assert.are.same({ 2520, "line-0001", "line-2500" }, { values(dir) })
        end)

        it("reports them in --json output too, with the error", function()
            local dir = make_log(tmp .. "/log")
            local out, err, status = takhin_cmd({ "append", "--json", dir },
                { stdin = lines(1, 1000) .. lines(1001, 1999) .. BIG .. "\n" })
            assert.are.equal(1, status, err)
            local r = cjson.decode(out)
            assert.is_false(r.ok)
            assert.are.equal(1000, r.count)
            assert.are.equal(20, r.first)
            assert.are.equal(1019, r.last)
            assert.are.equal("INVALID", r.code)
            assert.truthy(r.error:find("max_record_size", 1, true), r.error)
            assert.are.equal(dir, r.dir)
            assert.truthy(err:find("1000 records were appended to " .. dir .. " before the failure, " ..
                "at offsets [20, 1020)", 1, true), err)
            assert.are.same({ 1020, "line-0001", "line-1000" }, { values(dir) })
        end)

        it("says that nothing was appended when the first batch fails", function()
            local dir = make_log(tmp .. "/log")
            local input = lines(1, 10) .. BIG .. "\n" .. lines(12, 20)
            local out, err, status = takhin_cmd({ "append", dir }, { stdin = input })
            assert.are.equal(1, status, err)
            assert.are.equal("", out)
            local note = "\ntakhin append: nothing was appended to " .. dir .. "\n"
            assert.are.equal(note, err:sub(-#note), err)                -- the last line
            out, err, status = takhin_cmd({ "append", dir, "--json" }, { stdin = input })
            assert.are.equal(1, status, err)
            local r = cjson.decode(out)
            assert.are.same({ false, 0, cjson.null, cjson.null, "INVALID" }, { r.ok, r.count, r.first, r.last, r.code })
            assert.are.same({ 20, nil, "value-019" }, { values(dir) })
        end)
    end)

    describe("cursor", function()
        local function cursors_of(dir)
            local log = assert(takhin.open_log{ dir = dir, readonly = true })
            local t = log:cursors()
            log:close()
            return t
        end

        it("commits, lists and deletes cursors, in text and with --json", function()
            local dir = make_log(tmp .. "/log")                  -- offsets [0, 20)
            assert.are.equal(("no cursors in %s\n"):format(dir), (ok_run({ "cursor", "list", dir })))
            assert.are.equal("[]\n", (ok_run({ "cursor", "list", "--json", dir })))

            assert.are.equal(("committed cursor drain of %s at offset 7\n"):format(dir),
                (ok_run({ "cursor", "commit", dir, "drain", "7" })))
            assert.are.same({ dir = dir, name = "ship.v2_x-1", offset = 20 },
                json_run({ "cursor", "commit", "--json", dir, "ship.v2_x-1", "20" }))
            assert.are.same({ drain = 7, ["ship.v2_x-1"] = 20 }, cursors_of(dir))

            local out = ok_run({ "cursor", "list", dir })
            assert.are.equal("CURSOR       OFFSET  LAG\n" ..
                             "drain             7   13\n" ..
                             "ship.v2_x-1      20    0\n", out)
            assert.are.same({ { name = "drain", offset = 7, lag = 13 }, { name = "ship.v2_x-1", offset = 20, lag = 0 } },
                json_run({ "cursor", "list", "--json", dir }))

            assert.are.equal(("committed cursor drain of %s at offset 12\n"):format(dir),
                (ok_run({ "cursor", "commit", dir, "drain", "12" })))
            assert.are.equal(("deleted cursor drain of %s\n"):format(dir),
                (ok_run({ "cursor", "delete", dir, "drain" })))
            assert.are.same({ dir = dir, name = "ship.v2_x-1", deleted = true },
                json_run({ "cursor", "delete", "--json", dir, "ship.v2_x-1" }))
            assert.are.same({}, cursors_of(dir))
            assert.are.equal("[]\n", (ok_run({ "cursor", "list", "--json", dir })))
        end)

        it("refuses a bad cursor name with INVALID, naming the path, and commits nothing", function()
            local dir = make_log(tmp .. "/log")
            for _, name in ipairs({ "bad name", "a/b", "../x", "é", ("x"):rep(129) }) do
                for _, args in ipairs({ { "cursor", "commit", dir, name, "1" }, { "cursor", "delete", dir, name },
                                        { "dump", dir, "--cursor", name }, { "cursor", "commit", "--json", dir, name, "1" } }) do
                    local err, out = fails(args, { dir, "(INVALID)", "takhin " .. args[1] })
                    assert.are.equal("", out)
                    assert.is_nil(err:find("traceback", 1, true), err)
                end
            end
            ok_run({ "cursor", "commit", dir, ("x"):rep(128), "1" })     -- 128 bytes is the most
            assert.are.same({ [("x"):rep(128)] = 1 }, cursors_of(dir))
        end)

        it("is NOT_FOUND for a path that holds no log, and creates nothing there", function()
            local missing, empty = tmp .. "/nope", tmp .. "/empty"
            assert(util.sh("mkdir " .. q(empty)))
            for _, dir in ipairs({ missing, empty }) do
                for _, args in ipairs({ { "cursor", "list", dir }, { "cursor", "commit", dir, "c", "0" },
                                        { "cursor", "delete", dir, "c" }, { "cursor", "commit", "--json", dir, "c", "0" } }) do
                    local err, out = fails(args, { dir, "(NOT_FOUND)", "takhin " .. args[1] .. " " .. args[2] .. ":" })
                    assert.are.equal("", out)
                    assert.is_nil(err:find("traceback", 1, true), err)
                end
            end
            assert.falsy(util.exists(missing))
            assert.are.same({}, util.ls(empty))
        end)

        it("deleting a cursor that was never committed is NOT_FOUND, naming it and the path", function()
            local dir = make_log(tmp .. "/log")
            fails({ "cursor", "delete", dir, "ghost" }, { dir .. ": no cursor ghost", "(NOT_FOUND)" })
            ok_run({ "cursor", "commit", dir, "ghost", "3" })
            ok_run({ "cursor", "delete", dir, "ghost" })
            fails({ "cursor", "delete", "--json", dir, "ghost" }, { dir .. ": no cursor ghost", "(NOT_FOUND)" })
        end)

        it("never moves a cursor backwards without --force", function()
            local dir = make_log(tmp .. "/log")
            ok_run({ "cursor", "commit", dir, "c", "10" })
            local err, out = fails({ "cursor", "commit", dir, "c", "5" }, { "takhin cursor commit: commit c to " .. dir ..
                ": offset 5 is behind the committed offset 10 (--force moves a cursor back) (INVALID)" })
            assert.are.equal("", out)
            assert.is_nil(err:find("force = true", 1, true), err)
            ok_run({ "cursor", "commit", dir, "c", "10" })             -- standing still is not backwards
            assert.are.same({ c = 10 }, cursors_of(dir))
            assert.are.same({ dir = dir, name = "c", offset = 5 },
                json_run({ "cursor", "commit", dir, "c", "5", "--force", "--json" }))
            assert.are.same({ c = 5 }, cursors_of(dir))
        end)

        it("is OUT_OF_RANGE past the high water mark or below the base offset", function()
            local dir = make_log(tmp .. "/log")
            fails({ "cursor", "commit", dir, "c", "21" }, { "commit c to " .. dir .. ": offset 21 is past " ..
                "the high water mark 20 (the log holds offsets [0, 20)) (OUT_OF_RANGE)" })
            ok_run({ "cursor", "commit", dir, "c", "20" })             -- the high water mark: all read
            local log = assert(takhin.open_log{ dir = dir })
            assert.are.equal(8, log:delete_before(8))
            log:close()
            fails({ "cursor", "commit", dir, "c", "3", "--force" }, { "commit c to " .. dir .. ": offset 3 is below " ..
                "the base offset 8 (the log holds offsets [8, 20)) (OUT_OF_RANGE)" })
            assert.are.same({ c = 20 }, cursors_of(dir))
        end)

        it("compares and sets with --expect and --expect-none: CONFLICT changes nothing", function()
            local dir = make_log(tmp .. "/log")
            ok_run({ "cursor", "commit", dir, "c", "3", "--expect-none" })
            fails({ "cursor", "commit", dir, "c", "4", "--expect-none" }, { "commit c to " .. dir, "(CONFLICT)" })
            fails({ "cursor", "commit", dir, "c", "9", "--expect", "2" }, { "commit c to " .. dir, "(CONFLICT)" })
            assert.are.same({ c = 3 }, cursors_of(dir))
            assert.are.same({ dir = dir, name = "c", offset = 9 },
                json_run({ "cursor", "commit", "--json", dir, "c", "9", "--expect", "3" }))
            fails({ "cursor", "commit", dir, "c", "2", "--expect", "9" }, { "(INVALID)" })   -- still not backwards
            ok_run({ "cursor", "commit", dir, "c", "2", "--expect", "9", "--force" })
            assert.are.same({ c = 2 }, cursors_of(dir))
        end)

        it("works next to shared writers (nginx workers) and fails LOCKED next to an exclusive one", function()
            local dir = make_log(tmp .. "/log")
            local worker = assert(takhin.open_log{ dir = dir, shared = true })
            ok_run({ "cursor", "commit", dir, "c", "4" })
            assert.are.equal(4, worker:committed("c"))
            assert(worker:commit("c", 6))
            assert.are.same({ { name = "c", offset = 6, lag = 14 } }, json_run({ "cursor", "list", "--json", dir }))
            assert.are.equal(20, worker:append(nil, "from the worker"))
            ok_run({ "cursor", "delete", dir, "c" })
            assert.is_nil(worker:committed("c"))
            worker:close()

            local writer = assert(takhin.open_log{ dir = dir })
            assert(writer:commit("w", 2))
            fails({ "cursor", "commit", dir, "c", "1" }, { "(LOCKED)", "pid " .. util.getpid() })
            fails({ "cursor", "delete", dir, "w" }, { "(LOCKED)", "pid " .. util.getpid() })
            assert.are.same({ { name = "w", offset = 2, lag = 19 } }, json_run({ "cursor", "list", "--json", dir }))
            writer:close()
            assert.are.same({ w = 2 }, cursors_of(dir))
        end)

        it("opens the log as a shared writer for commit and delete, read-only for list", function()
            local dir = make_log(tmp .. "/log")
            local opened = {}
            local function last(args)
                local _, err, status = main_with(args, function(log, o)
                    opened[#opened + 1] = o
                    return log
                end)
                assert.are.equal(0, status, err)
                return opened[#opened]
            end
            local o = last({ "cursor", "commit", dir, "c", "1" })
            assert.is_true(o.shared)
            assert.falsy(o.readonly)
            o = last({ "cursor", "list", dir })
            assert.is_true(o.readonly)
            o = last({ "cursor", "delete", dir, "c" })
            assert.is_true(o.shared)
            assert.falsy(o.readonly)
        end)
    end)

    describe("dump --cursor", function()
        it("starts at the offset the cursor committed, and leaves the cursor where it is", function()
            local dir = make_log(tmp .. "/log")
            ok_run({ "cursor", "commit", dir, "drain", "17" })
            local lines = {}
            for line in ok_run({ "dump", dir, "--cursor", "drain" }):gmatch("[^\n]+") do lines[#lines + 1] = line end
            assert.are.equal(3, #lines)
            assert.truthy(lines[1]:find("^offset: 17 timestamp: 1017 .* value: value%-017$"), lines[1])
            assert.truthy(lines[3]:find("^offset: 19 "), lines[3])
            local recs = json_run({ "dump", "--json", dir, "--cursor", "drain", "--count", "2" })
            assert.are.same({ 17, 18 }, { recs[1].offset, recs[2].offset })
            assert.are.equal(2, #recs)
            ok_run({ "cursor", "commit", dir, "drain", "20" })
            assert.are.equal("", (ok_run({ "dump", dir, "--cursor", "drain" })))
            assert.are.same({ { name = "drain", offset = 20, lag = 0 } }, json_run({ "cursor", "list", "--json", dir }))
        end)

        it("fails with NOT_FOUND for a cursor never committed, OUT_OF_RANGE for one below the base offset", function()
            local dir = make_log(tmp .. "/log")
            local _, out = fails({ "dump", dir, "--cursor", "ghost" }, { dir .. ": cursor ghost was never committed",
                "(NOT_FOUND)" })
            assert.are.equal("", out)
            ok_run({ "cursor", "commit", dir, "slow", "2" })
            local log = assert(takhin.open_log{ dir = dir })
            log:delete_before(8)
            log:close()
            fails({ "dump", dir, "--cursor", "slow", "--json" }, { dir .. ": cursor slow at 2 is below the base " ..
                "offset 8 (the log holds offsets [8, 20))", "(OUT_OF_RANGE)" })
        end)
    end)

    describe("dump --follow", function()
        it("prints records as another process appends them, until interrupted (exit 0)", function()
            local dir = make_log(tmp .. "/log")
            local f = spawn_cmd({ "dump", dir, "--follow", "--from", "18" })
            local lines = wait_lines(f.out, 2)
            assert.are.equal(2, #lines, util.read_file(f.err))
            local log = assert(takhin.open_log{ dir = dir, max_segment_size = FOPTS.max_segment_size })
            for i = 20, 22 do log:append("k", value(i), 2000 + i) end
            lines = wait_lines(f.out, 5)
            assert.are.equal(5, #lines, util.read_file(f.err))
            assert.are.equal(23, log:append(nil, "later", 3000))
            lines = wait_lines(f.out, 6)
            log:close()
            assert.are.equal(0, interrupt(f, "INT"))                   -- Ctrl-C ends it, exit 0
            lines = util.lines(f.out)
            assert.are.equal(6, #lines)
            for i, line in ipairs(lines) do
                local off = 17 + i
                assert.truthy(line:find(("^offset: %d "):format(off)), line)
                if off >= 20 and off <= 22 then
                    assert.are.equal(("offset: %d timestamp: %d keySize: 1 valueSize: 9 key: k value: %s"):format(
                        off, 2000 + off, value(off)), line)
                end
            end
            assert.are.equal("offset: 23 timestamp: 3000 keySize: -1 valueSize: 5 key: null value: later", lines[6])
            assert.are.equal("", util.read_file(f.err))
        end)

        it("with --json prints one JSON object per line, offsets exact, across segments and writers", function()
            local dir = tmp .. "/log"
            assert(takhin.open_log{ dir = dir, max_segment_size = FOPTS.max_segment_size }):close()   -- empty
            local f = spawn_cmd({ "dump", dir, "--follow", "--json" })
            local worker = assert(takhin.open_log{ dir = dir, shared = true, max_segment_size = FOPTS.max_segment_size })
            local n = 0
            for round = 1, 4 do                                  -- 4 rounds of 7: segments roll
                local recs = {}
                for i = 1, 7 do
                    local off = n + i - 1
                    recs[i] = { key = off % 2 == 1 and ("k" .. off) or nil, value = value(off), timestamp = 5000 + off }
                end
                assert.are.equal(n, (worker:append_batch(recs)))
                n = n + 7
                assert.are.equal(n, #wait_lines(f.out, n), "round " .. round .. ": " .. util.read_file(f.err))
            end
            ok_run({ "append", "--shared", dir, "--timestamp", "9000", "from the command" })   -- another process
            local lines = wait_lines(f.out, n + 1)
            worker:close()
            assert.are.equal(n + 1, #lines)
            for i, line in ipairs(lines) do
                local ok, r = pcall(cjson.decode, line)
                assert(ok, "not JSON: " .. line)
                local off = i - 1
                assert.are.equal(off, r.offset)
                if off < n then
                    assert.are.same({ offset = off, timestamp = 5000 + off, value = value(off),
                        key = off % 2 == 1 and ("k" .. off) or cjson.null }, r)
                else
                    assert.are.same({ offset = off, timestamp = 9000, value = "from the command", key = cjson.null }, r)
                end
            end
            assert.is_nil(util.read_file(f.out):find("[", 1, true))   -- no array around them
            assert.are.equal(143, interrupt(f, "TERM"))                 -- stopped by its pid
            assert.are.equal(n + 1, util.count_lines(f.out))
        end)

        it("starts at a cursor's committed offset with --cursor", function()
            local dir = make_log(tmp .. "/log")
            ok_run({ "cursor", "commit", dir, "drain", "19" })
            local f = spawn_cmd({ "dump", dir, "--follow", "--json", "--cursor", "drain" })
            assert.are.equal(1, #wait_lines(f.out, 1))
            local log = assert(takhin.open_log{ dir = dir, max_segment_size = FOPTS.max_segment_size })
            log:append(nil, "next", 7)
            local lines = wait_lines(f.out, 2)
            log:close()
            util.stop(f.pid)
            assert.are.same({ 19, 20 }, { cjson.decode(lines[1]).offset, cjson.decode(lines[2]).offset })
            assert.are.equal("next", cjson.decode(lines[2]).value)
        end)

        it("stops after --count records, however many arrive at once", function()
            local dir = make_log(tmp .. "/log")
            local writer = assert(takhin.open_log{ dir = dir, max_segment_size = FOPTS.max_segment_size })
            local waits = 0
            -- each time the command has caught up, 4 more records come
            local out, err, status = main_with({ "dump", dir, "--follow", "--json", "--from", "15", "--count", "12" },
                function(log) return log_with(log, {
                    wait = function(l, off, timeout)
                        waits = waits + 1
                        for i = 1, 4 do writer:append(nil, "more", 1) end
                        return l:wait(off, timeout)
                    end,
                }) end)
            writer:close()
            assert.are.equal(0, status, err)
            assert.are.equal("", err)
            local offs = {}
            for line in out:gmatch("[^\n]+") do offs[#offs + 1] = cjson.decode(line).offset end
            assert.are.same({ 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26 }, offs)
            assert.are.equal(2, waits)
            assert.are.equal("", (main_with({ "dump", dir, "--follow", "--count", "0" })))
        end)

        it("skips, with a note, records that retention deleted before they were printed", function()
            local dir = make_log(tmp .. "/log")
            local writer = assert(takhin.open_log{ dir = dir, max_segment_size = FOPTS.max_segment_size })
            local deleted = false
            local out, err, status = main_with({ "dump", dir, "--follow", "--count", "14" }, function(log)
                return log_with(log, {
                    read = function(l, off)                 -- retention runs between two reads
                        if off == 2 and not deleted then deleted = true; writer:delete_before(8) end
                        return l:read(off)
                    end,
                })
            end)
            writer:close()
            assert.are.equal(0, status, err)
            assert.are.equal(("takhin dump: %s: offsets [2, 8) were deleted before they could be printed " ..
                "(the base offset is now 8)\n"):format(dir), err)
            local offs = {}
            for line in out:gmatch("[^\n]+") do offs[#offs + 1] = tonumber(line:match("^offset: (%d+) ")) end
            assert.are.same({ 0, 1, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19 }, offs)
        end)

        it("goes on from where a truncated log ends, with a note", function()
            local dir = make_log(tmp .. "/log")
            local writer = assert(takhin.open_log{ dir = dir, max_segment_size = FOPTS.max_segment_size })
            local step = 0
            local out, err, status = main_with({ "dump", dir, "--follow", "--from", "18", "--count", "4" },
                function(log) return log_with(log, {
                    wait = function(l, off, timeout)
                        step = step + 1
                        if step == 1 then writer:truncate(12); return false, "timeout"
                        elseif step == 2 then writer:append(nil, "again", 1); writer:append(nil, "and again", 2) end
                        return l:wait(off, timeout)
                    end,
                }) end)
            writer:close()
            assert.are.equal(0, status, err)
            assert.are.equal(("takhin dump: %s: the log was cut back to offset 12; following from there\n"):format(dir), err)
            local lines = {}
            for line in out:gmatch("[^\n]+") do lines[#lines + 1] = line end
            assert.are.equal(4, #lines)
            assert.truthy(lines[2]:find("^offset: 19 .* value: value%-019$"), lines[2])
            assert.truthy(lines[3]:find("^offset: 12 timestamp: 1 .* value: again$"), lines[3])
            assert.truthy(lines[4]:find("^offset: 13 timestamp: 2 .* value: and again$"), lines[4])
        end)

        it("ends quietly on Ctrl-C with what it printed; other commands say they were interrupted", function()
            local dir = make_log(tmp .. "/log")
            local out, err, status = main_with({ "dump", dir, "--follow", "--from", "19", "--json" }, function(log)
                return log_with(log, { wait = function() error("interrupted!") end })
            end)
            assert.are.equal(0, status, err)
            assert.are.equal("", err)
            assert.are.equal(19, cjson.decode(out).offset)
            out, err, status = main_with({ "verify", dir }, function(log)
                return log_with(log, { read = function() error("interrupted!") end })
            end)
            assert.are.equal(1, status)
            assert.are.equal("", out)
            assert.are.equal("takhin verify: interrupted\n", err)
        end)

        it("is NOT_FOUND for a path that holds no log", function()
            local err, out = fails({ "dump", "--follow", tmp .. "/nope" }, { tmp .. "/nope", "(NOT_FOUND)" })
            assert.are.equal("", out)
            assert.is_nil(err:find("traceback", 1, true), err)
            assert.falsy(util.exists(tmp .. "/nope"))
        end)
    end)

    describe("stats", function()
        it("adds up the counters of the processes that have the log open", function()
            local dir = make_log(tmp .. "/log")
            local log = assert(takhin.open_log{ dir = dir, max_segment_size = FOPTS.max_segment_size, shared = true })
            for i = 1, 3 do assert(log:append("k", value(i))) end
            local out = ok_run({ "stats", dir })
            assert.truthy(out:find("offsets%s+%[0, 23%)"), out)
            assert.truthy(out:find("appends%s+3 %(3 records"), out)
            assert.truthy(out:find("errors%s+none"), out)
            local r = json_run({ "stats", "--json", dir })
            assert.are.equal(3, r.log.appends)
            assert.are.equal(23, r.log.high_water_mark)
            assert.are.equal(0, r.snapshots.snapshots)
            local prom = ok_run({ "stats", "--prometheus", dir })
            assert.truthy(prom:find('takhin_log_appends_total{log="' .. dir .. '"} 3', 1, true), prom)
            log:close()
        end)

        it("fails naming the path when there is no log", function()
            fails({ "stats", tmp .. "/nothing" }, { tmp .. "/nothing", "NOT_FOUND" })
        end)
    end)

    describe("verify", function()
        it("counts records, not bytes, in its progress bar", function()
            local dir = make_log(tmp .. "/log")                 -- 20 records, 900 bytes
            local _, err = ok_run({ "verify", dir, "--progress" })
            assert.truthy(err:find("100%  20 / 20 records", 1, true), err)
            assert.is_nil(err:find(" B", 1, true), err)
            assert.is_nil(err:find("iB", 1, true), err)
        end)

        it("checks every record and exits 0 on a sound log", function()
            local dir = make_log(tmp .. "/log")
            local out = ok_run({ "verify", dir })
            assert.are.equal(dir .. ": 20 records in 5 segments checked, all OK\n", out)
            local r = json_run({ "verify", "--json", dir })
            assert.are.same({ dir = dir, ok = true, records = 20, num_segments = 5, base_offset = 0,
                high_water_mark = 20, errors = {} }, r)
        end)

        it("reports every corrupt offset, exits 1, and modifies nothing", function()
            local dir = make_log(tmp .. "/log")
            local bad = { 1, 2, 9 }                -- two in the first segment, one in the third
            for _, off in ipairs(bad) do
                local base = off - off % 4
                util.flip_byte(dir .. "/" .. util.segment_name(base, "log"), (off - base) * REC + 36)
            end
            util.append_file(dir .. "/" .. util.segment_name(16, "log"), "torn")   -- a torn tail, too
            local before = all_files(dir)

            local err, out = fails({ "verify", dir }, { "takhin verify:", dir, "3 of 20 records",
                "offsets 1, 2, 9", "(CORRUPT)" })
            for _, off in ipairs(bad) do
                assert.truthy(out:find(("offset %d: [^\n]*%%(CORRUPT%%)\n"):format(off)), out)
            end
            assert.truthy(out:find("3 bad", 1, true), out)
            assert.is_nil(err:find("traceback", 1, true))

            local jout, _, status = takhin_cmd({ "verify", dir, "--json" })
            assert.are.equal(1, status)
            local r = cjson.decode(jout)
            assert.is_false(r.ok)
            assert.are.equal(3, #r.errors)
            for i, off in ipairs(bad) do
                assert.are.equal(off, r.errors[i].offset)
                assert.are.equal("CORRUPT", r.errors[i].code)
                local name = util.segment_name(off - off % 4, "log")
                assert.truthy(r.errors[i].message:find(name, 1, true), r.errors[i].message)
            end
            assert.are.same(before, all_files(dir), "verify modified the log")

            -- dump prints what it can and fails the same way
            local dout, derr, dstatus = takhin_cmd({ "dump", dir })
            assert.are.equal(1, dstatus)
            assert.are.equal(17, select(2, dout:gsub("\n", "")))
            assert.truthy(derr:find("3 records could not be read (CORRUPT)", 1, true), derr)
        end)
    end)

    describe("snapshot", function()
        it("creates, lists, shows, verifies, restores and deletes", function()
            local dir = make_log(tmp .. "/log")
            local out = ok_run({ "snapshot", "create", dir, "--label", "before upgrade" })
            local id = out:match("^created snapshot (%S+) of ")
            assert.truthy(id, out)
            assert.truthy(out:find("label%s+before upgrade\n"), out)
            assert.truthy(out:find("offsets%s+%[0, 20%)"), out)
            local s2 = json_run({ "snapshot", "create", "--json", dir })
            assert.is_string(s2.id)
            assert.are.equal(20, s2.high_water_mark)
            assert.are.same({ 0, 4, 8, 12, 16 }, s2.segment_offsets)
            assert.are.equal(cjson.null, s2.label)

            local sm = assert(takhin.snapshot_manager(dir))
            local api = sm:get(s2.id)
            for _, f in ipairs({ "id", "timestamp", "base_offset", "high_water_mark", "num_segments",
                                 "total_size", "mode", "path" }) do
                assert.are.equal(api[f], s2[f], f)
            end

            local list, text = json_run({ "snapshot", "list", dir, "--json" })
            assert.are.equal(2, #list)
            assert.are.equal(s2.id, list[1].id)            -- newest first
            assert.are.equal(id, list[2].id)
            assert.are.equal("before upgrade", list[2].label)
            assert.truthy(text:find(('"timestamp": %d,'):format(api.timestamp), 1, true), text)
            out = ok_run({ "snapshot", "list", dir })
            assert.truthy(out:find("^ID%s+CREATED"), out)
            local p1, p2 = out:find(s2.id, 1, true), out:find(id, 1, true)
            assert.truthy(p1 and p2 and p1 < p2, out)
            assert.truthy(out:find("before upgrade\n", 1, true), out)

            out = ok_run({ "snapshot", "show", dir, id })
            assert.truthy(out:find("id        " .. id, 1, true), out)
            assert.are.same(list[2], json_run({ "snapshot", "show", "--json", dir, id }))

            out = ok_run({ "snapshot", "verify", dir, id })
            assert.truthy(out:find("snapshot " .. id .. ": OK", 1, true), out)
            local v = json_run({ "snapshot", "verify", dir, id, "--json" })
            assert.is_true(v.ok)

            local target = tmp .. "/restored"
            out = ok_run({ "snapshot", "restore", dir, id, target })
            assert.are.equal(("restored snapshot %s to %s: offsets [0, 20)\n"):format(id, target), out)
            local log = assert(takhin.open_log{ dir = target, readonly = true })
            assert.are.equal(20, log:high_water_mark())
            assert.are.equal(value(19), log:read(19).value)
            log:close()
            local r = json_run({ "snapshot", "restore", "--json", dir, id, tmp .. "/part", "--upto-offset", "7" })
            assert.are.same({ id = id, target = tmp .. "/part", base_offset = 0, high_water_mark = 7 }, r)
            r = json_run({ "snapshot", "restore", "--json", dir, id, tmp .. "/bytime", "--upto-timestamp", "1004" })
            assert.are.equal(5, r.high_water_mark)

            out = ok_run({ "snapshot", "delete", dir, id })
            assert.are.equal("deleted snapshot " .. id .. "\n", out)
            assert.are.same({ id = s2.id, deleted = true }, json_run({ "snapshot", "delete", "--json", dir, s2.id }))
            assert.are.equal(0, #sm:list())
            assert.truthy(ok_run({ "snapshot", "list", dir }):find("no snapshots in", 1, true))
            assert.are.equal("[]\n", (ok_run({ "snapshot", "list", "--json", dir })))
            sm:close()
        end)

        it("snapshots and inspects a log while a writer holds it", function()
            local dir = make_log(tmp .. "/log")
            local log = assert(takhin.open_log{ dir = dir })
            log:append(nil, "while open", 2000)
            local s = json_run({ "snapshot", "create", "--json", dir })
            assert.are.equal(21, s.high_water_mark)
            assert.are.equal(21, json_run({ "info", "--json", dir }).high_water_mark)
            ok_run({ "verify", dir })
            assert.truthy(ok_run({ "dump", dir, "--from", "20" }):find("value: while open", 1, true))
            fails({ "snapshot", "restore", dir, s.id, dir, "--replace" }, { "(LOCKED)" })
            assert.are.equal(21, log:append(nil, "still the writer"))
            log:close()
        end)

        it("restores in place with --replace", function()
            local dir = make_log(tmp .. "/log")
            local s = snapshot_of(dir)
            ok_run({ "append", dir, "later" })
            ok_run({ "snapshot", "restore", dir, s.id, dir, "--replace", "--upto-offset", "10" })
            local log = assert(takhin.open_log{ dir = dir, readonly = true })
            assert.are.equal(10, log:high_water_mark())
            log:close()
        end)

        it("fails with exit 1 naming the id or path and the code", function()
            local dir = make_log(tmp .. "/log")
            local s = snapshot_of(dir)
            fails({ "snapshot", "restore", dir, "1-deadbeef", tmp .. "/r" }, { "1-deadbeef", "(NOT_FOUND)" })
            assert.is_false(util.exists(tmp .. "/r"))
            fails({ "snapshot", "restore", dir, s.id, dir }, { dir, "(NOT_EMPTY)" })
            fails({ "snapshot", "restore", dir, s.id, tmp .. "/r", "--upto-offset", "99" }, { "(OUT_OF_RANGE)" })
            fails({ "snapshot", "show", dir, "../etc" }, { "../etc", "(INVALID)" })
            fails({ "snapshot", "delete", dir, "1-deadbeef" }, { "1-deadbeef", "(NOT_FOUND)" })
            fails({ "snapshot", "verify", dir, "1-deadbeef" }, { "1-deadbeef", "(NOT_FOUND)" })
            fails({ "snapshot", "create", dir, "--min-interval", "1h" }, { dir, "(TOO_SOON)" })
            fails({ "snapshot", "list", tmp .. "/nope" }, { tmp .. "/nope", "(NOT_FOUND)" })
            fails({ "snapshot", "create", tmp .. "/nope" }, { tmp .. "/nope", "(NOT_FOUND)" })
        end)

        it("verify names the damaged file and exits 1", function()
            local dir = make_log(tmp .. "/log")
            local s = snapshot_of(dir)
            local name = util.segment_name(16, "log")           -- the copied active segment
            util.flip_byte(s.path .. "/" .. name, 40)
            fails({ "snapshot", "verify", dir, s.id }, { name, "(CORRUPT)", "takhin snapshot verify:" })
            local out, _, status = takhin_cmd({ "snapshot", "verify", "--json", dir, s.id })
            assert.are.equal(1, status)
            local v = cjson.decode(out)
            assert.is_false(v.ok)
            assert.are.equal("CORRUPT", v.code)
            assert.truthy(v.error:find(name, 1, true), v.error)
        end)

        it("draws a progress bar on stderr only when asked or on a terminal", function()
            local dir = make_log(tmp .. "/log")
            local _, err = ok_run({ "snapshot", "create", dir, "--progress" })
            assert.truthy(err:find("\r", 1, true) and err:find("100%", 1, true), err)
            local out
            out, err = ok_run({ "snapshot", "create", dir, "--json" })  -- stderr is a file here
            assert.are.equal("", err)
            local id = cjson.decode(out).id
            _, err = ok_run({ "snapshot", "verify", dir, id, "--progress" })
            assert.truthy(err:find("100%", 1, true), err)
            _, err = ok_run({ "snapshot", "restore", dir, id, tmp .. "/r", "--progress" })
            assert.truthy(err:find("100%", 1, true), err)
            _, err = ok_run({ "verify", dir, "--progress" })
            assert.truthy(err:find("100%", 1, true), err)
            _, err = ok_run({ "verify", dir, "--no-progress" })
            assert.are.equal("", err)
        end)

        it("draws the progress bar by itself when stderr is a terminal", function()
            if not util.sh("command -v script >/dev/null 2>&1") then
                pending("script(1) is not installed: no terminal to test with")
                return
            end
            local dir = make_log(tmp .. "/log")
            -- script(1) gives the command a terminal; stdout goes to a file
            local inner = command_line({ "snapshot", "create", "--json", dir }) ..
                " 2>&1 >" .. q(tmp .. "/json")
            local tty = util.capture("env -u LD_PRELOAD script -qec " .. q(inner) .. " /dev/null")
            assert.truthy(tty:find("100%", 1, true), tty)
            assert.is_string(cjson.decode(util.read_file(tmp .. "/json")).id)
            inner = command_line({ "snapshot", "create", "--no-progress", dir }) .. " 2>&1 >/dev/null"
            assert.are.equal("", util.capture("env -u LD_PRELOAD script -qec " .. q(inner) .. " /dev/null"))
        end)

        it("cleanup deletes what the rules do not keep; --dry-run deletes nothing", function()
            local dir = make_log(tmp .. "/log")
            local ids = {}
            for i = 1, 4 do ids[i] = snapshot_of(dir).id end
            local sm = assert(takhin.snapshot_manager(dir))

            local plan = json_run({ "snapshot", "cleanup", dir, "--keep-last", "2", "--dry-run", "--json" })
            assert.is_true(plan.dry_run)
            assert.are.equal(0, plan.deleted)
            assert.are.equal(2, #plan.keep)
            assert.are.equal(ids[4], plan.keep[1].id)
            assert.is_table(plan.keep[1].reasons)
            assert.are.same({ ids[2], ids[1] }, { plan.delete[1].id, plan.delete[2].id })
            assert.are.equal(4, #sm:list())
            local out = ok_run({ "snapshot", "cleanup", dir, "--keep-last", "2", "--dry-run" })
            assert.truthy(out:find("would delete 2 snapshots", 1, true), out)

            out = ok_run({ "snapshot", "cleanup", dir, "--max-snapshots", "3" })
            assert.truthy(out:find("deleted 1 snapshot, kept 3", 1, true), out)
            assert.truthy(out:find("delete  " .. ids[1], 1, true), out)
            local r = json_run({ "snapshot", "cleanup", "--json", dir, "--keep-last", "1" })
            assert.are.equal(2, r.deleted)
            assert.are.equal(ids[4], r.keep[1].id)
            local left = sm:list()
            assert.are.equal(1, #left)
            assert.are.equal(ids[4], left[1].id)
            r = json_run({ "snapshot", "cleanup", "--json", dir })    -- the defaults
            assert.are.equal(0, r.deleted)
            snapshot_of(dir)
            for _, bad in ipairs({ { "--max-snapshots", "0" }, { "--keep-last", "-1" },
                                   { "--keep-within", "-1d" } }) do
                local args = { "snapshot", "cleanup", dir, bad[1], bad[2] }
                local out2, err, status = takhin_cmd(args)
                assert.are.equal(2, status, table.concat(args, " ") .. ": " .. err)
                assert.truthy(err:find("option " .. bad[1] .. ":", 1, true), err)
                assert.are.equal("", out2)
                assert.are.equal(2, #sm:list(), "a refused cleanup deleted snapshots")
            end
            sm:close()
        end)

        it("cleanup works with a library whose cleanup returns only a number", function()
            local dir = make_log(tmp .. "/log")
            local ids = {}
            for i = 1, 3 do ids[i] = snapshot_of(dir).id end
            local Snap = takhin.core.SnapshotManager
            local real = Snap.cleanup
            -- the seed-era cleanup: two rules, unknown names raise, one result
            Snap.cleanup = function(self, rules)
                for k in pairs(rules or {}) do
                    if k ~= "max_snapshots" and k ~= "retention_time" then
                        error(("cleanup: unknown option '%s'"):format(k), 2)
                    end
                end
                return self:_cleanup(rules and rules.max_snapshots or 5, -1)
            end
            local function main(args)
                local out, err = sink(), sink()
                local status = cli.main(args, { stdout = out, stderr = err, isatty = function() return false end })
                return out.text(), err.text(), status
            end
            local ok, e = pcall(function()
                local out, err, status = main({ "snapshot", "cleanup", dir, "--keep-last", "1", "--dry-run" })
                assert.are.equal(1, status, err)
                assert.truthy(err:find("does not support --keep-last", 1, true)
                    or err:find("does not support --dry-run", 1, true), err)
                assert.truthy(err:find("(UNSUPPORTED)", 1, true), err)
                assert.are.equal("", out)
                local sm = assert(takhin.snapshot_manager(dir))
                assert.are.equal(3, #sm:list())
                out, err, status = main({ "snapshot", "cleanup", dir, "--max-snapshots", "2", "--json" })
                assert.are.equal(0, status, err)
                local r = cjson.decode(out)
                assert.are.equal(1, r.deleted)
                assert.are.equal(ids[1], r.delete[1].id)
                assert.are.same({ ids[3], ids[2] }, { r.keep[1].id, r.keep[2].id })
                assert.are.equal(2, #sm:list())
                sm:close()
            end)
            Snap.cleanup = real
            assert(ok, e)
        end)
    end)

    describe("bin/takhin from a checkout", function()
        it("finds its modules from its own location, with no LUA_PATH", function()
            local dir = make_log(tmp .. "/log")
            local out = ok_run({ "info", dir, "--json" }, { plain = true })
            assert.are.equal(20, cjson.decode(out).high_water_mark)
            out = ok_run({ "info", dir, "--json" }, { lua_plain = true })
            assert.are.equal(20, cjson.decode(out).high_water_mark)
            assert.truthy(ok_run({ "--help" }, { plain = true }):find("usage: takhin", 1, true))
            local _, err, status = takhin_cmd({ "dump", dir, "--count", "x" }, { plain = true })
            assert.are.equal(2, status, err)
        end)
    end)
end)
