--- takhin.cli.snapshot: the snapshot commands of `takhin` -- create, list,
-- show, restore, delete, cleanup, verify (`takhin snapshot NAME ...`).
-- Each is a command definition (takhin.cli.args says what one holds);
-- takhin.cli registers them.
local args = require("takhin.cli.args")
local common = require("takhin.cli.common")
local output = require("takhin.cli.output")

local M = {}

local check, fail = common.check, common.fail
local array, ordered, NULL = output.array, output.ordered, output.NULL
local plural, range, utc = output.plural, output.range, output.utc

-------------------------------------------------------------------------
-- Shared by the snapshot commands
-------------------------------------------------------------------------

local SNAPSHOT_DIR = { "--snapshot-dir", "PATH", "string",
    "where the snapshots live (default: DIR/.snapshots)" }

local PROGRESS_OPTS = {
    { "--progress", nil, nil, "show a progress bar (default: when stderr is a terminal)" },
    { "--no-progress", nil, nil, "never show a progress bar" },
}

-- The options of list, then the given ones, then --snapshot-dir.
local function with(list, ...)
    local t = {}
    for _, v in ipairs(list) do t[#t + 1] = v end
    for _, v in ipairs({ ... }) do t[#t + 1] = v end
    t[#t + 1] = SNAPSHOT_DIR
    return t
end

local SNAPSHOT_ORDER = { "id", "timestamp", "label", "base_offset", "high_water_mark",
    "num_segments", "segment_offsets", "total_size", "mode", "path" }

-- A snapshot as the JSON commands print it.
local function snapshot_json(s)
    local offsets = array()
    for i, v in ipairs(s.segment_offsets or {}) do offsets[i] = v end
    return ordered({
        id = s.id, timestamp = s.timestamp, base_offset = s.base_offset,
        high_water_mark = s.high_water_mark, num_segments = s.num_segments,
        segment_offsets = offsets, total_size = s.total_size, mode = s.mode,
        label = s.label or NULL, path = s.path,
    }, SNAPSHOT_ORDER)
end

local function print_snapshot(c, s)
    local offs = {}
    for i, v in ipairs(s.segment_offsets or {}) do offs[i] = ("%d"):format(v) end
    output.print_fields(c, {
        { "id", s.id },
        { "created", (utc(s.timestamp) or "?") .. (" UTC (%d)"):format(s.timestamp) },
        { "label", s.label and output.escape(s.label) },
        { "offsets", range(s.base_offset, s.high_water_mark) ..
            "  " .. plural(s.high_water_mark - s.base_offset, "record") },
        { "segments", ("%d (base offsets %s)"):format(s.num_segments, table.concat(offs, ", ")) },
        { "size", ("%s (%d bytes)"):format(output.human_size(s.total_size), s.total_size) },
        { "mode", s.mode },
        { "path", s.path },
    })
end

-------------------------------------------------------------------------
-- create, list, show
-------------------------------------------------------------------------

M.create = {
    name = "snapshot create", args = { "DIR" },
    summary = "take a point-in-time snapshot",
    options = with(PROGRESS_OPTS,
        { "--label", "L", "string", "a label kept with the snapshot" },
        { "--min-interval", "D", "duration", "fail with TOO_SOON if the newest snapshot is younger than D" },
        { "--copy", nil, nil, "copy every file (default: hard-link sealed segments)" }),
    help = "Snapshot the log in DIR: the records [base offset, high water mark) at\n" ..
        "this moment, even while a writer goes on appending.  The log is opened\n" ..
        "read-only, so this works next to a running writer.",
    run = function(c, o, a)
        local log = common.open_existing_log(c, a.DIR)
        local sm = common.open_manager(c, a.DIR, o)
        local progress, finish = output.progress_for(c, o, "snapshot")
        local s = check(sm:create(log, { label = o.label, min_interval = o.min_interval,
            progress = progress }))
        if finish then finish() end
        if c.json then return output.emit_json(c, snapshot_json(s)) end
        c.out:write(("created snapshot %s of %s\n"):format(s.id, a.DIR))
        print_snapshot(c, s)
    end,
}

M.list = {
    name = "snapshot list", args = { "DIR" },
    summary = "list snapshots, newest first",
    options = { SNAPSHOT_DIR },
    help = "List the snapshots of the log in DIR, newest first.",
    run = function(c, o, a)
        local sm = common.open_manager(c, a.DIR, o)
        local list = check(sm:list())
        if c.json then
            local out = array()
            for i, s in ipairs(list) do out[i] = snapshot_json(s) end
            return output.emit_json(c, out)
        end
        if #list == 0 then
            c.out:write(("no snapshots in %s\n"):format(sm:dir()))
            return
        end
        local rows = {}
        for i, s in ipairs(list) do
            rows[i] = { s.id, utc(s.timestamp) or "?", range(s.base_offset, s.high_water_mark),
                ("%d"):format(s.num_segments), output.human_size(s.total_size), s.mode or "",
                s.label and output.escape(s.label) or "" }
        end
        output.print_table(c, { "ID", "CREATED (UTC)", "OFFSETS", "SEGMENTS", "SIZE", "MODE", "LABEL" },
            rows, { [4] = true, [5] = true })
    end,
}

M.show = {
    name = "snapshot show", args = { "DIR", "ID" },
    summary = "one snapshot's details",
    options = { SNAPSHOT_DIR },
    help = "Show snapshot ID of the log in DIR.",
    run = function(c, o, a)
        local sm = common.open_manager(c, a.DIR, o)
        local s = check(sm:get(a.ID))
        if c.json then return output.emit_json(c, snapshot_json(s)) end
        print_snapshot(c, s)
    end,
}

-------------------------------------------------------------------------
-- restore, delete
-------------------------------------------------------------------------

M.restore = {
    name = "snapshot restore", args = { "DIR", "ID", "TARGET" },
    summary = "restore a snapshot into TARGET",
    options = with(PROGRESS_OPTS,
        { "--replace", nil, nil, "restore over the log in TARGET in place (no writer may hold it)" },
        { "--upto-offset", "N", "count", "keep only the records before offset N" },
        { "--upto-timestamp", "MS", "int", "keep records up to the first one newer than MS" }),
    help = "Restore snapshot ID of the log in DIR into TARGET, which must be missing\n" ..
        "or empty unless --replace is given.  Every file is checked against the\n" ..
        "snapshot's checksums first; a crash leaves either the old TARGET or the\n" ..
        "restored one, never a mix.",
    run = function(c, o, a)
        local sm = common.open_manager(c, a.DIR, o)
        local progress, finish = output.progress_for(c, o, "restore")
        check(sm:restore(a.ID, a.TARGET, { replace = o.replace or nil, upto_offset = o.upto_offset,
            upto_timestamp = o.upto_timestamp, progress = progress }))
        if finish then finish() end
        local r = ordered({ id = a.ID, target = a.TARGET },
            { "id", "target", "base_offset", "high_water_mark" })
        local log = common.lib().open_log{ dir = a.TARGET, readonly = true }
        if log then
            r.base_offset, r.high_water_mark = log:base_offset(), log:high_water_mark()
            log:close()
        end
        if c.json then return output.emit_json(c, r) end
        c.out:write(("restored snapshot %s to %s%s\n"):format(a.ID, a.TARGET,
            r.high_water_mark and (": offsets " .. range(r.base_offset, r.high_water_mark)) or ""))
    end,
}

M.delete = {
    name = "snapshot delete", args = { "DIR", "ID" },
    summary = "delete a snapshot",
    options = { SNAPSHOT_DIR },
    help = "Delete snapshot ID of the log in DIR.",
    run = function(c, o, a)
        local sm = common.open_manager(c, a.DIR, o)
        check(sm:delete(a.ID))
        if c.json then return output.emit_json(c, { id = a.ID, deleted = true }) end
        c.out:write(("deleted snapshot %s\n"):format(a.ID))
    end,
}

-------------------------------------------------------------------------
-- cleanup
-------------------------------------------------------------------------

-- The keep rules, as options; o[key] is the rule's field of takhin.policy.
-- Values the policy refuses are refused here, as usage errors.
local CLEANUP_RULES = {
    { "--max-snapshots", "N", "positive", "keep the N newest snapshots (N >= 1) ..." },
    { "--retention-time", "D", "duration", "... that are at most D older than the newest" },
    { "--keep-last", "N", "count", "keep the N newest snapshots" },
    { "--keep-hourly", "N", "count", "keep the newest snapshot of each of the N most recent\n" ..
        "hours with a snapshot (hours without one do not count)" },
    { "--keep-daily", "N", "count", "... of each of the N most recent days with a snapshot" },
    { "--keep-weekly", "N", "count", "... of each of the N most recent weeks with a snapshot" },
    { "--keep-monthly", "N", "count", "... of each of the N most recent months with a snapshot" },
    { "--keep-yearly", "N", "count", "... of each of the N most recent years with a snapshot" },
    { "--keep-within", "D", "duration", "keep every snapshot at most D older than the newest" },
}

local function cleanup_options()
    local t = {}
    for _, r in ipairs(CLEANUP_RULES) do t[#t + 1] = r end
    t[#t + 1] = { "--dry-run", nil, nil, "show what would be deleted, delete nothing" }
    t[#t + 1] = SNAPSHOT_DIR
    return t
end

-- The rules table for sm:cleanup; nil for the library's defaults.
local function cleanup_rules(o)
    local rules, any = {}, false
    for _, r in ipairs(CLEANUP_RULES) do
        local key = args.option_key(r[1])
        if o[key] ~= nil then rules[key], any = o[key], true end
    end
    if not any then
        if not o.dry_run then return nil end
        local d = common.lib().default_snapshot_config()
        rules.max_snapshots, rules.retention_time = d.max_snapshots, d.retention_time
    end
    if o.dry_run then rules.dry_run = true end
    return rules
end

-- sm:cleanup(rules) -> number, plan.  A library without keep rules
-- (before takhin.policy) returns only the number and raises on the rules it
-- does not know: that raise becomes UNSUPPORTED, and nothing was deleted.
local function run_cleanup(sm, rules)
    local ok, n, plan, code = pcall(sm.cleanup, sm, rules)
    if not ok then
        local msg = tostring(n)
        local opt = msg:match("unknown option '([%w_]+)'")
        if opt then
            fail(("cleanup: this takhin does not support --%s yet (%s)"):format(opt:gsub("_", "-"), msg),
                "UNSUPPORTED")
        end
        fail(msg, "INVALID")
    end
    if n == nil then fail(plan, code) end
    return n, type(plan) == "table" and plan or nil
end

-- A reason from a keep-rule plan, as text.
local function reason_text(r)
    if type(r) ~= "table" then return tostring(r) end
    if r.rule then return tostring(r.rule) .. (r.bucket and (" " .. tostring(r.bucket)) or "") end
    local parts = {}
    for k, v in pairs(r) do parts[#parts + 1] = tostring(k) .. "=" .. tostring(v) end
    table.sort(parts)
    return table.concat(parts, " ")
end

local PLAN_ORDER = { "id", "timestamp", "reasons" }

-- The plan as two lists, keep (with reasons) and delete.  Without a plan
-- (a one-value cleanup) they come from comparing the lists before and after.
local function plan_lists(sm, plan, before)
    local keep, delete = array(), array()
    if plan then
        for _, k in ipairs(plan.keep or {}) do
            local s, reasons = k.snapshot or k, array()
            for i, r in ipairs(k.reasons or {}) do reasons[i] = reason_text(r) end
            keep[#keep + 1] = ordered({ id = s.id, timestamp = s.timestamp, reasons = reasons },
                PLAN_ORDER)
        end
        for _, s in ipairs(plan.delete or {}) do
            delete[#delete + 1] = ordered({ id = s.id, timestamp = s.timestamp }, PLAN_ORDER)
        end
        return keep, delete
    end
    local still = {}
    for _, s in ipairs(check(sm:list())) do still[s.id] = true end
    for _, s in ipairs(before) do
        local e = ordered({ id = s.id, timestamp = s.timestamp }, PLAN_ORDER)
        if still[s.id] then e.reasons = array(); keep[#keep + 1] = e
        else delete[#delete + 1] = e end
    end
    return keep, delete
end

local function print_plan(c, keep, delete, dry, n)
    local rows = {}
    for _, k in ipairs(keep) do
        rows[#rows + 1] = { "keep", k.id, utc(k.timestamp) or "?", table.concat(k.reasons, ", ") }
    end
    for _, d in ipairs(delete) do
        rows[#rows + 1] = { dry and "would delete" or "delete", d.id, utc(d.timestamp) or "?", "" }
    end
    if #rows > 0 then
        output.print_table(c, { "ACTION", "ID", "CREATED (UTC)", "REASONS" }, rows)
    end
    if dry then
        c.out:write(("dry run: would delete %s, keep %d\n"):format(plural(#delete, "snapshot"), #keep))
    else
        c.out:write(("deleted %s, kept %d\n"):format(plural(n, "snapshot"), #keep))
    end
end

M.cleanup = {
    name = "snapshot cleanup", args = { "DIR" },
    summary = "delete snapshots that no keep rule keeps",
    options = cleanup_options(),
    help = "Delete old snapshots of the log in DIR.  A snapshot is kept when any\n" ..
        "rule keeps it, as with restic's `forget --keep-*`; --max-snapshots and\n" ..
        "--retention-time together are one rule (the seed's).  Only the rules\n" ..
        "given apply; with none, the defaults do (--max-snapshots 5\n" ..
        "--retention-time 24h).  Ages are measured from the newest snapshot,\n" ..
        "which is never deleted.  Buckets are UTC hours, days, ISO weeks, months\n" ..
        "and years, and only those that hold a snapshot count: --keep-daily 7\n" ..
        "keeps the newest snapshot of each of the 7 most recent days on which\n" ..
        "one was taken, however long ago.  A count of 0 turns its rule off.\n" ..
        "Durations: 90s, 30m, 6h, 7d, 2w, 1h30m.",
    run = function(c, o, a)
        local sm = common.open_manager(c, a.DIR, o)
        local before = check(sm:list())
        local n, plan = run_cleanup(sm, cleanup_rules(o))
        local keep, delete = plan_lists(sm, plan, before)
        local dry = o.dry_run and true or false
        if c.json then
            return output.emit_json(c, ordered({ dir = a.DIR, dry_run = dry, deleted = dry and 0 or n,
                keep = keep, delete = delete }, { "dir", "dry_run", "deleted", "keep", "delete" }))
        end
        print_plan(c, keep, delete, dry, n)
    end,
}

-------------------------------------------------------------------------
-- verify
-------------------------------------------------------------------------

M.verify = {
    name = "snapshot verify", args = { "DIR", "ID" },
    summary = "recompute a snapshot's checksums",
    options = with(PROGRESS_OPTS),
    help = "Re-read every file of snapshot ID of the log in DIR and compare its size\n" ..
        "and CRC32C with the manifest.  Exit status 1 names the first file that\n" ..
        "differs.",
    run = function(c, o, a)
        local sm = common.open_manager(c, a.DIR, o)
        local s = check(sm:get(a.ID))
        local progress, finish = output.progress_for(c, o, "verify")
        local ok, msg, code = sm:verify(a.ID, { progress = progress })
        if finish then finish() end
        if c.json then
            output.emit_json(c, ordered({ id = a.ID, ok = ok and true or false, code = code, error = msg,
                num_segments = s.num_segments, total_size = s.total_size },
                { "id", "ok", "code", "error", "num_segments", "total_size" }))
        elseif ok then
            c.out:write(("snapshot %s: OK (%s, %s checked)\n"):format(a.ID,
                plural(s.num_segments, "segment"), output.human_size(s.total_size)))
        end
        check(ok, msg, code)
    end,
}

return M
