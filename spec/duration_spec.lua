-- takhin.duration: durations as people write them, in milliseconds
-- (docs/API.md, /work/shared/SPEC.md section 5).

local duration = require("takhin.duration")

local SECOND, MINUTE, HOUR, DAY, WEEK = 1000, 60000, 3600000, 86400000, 604800000

-- parse(v) fails and its message names the text.
local function rejects(v, named)
    local ms, msg = duration.parse(v)
    assert.is_nil(ms, "accepted " .. tostring(v))
    assert.is_string(msg)
    assert.truthy(msg:find(named, 1, true), "message does not name " .. named .. ": " .. msg)
    assert.truthy(msg:find("invalid duration", 1, true), msg)
    return msg
end

describe("takhin.duration", function()
    describe("parse", function()
        it("knows every unit: ms, s, m, h, d, w", function()
            assert.are.equal(500, duration.parse("500ms"))
            assert.are.equal(90 * SECOND, duration.parse("90s"))
            assert.are.equal(30 * MINUTE, duration.parse("30m"))
            assert.are.equal(6 * HOUR, duration.parse("6h"))
            assert.are.equal(7 * DAY, duration.parse("7d"))
            assert.are.equal(2 * WEEK, duration.parse("2w"))
        end)

        it("adds up combinations, in any order", function()
            assert.are.equal(HOUR + 30 * MINUTE, duration.parse("1h30m"))
            assert.are.equal(DAY + 2 * HOUR + 3 * MINUTE + 4 * SECOND + 5, duration.parse("1d2h3m4s5ms"))
            assert.are.equal(30 * MINUTE + HOUR, duration.parse("30m1h"))
            assert.are.equal(WEEK + DAY, duration.parse("1w1d"))
        end)

        it("accepts fractions and surrounding spaces", function()
            assert.are.equal(HOUR + 30 * MINUTE, duration.parse("1.5h"))
            assert.are.equal(250, duration.parse("0.25s"))
            assert.are.equal(5 * MINUTE, duration.parse("  5m "))
        end)

        it("takes numbers, and numeric text, as seconds", function()
            assert.are.equal(90 * SECOND, duration.parse(90))
            assert.are.equal(500, duration.parse(0.5))
            assert.are.equal(0, duration.parse(0))
            assert.are.equal(3600 * SECOND, duration.parse("3600"))
            assert.are.equal(0, duration.parse("0s"))
        end)

        it("returns whole milliseconds", function()
            assert.are.equal(1, duration.parse(0.0014))
            assert.are.equal(math.floor(duration.parse("1.5h")), duration.parse("1.5h"))
        end)

        it("rejects empty text", function()
            assert.truthy(rejects("", '""'):find("empty", 1, true))
            rejects("   ", '"   "')
        end)

        it("rejects an unknown unit", function()
            assert.truthy(rejects("5x", '"5x"'):find('unknown unit "x"', 1, true))
            rejects("5H", '"5H"')
            rejects("1y", '"1y"')
            rejects("forever", '"forever"')
        end)

        it("rejects a unit without a number", function()
            rejects("h", '"h"')
            rejects("1hm", '"1hm"')
        end)

        it("rejects a number without a unit after a unit", function()
            rejects("1m30", '"1m30"')
        end)

        it("rejects negative durations", function()
            rejects("-1s", '"-1s"')
            assert.truthy(rejects(-1, "-1"):find("negative", 1, true))
        end)

        it("rejects a unit given twice", function()
            assert.truthy(rejects("1h1h", '"1h1h"'):find('unit "h" given twice', 1, true))
        end)

        it("rejects inner spaces and signs", function()
            rejects("1h 30m", '"1h 30m"')
            rejects("+5m", '"+5m"')
        end)

        it("rejects what is not a string or a number", function()
            assert.truthy(rejects({}, "table"):find("a table is not a duration", 1, true))
            rejects(true, "true")
            rejects(nil, "nil")
        end)

        it("rejects numbers that are not finite", function()
            rejects(0 / 0, "not a finite number")
            rejects(math.huge, "not a finite number")
            rejects(-math.huge, "not a finite number")
        end)

        it("never raises, whatever it is given: it is a parser, like tonumber", function()
            for _, v in ipairs({ false, true, {}, print, coroutine.create(print), io.stdout, 0 / 0,
                                 "", "\0", ("9"):rep(400), "1e309s" }) do
                local ok, ms, msg = pcall(duration.parse, v)
                assert.is_true(ok, tostring(v) .. " raised " .. tostring(ms))
                assert.is_nil(ms, "accepted " .. tostring(v))
                assert.is_string(msg)
            end
            local ok, ms, msg = pcall(duration.parse)
            assert.is_true(ok)
            assert.is_nil(ms)
            assert.truthy(msg:find("a nil is not a duration", 1, true), msg)
        end)

        it("suggests the accepted forms", function()
            assert.truthy(rejects("soon", '"soon"'):find('"1h30m"', 1, true))
        end)
    end)

    describe("ms", function()
        it("returns what parse returns", function()
            assert.are.equal(HOUR, duration.ms("1h"))
            assert.are.equal(2 * SECOND, duration.ms(2))
        end)

        it("raises on bad text, naming the option", function()
            local ok, err = pcall(duration.ms, "5x", "interval")
            assert.is_false(ok)
            assert.truthy(tostring(err):find('interval: invalid duration "5x"', 1, true), tostring(err))
        end)
    end)

    describe("format", function()
        it("writes the largest units first", function()
            assert.are.equal("0s", duration.format(0))
            assert.are.equal("500ms", duration.format(500))
            assert.are.equal("1h30m", duration.format(HOUR + 30 * MINUTE))
            assert.are.equal("1d2h3m4s5ms", duration.format(DAY + 2 * HOUR + 3 * MINUTE + 4 * SECOND + 5))
            assert.are.equal("7d", duration.format(WEEK))
        end)

        it("round-trips through parse", function()
            for _, ms in ipairs({ 1, 999, SECOND, 61 * SECOND, HOUR, 25 * HOUR, 3 * WEEK + 1 }) do
                assert.are.equal(ms, duration.parse(duration.format(ms)))
            end
        end)
    end)
end)
