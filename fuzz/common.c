/*
 * common.c -- helpers shared by the fuzz harnesses (#included by each one,
 * so every harness stays a single translation unit plus the engine).
 *
 * Scratch directories live under $FUZZ_TMPDIR, else /dev/shm when it is
 * writable (tmpfs: thousands of opens a second), else $TMPDIR or /tmp.
 * Each process makes its own directory once and removes it at exit.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FZ_UNUSED __attribute__((unused))

/* A failed check: print what and where, then abort so libFuzzer saves the
 * input as a crash artifact. */
__attribute__((noreturn, format(printf, 4, 5)))
static void fz_fail(const char *file, int line, const char *cond, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "\n==FUZZ CHECK FAILED== %s:%d: %s\n  ", file, line, cond);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    abort();
}

#define FZ_CHECK(cond, ...) \
    do { if (!(cond)) fz_fail(__FILE__, __LINE__, #cond, __VA_ARGS__); } while (0)

/* Little-endian loads and stores, independent of the engine's helpers. */
static FZ_UNUSED uint16_t fz_ld16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }
static FZ_UNUSED uint32_t fz_ld32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static FZ_UNUSED uint64_t fz_ld64(const unsigned char *p) {
    return (uint64_t)fz_ld32(p) | (uint64_t)fz_ld32(p + 4) << 32;
}
static FZ_UNUSED void fz_st32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16); p[3] = (unsigned char)(v >> 24);
}
static FZ_UNUSED void fz_st64(unsigned char *p, uint64_t v) {
    fz_st32(p, (uint32_t)v);
    fz_st32(p + 4, (uint32_t)(v >> 32));
}

/* A cursor over the fuzz input: reads past the end yield zeros. */
typedef struct fz_in {
    const unsigned char *p;
    size_t n, at;
} fz_in;

static FZ_UNUSED unsigned fz_byte(fz_in *in) { return in->at < in->n ? in->p[in->at++] : 0; }
static FZ_UNUSED unsigned fz_u16(fz_in *in) {
    unsigned lo = fz_byte(in);
    return lo | fz_byte(in) << 8;
}
static FZ_UNUSED uint64_t fz_u64(fz_in *in) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)fz_byte(in) << (8 * i);
    return v;
}
/* Up to len bytes (fewer at the end of the input). */
static FZ_UNUSED const unsigned char *fz_take(fz_in *in, size_t len, size_t *got) {
    const unsigned char *p = in->p + in->at;
    if (len > in->n - in->at) len = in->n - in->at;
    in->at += len;
    *got = len;
    return p;
}

/* A growable byte buffer. */
typedef struct fz_buf {
    unsigned char *p;
    size_t len, cap;
} fz_buf;

static FZ_UNUSED void fz_buf_reserve(fz_buf *b, size_t need) {
    if (need <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) cap *= 2;
    b->p = realloc(b->p, cap);
    FZ_CHECK(b->p != NULL, "out of memory");
    b->cap = cap;
}
static FZ_UNUSED void fz_buf_put(fz_buf *b, const void *p, size_t len) {
    fz_buf_reserve(b, b->len + len + 1);
    if (len) memcpy(b->p + b->len, p, len);
    b->len += len;
}
static FZ_UNUSED void fz_buf_free(fz_buf *b) { free(b->p); memset(b, 0, sizeof *b); }

/* ------------------------------------------------------------------ */
/* Files and directories                                                */
/* ------------------------------------------------------------------ */

static char fz_root[PATH_MAX];

static int fz_rmtree(const char *path) {
    struct stat st;
    if (lstat(path, &st) < 0) return errno == ENOENT ? 0 : -1;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        struct dirent *de;
        char sub[PATH_MAX];
        if (!d) return -1;
        while ((de = readdir(d)) != NULL) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
            snprintf(sub, sizeof sub, "%s/%s", path, de->d_name);
            fz_rmtree(sub);
        }
        closedir(d);
        return rmdir(path);
    }
    return unlink(path);
}

static void fz_cleanup_root(void) {
    if (fz_root[0]) fz_rmtree(fz_root);
}

/* The process's scratch directory, made on first use. */
static FZ_UNUSED const char *fz_scratch(const char *tag) {
    if (!fz_root[0]) {
        const char *base = getenv("FUZZ_TMPDIR");
        if (!base || !*base) base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
        if (!base || !*base) base = "/tmp";
        snprintf(fz_root, sizeof fz_root, "%s/takhin-%s-XXXXXX", base, tag);
        FZ_CHECK(mkdtemp(fz_root) != NULL, "mkdtemp %s: %s", fz_root, strerror(errno));
        atexit(fz_cleanup_root);
    }
    return fz_root;
}

/* Empties dir (creating it when missing). */
static FZ_UNUSED void fz_clean_dir(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *de;
    char sub[PATH_MAX];
    if (!d) {
        FZ_CHECK(mkdir(dir, 0755) == 0, "mkdir %s: %s", dir, strerror(errno));
        return;
    }
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
        snprintf(sub, sizeof sub, "%s/%s", dir, de->d_name);
        fz_rmtree(sub);
    }
    closedir(d);
}

static FZ_UNUSED void fz_write_file(const char *path, const void *buf, size_t len) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    const unsigned char *p = buf;
    FZ_CHECK(fd >= 0, "create %s: %s", path, strerror(errno));
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        FZ_CHECK(n > 0, "write %s: %s", path, strerror(errno));
        p += n;
        len -= (size_t)n;
    }
    close(fd);
}

/* The whole file into b (b->len = 0 first); 0, or -1 when missing. */
static FZ_UNUSED int fz_read_file(const char *path, fz_buf *b) {
    unsigned char tmp[65536];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    b->len = 0;
    if (fd < 0) {
        FZ_CHECK(errno == ENOENT, "open %s: %s", path, strerror(errno));
        return -1;
    }
    for (;;) {
        ssize_t n = read(fd, tmp, sizeof tmp);
        FZ_CHECK(n >= 0, "read %s: %s", path, strerror(errno));
        if (n == 0) break;
        fz_buf_put(b, tmp, (size_t)n);
    }
    close(fd);
    return 0;
}

static FZ_UNUSED void fz_seg_name(char *out, size_t cap, const char *dir, int64_t base,
                                  const char *ext) {
    snprintf(out, cap, "%s/%020lld%s", dir, (long long)base, ext);
}
