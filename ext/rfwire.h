/* Little-endian integers and the entry block: the byte layout every
 * extension reads and writes.  ext/raftfast/_wire.pxd declares them for
 * Cython.  Header-only, like crc32c.h: each extension compiles its own copy
 * and the compiler inlines every call.
 *
 * An entry block is entries back to back, each a 13-byte header
 *     u32 data_len | u64 term | u8 type
 * followed by data_len bytes (raftfast/core/messages.py describes the
 * format; ENTRY_HEADER_SIZE there is checked against RF_ENTRY_HEADER).
 */
#ifndef RAFTFAST_RFWIRE_H
#define RAFTFAST_RFWIRE_H

#include <stddef.h>
#include <stdint.h>

#define RF_ENTRY_HEADER 13
#define RF_ENTRY_TERM_AT 4       /* offset of the u64 term in the header */
#define RF_ENTRY_TYPE_AT 12      /* offset of the u8 type */
#define RF_ENTRY_NORMAL 0
#define RF_ENTRY_NOOP 1
#define RF_ENTRY_CONFIG 2
#define RF_ENTRY_TIME 3         /* cluster time: data is a u64 LE of milliseconds */
#define RF_ENTRY_TYPE_MAX RF_ENTRY_TIME

/* Byte by byte, so they are right on any host and need no alignment;
 * compilers fuse each into one (unaligned) move on little-endian hosts. */

static inline uint16_t rf_ld16(const uint8_t *p) {
    return (uint16_t)(p[0] | ((uint16_t)p[1] << 8));
}

static inline uint32_t rf_ld32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16)
           | ((uint32_t)p[3] << 24);
}

static inline uint64_t rf_ld64(const uint8_t *p) {
    return (uint64_t)rf_ld32(p) | ((uint64_t)rf_ld32(p + 4) << 32);
}

static inline void rf_st16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static inline void rf_st32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static inline void rf_st64(uint8_t *p, uint64_t v) {
    rf_st32(p, (uint32_t)v);
    rf_st32(p + 4, (uint32_t)(v >> 32));
}

/* What rf_block_walk found at the first bad entry. */
typedef enum {
    RF_BLOCK_OK = 0,
    RF_BLOCK_SHORT_HEADER,      /* fewer than RF_ENTRY_HEADER bytes left */
    RF_BLOCK_DATA_PAST_END,     /* data_len runs past the end of the block */
    RF_BLOCK_BAD_TYPE           /* type above type_max */
} rf_block_status;

/* Walk a block from header to header without reading any data.  *count
 * is the number of whole entries before the first bad one (all of them
 * when the block is good) and *at the byte offset where that bad entry
 * starts (n when good).  Entries with a type above type_max are bad; pass
 * 255 to accept every type.  The sums cannot overflow: data_len is
 * compared with the room left, never added to the offset first. */
static inline rf_block_status rf_block_walk(const uint8_t *p, size_t n, unsigned type_max,
                                            size_t *count, size_t *at) {
    size_t off = 0, k = 0;
    rf_block_status st = RF_BLOCK_OK;
    uint32_t dlen;
    while (off < n) {
        if (n - off < RF_ENTRY_HEADER) {
            st = RF_BLOCK_SHORT_HEADER;
            break;
        }
        dlen = rf_ld32(p + off);
        if (dlen > n - off - RF_ENTRY_HEADER) {
            st = RF_BLOCK_DATA_PAST_END;
            break;
        }
        if (p[off + RF_ENTRY_TYPE_AT] > type_max) {
            st = RF_BLOCK_BAD_TYPE;
            break;
        }
        off += RF_ENTRY_HEADER + (size_t)dlen;
        k++;
    }
    *count = k;
    *at = off;
    return st;
}

#endif /* RAFTFAST_RFWIRE_H */
