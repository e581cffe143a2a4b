--- takhin.cli.transfer: snapshots in and out of the machine -- `takhin
-- snapshot export` and `takhin snapshot import` (docs/API.md, "Export and
-- import").  Each is a command definition (takhin.cli.args says what one
-- holds); takhin.cli registers them in the snapshot group.
--
-- The archive goes to stdout and comes from stdin when no file is named
-- (or the name is "-"), so a snapshot pipes into ssh, age or restic.  The
-- report -- text, or JSON with --json -- goes to stdout, except when the
-- archive does: then it goes to stderr.
local args = require("takhin.cli.args")
local common = require("takhin.cli.common")
local output = require("takhin.cli.output")

local M = {}

local check, fail, usage_error = common.check, common.fail, common.usage_error
local ordered, human_size, range = output.ordered, output.human_size, output.range

local SNAPSHOT_DIR = { "--snapshot-dir", "PATH", "string",
    "where the snapshots live (default: DIR/.snapshots)" }
local PROGRESS_OPTS = {
    { "--progress", nil, nil, "show a progress bar (default: when stderr is a terminal)" },
    { "--no-progress", nil, nil, "never show a progress bar" },
}

-- "-o" has no long name of its own in takhin.cli.args: its key is what
-- option_key makes of it.
local OUTPUT_KEY = args.option_key("-o")

local function is_terminal(fd)
    local r = os.execute("test -t " .. fd)
    return r == true or r == 0
end

-- The file handle the command writes the archive to when it goes to
-- stdout: c.out itself when it is a real file, else (main() driven with a
-- stand-in) a temporary file that is copied into c.out afterwards.
local function stdout_target(c)
    if io.type(c.out) == "file" then return c.out, nil end
    local tmp = os.tmpname()
    c.defer[#c.defer + 1] = function() os.remove(tmp) end
    return assert(io.open(tmp, "w+b")), tmp
end

local function copy_back(c, f)
    f:seek("set", 0)
    while true do
        local chunk = f:read(65536)
        if not chunk then break end
        c.out:write(chunk)
    end
    f:close()
end

local EXPORT_ORDER = { "id", "since", "compress", "level", "output", "bytes" }

M.export = {
    name = "snapshot export", args = { "DIR", "ID" },
    summary = "write a snapshot as a tar archive",
    options = {
        { "-o", "FILE", "string", "write the archive to FILE (replaced atomically);\n" ..
            "'-' or none: stdout" },
        { "--since", "ID", "string", "incremental: only the files snapshot ID lacks\n" ..
            "(importing it needs ID there)" },
        { "--zstd", nil, nil, "compress the archive with zstd" },
        { "--level", "N", "positive", "zstd level, 1 to 19 (default 3)" },
        PROGRESS_OPTS[1], PROGRESS_OPTS[2], SNAPSHOT_DIR,
    },
    help = "Write snapshot ID of the log in DIR as a POSIX tar archive: manifest.json\n" ..
        "first, then the snapshot's files, every one checked against its CRC32C on\n" ..
        "the way.  `tar -xf` extracts it (`tar --zstd -xf` with --zstd); `takhin\n" ..
        "snapshot import` adds it to another snapshot directory.  With --since the\n" ..
        "archive holds only the files snapshot ID does not already share with the\n" ..
        "other one.  The report goes to stderr when the archive goes to stdout.",
    run = function(c, o, a)
        local dest = o[OUTPUT_KEY]
        if dest == nil then dest = "-" end
        if o.level and not o.zstd then usage_error("--level needs --zstd") end
        if o.level and o.level > 19 then usage_error("--level: zstd levels go from 1 to 19") end
        local sm = common.open_manager(c, a.DIR, o)
        local report = c.out
        local target, tmp = dest, nil
        if dest == "-" then
            if c.out == io.stdout and is_terminal(1) then
                fail("export: refusing to write an archive to a terminal; use -o FILE or a pipe",
                    "INVALID")
            end
            target, tmp = stdout_target(c)
            report = c.err
        end
        local progress, finish = output.progress_for(c, o, "export")
        local _, bytes = check(sm:export(a.ID, target, { since = o.since,
            compress = o.zstd and "zstd" or nil, level = o.level, progress = progress }))
        if finish then finish() end
        if tmp then copy_back(c, target) end
        local r = ordered({ id = a.ID, since = o.since, compress = o.zstd and "zstd" or "none",
            level = o.zstd and (o.level or 3) or nil, output = dest, bytes = bytes }, EXPORT_ORDER)
        if c.json then return report:write(output.json(r), "\n") end
        report:write(("exported snapshot %s%s to %s: %s (%d bytes%s)\n"):format(a.ID,
            o.since and (" since " .. o.since) or "", dest == "-" and "stdout" or dest,
            human_size(bytes), bytes, o.zstd and ", zstd" or ""))
    end,
}

local SNAPSHOT_ORDER = { "id", "timestamp", "label", "base_offset", "high_water_mark",
    "num_segments", "segment_offsets", "total_size", "mode", "path" }

local function snapshot_json(s)
    local offsets = output.array()
    for i, v in ipairs(s.segment_offsets or {}) do offsets[i] = v end
    return ordered({
        id = s.id, timestamp = s.timestamp, base_offset = s.base_offset,
        high_water_mark = s.high_water_mark, num_segments = s.num_segments,
        segment_offsets = offsets, total_size = s.total_size, mode = s.mode,
        label = s.label or output.NULL, path = s.path,
    }, SNAPSHOT_ORDER)
end

M.import = {
    name = "snapshot import", args = { "DIR" }, rest = "FILE|-",
    summary = "add a snapshot from a tar archive",
    options = { PROGRESS_OPTS[1], PROGRESS_OPTS[2], SNAPSHOT_DIR },
    help = "Read an archive made by `takhin snapshot export` from FILE, or stdin when\n" ..
        "FILE is '-' or missing, and add its snapshot to the snapshots of DIR (a\n" ..
        "directory; it need not hold a log yet).  The snapshot keeps its id.  Every\n" ..
        "file is checked against the manifest's sizes and checksums before the\n" ..
        "snapshot appears; a damaged or hostile archive is refused and leaves\n" ..
        "nothing behind.  An incremental archive needs its base snapshot there.\n" ..
        "Restore it with `takhin snapshot restore DIR ID TARGET`.",
    run = function(c, o, a, rest)
        if #rest > 1 then usage_error(("unexpected argument %q"):format(rest[2])) end
        local src = rest[1] or "-"
        local sm = common.open_manager(c, a.DIR, o)
        local from = src
        if src == "-" then
            from = c.stdin
            if io.type(from) ~= "file" then
                local tmp = os.tmpname()
                c.defer[#c.defer + 1] = function() os.remove(tmp) end
                local f = assert(io.open(tmp, "wb"))
                f:write(c.stdin:read("a") or "")
                f:close()
                from = tmp
            end
        end
        local progress, finish = output.progress_for(c, o, "import")
        local s = check(sm:import(from, { progress = progress }))
        if finish then finish() end
        if c.json then return output.emit_json(c, snapshot_json(s)) end
        c.out:write(("imported snapshot %s into %s: offsets %s, %s\n"):format(s.id, sm:dir(),
            range(s.base_offset, s.high_water_mark), human_size(s.total_size)))
    end,
}

return M
