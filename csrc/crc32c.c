/*
 * crc32c.c -- CRC32C (Castagnoli), the checksum of every record.
 *
 * The polynomial is 0x1EDC6F41, processed bit-reflected (0x82F63B78), with
 * initial value and final XOR 0xFFFFFFFF; the check value of "123456789" is
 * 0xE3069283.  As with zlib's crc32(), the crc argument is a *finished* CRC
 * to continue from (0 to start), so
 *
 *     tk_crc32c(tk_crc32c(0, a, n), b, m) == crc of a || b.
 *
 * Two implementations compute the same function:
 *
 *   - a portable one, slicing-by-8: eight 256-entry tables let each step
 *     consume eight bytes with eight independent look-ups;
 *   - a hardware one: the SSE4.2 crc32 instruction on x86_64 (chosen at run
 *     time, as the library may be built for CPUs that lack it) or the ARMv8
 *     CRC32C instructions on aarch64 (only when the compiler targets them,
 *     i.e. __ARM_FEATURE_CRC32 is defined).
 *
 * Both work on the raw (pre-inverted) register; the public functions do the
 * inversion once at entry and once at exit.  Inputs may have any alignment:
 * multi-byte loads go through memcpy or are assembled from bytes, so the
 * code never dereferences a misaligned pointer and does not depend on the
 * host's byte order.
 */
#include "takhin.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "internal.h"

#define CRC32C_POLY 0x82F63B78u     /* 0x1EDC6F41 bit-reflected */

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#  define TK_CRC_X86 1
#  include <nmmintrin.h>
#elif defined(__aarch64__) && defined(__ARM_FEATURE_CRC32) && \
      defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
   /* __crc32cd takes the 8 bytes as a little-endian word (see memcpy). */
#  define TK_CRC_ARM 1
#  include <arm_acle.h>
#endif

/* ------------------------------------------------------------------ */
/* Portable: slicing-by-8                                              */
/* ------------------------------------------------------------------ */

/*
 * crc_table[0] is the classic byte-at-a-time table: the CRC register after
 * shifting byte i through it.  crc_table[k][i] is the same for byte i
 * followed by k zero bytes, so a byte that sits k positions before the end
 * of an 8-byte block is accounted for by one look-up in crc_table[k].
 *
 * The tables are filled once, under pthread_once, which also publishes the
 * stores to every thread that later passes through it.
 */
static uint32_t crc_table[8][256];
static pthread_once_t crc_table_once = PTHREAD_ONCE_INIT;

static void crc_table_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int b = 0; b < 8; b++)
            c = (c >> 1) ^ (CRC32C_POLY & (0u - (c & 1u)));
        crc_table[0][i] = c;
    }
    for (int k = 1; k < 8; k++)
        for (int i = 0; i < 256; i++) {
            uint32_t c = crc_table[k - 1][i];
            crc_table[k][i] = (c >> 8) ^ crc_table[0][c & 0xFFu];
        }
}

/* Little-endian load; compilers turn this into a single mov on LE hosts. */
static inline uint32_t load_le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 |
           (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint32_t crc_sw_raw(uint32_t crc, const unsigned char *p, size_t len) {
    const uint32_t (*t)[256] = crc_table;      /* shorter lines below */

    /* Byte at a time to an 8-byte boundary, so that the block loads below
     * never straddle a cache line.  This is for speed only: load_le32 is
     * safe at any address. */
    while (len > 0 && ((uintptr_t)p & 7u) != 0) {
        crc = (crc >> 8) ^ t[0][(crc ^ *p++) & 0xFFu];
        len--;
    }
    while (len >= 8) {
        uint32_t lo = crc ^ load_le32(p);
        uint32_t hi = load_le32(p + 4);
        crc = t[7][lo & 0xFFu] ^ t[6][(lo >> 8) & 0xFFu] ^
              t[5][(lo >> 16) & 0xFFu] ^ t[4][lo >> 24] ^
              t[3][hi & 0xFFu] ^ t[2][(hi >> 8) & 0xFFu] ^
              t[1][(hi >> 16) & 0xFFu] ^ t[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len > 0) {
        crc = (crc >> 8) ^ t[0][(crc ^ *p++) & 0xFFu];
        len--;
    }
    return crc;
}

uint32_t tk_crc32c_sw(uint32_t crc, const void *buf, size_t len) {
    if (len == 0)
        return crc;
    pthread_once(&crc_table_once, crc_table_init);
    return ~crc_sw_raw(~crc, buf, len);
}

/* ------------------------------------------------------------------ */
/* Hardware                                                             */
/* ------------------------------------------------------------------ */

/*
 * One crc32 instruction per 8 bytes.  The instruction has a latency of a
 * few cycles and this loop is a single dependency chain, so it runs at
 * roughly 8 bytes per that latency -- many times the table version, and
 * well beyond what the write path needs.  (Interleaving three streams and
 * combining them would triple it, at the cost of shift tables.)
 */
#if defined(TK_CRC_X86)

__attribute__((target("sse4.2")))
static uint32_t crc_hw_raw(uint32_t crc, const unsigned char *p, size_t len) {
    /* As above: align for speed; memcpy makes any address safe. */
    while (len > 0 && ((uintptr_t)p & 7u) != 0) {
        crc = _mm_crc32_u8(crc, *p++);
        len--;
    }
    uint64_t c = crc;
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = _mm_crc32_u64(c, w);
        p += 8;
        len -= 8;
    }
    crc = (uint32_t)c;
    while (len > 0) {
        crc = _mm_crc32_u8(crc, *p++);
        len--;
    }
    return crc;
}

static int hw_detect(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2") ? 1 : 0;
}

#elif defined(TK_CRC_ARM)

static uint32_t crc_hw_raw(uint32_t crc, const unsigned char *p, size_t len) {
    while (len > 0 && ((uintptr_t)p & 7u) != 0) {
        crc = __crc32cb(crc, *p++);
        len--;
    }
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        crc = __crc32cd(crc, w);
        p += 8;
        len -= 8;
    }
    while (len > 0) {
        crc = __crc32cb(crc, *p++);
        len--;
    }
    return crc;
}

static int hw_detect(void) {
    return 1;           /* the compiler was told the CPU has it */
}

#else

static uint32_t crc_hw_raw(uint32_t crc, const unsigned char *p, size_t len) {
    (void)p; (void)len;
    return crc;         /* never called: hw_detect() says no */
}

static int hw_detect(void) {
    return 0;
}

#endif

/*
 * The CPU check is cached in hw_state: -1 until known, then 0 or 1.  The
 * check itself runs once, under pthread_once (so __builtin_cpu_init never
 * runs in two threads at a time); afterwards every call costs one relaxed
 * load.  Relaxed is enough: hw_state publishes no other data, and a thread
 * that still sees -1 simply goes through pthread_once, which orders it
 * after the store.
 */
static atomic_int hw_state = -1;
static pthread_once_t hw_once = PTHREAD_ONCE_INIT;

static void hw_init(void) {
    atomic_store_explicit(&hw_state, hw_detect(), memory_order_relaxed);
}

int tk_crc32c_hw_available(void) {
    int s = atomic_load_explicit(&hw_state, memory_order_relaxed);
    if (s < 0) {
        pthread_once(&hw_once, hw_init);
        s = atomic_load_explicit(&hw_state, memory_order_relaxed);
    }
    return s;
}

uint32_t tk_crc32c(uint32_t crc, const void *buf, size_t len) {
    if (len == 0)
        return crc;
    if (tk_crc32c_hw_available())
        return ~crc_hw_raw(~crc, buf, len);
    return tk_crc32c_sw(crc, buf, len);
}
