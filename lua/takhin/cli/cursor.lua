--- takhin.cli.cursor: the cursor commands of `takhin` -- list, commit,
-- delete (`takhin cursor NAME ...`).  Each is a command definition
-- (takhin.cli.args says what one holds); takhin.cli registers them.
--
-- A cursor is a consumer's committed offset: the next offset it reads.
-- `list` opens the log read-only.  `commit` and `delete` open it as a
-- shared writer, so they work next to nginx workers that hold it in shared
-- mode; next to an exclusive writer they fail with LOCKED, as they should.
local args = require("takhin.cli.args")
local common = require("takhin.cli.common")
local output = require("takhin.cli.output")

local M = {}

local check, fail, naming = common.check, common.fail, common.naming
local array, ordered, range = output.array, output.ordered, output.range

-- The log in dir as a shared writer; NOT_FOUND, before anything is
-- created, when dir holds no log.
local function open_shared(c, dir)
    common.require_log(dir)
    return common.open_writer(c, dir, { shared = true })
end

-------------------------------------------------------------------------
-- list
-------------------------------------------------------------------------

local CURSOR_ORDER = { "name", "offset", "lag" }

-- The cursors by name, each with its lag: the records from its offset to
-- the high water mark.  The high water mark is read after the cursors, so
-- a lag is never negative (but for a log cut back by truncate or restore).
local function cursor_list(log)
    local cursors = check(log:cursors())
    local hwm = log:high_water_mark()
    local list = array()
    for name, off in pairs(cursors) do
        list[#list + 1] = ordered({ name = name, offset = off, lag = math.max(0, hwm - off) }, CURSOR_ORDER)
    end
    table.sort(list, function(x, y) return x.name < y.name end)
    return list
end

M.list = {
    name = "cursor list", args = { "DIR" },
    summary = "list cursors: committed offsets and lag",
    help = "List the cursors of the log in DIR by name: each one's committed offset\n" ..
        "(the next offset its consumer reads) and its lag (the records from\n" ..
        "there to the high water mark).  With --json: an array of\n" ..
        "{name, offset, lag}.  The log is opened read-only.",
    run = function(c, _, a)
        local list = cursor_list(common.open_existing_log(c, a.DIR))
        if c.json then return output.emit_json(c, list) end
        if #list == 0 then
            c.out:write(("no cursors in %s\n"):format(a.DIR))
            return
        end
        local rows = {}
        for i, cur in ipairs(list) do
            rows[i] = { cur.name, ("%d"):format(cur.offset), ("%d"):format(cur.lag) }
        end
        output.print_table(c, { "CURSOR", "OFFSET", "LAG" }, rows, { [2] = true, [3] = true })
    end,
}

-------------------------------------------------------------------------
-- commit
-------------------------------------------------------------------------

-- The message for a commit that failed, in the command's words: the
-- library's, but for an offset out of range (in the CLI's [first, end)
-- ranges) and a backwards move (--force, not force = true).
local function commit_message(log, a, o, msg, code)
    local what = ("commit %s to %s: offset %d"):format(a.NAME, a.DIR, a.OFFSET)
    if code == "OUT_OF_RANGE" then
        local base = log:base_offset()
        local hwm = log:high_water_mark()
        local held = ("(the log holds offsets %s)"):format(range(base, hwm))
        if a.OFFSET > hwm then
            return ("%s is past the high water mark %d %s"):format(what, hwm, held)
        elseif a.OFFSET < base then
            return ("%s is below the base offset %d %s"):format(what, base, held)
        end
    elseif code == "INVALID" and not o.force then
        local cur = log:committed(a.NAME)
        if cur and a.OFFSET < cur then
            return ("%s is behind the committed offset %d (--force moves a cursor back)"):format(what, cur)
        end
    end
    return naming(a.DIR, msg)
end

local COMMIT_ORDER = { "dir", "name", "offset" }

M.commit = {
    name = "cursor commit", args = { "DIR", "NAME", "OFFSET" }, kinds = { OFFSET = "count" },
    summary = "set the next offset a consumer reads",
    options = {
        { "--expect", "OFFSET", "count", "commit only if the cursor is at OFFSET now\n(else CONFLICT, and nothing changes)" },
        { "--expect-none", nil, nil, "commit only if the cursor was never committed\n(else CONFLICT, and nothing changes)" },
        { "--force", nil, nil, "allow moving the cursor backwards" },
    },
    help = "Commit OFFSET as cursor NAME of the log in DIR: the next offset its\n" ..
        "consumer reads, from the base offset up to the high water mark (else\n" ..
        "OUT_OF_RANGE).  A cursor never moves backwards (INVALID) unless --force\n" ..
        "is given.  With --expect or --expect-none the commit is a compare-and-set\n" ..
        "(two consumers of one log cannot both advance it): CONFLICT when the\n" ..
        "cursor is elsewhere, and nothing changes.  The commit is atomic.\n" ..
        "Cursor names are 1-128 bytes of letters, digits, '.', '_' and '-'; any\n" ..
        "other name is INVALID.\n\n" ..
        "The log is opened as a shared writer: this works next to nginx workers\n" ..
        "that hold it in shared mode, and fails with LOCKED while an exclusive\n" ..
        "writer holds it.",
    run = function(c, o, a)
        args.exclusive(o, "--expect", "--expect-none")
        local log = open_shared(c, a.DIR)
        local opts = { force = o.force }
        if o.expect_none then opts.expect = false else opts.expect = o.expect end
        local ok, msg, code = log:commit(a.NAME, a.OFFSET, opts)
        if not ok then fail(commit_message(log, a, o, msg, code), code) end
        if c.json then
            return output.emit_json(c, ordered({ dir = a.DIR, name = a.NAME, offset = a.OFFSET }, COMMIT_ORDER))
        end
        c.out:write(("committed cursor %s of %s at offset %d\n"):format(a.NAME, a.DIR, a.OFFSET))
    end,
}

-------------------------------------------------------------------------
-- delete
-------------------------------------------------------------------------

local DELETE_ORDER = { "dir", "name", "deleted" }

M.delete = {
    name = "cursor delete", args = { "DIR", "NAME" },
    summary = "delete a cursor",
    help = "Delete cursor NAME of the log in DIR (NOT_FOUND when there is none):\n" ..
        "it no longer holds back retention's keep_uncommitted, and its consumer\n" ..
        "finds no committed offset.  The log is opened as a shared writer, as\n" ..
        "for cursor commit.",
    run = function(c, _, a)
        local log = open_shared(c, a.DIR)
        local ok, msg, code = log:delete_cursor(a.NAME)
        if not ok and code == "NOT_FOUND" then msg = ("%s: no cursor %s"):format(a.DIR, a.NAME) end
        if not ok then fail(naming(a.DIR, msg), code) end
        if c.json then
            return output.emit_json(c, ordered({ dir = a.DIR, name = a.NAME, deleted = true }, DELETE_ORDER))
        end
        c.out:write(("deleted cursor %s of %s\n"):format(a.NAME, a.DIR))
    end,
}

return M
