/*
 * group_commit.c -- the C side of bench/append_bench.lua's sync = "always"
 * rows: appends from several threads of one process, and the raw floor
 * they are compared with.  Built by `make bench` into $(BUILD)/bench/.
 *
 *   group_commit takhin DIR N THREADS VALUE
 *       opens a new log in DIR with sync = "always" (one exclusive
 *       handle) and has THREADS threads append N records between them
 *       (N / THREADS each, one tk_log_append per record), all starting
 *       together at a barrier;
 *   group_commit raw FILE N VALUE
 *       writes the same N framed records (docs/FORMAT.md) to a new FILE
 *       with one write(2) and one fdatasync(2) per record: what a
 *       hand-rolled durable log does at the least;
 *   group_commit check DIR FILE N VALUE
 *       both of the above with one thread, untimed, then exits 1 unless
 *       the raw file is byte for byte the log's segment;
 *   group_commit rawprocs FILE N PROCS VALUE
 *       PROCS processes (fork) write the same N framed records to a new
 *       FILE, no fsync: each takes the next record number from a counter
 *       in shared memory (an atomic add, no lock) and pwrite(2)s the
 *       record at its place -- the floor for shared-mode appends from
 *       several processes into one file, which bench/append_bench.lua
 *       shows beside them.
 *
 * The timed modes print one line:
 *
 *   records N seconds S appends A fsyncs F
 *
 * (wall time from the barrier to the last thread's end; for takhin the
 * log's append and fsync counters, for raw N and N).  Record o (in the
 * order it is written) has the key "key%07d" (10 bytes), a VALUE-byte
 * printable value and the timestamp T0 + o, as in bench/log_bench.lua.
 * Opening, creating and closing happen outside the timed interval.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "takhin.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define KEY_LEN   10                    /* "key0000042" */
#define KEY_BUF   24
#define HEADER    34                    /* framed size = HEADER + key + value */
#define T0        1700000000000LL
#define MAX_VALUE (1 << 20)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, const char *why) {
    fprintf(stderr, "group_commit: %s: %s\n", what, why);
    exit(2);
}

/* ------------------------------------------------------------------ */
/* Records                                                              */
/* ------------------------------------------------------------------ */

static size_t value_len;
static unsigned char *value_pool;       /* value of record o: value_pool + o % 64 */

static void make_pool(void) {
    value_pool = malloc(value_len + 64);
    if (!value_pool) die("malloc", strerror(ENOMEM));
    for (size_t i = 0; i < value_len + 64; i++)
        value_pool[i] = (unsigned char)(33 + (i * 7919u + 13u) % 94u);
}

static tk_rec_in record(int64_t o, char key[KEY_BUF]) {
    snprintf(key, KEY_BUF, "key%07" PRId64, o % 10000000);
    return (tk_rec_in){ .key = key, .key_len = KEY_LEN, .has_key = 1,
                        .value = value_pool + o % 64, .value_len = value_len,
                        .timestamp = T0 + o };
}

static void put32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* Frames record o into buf (HEADER + key + value bytes): docs/FORMAT.md. */
static size_t frame(unsigned char *buf, int64_t o) {
    char key[KEY_BUF];
    tk_rec_in r = record(o, key);
    size_t n = HEADER + r.key_len + r.value_len;
    put32(buf, (uint32_t)(n - 4));
    buf[8] = TK_FORMAT_VERSION;
    buf[9] = 1;                                         /* has a key */
    put64(buf + 10, (uint64_t)o);
    put64(buf + 18, (uint64_t)r.timestamp);
    put32(buf + 26, (uint32_t)r.key_len);
    put32(buf + 30, (uint32_t)r.value_len);
    memcpy(buf + HEADER, r.key, r.key_len);
    memcpy(buf + HEADER + r.key_len, r.value, r.value_len);
    put32(buf + 4, tk_crc32c(0, buf + 8, n - 8));
    return n;
}

/* ------------------------------------------------------------------ */
/* takhin: THREADS threads appending through one handle                 */
/* ------------------------------------------------------------------ */

static tk_log *g_log;
static pthread_barrier_t g_start;
static int64_t g_per;
static atomic_int g_failed;

static void *appender(void *arg) {
    int64_t t = (int64_t)(intptr_t)arg;
    pthread_barrier_wait(&g_start);
    for (int64_t i = 0; i < g_per && !atomic_load(&g_failed); i++) {
        char key[KEY_BUF];
        tk_rec_in r = record(t * g_per + i, key);
        tk_err err;
        if (tk_log_append(g_log, &r, 1, NULL, &err) != TK_OK) {
            if (atomic_fetch_add(&g_failed, 1) == 0) fprintf(stderr, "group_commit: %s\n", err.msg);
            return NULL;
        }
    }
    return NULL;
}

static int run_takhin(const char *dir, int64_t n, int threads, int timed) {
    pthread_t th[64];
    tk_log_opts opts;
    tk_log_stats st;
    tk_err err;
    double t0, t1;
    if (threads < 1 || threads > 64 || n % threads != 0) die("threads", "1 .. 64, dividing N");
    tk_log_opts_init(&opts);
    opts.sync = TK_SYNC_ALWAYS;
    if (tk_log_open(dir, &opts, &g_log, &err) != TK_OK) die("open", err.msg);
    g_per = n / threads;
    pthread_barrier_init(&g_start, NULL, (unsigned)threads + 1);
    for (int i = 0; i < threads; i++)
        if (pthread_create(&th[i], NULL, appender, (void *)(intptr_t)i) != 0)
            die("pthread_create", strerror(errno));
    pthread_barrier_wait(&g_start);
    t0 = now_s();
    for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
    t1 = now_s();
    pthread_barrier_destroy(&g_start);
    tk_log_stats_get(g_log, &st);
    if (st.high_water_mark != n) atomic_fetch_add(&g_failed, 1);
    tk_log_close(g_log);
    if (atomic_load(&g_failed)) {
        fprintf(stderr, "group_commit: %" PRId64 " of %" PRId64 " records appended\n",
                st.high_water_mark, n);
        return 1;
    }
    if (timed)
        printf("records %" PRId64 " seconds %.9f appends %" PRIu64 " fsyncs %" PRIu64 "\n", n,
               t1 - t0, st.appends, st.fsyncs);
    return 0;
}

/* ------------------------------------------------------------------ */
/* raw: write(2) + fdatasync(2) per record                              */
/* ------------------------------------------------------------------ */

static int run_raw(const char *path, int64_t n, int timed) {
    unsigned char *buf = malloc(HEADER + KEY_LEN + value_len);
    double t0, t1;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) die(path, strerror(errno));
    if (!buf) die("malloc", strerror(ENOMEM));
    t0 = now_s();
    for (int64_t o = 0; o < n; o++) {
        size_t len = frame(buf, o);
        ssize_t w = write(fd, buf, len);
        if (w != (ssize_t)len) die(path, w < 0 ? strerror(errno) : "short write");
        if (fdatasync(fd) != 0) die(path, strerror(errno));
    }
    t1 = now_s();
    if (close(fd) != 0) die(path, strerror(errno));
    free(buf);
    if (timed)
        printf("records %" PRId64 " seconds %.9f appends %" PRId64 " fsyncs %" PRId64 "\n", n,
               t1 - t0, n, n);
    return 0;
}

/* ------------------------------------------------------------------ */
/* rawprocs: processes pwrite(2) into one file, offsets from a counter   */
/* ------------------------------------------------------------------ */

static int run_rawprocs(const char *path, int64_t n, int procs) {
    struct shared { int64_t next; int go; int failed; } *sh;
    size_t len = HEADER + KEY_LEN + value_len;
    double t0, t1;
    int fd, status, failed = 0;
    if (procs < 1 || procs > 64) die("PROCS", "1 .. 64");
    sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) die("mmap", strerror(errno));
    memset(sh, 0, sizeof *sh);
    if ((fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0)
        die(path, strerror(errno));
    for (int p = 0; p < procs; p++) {
        pid_t pid = fork();
        if (pid < 0) die("fork", strerror(errno));
        if (pid == 0) {
            unsigned char *buf = malloc(len);
            if (!buf) _exit(3);
            while (!__atomic_load_n(&sh->go, __ATOMIC_ACQUIRE)) {}
            for (;;) {
                int64_t o = __atomic_fetch_add(&sh->next, 1, __ATOMIC_ACQ_REL);
                if (o >= n) break;
                frame(buf, o);
                if (pwrite(fd, buf, len, (off_t)o * (off_t)len) != (ssize_t)len) {
                    __atomic_store_n(&sh->failed, 1, __ATOMIC_RELEASE);
                    _exit(1);
                }
            }
            _exit(0);
        }
    }
    t0 = now_s();
    __atomic_store_n(&sh->go, 1, __ATOMIC_RELEASE);
    while (wait(&status) > 0)
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) failed = 1;
    t1 = now_s();
    close(fd);
    if (failed || sh->failed) die(path, "a writer failed");
    munmap(sh, sizeof *sh);
    printf("records %" PRId64 " seconds %.9f appends %" PRId64 " fsyncs 0\n", n, t1 - t0, n);
    return 0;
}

/* ------------------------------------------------------------------ */
/* check: the raw file is the log's segment                             */
/* ------------------------------------------------------------------ */

static unsigned char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    unsigned char *b = NULL;
    long n;
    if (!f) die(path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0)
        die(path, strerror(errno));
    if (!(b = malloc((size_t)n + 1)) || fread(b, 1, (size_t)n, f) != (size_t)n) die(path, "read");
    fclose(f);
    *len = (size_t)n;
    return b;
}

static int run_check(const char *dir, const char *path, int64_t n) {
    char seg[4096];
    size_t a, b;
    unsigned char *x, *y;
    int same;
    if (run_takhin(dir, n, 1, 0) != 0 || run_raw(path, n, 0) != 0) return 1;
    snprintf(seg, sizeof seg, "%s/%020d.log", dir, 0);
    x = slurp(seg, &a);
    y = slurp(path, &b);
    same = a == b && memcmp(x, y, a) == 0;
    printf("%s: %zu and %zu bytes\n", same ? "identical" : "DIFFERENT", a, b);
    free(x);
    free(y);
    return same ? 0 : 1;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "takhin") == 0 && argc == 6) {
        value_len = (size_t)atol(argv[5]);
        if (value_len > MAX_VALUE) die("VALUE", "too large");
        make_pool();
        return run_takhin(argv[2], atoll(argv[3]), atoi(argv[4]), 1);
    }
    if (strcmp(mode, "raw") == 0 && argc == 5) {
        value_len = (size_t)atol(argv[4]);
        if (value_len > MAX_VALUE) die("VALUE", "too large");
        make_pool();
        return run_raw(argv[2], atoll(argv[3]), 1);
    }
    if (strcmp(mode, "check") == 0 && argc == 6) {
        value_len = (size_t)atol(argv[5]);
        if (value_len > MAX_VALUE) die("VALUE", "too large");
        make_pool();
        return run_check(argv[2], argv[3], atoll(argv[4]));
    }
    if (strcmp(mode, "rawprocs") == 0 && argc == 6) {
        value_len = (size_t)atol(argv[5]);
        if (value_len > MAX_VALUE) die("VALUE", "too large");
        make_pool();
        return run_rawprocs(argv[2], atoll(argv[3]), atoi(argv[4]));
    }
    fprintf(stderr, "usage: group_commit takhin DIR N THREADS VALUE | raw FILE N VALUE | "
                    "check DIR FILE N VALUE | rawprocs FILE N PROCS VALUE\n");
    return 2;
}
