-- What differs between Lua 5.4 and LuaJIT 2.1, for the specs: stand-ins
-- for integer division, math.type, math.tointeger, table.unpack and the
-- little-endian integer formats of string.pack / string.unpack.
--
--     local compat = require("helpers.compat")
--     if compat.is_luajit then return pending("Lua 5.4 only: <why>") end
--
-- The spec helpers, and every spec, run on Lua 5.4 and on LuaJIT 2.1
-- (scripts/run-tests.sh runs the suite under both): no `//`, bit
-- operators, string.pack, <close> or utf8, and no math.type,
-- math.tointeger, math.maxinteger or table.unpack without a fallback.
-- The functions here are those fallbacks.

local M = {}

-- True when running under LuaJIT (numbers are doubles: integers are exact
-- up to 2^53, and the takhin binding refuses offsets and timestamps
-- beyond).  A test that is about Lua 5.4 itself says so:
--     if util.is_luajit then return pending("Lua 5.4 only: <why>") end
M.is_luajit = type(rawget(_G, "jit")) == "table"

-- table.unpack (LuaJIT has only the global unpack).
M.unpack = table.unpack or rawget(_G, "unpack")

-- Largest and smallest integer the takhin binding takes and gives:
-- math.maxinteger / math.mininteger on Lua 5.4, +-(2^53 - 1) on LuaJIT:
-- 2^53 itself is refused there, since 2^53 + 1 arrives rounded to it.
M.maxinteger = math.maxinteger or 2 ^ 53 - 1
M.mininteger = math.mininteger or -(2 ^ 53 - 1)

-- math.type: "integer", "float" or nil.  On LuaJIT a number is "integer"
-- when it has an integer value the binding takes (|x| <= 2^53).
function M.math_type(x)
    if math.type then return math.type(x) end
    if type(x) ~= "number" then return nil end
    if x == math.floor(x) and x > -2 ^ 53 and x < 2 ^ 53 then return "integer" end
    return "float"
end

-- math.tointeger (for numbers).
function M.tointeger(x)
    if math.tointeger then return math.tointeger(x) end
    if M.math_type(x) == "integer" then return x end
    return nil
end

-- 2^n as an integer (1 << n on Lua 5.4), n < 63.
function M.pow2(n)
    return math.floor(2 ^ n)
end

-- Floor division: `a // b` of Lua 5.4 (integers stay integers there).
local idiv
if math.type then
    idiv = load("return function(a, b) return a // b end")()
else
    idiv = function(a, b) return math.floor(a / b) end
end
M.idiv = idiv

-- Little-endian string.pack / string.unpack for the integer formats the
-- specs use: "<" (optional), "B", "b", "H", "h", "I[n]", "i[n]" (default
-- 4 bytes), "J", "j" (8 bytes), and spaces.  Exact for every integer on
-- Lua 5.4; on LuaJIT for |n| <= 2^53.
local function int_formats(fmt)
    local items, i = {}, 1
    while i <= #fmt do
        local c = fmt:sub(i, i)
        i = i + 1
        if c == "<" or c == " " then
            -- little-endian is all there is here
        elseif c == "B" or c == "b" or c == "H" or c == "h" or c == "J" or c == "j" then
            local size = (c == "B" or c == "b") and 1 or ((c == "H" or c == "h") and 2 or 8)
            items[#items + 1] = { size = size, signed = c == c:lower() }
        elseif c == "I" or c == "i" then
            local digits = fmt:match("^%d+", i)
            local size = tonumber(digits) or 4
            if digits then i = i + #digits end
            assert(size >= 1 and size <= 8, "util.pack: integral size out of limits in " .. fmt)
            items[#items + 1] = { size = size, signed = c == "i" }
        else
            error("util.pack: unsupported format option '" .. c .. "' in " .. fmt, 3)
        end
    end
    return items
end

function M.pack(fmt, ...)
    local out = {}
    for k, item in ipairs(int_formats(fmt)) do
        local n = select(k, ...)
        assert(M.math_type(n) == "integer", "util.pack: argument " .. k .. " is not an integer")
        if item.size < 8 then
            local lim = 256 ^ item.size
            if item.signed then
                assert(n >= -lim / 2 and n < lim / 2, "util.pack: integer overflow")
            else
                assert(n >= 0 and n < lim, "util.pack: unsigned overflow")
            end
        end
        for _ = 1, item.size do
            local b = n % 256
            out[#out + 1] = string.char(b)
            n = idiv(n - b, 256)
        end
    end
    return table.concat(out)
end

-- Returns the values and the position after them, as string.unpack does.
function M.unpack_le(fmt, s, pos)
    pos = pos or 1
    local vals = {}
    for _, item in ipairs(int_formats(fmt)) do
        assert(pos + item.size - 1 <= #s, "util.unpack: data string too short")
        local neg = item.signed and s:byte(pos + item.size - 1) >= 128
        local v = 0
        for i = item.size, 1, -1 do
            local b = s:byte(pos + i - 1)
            if neg then b = 255 - b end
            v = v * 256 + b
        end
        if neg then v = -v - 1 end
        vals[#vals + 1] = v
        pos = pos + item.size
    end
    vals[#vals + 1] = pos
    return M.unpack(vals, 1, #vals)
end

-- The decimal digits of an integer (tostring on LuaJIT writes numbers of
-- 15 digits and more as 1.2345678901234e+14).
function M.int_str(n)
    return string.format("%d", n)
end

return M
