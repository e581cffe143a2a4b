--- takhin.cli.forward: `takhin forward DIR --kafka BROKERS --topic T`, the
-- command-line face of takhin.forwarder (docs/API.md, "Forwarding to
-- Kafka").  takhin.cli registers it.  The forwarder, and with it
-- librdkafka, is loaded only when the command runs.
local common = require("takhin.cli.common")
local output = require("takhin.cli.output")

local M = {}

local fail, usage_error = common.fail, common.usage_error
local ordered, NULL = output.ordered, output.NULL

-- "linger.ms=5,compression.type=lz4" -> { ["linger.ms"] = "5", ... }
local function parse_config(text)
    local conf = {}
    if text == nil then return conf end
    for item in (text .. ","):gmatch("([^,]*),") do
        local k, v = item:match("^%s*([^=%s]+)%s*=(.*)$")
        if not k then
            usage_error(("--config: %q is not KEY=VALUE (e.g. linger.ms=5,compression.type=lz4)"):format(item))
        end
        conf[k] = v
    end
    return conf
end

local RESULT_ORDER = { "dir", "topic", "cursor", "from", "committed", "delivered", "high_water_mark",
                       "lag", "sent", "retries", "last_error" }

local function result(dir, fwd, from, delivered)
    local s = fwd:stats()
    return ordered({
        dir = dir, topic = s.topic, cursor = s.cursor, from = from,
        committed = s.committed or NULL, delivered = delivered,
        high_water_mark = s.high_water_mark, lag = s.lag, sent = s.sent, retries = s.retries,
        last_error = s.last_error or NULL,
    }, RESULT_ORDER)
end

M.forward = {
    name = "forward", args = { "DIR" },
    summary = "send the records to a Kafka topic, at least once",
    options = {
        { "--kafka", "BROKERS", "string", "Kafka's bootstrap servers, HOST:PORT[,HOST:PORT...] (required)" },
        { "--topic", "T", "string", "the topic to produce to (required)" },
        { "--cursor", "NAME", "string", "the log's cursor that remembers what Kafka confirmed\n(default: kafka)" },
        { "--follow", nil, nil, "go on forwarding records as they are appended, until killed" },
        { "--config", "K=V,...", "string", "librdkafka properties, e.g. linger.ms=5,compression.type=lz4" },
        { "--timeout", "D", "duration", "without --follow: give up when Kafka has not confirmed\n" ..
              "everything after D (default: wait for ever)" },
    },
    help = "Send the records of the log in DIR to a Kafka topic, from where cursor\n" ..
        "NAME stands (the base offset the first time) to the high water mark,\n" ..
        "wait until Kafka confirmed every one, commit the cursor and exit 0.\n" ..
        "With --follow, keep going as records are appended (the cursor is\n" ..
        "committed as deliveries are confirmed).  Each Kafka record has the log\n" ..
        "record's key, value and timestamp and a header takhin-offset with its\n" ..
        "offset in decimal.  At least once: a record is sent again when the\n" ..
        "command is stopped before Kafka confirmed it.  While the brokers are\n" ..
        "down it waits and retries (for ever, unless --timeout).  The log is\n" ..
        "opened as a shared writer, so this runs beside nginx workers that\n" ..
        "append to it in shared mode.  Needs the takhin.kafka module (built\n" ..
        "where librdkafka-dev is installed).",
    run = function(c, o, a)
        if not o.kafka then usage_error("--kafka BROKERS is required") end
        if not o.topic then usage_error("--topic T is required") end
        local conf = parse_config(o.config)
        if o.follow and o.timeout then usage_error("--timeout goes without --follow") end
        common.require_log(a.DIR, "append to it first")
        local log = common.open_writer(c, a.DIR, { shared = true })
        local cursor = o.cursor or "kafka"
        local from, msg, code = log:committed(cursor)
        if from == nil and msg then fail(msg, code) end
        from = math.max(from or 0, log:base_offset())
        local fwd = common.check(common.lib().forwarder{
            log = log, brokers = o.kafka, topic = o.topic, cursor = cursor, config = conf })
        -- However the command ends (an error, Ctrl-C): what Kafka confirmed
        -- is committed.  Runs before the log is closed (defers run last first).
        c.defer[#c.defer + 1] = function() fwd:close("2s") end
        local stop
        if o.timeout then
            local ms = require("takhin.duration").parse(o.timeout)
            local deadline = fwd.kafka.clock_ms() + ms
            stop = function() return fwd.kafka.clock_ms() >= deadline end
        end
        local target = log:high_water_mark()
        local delivered
        delivered, msg, code = fwd:run{ follow = o.follow or nil, stop = stop }
        if delivered == nil then fail(msg, code) end
        local res = result(a.DIR, fwd, from, delivered)
        common.check(fwd:close(0))
        res.committed = log:committed(cursor) or NULL
        if not o.follow and (res.committed == NULL or res.committed < target) then
            if c.json then output.emit_json(c, res) end
            fail(("%s: Kafka confirmed only %d of %d records within %s; cursor %s at %s%s"):format(
                a.DIR, delivered, target - from, o.timeout, cursor,
                res.committed == NULL and "none" or ("%d"):format(res.committed),
                res.last_error ~= NULL and ("; last error: " .. res.last_error) or ""), "TIMEOUT")
        end
        if c.json then return output.emit_json(c, res) end
        c.out:write(("forwarded %s from %s to Kafka topic %s (cursor %s: %d -> %d, lag %d)\n"):format(
            output.plural(delivered, "record"), a.DIR, o.topic, cursor, from, res.committed, res.lag))
    end,
}

return M
