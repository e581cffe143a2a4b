/*
 * job.h -- background jobs and the little parallel loop behind verify and
 * copies.  The public half (tk_job_done, tk_job_wait, ...) is in takhin.h.
 *
 * A job runs one function on its own thread.  Nothing on that thread
 * touches a Lua state: the binding only reads what the job left behind
 * (its code, its error, its result) once it is done.  Cancel sets a flag
 * that the work checks at every step; the work then fails with
 * TK_CANCELED after removing what it had half made, as a failure would.
 *
 * Owners.  A snapshot manager keeps a registry of its running jobs:
 * closing the manager cancels them and waits until each has finished (its
 * thread never touches the manager after that).  The registry is
 * reference counted, so whichever of the manager and its last job goes
 * last frees it.
 */
#ifndef TK_JOB_H
#define TK_JOB_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "takhin.h"

typedef struct tk_jobs tk_jobs;

typedef tk_code (*tk_job_fn)(tk_job *job, void *arg, tk_err *err);

tk_jobs *tk_jobs_new(void);
/* Cancels every running job and waits for each to finish, then drops
 * the owner's reference. */
void tk_jobs_close(tk_jobs *jobs);

/* Starts fn(job, arg) on a new thread; free_arg(arg) runs when the job is
 * freed.  kind names it ("create", "verify", ...). */
tk_code tk_job_start(tk_jobs *owner, const char *kind, tk_job_fn fn, void *arg,
                     void (*free_arg)(void *), tk_job **out, tk_err *err);

/* For the work: whether to stop now, and how far it got. */
int tk_job_canceled(const tk_job *job);
void tk_job_set_progress(tk_job *job, uint64_t done, uint64_t total);

/* For the work: its result, kept by the job (a snapshot, whose
 * segment_offsets the job takes over and frees; a count). */
void tk_job_set_snapshot(tk_job *job, const tk_snapshot *snap, const char *path);
void tk_job_set_count(tk_job *job, size_t n);

/* Runs fn(ud, i, err) for every i in [0, n) on up to `threads` threads
 * (the caller's among them; 0: one per CPU).  After the first failure no
 * new i is started; the result is the failure of the lowest i that failed
 * (its message in err), every lower i having run.  tick(tick_ud) runs on the
 * calling thread only, now and then: the place to report progress to a
 * caller that is not thread-safe (Lua).
 *
 * background (a job's bulk work): every worker is a thread of its own at
 * nice 19 and the caller only waits, so that a thread serving requests
 * gets the CPU first -- while the caller, which takes the locks (a cut, the
 * catalog), keeps its priority: a lock is never held by a thread that a
 * busy machine leaves waiting.  Should no thread start, the caller works.
 * threads == 0 is then one fewer than the CPUs (at least 1): measured in
 * nginx on 2 CPUs (bench/nginx_bench.lua B), a copy-mode create + verify
 * on 2 threads tripled a trivial endpoint's p99 even at nice 19, on 1
 * thread it left it as it was, and took about as long (the copy is
 * bound by memory and disk, not by one CPU). */
typedef tk_code (*tk_par_fn)(void *ud, size_t i, tk_err *err);
tk_code tk_parallel(size_t n, unsigned threads, int background, tk_par_fn fn, void *ud,
                    void (*tick)(void *tick_ud), void *tick_ud, tk_err *err);

/* Lowers the calling thread's CPU priority to nice 19 for good (best
 * effort).  Only for a thread that takes no lock others may wait for. */
void tk_run_in_background(void);

unsigned tk_cpu_count(void);

#endif
