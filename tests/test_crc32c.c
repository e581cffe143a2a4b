/*
 * test_crc32c.c -- CRC32C: known vectors, hardware/software agreement,
 * continuation.  Prints TAP; exits non-zero when any test fails.
 *
 * Both public implementations are also checked against a third, bit-at-a-
 * time one written here from the definition, so that a table or intrinsic
 * mistake shared by both cannot pass unnoticed.
 */
#include "takhin.h"
#include "tap.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* Helpers                                                              */
/* ------------------------------------------------------------------ */

typedef uint32_t (*crc_fn)(uint32_t, const void *, size_t);

/* CRC32C straight from the definition: reflected, one bit per step. */
static uint32_t crc_ref(uint32_t crc, const void *buf, size_t len) {
    const unsigned char *p = buf;
    crc = ~crc;
    while (len--) {
        crc ^= *p++;
        for (int b = 0; b < 8; b++)
            crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    }
    return ~crc;
}

/* splitmix64: a fixed seed makes every run check the same bytes. */
static uint64_t rng_state = 0x7A6B68696E2D3332ull;

static uint64_t rng(void) {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void fill_random(unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)rng();
}

/* ------------------------------------------------------------------ */
/* Tests                                                                */
/* ------------------------------------------------------------------ */

/*
 * The software tables are built on first use.  Make that first use happen
 * in several threads at once, so a sanitizer build sees the race if the
 * one-time initialisation is not properly guarded.
 */
#define FIRST_USE_THREADS 4

static void *first_use(void *arg) {
    uint32_t *out = arg;
    out[0] = tk_crc32c_sw(0, "123456789", 9);
    out[1] = tk_crc32c(0, "123456789", 9);
    out[2] = (uint32_t)tk_crc32c_hw_available();
    return NULL;
}

static void test_first_use_threads(void) {
    pthread_t th[FIRST_USE_THREADS];
    uint32_t res[FIRST_USE_THREADS][3];
    int started = 0, good = 1;

    for (int i = 0; i < FIRST_USE_THREADS; i++)
        if (pthread_create(&th[i], NULL, first_use, res[i]) == 0)
            started++;
        else
            break;
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < started; i++)
        good &= res[i][0] == 0xE3069283u && res[i][1] == 0xE3069283u &&
                res[i][2] == res[0][2];
    ok(started == FIRST_USE_THREADS && good,
       "concurrent first use from %d threads", FIRST_USE_THREADS);
}

struct vector {
    const char *name;
    unsigned char data[32];
    size_t len;
    uint32_t want;
};

static void test_vectors(void) {
    static struct vector v[6] = {
        { "\"123456789\"", "123456789", 9, 0xE3069283u },
        { "32 x 0x00 (RFC 3720)", {0}, 32, 0x8A9136AAu },
        { "32 x 0xFF (RFC 3720)", {0}, 32, 0x62A8AB43u },
        { "0..31 incrementing (RFC 3720)", {0}, 32, 0x46DD794Eu },
        { "31..0 decrementing (RFC 3720)", {0}, 32, 0x113FDB5Cu },
        { "empty", {0}, 0, 0u },
    };
    static const struct { const char *name; crc_fn fn; } impl[] = {
        { "tk_crc32c", tk_crc32c },
        { "tk_crc32c_sw", tk_crc32c_sw },
        { "reference", crc_ref },
    };

    memset(v[2].data, 0xFF, 32);
    for (int i = 0; i < 32; i++) {
        v[3].data[i] = (unsigned char)i;
        v[4].data[i] = (unsigned char)(31 - i);
    }
    for (size_t f = 0; f < sizeof impl / sizeof impl[0]; f++)
        for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
            uint32_t got = impl[f].fn(0, v[i].data, v[i].len);
            ok(got == v[i].want, "%s %s = 0x%08X (want 0x%08X)",
               impl[f].name, v[i].name, got, v[i].want);
        }

    /* An empty buffer leaves any running value alone, even with NULL. */
    ok(tk_crc32c(0xDEADBEEFu, NULL, 0) == 0xDEADBEEFu &&
       tk_crc32c_sw(0xDEADBEEFu, NULL, 0) == 0xDEADBEEFu,
       "empty input with NULL buffer returns the running crc unchanged");
}

/*
 * Every length 0..1024 at every misalignment 0..7, starting both from 0 and
 * from an arbitrary running value: hardware, software and the reference
 * must give the same answer.  One TAP line per alignment keeps the output
 * readable while still naming the first mismatch.
 */
#define MAX_LEN 1024

static void test_agreement(void) {
    unsigned char *mem = malloc(MAX_LEN + 64);
    if (mem == NULL) {
        ok(0, "hw/sw agreement: out of memory");
        return;
    }
    /* Start from a 64-byte boundary so "align" is the true misalignment. */
    unsigned char *base = mem + (64 - ((uintptr_t)mem & 63u)) % 64;
    fill_random(base, MAX_LEN + 8);

    for (size_t align = 0; align < 8; align++) {
        const unsigned char *p = base + align;
        size_t bad_len = 0;
        uint32_t bad_seed = 0, hw = 0, sw = 0, ref = 0;
        int good = 1;

        for (size_t len = 0; len <= MAX_LEN && good; len++) {
            const uint32_t seeds[2] = { 0, (uint32_t)rng() };
            for (int s = 0; s < 2 && good; s++) {
                hw = tk_crc32c(seeds[s], p, len);
                sw = tk_crc32c_sw(seeds[s], p, len);
                ref = crc_ref(seeds[s], p, len);
                if (hw != sw || sw != ref) {
                    good = 0;
                    bad_len = len;
                    bad_seed = seeds[s];
                }
            }
        }
        if (good)
            ok(1, "hw == sw == reference, lengths 0..%d at alignment %zu",
               MAX_LEN, align);
        else
            ok(0, "hw == sw == reference at alignment %zu: len %zu seed 0x%08X"
               " hw 0x%08X sw 0x%08X ref 0x%08X",
               align, bad_len, bad_seed, hw, sw, ref);
    }
    free(mem);
}

/* crc(a || b) == crc(crc(a), b) at every split point, for both
 * implementations and for the two mixed orders. */
static void test_continuation(void) {
    unsigned char buf[MAX_LEN];
    fill_random(buf, sizeof buf);
    const uint32_t whole = crc_ref(0, buf, sizeof buf);
    static const struct { const char *name; crc_fn first, second; } pairs[] = {
        { "tk_crc32c then tk_crc32c", tk_crc32c, tk_crc32c },
        { "tk_crc32c_sw then tk_crc32c_sw", tk_crc32c_sw, tk_crc32c_sw },
        { "tk_crc32c then tk_crc32c_sw", tk_crc32c, tk_crc32c_sw },
        { "tk_crc32c_sw then tk_crc32c", tk_crc32c_sw, tk_crc32c },
    };

    ok(tk_crc32c(0, buf, sizeof buf) == whole &&
       tk_crc32c_sw(0, buf, sizeof buf) == whole,
       "whole-buffer crc matches the reference");
    for (size_t k = 0; k < sizeof pairs / sizeof pairs[0]; k++) {
        size_t bad = 0;
        int good = 1;
        for (size_t cut = 0; cut <= sizeof buf && good; cut++) {
            uint32_t c = pairs[k].first(0, buf, cut);
            c = pairs[k].second(c, buf + cut, sizeof buf - cut);
            if (c != whole) {
                good = 0;
                bad = cut;
            }
        }
        if (good)
            ok(1, "continuation %s at every split of %d bytes",
               pairs[k].name, MAX_LEN);
        else
            ok(0, "continuation %s: split at %zu differs", pairs[k].name, bad);
    }

    /* Many small pieces, as a caller checksumming a record field by field. */
    uint32_t c = 0;
    size_t at = 0;
    while (at < sizeof buf) {
        size_t n = (size_t)(rng() % 13);
        if (n > sizeof buf - at)
            n = sizeof buf - at;
        c = tk_crc32c(c, buf + at, n);
        at += n;
    }
    ok(c == whole, "continuation over random pieces of 0..12 bytes");
}

/* A buffer large enough that the hardware loop dominates. */
static void test_large(void) {
    const size_t n = (size_t)1 << 20;
    unsigned char *buf = malloc(n + 1);
    if (buf == NULL) {
        ok(0, "1 MiB buffer: out of memory");
        return;
    }
    fill_random(buf, n + 1);
    uint32_t ref = crc_ref(0, buf + 1, n);
    ok(tk_crc32c(0, buf + 1, n) == ref && tk_crc32c_sw(0, buf + 1, n) == ref,
       "1 MiB misaligned buffer: hw == sw == reference (0x%08X)", ref);
    free(buf);
}

int main(void) {
    test_first_use_threads();
    printf("# hw: %s\n", tk_crc32c_hw_available() ? "yes" : "no");
    test_vectors();
    test_agreement();
    test_continuation();
    test_large();
    return tap_done();
}
