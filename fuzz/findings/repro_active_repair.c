/*
 * repro_active_repair.c -- finding 4 of fuzz/README.md through the public API.
 *
 * One flipped bit in the header of a record that the .index names makes a
 * read rebuild the index from the damaged .log; records after the damage
 * then stop reading, and the next writer open truncates them away although
 * they are intact.  Exits 1 while the bug is there, 0 once it is fixed.
 *
 *   cc -std=c11 -D_GNU_SOURCE -Icsrc fuzz/findings/repro_active_repair.c \
 *      build/libtakhin.a -o /tmp/repro -ljansson -lpthread && /tmp/repro [DIR]
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "takhin.h"

static long file_size(const char *p) {
    struct stat st;
    return stat(p, &st) ? -1 : (long)st.st_size;
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "/tmp/takhin-repro-active-repair";
    char path[4096], cmd[4200], val[40];
    tk_log_opts o;
    tk_log *log;
    tk_err e;
    tk_record rec = { 0 };
    unsigned char b;
    int fd, lost;
    int64_t hwm;

    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) return 2;
    tk_log_opts_init(&o);
    o.index_interval_bytes = 64;
    if (tk_log_open(dir, &o, &log, &e) != TK_OK) { fprintf(stderr, "%s\n", e.msg); return 2; }
    memset(val, 'v', sizeof val);
    for (int i = 0; i < 10; i++) {              /* 74 bytes each; index entries for 1..9 */
        tk_rec_in r = { NULL, 0, 0, val, sizeof val, 1000 + i };
        if (tk_log_append(log, &r, 1, NULL, &e) != TK_OK) { fprintf(stderr, "%s\n", e.msg); return 2; }
    }
    tk_log_close(log);

    /* Bit rot: one bit of record 2's offset field (record 2 is at byte 148). */
    snprintf(path, sizeof path, "%s/00000000000000000000.log", dir);
    fd = open(path, O_RDWR);
    if (fd < 0 || pread(fd, &b, 1, 148 + 10) != 1) return 2;
    b ^= 1;
    if (pwrite(fd, &b, 1, 148 + 10) != 1) return 2;
    close(fd);
    printf(".log: %ld bytes, 10 records, record 2's header damaged\n", file_size(path));

    if (tk_log_open(dir, &o, &log, &e) != TK_OK) { fprintf(stderr, "%s\n", e.msg); return 2; }
    printf("open 1: hwm %lld\n", (long long)tk_log_high_water_mark(log));
    printf("  read(5): %s\n", tk_code_name(tk_log_read(log, 5, &rec, &e)));
    printf("  read(2): %s\n", tk_code_name(tk_log_read(log, 2, &rec, &e)));
    printf("  read(5): %s\n", tk_code_name(tk_log_read(log, 5, &rec, &e)));
    tk_log_close(log);

    if (tk_log_open(dir, &o, &log, &e) != TK_OK) { fprintf(stderr, "%s\n", e.msg); return 2; }
    hwm = tk_log_high_water_mark(log);
    printf("open 2: hwm %lld, .log %ld bytes\n", (long long)hwm, file_size(path));
    printf("  read(5): %s\n", tk_code_name(tk_log_read(log, 5, &rec, &e)));
    tk_log_close(log);
    tk_record_free(&rec);
    lost = hwm < 10 || file_size(path) < 740;
    printf("%s\n", lost ? "BUG: intact records 3..9 were lost" : "ok: nothing lost");
    return lost;
}
