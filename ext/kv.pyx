# cython: language_level=3
"""The replicated key-value state machine: applies committed entry blocks
to a dict of bytes -> bytes in one C loop per block.

Command payload, the data of an ENTRY_NORMAL entry (version 1):

    u8      opcode      OP_SET=1 OP_GET=2 OP_MGET=3 OP_EXISTS=4 OP_DEL=5
                        OP_APPEND=6 OP_INCR=7 (numbers are part of the log
                        format: never reuse one)
    u32 LE  argc        arguments, excluding the command name
    argc times:
      u32 LE  len
      len bytes

The client layer builds a whole batch with encode_commands() and proposes
the block as is (terms 0; the core stamps them).  Reads travel through the
log too, so they are linearized with the writes around them.
"""
import logging

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Contains, PyDict_DelItem, PyDict_GetItem, PyDict_SetItem
from cpython.object cimport PyObject
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdio cimport snprintf
from libc.string cimport memcpy, memset

cdef extern from "rfstr.h":
    # Redis's strict string2ll, shared with resp.pyx (INCR's integer rule).
    bint _string2ll "rf_string2ll" (const unsigned char *s, size_t n, long long *out) noexcept nogil

from raftfast import messages
from raftfast._resp import OK, ErrorReply

_log = logging.getLogger("raftfast.kv")

DEF HEADER = 13          # entry header: u32 data_len, u64 term, u8 type
DEF CMD_HEADER = 5       # u8 opcode, u32 argc

cdef enum:
    T_NORMAL = 0
    T_NOOP = 1
    T_CONFIG = 2

# The entry format is defined in messages.py; a mismatch is caught at import.
assert (messages.ENTRY_HEADER_SIZE, messages.ENTRY_NORMAL, messages.ENTRY_NOOP,
        messages.ENTRY_CONFIG) == (HEADER, T_NORMAL, T_NOOP, T_CONFIG)

OP_SET = 1
OP_GET = 2
OP_MGET = 3
OP_EXISTS = 4
OP_DEL = 5
OP_APPEND = 6
OP_INCR = 7

OPCODES = {b"set": OP_SET, b"get": OP_GET, b"mget": OP_MGET, b"exists": OP_EXISTS,
           b"del": OP_DEL, b"append": OP_APPEND, b"incr": OP_INCR}

# Arity per opcode (index = opcode); a max of 0 means no upper bound.
cdef uint32_t _MIN_ARGS[8]
cdef uint32_t _MAX_ARGS[8]
_MIN_ARGS[:] = [0, 2, 1, 1, 1, 1, 2, 1]
_MAX_ARGS[:] = [0, 2, 1, 0, 0, 0, 2, 1]

_ERR_NOT_INTEGER = ErrorReply("ERR value is not an integer or out of range")
_ERR_OVERFLOW = ErrorReply("ERR increment or decrement would overflow")
_ERR_CORRUPT = ErrorReply("ERR corrupt command in log")


cdef inline uint32_t _get_u32(const uint8_t *p) noexcept nogil:
    return p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline void _put_u32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = v & 0xFF
    p[1] = (v >> 8) & 0xFF
    p[2] = (v >> 16) & 0xFF
    p[3] = v >> 24


cdef inline bint _arity_ok(uint32_t op, uint64_t argc) noexcept nogil:
    return argc >= _MIN_ARGS[op] and (_MAX_ARGS[op] == 0 or argc <= _MAX_ARGS[op])


cdef inline bytes _next_arg(const uint8_t **cur):
    """The argument at *cur as bytes; *cur moves past it (bounds were
    checked when the payload was validated)."""
    cdef uint32_t n = _get_u32(cur[0])
    cdef bytes b = PyBytes_FromStringAndSize(<const char *>cur[0] + 4, n)
    cur[0] += 4 + n
    return b


def encode_commands(list commands):
    """One entry block (term 0, ENTRY_NORMAL) holding a payload per
    (opcode, args) command, args being a list or tuple of bytes."""
    cdef Py_ssize_t total = 0, size, n
    cdef uint32_t op
    cdef uint8_t *p
    cdef uint8_t *end
    cdef bytes out
    # Pass 1: validate and size, so the block is written into one buffer.
    for cmd in commands:
        opcode, args = cmd
        if type(opcode) is not int or not OP_SET <= opcode <= OP_INCR:
            raise ValueError(f"unknown opcode {opcode!r}")
        if not isinstance(args, (list, tuple)):
            raise TypeError("command arguments must be a list or tuple of bytes")
        # Refused here, before it is replicated, rather than at apply time.
        if not _arity_ok(opcode, len(args)):
            raise ValueError(f"wrong number of arguments ({len(args)}) for opcode {opcode}")
        size = CMD_HEADER
        for a in args:
            if type(a) is not bytes:
                raise TypeError(f"command argument must be bytes, not {type(a).__name__}")
            size += 4 + PyBytes_GET_SIZE(a)
        if size > 0xFFFFFFFF:
            raise ValueError("command too large for one entry")
        total += HEADER + size
    out = PyBytes_FromStringAndSize(NULL, total)
    p = <uint8_t *>PyBytes_AS_STRING(out)
    end = p + total
    # Pass 2: write.  Nothing ran in between that could change a list or
    # tuple of bytes; the end check guards the buffer regardless.
    for cmd in commands:
        opcode, args = cmd
        size = CMD_HEADER
        for a in args:
            size += 4 + PyBytes_GET_SIZE(a)
        if end - p < HEADER + size:
            raise RuntimeError("commands changed while being encoded")
        _put_u32(p, <uint32_t>size)
        memset(p + 4, 0, 8)              # term: stamped by the core
        p[12] = T_NORMAL
        p[13] = <uint8_t>opcode
        _put_u32(p + 14, <uint32_t>len(args))
        p += HEADER + CMD_HEADER
        for a in args:
            n = PyBytes_GET_SIZE(a)
            _put_u32(p, <uint32_t>n)
            memcpy(p + 4, PyBytes_AS_STRING(a), n)
            p += 4 + n
    if p != end:
        raise RuntimeError("commands changed while being encoded")
    return out


cdef class KVStore:
    """The state machine.  The dict is the single source of truth (a later
    snapshot/restore reads and replaces it)."""
    cdef dict _data

    def __cinit__(self):
        self._data = {}

    def __len__(self):
        return len(self._data)

    def get(self, bytes key):
        """The value stored at key, or None (for tests and INFO; clients
        read through the log)."""
        return self._lookup(key)

    cdef inline object _lookup(self, bytes key):
        cdef PyObject *v = PyDict_GetItem(self._data, key)
        return <object>v if v != NULL else None

    def items(self):
        """An iterator over a point-in-time copy of the (key, value) pairs."""
        return iter(list(self._data.items()))

    def clear(self):
        self._data.clear()

    def apply(self, block, bint want_results):
        """Apply a block of committed entries.  With want_results (the
        leader, whose clients wait) returns one reply per entry (None for
        no-op and configuration entries); otherwise None, and reads are
        skipped as they change nothing.  A malformed command yields
        `ERR corrupt command in log` for its entry; a block whose framing is
        broken raises ValueError before anything is applied."""
        cdef Py_buffer view
        cdef const uint8_t *p
        cdef Py_ssize_t n, off = 0, pos = 0
        cdef uint32_t dlen
        cdef list results = [] if want_results else None
        PyObject_GetBuffer(block, &view, PyBUF_SIMPLE)
        try:
            p = <const uint8_t *>view.buf
            n = view.len
            # Check the whole block's framing first: entries are applied
            # all or, for a broken block, not at all.
            while off < n:
                if n - off < HEADER or n - off - HEADER < _get_u32(p + off):
                    raise ValueError(f"malformed entry block: entry {pos} runs past the end")
                off += HEADER + _get_u32(p + off)
                pos += 1
            off = pos = 0
            while off < n:
                dlen = _get_u32(p + off)
                if p[off + 12] == T_NORMAL:
                    r = self._execute(p + off + HEADER, dlen, want_results, pos)
                elif p[off + 12] == T_NOOP or p[off + 12] == T_CONFIG:
                    r = None
                else:
                    r = self._corrupt(pos, f"unknown entry type {p[off + 12]}")
                if want_results:
                    results.append(r)
                off += HEADER + dlen
                pos += 1
        finally:
            PyBuffer_Release(&view)
        return results

    cdef object _corrupt(self, Py_ssize_t pos, str reason):
        _log.error("corrupt command in log (entry %d of the applied batch): %s", pos, reason)
        return _ERR_CORRUPT

    cdef object _execute(self, const uint8_t *d, Py_ssize_t n, bint want, Py_ssize_t pos):
        cdef uint32_t op, argc, i
        cdef Py_ssize_t off = CMD_HEADER, count
        cdef const uint8_t *cur = d + CMD_HEADER
        if n < CMD_HEADER:
            return self._corrupt(pos, f"payload of {n} bytes is shorter than its header")
        op = d[0]
        argc = _get_u32(d + 1)
        if op < OP_SET or op > OP_INCR:
            return self._corrupt(pos, f"unknown opcode {op}")
        if not _arity_ok(op, argc):
            return self._corrupt(pos, f"wrong number of arguments ({argc}) for opcode {op}")
        for i in range(argc):
            if n - off < 4 or n - off - 4 < _get_u32(d + off):
                return self._corrupt(pos, f"argument {i} runs past the payload")
            off += 4 + _get_u32(d + off)
        if off != n:
            return self._corrupt(pos, f"{n - off} bytes after the last argument")

        if op == OP_SET:
            key = _next_arg(&cur)
            PyDict_SetItem(self._data, key, _next_arg(&cur))
            return OK if want else None
        if op == OP_DEL:
            count = 0
            for i in range(argc):
                key = _next_arg(&cur)
                if PyDict_Contains(self._data, key):
                    PyDict_DelItem(self._data, key)
                    count += 1
            return count if want else None
        if op == OP_APPEND:
            return self._append(cur, want)
        if op == OP_INCR:
            return self._incr(cur, want)
        if not want:
            return None     # a read nobody waits for changes nothing
        if op == OP_GET:
            return self._lookup(_next_arg(&cur))
        if op == OP_MGET:
            return [self._lookup(_next_arg(&cur)) for i in range(argc)]
        # OP_EXISTS: Redis counts a key named twice twice.
        count = 0
        for i in range(argc):
            count += PyDict_Contains(self._data, _next_arg(&cur))
        return count

    cdef object _append(self, const uint8_t *cur, bint want):
        cdef bytes key = _next_arg(&cur)
        cdef uint32_t n = _get_u32(cur)
        cdef PyObject *old = PyDict_GetItem(self._data, key)
        cdef Py_ssize_t oldlen
        cdef bytes new
        if old == NULL:
            new = PyBytes_FromStringAndSize(<const char *>cur + 4, n)
        else:
            oldlen = PyBytes_GET_SIZE(<object>old)
            new = PyBytes_FromStringAndSize(NULL, oldlen + n)
            memcpy(PyBytes_AS_STRING(new), PyBytes_AS_STRING(<object>old), oldlen)
            memcpy(PyBytes_AS_STRING(new) + oldlen, cur + 4, n)
        PyDict_SetItem(self._data, key, new)
        return PyBytes_GET_SIZE(new) if want else None

    cdef object _incr(self, const uint8_t *cur, bint want):
        cdef bytes key = _next_arg(&cur)
        cdef PyObject *old = PyDict_GetItem(self._data, key)
        cdef long long v = 0
        cdef char digits[24]
        if old != NULL:
            if not _string2ll(<const unsigned char *>PyBytes_AS_STRING(<object>old),
                              PyBytes_GET_SIZE(<object>old), &v):
                return _ERR_NOT_INTEGER if want else None
            if v == 9223372036854775807LL:
                return _ERR_OVERFLOW if want else None
        v += 1
        PyDict_SetItem(self._data, key, PyBytes_FromStringAndSize(
            digits, snprintf(digits, sizeof(digits), "%lld", v)))
        return v if want else None
