/*
 * state.c -- the log's shared state (state.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "fault.h"
#include "fs.h"
#include "names.h"
#include "state.h"
#include "sys.h"
#include "internal.h"

_Static_assert(sizeof(tk_shared) <= TK_STATE_SIZE, "tk_shared must fit in one page");
_Static_assert(TK_C_END <= TK_STATE_COUNTERS, "the counters must fit");

#define MAGIC "takhinST"

/* The seqlock's fields are read with acquire and written with release
 * loads and stores rather than around fences (ThreadSanitizer does not
 * understand fences): a reader that sees a new field value also sees the
 * odd sequence stored before it, and retries. */
#define LOAD(p)      __atomic_load_n(p, __ATOMIC_ACQUIRE)
#define LOAD_ACQ(p)  __atomic_load_n(p, __ATOMIC_ACQUIRE)
#define STORE(p, v)  __atomic_store_n(p, v, __ATOMIC_RELEASE)

/* getpid(2) is a system call (glibc stopped caching it): the pid is kept,
 * and forgotten in a forked child. */
static int32_t my_pid_cache;
static pthread_once_t my_pid_once = PTHREAD_ONCE_INIT;
static void forget_pid(void) { __atomic_store_n(&my_pid_cache, 0, __ATOMIC_RELAXED); }
static void register_forget(void) { pthread_atfork(NULL, NULL, forget_pid); }

static int32_t my_pid(void) {
    int32_t pid = __atomic_load_n(&my_pid_cache, __ATOMIC_RELAXED);
    if (pid == 0) {
        pthread_once(&my_pid_once, register_forget);
        pid = (int32_t)getpid();
        __atomic_store_n(&my_pid_cache, pid, __ATOMIC_RELAXED);
    }
    return pid;
}

/* ------------------------------------------------------------------ */
/* futex                                                                */
/* ------------------------------------------------------------------ */

/* Not FUTEX_PRIVATE_FLAG: sleepers and wakers are in different processes,
 * meeting in the same page of the same file. */
static int futex_wait(uint32_t *word, uint32_t val, const struct timespec *rel) {
    return (int)syscall(SYS_futex, word, FUTEX_WAIT, val, rel, NULL, 0);
}

static void futex_wake_all(uint32_t *word) {
    syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* ------------------------------------------------------------------ */
/* Opening                                                              */
/* ------------------------------------------------------------------ */

static int init_mutex(pthread_mutex_t *mu, int shared) {
    pthread_mutexattr_t a;
    int rc;
    pthread_mutexattr_init(&a);
    if (shared) {
        pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
        pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    }
    rc = pthread_mutex_init(mu, &a);
    pthread_mutexattr_destroy(&a);
    return rc;
}

static tk_code open_private(tk_state *st, tk_err *err);

static uint64_t random64(void) {
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, GRND_NONBLOCK) != (ssize_t)sizeof v)
        v = (uint64_t)getpid() * 0x9E3779B97F4A7C15ull ^ (uint64_t)time(NULL);
    return v;
}

static int header_ok(const tk_shared *sh) {
    return memcmp(sh->magic, MAGIC, 8) == 0 && sh->version == TK_STATE_VERSION &&
           sh->size == TK_STATE_SIZE && sh->struct_size == sizeof(tk_shared) &&
           sh->mutex_size == sizeof(pthread_mutex_t);
}

tk_code tk_state_open_private(tk_state *st, tk_err *err) {
    memset(st, 0, sizeof *st);
    st->slot = -1;
    return open_private(st, err);
}

static tk_code open_private(tk_state *st, tk_err *err) {
    st->sh = tk_calloc(1, sizeof *st->sh);
    if (!st->sh) return tk_fail(err, TK_NOMEM, "state: out of memory");
    st->fd = -1;
    st->is_private = 1;
    st->writable = 1;
    st->created = 1;
    init_mutex(&st->sh->mu, 0);
    return TK_OK;
}

/* We hold the file exclusively: give it its size (allocated, so that a
 * full disk fails here and not as SIGBUS on a later store), map it and
 * reset everything but the generation, which only moves on. */
static tk_code init_file(tk_state *st, const char *path, tk_err *err) {
    struct stat sb;
    int rc;
    void *p;
    if (fstat(st->fd, &sb) < 0) return tk_fail_errno(err, errno, "stat %s", path);
    if ((rc = posix_fallocate(st->fd, 0, TK_STATE_SIZE)) != 0)
        return tk_fail_errno(err, rc, "allocate %s", path);
    p = mmap(NULL, TK_STATE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, st->fd, 0);
    if (p == MAP_FAILED) return tk_fail_errno(err, errno, "map %s", path);
    st->sh = p;
    st->old_gen = (uint64_t)sb.st_size >= TK_STATE_SIZE && header_ok(st->sh) ? st->sh->gen : 0;
    memset(st->sh, 0, TK_STATE_SIZE);
    if (init_mutex(&st->sh->mu, 1) != 0)
        return tk_fail(err, TK_IO, "state %s: cannot make a process-shared mutex", path);
    st->created = 1;
    st->writable = 1;
    return TK_OK;
}

static tk_code map_live(tk_state *st, const char *path, tk_err *err) {
    void *p = mmap(NULL, TK_STATE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, st->fd, 0);
    if (p == MAP_FAILED) return tk_fail_errno(err, errno, "map %s", path);
    st->sh = p;
    st->writable = 1;
    if (!header_ok(st->sh))
        return tk_fail(err, TK_INVALID, "open %s: in use by a takhin of another version or "
                       "build (state version %u); close the other handles first", path,
                       st->sh->version);
    return TK_OK;
}

/* 1 when fd still is the file at path (nobody replaced or removed it). */
static int same_file(int fd, const char *path) {
    struct stat a, b;
    return fstat(fd, &a) == 0 && stat(path, &b) == 0 && a.st_ino == b.st_ino &&
           a.st_dev == b.st_dev && (uint64_t)a.st_size >= TK_STATE_SIZE;
}

tk_code tk_state_open(const char *dir, tk_state *st, tk_err *err) {
    char path[PATH_MAX];
    tk_code rc;
    memset(st, 0, sizeof *st);
    st->fd = -1;
    st->slot = -1;
    if (tk_path_join(path, sizeof path, dir, TK_STATE_FILE) < 0)
        return tk_fail_errno(err, errno, "open %s", dir);
    for (int tries = 0;; tries++) {
        st->fd = tk_open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (st->fd < 0) {
            int e = errno;
            if (e == EACCES || e == EROFS || e == EPERM) return open_private(st, err);
            return tk_fail_errno(err, e, "open %s", path);
        }
        if (flock(st->fd, LOCK_EX | LOCK_NB) == 0) {
            rc = init_file(st, path, err);
            if (rc != TK_OK) tk_state_close(st);
            return rc;
        }
        while (flock(st->fd, LOCK_SH) < 0) {
            if (errno != EINTR) {
                rc = tk_fail_errno(err, errno, "lock %s", path);
                tk_state_close(st);
                return rc;
            }
        }
        /* Someone may have removed or replaced the file, or an initializer
         * died before publishing: start over. */
        if (same_file(st->fd, path)) {
            if ((rc = map_live(st, path, err)) != TK_OK) { tk_state_close(st); return rc; }
            if (LOAD_ACQ(&st->sh->ready)) return TK_OK;
            munmap(st->sh, TK_STATE_SIZE);
            st->sh = NULL;
        }
        close(st->fd);
        st->fd = -1;
        if (tries > 1000) return tk_fail(err, TK_IO, "open %s: never initialized", path);
        sched_yield();
    }
}

void tk_state_ready(tk_state *st, tk_layout *l) {
    tk_shared *sh = st->sh;
    l->gen = (st->old_gen + 2) & ~(uint64_t)1;
    if (l->gen == 0) l->gen = 2;
    sh->gen = l->gen;
    tk_state_publish(st, l);
    /* What is on disk when a log is first opened counts as durable: the
     * group commit only ever waits for records appended since. */
    sh->synced = l->next;
    sh->dir_synced = l->active_base;
    memcpy(sh->magic, MAGIC, 8);
    sh->version = TK_STATE_VERSION;
    sh->size = TK_STATE_SIZE;
    sh->struct_size = sizeof(tk_shared);
    sh->mutex_size = sizeof(pthread_mutex_t);
    sh->boot = random64();
    __atomic_store_n(&sh->ready, 1, __ATOMIC_RELEASE);
    st->created = 0;
    if (st->fd >= 0) {
        if (msync(sh, TK_STATE_SIZE, MS_ASYNC) < 0) { /* advisory */ }
        /* Converting EX to SH is not atomic: another opener may slip in
         * and initialize again from the same files -- same layout, next
         * generation, which only makes us reload. */
        while (flock(st->fd, LOCK_SH) < 0 && errno == EINTR) {}
    }
}

void tk_state_close(tk_state *st) {
    if (!st->sh && st->fd < 0) return;
    tk_state_remove_writer(st);
    if (st->is_private) {
        if (st->sh) pthread_mutex_destroy(&st->sh->mu);
        free(st->sh);
    } else if (st->sh) {
        munmap(st->sh, TK_STATE_SIZE);
    }
    if (st->fd >= 0) close(st->fd);       /* drops our flock */
    st->sh = NULL;
    st->fd = -1;
}

/* ------------------------------------------------------------------ */
/* The lock                                                             */
/* ------------------------------------------------------------------ */

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* The wait for the lock is in slices of 50 ms: a robust mutex can lose a
 * wake-up.  An unlock wakes waiter B; before B runs, writer A takes the
 * free lock on the fast path (which does not mark it contended); B is
 * killed; the kernel, seeing the lock held, wakes nobody for B; A's unlock
 * then sees no waiter and wakes nobody either, and waiter C sleeps on a
 * free lock for as long as nobody else comes.  A waiter whose slice ends
 * simply tries again.  (A fast lock costs nothing more: the slices only
 * start when the lock is held.) */
static int lock_slices(pthread_mutex_t *mu) {
    int rc = pthread_mutex_trylock(mu);
    /* Held only for a moment most of the time (a shared append holds it
     * to reserve, not to write): a short spin saves sleeping in the
     * kernel and being woken. */
    for (int i = 0; rc == EBUSY && i < 64; i++) {
        for (int k = 0; k < 8; k++) cpu_relax();
#ifdef __GLIBC__
        /* look before trying: a failed try takes the line from the holder */
        if (__atomic_load_n(&mu->__data.__lock, __ATOMIC_RELAXED) != 0) continue;
#endif
        rc = pthread_mutex_trylock(mu);
    }
    while (rc == EBUSY || rc == ETIMEDOUT || rc == EINTR) {
        /* timedlock's clock is CLOCK_REALTIME: a step of the clock only
         * makes one slice shorter or longer. */
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 50 * 1000000L;
        if (until.tv_nsec >= 1000000000L) { until.tv_sec++; until.tv_nsec -= 1000000000L; }
        rc = pthread_mutex_timedlock(mu, &until);
    }
    return rc;
}

tk_code tk_state_lock(tk_state *st, const char *dir, int *repair, tk_err *err) {
    int rc;
    *repair = 0;
    rc = lock_slices(&st->sh->mu);
    if (rc == EOWNERDEAD) {
        *repair = 1;                    /* a holder died: caller repairs */
        return TK_OK;
    }
    if (rc != 0) return tk_fail_errno(err, rc, "lock %s/" TK_STATE_FILE, dir);
    /* An odd seqlock is not looked at here: a shared append publishes at
     * its turn without the lock.  writer_locked looks once none is under
     * way. */
    if (LOAD(&st->sh->stale)) *repair = 1;
    return TK_OK;
}

void tk_state_repaired(tk_state *st, tk_layout *l, int ok) {
    tk_shared *sh = st->sh;
    /* Whatever the dead holder was doing, every handle must reload. */
    l->gen = (LOAD(&sh->gen) | 1) + 1;
    if (LOAD(&sh->seq) & 1) STORE(&sh->seq, LOAD(&sh->seq) + 1);
    STORE(&sh->gen, l->gen);
    tk_state_publish(st, l);
    STORE(&sh->stale, ok ? 0u : 1u);
    pthread_mutex_consistent(&sh->mu);      /* EINVAL when it was not owner-dead */
}

void tk_state_unlock(tk_state *st) {
    pthread_mutex_unlock(&st->sh->mu);
}

/* ------------------------------------------------------------------ */
/* The seqlock                                                          */
/* ------------------------------------------------------------------ */

static void copy_layout(const tk_shared *sh, tk_layout *l) {
    l->gen = LOAD(&sh->gen);
    l->start = LOAD(&sh->start);
    l->active_base = LOAD(&sh->active_base);
    l->next = LOAD(&sh->next);
    l->size = LOAD(&sh->size_);
    l->idx_n = LOAD(&sh->idx_n);
    l->since = LOAD(&sh->since);
    l->max_ts = LOAD(&sh->max_ts);
    l->log_crc = LOAD(&sh->log_crc);
    l->idx_crc = LOAD(&sh->idx_crc);
    l->tim_crc = LOAD(&sh->tim_crc);
    l->flags = LOAD(&sh->flags);
}

/* Tries to copy the layout; 0 when the sequence stayed odd or moved for
 * a long while (a writer died inside it, or is very slow). */
static int try_read(const tk_shared *sh, tk_layout *l) {
    for (int spin = 0; spin < 2000; spin++) {
        uint64_t s1 = LOAD_ACQ(&sh->seq), s2;
        if (s1 & 1) {
            if (spin > 100) sched_yield();
            continue;
        }
        copy_layout(sh, l);
        s2 = LOAD(&sh->seq);
        if (s1 == s2) return 1;
    }
    return 0;
}

void tk_state_copy(const tk_state *st, tk_layout *l) { copy_layout(st->sh, l); }

int tk_state_try_read(const tk_state *st, tk_layout *l) {
    return !LOAD(&st->sh->stale) && try_read(st->sh, l);
}

void tk_state_set_stale(tk_state *st) {
    STORE(&st->sh->stale, 1u);
}

/* The seqlock write of l, and the followers' wake-up. */
static void write_layout(tk_state *st, const tk_layout *l, int turn) {
    tk_shared *sh = st->sh;
    uint64_t s = LOAD(&sh->seq) | 1;
    int64_t old_next = LOAD(&sh->next);
    STORE(&sh->seq, s);
    STORE(&sh->gen, l->gen);
    STORE(&sh->start, l->start);
    STORE(&sh->active_base, l->active_base);
    STORE(&sh->size_, l->size);
    STORE(&sh->idx_n, l->idx_n);
    STORE(&sh->since, l->since);
    STORE(&sh->max_ts, l->max_ts);
    STORE(&sh->log_crc, l->log_crc);
    STORE(&sh->idx_crc, l->idx_crc);
    STORE(&sh->tim_crc, l->tim_crc);
    STORE(&sh->flags, l->flags);
    __atomic_store_n(&sh->next, l->next, __ATOMIC_SEQ_CST);
    if (turn) TK_FAULT("append.publishing");
    __atomic_store_n(&sh->seq, s + 1, __ATOMIC_RELEASE);
    /* Followers: see tk_state_wait for why this is race-free. */
    if (l->next != old_next && __atomic_load_n(&sh->waiters, __ATOMIC_SEQ_CST) > 0) {
        __atomic_fetch_add(&sh->wake, 1, __ATOMIC_SEQ_CST);
        if (!st->is_private) futex_wake_all(&sh->wake);
    }
}

/* The reservation at the turn, or -1. */
static int at_turn(const tk_shared *sh, int64_t turn) {
    for (uint32_t used = LOAD(&sh->res_used); used; used &= used - 1) {
        int k = __builtin_ctz(used);
        if (LOAD(&sh->res[k].pid) != 0 && LOAD(&sh->res[k].start) == turn) return k;
    }
    return -1;
}

/* Wakes a reservation's maker sleeping for its turn. */
static void wake_slot(tk_state *st, int k) {
    tk_reservation *r = &st->sh->res[k];
    if (__atomic_load_n(&r->sleeping, __ATOMIC_SEQ_CST)) {
        __atomic_fetch_add(&r->wake, 1, __ATOMIC_SEQ_CST);
        if (!st->is_private) futex_wake_all(&r->wake);
    }
}

/* Wakes what waits for the turn to move: the drains (on turn_wake) and,
 * with all, every maker (the epoch moved); else only the maker whose turn
 * it is now -- one wake-up per publish, not one per waiter. */
static void wake_turn(tk_state *st, int all) {
    tk_shared *sh = st->sh;
    if (__atomic_load_n(&sh->turn_waiters, __ATOMIC_SEQ_CST) > 0) {
        __atomic_fetch_add(&sh->turn_wake, 1, __ATOMIC_SEQ_CST);
        if (!st->is_private) futex_wake_all(&sh->turn_wake);
    }
    if (__atomic_load_n(&sh->sleepers, __ATOMIC_SEQ_CST) == 0) {
        /* nobody asleep (then no slot's line is read) */
    } else if (all) {
        for (int k = 0; k < TK_STATE_RESERVATIONS; k++) wake_slot(st, k);
    } else {
        int k = at_turn(sh, __atomic_load_n(&sh->turn, __ATOMIC_SEQ_CST));
        if (k >= 0) wake_slot(st, k);
    }
}

/* The frontier takes l's active segment (caller holds the lock). */
static void store_frontier(tk_shared *sh, const tk_layout *l) {
    STORE(&sh->res_size, l->size);
    STORE(&sh->res_idx_n, l->idx_n);
    STORE(&sh->res_since, l->since);
    STORE(&sh->res_max_ts, l->max_ts);
    __atomic_store_n(&sh->res_next, l->next, __ATOMIC_SEQ_CST);
}

/* No reservation is under way (the caller holds the lock and drained
 * them): the frontier is the layout. */
static void reset_frontier(tk_state *st, const tk_layout *l) {
    store_frontier(st->sh, l);
    __atomic_store_n(&st->sh->turn, l->next, __ATOMIC_SEQ_CST);
}

void tk_state_publish(tk_state *st, const tk_layout *l) {
    write_layout(st, l, 0);
    reset_frontier(st, l);
    STORE(&st->sh->res_gen, LOAD(&st->sh->res_gen) + 1);
}

void tk_state_begin_change(tk_state *st, tk_layout *l) {
    l->gen |= 1;
    if (l->gen == LOAD(&st->sh->gen)) l->gen += 2;
    tk_state_publish(st, l);
}

void tk_state_end_change(tk_state *st, tk_layout *l) {
    l->gen = (l->gen | 1) + 1;
    tk_state_publish(st, l);
    if (__atomic_load_n(&st->sh->waiters, __ATOMIC_SEQ_CST) > 0) {
        __atomic_fetch_add(&st->sh->wake, 1, __ATOMIC_SEQ_CST);
        if (!st->is_private) futex_wake_all(&st->sh->wake);
    }
}

int64_t tk_state_next(const tk_state *st) { return __atomic_load_n(&st->sh->next, __ATOMIC_ACQUIRE); }
int64_t tk_state_start(const tk_state *st) { return __atomic_load_n(&st->sh->start, __ATOMIC_ACQUIRE); }
int tk_state_seq_odd(const tk_state *st) { return (LOAD(&st->sh->seq) & 1) != 0; }
int tk_state_is_stale(const tk_state *st) { return __atomic_load_n(&st->sh->stale, __ATOMIC_ACQUIRE) != 0; }
uint64_t tk_state_gen(const tk_state *st) { return __atomic_load_n(&st->sh->gen, __ATOMIC_ACQUIRE); }


/* ------------------------------------------------------------------ */
/* Shared appends (log.c, "Shared appends")                             */
/* ------------------------------------------------------------------ */

uint64_t tk_state_res_gen(const tk_state *st) { return LOAD(&st->sh->res_gen); }

void tk_state_frontier(const tk_state *st, tk_layout *f) {
    const tk_shared *sh = st->sh;
    f->next = LOAD(&sh->res_next);
    f->size = LOAD(&sh->res_size);
    f->idx_n = LOAD(&sh->res_idx_n);
    f->since = LOAD(&sh->res_since);
    f->max_ts = LOAD(&sh->res_max_ts);
}

static int max_reservations(void) {
    static int cached;
    int n = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (n == 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        n = cpus < 2 ? 2 : cpus > TK_STATE_RESERVATIONS ? TK_STATE_RESERVATIONS : (int)cpus;
        __atomic_store_n(&cached, n, __ATOMIC_RELAXED);
    }
    return n;
}

/* The slot is filled before the frontier moves: a maker killed in between
 * leaves a slot at the frontier, which tk_state_drain frees. */
int tk_state_reserve(tk_state *st, const tk_layout *f, const tk_layout *after, uint32_t *epoch) {
    tk_shared *sh = st->sh;
    uint32_t used = LOAD(&sh->res_used);
    int k;
    if (st->is_private) return -1;
    /* At most one under way per CPU: a maker beyond that would mostly
     * sleep for its turn, and every turn would then cost a wake-up.  It
     * appends under the lock instead, which lets whoever runs go on. */
    if (__builtin_popcount(used) >= max_reservations()) return -1;
    k = __builtin_ctz(~used);
    STORE(&sh->res[k].start, f->next);
    STORE(&sh->res[k].pos, f->size);
    STORE(&sh->res[k].idx_n, f->idx_n);
    STORE(&sh->res[k].state, TK_RES_RESERVED);
    STORE(&sh->res[k].pid, my_pid());
    __atomic_fetch_or(&sh->res_used, 1u << k, __ATOMIC_SEQ_CST);
    store_frontier(sh, after);
    *epoch = __atomic_load_n(&sh->epoch, __ATOMIC_SEQ_CST);
    return k;
}

void tk_state_reserved_done(tk_state *st, int slot, uint32_t state) {
    __atomic_store_n(&st->sh->res[slot].state, state, __ATOMIC_RELEASE);
}

/* Every slot free (caller holds the lock; none is under way). */
static void free_slots(tk_shared *sh) {
    for (int k = 0; k < TK_STATE_RESERVATIONS; k++) STORE(&sh->res[k].pid, 0);
    __atomic_store_n(&sh->res_used, 0u, __ATOMIC_SEQ_CST);
}

/* Whether the reservation at the turn will never publish: its write
 * failed, or its maker died.  Looked at after a wait only (tk_pid_alive
 * reads /proc).  A turn no reservation claims, for several looks in a
 * row, is stuck too (a maker killed between freeing its slot and passing
 * the turn on). */
static int turn_stuck(const tk_shared *sh, int64_t turn, int *unclaimed) {
    int k = at_turn(sh, turn);
    if (k < 0) return ++*unclaimed > 3;
    *unclaimed = 0;
    return LOAD(&sh->res[k].state) == TK_RES_FAILED || !tk_pid_alive(LOAD(&sh->res[k].pid));
}

/* One wait for the turn to move: spins first (the one before us is
 * usually on another CPU, a few microseconds from publishing), then
 * sleeps on word (with *flag raised: the publisher wakes only flagged
 * sleepers) for at most 2 ms.  Returns 1 after a sleep that timed out. */
static int turn_nap(tk_state *st, uint32_t *word, uint32_t *flag, uint32_t *all, int64_t turn,
                    uint32_t epoch, int spun) {
    tk_shared *sh = st->sh;
    struct timespec nap = { 0, 2 * 1000000 };
    uint32_t w;
    int timed_out = 0;
    if (!spun) {
        for (int i = 0; i < 1000; i++) {
            if (__atomic_load_n(&sh->turn, __ATOMIC_ACQUIRE) != turn ||
                __atomic_load_n(&sh->epoch, __ATOMIC_ACQUIRE) != epoch)
                return 0;
            cpu_relax();
        }
    }
    /* flag, then the word, then the turn; the publisher stores the turn,
     * then reads the flag (all sequentially consistent): either it sees
     * the flag and bumps the word, or we see the new turn. */
    __atomic_fetch_add(flag, 1, __ATOMIC_SEQ_CST);
    if (all) __atomic_fetch_add(all, 1, __ATOMIC_SEQ_CST);
    w = __atomic_load_n(word, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&sh->turn, __ATOMIC_SEQ_CST) == turn &&
        __atomic_load_n(&sh->epoch, __ATOMIC_SEQ_CST) == epoch)
        timed_out = futex_wait(word, w, &nap) < 0 && errno == ETIMEDOUT;
    if (all) __atomic_fetch_sub(all, 1, __ATOMIC_SEQ_CST);
    __atomic_fetch_sub(flag, 1, __ATOMIC_SEQ_CST);
    return timed_out;
}

int tk_state_wait_turn(tk_state *st, int slot, int64_t start, uint32_t epoch) {
    tk_shared *sh = st->sh;
    tk_reservation *r = &sh->res[slot];
    int spun = 0, unclaimed = 0;
    for (;;) {
        int64_t turn = __atomic_load_n(&sh->turn, __ATOMIC_SEQ_CST);
        /* The epoch after the turn: a reservation voided and made again
         * at the same offset is seen as voided. */
        if (__atomic_load_n(&sh->epoch, __ATOMIC_SEQ_CST) != epoch) return 0;
        if (turn == start) return 1;
        if (turn_nap(st, &r->wake, &r->sleeping, &sh->sleepers, turn, epoch, spun++) &&
            turn_stuck(sh, turn, &unclaimed))
            return -1;
    }
}

void tk_state_publish_turn(tk_state *st, int slot, const tk_layout *l) {
    tk_shared *sh = st->sh;
    write_layout(st, l, 1);
    STORE(&sh->res[slot].pid, 0);
    __atomic_fetch_and(&sh->res_used, ~(1u << slot), __ATOMIC_SEQ_CST);
    TK_FAULT("append.freed");
    __atomic_store_n(&sh->turn, l->next, __ATOMIC_SEQ_CST);
    wake_turn(st, 0);
}

int tk_state_drain(tk_state *st, int64_t own, uint64_t *pos, uint64_t *idx_n) {
    tk_shared *sh = st->sh;
    int spun = 0, unclaimed = 0;
    if (st->is_private) return 0;
    for (;;) {
        int64_t turn = __atomic_load_n(&sh->turn, __ATOMIC_SEQ_CST);
        uint32_t epoch = __atomic_load_n(&sh->epoch, __ATOMIC_SEQ_CST);
        int k = at_turn(sh, turn);
        if (turn == __atomic_load_n(&sh->res_next, __ATOMIC_SEQ_CST)) {
            /* None under way.  A slot still taken is that of a maker
             * killed between taking it and moving the frontier. */
            free_slots(sh);
            return 0;
        }
        if (turn == own || (k >= 0 && LOAD(&sh->res[k].state) == TK_RES_FAILED) ||
            (turn_nap(st, &sh->turn_wake, &sh->turn_waiters, NULL, turn, epoch, spun++) &&
             turn_stuck(sh, turn, &unclaimed))) {
            if ((k = at_turn(sh, turn)) >= 0) {
                *pos = LOAD(&sh->res[k].pos);
                *idx_n = LOAD(&sh->res[k].idx_n);
            } else {                    /* the published layout ends at the turn */
                *pos = LOAD(&sh->size_);
                *idx_n = LOAD(&sh->idx_n);
            }
            return 1;
        }
    }
}

void tk_state_void(tk_state *st) {
    tk_shared *sh = st->sh;
    __atomic_fetch_add(&sh->epoch, 1, __ATOMIC_SEQ_CST);
    wake_turn(st, 1);
    for (int k = 0; k < TK_STATE_RESERVATIONS; k++) {
        for (int i = 0; LOAD(&sh->res[k].pid) != 0 && LOAD(&sh->res[k].state) == TK_RES_RESERVED; i++) {
            if (i < 1000) { cpu_relax(); continue; }
            if (!tk_pid_alive(LOAD(&sh->res[k].pid))) break;
            nanosleep(&(struct timespec){ 0, 50000 }, NULL);
        }
    }
}

void tk_state_voided(tk_state *st) {
    tk_layout l;
    copy_layout(st->sh, &l);
    free_slots(st->sh);
    reset_frontier(st, &l);
    wake_turn(st, 1);
}

/* ------------------------------------------------------------------ */
/* Following                                                            */
/* ------------------------------------------------------------------ */

/* The waiter registers (waiters++) before it reads `wake` and checks
 * next; the appender stores next before it reads waiters.  All four are
 * sequentially consistent, so either the appender sees the waiter and
 * bumps `wake` (the waiter's FUTEX_WAIT then returns at once or is woken),
 * or the waiter registered after the appender's check and so sees the new
 * next itself. */
int tk_state_wait(tk_state *st, int64_t offset, int64_t timeout_ms) {
    tk_shared *sh = st->sh;
    struct timespec end, now;
    int result = 0;
    clock_gettime(CLOCK_MONOTONIC, &end);
    if (timeout_ms >= 0) {
        end.tv_sec += timeout_ms / 1000;
        end.tv_nsec += (timeout_ms % 1000) * 1000000;
        if (end.tv_nsec >= 1000000000) { end.tv_sec++; end.tv_nsec -= 1000000000; }
    }
    __atomic_fetch_add(&sh->waiters, 1, __ATOMIC_SEQ_CST);
    for (;;) {
        uint32_t w = __atomic_load_n(&sh->wake, __ATOMIC_SEQ_CST);
        struct timespec rel, *relp = NULL;
        if (__atomic_load_n(&sh->next, __ATOMIC_SEQ_CST) > offset) { result = 1; break; }
        if (timeout_ms >= 0) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            rel.tv_sec = end.tv_sec - now.tv_sec;
            rel.tv_nsec = end.tv_nsec - now.tv_nsec;
            if (rel.tv_nsec < 0) { rel.tv_sec--; rel.tv_nsec += 1000000000; }
            if (rel.tv_sec < 0) break;
            relp = &rel;
        }
        if (st->is_private) {
            /* Nobody else can wake us: poll the files' owner (log.c
             * refreshes a private state before calling). */
            struct timespec nap = { 0, 2000000 };
            if (relp && (relp->tv_sec == 0 && relp->tv_nsec < nap.tv_nsec)) nap = *relp;
            nanosleep(&nap, NULL);
            result = -1;                /* caller refreshes and asks again */
            break;
        }
        futex_wait(&sh->wake, w, relp);
    }
    __atomic_fetch_sub(&sh->waiters, 1, __ATOMIC_SEQ_CST);
    return result;
}

/* ------------------------------------------------------------------ */
/* Group commit                                                         */
/* ------------------------------------------------------------------ */

void tk_state_synced_to(tk_state *st, int64_t to) {
    int64_t cur = __atomic_load_n(&st->sh->synced, __ATOMIC_ACQUIRE);
    while (cur < to && !__atomic_compare_exchange_n(&st->sh->synced, &cur, to, 1,
                                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {}
}

int64_t tk_state_synced(const tk_state *st) {
    return __atomic_load_n(&st->sh->synced, __ATOMIC_ACQUIRE);
}

int64_t tk_state_dir_synced(const tk_state *st) {
    return __atomic_load_n(&st->sh->dir_synced, __ATOMIC_ACQUIRE);
}

void tk_state_dir_synced_to(tk_state *st, int64_t base) {
    int64_t cur = __atomic_load_n(&st->sh->dir_synced, __ATOMIC_ACQUIRE);
    while (cur < base && !__atomic_compare_exchange_n(&st->sh->dir_synced, &cur, base, 1,
                                                      __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {}
}

void tk_state_durable_writer(tk_state *st, int delta) {
    if (delta > 0) __atomic_fetch_add(&st->sh->durable_writers, 1, __ATOMIC_ACQ_REL);
    else if (__atomic_load_n(&st->sh->durable_writers, __ATOMIC_ACQUIRE) > 0)
        __atomic_fetch_sub(&st->sh->durable_writers, 1, __ATOMIC_ACQ_REL);
}

uint32_t tk_state_durable_writers(const tk_state *st) {
    return __atomic_load_n(&st->sh->durable_writers, __ATOMIC_ACQUIRE);
}

/* kill(pid, 0) succeeds on a zombie too: a process that died but whose
 * parent has not reaped it (a parent busy elsewhere, or one that never
 * reaps) would hold a group commit's lead, or a writer's slot, until it
 * is reaped.  /proc/PID/stat says Z (or X) -- but Z also while the main
 * thread has exited and other threads still run, holding the process's
 * descriptors and locks: dead means Z with one thread left (field 20,
 * num_threads).  Without /proc, kill's answer stands. */
int tk_pid_alive(long pid) {
    char path[64], buf[1024];
    const char *p;
    ssize_t n;
    int fd, field;
    if (pid <= 0 || (kill((pid_t)pid, 0) < 0 && errno != EPERM)) return 0;
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) return 1;
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 1;
    buf[n] = '\0';
    /* "pid (comm) S f4 f5 ...": comm may hold spaces and parentheses */
    if (!(p = strrchr(buf, ')')) || p[1] != ' ') return 1;
    p += 2;                                             /* field 3, the state */
    if (*p == 'X') return 0;
    if (*p != 'Z') return 1;
    for (field = 3; field < 20 && (p = strchr(p, ' ')); field++) p++;
    return p && field == 20 && strtol(p, NULL, 10) > 1;
}


void tk_state_appending(tk_state *st, int delta) {
    uint32_t v;
    if (!st->sh || st->is_private) return;
    if (delta > 0) {
        __atomic_fetch_add(&st->sh->appending, 1, __ATOMIC_SEQ_CST);
        return;
    }
    /* never below 0: a leader may have cleared a count it found stale */
    v = __atomic_load_n(&st->sh->appending, __ATOMIC_RELAXED);
    while (v > 0 && !__atomic_compare_exchange_n(&st->sh->appending, &v, v - 1, 0,
                                                 __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {}
}

/* The leader, before its fsync: other durable appenders that have entered
 * append but not yet written get a moment (at most 100 us) to write, so
 * that one fsync covers them too -- PostgreSQL's commit_delay with
 * commit_siblings, but waiting only for appends already under way (a
 * lone writer never waits).  A count that did not move in the whole
 * moment is taken for stale -- left by appenders killed in between -- and
 * cleared, so that it costs one moment, not one per fsync from then on
 * (an appender still under way finds it 0 and leaves it there). */
static void gather(tk_shared *sh) {
    struct timespec t0, now;
    uint32_t first = __atomic_load_n(&sh->appending, __ATOMIC_SEQ_CST), cur;
    int moved = 0;
    if (first == 0) return;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        sched_yield();
        clock_gettime(CLOCK_MONOTONIC, &now);
        cur = __atomic_load_n(&sh->appending, __ATOMIC_SEQ_CST);
        moved |= cur != first;
    } while (cur > 0 &&
             (now.tv_sec - t0.tv_sec) * 1000000000L + (now.tv_nsec - t0.tv_nsec) < 100000L);
    if (cur > 0 && !moved)
        __atomic_compare_exchange_n(&sh->appending, &cur, 0, 0, __ATOMIC_SEQ_CST,
                                    __ATOMIC_RELAXED);
}

int tk_state_group_commit(tk_state *st, int64_t end, tk_sync_fn sync, void *ud) {
    tk_shared *sh = st->sh;
    int32_t me = my_pid();
    for (;;) {
        int32_t holder = 0;
        uint32_t w = __atomic_load_n(&sh->sync_wake, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&sh->synced, __ATOMIC_SEQ_CST) >= end) return 0;
        if (__atomic_compare_exchange_n(&sh->syncing, &holder, me, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE)) {
            int64_t target = end;
            int rc, e;
            TK_FAULT("sync.leading");
            if (!st->is_private) gather(sh);
            rc = sync(ud, &target);
            e = errno;
            if (rc == 0) tk_state_synced_to(st, target);
            __atomic_store_n(&sh->syncing, 0, __ATOMIC_SEQ_CST);
            __atomic_fetch_add(&sh->sync_wake, 1, __ATOMIC_SEQ_CST);
            if (__atomic_load_n(&sh->sync_waiters, __ATOMIC_SEQ_CST) > 0 && !st->is_private)
                futex_wake_all(&sh->sync_wake);
            if (rc < 0) { errno = e; return -1; }
            continue;
        }
        /* Another writer's fsync is under way: it may cover our records
         * (it started after they were published) or not; sleep until it
         * ends, then look again.  A leader that died is replaced. */
        __atomic_fetch_add(&sh->sync_waiters, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&sh->syncing, __ATOMIC_SEQ_CST) == holder &&
            __atomic_load_n(&sh->synced, __ATOMIC_SEQ_CST) < end) {
            struct timespec nap = { 0, 50 * 1000000 };
            if (st->is_private) nanosleep(&(struct timespec){ 0, 100000 }, NULL);
            else if (futex_wait(&sh->sync_wake, w, &nap) < 0 && errno == ETIMEDOUT &&
                     !tk_pid_alive(holder))
                __atomic_compare_exchange_n(&sh->syncing, &holder, 0, 0, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE);
        }
        __atomic_fetch_sub(&sh->sync_waiters, 1, __ATOMIC_SEQ_CST);
    }
}

/* ------------------------------------------------------------------ */
/* Counters                                                             */
/* ------------------------------------------------------------------ */

void tk_state_count(tk_state *st, int counter, uint64_t n) {
    if (st->sh) __atomic_fetch_add(&st->sh->counters[counter], n, __ATOMIC_RELAXED);
}

void tk_state_count_append(tk_state *st, uint64_t records, uint64_t bytes) {
    uint64_t *c;
    if (!st->sh) return;
    if (st->slot < 0 || st->slot >= TK_STATE_WCOUNTED) {
        tk_state_count(st, TK_C_APPENDS, 1);
        tk_state_count(st, TK_C_RECORDS, records);
        tk_state_count(st, TK_C_BYTES, bytes);
        return;
    }
    c = st->sh->wcount[st->slot].c;
    __atomic_fetch_add(&c[0], 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&c[1], records, __ATOMIC_RELAXED);
    __atomic_fetch_add(&c[2], bytes, __ATOMIC_RELAXED);
}

_Static_assert(TK_C_APPENDS == 0 && TK_C_RECORDS == 1 && TK_C_BYTES == 2,
               "wcount's order is the counters'");

uint64_t tk_state_counter(const tk_state *st, int counter) {
    uint64_t v;
    if (!st->sh) return 0;
    v = __atomic_load_n(&st->sh->counters[counter], __ATOMIC_RELAXED);
    if (counter <= TK_C_BYTES && !st->is_private)
        for (int i = 0; i < TK_STATE_WCOUNTED; i++)
            v += __atomic_load_n(&st->sh->wcount[i].c[counter], __ATOMIC_RELAXED);
    return v;
}

int tk_state_fsync(tk_state *st, int fd, int full) {
    static const uint64_t bounds[TK_FSYNC_BUCKETS] = TK_FSYNC_BUCKET_BOUNDS_US;
    struct timespec a, b;
    uint64_t us;
    int rc, e, k;
    clock_gettime(CLOCK_MONOTONIC, &a);
    rc = full ? tk_fsync(fd) : tk_fdatasync(fd);
    e = errno;
    clock_gettime(CLOCK_MONOTONIC, &b);
    us = (uint64_t)(b.tv_sec - a.tv_sec) * 1000000u + (uint64_t)((b.tv_nsec - a.tv_nsec) / 1000);
    for (k = 0; k < TK_FSYNC_BUCKETS - 1 && us > bounds[k]; k++) {}
    tk_state_count(st, TK_C_FSYNCS, 1);
    tk_state_count(st, TK_C_FSYNC_US, us);
    tk_state_count(st, TK_C_FSYNC_BUCKET0 + k, 1);
    errno = e;
    return rc;
}

/* ------------------------------------------------------------------ */
/* Writers' pids                                                        */
/* ------------------------------------------------------------------ */

void tk_state_add_writer(tk_state *st) {
    int32_t pid = my_pid();
    if (st->is_private || !st->sh) return;
    for (int i = 0; i < TK_STATE_WRITERS; i++) {
        int32_t cur = __atomic_load_n(&st->sh->writers[i], __ATOMIC_RELAXED);
        /* A slot of a process that died without closing is free too. */
        if (cur != 0 && tk_pid_alive(cur)) continue;
        if (__atomic_compare_exchange_n(&st->sh->writers[i], &cur, pid, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_RELAXED)) {
            st->slot = i;
            return;
        }
    }
}

void tk_state_remove_writer(tk_state *st) {
    if (st->slot < 0 || !st->sh) return;
    __atomic_store_n(&st->sh->writers[st->slot], 0, __ATOMIC_RELEASE);
    st->slot = -1;
}

uint64_t tk_state_writer_count(const tk_state *st) {
    uint64_t n = 0;
    if (!st->sh || st->is_private) return 0;
    for (int i = 0; i < TK_STATE_WRITERS; i++) {
        int32_t pid = __atomic_load_n(&st->sh->writers[i], __ATOMIC_RELAXED);
        if (tk_pid_alive(pid)) n++;
    }
    return n;
}

void tk_state_describe_writers(const char *dir, char *out, size_t cap) {
    char path[PATH_MAX];
    tk_shared *sh;
    size_t len = 0;
    int fd;
    out[0] = '\0';
    if (tk_path_join(path, sizeof path, dir, TK_STATE_FILE) < 0) return;
    if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0) return;
    sh = mmap(NULL, TK_STATE_SIZE, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (sh == MAP_FAILED) return;
    if (header_ok(sh)) {
        for (int i = 0; i < TK_STATE_WRITERS && len + 16 < cap; i++) {
            int32_t pid = __atomic_load_n(&sh->writers[i], __ATOMIC_RELAXED);
            if (!tk_pid_alive(pid)) continue;
            len += (size_t)snprintf(out + len, cap - len, "%spid %d", len ? ", " : "", pid);
        }
    }
    munmap(sh, TK_STATE_SIZE);
}

tk_code tk_state_invalidate(const char *dir, tk_err *err) {
    char path[PATH_MAX];
    tk_shared *sh;
    int fd, repair;
    tk_state st;
    if (tk_path_join(path, sizeof path, dir, TK_STATE_FILE) < 0)
        return tk_fail_errno(err, errno, "open %s", dir);
    if ((fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW)) < 0)
        return errno == ENOENT ? TK_OK : tk_fail_errno(err, errno, "open %s", path);
    /* Nobody maps it: the next opener rebuilds it anyway. */
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) { close(fd); return TK_OK; }
    sh = mmap(NULL, TK_STATE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (sh == MAP_FAILED) return tk_fail_errno(err, errno, "map %s", path);
    if (!header_ok(sh) || !LOAD_ACQ(&sh->ready)) { munmap(sh, TK_STATE_SIZE); return TK_OK; }
    memset(&st, 0, sizeof st);
    st.sh = sh;
    st.fd = -1;
    st.slot = -1;
    if (tk_state_lock(&st, dir, &repair, err) == TK_OK) {
        tk_layout l;
        copy_layout(sh, &l);
        tk_state_begin_change(&st, &l);
        tk_state_end_change(&st, &l);
        STORE(&sh->stale, 1u);
        if (repair) pthread_mutex_consistent(&sh->mu);
        tk_state_unlock(&st);
    }
    munmap(sh, TK_STATE_SIZE);
    return TK_OK;
}
