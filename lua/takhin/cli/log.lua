--- takhin.cli.log: the log commands of `takhin` -- info, dump (also
-- dump --follow), append, verify.  Each is a command definition (takhin.cli.args says what one
-- holds); takhin.cli registers them.
local args = require("takhin.cli.args")
local common = require("takhin.cli.common")
local output = require("takhin.cli.output")

local M = {}

local check, fail = common.check, common.fail
local array, ordered, NULL = output.array, output.ordered, output.NULL
local plural, range = output.plural, output.range

-------------------------------------------------------------------------
-- info
-------------------------------------------------------------------------

local INFO_ORDER = { "dir", "base_offset", "high_water_mark", "records", "num_segments", "size",
    "first_timestamp", "last_timestamp", "segments" }
local SEGMENT_ORDER = { "base_offset", "next_offset", "records", "size", "active" }

local function log_info(dir, log)
    local base, hwm = log:base_offset(), log:high_water_mark()
    local first = hwm > base and log:read(base) or nil
    local last = hwm > base and log:read(hwm - 1) or nil
    local segs = log:segments()
    local info = ordered({
        dir = dir, base_offset = base, high_water_mark = hwm, records = hwm - base,
        num_segments = #segs, size = log:size(), segments = array(),
        first_timestamp = first and first.timestamp or NULL,
        last_timestamp = last and last.timestamp or NULL,
    }, INFO_ORDER)
    for i, s in ipairs(segs) do
        info.segments[i] = ordered({ base_offset = s.base_offset, next_offset = s.next_offset,
            records = s.next_offset - s.base_offset, size = s.size, active = s.active }, SEGMENT_ORDER)
    end
    return info
end

local function print_info(c, info)
    local function ts(ms)
        return ms ~= NULL and ("%s (%d)"):format(output.iso(ms) or "?", ms) or nil
    end
    output.print_fields(c, {
        { "log", info.dir },
        { "segments", info.num_segments },
        { "base offset", ("%d"):format(info.base_offset) },
        { "high water mark", ("%d"):format(info.high_water_mark) },
        { "records", ("%d"):format(info.records) },
        { "size", ("%s (%d bytes)"):format(output.human_size(info.size), info.size) },
        { "first timestamp", ts(info.first_timestamp) },
        { "last timestamp", ts(info.last_timestamp) },
    })
    c.out:write("\n")
    local rows = {}
    for i, s in ipairs(info.segments) do
        rows[i] = { ("%d"):format(s.base_offset), ("%d"):format(s.next_offset),
            ("%d"):format(s.records), ("%d"):format(s.size), s.active and "active" or "" }
    end
    output.print_table(c, { "BASE OFFSET", "NEXT OFFSET", "RECORDS", "BYTES", "" }, rows,
        { true, true, true, true })
end

M.info = {
    name = "info", args = { "DIR" },
    summary = "segments, base offset, high water mark, size",
    help = "Describe the log in DIR: its segments, base offset, high water mark,\n" ..
        "record count, size and the timestamps of its first and last records.\n" ..
        "The log is opened read-only: a running writer is not disturbed.  A DIR\n" ..
        "that is missing or holds no segment files is NOT_FOUND.",
    run = function(c, _, a)
        local info = log_info(a.DIR, common.open_existing_log(c, a.DIR))
        if c.json then return output.emit_json(c, info) end
        print_info(c, info)
    end,
}

-------------------------------------------------------------------------
-- dump: where to start, records as text and JSON
-------------------------------------------------------------------------

local DUMP_ORDER = { "offset", "timestamp", "key", "value", "key_encoding", "value_encoding" }

local function record_json(r)
    local j = ordered({ offset = r.offset, timestamp = r.timestamp }, DUMP_ORDER)
    for _, f in ipairs({ "key", "value" }) do
        local v = r[f]
        if v == nil then j[f] = NULL
        elseif output.valid_utf8(v) then j[f] = v
        else j[f], j[f .. "_encoding"] = output.base64(v), "base64" end
    end
    return j
end

local function record_text(r)
    return ("offset: %d timestamp: %d keySize: %d valueSize: %d key: %s value: %s\n"):format(
        r.offset, r.timestamp, r.key and #r.key or -1, #r.value,
        r.key and output.escape(r.key) or "null", output.escape(r.value))
end

-- Where dump starts: --from, the offset cursor --cursor committed, or the
-- base offset; the offset and how the messages call it.
local function dump_origin(log, dir, o)
    if o.from then return o.from, ("--from %d"):format(o.from) end
    if not o.cursor then return nil end
    local off, msg, code = log:committed(o.cursor)
    if off == nil and msg then fail(common.naming(dir, msg), code) end
    if off == nil then fail(("%s: cursor %s was never committed"):format(dir, o.cursor), "NOT_FOUND") end
    return off, ("cursor %s at %d"):format(o.cursor, off)
end

-- The first offset to print, which may be the high water mark (nothing to
-- print) but not past it, nor below the base offset.
local function dump_start(log, dir, o, base, hwm)
    local from, what = dump_origin(log, dir, o)
    if from == nil then return base end
    if from > hwm then
        fail(("%s: %s is past the high water mark %d (the log holds offsets %s)"):format(
            dir, what, hwm, range(base, hwm)), "OUT_OF_RANGE")
    elseif from < base then
        fail(("%s: %s is below the base offset %d (the log holds offsets %s)"):format(
            dir, what, base, range(base, hwm)), "OUT_OF_RANGE")
    end
    return from
end

-- Print records [from, to) of the log; returns how many could not be read
-- (each reported on stderr).  With --json: one array.
local function dump_range(c, log, from, to)
    local bad, n = 0, 0
    if c.json then c.out:write("[") end
    for off = from, to - 1 do
        local r, msg, code = log:read(off)
        if not r then
            bad = bad + 1
            c.err:write(("takhin dump: %s (%s)\n"):format(msg, code))
        elseif c.json then
            c.out:write(n > 0 and ",\n  " or "\n  ", output.json(record_json(r), true))
            n = n + 1
        else
            c.out:write(record_text(r))
        end
    end
    if c.json then c.out:write(n > 0 and "\n]\n" or "]\n") end
    return bad
end

-------------------------------------------------------------------------
-- dump --follow
-------------------------------------------------------------------------

-- How long one wait sleeps at most before it looks again.  An append wakes
-- it at once; the limit is for Ctrl-C, whose hook runs only when Lua code
-- does (the wait itself goes on sleeping through the signal).
local FOLLOW_WAIT = "250ms"

local function note(c, fmt, ...)
    c.err:write("takhin dump: ", fmt:format(...), "\n")
end

local function flush(c)
    local ok, err = c.out:flush()
    if ok == nil and err ~= nil then fail("write to stdout: " .. tostring(err), "IO") end
end

-- Print the records [f.next, stop) there are now, one line each (JSON
-- Lines with --json), and flush them.  A record that retention deleted
-- before it could be read ends the batch; the next step says so.
local function follow_batch(c, log, f, stop)
    while f.next < stop do
        local r, msg, code = log:read(f.next)
        if not r and code == "OUT_OF_RANGE" and f.next < log:base_offset() then break end
        if not r then
            f.bad = f.bad + 1
            c.err:write(("takhin dump: %s (%s)\n"):format(msg, code))
        elseif c.json then
            c.out:write(output.json(record_json(r), true), "\n")
        else
            c.out:write(record_text(r))
        end
        f.next = f.next + 1
        if f.left then f.left = f.left - 1 end
    end
    flush(c)
end

-- One step of following: print what arrived, or sleep until something
-- does.  The base offset is read before the high water mark, so that it
-- is never the larger (the high water mark only grows, but for a truncate
-- or an in-place restore).
local function follow_step(c, log, f)
    local base = log:base_offset()
    local hwm = log:high_water_mark()
    if f.next < base then
        note(c, "%s: offsets %s were deleted before they could be printed (the base offset is now %d)",
            f.dir, range(f.next, base), base)
        f.next = base
    end
    if hwm < f.next then
        note(c, "%s: the log was cut back to offset %d; following from there", f.dir, hwm)
        f.next = hwm
    elseif hwm == f.next then
        log:wait(f.next, FOLLOW_WAIT)
    else
        follow_batch(c, log, f, f.left and math.min(hwm, f.next + f.left) or hwm)
    end
end

-- dump --follow from offset `from`: until `count` records were printed
-- (nil: for ever) or Ctrl-C.  Returns how many could not be read.
local function follow(c, log, dir, from, count)
    local f = { dir = dir, next = from, left = count, bad = 0 }
    common.until_interrupted(function()
        while f.left == nil or f.left > 0 do follow_step(c, log, f) end
    end)
    return f.bad
end

-------------------------------------------------------------------------
-- dump
-------------------------------------------------------------------------

M.dump = {
    name = "dump", args = { "DIR" },
    summary = "print records: offset, timestamp, key, value",
    options = {
        { "--from", "N", "count", "first offset to print (default: the base offset)" },
        { "--cursor", "NAME", "string", "start at the offset cursor NAME committed\n(not with --from; dump never moves a cursor)" },
        { "--count", "N", "count", "print at most N records (default: all)" },
        { "--follow", nil, nil, "go on printing records as they are appended,\nuntil interrupted (Ctrl-C) or --count is reached" },
    },
    help = "Print the records of the log in DIR, one line each, as Kafka's dump-log\n" ..
        "tool does:\n\n" ..
        "  offset: 7 timestamp: 1700000000000 keySize: 3 valueSize: 5 key: k-7 value: hello\n\n" ..
        "keySize is -1 when the record has no key (key: null).  Control bytes,\n" ..
        "DEL and backslashes are escaped (\\n, \\t, \\x00, \\\\), and so is every byte\n" ..
        ">= 0x80 when the text is not valid UTF-8.  With --json: an array of\n" ..
        "{offset, timestamp, key, value}; a key or value that is not valid UTF-8\n" ..
        "is base64 with key_encoding/value_encoding = \"base64\".  A damaged record\n" ..
        "is reported on stderr, the others are printed, and the exit status is 1.\n\n" ..
        "With --follow, dump does not stop at the high water mark: it sleeps until\n" ..
        "records are appended (by any process, nginx workers included) and prints\n" ..
        "each as it arrives, until it is interrupted (Ctrl-C: exit status 0) or\n" ..
        "has printed --count records.  With --json it then prints one JSON object\n" ..
        "per line (JSON Lines), not an array.  Records that retention deletes\n" ..
        "before they are printed are skipped, with a note on stderr.  The log is\n" ..
        "opened read-only: dump never disturbs a writer.",
    run = function(c, o, a)
        args.exclusive(o, "--from", "--cursor")
        local log = common.open_existing_log(c, a.DIR)
        local base = log:base_offset()
        local hwm = log:high_water_mark()
        local from = dump_start(log, a.DIR, o, base, hwm)
        local bad
        if o.follow then
            bad = follow(c, log, a.DIR, from, o.count)
        else
            bad = dump_range(c, log, from, o.count and math.min(hwm, from + o.count) or hwm)
        end
        if bad > 0 then
            fail(("%s: %s could not be read"):format(a.DIR, plural(bad, "record")), "CORRUPT")
        end
    end,
}

-------------------------------------------------------------------------
-- append
-------------------------------------------------------------------------

-- Lines of stdin go to the log in batches of this many records: each
-- batch is one append_batch, all or nothing.
local STDIN_BATCH = 1000

-- Where an append stands: what is committed so far.  Batches are appended
-- in order, so the committed records are always offsets [first, last + 1).
local function tally(dir)
    return { dir = dir, count = 0 }
end

local function commit(log, t, recs)
    if #recs == 0 then return true end
    local first, last, code = log:append_batch(recs)
    if first == nil then return nil, last, code end
    t.first = t.first or first
    t.last, t.count = last, t.count + #recs
    return true
end

-- The values, or the lines of stdin, appended as records; the tally and,
-- on failure, the error message and code.
local function append_all(c, log, o, values, t)
    local function rec(v) return { key = o.key, value = v, timestamp = o.timestamp } end
    local recs = {}
    if #values > 0 then
        for i, v in ipairs(values) do recs[i] = rec(v) end
        return commit(log, t, recs)
    end
    while true do
        local line, err = c.stdin:read("l")
        if line == nil then
            if err then return nil, "read stdin: " .. tostring(err), "IO" end
            return commit(log, t, recs)
        end
        recs[#recs + 1] = rec(line)
        if #recs == STDIN_BATCH then
            local ok, msg, code = commit(log, t, recs)
            if not ok then return nil, msg, code end
            recs = {}
        end
    end
end

local APPEND_ORDER = { "dir", "ok", "count", "first", "last", "code", "error" }

-- ok: true, or false with the error's message and code.
local function append_json(t, ok, msg, code)
    local j = ordered({ dir = t.dir, ok = ok, count = t.count, first = t.first or NULL,
        last = t.last or NULL }, APPEND_ORDER)
    if not ok then j.code, j.error = code, msg end
    return j
end

-- What a failed append leaves in the log, for stderr: a retry must not
-- append it again.
local function committed_note(t, from_stdin)
    if t.count == 0 then return ("nothing was appended to %s"):format(t.dir) end
    return ("%s appended to %s before the failure, at offsets %s%s"):format(
        t.count == 1 and "1 record was" or ("%d records were"):format(t.count), t.dir,
        range(t.first, t.last + 1),
        from_stdin and (": the first %s of stdin"):format(plural(t.count, "line")) or "")
end

local function print_appended(c, t)
    if t.count == 0 then
        c.out:write(("appended nothing to %s\n"):format(t.dir))
    elseif t.count == 1 then
        c.out:write(("appended 1 record to %s at offset %d\n"):format(t.dir, t.first))
    else
        c.out:write(("appended %d records to %s at offsets %s\n"):format(t.count, t.dir,
            range(t.first, t.last + 1)))
    end
end

M.append = {
    name = "append", args = { "DIR" }, rest = "VALUE...",
    summary = "append values (arguments, else lines of stdin)",
    options = {
        { "--key", "K", "string", "the key of every record (default: no key)" },
        { "--timestamp", "MS", "int", "timestamp in ms since the epoch (default: now)" },
        { "--sync", nil, nil, "fsync before returning (survives power loss)" },
        { "--create", nil, nil, "start a new log if DIR holds none" },
        { "--shared", nil, nil, "append in shared mode, next to other writers (nginx workers)" },
    },
    help = "Append one record per VALUE to the log in DIR.  Without VALUEs, every\n" ..
        "line of stdin (without its newline) is a record; lines are appended in\n" ..
        ("batches of %d, each all or nothing.  Use -- before values that start\n"):format(STDIN_BATCH) ..
        "with a dash.  Prints the offsets given.  A DIR that is missing or holds\n" ..
        "no log is NOT_FOUND unless --create is given.  On failure the records\n" ..
        "appended before it are reported (stderr, and --json): a retry should\n" ..
        "skip them.",
    run = function(c, o, a, values)
        if not o.create then common.require_log(a.DIR, "--create starts a new log there") end
        local log = common.open_writer(c, a.DIR, { shared = o.shared or nil })
        local t = tally(a.DIR)
        local ok, msg, code = append_all(c, log, o, values, t)
        if ok and o.sync then ok, msg, code = log:sync() end
        ok = ok and true or false
        if c.json then output.emit_json(c, append_json(t, ok, msg, code)) end
        if not ok then fail(msg, code, { committed_note(t, #values == 0) }) end
        if not c.json then print_appended(c, t) end
    end,
}

-------------------------------------------------------------------------
-- verify
-------------------------------------------------------------------------

local VERIFY_ORDER = { "dir", "ok", "records", "num_segments", "base_offset", "high_water_mark", "errors" }

local function verify_failure(dir, errors, total)
    local offs = {}
    for i = 1, math.min(#errors, 10) do offs[i] = ("%d"):format(errors[i].offset) end
    fail(("%s: %d of %s failed the check (offset%s %s%s)"):format(dir,
        #errors, plural(total, "record"), #errors == 1 and "" or "s",
        table.concat(offs, ", "), #errors > 10 and ", ..." or ""), errors[1].code)
end

M.verify = {
    name = "verify", args = { "DIR" },
    summary = "check every record's CRC; exit 1 if any is corrupt",
    options = {
        { "--progress", nil, nil, "show a progress bar (default: when stderr is a terminal)" },
        { "--no-progress", nil, nil, "never show a progress bar" },
    },
    help = "Read every record of the log in DIR and check its CRC32C.  The log is\n" ..
        "opened read-only, so nothing is modified (not even a torn tail).  Every\n" ..
        "damaged offset is listed, not just the first; the exit status is 1 if\n" ..
        "any record could not be read.",
    run = function(c, o, a)
        local log = common.open_existing_log(c, a.DIR)
        local base, hwm = log:base_offset(), log:high_water_mark()
        local total = hwm - base
        local progress, finish = output.progress_for(c, o, "verify", "records")
        local errors = array()
        for off = base, hwm - 1 do
            local r, msg, code = log:read(off)
            if not r then
                errors[#errors + 1] = ordered({ offset = off, code = code, message = msg },
                    { "offset", "code", "message" })
            end
            if progress then progress(off - base + 1, total) end
        end
        if finish then finish() end
        local segs = log:num_segments()
        if c.json then
            output.emit_json(c, ordered({ dir = a.DIR, ok = #errors == 0, records = total,
                num_segments = segs, base_offset = base, high_water_mark = hwm, errors = errors },
                VERIFY_ORDER))
        else
            for _, e in ipairs(errors) do
                c.out:write(("offset %d: %s (%s)\n"):format(e.offset, e.message, e.code))
            end
            c.out:write(("%s: %s in %s checked, %s\n"):format(a.DIR, plural(total, "record"),
                plural(segs, "segment"), #errors == 0 and "all OK" or (#errors .. " bad")))
        end
        if #errors > 0 then verify_failure(a.DIR, errors, total) end
    end,
}


-------------------------------------------------------------------------
-- stats
-------------------------------------------------------------------------

M.stats = {
    name = "stats", args = { "DIR" },
    summary = "counters and gauges of the log and its snapshots",
    options = {
        { "--prometheus", nil, nil, "print Prometheus' text format (for a textfile collector)" },
        { "--snapshot-dir", "PATH", "string", "where the snapshots live (default: DIR/.snapshots)" },
    },
    help = "Print the counters of the log in DIR -- appends, records, bytes, fsyncs\n" ..
        "and their latency, rolls, errors by code, ... -- and its gauges, with\n" ..
        "those of its snapshot directory.  The counters are kept in the log's\n" ..
        "shared state: they add up every process that has the log open (nginx\n" ..
        "workers included) and start again from zero when the last one closes\n" ..
        "it.  The log is opened read-only.",
    run = function(c, o, a)
        local lib = common.lib()
        local log = common.open_existing_log(c, a.DIR)
        local sm = common.open_manager(c, a.DIR, o)
        if o.prometheus then
            local ok, text = pcall(lib.metrics.prometheus, { logs = { [a.DIR] = log },
                                                             managers = { [a.DIR] = sm } })
            if not ok then common.fail(tostring(text), "IO") end
            c.out:write(text)
            return
        end
        local st = common.check(log:stats())
        local ss = common.check(sm:stats())
        if c.json then
            local errors = {}
            for code, n in pairs(st.errors) do errors[code] = n end
            local buckets = output.array()
            for i, b in ipairs(st.fsync_seconds.buckets) do
                buckets[i] = output.ordered({ le = b.le == math.huge and "+Inf" or ("%g"):format(b.le), count = b.count },
                    { "le", "count" })
            end
            st.fsync_seconds.buckets = buckets
            st.errors = errors
            return output.emit_json(c, { log = st, snapshots = ss })
        end
        local h = st.fsync_seconds
        local fields = {
            { "log", a.DIR },
            { "offsets", output.range(st.base_offset, st.high_water_mark) ..
                ("  (durable below %d)"):format(st.synced_offset) },
            { "size", ("%s in %s"):format(output.human_size(st.size), output.plural(st.num_segments, "segment")) },
            { "shared writers", st.writers },
            { "appends", ("%d (%s, %s)"):format(st.appends, output.plural(st.records, "record"),
                output.human_size(st.bytes)) },
            { "reads", st.reads },
            { "fsyncs", ("%d, %.3f s in all"):format(st.fsyncs, h.sum) },
            { "rolls", st.rolls },
            { "truncates", st.truncates },
            { "segments deleted", st.segments_deleted },
            { "cursor commits", st.cursor_commits },
        }
        local errs = {}
        for code, n in pairs(st.errors) do
            if n > 0 then errs[#errs + 1] = ("%s %d"):format(code, n) end
        end
        table.sort(errs)
        fields[#fields + 1] = { "errors", #errs > 0 and table.concat(errs, ", ") or "none" }
        fields[#fields + 1] = { "snapshots", ("%d (%d damaged), %s"):format(ss.snapshots, ss.damaged,
            output.human_size(ss.bytes)) }
        if ss.newest_id then
            fields[#fields + 1] = { "newest snapshot", ("%s (%s UTC)"):format(ss.newest_id,
                output.utc(ss.newest_timestamp) or "?") }
        end
        output.print_fields(c, fields)
    end,
}

return M
