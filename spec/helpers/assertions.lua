-- busted assertions for takhin's calling convention (docs/API.md): a call
-- that fails because of the outside world returns nil, a message and a
-- CODE; misuse raises instead.
--
--     require("helpers.assertions")
--     local msg = assert.fails_with("OUT_OF_RANGE", log:read(99))
--     assert.fails_with({ NOSPC = true, IO = true }, sm:restore(id, dir))
--
-- assert.fails_with(code, v, msg, got) passes when v is nil, msg is a
-- string and got is code (a string) or one of the codes of a set
-- ({ CODE = true, ... }); it returns msg, so that a test can go on to
-- check what the message names.  Requiring this file registers the
-- assertion with luassert (again, harmlessly, in each spec file that
-- requires it).

local luassert = require("luassert")
local say = require("say")

-- "CODE", or "A or B" for a set, for the failure message.
local function codes_text(code)
    if type(code) ~= "table" then return tostring(code) end
    local names = {}
    for name in pairs(code) do names[#names + 1] = tostring(name) end
    table.sort(names)
    return table.concat(names, " or ")
end

local function accepts(code, got)
    if type(code) == "table" then return got ~= nil and code[got] == true end
    return got == code
end

local function fails_with(_, arguments)
    local code, v, msg, got = arguments[1], arguments[2], arguments[3], arguments[4]
    local failed = v == nil and type(msg) == "string" and accepts(code, got)
    -- The failure message shows the code(s) wanted as text, then what the
    -- call returned, formatted by luassert (trailing nils included).
    arguments[1] = codes_text(code)
    arguments.n = 4
    arguments.nofmt = { [1] = true }
    return failed, { msg }
end

say:set("assertion.fails_with.positive",
        "Expected the call to fail with %s: nil, a message, that code.\nIt returned:\n%s\n%s\n%s")
say:set("assertion.fails_with.negative",
        "Expected the call not to fail with %s.\nIt returned:\n%s\n%s\n%s")
luassert:register("assertion", "fails_with", fails_with,
                  "assertion.fails_with.positive", "assertion.fails_with.negative")
