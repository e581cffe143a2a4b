-- Recovery: torn tails, garbage, lost or damaged index files, and damaged
-- records in sealed segments (docs/FORMAT.md, "Recovery").

local takhin = require("takhin")
local util = require("helpers.util")
local logs = require("helpers.log")
require("helpers.assertions")

local SEG0 = util.segment_name(0, "log")

local open = logs.open

local function with(opts, dir)
    local o = { dir = dir }
    for k, v in pairs(opts) do o[k] = v end
    return o
end

describe("a log being opened", function()
    local tmp

    before_each(function() tmp = util.tmpdir() end)
    after_each(function()
        collectgarbage(); collectgarbage()
        util.rmtree(tmp)
    end)

    ---------------------------------------------------------------------
    -- (a) torn tail
    ---------------------------------------------------------------------

    -- Three records of 60 bytes each: 34 + key "k0" (2) + value (24).
    local REC = 60
    local function value(i) return ("value-%d-"):format(i) .. ("x"):rep(24 - 8) end

    local function three_records(dir, opts)
        local log = open(with(opts, dir))
        for i = 0, 2 do
            assert.are.equal(24, #value(i))
            log:append("k" .. i, value(i), 1000 * (i + 1))
        end
        log:close()
        assert.are.equal(3 * REC, util.file_size(dir .. "/" .. SEG0))
    end

    for _, case in ipairs({
        { name = "without index entries", opts = {} },
        { name = "with an index entry for every record", opts = { index_interval_bytes = 1 } },
    }) do
        it("drops a last record cut at any byte, keeping the others (" .. case.name .. ")", function()
            local pristine = tmp .. "/pristine"
            three_records(pristine, case.opts)
            for cut = 2 * REC, 3 * REC - 1 do
                local dir = tmp .. "/cut"
                util.copytree(pristine, dir)
                util.truncate(dir .. "/" .. SEG0, cut)
                local log = open(with(case.opts, dir))
                local where = "cut at " .. cut
                assert.are.equal(2, log:high_water_mark(), where)
                assert.are.equal(2 * REC, util.file_size(dir .. "/" .. SEG0), where)
                for i = 0, 1 do
                    assert.are.same({ offset = i, key = "k" .. i, value = value(i), timestamp = 1000 * (i + 1) },
                                    log:read(i), where)
                end
                assert.fails_with("OUT_OF_RANGE", log:read(2))
                assert.are.equal(1, log:offset_for_time(1500), where)
                assert.are.equal(2, log:offset_for_time(2500), where)
                assert.are.equal(2, log:offset_for_time(3500), where)
                assert.are.equal(2, log:append("new", "new value", 4000), where)
                assert.are.same({ offset = 2, key = "new", value = "new value", timestamp = 4000 },
                                log:read(2), where)
                assert.are.equal(2, log:offset_for_time(3500), where)
                log:close()

                log = open(with(case.opts, dir))
                assert.are.equal(3, log:high_water_mark(), where)
                assert.are.equal("new value", log:read(2).value, where)
                log:close()
            end
        end)
    end

    ---------------------------------------------------------------------
    -- (b) garbage after the last record
    ---------------------------------------------------------------------

    local function garbage_cases()
        local rnd = {}
        local x = 7
        for i = 1, 200 do x = (x * 1103515245 + 12345) % 2147483648; rnd[i] = string.char(x % 256) end
        return {
            zeros = ("\0"):rep(100),
            random = table.concat(rnd),
            ["a huge length"] = "\255\255\255\127" .. ("\1"):rep(40),
            ["a plausible header with a bad CRC"] = util.pack("<I4I4BBi8i8I4I4", 30 + 3, 0xdeadbeef, 1, 0, 3, 0, 0, 3) .. "abc",
            ["one byte"] = "\1",
        }
    end

    for name, junk in pairs(garbage_cases()) do
        it("drops garbage after the last record (" .. name .. ") and resumes appending", function()
            local dir = tmp .. "/log"
            three_records(dir, {})
            util.append_file(dir .. "/" .. SEG0, junk)
            local log = open({ dir = dir })
            assert.are.equal(3, log:high_water_mark())
            assert.are.equal(3 * REC, util.file_size(dir .. "/" .. SEG0))
            assert.are.equal(value(2), log:read(2).value)
            assert.are.equal(3, log:append("k3", "after"))
            assert.are.equal("after", log:read(3).value)
            log:close()
            log = open({ dir = dir })
            assert.are.equal(4, log:high_water_mark())
            assert.are.equal("after", log:read(3).value)
            log:close()
        end)
    end

    it("drops a repeated copy of the last record (wrong offset) after the tail", function()
        local dir = tmp .. "/log"
        three_records(dir, {})
        local path = dir .. "/" .. SEG0
        util.append_file(path, util.read_at(path, 2 * REC, REC))
        local log = open({ dir = dir })
        assert.are.equal(3, log:high_water_mark())
        assert.are.equal(3 * REC, util.file_size(path))
        log:close()
    end)

    ---------------------------------------------------------------------
    -- (c) index files
    ---------------------------------------------------------------------

    local IOPTS = { max_segment_size = 2000, index_interval_bytes = 100 }
    local N = 300

    -- A log over several segments with many index entries and timestamps
    -- that often go backwards.  Returns what reads and lookups give.
    local function build(dir)
        local log = open(with(IOPTS, dir))
        local x = 99
        local function rand(n) x = (x * 1103515245 + 12345) % 2147483648; return x % n end
        for i = 0, N - 1 do
            log:append("k" .. i, ("%d|"):format(i) .. ("v"):rep(rand(50)), 10000 + i * 10 + rand(100) - 50)
        end
        assert.is_true(log:num_segments() >= 4)
        local reads, times = {}, {}
        for i = 0, N - 1 do reads[i] = log:read(i) end
        for t = 9900, 13100 do times[t] = log:offset_for_time(t) end
        log:close()
        return { reads = reads, times = times }
    end

    local function check(dir, want, what)
        local log = open(with(IOPTS, dir))
        assert.are.equal(N, log:high_water_mark(), what)
        for i = 0, N - 1 do assert.are.same(want.reads[i], log:read(i), what .. ", offset " .. i) end
        for t = 9900, 13100 do
            assert.are.equal(want.times[t], log:offset_for_time(t), what .. ", time " .. t)
        end
        local i = 0
        for rec in log:records() do
            assert.are.same(want.reads[i], rec, what)
            i = i + 1
        end
        assert.are.equal(N, i, what)
        assert.are.equal(N, log:append("after", "after"), what)
        assert.are.equal("after", log:read(N).value, what)
        log:close()
    end

    local function index_files(dir)
        local names = {}
        for _, n in ipairs(util.ls_suffix(dir, ".index")) do names[#names + 1] = n end
        for _, n in ipairs(util.ls_suffix(dir, ".timeindex")) do names[#names + 1] = n end
        return names
    end

    it("rebuilds deleted .index and .timeindex files of sealed and active segments", function()
        local dir = tmp .. "/log"
        local want = build(dir)
        local names = index_files(dir)
        assert.is_true(#names >= 8)
        for _, n in ipairs(names) do os.remove(dir .. "/" .. n) end
        check(dir, want, "deleted index files")
        for _, n in ipairs(names) do
            assert.is_true(util.exists(dir .. "/" .. n), n .. " was not rebuilt")
        end
    end)

    -- Entry sizes and layouts of docs/FORMAT.md: each entry ends with the
    -- CRC32C of the bytes before it.
    -- A sealed segment's .timeindex ends with a 24-byte seal trailer.
    local OFF_ENTRY, TIME_ENTRY, SEAL = 12, 16, 24
    local function is_time(path) return path:match("%.timeindex$") ~= nil end
    local function entry_size(path) return is_time(path) and TIME_ENTRY or OFF_ENTRY end
    local function sealed(path)
        return is_time(path) and util.file_size(path) % TIME_ENTRY == SEAL % TIME_ENTRY
    end
    local function entry_count(path)
        return math.floor((util.file_size(path) - (sealed(path) and SEAL or 0)) / entry_size(path))
    end
    local function with_crc(body) return body .. util.pack("<I4", takhin.crc32c(body)) end
    local function base_of(name) return tonumber(name:match("^(%d+)%.")) end

    local damage = {
        ["truncated to an odd size"] = function(path)
            local size = util.file_size(path)
            if size > 3 then util.truncate(path, size - 3) else util.write_file(path, "\1\2\3") end
        end,
        ["overwritten with random bytes"] = function(path, seed)
            local size = util.file_size(path)
            local x, t = seed, {}
            for i = 1, math.max(size, 48) do
                x = (x * 1103515245 + 12345) % 2147483648
                t[i] = string.char(math.floor(x / 65536) % 256)    -- (x >> 16) % 256
            end
            util.write_file(path, table.concat(t))
        end,
        ["zeroed"] = function(path)
            util.write_file(path, ("\0"):rep(math.max(util.file_size(path), 48)))
        end,
        ["with their middle entry zeroed"] = function(path)
            local entry, n = entry_size(path), entry_count(path)
            if n < 1 then return false end
            util.write_at(path, math.floor(n / 2) * entry, ("\0"):rep(entry))
        end,
        ["with a byte of their middle entry flipped (bad CRC)"] = function(path)
            local entry, n = entry_size(path), entry_count(path)
            if n < 1 then return false end
            -- The position's low byte, or the max_timestamp's low byte.
            util.flip_byte(path, math.floor(n / 2) * entry + (is_time(path) and 0 or 4))
        end,
        ["with a byte of the seal trailer flipped"] = function(path)
            if not sealed(path) then return false end
            util.flip_byte(path, util.file_size(path) - SEAL)  -- max_timestamp's low byte
        end,
        ["without the seal trailer"] = function(path)
            if not sealed(path) then return false end
            util.truncate(path, util.file_size(path) - SEAL)
        end,
    }

    for name, hurt in pairs(damage) do
        it("gives correct lookups when its index files are " .. name, function()
            local dir = tmp .. "/log"
            local want = build(dir)
            local hurt_files = 0
            for seed, n in ipairs(index_files(dir)) do
                if hurt(dir .. "/" .. n, seed) ~= false then hurt_files = hurt_files + 1 end
            end
            assert.is_true(hurt_files >= 2, "only " .. hurt_files .. " files damaged")
            check(dir, want, name)
        end)
    end

    -- Entries below have valid CRCs and stay increasing: only using them
    -- shows they are wrong.

    it("gives correct lookups when an index entry points at the wrong record", function()
        local dir = tmp .. "/log"
        local want = build(dir)
        local function size(o) return 34 + #want.reads[o].key + #want.reads[o].value end
        local hurt = 0
        for _, n in ipairs(util.ls_suffix(dir, ".index")) do
            local path, base = dir .. "/" .. n, base_of(n)
            local count = entry_count(path)
            -- Point a middle entry at the record before its own: the
            -- position still grows, but the record there has another offset.
            for k = 1, count - 1 do
                local rel, pos = util.unpack_le("<I4I4", util.read_at(path, k * OFF_ENTRY, 8))
                local prel, ppos = util.unpack_le("<I4I4", util.read_at(path, (k - 1) * OFF_ENTRY, 8))
                local earlier = pos - size(base + rel - 1)
                if rel - 1 > prel and earlier > ppos then
                    util.write_at(path, k * OFF_ENTRY, with_crc(util.pack("<I4I4", rel, earlier)))
                    hurt = hurt + 1
                    break
                end
            end
        end
        assert.is_true(hurt > 0)
        check(dir, want, "index entry pointing at the wrong record")
    end)

    it("gives correct lookups when a time index entry claims a timestamp below its record's", function()
        local dir = tmp .. "/log"
        local want = build(dir)
        local hurt = 0
        for _, n in ipairs(util.ls_suffix(dir, ".timeindex")) do
            local path, base = dir .. "/" .. n, base_of(n)
            local count = entry_count(path)
            -- Find an entry whose own record raised the largest timestamp
            -- by more than one, and claim one less: still non-decreasing,
            -- but the entry's record is newer than the entry says.
            for k = 1, count - 1 do
                local ts, rel = util.unpack_le("<i8I4", util.read_at(path, k * TIME_ENTRY, 12))
                local pts = util.unpack_le("<i8I4", util.read_at(path, (k - 1) * TIME_ENTRY, 12))
                if want.reads[base + rel].timestamp == ts and ts - 1 > pts then
                    util.write_at(path, k * TIME_ENTRY, with_crc(util.pack("<i8I4", ts - 1, rel)))
                    hurt = hurt + 1
                    break
                end
            end
        end
        assert.is_true(hurt > 0)
        check(dir, want, "time index entry with a wrong timestamp")
    end)

    ---------------------------------------------------------------------
    -- (d) damage inside a sealed segment
    ---------------------------------------------------------------------

    -- Fixed-size records: 34 + key "k0000" (5) + value (50) = 89 bytes,
    -- five to a segment.
    local FREC = 89
    local FOPTS = { max_segment_size = 5 * FREC, index_interval_bytes = 1 }
    local function fvalue(i) return ("%06d"):format(i) .. ("#"):rep(44) end

    local function fixed_log(dir)
        local log = open(with(FOPTS, dir))
        for i = 0, 29 do log:append(("k%04d"):format(i), fvalue(i), i) end
        local segs = log:segments()
        log:close()
        assert.are.equal(6, #segs)
        for _, s in ipairs(segs) do
            assert.are.equal(5, s.next_offset - s.base_offset)
            assert.are.equal(5 * FREC, s.size)
        end
        return segs
    end

    for _, case in ipairs({
        { field = "value", at = 34 + 5 + 20 },
        { field = "timestamp", at = 18 },
        { field = "key", at = 34 + 2 },
        { field = "crc", at = 5 },
    }) do
        it("reports CORRUPT for a damaged record (" .. case.field .. ") of a sealed segment and reads the rest", function()
            local dir = tmp .. "/log"
            local segs = fixed_log(dir)
            local seg = segs[2]
            local bad = seg.base_offset + 2
            local name = util.segment_name(seg.base_offset, "log")
            local path = dir .. "/" .. name
            util.flip_byte(path, (bad - seg.base_offset) * FREC + case.at)
            local before = util.read_file(path)

            local log = open(with(FOPTS, dir))
            assert.are.equal(30, log:high_water_mark())
            local msg = assert.fails_with("CORRUPT", log:read(bad))
            assert.truthy(msg:find(name, 1, true), msg)
            for i = 0, 29 do
                if i ~= bad then assert.are.equal(fvalue(i), log:read(i).value, "offset " .. i) end
            end
            local ok, err = pcall(function() for _ in log:records() do end end)
            assert.is_false(ok)
            assert.truthy(tostring(err):find("CORRUPT", 1, true), tostring(err))
            local seen = 0
            for rec in log:records(bad + 1) do
                assert.are.equal(fvalue(rec.offset), rec.value)
                seen = seen + 1
            end
            assert.are.equal(30 - bad - 1, seen)
            assert.are.equal(30, log:append("k0030", fvalue(30), 30))
            log:close()
            assert.are.equal(before, util.read_file(path), "a sealed segment was modified")

            local ro = open(with({ readonly = true }, dir))
            assert.fails_with("CORRUPT", ro:read(bad))
            assert.are.equal(fvalue(bad + 1), ro:read(bad + 1).value)
            ro:close()
        end)
    end

    ---------------------------------------------------------------------
    -- (e) a missing middle segment
    ---------------------------------------------------------------------

    -- Segments 0, 5 and 10 (five fixed-size records each), with the
    -- middle one's .log, .index and .timeindex deleted.  Returns the
    -- missing .log's name.
    local function log_missing_middle(dir)
        local log = open(with(FOPTS, dir))
        for i = 0, 14 do log:append(("k%04d"):format(i), fvalue(i), i) end
        local bases = {}
        for k, seg in ipairs(log:segments()) do bases[k] = seg.base_offset end
        log:close()
        assert.are.same({ 0, 5, 10 }, bases)
        for _, ext in ipairs({ "log", "index", "timeindex" }) do
            assert(os.remove(dir .. "/" .. util.segment_name(5, ext)))
        end
        return util.segment_name(5, "log")
    end

    -- Reads of [5, 10) fail with CORRUPT naming the missing file; the
    -- records below and above read back; iterating stops at the gap.
    local function assert_gap_reported(log, missing, who)
        for o = 0, 14 do
            if o >= 5 and o < 10 then
                local msg = assert.fails_with("CORRUPT", log:read(o))
                assert.truthy(msg:find(missing, 1, true), who .. ", offset " .. o .. ": " .. msg)
                assert.truthy(msg:find("missing", 1, true), who .. ", offset " .. o .. ": " .. msg)
            else
                assert.are.equal(fvalue(o), log:read(o).value, who .. ", offset " .. o)
            end
        end
        local ok, err = pcall(function() for _ in log:records() do end end)
        assert.is_false(ok, who .. ": iterating over the gap did not fail")
        assert.truthy(tostring(err):find(missing, 1, true), who .. ": " .. tostring(err))
        local n = 0
        for rec in log:records(10) do
            assert.are.equal(fvalue(rec.offset), rec.value)
            n = n + 1
        end
        assert.are.equal(5, n, who)
    end

    it("reports the offsets of a missing middle segment CORRUPT naming its file, to a writer", function()
        local dir = tmp .. "/log"
        local missing = log_missing_middle(dir)
        local log = open(with(FOPTS, dir))
        assert.are.equal(15, log:high_water_mark())
        assert_gap_reported(log, missing, "writer")
        assert.are.equal(15, log:append("k0015", fvalue(15), 15))
        log:close()
        assert.is_false(util.exists(dir .. "/" .. missing), "the missing segment was made up")
    end)

    it("reports the offsets of a missing middle segment CORRUPT naming its file, to a read-only handle", function()
        local dir = tmp .. "/log"
        local missing = log_missing_middle(dir)
        local ro = open(with({ readonly = true }, dir))
        assert.are.equal(15, ro:high_water_mark())
        assert_gap_reported(ro, missing, "read-only")
        ro:close()
    end)

    it("reports the offsets of a missing middle segment CORRUPT naming its file, to a read-only handle next to a writer", function()
        local dir = tmp .. "/log"
        local missing = log_missing_middle(dir)
        local log = open(with(FOPTS, dir))
        local ro = open(with({ readonly = true }, dir))
        assert_gap_reported(ro, missing, "read-only next to a writer")
        assert_gap_reported(log, missing, "writer")
        ro:close()
        log:close()
    end)

    ---------------------------------------------------------------------
    -- read-only handles
    ---------------------------------------------------------------------

    it("opens read-only over a torn tail without modifying the file", function()
        local dir = tmp .. "/log"
        three_records(dir, { index_interval_bytes = 1 })
        local path = dir .. "/" .. SEG0
        util.truncate(path, 2 * REC + 25)
        local files = {}
        for _, n in ipairs(util.ls(dir)) do
            -- .lock holds a pid; .state is the log's shared state, which
            -- every handle maps and the first one (re)builds: neither is
            -- log data.
            if n ~= ".lock" and n ~= ".state" then files[n] = util.read_file(dir .. "/" .. n) end
        end
        local log = open({ dir = dir, readonly = true })
        assert.are.equal(2, log:high_water_mark())
        assert.are.equal(value(1), log:read(1).value)
        assert.fails_with("OUT_OF_RANGE", log:read(2))
        assert.are.equal(2, log:offset_for_time(2500))
        log:close()
        assert.are.equal(2 * REC + 25, util.file_size(path))
        for n, data in pairs(files) do
            assert.are.equal(data, util.read_file(dir .. "/" .. n), n .. " was modified")
        end
    end)

    it("opens read-only over garbage after the tail without modifying the file", function()
        local dir = tmp .. "/log"
        three_records(dir, {})
        local path = dir .. "/" .. SEG0
        util.append_file(path, ("\0"):rep(77))
        local log = open({ dir = dir, readonly = true })
        assert.are.equal(3, log:high_water_mark())
        assert.are.equal(value(2), log:read(2).value)
        log:close()
        assert.are.equal(3 * REC + 77, util.file_size(path))
    end)
end)
