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

-------------------------------------------------------------------------

describe("the takhin command", function()
    before_each(function() tmp = util.tmpdir() end)
    after_each(function() util.rmtree(tmp) end)

    describe("help and usage", function()
        it("prints its help with every command on --help, -h and `help`, exit 0", function()
            local out = ok_run({ "--help" })
            assert.truthy(out:find("usage: takhin", 1, true))
            for _, c in ipairs({ "info DIR", "dump DIR", "append DIR", "verify DIR",
                                 "snapshot create DIR", "snapshot list DIR", "snapshot show DIR ID",
                                 "snapshot restore DIR ID TARGET", "snapshot delete DIR ID",
                                 "snapshot cleanup DIR", "snapshot verify DIR ID", "--json" }) do
                assert.truthy(out:find(c, 1, true), c)
            end
            assert.are.equal(out, (ok_run({ "-h" })))
            assert.are.equal(out, (ok_run({ "help" })))
        end)

        it("prints each command's help with its options", function()
            local cases = {
                { { "info" }, {} },
                { { "dump" }, { "--from N", "--count N" } },
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
