-- Export and import (docs/API.md, "Export and import"; docs/FORMAT.md,
-- "The archive"): a snapshot leaves the machine as a tar stream and comes
-- back as the same snapshot in another manager, restoring the same log.
--
-- What a user relies on:
--   - round trips: export -> import into another directory (as on another
--     machine) -> restore gives, byte for byte, the snapshot's files: for
--     plain, zstd and incremental archives, through paths, Lua files and
--     pipes;
--   - the archive is what real tools read: `tar tf`, `tar -xf`,
--     `tar --zstd -xf`; it survives `age` and `restic` as a pipe;
--   - a damaged or hostile archive is refused with CORRUPT or INVALID and
--     leaves nothing behind: nothing in the manager, nothing anywhere else
--     (the whole temporary tree is listed before and after).
-- Random cuts use a seeded generator: the same positions on every run.

local takhin = require("takhin")
local util = require("helpers.util")
require("helpers.assertions")

local q = util.q
local ROOT = util.capture("pwd"):gsub("%s+$", "")

local OPTS = { max_segment_size = 2048, index_interval_bytes = 256 }
local N1, N2 = 120, 200                     -- records before the first and the second snapshot

-- JSON-like values, as a service would log them.
local function value(i)
    return ('{"id":%d,"user":"user-%d","event":"%s","amount":%d.%02d,"tags":["a","b%d"]}'):format(
        i, i % 37, ({ "login", "purchase", "logout", "view" })[i % 4 + 1], i * 7 % 1000, i % 100, i % 5)
end

-------------------------------------------------------------------------
-- Files, trees, commands
-------------------------------------------------------------------------

-- Every file and directory under dir, with sizes, one per line.
local function tree(dir)
    return util.capture("cd " .. q(dir) .. " && find . -printf '%p %y %s\\n' | sort")
end

-- The segment files of a directory, name -> bytes.
local function segment_files(dir)
    local files = {}
    for _, n in ipairs(util.ls(dir)) do
        if n:match("^%d+%.[a-z]+$") then files[n] = util.read_file(dir .. "/" .. n) end
    end
    return files
end

local function count(t)
    local n = 0
    for _ in pairs(t) do n = n + 1 end
    return n
end

-- Sanitizer runtimes (make test-asan) are for takhin's processes; the
-- tools (tar, zstd, age, restic) run without them.
local PRELOAD = os.getenv("LD_PRELOAD") or ""
local TOOL = "env -u LD_PRELOAD "

local function has(tool)
    return util.sh("command -v " .. tool .. " >/dev/null 2>&1")
end

-- `takhin ARGS`, the command as a shell word list (lua5.4 and its build,
-- also under LuaJIT: bin/takhin is a Lua 5.4 program).
local function takhin_cmd(args)
    local path = os.getenv("LUA_PATH") or "lua/?.lua;lua/?/init.lua;spec/?.lua;;"
    local cpath = util.lua54_cpath()
    local parts = { "env", "LD_PRELOAD=" .. q(PRELOAD), "TAKHIN_BUILD=" .. q(util.lua54_build()),
        "LUA_PATH=" .. q(path), "LUA_PATH_5_4=" .. q(path), "LUA_CPATH=" .. q(cpath),
        "LUA_CPATH_5_4=" .. q(cpath), q(util.lua54_bin()), q(ROOT .. "/bin/takhin") }
    for _, a in ipairs(args) do parts[#parts + 1] = q(a) end
    return table.concat(parts, " ")
end

-- Run a shell line from the checkout; returns stdout, stderr, status.
local seq = 0
local function shell(tmp, line)
    seq = seq + 1
    local out, err = ("%s/sh-out.%d"):format(tmp, seq), ("%s/sh-err.%d"):format(tmp, seq)
    local _, _, status = util.execute("cd " .. q(ROOT) .. " && { " .. line .. "\n} >" .. q(out) ..
        " 2>" .. q(err))
    local o, e = util.read_file(out), util.read_file(err)
    os.remove(out)
    os.remove(err)
    return o, e, status
end

-------------------------------------------------------------------------
-- Tar, by hand (docs/FORMAT.md, "The archive")
-------------------------------------------------------------------------

local BLOCK = 512

-- A ustar header.  opts: type ("0"), linkname, prefix, magic, size (the
-- size field, when it should lie), chksum (a wrong one).
local function tar_header(name, size, opts)
    opts = opts or {}
    local function field(s, width) return s .. ("\0"):rep(width - #s) end
    local function octal(n, width) return ("%0" .. (width - 1) .. "o"):format(n) .. "\0" end
    local before = field(name, 100) .. octal(420, 8) .. octal(0, 8) .. octal(0, 8) ..
        (opts.size_field or octal(size, 12)) .. octal(1700000000, 12)
    local after = (opts.type or "0") .. field(opts.linkname or "", 100) ..
        (opts.magic or "ustar\0" .. "00") .. field("", 32) .. field("", 32) ..
        octal(0, 8) .. octal(0, 8) .. field(opts.prefix or "", 155) .. field("", 12)
    local sum = 8 * 32
    for i = 1, #before do sum = sum + before:byte(i) end
    for i = 1, #after do sum = sum + after:byte(i) end
    local chk = opts.chksum or (("%06o"):format(sum) .. "\0 ")
    local h = before .. chk .. after
    assert(#h == BLOCK)
    return h
end

local function pad(n) return ("\0"):rep((BLOCK - n % BLOCK) % BLOCK) end

local function tar_entry(e)
    local data = e.data or ""
    return tar_header(e.name, e.size or #data, e) .. data .. pad(#data)
end

local END = ("\0"):rep(2 * BLOCK)

local function tar(entries)
    local parts = {}
    for i, e in ipairs(entries) do parts[i] = tar_entry(e) end
    return table.concat(parts) .. END
end

-- The entries of a full archive of snapshot s: manifest.json, then its
-- files in manifest order, read from its directory.
local function entries_of(s)
    local text = util.read_file(s.path .. "/manifest.json")
    local list = { { name = "manifest.json", data = text } }
    for name in text:gmatch('"name": "([^"]+)"') do
        list[#list + 1] = { name = name, data = util.read_file(s.path .. "/" .. name) }
    end
    return list
end

local function index_of(list, name)
    for i, e in ipairs(list) do if e.name == name then return i end end
    error("no entry " .. name)
end

-- The manifest text with field `key` of file `name` set to v.
local function manifest_with(text, name, key, v)
    local pat = '("name": "' .. name:gsub("%.", "%%.") .. '",%s*"size": )(%d+)(,%s*"crc32c": ")(%x+)'
    local out, n = text:gsub(pat, function(a, size, b, crc)
        if key == "size" then size = v else crc = v end
        return a .. size .. b .. crc
    end)
    assert(n == 1, "manifest_with: " .. name)
    return out
end

-------------------------------------------------------------------------
-- The specs
-------------------------------------------------------------------------

describe("snapshot export and import", function()
    local tmp, dir, log, sm, s1, s2, other, sm2

    before_each(function()
        tmp = util.tmpdir()
        dir = tmp .. "/log"
        local o = { dir = dir }
        for k, v in pairs(OPTS) do o[k] = v end
        log = assert(takhin.open_log(o))
        for i = 0, N1 - 1 do assert(log:append("k" .. i % 10, value(i), 1600000000000 + i)) end
        assert(log:commit("billing", 42))
        sm = assert(takhin.snapshot_manager(dir))
        s1 = assert(sm:create(log, { label = "before the upgrade" }))
        for i = N1, N2 - 1 do assert(log:append(nil, value(i), 1600000000000 + i)) end
        s2 = assert(sm:create(log))
        other = tmp .. "/machine-b"
        assert(util.sh("mkdir " .. q(other)))
        sm2 = assert(takhin.snapshot_manager(other))
    end)

    after_each(function()
        if log then log:close() end
        if sm then sm:close() end
        if sm2 then sm2:close() end
        log, sm, sm2 = nil, nil, nil
        collectgarbage(); collectgarbage()
        util.rmtree(tmp)
    end)

    -- The snapshot `id` imported into sm2 restores, byte for byte, the
    -- files of snapshot `s` of the first manager.
    local function assert_restores(s, restored)
        local target = tmp .. "/" .. restored
        assert(sm2:verify(s.id))
        assert(sm2:restore(s.id, target))
        local want, got = segment_files(s.path), segment_files(target)
        assert.are.equal(count(want), count(got))
        for name, bytes in pairs(want) do
            assert.are.equal(#bytes, #(got[name] or ""), name)
            assert.is_true(bytes == got[name], name .. " differs")
        end
        local r = assert(takhin.open_log{ dir = target, readonly = true })
        assert.are.equal(s.high_water_mark, r:high_water_mark())
        assert.are.equal(value(s.high_water_mark - 1), r:read(s.high_water_mark - 1).value)
        r:close()
    end

    local function same_record(a, b)
        for _, k in ipairs({ "id", "timestamp", "base_offset", "high_water_mark", "num_segments",
                             "total_size", "label" }) do
            assert.are.equal(a[k], b[k], k)
        end
        assert.are.same(a.segment_offsets, b.segment_offsets)
    end

    ---------------------------------------------------------------------
    describe("round trips", function()
        it("a plain archive: export to a file, import in another directory, restore", function()
            local path = tmp .. "/s2.tar"
            local ok, bytes = sm:export(s2.id, path)
            assert.is_true(ok)
            assert.are.equal(util.file_size(path), bytes)
            assert.is_false(util.exists(path .. ".tmp"))
            local got = assert(sm2:import(path))
            same_record(s2, got)
            assert.are.equal("copy", got.mode)
            assert.are.equal(other .. "/.snapshots/snapshot-" .. s2.id, got.path)
            assert.are.equal(s2.id, assert(sm2:latest()).id)
            assert_restores(s2, "restored")
        end)

        it("a zstd archive: the whole stream is one zstd frame", function()
            local path = tmp .. "/s2.tar.zst"
            assert(sm:export(s2.id, path, { compress = "zstd", level = 5 }))
            assert.are.equal("\40\181\47\253", util.read_at(path, 0, 4))
            assert.is_true(util.file_size(path) < util.file_size(s2.path .. "/00000000000000000000.log")
                           * s2.num_segments)
            same_record(s2, assert(sm2:import(path)))
            assert_restores(s2, "restored")
        end)

        it("an incremental archive holds what the base lacks and imports into a complete snapshot", function()
            local full, inc = tmp .. "/s1.tar", tmp .. "/s2-since-s1.tar"
            assert(sm:export(s1.id, full))
            assert(sm:export(s2.id, inc, { since = s1.id }))
            assert.is_true(util.file_size(inc) < util.file_size(full))
            -- without its base: NOT_FOUND naming the base, nothing left
            local before = tree(tmp)
            local msg = assert.fails_with("NOT_FOUND", sm2:import(inc))
            assert.truthy(msg:find(s1.id, 1, true), msg)
            assert.are.equal(before, tree(tmp))
            assert.are.same({}, assert(sm2:list()))
            -- with it
            same_record(s1, assert(sm2:import(full)))
            same_record(s2, assert(sm2:import(inc)))
            assert_restores(s1, "restored-1")
            assert_restores(s2, "restored-2")
            -- the base may go: the imported snapshot has files of its own
            assert(sm2:delete(s1.id))
            assert(sm2:verify(s2.id))
        end)

        it("an incremental zstd archive", function()
            assert(sm:export(s1.id, tmp .. "/a.tar.zst", { compress = "zstd" }))
            assert(sm:export(s2.id, tmp .. "/b.tar.zst", { compress = "zstd", since = s1.id }))
            assert(sm2:import(tmp .. "/a.tar.zst"))
            assert(sm2:import(tmp .. "/b.tar.zst"))
            assert_restores(s2, "restored")
        end)

        it("keeps the label and the cursors; the import gets this directory's creation number", function()
            assert(sm:export(s1.id, tmp .. "/s1.tar"))
            local got = assert(sm2:import(tmp .. "/s1.tar"))
            assert.are.equal("before the upgrade", got.label)
            assert.are.equal(1, got.seq)
            assert(sm2:restore(s1.id, tmp .. "/r"))
            local r = assert(takhin.open_log{ dir = tmp .. "/r" })
            assert.are.equal(42, r:committed("billing"))
            r:close()
        end)

        it("through Lua files, from and to their current position", function()
            local path = tmp .. "/s2.tar"
            local f = assert(io.open(path, "wb"))
            assert(f:write("x"))                     -- buffered by Lua: flushed first
            local ok, bytes = sm:export(s2.id, f)
            assert.is_true(ok)
            assert(f:close())
            assert.are.equal(1 + bytes, util.file_size(path))
            local r = assert(io.open(path, "rb"))
            assert.are.equal("x", r:read(1))
            same_record(s2, assert(sm2:import(r)))
            r:close()
            assert_restores(s2, "restored")
        end)

        it("through a pipe: sm:export(id, io.stdout) | sm:import(io.stdin)", function()
            local function child(code)
                local path = os.getenv("LUA_PATH") or "lua/?.lua;lua/?/init.lua;;"
                local cpath = os.getenv("LUA_CPATH") or "build/?.so;;"
                return ("env LUA_PATH=%s LUA_CPATH=%s %s -e %s"):format(q(path), q(cpath),
                    q(util.lua_bin()), q(code))
            end
            local out, err, status = shell(tmp, child(([[
                local sm = assert(require("takhin").snapshot_manager(%q))
                assert(sm:export(%q, io.stdout, { compress = "zstd" }))]]):format(dir, s2.id)) ..
                " | " .. child(([[
                local sm = assert(require("takhin").snapshot_manager(%q))
                io.stderr:write(assert(sm:import(io.stdin)).id)]]):format(other)))
            assert.are.equal(0, status, err)
            assert.are.equal("", out)
            assert.are.equal(s2.id, err)
            assert_restores(s2, "restored")
        end)

        it("reports progress up to the whole", function()
            local last = {}
            assert(sm:export(s2.id, tmp .. "/p.tar", { progress = function(done, total)
                last.edone, last.etotal = done, total
            end }))
            assert(sm2:import(tmp .. "/p.tar", { progress = function(done, total)
                last.idone, last.itotal = done, total
            end }))
            assert.are.equal(s2.total_size, last.etotal)
            assert.are.equal(last.etotal, last.edone)
            assert.are.equal(s2.total_size, last.itotal)
            assert.are.equal(last.itotal, last.idone)
        end)

        it("writes to a path that is not a regular file as it is (/dev/null)", function()
            local ok, bytes = sm:export(s2.id, "/dev/null", { compress = "zstd" })
            assert.is_true(ok)
            assert.is_true(bytes > 0)
        end)
    end)

    ---------------------------------------------------------------------
    describe("as background jobs (async = true)", function()
        it("give what the synchronous calls give, through a path or a Lua file", function()
            local path, fpath = tmp .. "/s2.tar.zst", tmp .. "/s1.tar"
            local job = assert(sm:export(s2.id, path, { async = true, compress = "zstd" }))
            assert.truthy(tostring(job):find("takhin.Job(export", 1, true))
            local ok, bytes = job:wait()
            assert.is_true(ok)
            assert.are.equal(util.file_size(path), bytes)
            local done, total = job:progress()
            assert.are.equal(total, done)
            local f = assert(io.open(fpath, "wb"))
            ok, bytes = sm:export(s1.id, f, { async = true }):wait()
            f:close()
            assert.is_true(ok)
            assert.are.equal(util.file_size(fpath), bytes)
            same_record(s2, assert(sm2:import(path, { async = true }):wait()))
            local src = assert(io.open(fpath, "rb"))
            same_record(s1, assert(sm2:import(src, { async = true }):wait()))
            src:close()
            assert_restores(s2, "restored-2")
            assert_restores(s1, "restored-1")
            -- the same failures, with the same codes
            assert.fails_with("EXISTS", sm2:import(path, { async = true }):wait())
            assert.fails_with("NOT_FOUND", sm:export("1600000000000-deadbeef", tmp .. "/x.tar",
                                                     { async = true }):wait())
            assert.is_false(util.exists(tmp .. "/x.tar"))
        end)

        it("leave nothing behind when canceled, collected or when the manager closes", function()
            local function leftovers()
                local names = {}
                for _, n in ipairs(util.ls(tmp)) do
                    if n:find("%.tmp$") or n:find("^x") then names[#names + 1] = n end
                end
                return names
            end
            for round = 1, 20 do
                local job = assert(sm:export(s2.id, tmp .. "/x" .. round .. ".tar", { async = true }))
                if round % 2 == 0 then util.nap(0.001 * (round % 5)) end
                job:cancel()
                local ok, msg, code = job:wait()
                if ok then
                    util.sh("rm -f " .. q(tmp .. "/x" .. round .. ".tar"))   -- it finished first
                else
                    assert.are.equal("CANCELED", code, msg)
                end
            end
            assert.are.same({}, leftovers())
            -- collected while running: stopped, nothing left
            local job = assert(sm:export(s2.id, tmp .. "/xgc.tar", { async = true }))
            job = nil                                               -- luacheck: ignore
            collectgarbage(); collectgarbage()
            util.sh("rm -f " .. q(tmp .. "/xgc.tar"))
            -- an import canceled leaves the other manager as it was
            assert(sm:export(s2.id, tmp .. "/full.tar"))
            local ij = assert(sm2:import(tmp .. "/full.tar", { async = true }))
            ij:cancel()
            local got, _, code = ij:wait()
            if got then assert.are.equal(s2.id, got.id) else assert.are.equal("CANCELED", code) end
            assert.are.equal(got and 1 or 0, #assert(sm2:list()))
            -- the manager closing cancels what runs
            local last = assert(sm:export(s2.id, tmp .. "/xlast.tar", { async = true }))
            sm:close()
            sm = nil
            local ok, msg, c = last:wait()
            if not ok then assert.are.equal("CANCELED", c, msg) end
            util.sh("rm -f " .. q(tmp .. "/xlast.tar"))
            assert.are.same({}, leftovers())
        end)

        it("refuse a progress callback (use job:progress())", function()
            assert.has_error(function()
                sm:export(s2.id, tmp .. "/p.tar", { async = true, progress = function() end })
            end)
            assert.has_error(function()
                sm2:import(tmp .. "/p.tar", { async = true, progress = function() end })
            end)
        end)
    end)

    ---------------------------------------------------------------------
    describe("refuses", function()
        it("misuse: unknown options, wrong types, closed files raise", function()
            assert.has_error(function() sm:export(s2.id, tmp .. "/x", { compres = "zstd" }) end)
            assert.has_error(function() sm:export(s2.id, 42) end)
            assert.has_error(function() sm:export(s2.id, tmp .. "/x", { level = "3" }) end)
            assert.has_error(function() sm2:import({}) end)
            assert.has_error(function() sm2:import(tmp .. "/x", { since = s1.id }) end)
            local f = assert(io.open(tmp .. "/closed", "wb"))
            f:close()
            assert.has_error(function() sm:export(s2.id, f) end)
        end)

        it("bad values: INVALID; an unknown snapshot: NOT_FOUND; no file is left", function()
            local path = tmp .. "/x.tar"
            assert.fails_with("INVALID", sm:export(s2.id, path, { compress = "gzip" }))
            assert.fails_with("INVALID", sm:export(s2.id, path, { compress = "zstd", level = 0 }))
            assert.fails_with("INVALID", sm:export(s2.id, path, { compress = "zstd", level = 20 }))
            assert.fails_with("INVALID", sm:export(s2.id, path, { level = 3 }))
            assert.fails_with("INVALID", sm:export(s2.id, path, { since = s2.id }))
            assert.fails_with("INVALID", sm:export("../x", path))
            assert.fails_with("INVALID", sm:export(s2.id, tmp))
            local msg = assert.fails_with("NOT_FOUND", sm:export("1-nosuch", path))
            assert.truthy(msg:find("1-nosuch", 1, true))
            msg = assert.fails_with("NOT_FOUND", sm:export(s2.id, path, { since = "1-nosuch" }))
            assert.truthy(msg:find("1-nosuch", 1, true))
            assert.fails_with("NOT_FOUND", sm2:import(tmp .. "/missing.tar"))
            assert.is_false(util.exists(path))
            assert.is_false(util.exists(path .. ".tmp"))
        end)

        it("a snapshot already there: EXISTS, and the one there is left alone", function()
            assert(sm:export(s2.id, tmp .. "/s2.tar"))
            assert(sm2:import(tmp .. "/s2.tar"))
            local before = tree(tmp)
            local msg = assert.fails_with("EXISTS", sm2:import(tmp .. "/s2.tar"))
            assert.truthy(msg:find(s2.id, 1, true))
            assert.are.equal(before, tree(tmp))
            assert.fails_with("EXISTS", sm:import(tmp .. "/s2.tar"))
        end)

        it("a reader that went away: IO (Broken pipe), and the process lives on", function()
            -- The reader closes its end and says so; only then does the
            -- writer export (no race: the pipe has no reader left).
            local ready, result = tmp .. "/reader-closed", tmp .. "/result"
            local path = os.getenv("LUA_PATH") or "lua/?.lua;lua/?/init.lua;;"
            local cpath = os.getenv("LUA_CPATH") or "build/?.so;;"
            local code = ([[
                local ready, result = %q, %q
                for _ = 1, 1000 do
                    local f = io.open(ready)
                    if f then f:close() break end
                    os.execute("sleep 0.01")
                end
                local sm = assert(require("takhin").snapshot_manager(%q))
                local ok, msg, code = sm:export(%q, io.stdout)
                local f = assert(io.open(result, "w"))
                f:write(tostring(ok), " ", tostring(code), " ", tostring(msg))
                f:close()]]):format(ready, result, dir, s2.id)
            local _, err, status = shell(tmp, ("env LUA_PATH=%s LUA_CPATH=%s %s -e %s | sh -c %s"):format(
                q(path), q(cpath), q(util.lua_bin()), q(code), q("exec 0<&-; touch " .. q(ready))))
            assert.are.equal(0, status, err)
            local got = util.read_file(result)
            assert.truthy(got:find("^nil IO "), got)
            assert.truthy(got:find("Broken pipe", 1, true), got)
            assert.truthy(got:find(s2.id, 1, true), got)
        end)

        it("to export a damaged snapshot: CORRUPT naming the file, and no archive", function()
            local smc = assert(takhin.snapshot_manager(dir, { dir = tmp .. "/copies", mode = "copy" }))
            local s = assert(smc:create(log))
            local name = "00000000000000000000.log"
            util.flip_byte(s.path .. "/" .. name, 100)
            local msg = assert.fails_with("CORRUPT", smc:export(s.id, tmp .. "/bad.tar"))
            assert.truthy(msg:find(name, 1, true), msg)
            assert.is_false(util.exists(tmp .. "/bad.tar"))
            assert.is_false(util.exists(tmp .. "/bad.tar.tmp"))
            smc:close()
        end)
    end)

    ---------------------------------------------------------------------
    describe("with failing system calls (the fault build)", function()
        -- A lua5.4 child on the fault build ($TAKHIN_FAULT_BUILD, `make
        -- fault`) imports a full and an incremental archive (its base
        -- imported first) again and again, the nth call of one kind (open,
        -- write, fsync, rename, link) failing each time, for every n up to
        -- the number of such calls one import makes.  After every failure
        -- the manager holds nothing new -- or, when the failing call came
        -- after the final rename, the complete snapshot, which verifies --
        -- and the next import works.  (Not malloc: the fault build routes
        -- jansson's allocations through tk_malloc, and jansson 2.14's
        -- parser does not survive a failing one -- lex_scan_string asserts
        -- or writes through a bad pointer -- whoever calls it.)
        local CHILD = [[
local takhin = require("takhin")
local core = require("takhin.core")
local other, base, id, report = arg[1], arg[2], arg[3], arg[4]
local out = assert(io.open(report, "w"))
local function listing()
    local p = io.popen("ls -A " .. other .. "/.snapshots | grep -v '^.seq$'")
    local s = p:read("a")
    p:close()
    return s
end
local sm = assert(takhin.snapshot_manager(other))
assert(sm:import(base))
local clean = listing()
for i = 5, #arg do
    local archive = arg[i]
    for _, kind in ipairs({ "open", "write", "fsync", "rename", "link" }) do
        core._fault_reset()
        assert(sm:import(archive))
        local calls = core._fault_calls(kind)
        core._fault_reset()
        assert(sm:delete(id))
        local failed = 0
        for n = 1, calls do
            core._fault_arm(kind, n, "EIO")
            local got, msg, code = sm:import(archive)
            core._fault_reset()
            if got then
                assert(sm:delete(id))
            else
                failed = failed + 1
                if listing() ~= clean then
                    if not sm:verify(id) then
                        out:write(("%s %s %d: %s (%s) left:\n%s\n"):format(archive, kind, n, msg,
                            code, listing()))
                    end
                    assert(sm:delete(id))
                end
                if not ({ IO = true, NOMEM = true, CORRUPT = true, NOSPC = true })[code] then
                    out:write(("%s %s %d: code %s: %s\n"):format(archive, kind, n, tostring(code), msg))
                end
            end
        end
        out:write(("# %s %s: %d calls, %d failures\n"):format(archive:match("[^/]+$"), kind, calls,
            failed))
    end
end
assert(sm:import(arg[5]))
out:write("done\n")
out:close()
]]

        it("an import that fails at any call leaves nothing behind, or the whole snapshot", function()
            local fault, why = util.fault_build()
            if not fault then
                pending(why)
                return
            end
            local base, full, inc = tmp .. "/s1.tar", tmp .. "/full.tar", tmp .. "/inc.tar"
            assert(sm:export(s1.id, base))
            assert(sm:export(s2.id, full))
            assert(sm:export(s2.id, inc, { since = s1.id }))
            local report = tmp .. "/fault_report"
            local _, err, status = shell(tmp, util.fault_command(util.write_script(tmp, CHILD),
                                                                 { other, base, s2.id, report, full, inc }))
            assert.are.equal(0, status, err)
            local text = util.read_file(report)
            assert.truthy(text:find("done\n$"), text)
            local problems = {}
            for line in text:gmatch("[^\n]+") do
                if not line:find("^#") and line ~= "done" then problems[#problems + 1] = line end
            end
            assert.are.same({}, problems)
            for _, case in ipairs({ "full open", "full write", "full fsync", "full rename",
                                    "inc open", "inc write", "inc link" }) do
                local failures = tonumber(text:match("# " .. case:gsub(" ", "%%.tar ") ..
                    ": %d+ calls, (%d+) failures"))
                assert.truthy(failures and failures > 0, case .. ": " .. text)
            end
        end)
    end)

    ---------------------------------------------------------------------
    describe("on a full filesystem", function()
        local mnt, mounted, big, smf

        before_each(function()
            mnt = tmp .. "/small"
            assert(util.sh("mkdir " .. q(mnt)))
            mounted = util.sh("mount -t tmpfs -o size=1m takhin-spec " .. q(mnt) .. " 2>/dev/null")
        end)

        after_each(function()
            if smf then smf:close() end
            if big then big:close() end
            smf, big = nil, nil
            collectgarbage()
            if mounted then assert(util.sh("umount " .. q(mnt))) end
        end)

        it("an import that runs out of space is NOSPC and leaves nothing behind", function()
            if not mounted then
                pending("mount -t tmpfs is not permitted here (the spec needs root)")
                return
            end
            big = assert(takhin.open_log({ dir = tmp .. "/big" }))
            for i = 0, 1999 do assert(big:append(nil, value(i) .. ("x"):rep(1000), i)) end
            local bsm = assert(takhin.snapshot_manager(tmp .. "/big"))
            local s = assert(bsm:create(big))
            assert(bsm:export(s.id, tmp .. "/big.tar"))
            bsm:close()
            smf = assert(takhin.snapshot_manager(mnt))
            local before = tree(mnt)
            local msg = assert.fails_with({ NOSPC = true }, smf:import(tmp .. "/big.tar"))
            assert.truthy(msg:find(s.id, 1, true), msg)
            assert.are.equal(before, tree(mnt))
            assert.are.same({}, assert(smf:list()))
            -- a smaller one still fits
            assert(sm:export(s1.id, tmp .. "/s1.tar"))
            assert(smf:import(tmp .. "/s1.tar"))
            assert(smf:verify(s1.id))
        end)
    end)

    ---------------------------------------------------------------------
    describe("the archive, read by real tools", function()
        local function need(tool)
            if not has(tool) then
                pending(tool .. " is not installed (make deps)")
                return false
            end
            return true
        end

        it("`tar tf` lists manifest.json first, then the snapshot's files", function()
            if not need("tar") then return end
            assert(sm:export(s2.id, tmp .. "/s2.tar"))
            local out, err, status = shell(tmp, TOOL .. "tar tf " .. q(tmp .. "/s2.tar"))
            assert.are.equal(0, status, err)
            local want = { "manifest.json" }
            for name in util.read_file(s2.path .. "/manifest.json"):gmatch('"name": "([^"]+)"') do
                want[#want + 1] = name
            end
            assert.are.equal(table.concat(want, "\n") .. "\n", out)
            -- an incremental one: since.json second, the shared files left out
            assert(sm:export(s2.id, tmp .. "/inc.tar", { since = s1.id }))
            out = shell(tmp, TOOL .. "tar tf " .. q(tmp .. "/inc.tar"))
            local names = {}
            for n in out:gmatch("[^\n]+") do names[#names + 1] = n end
            assert.are.equal("manifest.json", names[1])
            assert.are.equal("since.json", names[2])
            assert.is_true(#names < #want + 1)
            assert.is_nil(out:find("00000000000000000000.log", 1, true))
        end)

        it("`tar -xf` and `tar --zstd -xf` extract the snapshot's files", function()
            if not need("tar") or not need("zstd") then return end
            assert(sm:export(s2.id, tmp .. "/s2.tar"))
            assert(sm:export(s2.id, tmp .. "/s2.tar.zst", { compress = "zstd" }))
            for _, case in ipairs({ { "x1", "tar -xf s2.tar -C x1" },
                                    { "x2", "tar --zstd -xf s2.tar.zst -C x2" } }) do
                local _, err, status = shell(tmp, ("cd %s && mkdir %s && %s%s"):format(q(tmp), case[1],
                    TOOL, case[2]))
                assert.are.equal(0, status, err)
                local want, got = segment_files(s2.path), segment_files(tmp .. "/" .. case[1])
                assert.are.equal(count(want), count(got))
                for name, bytes in pairs(want) do assert.is_true(bytes == got[name], name) end
                assert.is_true(util.read_file(s2.path .. "/manifest.json") ==
                               util.read_file(tmp .. "/" .. case[1] .. "/manifest.json"))
            end
        end)

        it("`age` encrypts and decrypts it as a pipe (takhin snapshot export | age | age -d | import)", function()
            if not need("age") or not need("age-keygen") then return end
            local key = tmp .. "/key.txt"
            local _, err, status = shell(tmp, TOOL .. "age-keygen -o " .. q(key))
            assert.are.equal(0, status, err)
            local recipient = util.read_file(key):match("# public key: (age1%w+)")
            assert.truthy(recipient)
            local enc = tmp .. "/s2.tar.zst.age"
            _, err, status = shell(tmp, takhin_cmd({ "snapshot", "export", dir, s2.id, "--zstd" }) ..
                " | " .. TOOL .. "age -r " .. q(recipient) .. " > " .. q(enc))
            assert.are.equal(0, status, err)
            assert.is_nil(util.read_file(enc):find("manifest.json", 1, true))
            local out
            out, err, status = shell(tmp, TOOL .. "age -d -i " .. q(key) .. " " .. q(enc) .. " | " ..
                takhin_cmd({ "--json", "snapshot", "import", other, "-" }))
            assert.are.equal(0, status, err)
            assert.truthy(out:find('"id": "' .. s2.id .. '"', 1, true), out)
            assert_restores(s2, "restored")
        end)

        it("`restic backup --stdin` keeps it and `restic dump` gives it back to import", function()
            if not need("restic") then return end
            local repo = tmp .. "/restic-repo"
            local env = TOOL .. "RESTIC_PASSWORD=takhin-spec RESTIC_CACHE_DIR=" .. q(tmp .. "/restic-cache") ..
                " restic -q -r " .. q(repo) .. " "
            local _, err, status = shell(tmp, env .. "init")
            assert.are.equal(0, status, err)
            for _, s in ipairs({ s1, s2 }) do
                _, err, status = shell(tmp, takhin_cmd({ "snapshot", "export", dir, s.id }) .. " | " ..
                    env .. "backup --stdin --stdin-filename " .. q(s.id .. ".tar"))
                assert.are.equal(0, status, err)
            end
            local out
            out, err, status = shell(tmp, env .. "dump latest " .. q(s2.id .. ".tar") .. " | " ..
                takhin_cmd({ "snapshot", "import", other }))
            assert.are.equal(0, status, err)
            assert.truthy(out:find("imported snapshot " .. s2.id, 1, true), out)
            assert_restores(s2, "restored")
        end)
    end)

    ---------------------------------------------------------------------
    describe("the command", function()
        it("exports to a file or stdout, imports from a file or stdin, --json on both", function()
            local path = tmp .. "/s1.tar"
            local out, err, status = shell(tmp, takhin_cmd({ "--json", "snapshot", "export", dir, s1.id,
                "-o", path }))
            assert.are.equal(0, status, err)
            assert.truthy(out:find('"bytes": ' .. util.file_size(path), 1, true), out)
            -- to stdout: the report goes to stderr
            out, err, status = shell(tmp, takhin_cmd({ "--json", "snapshot", "export", dir, s2.id,
                "--since", s1.id, "--zstd", "--level", "7" }) .. " > " .. q(tmp .. "/inc.zst"))
            assert.are.equal(0, status, err)
            assert.are.equal("", out)
            assert.truthy(err:find('"level": 7', 1, true), err)
            assert.truthy(err:find('"since": "' .. s1.id .. '"', 1, true), err)
            out, err, status = shell(tmp, takhin_cmd({ "snapshot", "import", other, path }))
            assert.are.equal(0, status, err)
            assert.truthy(out:find("imported snapshot " .. s1.id, 1, true), out)
            out, err, status = shell(tmp, takhin_cmd({ "--json", "snapshot", "import", other, "-" }) ..
                " < " .. q(tmp .. "/inc.zst"))
            assert.are.equal(0, status, err)
            assert.truthy(out:find('"high_water_mark": ' .. N2, 1, true), out)
            assert_restores(s2, "restored")
        end)

        it("is listed in --help, with its options", function()
            local out, err, status = shell(tmp, takhin_cmd({ "--help" }))
            assert.are.equal(0, status, err)
            assert.truthy(out:find("snapshot export DIR ID", 1, true), out)
            assert.truthy(out:find("snapshot import DIR [FILE|-]", 1, true), out)
            out = shell(tmp, takhin_cmd({ "snapshot", "export", "--help" }))
            for _, opt in ipairs({ "-o FILE", "--since ID", "--zstd", "--level N", "--progress", "--json" }) do
                assert.truthy(out:find(opt, 1, true), opt)
            end
            out = shell(tmp, takhin_cmd({ "snapshot", "import", "--help" }))
            assert.truthy(out:find("usage: takhin snapshot import [OPTIONS] DIR [FILE|-]", 1, true), out)
        end)

        it("fails with the code (exit 1) or a usage error (exit 2)", function()
            local _, err, status = shell(tmp, takhin_cmd({ "snapshot", "export", dir, s2.id, "--since",
                s1.id, "-o", tmp .. "/inc.tar" }))
            assert.are.equal(0, status, err)
            _, err, status = shell(tmp, takhin_cmd({ "snapshot", "import", other, tmp .. "/inc.tar" }))
            assert.are.equal(1, status)
            assert.truthy(err:find("(NOT_FOUND)", 1, true), err)
            assert.truthy(err:find(s1.id, 1, true), err)
            _, err, status = shell(tmp, takhin_cmd({ "snapshot", "export", dir, s2.id, "--level", "3" }))
            assert.are.equal(2, status, err)
            _, err, status = shell(tmp, takhin_cmd({ "snapshot", "import", other, "a", "b" }))
            assert.are.equal(2, status, err)
            _, err, status = shell(tmp, takhin_cmd({ "snapshot", "import", other }) .. " < /dev/null")
            assert.are.equal(1, status, err)
            assert.truthy(err:find("(CORRUPT)", 1, true), err)
        end)
    end)

    ---------------------------------------------------------------------
    describe("hostile archives", function()
        local entries, inc_entries

        before_each(function()
            entries = entries_of(s2)
            -- the same, as an incremental archive since s1 (sm2 holds s1)
            assert(sm:export(s1.id, tmp .. "/s1.tar"))
            assert(sm2:import(tmp .. "/s1.tar"))
            os.remove(tmp .. "/s1.tar")
        end)

        -- Import data; it must fail with one of codes, leave the whole
        -- temporary tree as it was, and sm2 listing s1 alone.
        local function refused(codes, data, needle)
            local path = tmp .. "/hostile.tar"
            util.write_file(path, data)
            local before = tree(tmp)
            local msg = assert.fails_with(codes, sm2:import(path))
            if needle then assert.truthy(msg:find(needle, 1, true), msg) end
            assert.are.equal(before, tree(tmp))
            local list = assert(sm2:list())
            assert.are.equal(1, #list)
            assert.are.equal(s1.id, list[1].id)
            os.remove(path)
            return msg
        end

        local EITHER = { CORRUPT = true, INVALID = true }

        it("the hand-made archive is accepted (the cases below change one thing)", function()
            util.write_file(tmp .. "/hand.tar", tar(entries))
            same_record(s2, assert(sm2:import(tmp .. "/hand.tar")))
            -- tar's record padding after the end is zeros, and allowed
            assert(sm2:delete(s2.id))
            util.write_file(tmp .. "/hand.tar", tar(entries) .. ("\0"):rep(9 * 1024))
            assert(sm2:import(tmp .. "/hand.tar"))
        end)

        it("paths: '/', '..', an absolute path, a ustar prefix", function()
            for _, name in ipairs({ "../evil", "..", ".", "sub/00000000000000000000.log",
                                    "/tmp/evil", "00000000000000000000.log/" }) do
                local e = { name = name, data = "evil\n" }
                local list = { entries[1], e }
                refused("INVALID", tar(list), "only file names")
            end
            local list = { entries[1], { name = entries[2].name, data = entries[2].data, prefix = ".." } }
            refused("INVALID", tar(list), "prefix")
        end)

        it("links, devices, directories, FIFOs, pax and GNU headers", function()
            local name = entries[2].name
            for t, what in pairs({ ["1"] = "hard link", ["2"] = "symbolic link", ["3"] = "character device",
                                   ["4"] = "block device", ["5"] = "directory", ["6"] = "FIFO",
                                   x = "pax", g = "pax", L = "GNU long name" }) do
                local list = { entries[1], { name = name, type = t, linkname = "/etc/passwd" } }
                refused("INVALID", tar(list), what)
            end
            -- a link in place of manifest.json too
            refused("INVALID", tar({ { name = "manifest.json", type = "2", linkname = "/etc/passwd" } }))
        end)

        it("absurd sizes: in a header, in the manifest, for the manifest", function()
            local list = { entries[1], { name = entries[2].name, size = 8 * 1024 ^ 3 - 1, data = "" } }
            refused("CORRUPT", table.concat({ tar_entry(list[1]), tar_header(entries[2].name, 8 * 1024 ^ 3 - 1) }),
                "the manifest says")
            local text = manifest_with(entries[1].data, entries[2].name, "size", "1099511627776")
            refused("INVALID", tar({ { name = "manifest.json", data = text } }), "refused above")
            refused("INVALID", tar_header("manifest.json", 1024 ^ 3), "refused above")
            local base256 = "\128" .. ("\0"):rep(7) .. "\0\0\0\1"
            refused("INVALID", tar_header("manifest.json", 0, { size_field = base256 }), "base-256")
        end)

        it("duplicate entries", function()
            local list = { entries[1], entries[2], entries[2] }
            for i = 3, #entries do list[#list + 1] = entries[i] end
            refused("INVALID", tar(list), "twice")
            list = { entries[1], entries[1] }
            refused("INVALID", tar(list), "second manifest.json")
        end)

        it("a manifest that lies: sizes, checksums, files it does not name, files missing", function()
            local name = entries[2].name
            local list = { unpack = nil }
            for i, e in ipairs(entries) do list[i] = e end
            -- a size
            list[1] = { name = "manifest.json", data = manifest_with(entries[1].data, name, "size",
                tostring(#entries[2].data + 1)) }
            refused(EITHER, tar(list))
            -- a checksum
            list[1] = { name = "manifest.json", data = manifest_with(entries[1].data, name, "crc32c", "00000000") }
            refused("CORRUPT", tar(list), "fails its checksum")
            -- the data instead
            list[1] = entries[1]
            local bad = entries[2].data
            bad = bad:sub(1, 10) .. string.char((bad:byte(11) + 1) % 256) .. bad:sub(12)
            list[2] = { name = name, data = bad }
            refused("CORRUPT", tar(list), "fails its checksum")
            -- a file it does not name
            list[2] = entries[2]
            local extra = {}
            for i, e in ipairs(list) do extra[i] = e end
            extra[#extra + 1] = { name = "00000000000000099999.log", data = "x" }
            refused("CORRUPT", tar(extra), "not in the archive's manifest")
            extra[#extra] = { name = "notes.txt", data = "x" }
            refused("INVALID", tar(extra), "not a segment file")
            -- a file missing
            local short = {}
            for i = 1, #list - 1 do short[i] = list[i] end
            refused("CORRUPT", tar(short), "lacks")
            -- the manifest's own numbers
            for _, change in ipairs({
                { '"total_size": %d+', '"total_size": 7' },
                { '"high_water_mark": %d+', '"high_water_mark": 99999999' },
                { '"segment_offsets": %[%s*0,', '"segment_offsets": [ 5,' },
            }) do
                local text = entries[1].data:gsub(change[1], change[2], 1)
                refused("CORRUPT", tar({ { name = "manifest.json", data = text }, entries[2] }),
                        "does not hold together")
            end
            refused("CORRUPT", tar({ { name = "manifest.json", data = "{ not json" } }), "parse")
            refused("CORRUPT", tar({ { name = "manifest.json", data = '{"id": "../../x"}' } }), "id")
        end)

        it("not a takhin archive: another first entry, a bad header checksum, an empty stream", function()
            refused("INVALID", tar({ entries[2], entries[1] }), "manifest.json")
            refused("CORRUPT", tar_header("manifest.json", 10, { chksum = "0000000\0" }), "checksum")
            refused("CORRUPT", "", "empty")
            refused("CORRUPT", END, "empty")
            refused("CORRUPT", ("takhin "):rep(200))
        end)

        it("an incremental archive that asks for the wrong base or a file the base does not share", function()
            local inc = tmp .. "/inc.tar"
            assert(sm:export(s2.id, inc, { since = s1.id }))
            local data = util.read_file(inc)
            -- its since.json renamed to a snapshot that is not there
            local text = '{"format": 1, "since": "1-elsewhere"}'
            local list = { entries[1], { name = "since.json", data = text } }
            local msg = refused("NOT_FOUND", tar(list), "1-elsewhere")
            assert.truthy(msg:find("1-elsewhere", 1, true))
            -- since.json anywhere but second
            refused("INVALID", tar({ entries[1], entries[2], { name = "since.json", data = text } }),
                    "right after")
            -- base names itself, or no valid id
            refused("CORRUPT", tar({ entries[1], { name = "since.json", data = '{"format":1,"since":"' ..
                s2.id .. '"}' } }))
            refused("CORRUPT", tar({ entries[1], { name = "since.json", data = '{"format":2,"since":"' ..
                s1.id .. '"}' } }))
            -- the base lacks a file the archive leaves out: an archive
            -- "since s1" that leaves out the active segment's .log
            local active = ("%020d.log"):format(s2.segment_offsets[#s2.segment_offsets])
            local since = { entries[1], { name = "since.json", data = '{"format": 1, "since": "' .. s1.id .. '"}' } }
            for i = 2, #entries do
                if entries[i].name ~= active then since[#since + 1] = entries[i] end
            end
            refused("CORRUPT", tar(since), active)
            -- and the real one imports
            util.write_file(inc, data)
            assert(sm2:import(inc))
        end)

        it("a stream cut anywhere: 60 seeded cuts of each kind, and every block edge at the end", function()
            local plain, zst = tmp .. "/p.tar", tmp .. "/z.tar.zst"
            assert(sm:export(s2.id, plain))
            assert(sm:export(s2.id, zst, { compress = "zstd" }))
            math.randomseed(20240612)
            for _, path in ipairs({ plain, zst }) do
                local data = util.read_file(path)
                local cuts = { 0, 1, 4, 511, 512, 513, #data - 1, #data - BLOCK, #data - BLOCK - 1,
                               #data - 2 * BLOCK, #data - 2 * BLOCK + 1 }
                for _ = 1, 60 do cuts[#cuts + 1] = math.random(0, #data - 1) end
                for _, n in ipairs(cuts) do
                    if n >= 0 and n < #data then
                        refused("CORRUPT", data:sub(1, n))
                    end
                end
            end
        end)

        it("garbage after the end, and a damaged or foreign zstd stream", function()
            local plain, zst = tmp .. "/p.tar", tmp .. "/z.tar.zst"
            assert(sm:export(s2.id, plain))
            assert(sm:export(s2.id, zst, { compress = "zstd" }))
            local p, z = util.read_file(plain), util.read_file(zst)
            refused("CORRUPT", p .. "x", "after the end")
            refused("CORRUPT", p .. ("\0"):rep(3000) .. "\1", "after the end")
            refused("CORRUPT", p .. p, "after the end")
            refused("CORRUPT", z .. "garbage", "zstd")
            refused("CORRUPT", z .. ("\0"):rep(64), "zstd")
            -- a flipped byte in the middle of the frame
            local mid = math.floor(#z / 2)
            refused("CORRUPT", z:sub(1, mid) .. string.char((z:byte(mid + 1) + 1) % 256) .. z:sub(mid + 2))
            -- the magic number and nothing valid after it
            refused("CORRUPT", "\40\181\47\253" .. ("\255"):rep(100), "zstd")
        end)
    end)
end)
