/* String helpers shared by the extensions (kv, resp).
 *
 * Header-only, like crc32c.h: each extension compiles its own copy, so the
 * extensions (separate shared objects) never depend on each other at link
 * time.  tests/reference/resp_py.py keeps the readable Python twin of
 * rf_string2ll (string2ll).
 */
#ifndef RAFTFAST_RFSTR_H
#define RAFTFAST_RFSTR_H

#include <limits.h>
#include <stddef.h>

/* rf_string2ll refuses 21 characters or more (LONG_STR_SIZE in Redis). */
#define RF_MAX_NUMBER_LEN 20

/* Redis's strict integer syntax (util.c string2ll): optional '-', no '+',
 * no spaces, no leading zeros (so no "-0"), fits a signed 64-bit integer.
 * Returns 1 and stores the value in *out, or returns 0 and leaves *out
 * alone. */
static inline int rf_string2ll(const unsigned char *s, size_t n, long long *out) {
    size_t i = 0;
    int negative = 0;
    unsigned long long v;

    if (n == 0 || n > RF_MAX_NUMBER_LEN)
        return 0;
    if (n == 1 && s[0] == '0') {
        *out = 0;
        return 1;
    }
    if (s[0] == '-') {
        negative = 1;
        i = 1;
        if (n == 1)
            return 0;
    }
    if (s[i] < '1' || s[i] > '9')
        return 0;
    v = (unsigned long long)(s[i] - '0');
    i++;
    while (i < n) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        if (v > ULLONG_MAX / 10)
            return 0;
        v *= 10;
        if (v > ULLONG_MAX - (unsigned long long)(s[i] - '0'))
            return 0;
        v += (unsigned long long)(s[i] - '0');
        i++;
    }
    if (negative) {
        if (v > (unsigned long long)LLONG_MAX + 1)
            return 0;
        /* v >= 1 here (the first digit is 1-9), so this never overflows,
         * and -(2^63) comes out without an out-of-range conversion. */
        *out = -(long long)(v - 1) - 1;
    } else {
        if (v > (unsigned long long)LLONG_MAX)
            return 0;
        *out = (long long)v;
    }
    return 1;
}

#endif /* RAFTFAST_RFSTR_H */
