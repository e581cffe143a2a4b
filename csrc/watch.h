/*
 * watch.h -- being told, without a system call per append, that the file
 * a writer appends to gained a hard link.
 *
 * The hard-link rule (docs/FORMAT.md): no file with a link count above 1
 * is written in place.  takhin's own links -- sealed segments in link-mode
 * snapshots, a link-mode restore -- are known where they are made and
 * checked when a segment becomes the one appended to (open, roll, a view
 * reloaded).  What is left is another program linking the active .log
 * while a writer appends (cp -al, rsync --link-dest).  Checking with fstat
 * before every append costs a system call each; instead, one thread per
 * process waits on an inotify descriptor, and link(2) -- which changes the
 * inode's link count -- raises IN_ATTRIB on every watch of that inode.
 * The thread sets the watch's flag; the next append sees it (a memory
 * read) and checks with fstat, copying the file first when it is linked.
 *
 * The window: between link(2) returning and the thread setting the flag
 * (the time it takes to wake a thread), an append can still go into the
 * shared inode -- as if the other program had linked the file a moment
 * later.  Everything the rule protects against inside takhin has no such
 * window.  Where inotify is not available (no watches left, a fork that
 * lost the thread) a watch is simply not armed and the writer falls back
 * to an fstat per append.
 */
#ifndef TK_WATCH_H
#define TK_WATCH_H

#include <stdint.h>

typedef struct tk_watch {
    int wd;                 /* inotify watch descriptor, -1: not armed */
    uint64_t key;           /* what the caller armed it for (tk_watch_armed) */
    uint64_t epoch;         /* the watcher thread's epoch when armed */
    int fired;              /* atomic: the inode's attributes changed */
    struct tk_watch *next;  /* the watcher's list for this wd */
} tk_watch;

#define TK_WATCH_INIT { -1, 0, 0, 0, 0 }

/* Arms w on path for key (any value the caller uses to tell what it
 * watches).  0 when armed; -1 when not (the caller checks by itself). */
int tk_watch_arm(tk_watch *w, const char *path, uint64_t key);

/* Disarms w (no-op when not armed). */
void tk_watch_disarm(tk_watch *w);

/* 1 when w is armed for key and the watcher is the one that armed it (a
 * fork loses the thread: the child's watches are not armed). */
int tk_watch_armed(const tk_watch *w, uint64_t key);

/* 1 when the attributes changed since the last tk_watch_take (the flag
 * stays). */
int tk_watch_fired(const tk_watch *w);

/* 1 (and clears the flag) when the attributes changed since the last
 * call: the caller checks the link count. */
int tk_watch_take(tk_watch *w);

#endif
