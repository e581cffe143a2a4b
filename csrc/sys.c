/*
 * sys.c -- failure injection for the fault build (sys.h).  Empty in a
 * normal build.
 */
#include <errno.h>
#include <stdatomic.h>

#include "sys.h"
#include "internal.h"

#ifdef TK_FAULT_INJECTION

static const char *const kind_names[TK_SYS_KINDS] = {
    "open", "write", "fsync", "rename", "link", "ftruncate", "malloc"
};

static struct {
    atomic_long calls;      /* since the last reset */
    atomic_long fail_at;    /* call number that fails; 0: none */
    atomic_int err;
    atomic_int persist;
} g_sys[TK_SYS_KINDS];

int tk_sys_check(int kind) {
    long n, at;
    n = atomic_fetch_add(&g_sys[kind].calls, 1) + 1;
    at = atomic_load(&g_sys[kind].fail_at);
    if (at <= 0 || n < at || (n > at && !atomic_load(&g_sys[kind].persist))) return 0;
    errno = atomic_load(&g_sys[kind].err);
    return -1;
}

void tk_sys_arm(int kind, long nth, int e, int persist) {
    long now = atomic_load(&g_sys[kind].calls);
    atomic_store(&g_sys[kind].err, e ? e : EIO);
    atomic_store(&g_sys[kind].persist, persist);
    atomic_store(&g_sys[kind].fail_at, nth > 0 ? now + nth : 0);
}

long tk_sys_calls(int kind) { return atomic_load(&g_sys[kind].calls); }

void tk_sys_reset(void) {
    for (int k = 0; k < TK_SYS_KINDS; k++) {
        atomic_store(&g_sys[k].fail_at, 0);
        atomic_store(&g_sys[k].calls, 0);
        atomic_store(&g_sys[k].persist, 0);
    }
}

const char *tk_sys_kind_name(int kind) {
    return kind >= 0 && kind < TK_SYS_KINDS ? kind_names[kind] : "?";
}

int tk_sys_kind_from_name(const char *name) {
    for (int k = 0; k < TK_SYS_KINDS; k++)
        if (strcmp(name, kind_names[k]) == 0) return k;
    return -1;
}
#else
typedef int tk_sys_unused;      /* ISO C wants a translation unit to hold something */
#endif
