/*
 * watch.c -- one inotify descriptor and one thread per process, telling
 * writers that the file they append to gained a link (watch.h).
 *
 * The thread never exits: it blocks in read(2) until an event comes, and
 * the object holding this code is pinned (RTLD_NODELETE) when the thread
 * starts, so that unloading the Lua module cannot pull its code from
 * under it.  A fork keeps the descriptor but not
 * the thread: the child starts afresh (a new epoch), and watches armed
 * before the fork count as not armed there.
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "sys.h"
#include "watch.h"
#include "internal.h"

typedef struct entry {
    int wd;
    tk_watch *head;
} entry;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_fd = -1;
static uint64_t g_epoch = 1;            /* atomic: bumped by a fork */
static entry *g_tab;
static size_t g_n, g_cap;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static entry *find(int wd) {
    for (size_t i = 0; i < g_n; i++)
        if (g_tab[i].wd == wd) return &g_tab[i];
    return NULL;
}

static void drop_entry(entry *e) {
    *e = g_tab[--g_n];
}

static void *watcher_main(void *arg) {
    int fd = (int)(intptr_t)arg;
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return NULL;        /* the descriptor went away (a fork's child) */
        pthread_mutex_lock(&g_mu);
        if (fd != g_fd) {               /* not ours any more */
            pthread_mutex_unlock(&g_mu);
            return NULL;
        }
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            entry *e = find(ev->wd);
            if (e) {
                for (tk_watch *w = e->head; w; w = w->next) {
                    __atomic_store_n(&w->fired, 1, __ATOMIC_RELEASE);
                    if (ev->mask & IN_IGNORED) __atomic_store_n(&w->wd, -1, __ATOMIC_RELEASE);
                }
                if (ev->mask & IN_IGNORED) drop_entry(e);   /* the kernel dropped the watch */
            }
            p += sizeof *ev + ev->len;
        }
        pthread_mutex_unlock(&g_mu);
    }
}

static void after_fork_child(void) {
    /* The thread did not come along, and the mutex may be held by one of
     * the parent's threads that does not exist here. */
    pthread_mutex_init(&g_mu, NULL);
    if (g_fd >= 0) close(g_fd);
    g_fd = -1;
    g_n = 0;
    __atomic_add_fetch(&g_epoch, 1, __ATOMIC_RELEASE);
}

static void register_fork(void) { pthread_atfork(NULL, NULL, after_fork_child); }

/* Caller holds g_mu. */
static int start(void) {
    pthread_attr_t a;
    pthread_t t;
    int fd, rc;
    if (g_fd >= 0) return 0;
    pthread_once(&g_once, register_fork);
    {
        Dl_info info;
        if (dladdr((void *)watcher_main, &info) && info.dli_fname)
            (void)dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD | RTLD_NODELETE);
    }
    if ((fd = inotify_init1(IN_CLOEXEC)) < 0) return -1;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&a, 64 * 1024);
    rc = pthread_create(&t, &a, watcher_main, (void *)(intptr_t)fd);
    pthread_attr_destroy(&a);
    if (rc != 0) {
        close(fd);
        return -1;
    }
    g_fd = fd;
    return 0;
}

int tk_watch_arm(tk_watch *w, const char *path, uint64_t key) {
    entry *e;
    int wd;
    tk_watch_disarm(w);
    pthread_mutex_lock(&g_mu);
    if (start() < 0 || (wd = inotify_add_watch(g_fd, path, IN_ATTRIB)) < 0) {
        pthread_mutex_unlock(&g_mu);
        return -1;
    }
    if (!(e = find(wd))) {
        if (g_n == g_cap) {
            size_t cap = g_cap ? 2 * g_cap : 8;
            entry *t = tk_realloc(g_tab, cap * sizeof *t);
            if (!t) {
                inotify_rm_watch(g_fd, wd);
                pthread_mutex_unlock(&g_mu);
                return -1;
            }
            g_tab = t;
            g_cap = cap;
        }
        e = &g_tab[g_n++];
        e->wd = wd;
        e->head = NULL;
    }
    w->next = e->head;
    e->head = w;
    w->key = key;
    w->epoch = __atomic_load_n(&g_epoch, __ATOMIC_ACQUIRE);
    __atomic_store_n(&w->fired, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&w->wd, wd, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&g_mu);
    return 0;
}

void tk_watch_disarm(tk_watch *w) {
    int wd;
    pthread_mutex_lock(&g_mu);
    wd = __atomic_load_n(&w->wd, __ATOMIC_ACQUIRE);
    if (wd >= 0 && w->epoch == __atomic_load_n(&g_epoch, __ATOMIC_ACQUIRE)) {
        entry *e = find(wd);
        if (e) {
            tk_watch **p = &e->head;
            while (*p && *p != w) p = &(*p)->next;
            if (*p) *p = w->next;
            if (!e->head) {
                inotify_rm_watch(g_fd, wd);
                drop_entry(e);
            }
        }
    }
    __atomic_store_n(&w->wd, -1, __ATOMIC_RELEASE);
    w->next = NULL;
    pthread_mutex_unlock(&g_mu);
}

int tk_watch_armed(const tk_watch *w, uint64_t key) {
    return __atomic_load_n(&w->wd, __ATOMIC_ACQUIRE) >= 0 && w->key == key &&
           w->epoch == __atomic_load_n(&g_epoch, __ATOMIC_ACQUIRE);
}

int tk_watch_fired(const tk_watch *w) {
    return __atomic_load_n(&w->fired, __ATOMIC_ACQUIRE) != 0;
}

int tk_watch_take(tk_watch *w) {
    if (!__atomic_load_n(&w->fired, __ATOMIC_ACQUIRE)) return 0;
    return __atomic_exchange_n(&w->fired, 0, __ATOMIC_ACQ_REL);
}
