-- The docs, followed literally, work: README.md's and docs/API.md's code
-- blocks are run here, so neither can drift from the code again.
--
-- What a fenced block is, and what is done with it, is its info string
-- (the text after the opening ```; GitHub colours by its first word):
--
--   ```lua           runs.  A document's `lua` blocks run in document
--                    order as ONE script (as a reader would paste them
--                    into one file), in a lua5.4 child whose working
--                    directory is a temporary one.  The only change made
--                    to them: the prefix "/data/" becomes <tmp>/data/.
--                    Errors name the document's own lines (README.md:42).
--                    A comment `--> text` (at the end of a line, or on a
--                    line of its own) is output the block prints: every
--                    one must be a whole line of the block's output, in
--                    order (other lines may come between); runs of
--                    blanks compare equal, <tmp>/data reads as /data.
--   ```lua fragment  Lua that is NOT run: it needs what a spec cannot give
--                    (a Kafka broker, nginx) or loops for ever.
--   ```lua-repl      a transcript of the lua5.4 REPL.  Its `$` line's
--                    LUA_PATH and LUA_CPATH are used as written (build/
--                    being the build under test; from the repository
--                    root), each `> ` line is evaluated as lua5.4's REPL
--                    does (as `return <line>`, else as a statement, and
--                    what it returns printed), and the output must be
--                    exactly the lines shown.  "/tmp/demo" becomes
--                    <tmp>/demo; "pid N" matches any pid.
--   ```c             (README.md) the C example: written to the file the
--                    README's `cc FILE ...` command line names, built and
--                    run by that command line, against a `make install`
--                    into a temporary prefix (PKG_CONFIG_PATH pointing at
--                    its lib/pkgconfig); its output must be the `# ` line
--                    under the command, the snapshot id aside.
--   ```sh, ```nginx, ```text, ```json   not run here.
--
-- Every fenced block must have one of these info strings: a bare ``` (or a
-- misspelt language) fails, so that each block says whether it runs.
-- Indented blocks are never run: the docs use them for signatures and
-- command lines.  The blocks are Lua 5.4 programs: they run under lua5.4
-- also when the specs run under LuaJIT.

local util = require("helpers.util")

local q = util.q
local ROOT = util.capture("pwd"):gsub("%s+$", "")

local INFO = {
    ["lua"] = "run", ["lua fragment"] = "skip", ["lua-repl"] = "repl", ["c"] = "c",
    ["sh"] = "skip", ["nginx"] = "skip", ["text"] = "skip", ["json"] = "skip",
}

-- Tools run without the sanitizer runtime `make test-asan` preloads (as
-- in rockspec_spec.lua).
local TOOL = "env -u LD_PRELOAD "

local function abs(path)
    if path:sub(1, 1) == "/" then return path end
    return ROOT .. "/" .. path
end

local function lines_of(text)
    local t = {}
    for line in (text .. "\n"):gmatch("(.-)\n") do t[#t + 1] = line end
    if t[#t] == "" then t[#t] = nil end
    return t
end

-- The fenced blocks of a document: { info =, fence = line number of the
-- opening fence, lines = { text, ... } }, and the document's lines.
local function blocks_of(name)
    local doc = lines_of(util.read_file(ROOT .. "/" .. name))
    local blocks, cur = {}, nil
    for i, line in ipairs(doc) do
        local info = line:match("^```(.*)$")
        if cur then
            if info == "" then blocks[#blocks + 1], cur = cur, nil
            else cur.lines[#cur.lines + 1] = line end
        elseif info then
            cur = { info = info:match("^%s*(.-)%s*$"), fence = i, lines = {} }
        end
    end
    assert(cur == nil, name .. ": a fenced block is not closed")
    return blocks, doc
end

local function plain(s) return (s:gsub("%p", "%%%0")) end

local function replace(s, from, to) return (s:gsub(plain(from), (to:gsub("%%", "%%%%")))) end

local function squash(s) return (s:gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")) end

-- Runs a shell command line; its stdout and stderr, and whether it exited 0.
local function run(cmd)
    local out = util.capture(cmd .. " 2>&1; echo \"@@exit=$?\"")
    local body, code = out:match("^(.*)@@exit=(%d+)\n$")
    return body, code == "0"
end

local function lua54_env(path, cpath)
    return ("env LUA_PATH=%s LUA_PATH_5_4=%s LUA_CPATH=%s LUA_CPATH_5_4=%s"):format(
        q(path), q(path), q(cpath), q(cpath))
end

-------------------------------------------------------------------------
-- ```lua: one script per document
-------------------------------------------------------------------------

local RUNNER = [[
local path, name = arg[1], arg[2]
local f = assert(io.open(path, "rb"))
local src = f:read("a")
f:close()
local chunk = assert(load(src, "@" .. name))
chunk()
io.stdout:flush()
]]

local MARK = "@@docs_spec block %d@@"

-- The script: the document with every line that is not in a `lua` block
-- blanked (so line numbers are the document's), the opening fence of each
-- lua block writing a marker that divides the output by block.
local function script_of(blocks, doc, tmp)
    local out = {}
    for i = 1, #doc do out[i] = "" end
    for _, b in ipairs(blocks) do
        if INFO[b.info] == "run" then
            out[b.fence] = (";io.stdout:write(%q)"):format(MARK:format(b.fence) .. "\n")
            for j, line in ipairs(b.lines) do
                out[b.fence + j] = replace(line, "/data/", tmp .. "/data/")
            end
        end
    end
    return table.concat(out, "\n") .. "\n"
end

-- The `-->` comments of a block, in order.
local function expected_of(block)
    local want = {}
    for _, line in ipairs(block.lines) do
        local text = line:match("%-%->(.*)$")
        if text then want[#want + 1] = squash(text) end
    end
    return want
end

-- The output of each block, by the line of its opening fence.
local function outputs_by_block(out, tmp)
    out = replace(out, tmp .. "/data", "/data")
    local by, cur = {}, nil
    for _, line in ipairs(lines_of(out)) do
        local fence = line:match("^@@docs_spec block (%d+)@@$")
        if fence then
            cur = {}
            by[tonumber(fence)] = cur
        elseif cur then
            cur[#cur + 1] = squash(line)
        end
    end
    return by
end

local function run_lua_blocks(name, tmp)
    local blocks, doc = blocks_of(name)
    local n = 0
    for _, b in ipairs(blocks) do if INFO[b.info] == "run" then n = n + 1 end end
    assert.is_true(n > 0, name .. " has no lua block")
    util.write_file(tmp .. "/runner.lua", RUNNER)
    util.write_file(tmp .. "/doc.lua", script_of(blocks, doc, tmp))
    local path = ("%s/lua/?.lua;%s/lua/?/init.lua;;"):format(ROOT, ROOT)
    local cpath = abs(util.lua54_build()) .. "/?.so;;"
    local out, ok = run(("cd %s && %s %s runner.lua doc.lua %s </dev/null"):format(
        q(tmp), lua54_env(path, cpath), q(util.lua54_bin()), q(name)))
    assert(ok, name .. "'s lua blocks failed:\n" .. out)
    local by = outputs_by_block(out, tmp)
    for _, b in ipairs(blocks) do
        if INFO[b.info] == "run" then
            local got = by[b.fence]
            assert(got, ("%s:%d: the block did not run:\n%s"):format(name, b.fence, out))
            local i = 1
            for _, want in ipairs(expected_of(b)) do
                while got[i] ~= nil and got[i] ~= want do i = i + 1 end
                assert(got[i] ~= nil, ("%s:%d: the block does not print\n  %s\nIt prints:\n  %s"):format(
                    name, b.fence, want, table.concat(got, "\n  ")))
                i = i + 1
            end
        end
    end
    return blocks
end

-------------------------------------------------------------------------
-- ```lua-repl: a transcript
-------------------------------------------------------------------------

local REPL = [[
local f = assert(io.open(arg[1], "rb"))
local unpack = table.unpack or unpack
for line in f:lines() do
    io.write("> ", line, "\n")
    local chunk, err = load("return " .. line, "=stdin")
    if not chunk then chunk, err = load(line, "=stdin") end
    if not chunk then
        io.write(err, "\n")
    else
        local r = table.pack(pcall(chunk))
        if not r[1] then io.write(tostring(r[2]), "\n")
        elseif r.n > 1 then print(unpack(r, 2, r.n)) end
    end
end
f:close()
]]

local function replay(block, tmp)
    local cmd = block.lines[1]
    assert(cmd and cmd:sub(1, 2) == "$ ", "README.md:" .. block.fence .. ": a lua-repl block starts with its `$` line")
    local path = cmd:match("LUA_PATH='([^']*)'")
    local cpath = cmd:match("LUA_CPATH='([^']*)'")
    assert(path and cpath, "README.md:" .. block.fence .. ": the `$` line sets LUA_PATH and LUA_CPATH")
    assert.truthy(cmd:match(" lua5%.4$"), cmd)
    cpath = cpath:gsub("^build/", (util.lua54_build():gsub("%%", "%%%%")) .. "/")
    local inputs, want = {}, {}
    for i = 2, #block.lines do
        local line = block.lines[i]
        local input = line:match("^> (.*)$")
        if input then inputs[#inputs + 1] = replace(input, "/tmp/demo", tmp .. "/demo") end
        want[#want + 1] = line
    end
    util.write_file(tmp .. "/repl.lua", REPL)
    util.write_file(tmp .. "/input", table.concat(inputs, "\n") .. "\n")
    local out, ok = run(("cd %s && %s %s %s %s </dev/null"):format(q(ROOT), lua54_env(path, cpath),
        q(util.lua54_bin()), q(tmp .. "/repl.lua"), q(tmp .. "/input")))
    assert(ok, out)
    local function norm(s) return (replace(s, tmp .. "/demo", "/tmp/demo"):gsub("pid %d+", "pid N")) end
    assert.are.equal(norm(table.concat(want, "\n") .. "\n"), norm(out))
end

-------------------------------------------------------------------------
-- ```c: the C example, built with pkg-config against make install
-------------------------------------------------------------------------

local function c_example(blocks, tmp)
    local code, cmd, want
    for _, b in ipairs(blocks) do
        if b.info == "c" then
            assert(code == nil, "README.md: one c block is expected")
            code = table.concat(b.lines, "\n") .. "\n"
        elseif b.info == "sh" then
            for i, line in ipairs(b.lines) do
                if line:match("^cc %S+%.c ") then
                    cmd, want = line, (b.lines[i + 1] or ""):match("^# (.*)$")
                end
            end
        end
    end
    assert(code and cmd and want, "README.md: a c block, and a sh block with its `cc FILE.c ...` line and output")
    return code, cmd, want
end

local function build_c_example(blocks, tmp)
    local code, cmd, want = c_example(blocks, tmp)
    local build, prefix = util.lua54_build(), tmp .. "/prefix"
    local out, ok = run(("cd %s && %s make --no-print-directory install BUILD=%s PREFIX=%s"):format(
        q(ROOT), TOOL, q(build), q(prefix)))
    assert(ok, out)
    assert.truthy(util.exists(prefix .. "/lib/pkgconfig/takhin.pc"))
    local dir, source = tmp .. "/c", cmd:match("^cc (%S+%.c) ")
    -- a sanitizer build's library needs the sanitizer's runtime linked in
    if util.sh(("nm %s 2>/dev/null | grep -q __asan_"):format(q(abs(build) .. "/libtakhin.a"))) then
        cmd = cmd:gsub("^cc ", "cc -fsanitize=address,undefined ")
    end
    util.sh("mkdir -p " .. q(dir))
    util.write_file(dir .. "/" .. source, code)
    -- The compiler does not run under a sanitizer's LD_PRELOAD (its own
    -- leaks would fail the run); the program links the runtime itself.
    out, ok = run(("cd %s && PKG_CONFIG_PATH=%s env -u LD_PRELOAD sh -c %s"):format(q(dir), q(prefix .. "/lib/pkgconfig"),
        q(replace(cmd, "/data/", tmp .. "/data/"))))
    assert(ok, cmd .. "\n" .. out)
    local id = "%d+%-%x+"
    out = replace(out, tmp .. "/data", "/data"):gsub("snapshot " .. id, "snapshot ID")
    assert.are.equal(want:gsub("snapshot " .. id, "snapshot ID") .. "\n", out)
    return prefix
end

-------------------------------------------------------------------------

for _, name in ipairs({ "README.md", "docs/API.md" }) do
    describe(name, function()
        local tmp
        before_each(function() tmp = util.tmpdir() end)
        after_each(function() util.rmtree(tmp) end)

        it("marks every fenced block with what it is (lua, lua fragment, lua-repl, c, sh, ...)", function()
            for _, b in ipairs((blocks_of(name))) do
                assert(INFO[b.info], ("%s:%d: fenced block marked %q: use one of the info strings " ..
                    "spec/docs_spec.lua describes"):format(name, b.fence, b.info))
            end
        end)

        it("runs its lua blocks in order, and they print what their --> comments say", function()
            run_lua_blocks(name, tmp)
        end)
    end)
end

describe("README.md", function()
    local tmp
    before_each(function() tmp = util.tmpdir() end)
    after_each(function() util.rmtree(tmp) end)

    it("starts with the two set-up commands, make demo and make test", function()
        local doc = util.read_file(ROOT .. "/README.md")
        local first = doc:find("\n    make ", 1, true)
        assert.truthy(first, "no indented make command")
        assert.truthy(doc:find("^\n    make demo .-\n    make test ", first), doc:sub(first, first + 200))
        assert.is_nil(doc:sub(1, first):find("```", 1, true))
        assert.is_nil(doc:sub(1, first):find("\n##", 1, true))
    end)

    it("has a REPL session that lua5.4 prints as shown", function()
        local n = 0
        for _, b in ipairs((blocks_of("README.md"))) do
            if b.info == "lua-repl" then
                n = n + 1
                local dir = tmp .. "/" .. n
                util.sh("mkdir -p " .. q(dir))
                replay(b, dir)
            end
        end
        assert.is_true(n > 0)
    end)

    it("has a C example that builds with pkg-config after make install, and runs", function()
        build_c_example((blocks_of("README.md")), tmp)
    end)
end)
