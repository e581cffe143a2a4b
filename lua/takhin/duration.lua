--- takhin.duration: durations as people write them.
--   parse("500ms") --> 500        parse("1h30m") --> 5400000
--   parse(90)      --> 90000      (a number is seconds)
-- Every result is in milliseconds.  Runs on Lua 5.1-5.4 and LuaJIT.
local M = {}

-- Larger durations (over 285,000 years) are refused rather than rounded
-- or wrapped: 2^53 ms is where doubles stop counting milliseconds exactly.
local MAX_MS = 2 ^ 53

local UNIT_MS = { ms = 1, s = 1000, m = 60000, h = 3600000, d = 86400000, w = 604800000 }

local function bad(text, why)
    return nil, ("invalid duration %q: %s (use a number of seconds or forms like " ..
        "\"500ms\", \"90s\", \"30m\", \"6h\", \"7d\", \"1h30m\")"):format(tostring(text), why)
end

--- Milliseconds in v (a number of seconds or a duration string), or nil
-- and a message naming the bad text.
function M.parse(v)
    if type(v) == "number" then
        if v ~= v or v == math.huge or v == -math.huge then return bad(v, "not a finite number") end
        if v < 0 then return bad(v, "negative") end
        if v * 1000.0 > MAX_MS then return bad(v, "too large") end   -- float: no wrap
        return math.floor(v * 1000 + 0.5)
    end
    if type(v) ~= "string" then return bad(v, "a " .. type(v) .. " is not a duration") end
    local text = v:match("^%s*(.-)%s*$")
    if text == "" then return bad(v, "empty") end
    if text:match("^%d+%.?%d*$") then return M.parse(tonumber(text)) end
    local total, pos, seen = 0, 1, {}
    while pos <= #text do
        local num, unit, after = text:match("^(%d+%.?%d*)(%a+)()", pos)
        if not num then return bad(v, "expected a number and a unit at \"" .. text:sub(pos) .. "\"") end
        local scale = UNIT_MS[unit]
        if not scale then return bad(v, "unknown unit \"" .. unit .. "\"") end
        if seen[unit] then return bad(v, "unit \"" .. unit .. "\" given twice") end
        seen[unit] = true
        total = total + (tonumber(num) + 0.0) * scale                  -- float: no wrap
        if total > MAX_MS then return bad(v, "too large") end
        pos = after
    end
    return math.floor(total + 0.5)
end

--- Like parse, but raises on bad input (for option handling in Lua code).
function M.ms(v, what)
    local ms, err = M.parse(v)
    if not ms then error((what and (what .. ": ") or "") .. err, 2) end
    return ms
end

--- "1h30m" style text for a number of milliseconds.
function M.format(ms)
    if ms == 0 then return "0s" end
    local parts, rest = {}, ms
    for _, u in ipairs({ { "d", 86400000 }, { "h", 3600000 }, { "m", 60000 }, { "s", 1000 }, { "ms", 1 } }) do
        local n = math.floor(rest / u[2])
        if n > 0 then
            parts[#parts + 1] = n .. u[1]
            rest = rest - n * u[2]
        end
    end
    return table.concat(parts)
end

return M
