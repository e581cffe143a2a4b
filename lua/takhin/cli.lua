--- takhin.cli: the `takhin` command-line tool (bin/takhin is a thin wrapper).
--
--     local status = require("takhin.cli").main(arg)   -- 0, 1 or 2
--
-- Every command prints a human-readable report by default and JSON with
-- `--json`.  Exit status: 0 success, 1 the operation failed (the message,
-- naming the path or id and the error code, goes to stderr), 2 usage error.
-- Ctrl-C ends `dump --follow` (exit 0); any other command it interrupts
-- has failed: "interrupted", exit 1.
--
-- main(argv, env) takes an optional env = { stdout =, stderr =, stdin =,
-- isatty = function() }, so the module can be driven without a process.
--
-- This module only dispatches.  The work is in takhin/cli/, as LuaRocks
-- keeps its commands in luarocks/cmd/:
--
--     args.lua       argument parsing and a command's usage text
--     output.lua     JSON, escaped bytes, sizes, dates, ranges, tables, progress
--     common.lua     failures; opening logs and managers
--     log.lua        the log commands (info, dump, append, verify)
--     snapshot.lua   the snapshot commands (takhin snapshot create, ...)
--     cursor.lua     the cursor commands (takhin cursor list, ...)
--     transfer.lua   takhin snapshot export and import
--
-- A new command is a definition in its group's module (args.lua says what
-- one holds) and one register() line below; a new group adds a GROUPS entry.
-- Runs on Lua 5.4 and LuaJIT (no `//`, no math.type, no <close>).
local args = require("takhin.cli.args")
local common = require("takhin.cli.common")
local output = require("takhin.cli.output")
local log_cmds = require("takhin.cli.log")
local snapshot_cmds = require("takhin.cli.snapshot")
local cursor_cmds = require("takhin.cli.cursor")
local transfer_cmds = require("takhin.cli.transfer")

local M = {}

-- The encoders, for scripts and specs that used them from here.
M.json, M.json_array, M.json_null = output.json, output.array, output.NULL
M.escape, M.base64 = output.escape, output.base64

-------------------------------------------------------------------------
-- The commands
-------------------------------------------------------------------------

local COMMANDS, ORDER = {}, {}

local function register(def)
    COMMANDS[def.name] = def
    ORDER[#ORDER + 1] = def.name
end

-- In the order `takhin --help` lists them.
register(log_cmds.info)
register(log_cmds.dump)
register(log_cmds.append)
register(log_cmds.verify)
register(log_cmds.stats)
register(require("takhin.cli.forward").forward)
register(snapshot_cmds.create)
register(snapshot_cmds.list)
register(snapshot_cmds.show)
register(snapshot_cmds.restore)
register(snapshot_cmds.delete)
register(snapshot_cmds.cleanup)
register(snapshot_cmds.verify)
register(cursor_cmds.list)
register(cursor_cmds.commit)
register(cursor_cmds.delete)
register(transfer_cmds.export)
register(transfer_cmds.import)

-- Command groups: `takhin PREFIX NAME ...`.  The commands without a prefix
-- come first in `takhin --help`.
local GROUPS = {
    { title = "Log commands" },
    { prefix = "snapshot", title = "Snapshot commands",
      usage = "usage: takhin snapshot SUBCOMMAND [OPTIONS] DIR ...\n\n" ..
          "Snapshots of the log in DIR, kept in DIR/.snapshots unless --snapshot-dir\n" ..
          "says otherwise.\n\n" },
    { prefix = "cursor", title = "Cursor commands",
      usage = "usage: takhin cursor SUBCOMMAND [OPTIONS] DIR ...\n\n" ..
          "Cursors of the log in DIR: the committed offsets of its consumers, each\n" ..
          "the next offset that consumer reads.\n\n" },
}

local function group_of(prefix)
    for _, g in ipairs(GROUPS) do
        if g.prefix and g.prefix == prefix then return g end
    end
    return nil
end

-------------------------------------------------------------------------
-- Help
-------------------------------------------------------------------------

-- "  info DIR   segments, ..." for the commands of a group.
local function command_list(prefix)
    local rows = {}
    for _, name in ipairs(ORDER) do
        if name:match("^(%S+) ") == prefix then
            rows[#rows + 1] = { args.signature(COMMANDS[name]), COMMANDS[name].summary }
        end
    end
    return args.columns(rows)
end

local function main_help()
    local sections = {}
    for _, g in ipairs(GROUPS) do
        sections[#sections + 1] = g.title .. ":\n" .. command_list(g.prefix) .. "\n\n"
    end
    return "usage: takhin [--json] COMMAND [OPTIONS] ARGS...\n\n" ..
        "Inspect and manage takhin logs (Kafka-style segmented commit logs), their\n" ..
        "snapshots and their cursors.  DIR is a log directory.\n\n" ..
        table.concat(sections) ..
        "Options:\n" .. args.option_lines({
            args.COMMON_OPTIONS[1], args.COMMON_OPTIONS[2],
            { "--version", nil, nil, "print the takhin version" },
        }) .. "\n\n" ..
        "Exit status: 0 success, 1 the operation failed (message on stderr),\n" ..
        "2 usage error.  'takhin COMMAND --help' shows a command's options.\n"
end

local function group_help(g)
    return g.usage .. "Subcommands:\n" .. command_list(g.prefix) .. "\n\n" ..
        ("'takhin %s SUBCOMMAND --help' shows a subcommand's options.\n"):format(g.prefix)
end

-------------------------------------------------------------------------
-- main
-------------------------------------------------------------------------

-- Find the command named by argv[i..]; returns its definition (or a help
-- text) and the index of its first argument.
local function resolve(argv, i)
    local name = argv[i]
    if name == nil then common.usage_error("missing command") end
    local g = group_of(name)
    if g then
        local sub = argv[i + 1]
        if sub == nil then common.usage_error(("missing %s subcommand"):format(name)) end
        if sub == "-h" or sub == "--help" or sub == "help" then return group_help(g), 0 end
        local def = COMMANDS[name .. " " .. sub]
        if not def then common.usage_error(("unknown %s subcommand %q"):format(name, sub)) end
        return def, i + 2
    end
    local def = COMMANDS[name]
    if not def or name:find(" ") then common.usage_error(("unknown command %q"):format(name)) end
    return def, i + 1
end

local function run(c, argv)
    local i = 1
    while argv[i] and argv[i]:sub(1, 1) == "-" do
        local a = argv[i]
        if a == "-h" or a == "--help" then c.out:write(main_help()); return 0 end
        if a == "--version" then c.out:write("takhin ", common.lib().version, "\n"); return 0 end
        if a == "--json" then c.json = true
        else common.usage_error("unknown option " .. a) end
        i = i + 1
    end
    if argv[i] == "help" then
        if argv[i + 1] == nil then c.out:write(main_help()); return 0 end
        local def = resolve(argv, i + 1)
        c.out:write(type(def) == "string" and def or args.command_help(def))
        return 0
    end
    local def, first = resolve(argv, i)
    if type(def) == "string" then c.out:write(def); return 0 end
    c.cmd = def.name
    local o, pos, rest = args.parse(def, argv, first)
    if o.help then c.out:write(args.command_help(def)); return 0 end
    if o.json then c.json = true end
    def.run(c, o, pos, rest)
    return 0
end

-- Print a failure on stderr; returns the exit status.
local function report(c, res)
    local who = "takhin" .. (c.cmd and (" " .. c.cmd) or "")
    if res.interrupted then
        c.err:write(("%s: interrupted\n"):format(who))
        return 1
    elseif res.usage then
        c.err:write(("%s: %s\n"):format(who, res.msg))
        c.err:write(("Try '%s --help'.\n"):format(who))
        return 2
    elseif res.fail then
        c.err:write(("%s: %s%s\n"):format(who, res.msg, res.code and (" (" .. res.code .. ")") or ""))
        for _, note in ipairs(res.notes or {}) do c.err:write(("%s: %s\n"):format(who, note)) end
        return 1
    end
    c.err:write(("%s: internal error: %s\n"):format(who, res.msg))
    return 1
end

--- Run the tool with argv (arg[1..n]); returns the exit status.
function M.main(argv, env)
    env = env or {}
    local c = {
        out = env.stdout or io.stdout, err = env.stderr or io.stderr,
        stdin = env.stdin or io.stdin, isatty = env.isatty or output.stderr_isatty,
        defer = {}, cmd = nil,
    }
    local list = {}
    for k = 1, #(argv or {}) do list[k] = argv[k] end
    local ok, res = xpcall(run, function(e)
        if type(e) == "table" then return e end
        if common.is_interrupt(e) then return { interrupted = true } end
        return { internal = true, msg = debug.traceback(tostring(e), 2) }
    end, c, list)
    for k = #c.defer, 1, -1 do pcall(c.defer[k]) end
    if ok then
        local flushed, err = c.out:flush()            -- a full disk, say
        if flushed ~= nil or err == nil then return res end
        res = { fail = true, msg = "write to stdout: " .. tostring(err), code = "IO" }
    end
    return report(c, res)
end

return M
