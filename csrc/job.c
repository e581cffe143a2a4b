/*
 * job.c -- background jobs and the parallel loop (job.h).
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "job.h"
#include "manifest.h"
#include "sys.h"
#include "internal.h"

struct tk_jobs {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    tk_job *head;               /* running jobs */
    int refs;                   /* the owner's, and one per running job */
};

struct tk_job {
    char kind[16];
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;                   /* under mu */
    int canceled;               /* atomic */
    uint64_t pdone, ptotal;     /* atomic */
    tk_code rc;
    tk_err err;
    tk_job_fn fn;
    void *arg;
    void (*free_arg)(void *);
    tk_jobs *owner;
    tk_job *next;               /* in owner's list, under owner->mu */
    int has_snap;
    tk_snapshot snap;
    char path[PATH_MAX];
    size_t count;
};

/* ------------------------------------------------------------------ */
/* Owners                                                               */
/* ------------------------------------------------------------------ */

tk_jobs *tk_jobs_new(void) {
    tk_jobs *j = tk_calloc(1, sizeof *j);
    if (!j) return NULL;
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    j->refs = 1;
    return j;
}

/* Caller holds jobs->mu; it is unlocked (and maybe freed) on return. */
static void unref_unlock(tk_jobs *jobs) {
    int last = --jobs->refs == 0;
    pthread_mutex_unlock(&jobs->mu);
    if (!last) return;
    pthread_cond_destroy(&jobs->cv);
    pthread_mutex_destroy(&jobs->mu);
    free(jobs);
}

void tk_jobs_close(tk_jobs *jobs) {
    if (!jobs) return;
    pthread_mutex_lock(&jobs->mu);
    for (tk_job *j = jobs->head; j; j = j->next) tk_job_cancel(j);
    while (jobs->head) pthread_cond_wait(&jobs->cv, &jobs->mu);
    unref_unlock(jobs);
}

/* ------------------------------------------------------------------ */
/* Jobs                                                                 */
/* ------------------------------------------------------------------ */

/* Linux keeps a nice value per thread, and raising it needs no privilege
 * -- but neither can it be lowered again without one: only a thread that
 * takes no lock another thread may wait for calls this. */
void tk_run_in_background(void) {
#ifdef SYS_gettid
    (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 19);
#endif
}

static void *job_main(void *arg) {
    tk_job *job = arg;
    tk_jobs *owner = job->owner;
    tk_code rc = job->fn(job, job->arg, &job->err);
    pthread_mutex_lock(&job->mu);
    job->rc = rc;
    job->done = 1;
    pthread_cond_broadcast(&job->cv);
    pthread_mutex_unlock(&job->mu);
    if (owner) {                        /* from here on the owner may be gone */
        tk_job **p;
        pthread_mutex_lock(&owner->mu);
        for (p = &owner->head; *p && *p != job; p = &(*p)->next) {}
        if (*p) *p = job->next;
        pthread_cond_broadcast(&owner->cv);
        unref_unlock(owner);
    }
    return NULL;
}

tk_code tk_job_start(tk_jobs *owner, const char *kind, tk_job_fn fn, void *arg,
                     void (*free_arg)(void *), tk_job **out, tk_err *err) {
    tk_job *job = tk_calloc(1, sizeof *job);
    int rc;
    *out = NULL;
    if (!job) {
        if (free_arg) free_arg(arg);
        return tk_fail(err, TK_NOMEM, "%s: out of memory", kind);
    }
    snprintf(job->kind, sizeof job->kind, "%s", kind);
    pthread_mutex_init(&job->mu, NULL);
    pthread_cond_init(&job->cv, NULL);
    job->fn = fn;
    job->arg = arg;
    job->free_arg = free_arg;
    job->owner = owner;
    if (owner) {
        pthread_mutex_lock(&owner->mu);
        job->next = owner->head;
        owner->head = job;
        owner->refs++;
        pthread_mutex_unlock(&owner->mu);
    }
    if ((rc = pthread_create(&job->thread, NULL, job_main, job)) != 0) {
        if (owner) {
            tk_job **p;
            pthread_mutex_lock(&owner->mu);
            for (p = &owner->head; *p && *p != job; p = &(*p)->next) {}
            if (*p) *p = job->next;
            unref_unlock(owner);
        }
        job->owner = NULL;
        job->done = 1;
        job->rc = tk_fail_errno(err, rc, "%s: start a thread", kind);
        tk_job_free(job);
        return tk_fail_errno(err, rc, "%s: start a thread", kind);
    }
    *out = job;
    return TK_OK;
}

int tk_job_canceled(const tk_job *job) {
    return job && __atomic_load_n(&job->canceled, __ATOMIC_ACQUIRE);
}

/* Several workers report (tk_parallel): each adds to a shared count, then
 * stores what it got, and a slower one may store an older count -- so
 * done only ever moves forward (a new total starts a new count). */
void tk_job_set_progress(tk_job *job, uint64_t done, uint64_t total) {
    uint64_t old;
    if (__atomic_load_n(&job->ptotal, __ATOMIC_RELAXED) != total) {
        __atomic_store_n(&job->ptotal, total, __ATOMIC_RELAXED);
        __atomic_store_n(&job->pdone, done, __ATOMIC_RELAXED);
        return;
    }
    old = __atomic_load_n(&job->pdone, __ATOMIC_RELAXED);
    while (done > old && !__atomic_compare_exchange_n(&job->pdone, &old, done, 1,
                                                      __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
}

void tk_job_set_snapshot(tk_job *job, const tk_snapshot *snap, const char *path) {
    job->snap = *snap;
    job->has_snap = 1;
    snprintf(job->path, sizeof job->path, "%s", path ? path : "");
}

void tk_job_set_count(tk_job *job, size_t n) { job->count = n; }

/* ---- public (takhin.h) ---- */

const char *tk_job_kind(const tk_job *job) { return job->kind; }

int tk_job_done(tk_job *job) {
    int d;
    pthread_mutex_lock(&job->mu);
    d = job->done;
    pthread_mutex_unlock(&job->mu);
    return d;
}

void tk_job_progress(tk_job *job, uint64_t *done, uint64_t *total) {
    *done = __atomic_load_n(&job->pdone, __ATOMIC_RELAXED);
    *total = __atomic_load_n(&job->ptotal, __ATOMIC_RELAXED);
}

int tk_job_wait(tk_job *job, int64_t timeout_ms) {
    struct timespec until;
    int d;
    if (timeout_ms >= 0) {
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += timeout_ms / 1000;
        until.tv_nsec += (timeout_ms % 1000) * 1000000;
        if (until.tv_nsec >= 1000000000) { until.tv_sec++; until.tv_nsec -= 1000000000; }
    }
    pthread_mutex_lock(&job->mu);
    while (!job->done) {
        if (timeout_ms < 0) pthread_cond_wait(&job->cv, &job->mu);
        else if (pthread_cond_timedwait(&job->cv, &job->mu, &until) == ETIMEDOUT) break;
    }
    d = job->done;
    pthread_mutex_unlock(&job->mu);
    return d;
}

tk_code tk_job_result(tk_job *job, tk_err *err) {
    tk_job_wait(job, -1);
    if (job->rc != TK_OK) return tk_fail_pass(err, &job->err);
    return TK_OK;
}

int tk_job_snapshot(tk_job *job, tk_snapshot *out, char *path, size_t cap) {
    if (!job->has_snap) return 0;
    if (tk_snapshot_copy(out, &job->snap) < 0) return 0;
    if (path) snprintf(path, cap, "%s", job->path);
    return 1;
}

size_t tk_job_count(const tk_job *job) { return job->count; }

void tk_job_cancel(tk_job *job) {
    __atomic_store_n(&job->canceled, 1, __ATOMIC_RELEASE);
}

void tk_job_free(tk_job *job) {
    if (!job) return;
    tk_job_cancel(job);
    if (job->thread) pthread_join(job->thread, NULL);
    if (job->free_arg) job->free_arg(job->arg);
    if (job->has_snap) tk_snapshot_free(&job->snap);
    pthread_cond_destroy(&job->cv);
    pthread_mutex_destroy(&job->mu);
    free(job);
}

/* ------------------------------------------------------------------ */
/* The parallel loop                                                    */
/* ------------------------------------------------------------------ */

unsigned tk_cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1u : n > 64 ? 64u : (unsigned)n;
}

typedef struct par {
    size_t n, next;             /* next: atomic */
    tk_par_fn fn;
    void *ud;
    pthread_mutex_t mu;
    int stop;                   /* atomic: a failure happened */
    size_t failed;              /* lowest i that failed (under mu), n: none */
    tk_err err;
    int background;             /* the workers run at nice 19 */
} par;

/* Runs items until none are left (or one failed); returns after each item
 * when `one`. */
static int par_run(par *p, int one) {
    for (;;) {
        size_t i;
        tk_err e;
        tk_code rc;
        if (__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE)) return 0;
        i = __atomic_fetch_add(&p->next, 1, __ATOMIC_ACQ_REL);
        if (i >= p->n) return 0;
        if ((rc = p->fn(p->ud, i, &e)) != TK_OK) {
            e.code = rc;
            pthread_mutex_lock(&p->mu);
            if (i < p->failed) { p->failed = i; p->err = e; }
            pthread_mutex_unlock(&p->mu);
            __atomic_store_n(&p->stop, 1, __ATOMIC_RELEASE);
        }
        if (one) return 1;
    }
}

static void *par_main(void *arg) {
    par *p = arg;
    if (p->background) tk_run_in_background();
    par_run(p, 0);
    return NULL;
}

tk_code tk_parallel(size_t n, unsigned threads, int background, tk_par_fn fn, void *ud,
                    void (*tick)(void *tick_ud), void *tick_ud, tk_err *err) {
    par p = { n, 0, fn, ud, PTHREAD_MUTEX_INITIALIZER, 0, n, { TK_OK, 0, "" }, background };
    pthread_t ids[64];
    unsigned started = 0;
    if (threads == 0) {
        threads = tk_cpu_count();
        if (background && threads > 1) threads--;   /* a CPU left to serving (job.h) */
    }
    if (threads > 64) threads = 64;
    if (threads > n) threads = (unsigned)n;
    /* The caller is the first worker, unless the work is background: then
     * every worker is a thread of its own, and the caller only waits. */
    for (unsigned t = background ? 0 : 1; t < threads; t++)
        if (pthread_create(&ids[started], NULL, par_main, &p) == 0) started++;
    if (!background || started == 0)           /* no thread: the caller does it */
        while (par_run(&p, 1))
            if (tick) tick(tick_ud);
    for (unsigned t = 0; t < started; t++) {
        pthread_join(ids[t], NULL);
        if (tick) tick(tick_ud);
    }
    pthread_mutex_destroy(&p.mu);
    if (p.failed < n) return tk_fail_pass(err, &p.err);
    return TK_OK;
}
