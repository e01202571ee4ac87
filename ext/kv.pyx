# cython: language_level=3
"""The replicated key-value state machine: applies committed entry blocks
to a dict of bytes -> bytes in one C loop per block.

Command payload, the data of an ENTRY_NORMAL entry (version 1):

    u8      opcode      OP_SET=1 OP_GET=2 OP_MGET=3 OP_EXISTS=4 OP_DEL=5
                        OP_APPEND=6 OP_INCR=7 (numbers are part of the log
                        format: never reuse one); the high bit (OP_RESP3,
                        0x80) says the client reads RESP3, so that its reply
                        is encoded in the protocol it asked for
    u32 LE  argc        arguments, excluding the command name
    argc times:
      u32 LE  len
      len bytes

The client layer builds a whole batch with encode_commands(), or straight
from the request stream with RespParser.parse_kv (ext/resp.pyx; both use
ext/kvcmd.h), and proposes the block as is (terms 0; the core stamps them).
Reads travel through the log too, so they are linearized with the writes
around them.  The leader applies with apply_replies(), which writes every
entry's reply in C into one buffer.
"""
import logging

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free
from cpython.dict cimport PyDict_Contains, PyDict_DelItem, PyDict_GetItem, PyDict_SetItem
from cpython.object cimport PyObject
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdio cimport snprintf
from libc.string cimport memcpy, strlen

cdef extern from "kvcmd.h":
    enum:
        HEADER "RF_ENTRY_HEADER"         # entry header: u32 data_len, u64 term, u8 type
        CMD_HEADER "RF_CMD_HEADER"       # u8 opcode, u32 argc
        _OP_SET "RF_OP_SET"
        _OP_GET "RF_OP_GET"
        _OP_MGET "RF_OP_MGET"
        _OP_EXISTS "RF_OP_EXISTS"
        _OP_DEL "RF_OP_DEL"
        _OP_APPEND "RF_OP_APPEND"
        _OP_INCR "RF_OP_INCR"
        _OP_RESP3 "RF_OP_RESP3"
        _OP_MASK "RF_OP_MASK"
    uint32_t _get_u32 "rf_get_u32" (const uint8_t *p) noexcept nogil
    void _put_u32 "rf_put_u32" (uint8_t *p, uint32_t v) noexcept nogil
    void _put_command_header "rf_put_command_header" (uint8_t *p, uint32_t data_len,
                                                      uint8_t opcode, uint32_t argc) noexcept nogil
    bint _arity_ok "rf_kv_arity_ok" (unsigned op, uint64_t argc) noexcept nogil

cdef extern from "rfbuf.h":
    # The reply buffer, shared with resp.pyx.
    ctypedef struct WBuf "rf_wbuf":
        char *data
        Py_ssize_t len
        Py_ssize_t cap
    int _put "rf_wbuf_put" (WBuf *w, const char *p, Py_ssize_t n) except -1
    int _put_int_line "rf_wbuf_put_int_line" (WBuf *w, char prefix, long long v) except -1
    int _put_bulk "rf_wbuf_put_bulk" (WBuf *w, const char *p, Py_ssize_t n) except -1

cdef extern from "rfstr.h":
    # Redis's strict string2ll, shared with resp.pyx (INCR's integer rule).
    bint _string2ll "rf_string2ll" (const unsigned char *s, size_t n, long long *out) noexcept nogil

from raftfast import messages
from raftfast._resp import OK, ErrorReply

_log = logging.getLogger("raftfast.kv")

cdef enum:
    T_NORMAL = 0
    T_NOOP = 1
    T_CONFIG = 2

# The entry format is defined in messages.py; a mismatch is caught at import.
assert (messages.ENTRY_HEADER_SIZE, messages.ENTRY_NORMAL, messages.ENTRY_NOOP,
        messages.ENTRY_CONFIG) == (HEADER, T_NORMAL, T_NOOP, T_CONFIG)

OP_SET = _OP_SET
OP_GET = _OP_GET
OP_MGET = _OP_MGET
OP_EXISTS = _OP_EXISTS
OP_DEL = _OP_DEL
OP_APPEND = _OP_APPEND
OP_INCR = _OP_INCR
OP_RESP3 = _OP_RESP3
assert (OP_SET, OP_GET, OP_MGET, OP_EXISTS, OP_DEL, OP_APPEND, OP_INCR) == tuple(range(1, 8))

OPCODES = {b"set": OP_SET, b"get": OP_GET, b"mget": OP_MGET, b"exists": OP_EXISTS,
           b"del": OP_DEL, b"append": OP_APPEND, b"incr": OP_INCR}

_ERR_NOT_INTEGER = ErrorReply("ERR value is not an integer or out of range")
_ERR_OVERFLOW = ErrorReply("ERR increment or decrement would overflow")
_ERR_CORRUPT = ErrorReply("ERR corrupt command in log")

# What a reply is made of (apply) or written into (apply_replies).
cdef enum Mode:
    M_NONE = 0      # a follower: no replies
    M_OBJECTS = 1   # Python values, for encode_replies
    M_WIRE = 2      # RESP bytes written straight into a WBuf

# The same texts on the wire (ErrorReply's `-` line; checked below).
cdef enum Err:
    E_NOT_INTEGER
    E_OVERFLOW
    E_CORRUPT

cdef const char *_ERR_WIRE[3]
_ERR_WIRE[:] = [b"-ERR value is not an integer or out of range\r\n",
                b"-ERR increment or decrement would overflow\r\n",
                b"-ERR corrupt command in log\r\n"]
_ERR_OBJ = (_ERR_NOT_INTEGER, _ERR_OVERFLOW, _ERR_CORRUPT)
assert [<bytes>_ERR_WIRE[i] for i in range(3)] == [b"-%s\r\n" % e.encode() for e in _ERR_OBJ]


cdef inline object _reply_int(int mode, WBuf *w, long long v):
    if mode == M_WIRE:
        _put_int_line(w, b':', v)
        return None
    return v if mode == M_OBJECTS else None


cdef inline object _reply_err(int mode, WBuf *w, int err):
    if mode == M_WIRE:
        _put(w, _ERR_WIRE[err], strlen(_ERR_WIRE[err]))
        return None
    return _ERR_OBJ[err] if mode == M_OBJECTS else None


cdef inline int _put_value(WBuf *w, PyObject *v, bint resp3) except -1:
    """A stored value as a bulk string, or the null of the protocol."""
    if v == NULL:
        return _put(w, b"_\r\n", 3) if resp3 else _put(w, b"$-1\r\n", 5)
    return _put_bulk(w, PyBytes_AS_STRING(<object>v), PyBytes_GET_SIZE(<object>v))


cdef inline bytes _next_arg(const uint8_t **cur):
    """The argument at *cur as bytes; *cur moves past it (bounds were
    checked when the payload was validated)."""
    cdef uint32_t n = _get_u32(cur[0])
    cdef bytes b = PyBytes_FromStringAndSize(<const char *>cur[0] + 4, n)
    cur[0] += 4 + n
    return b


def encode_commands(list commands, bint resp3=False):
    """One entry block (term 0, ENTRY_NORMAL) holding a payload per
    (opcode, args) command, args being a list or tuple of bytes; with
    resp3, every opcode carries OP_RESP3 (their replies are RESP3)."""
    cdef Py_ssize_t total = 0, size, n
    cdef uint32_t op
    cdef uint8_t *p
    cdef uint8_t *end
    cdef uint8_t flag = _OP_RESP3 if resp3 else 0
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
        _put_command_header(p, <uint32_t>size, <uint8_t>opcode | flag, <uint32_t>len(args))
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
        cdef list results = [] if want_results else None
        PyObject_GetBuffer(block, &view, PyBUF_SIMPLE)
        try:
            _count_entries(<const uint8_t *>view.buf, view.len)
            self._apply(<const uint8_t *>view.buf, view.len,
                        M_OBJECTS if want_results else M_NONE, results, NULL, NULL)
        finally:
            PyBuffer_Release(&view)
        return results

    def apply_replies(self, block):
        """Apply like apply(block, True), writing every entry's reply as
        RESP (the protocol its opcode's OP_RESP3 bit asks for) into one
        buffer; no-op and configuration entries have an empty reply.
        Returns (replies, offsets): offsets is a memoryview of count + 1
        native uint64 ('Q'), entry i's reply being
        replies[offsets[i]:offsets[i + 1]].  The bytes are those of
        encode_replies over apply()'s results, entry by entry."""
        cdef Py_buffer view
        cdef WBuf w
        cdef Py_ssize_t count
        cdef bytes offsets, replies
        w.data = NULL
        w.len = w.cap = 0
        PyObject_GetBuffer(block, &view, PyBUF_SIMPLE)
        try:
            count = _count_entries(<const uint8_t *>view.buf, view.len)
            offsets = PyBytes_FromStringAndSize(NULL, (count + 1) * sizeof(uint64_t))
            self._apply(<const uint8_t *>view.buf, view.len, M_WIRE, None, &w,
                        <uint64_t *>PyBytes_AS_STRING(offsets))
            replies = PyBytes_FromStringAndSize(w.data, w.len)
        finally:
            PyBuffer_Release(&view)
            PyMem_Free(w.data)
        return replies, memoryview(offsets).cast("Q")

    cdef int _apply(self, const uint8_t *p, Py_ssize_t n, int mode, list results, WBuf *w,
                    uint64_t *offsets) except -1:
        """The apply loop over a block whose framing _count_entries
        checked; replies as `mode` says (offsets: where each starts in w)."""
        cdef Py_ssize_t off = 0, pos = 0
        cdef uint32_t dlen
        cdef uint8_t etype
        while off < n:
            dlen = _get_u32(p + off)
            etype = p[off + 12]
            if offsets != NULL:
                offsets[pos] = <uint64_t>w.len
            if etype == T_NORMAL:
                r = self._execute(p + off + HEADER, dlen, mode, w, pos)
            elif etype == T_NOOP or etype == T_CONFIG:
                r = None
            else:
                r = self._corrupt(pos, f"unknown entry type {etype}", mode, w)
            if mode == M_OBJECTS:
                results.append(r)
            off += HEADER + dlen
            pos += 1
        if offsets != NULL:
            offsets[pos] = <uint64_t>w.len
        return 0

    cdef object _corrupt(self, Py_ssize_t pos, str reason, int mode, WBuf *w):
        _log.error("corrupt command in log (entry %d of the applied batch): %s", pos, reason)
        return _reply_err(mode, w, E_CORRUPT)

    cdef object _execute(self, const uint8_t *d, Py_ssize_t n, int mode, WBuf *w,
                         Py_ssize_t pos):
        cdef uint32_t op, argc, i
        cdef Py_ssize_t off = CMD_HEADER, count
        cdef const uint8_t *cur = d + CMD_HEADER
        cdef bint resp3
        if n < CMD_HEADER:
            return self._corrupt(pos, f"payload of {n} bytes is shorter than its header", mode, w)
        op = d[0] & _OP_MASK
        resp3 = (d[0] & _OP_RESP3) != 0
        argc = _get_u32(d + 1)
        if op < _OP_SET or op > _OP_INCR:
            return self._corrupt(pos, f"unknown opcode {d[0]}", mode, w)
        if not _arity_ok(op, argc):
            return self._corrupt(pos, f"wrong number of arguments ({argc}) for opcode {op}",
                                 mode, w)
        for i in range(argc):
            if n - off < 4 or n - off - 4 < _get_u32(d + off):
                return self._corrupt(pos, f"argument {i} runs past the payload", mode, w)
            off += 4 + _get_u32(d + off)
        if off != n:
            return self._corrupt(pos, f"{n - off} bytes after the last argument", mode, w)

        if op == _OP_SET:
            key = _next_arg(&cur)
            PyDict_SetItem(self._data, key, _next_arg(&cur))
            if mode == M_WIRE:
                _put(w, b"+OK\r\n", 5)
            return OK if mode == M_OBJECTS else None
        if op == _OP_DEL:
            count = 0
            for i in range(argc):
                key = _next_arg(&cur)
                if PyDict_Contains(self._data, key):
                    PyDict_DelItem(self._data, key)
                    count += 1
            return _reply_int(mode, w, count)
        if op == _OP_APPEND:
            return self._append(cur, mode, w)
        if op == _OP_INCR:
            return self._incr(cur, mode, w)
        if mode == M_NONE:
            return None     # a read nobody waits for changes nothing
        if op == _OP_GET:
            if mode == M_WIRE:
                _put_value(w, PyDict_GetItem(self._data, _next_arg(&cur)), resp3)
                return None
            return self._lookup(_next_arg(&cur))
        if op == _OP_MGET:
            if mode == M_WIRE:
                _put_int_line(w, b'*', argc)
                for i in range(argc):
                    _put_value(w, PyDict_GetItem(self._data, _next_arg(&cur)), resp3)
                return None
            return [self._lookup(_next_arg(&cur)) for i in range(argc)]
        # OP_EXISTS: Redis counts a key named twice twice.
        count = 0
        for i in range(argc):
            count += PyDict_Contains(self._data, _next_arg(&cur))
        return _reply_int(mode, w, count)

    cdef object _append(self, const uint8_t *cur, int mode, WBuf *w):
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
        return _reply_int(mode, w, PyBytes_GET_SIZE(new))

    cdef object _incr(self, const uint8_t *cur, int mode, WBuf *w):
        cdef bytes key = _next_arg(&cur)
        cdef PyObject *old = PyDict_GetItem(self._data, key)
        cdef long long v = 0
        cdef char digits[24]
        if old != NULL:
            if not _string2ll(<const unsigned char *>PyBytes_AS_STRING(<object>old),
                              PyBytes_GET_SIZE(<object>old), &v):
                return _reply_err(mode, w, E_NOT_INTEGER)
            if v == 9223372036854775807LL:
                return _reply_err(mode, w, E_OVERFLOW)
        v += 1
        PyDict_SetItem(self._data, key, PyBytes_FromStringAndSize(
            digits, snprintf(digits, sizeof(digits), "%lld", v)))
        return _reply_int(mode, w, v)


cdef Py_ssize_t _count_entries(const uint8_t *p, Py_ssize_t n) except -1:
    """The number of entries in a block; ValueError when its framing is
    broken (checked before applying anything: a block is applied whole or,
    broken, not at all)."""
    cdef Py_ssize_t off = 0, pos = 0
    while off < n:
        if n - off < HEADER or n - off - HEADER < _get_u32(p + off):
            raise ValueError(f"malformed entry block: entry {pos} runs past the end")
        off += HEADER + _get_u32(p + off)
        pos += 1
    return pos
