-- takhin-scm-1.rockspec: `luarocks --lua-version=5.4 make` (README.md's
-- line) builds and installs takhin into a private tree, offline, and what
-- it installs works in a fresh lua5.4 process (the module, the C core, the
-- `takhin` command).  The build runs in a copy of the checkout: the builtin
-- backend leaves its objects next to the sources, and `make clean` removes
-- them.

local util = require("helpers.util")

local q = util.q
local ROOT = util.capture("pwd"):gsub("%s+$", "")
local ROCKSPEC = "takhin-scm-1.rockspec"

local function load_rockspec()
    local env = {}
    local chunk = assert(loadfile(ROOT .. "/" .. ROCKSPEC, "t", env))
    chunk()
    return env
end

local function sorted(t)
    table.sort(t)
    return t
end

local function listed(dir, suffix)
    local names = {}
    for _, n in ipairs(util.ls(ROOT .. "/" .. dir)) do
        if n:sub(-#suffix) == suffix then names[#names + 1] = dir .. "/" .. n end
    end
    return sorted(names)
end

-- The .lua files under dir and its subdirectories (takhin/cli/...), as
-- paths relative to ROOT.
local function lua_files(dir, names)
    names = names or {}
    for _, n in ipairs(util.ls(ROOT .. "/" .. dir)) do
        local path = dir .. "/" .. n
        if util.is_dir(ROOT .. "/" .. path) then lua_files(path, names)
        elseif n:sub(-4) == ".lua" then names[#names + 1] = path end
    end
    return sorted(names)
end

-- Tools (cp, luarocks, gcc, make) run without the sanitizer runtime that
-- `make test-asan` preloads: it is there for takhin's build, and LeakSanitizer
-- fails tools that do not free everything before exit.
local TOOL = "env -u LD_PRELOAD "

local function has_luarocks()
    return util.sh("command -v luarocks >/dev/null 2>&1")
end

describe("the rockspec", function()
    it("lists every C file of csrc/ for takhin.core, with the flags and libraries it needs", function()
        local spec = load_rockspec()
        assert.are.equal("takhin", spec.package)
        assert.are.equal("scm-1", spec.version)
        assert.are.equal("builtin", spec.build.type)
        local core = spec.build.modules["takhin.core"]
        assert.are.same(listed("csrc", ".c"), sorted({ util.unpack(core.sources) }))
        assert.are.same({ "_GNU_SOURCE", "TK_LUA_MODULE" }, core.defines)
        assert.are.equal("csrc", core.incdirs[1])
        assert.are.same({ "jansson", "zstd", "pthread" }, core.libraries)
    end)

    it("asks for the Lua it builds for: 5.4 (LuaJIT builds with make luajit)", function()
        assert.are.same({ "lua >= 5.4, < 5.5" }, load_rockspec().dependencies)
    end)

    it("installs every Lua module under lua/takhin and the takhin command", function()
        local spec = load_rockspec()
        local files = {}
        for name, src in pairs(spec.build.modules) do
            if type(src) == "string" then
                files[#files + 1] = src
                local expect = src:match("^lua/(.-)%.lua$"):gsub("/init$", ""):gsub("/", ".")
                assert.are.equal(expect, name, src)
            end
        end
        assert.are.same(lua_files("lua/takhin"), sorted(files))
        assert.are.same({ takhin = "bin/takhin" }, spec.build.install.bin)
    end)

    describe("luarocks make", function()
        local tmp
        before_each(function() tmp = util.tmpdir() end)
        after_each(function() util.rmtree(tmp) end)

        it("builds offline into a tree whose takhin loads in a fresh lua5.4 and runs", function()
            if not has_luarocks() then
                pending("luarocks is not installed (apt-get install luarocks)")
                return
            end
            local src, tree = tmp .. "/src", tmp .. "/tree"
            assert(util.sh(("%s sh -c %s"):format(TOOL, q(("mkdir -p %s && cd %s && cp -a csrc lua bin Makefile %s %s/"):format(
                q(src), q(ROOT), ROCKSPEC, q(src))))))
            -- HOME: nothing of the user's LuaRocks state is read or written.
            local out = util.capture(("cd %s && %s HOME=%s luarocks --lua-version=5.4 make --deps-mode=none " ..
                "--tree=%s %s 2>&1; echo \"exit=$?\""):format(q(src), TOOL, q(tmp), q(tree), ROCKSPEC))
            assert.truthy(out:find("exit=0\n", 1, true), out)
            assert.truthy(out:find("-D_GNU_SOURCE", 1, true), out)
            assert.truthy(out:find("-I/usr/include/lua5.4", 1, true), out)
            for _, f in ipairs({ "lib/lua/5.4/takhin/core.so", "bin/takhin" }) do
                assert.truthy(util.exists(tree .. "/" .. f), f)
            end
            -- what the builtin backend leaves in the checkout, make clean removes
            assert.truthy(util.exists(src .. "/takhin/core.so"))
            assert.truthy(util.exists(src .. "/csrc/log.o"))
            out = util.capture(("cd %s && %s make --no-print-directory clean 2>&1; echo \"exit=$?\""):format(
                q(src), TOOL))
            assert.truthy(out:find("exit=0\n", 1, true), out)
            assert.is_false(util.exists(src .. "/takhin"))
            assert.are.same({}, util.ls_suffix(src .. "/csrc", ".o"))
            for _, f in ipairs(lua_files("lua")) do
                assert.truthy(util.exists(tree .. "/share/lua/5.4/" .. f:sub(5)), f)
            end

            -- only the tree on the search paths
            local path = ("%s/share/lua/5.4/?.lua;%s/share/lua/5.4/?/init.lua"):format(tree, tree)
            local cpath = tree .. "/lib/lua/5.4/?.so"
            -- the tree's core.so is a plain build: no sanitizer runtime either
            local env = ("env -u LD_PRELOAD LUA_PATH=%s LUA_PATH_5_4=%s LUA_CPATH=%s LUA_CPATH_5_4=%s"):format(
                q(path), q(path), q(cpath), q(cpath))
            local script = tmp .. "/smoke.lua"
            util.write_file(script, [[
local takhin = require("takhin")
assert(package.searchpath("takhin.core", package.cpath):find(arg[2], 1, true))
local log = assert(takhin.open_log{ dir = arg[1] })
assert(log:append("k", "hello") == 0)
local sm = assert(takhin.snapshot_manager(arg[1]))
assert(sm:create(log))
log:close()
io.write("ok ", takhin.version, "\n")
]])
            -- a tree for Lua 5.4: lua5.4 runs it, also when the specs run under LuaJIT
            out = util.capture(("cd / && %s %s %s %s %s 2>&1"):format(env, q(util.lua54_bin()), q(script),
                q(tmp .. "/log"), q(tree)))
            assert.truthy(out:find("^ok %d+%.%d+%.%d+\n$"), out)

            out = util.capture(("cd / && %s %s --help 2>&1; echo \"exit=$?\""):format(env, q(tree .. "/bin/takhin")))
            assert.truthy(out:find("^usage: takhin"), out)
            assert.truthy(out:find("exit=0\n", 1, true), out)
            -- the installed command finds its tree by itself too
            out = util.capture(("cd / && %s -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 " ..
                "%s info --json %s 2>&1; echo \"exit=$?\""):format(TOOL, q(tree .. "/bin/takhin"), q(tmp .. "/log")))
            assert.truthy(out:find('"high_water_mark": 1,', 1, true), out)
            assert.truthy(out:find("exit=0\n", 1, true), out)
        end)
    end)
end)

-- A `luarocks make` run in the checkout leaves takhin/core.so there, which
-- Lua's default ./?.so would load, silently, wherever build/ has none.
describe("the module the specs load", function()
    it("is the build's, and no stray takhin/core.so is in the checkout (make clean removes it)", function()
        assert.is_false(util.exists(ROOT .. "/takhin/core.so"))
        local build = os.getenv("TAKHIN_BUILD") or "build"
        local found = package.searchpath("takhin.core", package.cpath)
        assert.are.equal(build .. "/takhin/core.so", found)
    end)
end)

-- The Makefile's install target, into a staging directory (DESTDIR).
describe("make install", function()
    local tmp
    before_each(function() tmp = util.tmpdir() end)
    after_each(function() util.rmtree(tmp) end)

    it("puts the module, the command, the header and the library under DESTDIR/PREFIX", function()
        local build = util.lua54_build()        -- installs the Lua 5.4 module
        local stage, prefix = tmp .. "/stage", "/opt/takhin"
        local out = util.capture(("cd %s && " .. TOOL ..
            "make --no-print-directory install BUILD=%s DESTDIR=%s PREFIX=%s 2>&1; " ..
            "echo \"exit=$?\""):format(q(ROOT), q(build), q(stage), prefix))
        assert.truthy(out:find("exit=0\n", 1, true), out)
        local root = stage .. prefix
        local want = { "lib/lua/5.4/takhin/core.so", "bin/takhin", "include/takhin.h", "lib/libtakhin.a",
                       "lib/pkgconfig/takhin.pc" }
        for _, f in ipairs(lua_files("lua")) do
            want[#want + 1] = "share/lua/5.4/" .. f:sub(5)       -- lua/takhin/cli/log.lua ...
        end
        for _, f in ipairs(want) do assert.truthy(util.exists(root .. "/" .. f), f) end
        assert.truthy(util.sh("test -x " .. q(root .. "/bin/takhin")))
        -- pkg-config's paths are PREFIX's, not DESTDIR's; the version is takhin.h's
        local pc = util.read_file(root .. "/lib/pkgconfig/takhin.pc")
        assert.truthy(pc:find("\nprefix=" .. prefix .. "\n", 1, true), pc)
        assert.truthy(pc:find("\nLibs: -L${libdir} -ltakhin -ljansson -lzstd -lpthread\n", 1, true), pc)
        local version = util.read_file(ROOT .. "/csrc/takhin.h"):match('#define TAKHIN_VERSION "([^"]+)"')
        assert.truthy(pc:find("\nVersion: " .. version .. "\n", 1, true), pc)
        -- the installed command finds the modules under its prefix
        out = util.capture(("cd / && env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 " ..
            "%s append --create --json %s hello 2>&1; echo \"exit=$?\""):format(q(root .. "/bin/takhin"), q(tmp .. "/log")))
        assert.truthy(out:find('"first": 0,', 1, true), out)
        assert.truthy(out:find("exit=0\n", 1, true), out)
    end)
end)
