--- Forwarding the log to Kafka from inside nginx (examples/openresty/kafka.conf).
--
-- One worker (`worker`, default 0) opens its own shared writer on the log
-- and runs takhin.forwarder.openresty: a timer pumps the forwarder, which
-- produces through librdkafka (takhin.kafka) and commits the cursor
-- "kafka" past what Kafka confirmed.  The other workers only append
-- (handler.lua).  pump() never blocks for long: produce() only queues, and
-- delivery reports are polled without waiting.
--
--   GET /forwarder   -> {"worker":W,"forwarding":true,"committed":N,"lag":L,...}
--                       (from whichever worker answers; only one forwards)
local takhin = require("takhin")

local M = {}

local state = { fwd = nil, log = nil, worker = -1 }

local fmt = string.format

local CONFIG_KEYS = { data_dir = true, brokers = true, topic = true, cursor = true, worker = true,
                      interval = true, config = true }

--- kafka_forwarder.init_worker(cfg), from init_worker_by_lua*, after
-- handler.init_worker:
--   data_dir   the log directory (the one handler.lua appends to)
--   brokers    Kafka's bootstrap servers, "host:port,..."
--   topic      the topic
--   cursor     the log's cursor (default "kafka")
--   worker     the worker that forwards (default 0)
--   interval   how often its timer pumps (default "100ms")
--   config     librdkafka properties (optional table)
function M.init_worker(cfg)
    state.worker = ngx.worker.id() or 0
    for k in pairs(cfg) do
        if not CONFIG_KEYS[k] then
            return ngx.log(ngx.ERR, "kafka_forwarder: unknown config key '", tostring(k), "'")
        end
    end
    local worker = cfg.worker or 0
    if state.worker ~= worker then return end
    local log, msg, code = takhin.open_log{ dir = cfg.data_dir, shared = true }
    if not log then
        return ngx.log(ngx.ERR, "kafka_forwarder: open_log: ", msg, " (", code, ")")
    end
    local fwd
    fwd, msg, code = require("takhin.forwarder").openresty(
        { log = log, brokers = cfg.brokers, topic = cfg.topic, cursor = cfg.cursor, config = cfg.config },
        { interval = cfg.interval or "100ms", worker = worker })
    if not fwd then
        log:close()
        return ngx.log(ngx.ERR, "kafka_forwarder: ", msg, " (", code, ")")
    end
    state.fwd, state.log = fwd, log
    ngx.log(ngx.INFO, "kafka_forwarder: worker ", state.worker, " forwards ", tostring(fwd))
end

--- kafka_forwarder.exit_worker(), from exit_worker_by_lua*.
function M.exit_worker()
    if state.fwd then state.fwd:close("1s"); state.fwd = nil end
    if state.log then state.log:close(); state.log = nil end
end

--- GET /forwarder
function M.status()
    ngx.header["Content-Type"] = "application/json"
    if not state.fwd or state.fwd.closed then
        return ngx.say(fmt('{"worker":%d,"forwarding":false}', state.worker))
    end
    local s = state.fwd:stats()
    ngx.say(fmt('{"worker":%d,"forwarding":true,"cursor":"%s","committed":%s,"high_water_mark":%d,'
        .. '"lag":%d,"inflight":%d,"sent":%d,"delivered":%d,"failed":%d,"retries":%d}',
        state.worker, s.cursor, s.committed and fmt("%d", s.committed) or "null",
        s.high_water_mark, s.lag, s.inflight, s.sent, s.delivered, s.failed, s.retries))
end

return M
