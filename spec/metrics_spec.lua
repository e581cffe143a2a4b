-- takhin.metrics (SPEC §9): logs and snapshot managers in Prometheus' text
-- format, checked by Prometheus' own `promtool check metrics` (its parser
-- and its linter), compared number for number with log:stats() and
-- sm:stats(), and against the list of metrics docs/API.md gives.  The
-- same text through `takhin stats DIR --prometheus`.  The OpenResty
-- example's /metrics is checked in spec/openresty_spec.lua.
--
-- The promtool checks are pending when promtool is not installed
-- (Debian: prometheus; scripts/deps.sh installs it).

local takhin = require("takhin")
local util = require("helpers.util")

local q = util.q
local unpack_ = util.unpack
-- Children must not inherit a sanitizer preload (make test-asan): promtool is Go.
local ENV = "env -u LD_PRELOAD -u ASAN_OPTIONS -u LSAN_OPTIONS -u UBSAN_OPTIONS "

local ROOT = util.capture("pwd"):gsub("%s+$", "")

local function promtool()
    local out = util.capture("command -v promtool 2>/dev/null"):gsub("%s+$", "")
    return out ~= "" and out or nil
end

-- promtool check metrics on `text`: exit status (0: parsed, nothing to
-- lint) and what it printed.
local function check_metrics(tool, dir, text)
    local path = dir .. "/metrics.prom"
    util.write_file(path, text)
    local out = util.capture(ENV .. q(tool) .. " check metrics < " .. q(path) .. " 2>&1; echo \"rc=$?\"")
    local rc = tonumber(out:match("rc=(%d+)%s*$"))
    return rc, (out:gsub("rc=%d+%s*$", ""))
end

-- "k=v,k=v", sorted, from the arguments "k=v" (the key of a sample).
local function key(...)
    local t = { ... }
    table.sort(t)
    return table.concat(t, ",")
end

local UNESCAPE = { n = "\n", ["\\"] = "\\", ['"'] = '"' }

-- The labels of a sample line, `k="v",...` with the text format's escapes,
-- as key() makes them.
local function labels_key(s)
    local parts, i = {}, 1
    while i <= #s do
        local k, j = s:match('^([%a_][%w_]*)="()', i)
        assert(k, "bad labels: " .. s)
        local v = {}
        i = j
        while true do
            local c = s:sub(i, i)
            assert(c ~= "", "unterminated label value: " .. s)
            if c == '"' then break end
            if c == "\\" then
                c = assert(UNESCAPE[s:sub(i + 1, i + 1)], "bad escape: " .. s)
                i = i + 1
            end
            v[#v + 1] = c
            i = i + 1
        end
        parts[#parts + 1] = k .. "=" .. table.concat(v)
        i = i + 1
        if s:sub(i, i) == "," then i = i + 1 end
    end
    return key(unpack_(parts))
end

-- The text parsed: types[family] = "counter" | ..., samples[name][key] = value.
local function parse(text)
    local types, samples, help = {}, {}, {}
    for line in text:gmatch("[^\n]+") do
        local fam, kind = line:match("^# TYPE (%S+) (%S+)$")
        if fam then
            assert(types[fam] == nil, "TYPE given twice for " .. fam)
            types[fam] = kind
        elseif line:match("^# HELP ") then
            help[line:match("^# HELP (%S+)")] = true
        else
            local name, labels, value = line:match('^([%w_:]+){(.*)} (%S+)$')
            if not name then name, value = line:match("^([%w_:]+) (%S+)$"); labels = "" end
            assert(name, "not a sample line: " .. line)
            local k = labels_key(labels)
            samples[name] = samples[name] or {}
            assert(samples[name][k] == nil, "sample given twice: " .. line)
            samples[name][k] = value == "+Inf" and math.huge or assert(tonumber(value), line)
        end
    end
    return types, samples, help
end

-- The metrics docs/API.md lists: rows "| `name` | type | ...".
local function documented()
    local doc = {}
    for line in util.read_file(ROOT .. "/docs/API.md"):gmatch("[^\n]+") do
        local name, kind = line:match("^| `(takhin_[%w_]+)` | (%a+) |")
        if name then doc[name] = kind end
    end
    return doc
end

describe("takhin.metrics.prometheus", function()
    local tmp, log, other, sm

    -- A log that has done a bit of everything: appends (one of them a
    -- batch), reads, fsyncs (sync = "always"), rolls (small segments), a
    -- truncate, a delete_before, cursor commits and failed calls; and a
    -- manager with two snapshots.
    before_each(function()
        tmp = util.tmpdir()
        log = assert(takhin.open_log{ dir = tmp .. "/orders", sync = "always", max_segment_size = 256 })
        for i = 1, 20 do assert(log:append("k" .. i, ("v"):rep(40))) end
        assert(log:append_batch({ { key = "a", value = "1" }, { key = "b", value = "2" } }))
        for i = 0, 4 do assert(log:read(i)) end
        assert(log:truncate(21))
        assert(log:delete_before(5))
        assert(log:commit("shipper", 10))
        assert(log:commit("shipper", 12))
        assert.is_nil((log:read(999)))
        assert.is_nil((log:commit("shipper", 11, { expect = 10 })))
        other = assert(takhin.open_log{ dir = tmp .. "/other" })
        sm = assert(takhin.snapshot_manager(tmp .. "/orders"))
        assert(sm:create(log, { label = "one" }))
        assert(sm:create(log, { label = "two" }))
    end)

    after_each(function()
        if sm then sm:close() end
        if log then log:close() end
        if other then other:close() end
        util.rmtree(tmp)
    end)

    local function text()
        return takhin.metrics.prometheus{
            logs = { orders = log, ['we"ird\\name\n2'] = other },
            managers = { orders = sm },
        }
    end

    it("is accepted by promtool check metrics (parser and linter)", function()
        local tool = promtool()
        if not tool then
            pending("promtool is not installed (apt-get install prometheus, or make deps)")
            return
        end
        local rc, out = check_metrics(tool, tmp, text())
        assert.are.equal(0, rc, "promtool check metrics:\n" .. out)
        assert.are.equal("", out:gsub("%s+", ""), "promtool check metrics:\n" .. out)
        -- and it would notice: a counter without _total is linted
        rc, out = check_metrics(tool, tmp, "# HELP x_bytes A counter.\n# TYPE x_bytes counter\nx_bytes 1\n")
        assert.are_not.equal(0, rc, out)
    end)

    it("exports log:stats() and sm:stats(), number for number", function()
        local types, samples, help = parse(text())
        local s, ms = log:stats(), sm:stats()
        local L = "log=orders"
        for _, c in ipairs({ "appends", "records", "bytes", "reads", "fsyncs", "rolls", "truncates",
                             "segments_deleted", "cursor_commits" }) do
            local name = "takhin_log_" .. c .. "_total"
            assert.are.equal("counter", types[name], name)
            assert.is_true(help[name], name)
            assert.are.equal(s[c], samples[name][L], name)
        end
        assert.are.equal(21, s.appends)            -- 20 appends and a batch of 2
        assert.are.equal(22, s.records)
        assert.is_true(s.reads >= 5 and s.fsyncs >= 1 and s.rolls >= 1, "a bit of everything")
        assert.are.equal(1, s.truncates)
        assert.is_true(s.segments_deleted >= 1)
        assert.are.equal(2, s.cursor_commits)
        for code, n in pairs(s.errors) do
            assert.are.equal(n, samples.takhin_log_errors_total[key(L, "code=" .. code)], code)
        end
        assert.are.equal(1, s.errors.OUT_OF_RANGE)
        assert.are.equal(1, s.errors.CONFLICT)
        -- the histogram: cumulative buckets up to +Inf = count
        assert.are.equal("histogram", types.takhin_log_fsync_seconds)
        local h, exported = s.fsync_seconds, {}
        for k, v in pairs(samples.takhin_log_fsync_seconds_bucket) do
            local le = k:match("le=([^,]*)")
            if k:find(L, 1, true) then exported[#exported + 1] = { le = tonumber(le) or math.huge, count = v } end
            assert.is_true(le == "+Inf" or le == ("%.15g"):format(tonumber(le)), "le=" .. le .. " in few digits")
        end
        table.sort(exported, function(a, b) return a.le < b.le end)
        assert.are.same(h.buckets, exported)
        assert.are.equal(math.huge, exported[#exported].le)
        assert.are.equal(h.count, exported[#exported].count)
        assert.are.equal(h.count, samples.takhin_log_fsync_seconds_count[L])
        assert.are.equal(s.fsyncs, h.count)
        assert.is_true(math.abs(h.sum - samples.takhin_log_fsync_seconds_sum[L]) < 1e-12)
        -- gauges
        for field, name in pairs({ base_offset = "base_offset", high_water_mark = "high_water_mark",
                                   synced_offset = "synced_offset", size = "size_bytes",
                                   num_segments = "segments", writers = "writers" }) do
            assert.are.equal("gauge", types["takhin_log_" .. name], name)
            assert.are.equal(s[field], samples["takhin_log_" .. name][L], name)
        end
        assert.are.equal(21, samples.takhin_log_high_water_mark[L])
        assert.are.equal(log:size(), samples.takhin_log_size_bytes[L])
        -- the other log, by its (escaped) name
        assert.are.equal(0, samples.takhin_log_appends_total['log=we"ird\\name\n2'])
        -- the manager
        local M = "manager=orders"
        assert.are.equal(2, ms.snapshots)
        assert.are.equal(ms.snapshots, samples.takhin_snapshot_snapshots[M])
        assert.are.equal(ms.damaged, samples.takhin_snapshot_damaged_snapshots[M])
        assert.are.equal(ms.bytes, samples.takhin_snapshot_size_bytes[M])
        assert.are.equal(ms.newest_timestamp / 1000, samples.takhin_snapshot_newest_timestamp_seconds[M])
    end)

    it("names every metric docs/API.md lists, with its type, and no other", function()
        local types = parse(text())
        local doc = documented()
        for name, kind in pairs(types) do
            assert.are.equal(kind, doc[name], name .. " (" .. kind .. ") in docs/API.md's metrics table")
        end
        for name, kind in pairs(doc) do
            assert.are.equal(kind, types[name], name .. " (docs/API.md) in the output")
        end
    end)

    it("is empty for nothing, and rejects misuse", function()
        assert.are.equal("\n", takhin.metrics.prometheus{})
        assert.has_error(function() takhin.metrics.prometheus{ log = {} } end)
        assert.has_error(function() takhin.metrics.prometheus{ logs = log } end)
    end)

    it("comes out of `takhin stats DIR --prometheus` in a form promtool accepts", function()
        local tool = promtool()
        if not tool then
            pending("promtool is not installed (apt-get install prometheus, or make deps)")
            return
        end
        local out_path = tmp .. "/cli.prom"
        -- (the CLI is ours: under make test-asan it keeps the sanitizers' preload)
        local cmd = "cd " .. q(ROOT) .. " && TAKHIN_BUILD=" .. q(util.lua54_build())
            .. " LUA_PATH=" .. q("lua/?.lua;lua/?/init.lua;;") .. " LUA_CPATH=" .. q(util.lua54_cpath())
            .. " " .. q(util.lua54_bin()) .. " bin/takhin stats --prometheus " .. q(tmp .. "/orders")
            .. " > " .. q(out_path) .. " 2>&1; echo \"rc=$?\""
        local st = util.capture(cmd)
        local cli = util.read_file(out_path)
        assert.truthy(st:match("rc=0%s*$"), "takhin stats --prometheus: " .. cli)
        local _, samples = parse(cli)
        assert.are.equal(21, samples.takhin_log_appends_total["log=" .. tmp .. "/orders"], cli)
        local rc, out = check_metrics(tool, tmp, cli)
        assert.are.equal(0, rc, "promtool check metrics:\n" .. out)
        assert.are.equal("", out:gsub("%s+", ""), "promtool check metrics:\n" .. out)
    end)
end)
