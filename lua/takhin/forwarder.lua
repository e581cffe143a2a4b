--- takhin.forwarder: forwards a log to a Kafka topic, at least once.
--
--     local fwd = assert(takhin.forwarder{ log = log, cursor = "kafka",
--         brokers = "127.0.0.1:9092", topic = "events",
--         config = { ["linger.ms"] = 5 } })      -- any librdkafka property
--     local delivered, lag = fwd:pump()         -- never blocks long
--     fwd:run{ follow = true }                  -- a plain Lua loop
--     fwd:stats()   fwd:close()
--
-- The producer is takhin.kafka (csrc/kafka/lua_kafka.c, librdkafka), loaded when
-- the first forwarder is made: takhin itself never needs librdkafka.
--
-- How it keeps records (docs/API.md, "Forwarding to Kafka"):
--
--   * Records are read from the log in offset order, from the cursor's
--     committed offset (else the base offset), and produced with their key,
--     value and timestamp and a header takhin-offset = "<offset>".  Each
--     message's opaque is its offset.
--   * librdkafka's delivery reports mark offsets done.  `low` is the lowest
--     offset not yet done; the cursor is committed to `low` and never
--     further, so everything below the cursor was confirmed by Kafka.
--   * A record whose report is a failure is produced again after a backoff
--     (doubling up to max_retry_backoff), for ever.  A producer that hits a
--     fatal error (idempotence) or loses reports is replaced, and every
--     record not done is produced again: duplicates, never a gap.
--   * At most `window` records lie between `low` and the next one to send,
--     so one record that cannot be delivered stops the forwarder after a
--     bounded amount of work rather than letting its memory grow.
--
-- Options follow takhin's rule: misuse (an unknown option, a wrong type, a
-- log that is not one) raises; a bad value returns nil, msg, "INVALID".
-- Pure Lua; runs on Lua 5.4 and LuaJIT.
local duration = require("takhin.duration")
local policy = require("takhin.policy")

local M = {}

local check_options, raise = policy._check_options, policy._raise
local format, min, max = string.format, math.min, math.max

local Forwarder = {}
Forwarder.__index = Forwarder

local DEFAULT_BATCH = 10000             -- records produced per pump
local DEFAULT_WINDOW = 100000           -- records between low and next
local OPTS = { log = true, cursor = true, brokers = true, topic = true, config = true,
               batch = true, window = true, retry_backoff = true, max_retry_backoff = true,
               kafka = true }

local function invalid(fmt, ...)
    return nil, "forwarder: " .. fmt:format(...), "INVALID"
end

local function is_log(v)
    local mt = type(v) == "userdata" and getmetatable(v)
    return type(mt) == "table" and mt.__index == require("takhin.core").Log
end

local function positive_int(v, name, default)
    if v == nil then return default end
    if type(v) ~= "number" then raise(("forwarder: %s must be an integer, not %s"):format(name, type(v))) end
    if v ~= math.floor(v) or v < 1 or v == math.huge then
        return invalid("%s must be an integer >= 1, not %s", name, tostring(v))
    end
    return v
end

local function duration_ms(v, name, default)
    if v == nil then v = default end
    local ms, err = duration.parse(v)
    if not ms then return invalid("%s: %s", name, err) end
    return ms
end

-- The librdkafka configuration: forwarder defaults, then the caller's.
local function producer_config(o)
    local conf = {
        ["client.id"] = "takhin-forwarder",
        ["enable.idempotence"] = "true",
        -- Never give up on a message: while the brokers are down, the
        -- records wait in librdkafka's queue and the log (the spool's
        -- retention decides what happens when the outage outlasts it).
        ["message.timeout.ms"] = "0",
    }
    if o.brokers ~= nil then conf["bootstrap.servers"] = o.brokers end
    for k, v in pairs(o.config or {}) do
        if type(k) ~= "string" then raise("forwarder: config keys must be strings") end
        conf[k] = v
    end
    return conf
end

--- takhin.forwarder{ log =, topic =, brokers = [, cursor = "kafka"]
--      [, config = {}] [, batch = 10000] [, window = 100000]
--      [, retry_backoff = "100ms"] [, max_retry_backoff = "10s"] [, kafka = module] }
-- -> forwarder | nil, msg, code
-- `log` is an open takhin.Log that may commit (a writer or a shared
-- writer); the forwarder never closes it.  `kafka` replaces the
-- takhin.kafka module (tests).  NOT_FOUND when takhin.kafka is not built.
function M.new(opts)
    check_options(opts, "forwarder", OPTS)
    if not is_log(opts.log) then
        raise(("forwarder: log must be a takhin.Log, not %s"):format(type(opts.log)))
    end
    for _, name in ipairs({ "topic", "brokers", "cursor" }) do
        local v = opts[name]
        if v ~= nil and type(v) ~= "string" then
            raise(("forwarder: %s must be a string, not %s"):format(name, type(v)))
        end
    end
    if opts.topic == nil then raise("forwarder: topic is required") end
    if opts.config ~= nil and type(opts.config) ~= "table" then
        raise(("forwarder: config must be a table, not %s"):format(type(opts.config)))
    end
    if opts.topic == "" then return invalid("topic must not be empty") end
    if opts.brokers == nil and (opts.config or {})["bootstrap.servers"] == nil then
        raise("forwarder: brokers is required (or config[\"bootstrap.servers\"])")
    end
    local batch, msg, code = positive_int(opts.batch, "batch", DEFAULT_BATCH)
    if not batch then return nil, msg, code end
    local window
    window, msg, code = positive_int(opts.window, "window", DEFAULT_WINDOW)
    if not window then return nil, msg, code end
    local backoff
    backoff, msg, code = duration_ms(opts.retry_backoff, "retry_backoff", "100ms")
    if not backoff then return nil, msg, code end
    local max_backoff
    max_backoff, msg, code = duration_ms(opts.max_retry_backoff, "max_retry_backoff", "10s")
    if not max_backoff then return nil, msg, code end

    local kafka = opts.kafka
    if kafka == nil then
        local ok, mod = pcall(require, "takhin.kafka")
        if not ok then
            return nil, "forwarder: the takhin.kafka module is not available (it is built where "
                .. "librdkafka-dev is installed: make deps && make): " .. tostring(mod):match("^[^\n]*"),
                "NOT_FOUND"
        end
        kafka = mod
    end

    local log, cursor = opts.log, opts.cursor or "kafka"
    local committed
    committed, msg, code = log:committed(cursor)
    if committed == nil and msg ~= nil then return nil, "forwarder: " .. msg, code end
    local base = log:base_offset()
    local start = max(committed or base, base)

    local self = setmetatable({
        log = log, cursor = cursor, topic = opts.topic, kafka = kafka,
        conf = producer_config(opts), batch = batch, window = window,
        backoff_min = backoff, backoff_max = max(backoff, max_backoff), backoff = backoff,
        committed = committed,            -- the cursor as last read or written; nil: none
        low = start,                      -- lowest offset not yet confirmed
        next = start,                     -- next offset to read from the log
        done = {},                        -- confirmed offsets >= low
        inflight = 0,                     -- produced, no report yet
        retry = {},                       -- offsets to produce again
        retry_at = 0,                     -- when (kafka.clock_ms())
        hdr = { ["takhin-offset"] = "" },
        n_sent = 0, n_delivered = 0, n_failed = 0, n_retries = 0, n_resets = 0, n_commits = 0,
        n_lost = committed and committed < base and base - committed or 0,
        last_error = nil, last_error_code = nil,
    }, Forwarder)
    local p
    p, msg, code = kafka.producer(self.conf)
    if not p then return nil, "forwarder: " .. tostring(msg), code end
    self.producer = p
    return self
end

-------------------------------------------------------------------------
-- Delivery reports and the cursor
-------------------------------------------------------------------------

local function check_open(self)
    if getmetatable(self) ~= Forwarder then
        raise("bad self: a takhin forwarder expected")
    end
    if self.closed then raise("attempt to use a closed takhin.Forwarder") end
end

-- Marks offsets done while they are contiguous from low.
local function advance(self)
    local done, low = self.done, self.low
    while done[low] do
        done[low] = nil
        low = low + 1
    end
    self.low = low
end

local function note_error(self, msg, code)
    self.last_error, self.last_error_code = msg, code
end

-- Replaces the producer: what it had in flight is forgotten and every
-- record not yet confirmed is produced again (from low).
local function reset(self, why)
    note_error(self, why, "IO")
    self.n_resets = self.n_resets + 1
    self.producer:close()
    local p, msg, code = self.kafka.producer(self.conf)
    if not p then return nil, "forwarder: " .. tostring(msg), code end
    self.producer = p
    self.inflight, self.retry, self.next = 0, {}, self.low
    return true
end

-- Takes the delivery reports (waiting up to timeout_ms for one).
local function poll(self, timeout_ms)
    local delivered, failed, lost = self.producer:poll(timeout_ms)
    local done = self.done
    for i = 1, #delivered do done[delivered[i]] = true end
    local nd, nf = #delivered, #failed
    self.n_delivered = self.n_delivered + nd
    self.inflight = self.inflight - nd - nf
    if nf > 0 then
        local retry = self.retry
        for i = 1, nf do
            local f = failed[i]
            retry[#retry + 1] = f.offset
            note_error(self, format("offset %d: %s", f.offset, f.error), f.code)
        end
        self.n_failed = self.n_failed + nf
        self.retry_at = self.kafka.clock_ms() + self.backoff
        self.backoff = min(self.backoff * 2, self.backoff_max)
    elseif nd > 0 then
        self.backoff = self.backoff_min
    end
    advance(self)
    if lost > 0 then return reset(self, format("%d delivery reports lost (out of memory)", lost)) end
    local fatal, name = self.producer:fatal()
    if fatal then return reset(self, format("fatal producer error %s: %s", name, fatal)) end
    return true
end

-- Commits the cursor to low when it moved.
local function commit(self)
    local low, committed = self.low, self.committed
    if committed ~= nil and low <= committed then return true end
    -- Retention deleted records still in flight: nothing to commit until
    -- their reports come (the cursor cannot go below the base offset).
    if low < self.log:base_offset() then return true end
    local ok, msg, code = self.log:commit(self.cursor, low)
    if ok then
        self.committed, self.n_commits = low, self.n_commits + 1
        return true
    end
    -- Someone else moved the cursor at least as far: that is fine.
    local cur = self.log:committed(self.cursor)
    if cur ~= nil and cur >= low then self.committed = cur; return true end
    return nil, "forwarder: " .. tostring(msg), code
end

-------------------------------------------------------------------------
-- Sending
-------------------------------------------------------------------------

-- Records below the log's base offset were deleted (retention,
-- delete_before) before they were confirmed: counted as lost, skipped.
local function skip_deleted(self)
    local base = self.log:base_offset()
    if self.next >= base then return end
    local done = self.done
    for off = self.next, base - 1 do
        if not done[off] then self.n_lost = self.n_lost + 1 end
        done[off] = true
    end
    self.next = base
    advance(self)
end

-- takhin's code in an iterator's error message ("IO" when none).
local function code_in(err)
    for _, c in ipairs({ "OUT_OF_RANGE", "CORRUPT", "NOMEM" }) do
        if tostring(err):find(c, 1, true) then return c end
    end
    return "IO"
end

-- A record the producer refused: sent again after the backoff.
local function refused(self, off, msg, code)
    note_error(self, msg, code)
    self.retry[#self.retry + 1] = off
    self.n_failed = self.n_failed + 1
    self.retry_at = self.kafka.clock_ms() + self.backoff
    self.backoff = min(self.backoff * 2, self.backoff_max)
end

-- Produces one record; "sent", "full" (librdkafka's queue: try later),
-- "reset" (a fatal error: the producer must go) or "failed".
local function produce(self, rec)
    local off = rec.offset
    local hdr = self.hdr
    hdr["takhin-offset"] = format("%d", off)
    local ok, msg, code = self.producer:produce(self.topic, rec.key, rec.value, rec.timestamp, hdr, off)
    if ok then
        self.inflight, self.n_sent = self.inflight + 1, self.n_sent + 1
        return "sent"
    end
    if code == "FULL" then return "full" end
    if code == "FATAL" then note_error(self, format("offset %d: %s", off, tostring(msg)), code); return "reset" end
    refused(self, off, format("offset %d: %s", off, tostring(msg)), code)
    return "failed"
end

-- Produces the records waiting for a retry, when it is time; returns
-- how many it produced, or nil, msg, code.
local function send_retries(self, budget)
    if #self.retry == 0 or self.kafka.clock_ms() < self.retry_at then return 0 end
    local list = self.retry
    self.retry = {}
    table.sort(list)
    local n = 0
    for i = 1, #list do
        local off = list[i]
        if n >= budget then
            for j = i, #list do self.retry[#self.retry + 1] = list[j] end
            break
        end
        local rec, msg, code = self.log:read(off)
        if not rec then
            if code ~= "OUT_OF_RANGE" then
                for j = i, #list do self.retry[#self.retry + 1] = list[j] end
                return nil, "forwarder: " .. tostring(msg), code
            end
            self.done[off], self.n_lost = true, self.n_lost + 1     -- deleted meanwhile
        else
            local r = produce(self, rec)
            if r == "full" or r == "reset" then
                for j = i, #list do self.retry[#self.retry + 1] = list[j] end
                if r == "reset" then return nil, "reset" end
                break
            end
            if r == "sent" then n, self.n_retries = n + 1, self.n_retries + 1 end
        end
    end
    advance(self)
    return n
end

-- send_new through the producer's produce_log (takhin.kafka): C reads the
-- log and produces each record, with no Lua table per record.  Offsets
-- already confirmed (after a reset) are skipped: it is given the runs
-- between them.
local function send_new_fast(self, from, to)
    local p, done, dir, n = self.producer, self.done, self.log:dir(), 0
    local any_done = next(done) ~= nil
    local off = from
    while off < to do
        while any_done and off < to and done[off] do off = off + 1 end
        if off >= to then break end
        local run_end = to
        if any_done then
            run_end = off
            while run_end < to and not done[run_end] do run_end = run_end + 1 end
        end
        local k, nxt, status, msg, code = p:produce_log(self.topic, dir, off, run_end, "takhin-offset")
        if k == nil then return nil, "forwarder: " .. tostring(nxt), status end
        n, self.n_sent, self.inflight = n + k, self.n_sent + k, self.inflight + k
        self.next = nxt
        if status == "full" then return n end
        if status == "fatal" then note_error(self, msg, code); return nil, "reset" end
        if status == "error" then return nil, "forwarder: " .. tostring(msg), code end
        if status == "failed" then
            refused(self, nxt, msg, code)
            nxt = nxt + 1
            self.next = nxt
        end
        off = nxt
    end
    self.next = max(self.next, to)
    return n
end

-- Produces new records from next, up to budget; returns how many, or
-- nil, msg, code (a record that cannot be read), or nil, "reset".
local function send_new(self, budget)
    skip_deleted(self)
    local from = self.next
    local to = min(self.log:high_water_mark(), from + budget, self.low + self.window)
    if to <= from then return 0 end
    if self.producer.produce_log then
        local n, msg, code = send_new_fast(self, from, to)
        if n == nil and code == "OUT_OF_RANGE" then skip_deleted(self); return 0 end
        return n, msg, code
    end
    local done, n, stop = self.done, 0, nil
    local ok, err = pcall(function()
        for rec in self.log:records(from, to) do
            local off = rec.offset
            if not done[off] then
                local r = produce(self, rec)
                if r == "full" or r == "reset" then stop = r; break end
                n = n + 1
            end
            self.next = off + 1
        end
    end)
    if not ok then
        local code = code_in(err)
        if code == "OUT_OF_RANGE" then skip_deleted(self); return n end
        return nil, "forwarder: read " .. tostring(err), code
    end
    if stop == "reset" then return nil, "reset" end
    return n
end

-------------------------------------------------------------------------
-- The forwarder
-------------------------------------------------------------------------

local function lag(self)
    local hwm = self.log:high_water_mark()
    return max(0, hwm - (self.committed or self.log:base_offset()))
end

-- One round: reports in, records out, reports in, cursor committed.
local function round(self, budget)
    local ok, msg, code = poll(self, 0)
    if not ok then return nil, msg, code end
    local n
    n, msg, code = send_retries(self, budget)
    if n == nil and msg == "reset" then
        ok, msg, code = reset(self, self.last_error or "fatal producer error")
        if not ok then return nil, msg, code end
        n = 0
    end
    local read_err, read_code
    if n == nil then read_err, read_code, n = msg, code, 0 end
    local m = 0
    if not read_err then
        m, msg, code = send_new(self, budget - n)
        if m == nil and msg == "reset" then
            ok, msg, code = reset(self, self.last_error or "fatal producer error")
            if not ok then return nil, msg, code end
            m = 0
        elseif m == nil then
            read_err, read_code, m = msg, code, 0
        end
    end
    ok, msg, code = poll(self, 0)
    if not ok then return nil, msg, code end
    ok, msg, code = commit(self)
    if not ok then return nil, msg, code end
    if read_err then
        note_error(self, read_err, read_code)
        return nil, read_err, read_code
    end
    return n + m
end

--- fwd:pump([max]) -> delivered, lag | nil, msg, code
-- Takes the delivery reports that arrived, produces up to `max` records
-- (default: the `batch` option) that are in the log and not yet sent,
-- commits the cursor past what Kafka confirmed, and returns at once: the
-- number of records whose delivery was confirmed during this call and
-- the lag, high_water_mark() - committed.  A record that cannot be read
-- (CORRUPT) stops the forwarder there: nil, msg, code, every call, until
-- the log is repaired.
function Forwarder:pump(max_records)
    check_open(self)
    local budget = self.batch
    if max_records ~= nil then
        if type(max_records) ~= "number" or max_records ~= math.floor(max_records) or max_records < 1 then
            raise("bad argument #1 to 'pump' (an integer >= 1 expected, got " .. tostring(max_records) .. ")")
        end
        budget = max_records
    end
    local before = self.n_delivered
    local n, msg, code = round(self, budget)
    if n == nil then return nil, msg, code end
    return self.n_delivered - before, lag(self)
end

local RUN_OPTS = { follow = true, stop = true, idle = true }

-- Waits a little for something to do: a delivery report while records
-- are in flight, a retry's backoff, or an append.
local function idle_wait(self, wait_ms)
    if self.inflight > 0 then
        return poll(self, wait_ms)
    elseif #self.retry > 0 then
        local ms = self.retry_at - self.kafka.clock_ms()
        return poll(self, min(wait_ms, max(ms, 0)))
    end
    poll(self, 0)                     -- errors, statistics
    self.log:wait(self.next, wait_ms / 1000)
    return true
end

--- fwd:run{ follow = false, stop = fn, idle = "100ms" } -> delivered, lag | nil, msg, code
-- A plain Lua loop of pump().  Without `follow` it returns once every
-- record below the high water mark it found when it started is confirmed
-- and committed; with `follow` it goes on, sleeping in log:wait (woken by
-- appends from any process) when there is nothing to send.  `stop()` is
-- asked after each round: true ends the loop.  Blocks: not for nginx (use
-- forwarder.openresty).  Returns the records confirmed during the run
-- and the lag.
function Forwarder:run(opts)
    check_open(self)
    if opts == nil then opts = {} end
    check_options(opts, "forwarder: run", RUN_OPTS)
    if opts.stop ~= nil and type(opts.stop) ~= "function" then
        raise(("forwarder: run: stop must be a function, not %s"):format(type(opts.stop)))
    end
    local idle_ms, msg, code = duration_ms(opts.idle, "run: idle", "100ms")
    if not idle_ms then return nil, msg, code end
    if idle_ms < 1 then idle_ms = 1 end
    local target = not opts.follow and self.log:high_water_mark() or nil
    local before = self.n_delivered
    while true do
        local n
        n, msg, code = round(self, self.batch)
        if n == nil then return nil, msg, code end
        if target and self.low >= target and (self.committed or -1) >= self.low then break end
        if opts.stop and opts.stop() then break end
        local behind = self.next < self.log:high_water_mark() and self.next < self.low + self.window
        if n == 0 or not behind then
            local ok
            ok, msg, code = idle_wait(self, idle_ms)
            if not ok then return nil, msg, code end
        end
    end
    return self.n_delivered - before, lag(self)
end

--- fwd:stats() -> table: the cursor and its offsets, counters, the last
-- error, and the producer's own (takhin.kafka's p:stats()).
function Forwarder:stats()
    check_open(self)
    local hwm = self.log:high_water_mark()
    return {
        cursor = self.cursor, topic = self.topic,
        committed = self.committed, next_offset = self.next, confirmed_offset = self.low,
        high_water_mark = hwm, lag = lag(self),
        inflight = self.inflight, retrying = #self.retry,
        sent = self.n_sent, delivered = self.n_delivered, failed = self.n_failed,
        retries = self.n_retries, resets = self.n_resets, commits = self.n_commits,
        lost = self.n_lost,
        last_error = self.last_error, last_error_code = self.last_error_code,
        producer = self.producer:stats(),
    }
end

--- fwd:close([timeout]) -> true
-- Waits up to `timeout` (a duration, default "5s"; 0: not at all) for the
-- records in flight, commits the cursor past what was confirmed, and
-- closes the producer (what was not confirmed is sent again by the next
-- forwarder on this cursor).  Closing twice is harmless.  The log stays
-- open.  Also __close (`local fwd <close> = ...`, Lua 5.4).
function Forwarder:close(timeout)
    if getmetatable(self) ~= Forwarder then raise("bad self: a takhin forwarder expected") end
    if self.closed then return true end
    local ms, msg, code = duration_ms(timeout, "close: timeout", "5s")
    if not ms then return nil, msg, code end
    self.closed = true
    if ms > 0 and self.inflight > 0 then
        self.producer:flush(ms)
        poll(self, 0)
    end
    local ok, cok, cmsg, ccode = pcall(commit, self)     -- the log may be closed already
    self.producer:close()
    if not ok then return nil, "forwarder: close: " .. tostring(cok), "IO" end
    if not cok then return nil, cmsg, ccode end
    return true
end

Forwarder.__close = function(self) self:close() end

-- Collected without close (Lua 5.4; LuaJIT has no __gc for tables, and
-- there the producer's own __gc frees librdkafka): commit what was
-- confirmed, wait for nothing.  Never raises.
Forwarder.__gc = function(self)
    if not self.closed then pcall(self.close, self, 0) end
end

function Forwarder.__tostring(self)
    if self.closed then return "takhin.Forwarder(closed)" end
    return format("takhin.Forwarder(cursor %s -> topic %s, committed %s, lag %d)", self.cursor,
                  self.topic, self.committed and format("%d", self.committed) or "none", lag(self))
end

M.Forwarder = Forwarder

-------------------------------------------------------------------------
-- OpenResty
-------------------------------------------------------------------------

local OPENRESTY_OPTS = { interval = true, worker = true, rounds = true, close_timeout = true,
                         on_error = true }

--- forwarder.openresty(opts [, { interval = "100ms", worker = 0, rounds = 10,
--      close_timeout = "1s", on_error = fn }]) -> forwarder | true | nil, msg, code
-- Call from init_worker_by_lua*.  In the worker whose ngx.worker.id() is
-- `worker` it makes a forwarder from `opts` (as takhin.forwarder) and
-- pumps it from ngx.timer.every(interval): each tick pumps up to `rounds`
-- times, yielding to nginx (ngx.sleep(0)) between them, and stops early
-- when everything is sent.  Errors go to the error log (and on_error(msg,
-- code)).  When the worker exits the forwarder is closed, waiting up to
-- close_timeout for the records in flight.  Returns the forwarder in that
-- worker, true in the others.
function M.openresty(opts, ropts)
    local what = "forwarder.openresty"
    local ngx = rawget(_G, "ngx")
    if ropts == nil then ropts = {} end
    check_options(ropts, what, OPENRESTY_OPTS)
    if type(ngx) ~= "table" or type(ngx.timer) ~= "table" then
        raise(what .. ": no ngx (call it inside nginx's Lua module)")
    end
    local worker = ropts.worker or 0
    if type(worker) ~= "number" then raise(what .. ": worker must be an integer") end
    local rounds = ropts.rounds or 10
    if type(rounds) ~= "number" or rounds < 1 then raise(what .. ": rounds must be an integer >= 1") end
    if ropts.on_error ~= nil and type(ropts.on_error) ~= "function" then
        raise(what .. ": on_error must be a function")
    end
    local interval, msg, code = duration_ms(ropts.interval, "openresty: interval", "100ms")
    if not interval then return nil, msg, code end
    if interval <= 0 then return invalid("openresty: interval must be more than 0") end
    local close_timeout = ropts.close_timeout or "1s"
    local id = ngx.worker.id()
    if id == nil then raise(what .. ": no worker id (call it from init_worker_by_lua*)") end
    if id ~= worker then return true end

    local fwd
    fwd, msg, code = M.new(opts)
    if not fwd then return nil, msg, code end
    local running, last_msg = false, nil
    local function report(m, c)
        if m ~= last_msg then           -- once per distinct error, not every tick
            ngx.log(ngx.ERR, "takhin forwarder: ", m, c and (" (" .. c .. ")") or "")
            last_msg = m
        end
        if ropts.on_error then ropts.on_error(m, c) end
    end
    local function tick(premature)
        if premature or ngx.worker.exiting() then
            if not fwd.closed then fwd:close(close_timeout) end
            return
        end
        if running or fwd.closed then return end
        running = true
        local ok, err = pcall(function()
            for _ = 1, rounds do
                local n, l, c = fwd:pump()
                if n == nil then report(l, c); break end
                last_msg = nil
                if fwd.next >= fwd.log:high_water_mark() or fwd.next >= fwd.low + fwd.window then
                    break
                end
                ngx.sleep(0)
            end
        end)
        running = false
        if not ok then report(tostring(err)) end
    end
    local ok, terr = ngx.timer.every(interval / 1000, tick)
    if not ok then
        fwd:close(0)
        return nil, what .. ": ngx.timer.every: " .. tostring(terr), "IO"
    end
    return fwd
end

return M
