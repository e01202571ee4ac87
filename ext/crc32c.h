/* CRC32C (Castagnoli), as used by iSCSI, ext4 and etcd's WAL.
 *
 * Every log record and every peer frame carries one.  On x86-64 with SSE4.2
 * the crc32 instruction does 8 bytes per cycle-ish; elsewhere a slice-by-8
 * table does about 1 byte per cycle.  The choice is made once, at first use.
 * Header-only so that each extension that needs it compiles it in: the
 * extensions are separate shared objects and must not depend on each other
 * at link time.
 */
#ifndef RAFTFAST_CRC32C_H
#define RAFTFAST_CRC32C_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static uint32_t rf_crc32c_table[8][256];
static int rf_crc32c_mode = 0; /* 0 = not chosen yet, 1 = table, 2 = sse4.2 */

static void rf_crc32c_init_table(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        rf_crc32c_table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = rf_crc32c_table[0][n];
        for (int s = 1; s < 8; s++) {
            c = rf_crc32c_table[0][c & 0xff] ^ (c >> 8);
            rf_crc32c_table[s][n] = c;
        }
    }
}

static uint32_t rf_crc32c_sw(uint32_t crc, const uint8_t *p, size_t n) {
    crc = ~crc;
    while (n && ((uintptr_t)p & 7)) {
        crc = rf_crc32c_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        n--;
    }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        w = __builtin_bswap64(w);
#endif
        w ^= crc;
        crc = rf_crc32c_table[7][w & 0xff] ^ rf_crc32c_table[6][(w >> 8) & 0xff] ^
              rf_crc32c_table[5][(w >> 16) & 0xff] ^ rf_crc32c_table[4][(w >> 24) & 0xff] ^
              rf_crc32c_table[3][(w >> 32) & 0xff] ^ rf_crc32c_table[2][(w >> 40) & 0xff] ^
              rf_crc32c_table[1][(w >> 48) & 0xff] ^ rf_crc32c_table[0][w >> 56];
        p += 8;
        n -= 8;
    }
    while (n--) crc = rf_crc32c_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("sse4.2")))
static uint32_t rf_crc32c_hw(uint32_t crc, const uint8_t *p, size_t n) {
    uint64_t c = (uint32_t)~crc;
    while (n && ((uintptr_t)p & 7)) {
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
        n--;
    }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = __builtin_ia32_crc32di(c, w);
        p += 8;
        n -= 8;
    }
    while (n--) c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
    return ~(uint32_t)c;
}
#endif

/* Extend `crc` (0 for a fresh checksum) over n bytes at p. */
static uint32_t rf_crc32c(uint32_t crc, const uint8_t *p, size_t n) {
    if (rf_crc32c_mode == 0) {
        rf_crc32c_init_table();
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
        __builtin_cpu_init();
        rf_crc32c_mode = __builtin_cpu_supports("sse4.2") ? 2 : 1;
#else
        rf_crc32c_mode = 1;
#endif
    }
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (rf_crc32c_mode == 2) return rf_crc32c_hw(crc, p, n);
#endif
    return rf_crc32c_sw(crc, p, n);
}

/* The portable path, exposed so tests can check both paths agree. */
static uint32_t rf_crc32c_portable(uint32_t crc, const uint8_t *p, size_t n) {
    if (rf_crc32c_mode == 0) rf_crc32c(0, p, 0);
    return rf_crc32c_sw(crc, p, n);
}

#endif
