/*
 * lua_kafka.c -- takhin.kafka: a thin binding of librdkafka's producer.
 *
 *     local kafka = require("takhin.kafka")
 *     local p = assert(kafka.producer{ ["bootstrap.servers"] = "127.0.0.1:9092" })
 *     p:produce("events", key, value, timestamp_ms, { ["takhin-offset"] = "42" }, 42)
 *     local delivered, failed = p:poll(100)   -- { 42, ... }, { { offset =, error =, ... } }
 *     p:flush(1000)  p:purge()  p:queued()  p:stats()  p:close()
 *
 * An optional module: only it links librdkafka, and takhin.core never
 * loads it.  lua/takhin/forwarder.lua builds the forwarder on top of it;
 * docs/API.md ("Forwarding to Kafka") documents both.
 *
 * Delivery reports.  Every message carries an integer opaque (the takhin
 * offset, for the forwarder).  librdkafka calls the delivery callback only
 * from inside rd_kafka_poll() and rd_kafka_flush(), on the calling thread:
 * the callback never touches Lua (a Lua error must not unwind through
 * librdkafka's frames); it appends the report to a C array, and poll()
 * hands that array to Lua afterwards.  Reports collected by flush() wait
 * there for the next poll().
 *
 * The fast path.  produce() takes one record from Lua; produce_log()
 * reads a range of a takhin log itself (a read-only handle of the engine,
 * through takhin.h, linked into this module) and produces every record
 * of it without a Lua table or string per record: the forwarder's way to
 * keep up with a C producer such as kcat.
 *
 * Conventions as takhin.core's (csrc/lua_takhin.c): misuse raises; the
 * outside world failing returns nil, message, CODE (here with librdkafka's
 * own error name as a fourth value); the userdata is created closed and
 * given its metatable before librdkafka is called; close, __gc and __close
 * share one quiet path.  Closing purges what was not delivered: call
 * flush() first to wait for it.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>

#include "lauxlib.h"
#include "lua.h"

#include "compat.h"
#include "takhin.h"

#define PRODUCER_MT "takhin.kafka.Producer"
#define MAX_HEADERS 64                  /* headers of one message */
#define ERRLEN 512

#if defined(__GNUC__)
#define TK_EXPORT __attribute__((visibility("default")))
#else
#define TK_EXPORT
#endif

/* One delivery report, as the callback saw it. */
typedef struct report {
    int64_t opaque;
    int64_t kafka_offset;               /* -1 when not delivered */
    int32_t partition;
    rd_kafka_resp_err_t err;
} report;

typedef struct producer {
    rd_kafka_t *rk;                     /* NULL once closed */
    rd_kafka_topic_t *rkt;              /* the last topic produced to */
    char *topic;                        /* its name */
    report *reports;                    /* not yet handed to Lua */
    size_t n_reports, cap_reports;
    int lost_reports;                   /* reports the callback could not store */
    /* counters */
    int64_t produced, delivered, failed, errors;
    rd_kafka_resp_err_t last_err;
    char last_error[ERRLEN];            /* "" when none */
    char *stats_json;                   /* the last statistics callback's */
    tk_log *reader;                     /* produce_log's read-only handle */
    char *reader_dir;                   /* its directory */
    tk_record rec;                      /* produce_log's record buffer */
} producer;

/* ------------------------------------------------------------------ */
/* Helpers                                                              */
/* ------------------------------------------------------------------ */

static producer *check_producer(lua_State *L, int idx) {
    producer *p = (producer *)luaL_checkudata(L, idx, PRODUCER_MT);
    if (!p->rk) luaL_error(L, "attempt to use a closed takhin.kafka.Producer");
    return p;
}

/* takhin's stable code for a librdkafka error. */
static const char *code_of(rd_kafka_resp_err_t err) {
    switch (err) {
    case RD_KAFKA_RESP_ERR__QUEUE_FULL: return "FULL";
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:
        return "INVALID";
    case RD_KAFKA_RESP_ERR__FATAL: return "FATAL";
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT: return "TIMEOUT";
    case RD_KAFKA_RESP_ERR__PURGE_QUEUE:
    case RD_KAFKA_RESP_ERR__PURGE_INFLIGHT: return "CANCELED";
    default: return "IO";
    }
}

static int push_tk_error(lua_State *L, const tk_err *e) {
    lua_pushnil(L);
    lua_pushstring(L, e->msg);
    lua_pushstring(L, tk_code_name(e->code));
    return 3;
}

static int push_kafka_error(lua_State *L, const char *what, rd_kafka_resp_err_t err,
                            const char *detail) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", what, detail ? detail : rd_kafka_err2str(err));
    lua_pushstring(L, code_of(err));
    lua_pushstring(L, rd_kafka_err2name(err));
    return 4;
}

/* A string or nil; NULL for nil. */
static const char *opt_bytes(lua_State *L, int idx, size_t *len) {
    *len = 0;
    if (lua_isnoneornil(L, idx)) return NULL;
    if (lua_type(L, idx) != LUA_TSTRING) compat_typeerror(L, idx, "string or nil");
    return lua_tolstring(L, idx, len);
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------------ */
/* librdkafka's callbacks: they run inside rd_kafka_poll/flush, on the  */
/* thread that called them, and never touch Lua.                        */
/* ------------------------------------------------------------------ */

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    producer *p = (producer *)opaque;
    (void)rk;
    if (m->err) p->failed++;
    else p->delivered++;
    if (p->n_reports == p->cap_reports) {
        size_t cap = p->cap_reports ? p->cap_reports * 2 : 1024;
        report *r = (report *)realloc(p->reports, cap * sizeof *r);
        if (!r) { p->lost_reports++; return; }
        p->reports = r;
        p->cap_reports = cap;
    }
    report *r = &p->reports[p->n_reports++];
    r->opaque = (int64_t)(intptr_t)m->_private;
    r->err = m->err;
    r->partition = m->partition;
    r->kafka_offset = m->err ? -1 : m->offset;
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
    producer *p = (producer *)opaque;
    (void)rk;
    p->errors++;
    p->last_err = (rd_kafka_resp_err_t)err;
    snprintf(p->last_error, sizeof p->last_error, "%s: %s",
             rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

static int on_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque) {
    producer *p = (producer *)opaque;
    (void)len;
    rd_kafka_mem_free(rk, p->stats_json);
    p->stats_json = json;
    return 1;                           /* we keep json; librdkafka must not free it */
}

/* ------------------------------------------------------------------ */
/* Life cycle                                                           */
/* ------------------------------------------------------------------ */

/* The one quiet release path of close, __gc and __close: what was not
 * delivered is purged (not waited for), then the instance destroyed. */
static void producer_release(producer *p) {
    if (p->rk) {
        rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT |
                              RD_KAFKA_PURGE_F_NON_BLOCKING);
        if (p->rkt) rd_kafka_topic_destroy(p->rkt);
        rd_kafka_destroy(p->rk);
    }
    p->rk = NULL;
    p->rkt = NULL;
    free(p->topic);
    p->topic = NULL;
    free(p->reports);
    p->reports = NULL;
    p->n_reports = p->cap_reports = 0;
    rd_kafka_mem_free(NULL, p->stats_json);
    p->stats_json = NULL;
    tk_log_close(p->reader);
    p->reader = NULL;
    free(p->reader_dir);
    p->reader_dir = NULL;
    tk_record_free(&p->rec);
}

/* kafka.producer(config) -> producer | nil, msg, code */
static int l_producer(lua_State *L) {
    char errstr[ERRLEN];
    luaL_checktype(L, 1, LUA_TTABLE);
    producer *p = (producer *)lua_newuserdata(L, sizeof *p);   /* stack: config, p */
    memset(p, 0, sizeof *p);
    luaL_getmetatable(L, PRODUCER_MT);
    lua_setmetatable(L, -2);

    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    /* Defaults a caller may override: idempotence on (retries inside one
     * run do not duplicate or reorder). */
    rd_kafka_conf_set(conf, "enable.idempotence", "true", errstr, sizeof errstr);
    lua_pushnil(L);
    while (lua_next(L, 1)) {                            /* stack: config, p, key, value */
        if (lua_type(L, -2) != LUA_TSTRING) {
            rd_kafka_conf_destroy(conf);
            return luaL_error(L, "kafka.producer: config keys must be strings, not %s",
                              luaL_typename(L, -2));
        }
        const char *key = lua_tostring(L, -2);
        const char *val;
        char num[64];
        if (lua_type(L, -1) == LUA_TNUMBER) {
            int64_t i;
            if (compat_toint64(L, -1, &i)) snprintf(num, sizeof num, "%lld", (long long)i);
            else snprintf(num, sizeof num, "%.17g", (double)lua_tonumber(L, -1));
            val = num;
        } else if (lua_type(L, -1) == LUA_TBOOLEAN) {
            val = lua_toboolean(L, -1) ? "true" : "false";
        } else if (lua_type(L, -1) == LUA_TSTRING) {
            val = lua_tostring(L, -1);
        } else {
            rd_kafka_conf_destroy(conf);
            return luaL_error(L, "kafka.producer: config '%s' must be a string, number or "
                              "boolean, not %s", key, luaL_typename(L, -1));
        }
        if (rd_kafka_conf_set(conf, key, val, errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
            rd_kafka_conf_destroy(conf);
            lua_pushnil(L);
            lua_pushfstring(L, "kafka.producer: %s", errstr);
            lua_pushliteral(L, "INVALID");
            return 3;
        }
        lua_pop(L, 1);                                  /* stack: config, p, key */
    }
    rd_kafka_conf_set_opaque(conf, p);
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_error_cb(conf, on_error);
    rd_kafka_conf_set_stats_cb(conf, on_stats);
    /* rd_kafka_new owns conf when it succeeds, not when it fails */
    p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!p->rk) {
        rd_kafka_conf_destroy(conf);
        lua_pushnil(L);
        lua_pushfstring(L, "kafka.producer: %s", errstr);
        lua_pushliteral(L, "INVALID");
        return 3;
    }
    return 1;
}

static int l_close(lua_State *L) {
    producer *p = (producer *)luaL_checkudata(L, 1, PRODUCER_MT);
    producer_release(p);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_gc(lua_State *L) {
    producer *p = (producer *)lua_touserdata(L, 1);
    if (p) producer_release(p);
    return 0;
}

static int l_tostring(lua_State *L) {
    producer *p = (producer *)luaL_checkudata(L, 1, PRODUCER_MT);
    if (!p->rk) lua_pushliteral(L, "takhin.kafka.Producer(closed)");
    else lua_pushfstring(L, "takhin.kafka.Producer(%s, %d queued)", rd_kafka_name(p->rk),
                         rd_kafka_outq_len(p->rk));
    return 1;
}

/* ------------------------------------------------------------------ */
/* Producing                                                            */
/* ------------------------------------------------------------------ */

/* The topic handle for name: the cached one, or a new one (cached). */
static rd_kafka_topic_t *topic_handle(producer *p, const char *name) {
    if (p->rkt && strcmp(p->topic, name) == 0) return p->rkt;
    char *copy = strdup(name);
    if (!copy) return NULL;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(p->rk, name, NULL);
    if (!rkt) { free(copy); return NULL; }
    if (p->rkt) rd_kafka_topic_destroy(p->rkt);
    free(p->topic);
    p->rkt = rkt;
    p->topic = copy;
    return rkt;
}

/* Adds a header entry per field of the table at idx (name -> string
 * value); returns the new count.  The strings stay referenced by the
 * table, which the caller's stack holds, until produceva has copied them. */
static size_t add_headers(lua_State *L, int idx, rd_kafka_vu_t *vus, size_t n) {
    size_t first = n;
    lua_pushnil(L);
    while (lua_next(L, idx)) {                          /* stack: ..., name, value */
        size_t nlen, vlen;
        if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
            luaL_argerror(L, idx, "headers must map string names to string values");
        const char *name = lua_tolstring(L, -2, &nlen);
        const char *val = lua_tolstring(L, -1, &vlen);
        if (strlen(name) != nlen) luaL_argerror(L, idx, "a header name holds a NUL byte");
        if (n - first == MAX_HEADERS) luaL_argerror(L, idx, "more than 64 headers");
        vus[n].vtype = RD_KAFKA_VTYPE_HEADER;
        vus[n].u.header.name = name;
        vus[n].u.header.val = val;
        vus[n].u.header.size = (ssize_t)vlen;
        n++;
        lua_pop(L, 1);                                  /* stack: ..., name */
    }
    return n;
}

/* p:produce(topic, key, value [, timestamp_ms [, headers [, opaque]]])
 *   -> true | nil, msg, code, librdkafka's error name
 * key and value: strings or nil (nil is Kafka's null, "" an empty one);
 * timestamp_ms: nil for now; headers: { name = "value", ... };
 * opaque: an integer handed back with the delivery report.  The message is
 * copied: the strings may go as soon as produce returns. */
static int l_produce(lua_State *L) {
    producer *p = check_producer(L, 1);
    size_t klen, vlen;
    rd_kafka_vu_t vus[7 + MAX_HEADERS];
    size_t n = 0;
    if (lua_type(L, 2) != LUA_TSTRING) compat_typeerror(L, 2, "string");
    const char *topic = lua_tostring(L, 2);
    const char *key = opt_bytes(L, 3, &klen);
    const char *value = opt_bytes(L, 4, &vlen);
    int has_ts = !lua_isnoneornil(L, 5);
    int64_t ts = compat_optint64(L, 5, 0);
    if (!lua_isnoneornil(L, 6)) luaL_checktype(L, 6, LUA_TTABLE);
    int64_t opaque = compat_optint64(L, 7, 0);

    rd_kafka_topic_t *rkt = topic_handle(p, topic);
    if (!rkt) return push_kafka_error(L, "produce: topic", rd_kafka_last_error(), NULL);
    vus[n].vtype = RD_KAFKA_VTYPE_RKT;          vus[n++].u.rkt = rkt;
    vus[n].vtype = RD_KAFKA_VTYPE_PARTITION;    vus[n++].u.i32 = RD_KAFKA_PARTITION_UA;
    vus[n].vtype = RD_KAFKA_VTYPE_MSGFLAGS;     vus[n++].u.i = RD_KAFKA_MSG_F_COPY;
    vus[n].vtype = RD_KAFKA_VTYPE_KEY;
    vus[n].u.mem.ptr = (void *)key;             vus[n++].u.mem.size = klen;
    vus[n].vtype = RD_KAFKA_VTYPE_VALUE;
    vus[n].u.mem.ptr = (void *)value;           vus[n++].u.mem.size = vlen;
    vus[n].vtype = RD_KAFKA_VTYPE_OPAQUE;       vus[n++].u.ptr = (void *)(intptr_t)opaque;
    if (has_ts) { vus[n].vtype = RD_KAFKA_VTYPE_TIMESTAMP; vus[n++].u.i64 = ts; }
    if (!lua_isnoneornil(L, 6)) n = add_headers(L, 6, vus, n);

    rd_kafka_error_t *e = rd_kafka_produceva(p->rk, vus, n);
    if (e) {
        rd_kafka_resp_err_t err = rd_kafka_error_code(e);
        lua_pushnil(L);
        lua_pushfstring(L, "produce to %s: %s", topic, rd_kafka_error_string(e));
        lua_pushstring(L, code_of(err));
        lua_pushstring(L, rd_kafka_err2name(err));
        rd_kafka_error_destroy(e);
        return 4;
    }
    p->produced++;
    lua_pushboolean(L, 1);
    return 1;
}

/* v in decimal into buf (at least 21 bytes, not terminated); the length.
 * snprintf's share of produce_log was a few per cent. */
static int format_offset(char *buf, int64_t v) {
    char tmp[24];
    int n = 0, len = 0;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do { tmp[n++] = (char)('0' + u % 10); u /= 10; } while (u);
    if (v < 0) buf[len++] = '-';
    while (n) buf[len++] = tmp[--n];
    return len;
}

/* The read-only handle on dir, opened on first use and kept. */
static tk_log *reader_for(producer *p, const char *dir, tk_err *e) {
    if (p->reader && strcmp(p->reader_dir, dir) == 0) return p->reader;
    char *copy = strdup(dir);
    if (!copy) {
        e->code = TK_NOMEM;
        snprintf(e->msg, sizeof e->msg, "produce_log: out of memory");
        return NULL;
    }
    tk_log_opts o;
    tk_log *log;
    tk_log_opts_init(&o);
    o.mode = TK_LOG_READONLY;
    if (tk_log_open(dir, &o, &log, e) != TK_OK) { free(copy); return NULL; }
    tk_log_close(p->reader);
    free(p->reader_dir);
    p->reader = log;
    p->reader_dir = copy;
    return log;
}

/* p:produce_log(topic, dir, from, to [, header]) -> n, next, status [, msg, code]
 * Produces the records [from, to) of the takhin log in dir, in order, each
 * with its key, value and timestamp, its offset as the opaque and, when
 * header is given, a header of that name holding the offset in decimal.
 * Stops early at a record it cannot produce.  Returns how many it
 * produced, the offset of the first it did not, and why it stopped:
 * "done" (next == to), "full" (librdkafka's queue; try later), "failed"
 * (the record at next was refused: msg, code), "fatal" (the producer is
 * dead: msg), or "error" (the log could not be read at next: msg and
 * takhin's code).  `to` is clamped to the high water mark; a `from`
 * outside [base offset, high water mark] returns nil, msg, "OUT_OF_RANGE". */
static int l_produce_log(lua_State *L) {
    producer *p = check_producer(L, 1);
    static const char empty[1] = "";
    if (lua_type(L, 2) != LUA_TSTRING) compat_typeerror(L, 2, "string");
    if (lua_type(L, 3) != LUA_TSTRING) compat_typeerror(L, 3, "string");
    const char *topic = lua_tostring(L, 2), *dir = lua_tostring(L, 3);
    int64_t from = compat_checkint64(L, 4), to = compat_checkint64(L, 5);
    const char *header = lua_isnoneornil(L, 6) ? NULL : luaL_checkstring(L, 6);
    tk_err e;
    memset(&e, 0, sizeof e);
    tk_log *log = reader_for(p, dir, &e);
    if (!log) return push_tk_error(L, &e);
    rd_kafka_topic_t *rkt = topic_handle(p, topic);
    if (!rkt) return push_kafka_error(L, "produce_log: topic", rd_kafka_last_error(), NULL);

    int64_t n = 0, next = from;
    const char *status = "done";
    char msg[ERRLEN];
    const char *code = NULL;
    tk_iter *it = NULL;
    msg[0] = '\0';
    if (to > from && tk_iter_open(log, from, to, &it, &e) != TK_OK) return push_tk_error(L, &e);
    while (it) {
        int done = 0;
        if (tk_iter_next(it, &p->rec, &done, &e) != TK_OK) {
            status = "error";
            snprintf(msg, sizeof msg, "%s", e.msg);
            code = tk_code_name(e.code);
            break;
        }
        if (done) break;
        const tk_record *r = &p->rec;
        char num[24];
        int numlen = format_offset(num, r->offset);
        rd_kafka_vu_t vus[8];
        size_t k = 0;
        vus[k].vtype = RD_KAFKA_VTYPE_RKT;          vus[k++].u.rkt = rkt;
        vus[k].vtype = RD_KAFKA_VTYPE_PARTITION;    vus[k++].u.i32 = RD_KAFKA_PARTITION_UA;
        vus[k].vtype = RD_KAFKA_VTYPE_MSGFLAGS;     vus[k++].u.i = RD_KAFKA_MSG_F_COPY;
        /* absent key: NULL (Kafka's null); empty key or value: "" (never NULL) */
        vus[k].vtype = RD_KAFKA_VTYPE_KEY;
        vus[k].u.mem.ptr = r->has_key ? (void *)(r->key ? (const void *)r->key : (const void *)empty) : NULL;
        vus[k++].u.mem.size = r->has_key ? r->key_len : 0;
        vus[k].vtype = RD_KAFKA_VTYPE_VALUE;
        vus[k].u.mem.ptr = (void *)(r->value ? (const void *)r->value : (const void *)empty);
        vus[k++].u.mem.size = r->value_len;
        vus[k].vtype = RD_KAFKA_VTYPE_OPAQUE;       vus[k++].u.ptr = (void *)(intptr_t)r->offset;
        vus[k].vtype = RD_KAFKA_VTYPE_TIMESTAMP;    vus[k++].u.i64 = r->timestamp;
        if (header) {
            vus[k].vtype = RD_KAFKA_VTYPE_HEADER;
            vus[k].u.header.name = header;
            vus[k].u.header.val = num;
            vus[k++].u.header.size = numlen;
        }
        rd_kafka_error_t *err = rd_kafka_produceva(p->rk, vus, k);
        if (err) {
            rd_kafka_resp_err_t ec = rd_kafka_error_code(err);
            status = ec == RD_KAFKA_RESP_ERR__QUEUE_FULL ? "full" :
                     ec == RD_KAFKA_RESP_ERR__FATAL ? "fatal" : "failed";
            snprintf(msg, sizeof msg, "produce offset %lld to %s: %s", (long long)r->offset, topic,
                     rd_kafka_error_string(err));
            code = code_of(ec);
            rd_kafka_error_destroy(err);
            break;
        }
        n++;
        next = r->offset + 1;
        p->produced++;
    }
    tk_iter_close(it);
    compat_pushint64(L, n);
    compat_pushint64(L, next);
    lua_pushstring(L, status);
    if (!code) return 3;
    lua_pushstring(L, msg);
    lua_pushstring(L, code);
    return 5;
}

/* Hands the stored delivery reports to Lua: an array of the opaques
 * delivered, an array of { offset =, error =, code =, name = } for those
 * that failed, and the number of reports lost (out of memory: the caller
 * must treat every message in flight as undelivered). */
static int push_reports(lua_State *L, producer *p) {
    size_t nd = 0, nf = 0;
    for (size_t i = 0; i < p->n_reports; i++) {
        if (p->reports[i].err) nf++;
        else nd++;
    }
    lua_createtable(L, (int)nd, 0);                     /* stack: delivered */
    lua_createtable(L, (int)nf, 0);                     /* stack: delivered, failed */
    nd = nf = 0;
    for (size_t i = 0; i < p->n_reports; i++) {
        const report *r = &p->reports[i];
        if (!r->err) {
            compat_pushint64(L, r->opaque);
            lua_rawseti(L, -3, (int)++nd);
            continue;
        }
        lua_createtable(L, 0, 5);
        compat_pushint64(L, r->opaque);
        lua_setfield(L, -2, "offset");
        lua_pushinteger(L, r->partition);
        lua_setfield(L, -2, "partition");
        lua_pushstring(L, rd_kafka_err2str(r->err));
        lua_setfield(L, -2, "error");
        lua_pushstring(L, code_of(r->err));
        lua_setfield(L, -2, "code");
        lua_pushstring(L, rd_kafka_err2name(r->err));
        lua_setfield(L, -2, "name");
        lua_rawseti(L, -2, (int)++nf);
    }
    p->n_reports = 0;
    lua_pushinteger(L, p->lost_reports);
    p->lost_reports = 0;
    return 3;
}

/* A timeout in ms from argument idx: default def, -1 for ever. */
static int check_timeout(lua_State *L, int idx, int def) {
    int64_t t = compat_optint64(L, idx, def);
    if (t < -1) luaL_argerror(L, idx, "timeout must be >= 0 ms, or -1 for ever");
    return t > 0x7fffffff ? 0x7fffffff : (int)t;
}

/* p:poll([timeout_ms]) -> delivered, failed, lost
 * Serves librdkafka's callbacks, waiting up to timeout_ms (default 0) for
 * one; returns the delivery reports gathered since the last poll. */
static int l_poll(lua_State *L) {
    producer *p = check_producer(L, 1);
    int t = check_timeout(L, 2, 0);
    if (p->n_reports == 0) rd_kafka_poll(p->rk, t);
    else rd_kafka_poll(p->rk, 0);                   /* reports waiting: no waiting */
    return push_reports(L, p);
}

/* p:flush([timeout_ms]) -> true | false, queued
 * Waits up to timeout_ms (default -1: for ever) until every message is
 * delivered or failed; the reports wait for the next poll(). */
static int l_flush(lua_State *L) {
    producer *p = check_producer(L, 1);
    int t = check_timeout(L, 2, -1);
    if (rd_kafka_flush(p->rk, t) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushboolean(L, 0);
    lua_pushinteger(L, rd_kafka_outq_len(p->rk));
    return 2;
}

/* p:purge() -> true: every message queued or in flight fails with
 * code CANCELED (its report comes with the next poll). */
static int l_purge(lua_State *L) {
    producer *p = check_producer(L, 1);
    rd_kafka_resp_err_t err = rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE |
                                                    RD_KAFKA_PURGE_F_INFLIGHT);
    if (err) return push_kafka_error(L, "purge", err, NULL);
    lua_pushboolean(L, 1);
    return 1;
}

/* p:queued() -> messages (and other requests) not yet done */
static int l_queued(lua_State *L) {
    producer *p = check_producer(L, 1);
    lua_pushinteger(L, rd_kafka_outq_len(p->rk));
    return 1;
}

/* p:fatal() -> nil | message, librdkafka's error name: the producer can
 * do nothing more and must be replaced (idempotence's fatal errors). */
static int l_fatal(lua_State *L) {
    producer *p = check_producer(L, 1);
    char buf[ERRLEN];
    rd_kafka_resp_err_t err = rd_kafka_fatal_error(p->rk, buf, sizeof buf);
    if (!err) return 0;
    lua_pushstring(L, buf);
    lua_pushstring(L, rd_kafka_err2name(err));
    return 2;
}

static void set_int(lua_State *L, const char *name, int64_t v) {
    compat_pushint64(L, v);
    lua_setfield(L, -2, name);
}

/* p:stats() -> { produced, delivered, failed, queued, errors, last_error,
 * last_error_name, name, librdkafka (the JSON of the last statistics
 * callback, with statistics.interval.ms) } */
static int l_stats(lua_State *L) {
    producer *p = check_producer(L, 1);
    lua_createtable(L, 0, 9);
    set_int(L, "produced", p->produced);
    set_int(L, "delivered", p->delivered);
    set_int(L, "failed", p->failed);
    set_int(L, "queued", rd_kafka_outq_len(p->rk));
    set_int(L, "errors", p->errors);
    lua_pushstring(L, rd_kafka_name(p->rk));
    lua_setfield(L, -2, "name");
    if (p->last_error[0]) {
        lua_pushstring(L, p->last_error);
        lua_setfield(L, -2, "last_error");
        lua_pushstring(L, rd_kafka_err2name(p->last_err));
        lua_setfield(L, -2, "last_error_name");
    }
    if (p->stats_json) {
        lua_pushstring(L, p->stats_json);
        lua_setfield(L, -2, "librdkafka");
    }
    return 1;
}

/* ------------------------------------------------------------------ */
/* Module                                                               */
/* ------------------------------------------------------------------ */

/* kafka.clock_ms() -> milliseconds of a monotonic clock (for backoffs). */
static int l_clock_ms(lua_State *L) {
    compat_pushint64(L, now_ms());
    return 1;
}

static const luaL_Reg producer_methods[] = {
    { "produce", l_produce },
    { "produce_log", l_produce_log },
    { "poll", l_poll },
    { "flush", l_flush },
    { "purge", l_purge },
    { "queued", l_queued },
    { "fatal", l_fatal },
    { "stats", l_stats },
    { "close", l_close },
    { NULL, NULL }
};

static const luaL_Reg producer_meta[] = {
    { "__gc", l_gc },
    { "__close", l_gc },
    { "__tostring", l_tostring },
    { NULL, NULL }
};

static const luaL_Reg module_funcs[] = {
    { "producer", l_producer },
    { "clock_ms", l_clock_ms },
    { NULL, NULL }
};

TK_EXPORT int luaopen_takhin_kafka(lua_State *L) {
    if (luaL_newmetatable(L, PRODUCER_MT)) {          /* once per Lua state */
        luaL_setfuncs(L, producer_meta, 0);
        luaL_newlib(L, producer_methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    luaL_newlib(L, module_funcs);
    lua_pushstring(L, rd_kafka_version_str());
    lua_setfield(L, -2, "librdkafka_version");
    return 1;
}
