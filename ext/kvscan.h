/* SCAN's parts for kv.pyx: the key hash that orders a scan, Redis's glob
 * (MATCH) in linear time, and Redis's cursor syntax.  Header-only, like
 * rfstr.h.
 *
 * SCAN walks the keys in the order of rf_scan_hash, a hash that is the
 * same on every replica and in every process (SipHash-1-3 under a fixed
 * key; Python's own bytes hash is randomised per process).  A cursor is a
 * position in that order, so any replica, after any restore, reads it the
 * same way.
 */
#ifndef RAFTFAST_KVSCAN_H
#define RAFTFAST_KVSCAN_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define RF_ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define RF_SIPROUND                                                     \
    do {                                                                \
        v0 += v1; v1 = RF_ROTL(v1, 13); v1 ^= v0; v0 = RF_ROTL(v0, 32); \
        v2 += v3; v3 = RF_ROTL(v3, 16); v3 ^= v2;                       \
        v0 += v3; v3 = RF_ROTL(v3, 21); v3 ^= v0;                       \
        v2 += v1; v1 = RF_ROTL(v1, 17); v1 ^= v2; v2 = RF_ROTL(v2, 32); \
    } while (0)

/* SipHash-1-3 of p[0..n) under a fixed key: part of how SCAN cursors are
 * read, so never change the key or the function. */
static inline uint64_t rf_scan_hash(const unsigned char *p, size_t n) {
    const uint64_t k0 = 0x7261667466617374ULL, k1 = 0x7363616e63757273ULL;
    uint64_t v0 = 0x736f6d6570736575ULL ^ k0, v1 = 0x646f72616e646f6dULL ^ k1;
    uint64_t v2 = 0x6c7967656e657261ULL ^ k0, v3 = 0x7465646279746573ULL ^ k1;
    uint64_t b = ((uint64_t)n) << 56, m;
    size_t i, tail = n & 7;
    for (i = 0; i + 8 <= n; i += 8) {
        m = (uint64_t)p[i] | (uint64_t)p[i + 1] << 8 | (uint64_t)p[i + 2] << 16
            | (uint64_t)p[i + 3] << 24 | (uint64_t)p[i + 4] << 32 | (uint64_t)p[i + 5] << 40
            | (uint64_t)p[i + 6] << 48 | (uint64_t)p[i + 7] << 56;
        v3 ^= m;
        RF_SIPROUND;
        v0 ^= m;
    }
    for (m = 0; tail; tail--)
        m |= (uint64_t)p[i + tail - 1] << (8 * (tail - 1));
    b |= m;
    v3 ^= b;
    RF_SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    RF_SIPROUND;
    RF_SIPROUND;
    RF_SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* One pattern token that is not '*', at pat[*at] (plen bytes in all),
 * against the character c: Redis's stringmatchlen (util.c) for '?', '[...]'
 * (with '^', ranges either way round and between signed chars as Redis's
 * are, '\' escapes, an unterminated class
 * running to the end of the pattern) and '\' escapes, byte for byte,
 * case-sensitive.  Returns whether it matches and moves *at past it. */
static int rf_glob_token(const unsigned char *pat, size_t plen, size_t *at, unsigned char c) {
    size_t i = *at;
    int neg, match;
    if (pat[i] == '?') {
        *at = i + 1;
        return 1;
    }
    if (pat[i] == '\\' && plen - i >= 2) {
        *at = i + 2;
        return pat[i + 1] == c;
    }
    if (pat[i] != '[') {
        *at = i + 1;
        return pat[i] == c;
    }
    i++;
    neg = i < plen && pat[i] == '^';
    if (neg)
        i++;
    match = 0;
    for (;;) {
        if (i >= plen) {
            /* Unterminated: Redis steps back onto the last byte, then past it. */
            break;
        }
        if (pat[i] == '\\' && plen - i >= 2) {
            i++;
            if (pat[i] == c)
                match = 1;
        } else if (pat[i] == ']') {
            i++;
            break;
        } else if (plen - i >= 3 && pat[i + 1] == '-') {
            /* Redis compares range ends as C chars, which are signed here:
             * byte 0xff is -1, below 'a'. */
            int lo = (signed char)pat[i], hi = (signed char)pat[i + 2], sc = (signed char)c;
            if (lo > hi) {
                int t = lo;
                lo = hi;
                hi = t;
            }
            i += 2;
            if (sc >= lo && sc <= hi)
                match = 1;
        } else if (pat[i] == c) {
            match = 1;
        }
        i++;
    }
    *at = i;
    return neg ? !match : match;
}

/* Does s match the glob pattern pat, as Redis's stringmatchlen (nocase 0)
 * decides?  Every token but '*' matches exactly one byte, so the greedy
 * leftmost placement of each run between stars is the right one: on a
 * mismatch only the last star takes one more byte.  Time is at most
 * O(plen * slen), never exponential; no recursion. */
static int rf_glob_match(const unsigned char *pat, size_t plen, const unsigned char *s,
                         size_t slen) {
    size_t p = 0, i = 0, star_p = (size_t)-1, star_i = 0, next;
    /* Redis's loop never runs on an empty string: only an empty pattern matches it. */
    if (slen == 0)
        return plen == 0;
    while (i < slen) {
        if (p < plen && pat[p] == '*') {
            while (p < plen && pat[p] == '*')
                p++;
            if (p == plen)
                return 1;
            star_p = p;
            star_i = i;
            continue;
        }
        next = p;
        if (p < plen && rf_glob_token(pat, plen, &next, s[i])) {
            p = next;
            i++;
            continue;
        }
        if (star_p == (size_t)-1)
            return 0;
        p = star_p;
        i = ++star_i;
    }
    while (p < plen && pat[p] == '*')
        p++;
    return p == plen;
}

/* Redis's cursor syntax (parseScanCursorOrReply: strtoul base 10): no
 * leading space, an optional sign ('-' wraps around as strtoul does), digits
 * to the end (none at all reads as 0), at most 2^64 - 1.  1 and *out, or 0. */
static inline int rf_scan_cursor(const unsigned char *s, size_t n, uint64_t *out) {
    size_t i = 0;
    int neg = 0;
    uint64_t v = 0;
    if (n == 0) {
        *out = 0;
        return 1;
    }
    if (s[0] == '+' || s[0] == '-') {
        neg = s[0] == '-';
        i = 1;
        if (n == 1)
            return 0;   /* strtoul converts nothing and stops at the sign */
    }
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        if (v > (UINT64_MAX - (uint64_t)(s[i] - '0')) / 10)
            return 0;   /* ERANGE */
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = neg ? (uint64_t)0 - v : v;
    return 1;
}

#endif /* RAFTFAST_KVSCAN_H */
