-- Segment files with more than one link are never modified in place
-- (docs/FORMAT.md): a hard link held elsewhere keeps its bytes while the
-- log appends to or truncates its own copy.

local takhin = require("takhin")
local util = require("helpers.util")
local logs = require("helpers.log")

local OPTS = { max_segment_size = 4000, index_interval_bytes = 64 }

local open = logs.opener(OPTS)

local function value(i) return ("%05d|"):format(i) .. ("abcdefgh"):rep(i % 5 + 1) end

local function append_range(log, from, to)
    for i = from, to do assert.are.equal(i, log:append("k" .. i, value(i), i)) end
end

local function check_range(log, from, to)
    assert.are.equal(to + 1, log:high_water_mark())
    local expect = from
    for rec in log:records(from) do
        assert.are.equal(expect, rec.offset)
        assert.are.equal(value(expect), rec.value)
        expect = expect + 1
    end
    assert.are.equal(to + 1, expect)
end

describe("a hard link to a segment file", function()
    local tmp, dir, outside

    before_each(function()
        tmp = util.tmpdir()
        dir = tmp .. "/log"
        outside = tmp .. "/outside"
        assert.is_true(util.sh("mkdir -p " .. util.q(outside)))
    end)
    after_each(function()
        collectgarbage(); collectgarbage()
        util.rmtree(tmp)
    end)

    -- Link the three files of the segment at base to `outside`; returns
    -- { name = bytes at link time }.
    local function link_segment(base)
        local kept = {}
        for _, ext in ipairs({ "log", "index", "timeindex" }) do
            local name = util.segment_name(base, ext)
            local src = dir .. "/" .. name
            assert.is_true(util.sh("ln " .. util.q(src) .. " " .. util.q(outside .. "/" .. name)), "ln " .. name)
            local _, nlink = util.stat(src)
            assert.are.equal(2, nlink)
            kept[name] = util.read_file(src)
        end
        return kept
    end

    local function assert_kept(kept)
        for name, bytes in pairs(kept) do
            local linked = outside .. "/" .. name
            assert.are.equal(#bytes, util.file_size(linked), name .. " changed size")
            assert.are.equal(bytes, util.read_file(linked), name .. " changed")
            local ino_out = util.stat(linked)
            local ino_in = util.stat(dir .. "/" .. name)
            if ino_in then
                assert.are_not.equal(ino_out, ino_in, name .. " is still shared")
            end
        end
    end

    local function active_base(log)
        local segs = log:segments()
        return segs[#segs].base_offset
    end

    it("keeps its bytes when the log appends (linked while the log is closed)", function()
        local log = open(dir)
        append_range(log, 0, 19)
        local base = active_base(log)
        log:close()
        local kept = link_segment(base)
        assert.is_true(#kept[util.segment_name(base, "index")] > 0, "the active segment has no index entries")

        log = open(dir)
        append_range(log, 20, 199)
        assert.is_true(log:num_segments() > 2)
        assert_kept(kept)
        check_range(log, 0, 199)
        log:close()

        log = open(dir)
        check_range(log, 0, 199)
        log:close()
        assert_kept(kept)
    end)

    it("keeps its bytes when the log appends (linked while the log is open)", function()
        local log = open(dir)
        append_range(log, 0, 19)
        local base = active_base(log)
        local kept = link_segment(base)
        append_range(log, 20, 25)
        assert_kept(kept)
        append_range(log, 26, 199)
        assert_kept(kept)
        check_range(log, 0, 199)
        log:close()
        log = open(dir)
        check_range(log, 0, 199)
        log:close()
        assert_kept(kept)
    end)

    it("keeps its bytes when the log truncates its active segment", function()
        local log = open(dir)
        append_range(log, 0, 59)
        local n = 60
        local function active_segment()
            local segs = log:segments()
            return segs[#segs]
        end
        while active_segment().next_offset - active_segment().base_offset < 4 do
            append_range(log, n, n)
            n = n + 1
        end
        assert.is_true(log:num_segments() >= 2)
        local active = active_segment()
        log:close()
        local kept = link_segment(active.base_offset)

        log = open(dir)
        local cut = active.base_offset + 2
        assert.is_true(log:truncate(cut))
        assert_kept(kept)
        check_range(log, 0, cut - 1)
        append_range(log, cut, cut + 40)
        assert_kept(kept)
        check_range(log, 0, cut + 40)
        log:close()
    end)

    it("keeps its bytes when the log truncates into a sealed segment", function()
        local log = open(dir)
        append_range(log, 0, 199)
        local segs = log:segments()
        assert.is_true(#segs >= 3)
        local sealed = segs[2]
        local kept = link_segment(sealed.base_offset)
        local cut = sealed.base_offset + 1
        assert.is_true(log:truncate(cut))
        assert_kept(kept)
        check_range(log, 0, cut - 1)
        append_range(log, cut, 120)
        assert_kept(kept)
        check_range(log, 0, 120)
        log:close()
        log = open(dir)
        check_range(log, 0, 120)
        log:close()
        assert_kept(kept)
    end)

    -- The link count is not looked at before every append (watch.h): an
    -- inotify watch says when the active .log's attributes changed, so an
    -- append is one pwrite -- and a link made meanwhile is still honoured
    -- (the tests above make theirs while the log is open).
    it("costs no system call per append but the write itself", function()
        if not util.sh("command -v strace >/dev/null 2>&1") then
            return pending("strace is not installed")
        end
        local trace = tmp .. "/trace"
        -- (LeakSanitizer cannot run under ptrace: off in a sanitizer build)
        local out, ok = util.run_lua_as("env ASAN_OPTIONS=detect_leaks=0 strace -f -qq -o "
                                        .. util.q(trace), tmp, [[
            local takhin = require("takhin")
            local log = assert(takhin.open_log{ dir = arg[1] })
            log:append("k", "warm up")                  -- arms the watch
            io.stderr:write("MARK-BEGIN\n")
            for i = 1, 200 do assert(log:append("k", "value " .. i)) end
            io.stderr:write("MARK-END\n")
            log:close()
        ]], { dir })
        assert(ok, out)
        -- The calls of the thread that appends (other threads -- the
        -- watcher starting up -- are not the append's), leaving out the
        -- Lua allocator's memory calls and lock waits.
        local IGNORED = { futex = true, mmap = true, munmap = true, mprotect = true, brk = true,
                          madvise = true, mremap = true }
        local lines, inside, calls, writes, me = util.lines(trace), false, {}, 0, nil
        for _, line in ipairs(lines) do
            local pid, name = line:match("^(%d+)%s+([%w_]+)%(")
            if line:find("MARK-END", 1, true) then inside = false end
            if inside and pid == me and name and not IGNORED[name] then
                calls[#calls + 1] = name
                if name == "pwrite64" then writes = writes + 1 end
            end
            if line:find("MARK-BEGIN", 1, true) then inside, me = true, pid end
        end
        -- 200 records of ~40 bytes write one or two index entries (two
        -- pwrites and a link-count check each): nothing else.
        assert.is_true(writes >= 200, table.concat(calls, " "))
        assert.is_true(#calls <= 200 + 8, ("%d system calls for 200 appends: %s"):format(#calls,
            table.concat(calls, " "):sub(1, 600)))
    end)
end)
