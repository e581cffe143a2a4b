-- takhin.policy: the seed's snapshot config, its presets, restic-style keep
-- rules, and sm:cleanup driven by them (docs/API.md "takhin.policy").

local takhin = require("takhin")
local policy = require("takhin.policy")
local util = require("helpers.util")
local cjson = require("cjson")

local MINUTE, HOUR, DAY = 60 * 1000, 3600 * 1000, 24 * 3600 * 1000

-------------------------------------------------------------------------
-- Synthetic snapshot lists
-------------------------------------------------------------------------

-- Days since 1970-01-01 of a civil date (proleptic Gregorian).
local function days(y, m, d)
    if m <= 2 then y = y - 1 end
    local era = math.floor(y / 400)
    local yoe = y - era * 400
    local doy = math.floor((153 * ((m + 9) % 12) + 2) / 5) + d - 1
    return era * 146097 + yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy - 719468
end

-- ms since the epoch of "2026-11-25 18:00" (UTC), optionally ":SS".
local function utc(text)
    local y, mo, d, h, mi, s = text:match("^(%d+)-(%d+)-(%d+) (%d+):(%d+):?(%d*)$")
    assert(y, "bad date " .. text)
    local t = (days(tonumber(y), tonumber(mo), tonumber(d)) * 24 + tonumber(h)) * HOUR
    return t + tonumber(mi) * MINUTE + (tonumber(s) or 0) * 1000
end

-- Snapshots named by their UTC time, in the order given.
local function snaps(...)
    local list = {}
    for i, text in ipairs({ ... }) do list[i] = { id = text, timestamp = utc(text) } end
    return list
end

local function plan_of(list, rules)
    local plan, msg, code = policy.plan(list, rules)
    assert(plan, tostring(msg) .. " " .. tostring(code))
    return plan
end

-- { id = reasons } of the kept, and the ids deleted (newest first).
local function outcome(plan)
    local kept, deleted = {}, {}
    for _, k in ipairs(plan.keep) do kept[k.snapshot.id] = k.reasons end
    for i, s in ipairs(plan.delete) do deleted[i] = s.id end
    return kept, deleted
end

local function invalid(named, v, msg, code)
    assert.is_nil(v, "accepted: " .. named)
    assert.are.equal("INVALID", code, tostring(msg))
    assert.truthy(tostring(msg):find(named, 1, true), "message does not name " .. named .. ": " .. tostring(msg))
    return msg
end

-- f(...) raises an error whose message holds `text` and points at this
-- file (the caller), not at takhin's own modules.
local function raises(text, f, ...)
    local ok, err = pcall(f, ...)
    assert.is_false(ok, "did not raise: " .. text)
    err = tostring(err)
    assert.truthy(err:find(text, 1, true), "message does not hold " .. text .. ": " .. err)
    assert.is_nil(err:find("takhin/policy.lua", 1, true), "points inside takhin: " .. err)
    return err
end

describe("takhin.policy", function()
    it("is takhin.policy", function()
        assert.are.equal(policy, takhin.policy)
    end)

    describe("defaults", function()
        it("are the seed's: 5 snapshots, 24 hours, 1 hour between snapshots", function()
            assert.are.same({ max_snapshots = 5, retention_time = "24h", min_interval = "1h" }, policy.defaults())
            assert.are.same(takhin.default_snapshot_config(), policy.defaults())
        end)

        it("are defined once: takhin.default_snapshot_config is policy.defaults", function()
            assert.are.equal(policy.defaults, takhin.default_snapshot_config)
        end)

        it("are a new table at each call", function()
            local d = policy.defaults()
            d.max_snapshots = 99
            assert.are.equal(5, policy.defaults().max_snapshots)
        end)
    end)

    describe("presets", function()
        it("are production, development and high_frequency", function()
            assert.are.same({ max_snapshots = 10, retention_time = "7d", min_interval = "1h" }, policy.presets.production)
            assert.are.same({ max_snapshots = 3, retention_time = "1h", min_interval = "1m" }, policy.presets.development)
            assert.are.same({ max_snapshots = 48, retention_time = "24h", min_interval = "5m" },
                            policy.presets.high_frequency)
        end)

        it("are each a valid policy", function()
            for name, p in pairs(policy.presets) do
                assert.is_table(policy.new(p), name)
            end
        end)

        it("are a base that other fields override", function()
            local p = assert(policy.new{ preset = "production", max_snapshots = 3, keep_daily = 7 })
            assert.are.equal("production", p.preset)
            assert.are.equal(3, p.max_snapshots)
            assert.are.equal("7d", p.retention_time)
            assert.are.equal(7 * DAY, p.retention_time_ms)
            assert.are.equal(HOUR, p.min_interval_ms)
            assert.are.equal(7, p.keep_daily)
        end)

        it("are not changed by changing policy.presets", function()
            local saved = policy.presets.development.max_snapshots
            policy.presets.development.max_snapshots = 1000
            assert.are.equal(3, policy.new{ preset = "development" }.max_snapshots)
            policy.presets.development.max_snapshots = saved
        end)

        it("reject an unknown name", function()
            invalid('"staging"', policy.new{ preset = "staging" })
            invalid("preset", policy.new{ preset = 1 })
        end)
    end)

    describe("new", function()
        it("normalizes durations to milliseconds and keeps the text", function()
            local p = assert(policy.new{ max_snapshots = 5, retention_time = "24h", min_interval = 90,
                                         keep_within = "1h30m" })
            assert.are.equal("24h", p.retention_time)
            assert.are.equal(DAY, p.retention_time_ms)
            assert.are.equal(90, p.min_interval)
            assert.are.equal(90 * 1000, p.min_interval_ms)
            assert.are.equal(90 * MINUTE, p.keep_within_ms)
        end)

        it("accepts an empty table: no rule, keep everything", function()
            local p = assert(policy.new{})
            assert.is_false(policy.has_rules(p))
            assert.are.equal("takhin.policy(keep everything)", tostring(p))
        end)

        it("counts keep_* = 0 as no rule", function()
            assert.is_false(policy.has_rules(assert(policy.new{ keep_last = 0, keep_daily = 0 })))
            assert.is_true(policy.has_rules(assert(policy.new{ keep_last = 1 })))
            assert.is_true(policy.has_rules(assert(policy.new{ keep_within = 0 })))
        end)

        it("accepts its own result, re-validated", function()
            local p = assert(policy.new{ preset = "development", keep_weekly = 4 })
            local again = assert(policy.new(p))
            assert.are.same(p, again)
            assert.are_not.equal(p, again)
            p.max_snapshots = 0
            invalid("max_snapshots", policy.new(p))
        end)

        it("accepts a plain copy of a policy, with its _ms fields", function()
            local p = assert(policy.new{ retention_time = "2h" })
            local plain = {}
            for k, v in pairs(p) do plain[k] = v end
            assert.are.equal(2 * HOUR, assert(policy.new(plain)).retention_time_ms)
            plain.retention_time = "3h"                 -- X decides, X_ms follows
            assert.are.equal(3 * HOUR, assert(policy.new(plain)).retention_time_ms)
        end)

        it("raises on an X_ms field given without X", function()
            raises("policy: option 'retention_time_ms' is derived from retention_time",
                   policy.new, { retention_time_ms = 5 })
            raises("option 'keep_within_ms'", policy.new, { keep_last = 1, keep_within_ms = 5 })
        end)

        it("prints as its fields", function()
            assert.are.equal("takhin.policy(max_snapshots=5 retention_time=24h min_interval=1h)",
                             tostring(assert(policy.new(policy.defaults()))))
            assert.are.equal("takhin.policy(keep_within=1m30s keep_last=2 dry_run)",
                             tostring(assert(policy.new{ keep_within = 90, keep_last = 2, dry_run = true })))
        end)

        it("rejects max_snapshots that is not an integer >= 1", function()
            for _, v in ipairs({ 0, -1, 2.5, "5", true, 0 / 0, math.huge }) do
                local msg = invalid("max_snapshots", policy.new{ max_snapshots = v })
                assert.truthy(msg:find(v == "5" and '"5"' or tostring(v), 1, true), msg)
            end
        end)

        it("rejects keep counts that are not integers >= 0", function()
            for _, f in ipairs({ "keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly",
                                 "keep_yearly" }) do
                for _, v in ipairs({ -1, 1.5, "3", {} }) do
                    local msg = invalid(f, policy.new{ [f] = v })
                    assert.truthy(msg:find("integer >= 0", 1, true), msg)
                end
            end
        end)

        it("rejects bad durations, naming the field and the text", function()
            for _, f in ipairs({ "retention_time", "min_interval", "keep_within" }) do
                for _, v in ipairs({ "", "5x", "h", "-1s", "1h1h", "forever" }) do
                    local msg = invalid(f, policy.new{ [f] = v })
                    assert.truthy(msg:find(("%q"):format(v), 1, true), msg)
                end
                invalid(f, policy.new{ [f] = -5 })
                invalid(f, policy.new{ [f] = {} })
            end
        end)

        it("rejects a dry_run that is not a boolean", function()
            invalid("dry_run", policy.new{ dry_run = "yes" })
        end)

        it("raises on unknown fields, naming them", function()
            raises("policy: unknown option 'max_snapshot'", policy.new, { max_snapshot = 5 })
            raises("policy: unknown option 'keep_hourlly'", policy.new, { keep_hourlly = 5 })
            raises("policy: unknown option 'label'", policy.new, { label = "x", keep_last = 1 })
            raises("policy: unknown option '1'", policy.new, { "production" })
        end)

        it("names the first unknown field in sorted order, whatever pairs does", function()
            for _ = 1, 20 do
                raises("unknown option 'a_typo'", policy.new, { z_typo = 1, a_typo = 1, m_typo = 1 })
            end
        end)

        it("raises where it was called, as the C binding does", function()
            local line
            local ok, e = pcall(function()
                line = debug.getinfo(1, "l").currentline; policy.new{ keep_dialy = 1 }
            end)
            assert.is_false(ok)
            assert.truthy(tostring(e):find("policy_spec.lua:" .. line .. ":", 1, true), tostring(e))
        end)

        it("returns INVALID, not an error, for a bad value of any type: settings come from configuration", function()
            invalid("max_snapshots", policy.new{ max_snapshots = "5" })
            invalid("max_snapshots", policy.new{ max_snapshots = {} })
            invalid("keep_daily", policy.new{ keep_daily = true })
            invalid("retention_time", policy.new{ retention_time = {} })
            invalid("dry_run", policy.new{ dry_run = 1 })
            invalid("preset", policy.new{ preset = {} })
        end)

        it("raises when given no table", function()
            raises("bad argument #1 to 'new' (table expected, got string)", policy.new, "production")
            raises("bad argument #1 to 'new' (table expected, got nil)", policy.new)
        end)
    end)

    describe("plan", function()
        it("keeps nothing and deletes nothing of an empty list", function()
            assert.are.same({}, plan_of({}, { keep_last = 1 }).keep)
            assert.are.same({}, plan_of({}, { keep_last = 1 }).delete)
        end)

        it("keeps everything when the policy has no rule", function()
            local kept, deleted = outcome(plan_of(snaps("2026-11-25 10:00", "2026-01-01 00:00"), {}))
            assert.are.same({ ["2026-11-25 10:00"] = { "newest", "no rules" },
                              ["2026-01-01 00:00"] = { "no rules" } }, kept)
            assert.are.same({}, deleted)
        end)

        it("lists keep and delete newest first, whatever the input order", function()
            local plan = plan_of(snaps("2026-11-23 00:00", "2026-11-25 00:00", "2026-11-21 00:00",
                                       "2026-11-24 00:00"), { keep_last = 2 })
            assert.are.equal("2026-11-25 00:00", plan.keep[1].snapshot.id)
            assert.are.equal("2026-11-24 00:00", plan.keep[2].snapshot.id)
            assert.are.same({ "2026-11-23 00:00", "2026-11-21 00:00" }, select(2, outcome(plan)))
        end)

        it("keep_last keeps the n newest", function()
            local kept, deleted = outcome(plan_of(snaps("2026-11-25 12:00", "2026-11-25 11:00",
                "2026-11-25 10:00", "2026-11-25 09:00", "2026-11-25 08:00"), { keep_last = 3 }))
            assert.are.same({ ["2026-11-25 12:00"] = { "newest", "last 1" },
                              ["2026-11-25 11:00"] = { "last 2" },
                              ["2026-11-25 10:00"] = { "last 3" } }, kept)
            assert.are.same({ "2026-11-25 09:00", "2026-11-25 08:00" }, deleted)
        end)

        it("keep_hourly keeps the newest of each of the n most recent hours with snapshots", function()
            local kept, deleted = outcome(plan_of(snaps("2026-11-25 12:40", "2026-11-25 12:10",
                "2026-11-25 11:59", "2026-11-25 09:30", "2026-11-25 09:00", "2026-11-25 08:00"),
                { keep_hourly = 3 }))
            assert.are.same({ ["2026-11-25 12:40"] = { "newest", "hourly 2026-11-25 12:00" },
                              ["2026-11-25 11:59"] = { "hourly 2026-11-25 11:00" },
                              ["2026-11-25 09:30"] = { "hourly 2026-11-25 09:00" } }, kept)
            assert.are.same({ "2026-11-25 12:10", "2026-11-25 09:00", "2026-11-25 08:00" }, deleted)
        end)

        it("keep_daily skips days without snapshots (UTC days)", function()
            local kept, deleted = outcome(plan_of(snaps("2026-11-25 18:00", "2026-11-25 09:00",
                "2026-11-24 23:59", "2026-11-24 00:00", "2026-11-22 12:00", "2026-11-20 12:00"),
                { keep_daily = 3 }))
            assert.are.same({ ["2026-11-25 18:00"] = { "newest", "daily 2026-11-25" },
                              ["2026-11-24 23:59"] = { "daily 2026-11-24" },
                              ["2026-11-22 12:00"] = { "daily 2026-11-22" } }, kept)
            assert.are.same({ "2026-11-25 09:00", "2026-11-24 00:00", "2026-11-20 12:00" }, deleted)
        end)

        it("keep_weekly uses ISO weeks, Monday to Sunday", function()
            -- 2026-11-23 is a Monday (week 48), 2026-11-22 a Sunday (week 47).
            local kept, deleted = outcome(plan_of(snaps("2026-11-25 10:00", "2026-11-23 00:00",
                "2026-11-22 23:00", "2026-11-16 00:00", "2026-11-10 00:00"), { keep_weekly = 2 }))
            assert.are.same({ ["2026-11-25 10:00"] = { "newest", "weekly 2026-W48" },
                              ["2026-11-22 23:00"] = { "weekly 2026-W47" } }, kept)
            assert.are.same({ "2026-11-23 00:00", "2026-11-16 00:00", "2026-11-10 00:00" }, deleted)
        end)

        it("keep_weekly puts the days around New Year in their ISO year", function()
            -- 2027-01-01 is a Friday: it is in 2026-W53, with 2026-12-28.
            local kept, deleted = outcome(plan_of(snaps("2027-01-04 00:00", "2027-01-02 10:00",
                "2026-12-28 00:00", "2026-12-27 23:00"), { keep_weekly = 3 }))
            assert.are.same({ ["2027-01-04 00:00"] = { "newest", "weekly 2027-W01" },
                              ["2027-01-02 10:00"] = { "weekly 2026-W53" },
                              ["2026-12-27 23:00"] = { "weekly 2026-W52" } }, kept)
            assert.are.same({ "2026-12-28 00:00" }, deleted)
        end)

        it("keep_monthly and keep_yearly keep the newest of each month and year", function()
            local list = snaps("2026-03-02 00:00", "2026-03-01 00:00", "2026-02-28 00:00",
                               "2025-12-31 23:00", "2025-12-01 00:00", "2024-06-01 00:00")
            local kept, deleted = outcome(plan_of(list, { keep_monthly = 3 }))
            assert.are.same({ ["2026-03-02 00:00"] = { "newest", "monthly 2026-03" },
                              ["2026-02-28 00:00"] = { "monthly 2026-02" },
                              ["2025-12-31 23:00"] = { "monthly 2025-12" } }, kept)
            assert.are.same({ "2026-03-01 00:00", "2025-12-01 00:00", "2024-06-01 00:00" }, deleted)
            kept = outcome(plan_of(list, { keep_yearly = 5 }))
            assert.are.same({ ["2026-03-02 00:00"] = { "newest", "yearly 2026" },
                              ["2025-12-31 23:00"] = { "yearly 2025" },
                              ["2024-06-01 00:00"] = { "yearly 2024" } }, kept)
        end)

        it("keep_within keeps everything at most d older than the newest, not the wall clock", function()
            local kept, deleted = outcome(plan_of(snaps("2001-05-01 12:00", "2001-05-01 11:00",
                "2001-05-01 10:00", "2001-05-01 09:59:59", "2001-05-01 08:00"), { keep_within = "2h" }))
            assert.are.same({ ["2001-05-01 12:00"] = { "newest", "within 2h" },
                              ["2001-05-01 11:00"] = { "within 2h" },
                              ["2001-05-01 10:00"] = { "within 2h" } }, kept)
            assert.are.same({ "2001-05-01 09:59:59", "2001-05-01 08:00" }, deleted)
        end)

        it("max_snapshots keeps the newest n", function()
            local kept, deleted = outcome(plan_of(snaps("2026-11-25 03:00", "2026-11-25 02:00",
                "2026-11-25 01:00"), { max_snapshots = 2 }))
            assert.are.same({ ["2026-11-25 03:00"] = { "newest", "max_snapshots 2" },
                              ["2026-11-25 02:00"] = { "max_snapshots 2" } }, kept)
            assert.are.same({ "2026-11-25 01:00" }, deleted)
        end)

        it("retention_time keeps what is at most that old, measured from the newest", function()
            local kept, deleted = outcome(plan_of(snaps("2001-01-02 00:00", "2001-01-01 00:00",
                "2000-12-31 23:59"), { retention_time = 24 * 3600 }))
            assert.are.same({ ["2001-01-02 00:00"] = { "newest", "retention_time 1d" },
                              ["2001-01-01 00:00"] = { "retention_time 1d" } }, kept)
            assert.are.same({ "2000-12-31 23:59" }, deleted)
        end)

        it("max_snapshots and retention_time together are the seed's limits: both must hold", function()
            local list = snaps("2026-11-25 12:00", "2026-11-25 11:00", "2026-11-25 10:00",
                               "2026-11-23 00:00")
            local kept, deleted = outcome(plan_of(list, { max_snapshots = 2, retention_time = "24h" }))
            assert.are.same({ ["2026-11-25 12:00"] = { "newest", "max_snapshots 2", "retention_time 24h" },
                              ["2026-11-25 11:00"] = { "max_snapshots 2", "retention_time 24h" } }, kept)
            assert.are.same({ "2026-11-25 10:00", "2026-11-23 00:00" }, deleted)
            kept, deleted = outcome(plan_of(list, { max_snapshots = 10, retention_time = "24h" }))
            assert.are.same({ "2026-11-23 00:00" }, deleted)
        end)

        it("keeps a snapshot when any rule keeps it, listing every reason in a fixed order", function()
            local kept, deleted = outcome(plan_of(snaps("2026-11-25 18:00", "2026-11-25 17:00",
                "2026-11-24 12:00", "2026-11-01 00:00", "2026-10-15 00:00", "2026-10-01 00:00"),
                { max_snapshots = 1, keep_last = 2, keep_daily = 2, keep_monthly = 2, keep_within = "1h" }))
            assert.are.same({
                ["2026-11-25 18:00"] = { "newest", "max_snapshots 1", "last 1", "daily 2026-11-25",
                                         "monthly 2026-11", "within 1h" },
                ["2026-11-25 17:00"] = { "last 2", "within 1h" },
                ["2026-11-24 12:00"] = { "daily 2026-11-24" },
                ["2026-10-15 00:00"] = { "monthly 2026-10" },
            }, kept)
            assert.are.same({ "2026-11-01 00:00", "2026-10-01 00:00" }, deleted)
        end)

        it("always keeps the newest snapshot", function()
            for _, rules in ipairs({ { keep_last = 1 }, { keep_within = 0 }, { retention_time = 0 },
                                     { max_snapshots = 1 }, { keep_yearly = 1 }, {} }) do
                local plan = plan_of(snaps("2026-11-25 00:00", "2026-11-25 00:00:01", "2020-01-01 00:00"), rules)
                assert.are.equal("2026-11-25 00:00:01", plan.keep[1].snapshot.id)
                assert.are.equal("newest", plan.keep[1].reasons[1])
                for _, s in ipairs(plan.delete) do assert.are_not.equal("2026-11-25 00:00:01", s.id) end
            end
        end)

        it("with equal timestamps keeps the given order, the first as newest", function()
            local list = { { id = "b", timestamp = 5 }, { id = "a", timestamp = 5 }, { id = "c", timestamp = 5 } }
            local plan = plan_of(list, { keep_last = 1 })
            assert.are.equal("b", plan.keep[1].snapshot.id)
            assert.are.same({ "a", "c" }, select(2, outcome(plan)))
        end)

        it("applies the seed's defaults when given no policy", function()
            local plan = plan_of(snaps("2026-11-25 06:00", "2026-11-25 05:00", "2026-11-25 04:00",
                "2026-11-25 03:00", "2026-11-25 02:00", "2026-11-25 01:00", "2026-11-23 00:00"))
            assert.are.same({ "2026-11-25 01:00", "2026-11-23 00:00" }, select(2, outcome(plan)))
            assert.are.same({ "max_snapshots 5", "retention_time 24h" }, plan.keep[5].reasons)
        end)

        it("accepts a policy and returns it in the plan", function()
            local p = assert(policy.new{ keep_last = 1 })
            local plan = plan_of(snaps("2026-11-25 06:00"), p)
            assert.are.same(p, plan.policy)
        end)

        it("does not delete anything itself, dry run or not", function()
            local list = snaps("2026-11-25 06:00", "2026-11-25 05:00")
            local plan = plan_of(list, { keep_last = 1, dry_run = true })
            assert.are.equal(1, #plan.delete)
            assert.are.equal(2, #list)
        end)

        it("returns INVALID for a bad policy value", function()
            invalid("keep_daily", policy.plan(snaps("2026-11-25 06:00"), { keep_daily = -2 }))
            invalid("max_snapshots", policy.plan(snaps("2026-11-25 06:00"), { max_snapshots = 0 }))
            invalid("plan: retention_time", policy.plan(snaps("2026-11-25 06:00"), { retention_time = "1y" }))
        end)

        it("raises on an unknown policy field", function()
            raises("plan: unknown option 'bogus'", policy.plan, snaps("2026-11-25 06:00"), { bogus = 1 })
        end)

        it("raises on a list that is not one, and on a snapshot without a timestamp", function()
            raises("bad argument #1 to 'plan' (table expected, got nil)", policy.plan, nil, {})
            raises("plan: snapshot #1 has no numeric timestamp", policy.plan, { { id = "x" } }, {})
            raises("plan: snapshot #2 has no numeric timestamp", policy.plan,
                   { { id = "a", timestamp = 1 }, { id = "x", timestamp = "1" } }, {})
            raises("plan: snapshot #1 has no numeric timestamp", policy.plan, { { id = "x", timestamp = 0 / 0 } }, {})
            raises("plan: snapshot #2 is a string, not a table", policy.plan, { { id = "a", timestamp = 1 }, "b" }, {})
            raises("bad argument #1 to 'plan' (table expected, got string)", policy.plan, "x", {})
        end)

        it("raises on a policy that is not a table", function()
            raises("bad argument #2 to 'plan' (table expected, got string)", policy.plan, {}, "production")
        end)

        describe("newest by creation", function()
            -- { id, timestamp text, seq }: made in seq order; #2 was made
            -- before the clock stepped back two days.
            local function made(...)
                local list = {}
                for i, row in ipairs({ ... }) do
                    list[i] = { id = row[1], timestamp = utc(row[2]), seq = row[3] }
                end
                return list
            end

            local STEPPED = { { "s4", "2026-11-25 10:10", 4 }, { "s3", "2026-11-25 10:05", 3 },
                              { "s2", "2026-11-27 10:00", 2 }, { "s1", "2026-11-25 10:00", 1 } }

            it("orders by seq when every snapshot has one, whatever the timestamps say", function()
                local list = made(STEPPED[3], STEPPED[1], STEPPED[4], STEPPED[2])
                local kept, deleted = outcome(plan_of(list, { keep_last = 1 }))
                assert.are.same({ s4 = { "newest", "last 1" } }, kept)
                assert.are.same({ "s3", "s2", "s1" }, deleted)
            end)

            it("orders by timestamp when a snapshot has no seq (snapshots made before seq existed)", function()
                local list = made(util.unpack(STEPPED))
                list[4].seq = nil
                local kept, deleted = outcome(plan_of(list, { keep_last = 1 }))
                assert.are.same({ s2 = { "newest", "last 1" } }, kept)
                assert.are.same({ "s4", "s3", "s1" }, deleted)
            end)

            it("keeps the given order for equal seqs", function()
                local list = { { id = "b", timestamp = 1, seq = 7 }, { id = "a", timestamp = 2, seq = 7 } }
                assert.are.equal("b", plan_of(list, { keep_last = 1 }).keep[1].snapshot.id)
            end)

            it("never deletes the snapshot just taken because an older one is dated in the future", function()
                -- Issue 9, item 9: the default cleanup right after a snapshot.
                local list = made({ "new", "2026-11-25 10:00", 2 }, { "stale", "2026-11-27 10:00", 1 })
                local kept, deleted = outcome(plan_of(list))
                assert.are.same({ "newest", "max_snapshots 5", "retention_time 24h" }, kept.new)
                assert.are.same({ "max_snapshots 5", "retention_time 24h" }, kept.stale)
                assert.are.same({}, deleted)
                kept, deleted = outcome(plan_of(list, { max_snapshots = 1 }))
                assert.are.same({ "newest", "max_snapshots 1" }, kept.new)
                assert.are.same({ "stale" }, deleted)
            end)

            it("counts a snapshot dated after the newest as age 0, never as too old", function()
                local list = made(util.unpack(STEPPED))
                for _, rules in ipairs({ { keep_within = "1h" }, { retention_time = 0 }, { keep_within = 0 } }) do
                    local kept = outcome(plan_of(list, rules))
                    assert.is_table(kept.s2, "dated two days after the newest, deleted by " .. next(rules))
                end
                local kept, deleted = outcome(plan_of(list, { keep_within = "5m" }))
                assert.are.same({ "newest", "within 5m" }, kept.s4)
                assert.are.same({ "within 5m" }, kept.s3)
                assert.are.same({ "within 5m" }, kept.s2)
                assert.are.same({ "s1" }, deleted)
            end)

            it("fills buckets in creation order, a bucket counted once however its snapshots interleave", function()
                local list = made(util.unpack(STEPPED))
                list[2].timestamp = utc("2026-11-24 10:05")
                local kept, deleted = outcome(plan_of(list, { keep_daily = 2 }))
                assert.are.same({ s4 = { "newest", "daily 2026-11-25" }, s3 = { "daily 2026-11-24" } }, kept)
                assert.are.same({ "s2", "s1" }, deleted)
                kept, deleted = outcome(plan_of(list, { keep_daily = 5 }))
                assert.are.same({ "daily 2026-11-27" }, kept.s2)
                assert.are.same({ "s1" }, deleted)              -- its day has a newer snapshot, s4
            end)

            it("raises on a seq that is not a number", function()
                raises("plan: snapshot #2 has a seq that is not a number", policy.plan,
                       { { id = "a", timestamp = 1, seq = 1 }, { id = "b", timestamp = 2, seq = "2" } }, {})
                raises("plan: snapshot #1 has a seq that is not a number", policy.plan,
                       { { id = "a", timestamp = 1, seq = 0 / 0 } }, {})
            end)
        end)

        describe("damaged snapshots", function()
            -- A snapshot whose manifest cannot be read: listed with
            -- damaged = true and a timestamp taken from its id.
            local function list_with_damage()
                return {
                    { id = "d5", timestamp = utc("2026-11-25 12:00"), seq = 5, damaged = true },
                    { id = "a4", timestamp = utc("2026-11-25 11:00"), seq = 4 },
                    { id = "d3", timestamp = utc("2026-11-25 10:00"), seq = 3, damaged = true },
                    { id = "b2", timestamp = utc("2026-11-25 09:00"), seq = 2 },
                    { id = "c1", timestamp = utc("2026-11-25 08:00"), seq = 1 },
                }
            end

            it("are deleted whatever the rules, even by a policy that keeps everything", function()
                for _, rules in ipairs({ {}, { keep_last = 10 }, { keep_within = "520w" }, { max_snapshots = 100 },
                                         { keep_hourly = 100, keep_daily = 100, keep_yearly = 100 } }) do
                    local kept, deleted = outcome(plan_of(list_with_damage(), rules))
                    assert.are.same({ "d5", "d3" }, deleted)
                    assert.is_nil(kept.d5)
                    assert.is_nil(kept.d3)
                    assert.is_table(kept.c1)
                end
            end)

            it("are not counted by max_snapshots or keep_* rules", function()
                local kept, deleted = outcome(plan_of(list_with_damage(), { max_snapshots = 2 }))
                assert.are.same({ a4 = { "newest", "max_snapshots 2" }, b2 = { "max_snapshots 2" } }, kept)
                assert.are.same({ "c1", "d5", "d3" }, deleted)
                kept = outcome(plan_of(list_with_damage(), { keep_last = 2 }))
                assert.are.same({ a4 = { "newest", "last 1" }, b2 = { "last 2" } }, kept)
                kept = outcome(plan_of(list_with_damage(), { keep_hourly = 2 }))
                assert.are.same({ a4 = { "newest", "hourly 2026-11-25 11:00" }, b2 = { "hourly 2026-11-25 09:00" } }, kept)
            end)

            it("are never protected as the newest; ages count from the newest undamaged one", function()
                local kept, deleted = outcome(plan_of(list_with_damage(), { retention_time = "2h" }))
                assert.are.same({ a4 = { "newest", "retention_time 2h" }, b2 = { "retention_time 2h" } }, kept)
                assert.are.same({ "c1", "d5", "d3" }, deleted)
            end)

            it("come last in delete, in the order given, as the tables given", function()
                local list = list_with_damage()
                local plan = plan_of(list, { keep_last = 1 })
                assert.are.equal(list[4], plan.delete[1])
                assert.are.equal(list[5], plan.delete[2])
                assert.are.equal(list[1], plan.delete[3])
                assert.are.equal(list[3], plan.delete[4])
                for _, k in ipairs(plan.keep) do assert.is_not_true(k.snapshot.damaged) end
            end)

            it("are all deleted, and nothing kept, when every snapshot is damaged", function()
                local list = { { id = "x", timestamp = 2, damaged = true }, { id = "y", timestamp = 1, damaged = true } }
                local kept, deleted = outcome(plan_of(list))
                assert.are.same({}, kept)
                assert.are.same({ "x", "y" }, deleted)
            end)

            it("need no timestamp or seq, and do not stop the others from being ordered by seq", function()
                local list = list_with_damage()
                list[1].timestamp, list[1].seq, list[3].seq = nil, nil, nil
                list[2].timestamp = utc("2026-11-20 00:00")   -- older than b2, but made later
                local kept, deleted = outcome(plan_of(list, { keep_last = 1 }))
                assert.are.same({ a4 = { "newest", "last 1" } }, kept)
                assert.are.same({ "b2", "c1", "d5", "d3" }, deleted)
            end)

            it("are told apart by damaged = true only", function()
                local list = list_with_damage()
                list[1].damaged = false
                local kept = outcome(plan_of(list, { keep_last = 1 }))
                assert.are.same({ d5 = { "newest", "last 1" } }, kept)
            end)
        end)

        it("names buckets by UTC, as os.date('!...') does", function()
            for _, text in ipairs({ "2026-11-25 18:00", "2027-01-01 00:00", "2020-02-29 23:59", "1999-12-31 23:00" }) do
                local ts = utc(text)
                local b = policy.buckets(ts)
                local sec = math.floor(ts / 1000)
                assert.are.equal(text, os.date("!%Y-%m-%d %H:%M", sec))
                assert.are.same({ hourly = os.date("!%Y-%m-%d %H:00", sec), daily = os.date("!%Y-%m-%d", sec),
                                  weekly = os.date("!%G-W%V", sec), monthly = os.date("!%Y-%m", sec),
                                  yearly = os.date("!%Y", sec) }, b)
            end
        end)
    end)
end)

-------------------------------------------------------------------------
-- sm:cleanup with keep rules, on a real snapshot manager
-------------------------------------------------------------------------

-- Rewrites the manifests' timestamps ({ id = ms }) of the log in dir and
-- drops the catalog, which a manager rebuilds from the manifests when it
-- opens.
local function set_timestamps(dir, stamps)
    local snap_dir = dir .. "/.snapshots"
    for id, ts in pairs(stamps) do
        local path = ("%s/snapshot-%s/manifest.json"):format(snap_dir, id)
        local text, n = util.read_file(path):gsub('("timestamp"%s*:%s*)[-+%d.eE]+', function(prefix)
            return prefix .. ("%d"):format(ts)
        end)
        assert.are.equal(1, n, path)
        util.write_file(path, text)
        assert.are.equal(ts, util.tointeger(cjson.decode(text).timestamp))
    end
    assert(os.remove(snap_dir .. "/snapshots.json"))
end

describe("sm:cleanup with a policy", function()
    local tmp, dir, log, sm

    -- Snapshots taken at the given UTC times (newest first), as a fresh
    -- manager sees them; returns the ids in that order.
    local function taken_at(...)
        local times, ids, stamps = { ... }, {}, {}
        for i = #times, 1, -1 do
            log:append(nil, "record " .. i)
            local s = assert(sm:create(log))
            ids[i], stamps[s.id] = s.id, utc(times[i])
        end
        sm:close()
        set_timestamps(dir, stamps)
        sm = assert(takhin.snapshot_manager(dir))
        local listed = {}
        for i, s in ipairs(sm:list()) do listed[i] = s.id end
        assert.are.same(ids, listed)
        return ids
    end

    local function listed()
        local ids = {}
        for i, s in ipairs(sm:list()) do ids[i] = s.id end
        return ids
    end

    local function pick(ids, ...)
        local out = {}
        for i, n in ipairs({ ... }) do out[i] = ids[n] end
        return out
    end

    before_each(function()
        tmp = util.tmpdir()
        dir = tmp .. "/log"
        log = assert(takhin.open_log{ dir = dir })
        sm = assert(takhin.snapshot_manager(dir))
    end)

    after_each(function()
        if sm then sm:close() end
        if log then log:close() end
        util.rmtree(tmp)
    end)

    local TIMES = { "2026-11-25 18:00", "2026-11-25 09:00", "2026-11-24 20:00", "2026-11-24 08:00",
                    "2026-11-20 12:00", "2026-10-30 12:00" }

    it("deletes what no keep rule keeps, in one call, and returns the plan", function()
        local ids = taken_at(util.unpack(TIMES))
        local n, plan = sm:cleanup{ keep_last = 1, keep_daily = 3 }
        assert.are.equal(3, n)
        assert.are.same(pick(ids, 1, 3, 5), listed())
        assert.are.same({ "newest", "last 1", "daily 2026-11-25" }, plan.keep[1].reasons)
        assert.are.same({ "daily 2026-11-24" }, plan.keep[2].reasons)
        assert.are.same({ "daily 2026-11-20" }, plan.keep[3].reasons)
        assert.are.equal(ids[2], plan.delete[1].id)
        assert.is_nil(sm:get(ids[2]))
    end)

    it("takes a policy made by policy.new", function()
        local ids = taken_at(util.unpack(TIMES))
        local pol = assert(policy.new{ preset = "production", keep_monthly = 2 })
        -- production: 10 snapshots within 7 days; monthly adds October's.
        local n = sm:cleanup(pol)
        assert.are.equal(0, n)
        pol = assert(policy.new{ keep_within = "1d", keep_monthly = 2 })
        assert.are.equal(2, sm:cleanup(pol))
        assert.are.same(pick(ids, 1, 2, 3, 6), listed())
    end)

    it("with dry_run deletes nothing and returns 0 and the plan", function()
        local ids = taken_at(util.unpack(TIMES))
        local n, plan = sm:cleanup{ keep_last = 2, dry_run = true }
        assert.are.equal(0, n)
        assert.are.same(ids, listed())
        assert.are.equal(2, #plan.keep)
        assert.are.same(pick(ids, 3, 4, 5, 6), (function()
            local d = {}
            for i, s in ipairs(plan.delete) do d[i] = s.id end
            return d
        end)())
    end)

    it("still takes the seed's rules: max_snapshots and retention_time from the newest", function()
        local ids = taken_at(util.unpack(TIMES))
        assert.are.equal(3, (sm:cleanup{ max_snapshots = 3 }))
        assert.are.same(pick(ids, 1, 2, 3), listed())
        assert.are.equal(1, (sm:cleanup{ retention_time = "12h" }))
        assert.are.same(pick(ids, 1, 2), listed())
    end)

    it("with no rules applies the seed's defaults", function()
        local ids = taken_at(util.unpack(TIMES))
        assert.are.equal(3, (sm:cleanup()))
        assert.are.same(pick(ids, 1, 2, 3), listed())
    end)

    it("with an empty table keeps everything", function()
        local ids = taken_at(util.unpack(TIMES))
        assert.are.equal(0, (sm:cleanup{}))
        assert.are.same(ids, listed())
    end)

    it("returns INVALID for bad values and deletes nothing", function()
        local ids = taken_at(util.unpack(TIMES))
        for _, rules in ipairs({ { max_snapshots = 0 }, { max_snapshots = -1 }, { max_snapshots = 2.5 },
                                 { retention_time = "5x" }, { keep_daily = -1 }, { keep_within = "h" },
                                 { preset = "nope" }, { dry_run = 1 } }) do
            local n, msg, code = sm:cleanup(rules)
            assert.is_nil(n)
            assert.are.equal("INVALID", code)
            assert.truthy(msg:find("^cleanup: "), msg)
            assert.are.same(ids, listed())
        end
    end)

    it("raises on an unknown rule name", function()
        taken_at(util.unpack(TIMES))
        local ok, err = pcall(sm.cleanup, sm, { keep_dialy = 3 })
        assert.is_false(ok)
        assert.truthy(tostring(err):find("cleanup: unknown option 'keep_dialy'", 1, true), tostring(err))
        assert.are.equal(#TIMES, #sm:list())
    end)

    -- sm:cleanup is Lua over sm:list() and sm:_delete_many(ids): driven
    -- here with listings as the engine gives them once snapshots carry
    -- seq and damaged (issue 9, items 9 and 13).
    local function stand_in(listing)
        local m = { deleted = {} }
        function m.list() return listing end
        function m._delete_many(_, ids)
            for _, id in ipairs(ids) do m.deleted[#m.deleted + 1] = id end
            return #ids
        end
        return m
    end

    it("deletes damaged snapshots and never the one just taken, whatever the timestamps", function()
        local Snap = takhin.core.SnapshotManager
        local now = utc("2026-11-25 12:00")
        local m = stand_in({
            { id = "just-taken", timestamp = now, seq = 9 },
            { id = "broken", timestamp = now - HOUR, seq = 8, damaged = true },
            { id = "from-the-future", timestamp = now + 3 * DAY, seq = 7 },
            { id = "old", timestamp = now - 2 * DAY, seq = 6 },
        })
        local n, plan = Snap.cleanup(m)
        assert.are.equal(2, n)
        assert.are.same({ "old", "broken" }, m.deleted)
        assert.are.equal("just-taken", plan.keep[1].snapshot.id)
        assert.are.equal("from-the-future", plan.keep[2].snapshot.id)
        m = stand_in({ { id = "only", timestamp = now, seq = 1, damaged = true } })
        assert.are.equal(1, (Snap.cleanup(m, {})))
        assert.are.same({ "only" }, m.deleted)
    end)

    it("passes on what sm:list() returns when it fails, deleting nothing", function()
        local Snap = takhin.core.SnapshotManager
        local m = stand_in(nil)
        function m.list() return nil, "catalog /x: Permission denied", "IO" end
        local n, msg, code = Snap.cleanup(m)
        assert.is_nil(n)
        assert.are.equal("IO", code)
        assert.are.equal("catalog /x: Permission denied", msg)
        assert.are.same({}, m.deleted)
    end)

    it("lets sm:create take a policy's min_interval", function()
        local pol = assert(policy.new{ preset = "development" })
        log:append(nil, "x")
        assert(sm:create(log, { min_interval = pol.min_interval }))
        local s, msg, code = sm:create(log, { min_interval = pol.min_interval })
        assert.is_nil(s)
        assert.are.equal("TOO_SOON", code, msg)
    end)
end)

-------------------------------------------------------------------------
-- The C engine's copy of the seed rule
-------------------------------------------------------------------------

-- The engine keeps its own seed rule, sm:_cleanup(max_snapshots,
-- retention_ms) (0 and -1 turn a limit off), which deletes as it decides.
-- policy.plan must keep exactly what it keeps: random snapshot sets, each
-- built fresh from one template log, are cleaned by the engine and
-- compared with the plan made of the same listing.
describe("sm:_cleanup and policy.plan", function()
    local N = 7                                  -- snapshots in the template
    local CASES = 60
    local tmp, template, ids

    setup(function()
        tmp = util.tmpdir()
        template = tmp .. "/template"
        local log = assert(takhin.open_log{ dir = template })
        local sm = assert(takhin.snapshot_manager(template))
        ids = {}
        for i = 1, N do
            log:append(nil, "record " .. i)
            ids[i] = assert(sm:create(log)).id
        end
        sm:close()
        log:close()
    end)

    teardown(function() util.rmtree(tmp) end)

    local function sorted_ids(list)
        local out = {}
        for i, s in ipairs(list) do out[i] = s.id end
        table.sort(out)
        return out
    end

    -- A copy of the template holding n of its snapshots, with the given
    -- timestamps ({ id = ms }).
    local function fresh_set(k, chosen, stamps)
        local dir = ("%s/case%d"):format(tmp, k)
        util.copytree(template, dir)
        local keep = {}
        for _, id in ipairs(chosen) do keep[id] = true end
        for _, id in ipairs(ids) do
            if not keep[id] then util.rmtree(("%s/.snapshots/snapshot-%s"):format(dir, id)) end
        end
        set_timestamps(dir, stamps)
        return dir
    end

    -- A random case: which snapshots, their timestamps (ties and wide
    -- gaps included), and the two limits (each sometimes off, retention
    -- often exactly the age of one snapshot: the boundary).
    local function random_case()
        local chosen, stamps, times = {}, {}, {}
        for _, id in ipairs(ids) do
            if #chosen == 0 or math.random() < 0.75 then
                chosen[#chosen + 1] = id
                local ts = 1764000000000 + math.random(0, 12) * 3 * HOUR
                if math.random() < 0.15 then ts = ts - math.random(1, 60) * DAY end
                stamps[id], times[#times + 1] = ts, ts
            end
        end
        local max = math.random(0, #chosen + 1)          -- 0: off
        local r, retention = math.random(), -1           -- -1: off
        if r < 0.35 then
            local a, b = times[math.random(#times)], times[math.random(#times)]
            retention = math.abs(a - b)
        elseif r < 0.45 then
            retention = 0
        elseif r < 0.75 then
            retention = math.random(0, 40) * HOUR + math.random(0, 1) * MINUTE
        end
        return chosen, stamps, max, retention
    end

    local function rules_of(max, retention)
        local rules = {}
        if max > 0 then rules.max_snapshots = max end
        if retention >= 0 then rules.retention_time = ("%dms"):format(retention) end
        return rules
    end

    local function describe_case(list, max, retention)
        local rows = {}
        for i, s in ipairs(list) do rows[i] = ("%s@%d"):format(s.id, s.timestamp) end
        return ("max_snapshots %d, retention_ms %d, listed %s"):format(max, retention, table.concat(rows, " "))
    end

    it("keep the same snapshots of random sets", function()
        math.randomseed(14)
        local disagreements, deleted_some, kept_all = {}, 0, 0
        for k = 1, CASES do
            local chosen, stamps, max, retention = random_case()
            local dir = fresh_set(k, chosen, stamps)
            local sm = assert(takhin.snapshot_manager(dir))
            local list = assert(sm:list())
            assert.are.equal(#chosen, #list)
            local plan = assert(policy.plan(list, rules_of(max, retention)))
            local expected = {}
            for i, kept in ipairs(plan.keep) do expected[i] = kept.snapshot end
            local n = assert(sm:_cleanup(max, retention))
            local left = assert(sm:list())
            sm:close()
            local by_c = table.concat(sorted_ids(left), " ")
            local by_plan = table.concat(sorted_ids(expected), " ")
            if n ~= #plan.delete or by_c ~= by_plan then
                disagreements[#disagreements + 1] = ("%s: C deleted %d and kept %s, the plan %s"):format(
                    describe_case(list, max, retention), n, by_c, by_plan)
            end
            if n > 0 then deleted_some = deleted_some + 1 else kept_all = kept_all + 1 end
            util.rmtree(dir)
        end
        assert.are.same({}, disagreements)
        -- the cases were not all alike
        assert.is_true(deleted_some >= CASES / 4, deleted_some .. " cases deleted something")
        assert.is_true(kept_all >= 3, kept_all .. " cases deleted nothing")
    end)
end)
