/* A growable C byte buffer for reply encoding, shared by resp.pyx
 * (encode_replies) and kv.pyx (KVStore.apply_replies).  Header-only, like
 * rfstr.h.  Functions return 0, or -1 with MemoryError set.
 */
#ifndef RAFTFAST_RFBUF_H
#define RAFTFAST_RFBUF_H

#include <Python.h>
#include <string.h>

typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
} rf_wbuf;

static int rf_wbuf_grow(rf_wbuf *w, Py_ssize_t extra) {
    Py_ssize_t cap = w->cap * 2;
    char *p;
    if (extra > PY_SSIZE_T_MAX - w->len) {
        PyErr_NoMemory();
        return -1;
    }
    if (cap < w->len + extra)
        cap = w->len + extra;
    if (cap < 256)
        cap = 256;
    p = (char *)PyMem_Realloc(w->data, (size_t)cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    w->data = p;
    w->cap = cap;
    return 0;
}

static inline int rf_wbuf_reserve(rf_wbuf *w, Py_ssize_t extra) {
    return w->cap - w->len >= extra ? 0 : rf_wbuf_grow(w, extra);
}

static inline int rf_wbuf_put(rf_wbuf *w, const char *p, Py_ssize_t n) {
    if (rf_wbuf_reserve(w, n) < 0)
        return -1;
    memcpy(w->data + w->len, p, (size_t)n);
    w->len += n;
    return 0;
}

/* prefix, v in decimal, CRLF (`:42`, `*3`, `$5`). */
static inline int rf_wbuf_put_int_line(rf_wbuf *w, char prefix, long long v) {
    char digits[24];
    int i = 24;
    unsigned long long u = (unsigned long long)v;
    if (v < 0)
        u = 0ULL - u;
    do {
        digits[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        digits[--i] = '-';
    if (rf_wbuf_reserve(w, 28) < 0)
        return -1;
    w->data[w->len] = prefix;
    memcpy(w->data + w->len + 1, digits + i, (size_t)(24 - i));
    w->len += 25 - i;
    w->data[w->len] = '\r';
    w->data[w->len + 1] = '\n';
    w->len += 2;
    return 0;
}

static inline int rf_wbuf_put_bulk(rf_wbuf *w, const char *p, Py_ssize_t n) {
    if (rf_wbuf_put_int_line(w, '$', n) < 0 || rf_wbuf_reserve(w, n + 2) < 0)
        return -1;
    memcpy(w->data + w->len, p, (size_t)n);
    w->len += n;
    w->data[w->len] = '\r';
    w->data[w->len + 1] = '\n';
    w->len += 2;
    return 0;
}

#endif /* RAFTFAST_RFBUF_H */
