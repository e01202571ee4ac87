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

APPEND's entry has a third argument the client did not send: the proposing
leader's proto-max-bulk-len, a u64 LE.  An APPEND that would make the value
longer is refused by every replica alike, whatever their own settings; an
APPEND entry without it (written before the limit existed) has no limit.

The client layer builds a whole batch with encode_commands(), or straight
from the request stream with RespParser.parse_kv (ext/resp.pyx; both use
ext/kvcmd.h), and proposes the block as is (terms 0; the core stamps them).
Reads travel through the log too, so they are linearized with the writes
around them.  The leader applies with apply_replies(), which writes every
entry's reply in C into one buffer.

Snapshots (docs/snapshots.md): begin_snapshot() freezes the current dict in
O(1) as a read-only base; until the snapshot is released, writes go to an
overlay dict (key -> new value, or None for a deleted key) that reads consult
first.  The KVSnapshot walks the frozen base in bounded chunks
(next_chunk), so the event loop interleaves; once released, the overlay is
merged back into the base in bounded steps (merge_step, and a few entries on
every apply), writes meanwhile going straight to the base.  Why this and
not a copy (O(n) in one call) or fork() (unsafe beside the fsync threads):
an O(1) freeze, bounded steps, all in one process and testable.
"""
import logging

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free
from cpython.dict cimport (PyDict_Contains, PyDict_DelItem, PyDict_GetItem, PyDict_Next,
                           PyDict_SetItem, PyDict_Size)
from cpython.object cimport PyObject

cdef extern from "Python.h":
    # Borrowed: the value now at key (value itself when key was missing).
    PyObject *PyDict_SetDefault(object d, object key, object value) except NULL
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdio cimport snprintf
from libc.string cimport memcpy, strlen

from raftfast._wire cimport (BLOCK_OK, ENTRY_CONFIG, ENTRY_TIME, ENTRY_HEADER, ENTRY_NOOP, ENTRY_NORMAL,
                             ENTRY_TYPE_AT, block_walk, ld32, ld64, st32)

cdef extern from "kvcmd.h":
    enum:
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
    void _put_command_header "rf_put_command_header" (uint8_t *p, uint32_t data_len,
                                                      uint8_t opcode, uint32_t argc) noexcept nogil
    bint _arity_ok "rf_kv_arity_ok" (unsigned op, uint64_t argc) noexcept nogil
    bint _entry_arity_ok "rf_kv_entry_arity_ok" (unsigned op, uint64_t argc) noexcept nogil
    enum:
        APPEND_LIMIT_ARG "RF_APPEND_LIMIT_ARG"
    void _put_append_limit "rf_put_append_limit" (uint8_t *p, uint64_t limit) noexcept nogil

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

from raftfast.core import messages
from raftfast._resp import OK, ErrorReply

_log = logging.getLogger("raftfast.kv")

# The entry format is defined in messages.py; a mismatch is caught at import.
assert (messages.ENTRY_HEADER_SIZE, messages.ENTRY_NORMAL, messages.ENTRY_NOOP,
        messages.ENTRY_CONFIG, messages.ENTRY_TIME) == (ENTRY_HEADER, ENTRY_NORMAL, ENTRY_NOOP,
                                                        ENTRY_CONFIG, ENTRY_TIME)

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
_ERR_TOO_LARGE = ErrorReply("ERR string exceeds maximum allowed size (proto-max-bulk-len)")

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
    E_TOO_LARGE

cdef const char *_ERR_WIRE[4]
_ERR_WIRE[:] = [b"-ERR value is not an integer or out of range\r\n",
                b"-ERR increment or decrement would overflow\r\n",
                b"-ERR corrupt command in log\r\n",
                b"-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n"]
_ERR_OBJ = (_ERR_NOT_INTEGER, _ERR_OVERFLOW, _ERR_CORRUPT, _ERR_TOO_LARGE)
assert [<bytes>_ERR_WIRE[i] for i in range(4)] == [b"-%s\r\n" % e.encode() for e in _ERR_OBJ]


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
    cdef uint32_t n = ld32(cur[0])
    cdef bytes b = PyBytes_FromStringAndSize(<const char *>cur[0] + 4, n)
    cur[0] += 4 + n
    return b


def encode_commands(list commands, bint resp3=False, object append_limit=None):
    """One entry block (term 0, ENTRY_NORMAL) holding a payload per
    (opcode, args) command, args being a list or tuple of bytes (a
    client's arguments); with resp3, every opcode carries OP_RESP3 (their
    replies are RESP3); with append_limit, every APPEND entry carries it
    (the largest value it may make; without, it has no limit)."""
    cdef Py_ssize_t total = 0, size, n
    cdef uint32_t op
    cdef uint8_t *p
    cdef uint8_t *end
    cdef uint8_t flag = _OP_RESP3 if resp3 else 0
    cdef bint limited = append_limit is not None, extra
    cdef uint64_t limit = append_limit if limited else 0
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
        if limited and opcode == OP_APPEND:
            size += APPEND_LIMIT_ARG
        if size > 0xFFFFFFFF:
            raise ValueError("command too large for one entry")
        total += ENTRY_HEADER + size
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
        extra = limited and opcode == OP_APPEND
        if extra:
            size += APPEND_LIMIT_ARG
        if end - p < ENTRY_HEADER + size:
            raise RuntimeError("commands changed while being encoded")
        _put_command_header(p, <uint32_t>size, <uint8_t>opcode | flag,
                            <uint32_t>(len(args) + extra))
        p += ENTRY_HEADER + CMD_HEADER
        for a in args:
            n = PyBytes_GET_SIZE(a)
            st32(p, <uint32_t>n)
            memcpy(p + 4, PyBytes_AS_STRING(a), n)
            p += 4 + n
        if extra:
            _put_append_limit(p, limit)
            p += APPEND_LIMIT_ARG
    if p != end:
        raise RuntimeError("commands changed while being encoded")
    return out


class SnapshotBusy(RuntimeError):
    """begin_snapshot() while a snapshot is frozen or its overlay is still
    being merged back: one snapshot at a time."""


# Pending overlay entries merged back into the base by every apply call
# (on top of the writer's explicit merge_step), so that an abandoned
# snapshot's overlay drains by itself: about 25 us of work per block.
DEF MERGE_PER_APPLY = 256

# What a key costs beyond its bytes and its value's: two bytes objects'
# headers (33 each) and a dict slot with its share of the index.
DEF KEY_COST = 100


cdef class KVStore:
    """The state machine: the live state is `_data` (the base), except for
    the keys in `_overlay` while a snapshot is frozen or being merged back.

    States (invariant: live state = base updated by the overlay):
      plain     _overlay is None; every operation works on _data.
      frozen    a KVSnapshot holds _data and walks it; _data must not change,
                so writes go to _overlay (value, or None = deleted) and reads
                consult _overlay first.
      merging   the snapshot was released; the overlay entries are moved into
                _data in bounded steps; a write to a pending key first moves
                that key (so _data holds its live value), then goes to _data.
    _delta is len(live) - len(_data) while an overlay exists: the sum over
    overlay entries of (entry is a value) - (key in _data)."""
    cdef dict _data
    cdef dict _overlay
    cdef bint _frozen
    cdef Py_ssize_t _delta
    # What the live state costs in memory, estimated (KEY_COST per key plus
    # its bytes), and the longest value ever stored (reply_bound's).
    cdef Py_ssize_t _bytes
    cdef Py_ssize_t _largest
    # The current KVSnapshot's token: the store holds no reference to the
    # snapshot itself, so a snapshot dropped by its owner is freed, and its
    # __dealloc__ releases the store.
    cdef object _snap_token

    def __cinit__(self):
        self._data = {}

    @staticmethod
    def from_dict(dict data not None):
        """A store holding `data` (bytes -> bytes), which it takes over: the
        caller must not use the dict afterwards (the snapshot loader)."""
        cdef KVStore kv = KVStore()
        cdef PyObject *k
        cdef PyObject *v
        cdef Py_ssize_t pos = 0, vl
        kv._data = data
        while PyDict_Next(data, &pos, &k, &v):
            vl = PyBytes_GET_SIZE(<object>v)
            kv._bytes += KEY_COST + PyBytes_GET_SIZE(<object>k) + vl
            if vl > kv._largest:
                kv._largest = vl
        return kv

    def __len__(self):
        return PyDict_Size(self._data) + (self._delta if self._overlay is not None else 0)

    @property
    def memory(self):
        """Bytes the live keys and values cost, estimated: their lengths
        plus KEY_COST per key (two bytes objects and a dict slot)."""
        return self._bytes

    @property
    def largest_value(self):
        """The longest value stored since the store began (never lowered:
        a bound, not a census)."""
        return self._largest

    def get(self, bytes key):
        """The value stored at key, or None (for tests and INFO; clients
        read through the log)."""
        return self._lookup(key)

    cdef inline object _lookup(self, bytes key):
        cdef PyObject *v = self._getp(key)
        return <object>v if v != NULL else None

    def items(self):
        """An iterator over a point-in-time copy of the (key, value) pairs."""
        cdef dict d
        if self._overlay is None:
            return iter(list(self._data.items()))
        d = dict(self._data)
        for k, v in self._overlay.items():
            if v is None:
                d.pop(k, None)
            else:
                d[k] = v
        return iter(list(d.items()))

    def clear(self):
        """Empty the store.  A snapshot in progress is detached, not
        spoiled: it keeps its frozen base (the base is replaced here, never
        emptied in place) and its release no longer touches this store."""
        self._snap_token = None
        self._data = {}
        self._overlay = None
        self._frozen = False
        self._delta = 0
        self._bytes = 0

    # ---- the copy-on-write primitives: every read and write goes here ----

    cdef inline PyObject *_getp(self, object key):
        """The live value at key (borrowed), or NULL."""
        cdef PyObject *v
        if self._overlay is not None:
            v = PyDict_GetItem(self._overlay, key)
            if v != NULL:
                return NULL if v == <PyObject *>None else v
        return PyDict_GetItem(self._data, key)

    cdef inline int _set(self, object key, object value) except -1:
        cdef PyObject *old
        cdef Py_ssize_t vl = PyBytes_GET_SIZE(value), size
        if vl > self._largest:
            self._largest = vl
        if self._overlay is None:
            # One probe for a new key (the common case of a growing store):
            # setdefault inserts it; an existing one's old value is counted
            # out, then replaced.
            size = PyDict_Size(self._data)
            old = PyDict_SetDefault(self._data, key, value)
            if PyDict_Size(self._data) != size:
                self._bytes += KEY_COST + PyBytes_GET_SIZE(key) + vl
                return 0
            self._bytes += vl - PyBytes_GET_SIZE(<object>old)
            return PyDict_SetItem(self._data, key, value)
        old = self._getp(key)
        if old == NULL:
            self._bytes += KEY_COST + PyBytes_GET_SIZE(key) + vl
        else:
            self._bytes += vl - PyBytes_GET_SIZE(<object>old)
        if self._frozen:
            if old == NULL:
                self._delta += 1
            return PyDict_SetItem(self._overlay, key, value)
        self._merge_key(key)
        return PyDict_SetItem(self._data, key, value)

    cdef inline int _del(self, object key) except -1:
        """Delete key; 1 when it was there."""
        cdef PyObject *old = self._getp(key)
        if old == NULL:
            return 0
        self._bytes -= KEY_COST + PyBytes_GET_SIZE(key) + PyBytes_GET_SIZE(<object>old)
        if self._overlay is not None:
            if self._frozen:
                if self._getp(key) == NULL:
                    return 0
                PyDict_SetItem(self._overlay, key, None)
                self._delta -= 1
                return 1
            self._merge_key(key)
        if PyDict_Contains(self._data, key):
            PyDict_DelItem(self._data, key)
            return 1
        return 0

    cdef int _merge_key(self, object key) except -1:
        """Merging: move key's pending overlay entry, if any, into the base."""
        cdef PyObject *o = PyDict_GetItem(self._overlay, key)
        cdef object v
        if o == NULL:
            return 0
        v = <object>o
        PyDict_DelItem(self._overlay, key)
        self._move(key, v)
        return 0

    cdef int _move(self, object key, object v) except -1:
        """Apply one overlay entry (already removed from the overlay) to the
        base; the overlay is dropped once empty."""
        cdef bint in_base = PyDict_Contains(self._data, key)
        self._delta -= (v is not None) - in_base
        if v is None:
            if in_base:
                PyDict_DelItem(self._data, key)
        else:
            PyDict_SetItem(self._data, key, v)
        if PyDict_Size(self._overlay) == 0:
            if self._delta != 0:
                raise RuntimeError(f"kv overlay accounting is off by {self._delta}")
            self._overlay = None
        return 0

    cdef int _merge(self, Py_ssize_t budget) except -1:
        cdef dict ov
        while budget > 0 and self._overlay is not None:
            ov = self._overlay
            k, v = ov.popitem()
            self._move(k, v)
            budget -= 1
        return 0

    # ---- snapshots ----

    def begin_snapshot(self):
        """Freeze the live state in O(1) and return a KVSnapshot that walks
        it in bounded chunks.  One at a time: SnapshotBusy while a snapshot
        is frozen, or while the previous one's overlay is still being merged
        back (drive merge_step until it returns True, then begin again)."""
        if self._frozen:
            raise SnapshotBusy("a snapshot of the key-value store is already in progress")
        if self._overlay is not None:
            raise SnapshotBusy(f"the previous snapshot is still being merged back "
                               f"({PyDict_Size(self._overlay)} keys pending)")
        cdef KVSnapshot snap = KVSnapshot.__new__(KVSnapshot)
        snap._store = self
        snap._base = self._data
        snap._count = PyDict_Size(self._data)
        snap._token = object()
        self._overlay = {}
        self._delta = 0
        self._frozen = True
        self._snap_token = snap._token
        return snap

    cdef int _end_freeze(self) except -1:
        self._frozen = False
        self._snap_token = None
        if PyDict_Size(self._overlay) == 0:
            self._overlay = None
            self._delta = 0
        return 0

    def merge_step(self, Py_ssize_t budget):
        """Move up to budget pending overlay entries into the base (after a
        snapshot was released); True once nothing is pending.  Does nothing
        (and returns False) while a snapshot is still frozen."""
        if self._frozen:
            return False
        self._merge(budget)
        return self._overlay is None

    @property
    def snapshot_state(self):
        """'frozen', 'merging' or None."""
        if self._frozen:
            return "frozen"
        return "merging" if self._overlay is not None else None

    @property
    def pending(self):
        """Keys in the overlay (written during the snapshot, not merged yet)."""
        return 0 if self._overlay is None else PyDict_Size(self._overlay)

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
        if self._overlay is not None and not self._frozen:
            self._merge(MERGE_PER_APPLY)
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
        if self._overlay is not None and not self._frozen:
            self._merge(MERGE_PER_APPLY)
        return replies, memoryview(offsets).cast("Q")

    def reply_sizes(self, block):
        """For a block of reads about to be served: a memoryview of count + 1
        native uint64 ('Q'), entry i's reply taking at most
        sizes[i + 1] - sizes[i] bytes (from the store as it stands; exact
        but for a few bytes of framing).  Nothing is applied and no reply
        built, so a reply too large to build is known before it is.  A
        write or a malformed entry counts 64 bytes (an error or a number)."""
        cdef Py_buffer view
        cdef Py_ssize_t count, off = 0, pos = 0, total = 0, at, i
        cdef const uint8_t *p
        cdef const uint8_t *d
        cdef uint32_t dlen, argc, alen, op
        cdef uint64_t *out
        cdef bytes sizes
        cdef PyObject *v
        PyObject_GetBuffer(block, &view, PyBUF_SIMPLE)
        try:
            p = <const uint8_t *>view.buf
            count = _count_entries(p, view.len)
            sizes = PyBytes_FromStringAndSize(NULL, (count + 1) * sizeof(uint64_t))
            out = <uint64_t *>PyBytes_AS_STRING(sizes)
            while off < view.len:
                out[pos] = <uint64_t>total
                dlen = ld32(p + off)
                d = p + off + ENTRY_HEADER
                off += ENTRY_HEADER + dlen
                pos += 1
                if p[off - dlen - ENTRY_HEADER + ENTRY_TYPE_AT] != ENTRY_NORMAL \
                        or dlen < CMD_HEADER:
                    total += 64
                    continue
                op = d[0] & _OP_MASK
                argc = ld32(d + 1)
                if op != _OP_GET and op != _OP_MGET and op != _OP_EXISTS:
                    total += 64
                    continue
                total += 32  # an array header, an integer, or a null
                at = CMD_HEADER
                for i in range(argc):
                    if dlen - at < 4 or dlen - at - 4 < ld32(d + at):
                        break  # malformed: apply answers it with an error
                    alen = ld32(d + at)
                    if op != _OP_EXISTS:
                        v = self._getp(PyBytes_FromStringAndSize(<const char *>d + at + 4, alen))
                        total += 24 + (PyBytes_GET_SIZE(<object>v) if v != NULL else 0)
                    at += 4 + alen
            out[pos] = <uint64_t>total
        finally:
            PyBuffer_Release(&view)
        return memoryview(sizes).cast("Q")

    cdef int _apply(self, const uint8_t *p, Py_ssize_t n, int mode, list results, WBuf *w,
                    uint64_t *offsets) except -1:
        """The apply loop over a block whose framing _count_entries
        checked; replies as `mode` says (offsets: where each starts in w)."""
        cdef Py_ssize_t off = 0, pos = 0
        cdef uint32_t dlen
        cdef uint8_t etype
        while off < n:
            dlen = ld32(p + off)
            etype = p[off + ENTRY_TYPE_AT]
            if offsets != NULL:
                offsets[pos] = <uint64_t>w.len
            if etype == ENTRY_NORMAL:
                r = self._execute(p + off + ENTRY_HEADER, dlen, mode, w, pos)
            elif etype == ENTRY_NOOP or etype == ENTRY_CONFIG or etype == ENTRY_TIME:
                r = None
            else:
                r = self._corrupt(pos, f"unknown entry type {etype}", mode, w)
            if mode == M_OBJECTS:
                results.append(r)
            off += ENTRY_HEADER + dlen
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
        argc = ld32(d + 1)
        if op < _OP_SET or op > _OP_INCR:
            return self._corrupt(pos, f"unknown opcode {d[0]}", mode, w)
        if not _entry_arity_ok(op, argc):
            return self._corrupt(pos, f"wrong number of arguments ({argc}) for opcode {op}",
                                 mode, w)
        for i in range(argc):
            if n - off < 4 or n - off - 4 < ld32(d + off):
                return self._corrupt(pos, f"argument {i} runs past the payload", mode, w)
            off += 4 + ld32(d + off)
        if off != n:
            return self._corrupt(pos, f"{n - off} bytes after the last argument", mode, w)

        if op == _OP_SET:
            key = _next_arg(&cur)
            self._set(key, _next_arg(&cur))
            if mode == M_WIRE:
                _put(w, b"+OK\r\n", 5)
            return OK if mode == M_OBJECTS else None
        if op == _OP_DEL:
            count = 0
            for i in range(argc):
                key = _next_arg(&cur)
                count += self._del(key)
            return _reply_int(mode, w, count)
        if op == _OP_APPEND:
            if argc == 3 and ld32(d + n - APPEND_LIMIT_ARG) != 8:
                return self._corrupt(pos, "APPEND's limit is not 8 bytes", mode, w)
            return self._append(cur, mode, w,
                                ld64(d + n - 8) if argc == 3 else 0xFFFFFFFFFFFFFFFFULL)
        if op == _OP_INCR:
            return self._incr(cur, mode, w)
        if mode == M_NONE:
            return None     # a read nobody waits for changes nothing
        if op == _OP_GET:
            if mode == M_WIRE:
                _put_value(w, self._getp(_next_arg(&cur)), resp3)
                return None
            return self._lookup(_next_arg(&cur))
        if op == _OP_MGET:
            if mode == M_WIRE:
                _put_int_line(w, b'*', argc)
                for i in range(argc):
                    _put_value(w, self._getp(_next_arg(&cur)), resp3)
                return None
            return [self._lookup(_next_arg(&cur)) for i in range(argc)]
        # OP_EXISTS: Redis counts a key named twice twice.
        count = 0
        for i in range(argc):
            count += self._getp(_next_arg(&cur)) != NULL
        return _reply_int(mode, w, count)

    cdef object _append(self, const uint8_t *cur, int mode, WBuf *w, uint64_t limit):
        cdef bytes key = _next_arg(&cur)
        cdef uint32_t n = ld32(cur)
        cdef PyObject *old = self._getp(key)
        cdef Py_ssize_t oldlen = PyBytes_GET_SIZE(<object>old) if old != NULL else 0
        cdef bytes new
        # Redis's checkStringLength: the result, not the argument, is bounded.
        if <uint64_t>oldlen + n > limit:
            return _reply_err(mode, w, E_TOO_LARGE)
        if old == NULL:
            new = PyBytes_FromStringAndSize(<const char *>cur + 4, n)
        else:
            new = PyBytes_FromStringAndSize(NULL, oldlen + n)
            memcpy(PyBytes_AS_STRING(new), PyBytes_AS_STRING(<object>old), oldlen)
            memcpy(PyBytes_AS_STRING(new) + oldlen, cur + 4, n)
        self._set(key, new)
        return _reply_int(mode, w, PyBytes_GET_SIZE(new))

    cdef object _incr(self, const uint8_t *cur, int mode, WBuf *w):
        cdef bytes key = _next_arg(&cur)
        cdef PyObject *old = self._getp(key)
        cdef long long v = 0
        cdef char digits[24]
        if old != NULL:
            if not _string2ll(<const unsigned char *>PyBytes_AS_STRING(<object>old),
                              PyBytes_GET_SIZE(<object>old), &v):
                return _reply_err(mode, w, E_NOT_INTEGER)
            if v == 9223372036854775807LL:
                return _reply_err(mode, w, E_OVERFLOW)
        v += 1
        self._set(key, PyBytes_FromStringAndSize(
            digits, snprintf(digits, sizeof(digits), "%lld", v)))
        return _reply_int(mode, w, v)


cdef Py_ssize_t _count_entries(const uint8_t *p, Py_ssize_t n) except -1:
    """The number of entries in a block; ValueError when its framing is
    broken (checked before applying anything: a block is applied whole or,
    broken, not at all)."""
    cdef size_t count, at
    # Every type passes here: apply answers an unknown one as a corrupt command.
    if block_walk(p, <size_t>n, 255, &count, &at) != BLOCK_OK:
        raise ValueError(f"malformed entry block: entry {count} runs past the end")
    return count


cdef class KVSnapshot:
    """A frozen point in time of a KVStore (KVStore.begin_snapshot), walked
    in bounded chunks of records, each record being

        u32 LE key length, u32 LE value length, key, value

    The base dict is never changed while the snapshot is frozen (the store
    writes to its overlay), so a saved PyDict_Next position stays valid
    between chunks.  release() ends the freeze (the store then merges its
    overlay back); a snapshot dropped without release is released then."""
    cdef KVStore _store
    cdef dict _base
    cdef object _token
    cdef Py_ssize_t _pos, _count, _written

    def __dealloc__(self):
        if self._store is not None and self._token is not None \
                and self._store._snap_token is self._token:
            self._store._end_freeze()

    @property
    def count(self):
        """Keys in the snapshot."""
        return self._count

    @property
    def written(self):
        """Keys returned by next_chunk so far."""
        return self._written

    @property
    def released(self):
        return self._base is None

    def release(self):
        """End the freeze (idempotent): the walk stops, the store starts
        merging its overlay back."""
        if self._store is not None and self._store._snap_token is self._token:
            self._store._end_freeze()
        self._store = None
        self._base = None

    def next_chunk(self, Py_ssize_t max_keys, Py_ssize_t max_bytes):
        """(records, n): the next n >= 1 records, at most max_keys and, after
        the first, at most max_bytes of them; None once all are out."""
        cdef PyObject *k
        cdef PyObject *v
        cdef Py_ssize_t pos, n = 0, size = 0, rec, kl, vl
        cdef bytes out
        cdef uint8_t *p
        if self._base is None:
            raise RuntimeError("the snapshot was released")
        if PyDict_Size(self._base) != self._count:
            raise RuntimeError("the frozen key-value base changed under its snapshot")
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        # Pass 1: how many records fit.
        pos = self._pos
        while n < max_keys and PyDict_Next(self._base, &pos, &k, &v):
            rec = 8 + PyBytes_GET_SIZE(<object>k) + PyBytes_GET_SIZE(<object>v)
            if n > 0 and size + rec > max_bytes:
                break
            if PyBytes_GET_SIZE(<object>k) > 0xFFFFFFFF or PyBytes_GET_SIZE(<object>v) > 0xFFFFFFFF:
                raise ValueError("a key or value over 4 GiB does not fit a snapshot record")
            size += rec
            n += 1
        if n == 0:
            return None
        # Pass 2: write them (nothing ran in between: same n records).
        out = PyBytes_FromStringAndSize(NULL, size)
        p = <uint8_t *>PyBytes_AS_STRING(out)
        for rec in range(n):
            PyDict_Next(self._base, &self._pos, &k, &v)
            kl = PyBytes_GET_SIZE(<object>k)
            vl = PyBytes_GET_SIZE(<object>v)
            st32(p, <uint32_t>kl)
            st32(p + 4, <uint32_t>vl)
            memcpy(p + 8, PyBytes_AS_STRING(<object>k), kl)
            memcpy(p + 8 + kl, PyBytes_AS_STRING(<object>v), vl)
            p += 8 + kl + vl
        self._written += n
        return out, n


def decode_records(const uint8_t[::1] payload not None, Py_ssize_t nrecords, dict into not None):
    """Add the nrecords records of a snapshot chunk to `into`.  ValueError
    (saying which record and what) when the records do not fill the payload
    exactly or a key repeats; `into` may then hold some of them."""
    cdef Py_ssize_t n = payload.shape[0], off = 0, i, before = PyDict_Size(into)
    cdef uint32_t kl, vl
    cdef const uint8_t *p = &payload[0] if n else NULL
    for i in range(nrecords):
        if n - off < 8:
            raise ValueError(f"record {i} of {nrecords}: header runs past the chunk")
        kl = ld32(p + off)
        vl = ld32(p + off + 4)
        if <Py_ssize_t>kl > n - off - 8 or <Py_ssize_t>vl > n - off - 8 - kl:
            raise ValueError(f"record {i} of {nrecords}: {kl}+{vl} bytes run past the chunk")
        key = PyBytes_FromStringAndSize(<const char *>p + off + 8, kl)
        PyDict_SetItem(into, key, PyBytes_FromStringAndSize(<const char *>p + off + 8 + kl, vl))
        off += 8 + kl + vl
    if off != n:
        raise ValueError(f"{n - off} bytes after the last of {nrecords} records")
    if PyDict_Size(into) != before + nrecords:
        raise ValueError(f"{before + nrecords - PyDict_Size(into)} duplicate keys")
    return None
