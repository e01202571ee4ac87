# cython: language_level=3
"""The replicated key-value state machine: applies committed entry blocks
to a dict of bytes -> bytes in one C loop per block.

Command payload, the data of an ENTRY_NORMAL entry (version 1):

    u8      opcode      OP_SET=1 OP_GET=2 OP_MGET=3 OP_EXISTS=4 OP_DEL=5
                        OP_APPEND=6 OP_INCR=7 OP_SETNX=8 OP_GETDEL=9
                        OP_MSET=10 OP_INCRBY=11 OP_DECR=12 OP_DECRBY=13
                        OP_STRLEN=14 OP_EXPIRE=15 OP_PEXPIRE=16 OP_TTL=17
                        OP_PTTL=18 OP_PERSIST=19 OP_DBSIZE=20 OP_SCAN=21
                        OP_EXEC=22 (RAFT.EXEC) OP_SESSION_OPEN=23
                        OP_EXPIRE_DEL=24 (numbers are part of the log
                        format: never reuse one; ext/kvcmd.h); the high bit
                        (OP_RESP3, 0x80) says the client reads RESP3, so
                        that its reply is encoded in the protocol it asked for
    u32 LE  argc        arguments, excluding the command name
    argc times:
      u32 LE  len
      len bytes

The arguments are the client's, as sent (SET's options, EXPIRE's flags,
SCAN's cursor and options are read when applied, the same way on every
replica).  APPEND's entry has a third argument the client did not send: the
proposing leader's proto-max-bulk-len, a u64 LE.  An APPEND that would make
the value longer is refused by every replica alike, whatever their own
settings; an APPEND entry without it (written before the limit existed) has
no limit.  RAFT.EXEC's entry (session, seq, command name, its arguments)
always ends with that limit.  OP_SESSION_OPEN (no arguments) and
OP_EXPIRE_DEL (keys) are written by the server, never by a client.

Cluster time: an ENTRY_TIME entry (u64 LE milliseconds) sets the store's
time; the commands after it in the log run at that time, so a relative
expiry (EX, PX, EXPIRE) becomes the same absolute deadline on every
replica.  A key whose deadline is before the time is gone for every
command: a write removes it as it meets it (all replicas apply the same
writes), a read only skips it.  read_replies serves reads at the read's
own cluster time (never earlier than the store's), changing nothing.
Deadlines live in `_expires` (key -> ms), beside the values, so a plain
SET or GET pays one size check for them.

Sessions (RAFT.SESSION OPEN, RAFT.EXEC; Raft dissertation 6.3): per session
the last sequence number run and its reply (RESP2 bytes), and the cluster
time it was last used; a session unused for SESSION_TIMEOUT_MS is gone:
every lookup checks that, so replies never depend on when an expired
session's memory is reclaimed (a few sessions are looked at, round robin,
per session command; which ones may differ between replicas, what they
answer may not).

SCAN walks the keys in the order of a fixed hash (ext/kvscan.h): a cursor
is a position in that order, read the same way by every replica (Python's
dict order differs between processes and after a restore).  The index
that finds keys by hash is local to this process, built at the first SCAN
and kept up to date from then on.

The client layer builds a whole batch with encode_commands(), or straight
from the request stream with RespParser.parse_kv (ext/resp.pyx; both use
ext/kvcmd.h), and proposes the block as is (terms 0; the core stamps them).
The leader applies with apply_replies(), which writes every entry's reply
in C into one buffer.

Snapshots (docs/snapshots.md): begin_snapshot() freezes the current dict in
O(1) as a read-only base; until the snapshot is released, writes go to an
overlay dict (key -> new value, or None for a deleted key) that reads consult
first.  The deadlines and sessions are copied at the freeze (O(keys with a
deadline + sessions)).  The KVSnapshot walks the frozen base in bounded
chunks (next_chunk), so the event loop interleaves; once released, the
overlay is merged back into the base in bounded steps (merge_step, and a few
entries on every apply), writes meanwhile going straight to the base.  Why
this and not a copy (O(n) in one call) or fork() (unsafe beside the fsync
threads): an O(1) freeze, bounded steps, all in one process and testable.
"""
import logging
import struct

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free
from cpython.dict cimport (PyDict_Contains, PyDict_DelItem, PyDict_GetItem, PyDict_Next,
                           PyDict_SetItem, PyDict_Size)
from cpython.long cimport PyLong_AsLongLong
from cpython.object cimport PyObject

cdef extern from "Python.h":
    # Borrowed: the value now at key (value itself when key was missing).
    PyObject *PyDict_SetDefault(object d, object key, object value) except NULL
from libc.limits cimport LLONG_MAX, LLONG_MIN
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdio cimport snprintf
from libc.string cimport memcmp, memcpy, strlen

from raftfast._wire cimport (BLOCK_OK, ENTRY_CONFIG, ENTRY_TIME, ENTRY_HEADER, ENTRY_NOOP, ENTRY_NORMAL,
                             ENTRY_TYPE_AT, block_walk, ld32, ld64, st32, st64)

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
        _OP_SETNX "RF_OP_SETNX"
        _OP_GETDEL "RF_OP_GETDEL"
        _OP_MSET "RF_OP_MSET"
        _OP_INCRBY "RF_OP_INCRBY"
        _OP_DECR "RF_OP_DECR"
        _OP_DECRBY "RF_OP_DECRBY"
        _OP_STRLEN "RF_OP_STRLEN"
        _OP_EXPIRE "RF_OP_EXPIRE"
        _OP_PEXPIRE "RF_OP_PEXPIRE"
        _OP_TTL "RF_OP_TTL"
        _OP_PTTL "RF_OP_PTTL"
        _OP_PERSIST "RF_OP_PERSIST"
        _OP_DBSIZE "RF_OP_DBSIZE"
        _OP_SCAN "RF_OP_SCAN"
        _OP_EXEC "RF_OP_EXEC"
        _OP_SESSION_OPEN "RF_OP_SESSION_OPEN"
        _OP_EXPIRE_DEL "RF_OP_EXPIRE_DEL"
        _OP_MAX "RF_OP_MAX"
        _OP_RESP3 "RF_OP_RESP3"
        _OP_MASK "RF_OP_MASK"
    void _put_command_header "rf_put_command_header" (uint8_t *p, uint32_t data_len,
                                                      uint8_t opcode, uint32_t argc) noexcept nogil
    bint _arity_ok "rf_kv_arity_ok" (unsigned op, uint64_t argc) noexcept nogil
    bint _entry_arity_ok "rf_kv_entry_arity_ok" (unsigned op, uint64_t argc) noexcept nogil
    bint _is_read "rf_kv_is_read" (unsigned op) noexcept nogil
    int _kv_opcode "rf_kv_opcode" (const unsigned char *s, size_t n) noexcept nogil
    enum:
        APPEND_LIMIT_ARG "RF_APPEND_LIMIT_ARG"
    void _put_append_limit "rf_put_append_limit" (uint8_t *p, uint64_t limit) noexcept nogil

cdef extern from "kvscan.h":
    uint64_t _scan_hash "rf_scan_hash" (const unsigned char *p, size_t n) noexcept nogil
    bint _glob_match "rf_glob_match" (const unsigned char *pat, size_t plen,
                                       const unsigned char *s, size_t slen) noexcept nogil
    bint _scan_cursor "rf_scan_cursor" (const unsigned char *s, size_t n, uint64_t *out) noexcept nogil

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
from raftfast._resp import OK, ErrorReply, SimpleString, encode_replies

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
OP_SETNX = _OP_SETNX
OP_GETDEL = _OP_GETDEL
OP_MSET = _OP_MSET
OP_INCRBY = _OP_INCRBY
OP_DECR = _OP_DECR
OP_DECRBY = _OP_DECRBY
OP_STRLEN = _OP_STRLEN
OP_EXPIRE = _OP_EXPIRE
OP_PEXPIRE = _OP_PEXPIRE
OP_TTL = _OP_TTL
OP_PTTL = _OP_PTTL
OP_PERSIST = _OP_PERSIST
OP_DBSIZE = _OP_DBSIZE
OP_SCAN = _OP_SCAN
OP_EXEC = _OP_EXEC
OP_SESSION_OPEN = _OP_SESSION_OPEN
OP_EXPIRE_DEL = _OP_EXPIRE_DEL
OP_MAX = _OP_MAX
OP_RESP3 = _OP_RESP3
assert (OP_SET, OP_GET, OP_MGET, OP_EXISTS, OP_DEL, OP_APPEND, OP_INCR, OP_SETNX, OP_GETDEL,
        OP_MSET, OP_INCRBY, OP_DECR, OP_DECRBY, OP_STRLEN, OP_EXPIRE, OP_PEXPIRE, OP_TTL,
        OP_PTTL, OP_PERSIST, OP_DBSIZE, OP_SCAN, OP_EXEC, OP_SESSION_OPEN,
        OP_EXPIRE_DEL) == tuple(range(1, 25)) and OP_MAX == 24

# The commands a client names (RAFT.SESSION OPEN is the server's own).
OPCODES = {b"set": OP_SET, b"get": OP_GET, b"mget": OP_MGET, b"exists": OP_EXISTS,
           b"del": OP_DEL, b"append": OP_APPEND, b"incr": OP_INCR, b"setnx": OP_SETNX,
           b"getdel": OP_GETDEL, b"mset": OP_MSET, b"incrby": OP_INCRBY, b"decr": OP_DECR,
           b"decrby": OP_DECRBY, b"strlen": OP_STRLEN, b"expire": OP_EXPIRE,
           b"pexpire": OP_PEXPIRE, b"ttl": OP_TTL, b"pttl": OP_PTTL, b"persist": OP_PERSIST,
           b"dbsize": OP_DBSIZE, b"scan": OP_SCAN, b"raft.exec": OP_EXEC}
# Commands that change nothing (served at a read's cluster time, never logged).
READ_OPCODES = frozenset(op for op in range(1, OP_MAX + 1) if _is_read(op))


def is_read(int op):
    """Does the opcode only read?"""
    return _is_read(op)


def arity_ok(int op, Py_ssize_t argc):
    """Does a client's command of this opcode have a valid number of
    arguments (name excluded)?  Redis 7.2's arity; MSET takes pairs."""
    return _arity_ok(op, argc)

# A session unused for this long, in cluster time, is gone (10 minutes).
SESSION_TIMEOUT_MS = 600_000
# SCAN's COUNT is a hint of the keys to look at; above this it is this.
SCAN_COUNT_MAX = 1000

_ERR_NOT_INTEGER = ErrorReply("ERR value is not an integer or out of range")
_ERR_OVERFLOW = ErrorReply("ERR increment or decrement would overflow")
_ERR_CORRUPT = ErrorReply("ERR corrupt command in log")
_ERR_TOO_LARGE = ErrorReply("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
_ERR_SYNTAX = ErrorReply("ERR syntax error")
_ERR_UNKNOWN_SESSION = ErrorReply("ERR unknown session")

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
    E_SYNTAX
    E_UNKNOWN_SESSION

cdef const char *_ERR_WIRE[6]
_ERR_WIRE[:] = [b"-ERR value is not an integer or out of range\r\n",
                b"-ERR increment or decrement would overflow\r\n",
                b"-ERR corrupt command in log\r\n",
                b"-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n",
                b"-ERR syntax error\r\n",
                b"-ERR unknown session\r\n"]
_ERR_OBJ = (_ERR_NOT_INTEGER, _ERR_OVERFLOW, _ERR_CORRUPT, _ERR_TOO_LARGE, _ERR_SYNTAX,
            _ERR_UNKNOWN_SESSION)
assert [<bytes>_ERR_WIRE[i] for i in range(6)] == [b"-%s\r\n" % e.encode() for e in _ERR_OBJ]


cdef inline object _reply_int(int mode, WBuf *w, long long v):
    if mode == M_WIRE:
        _put_int_line(w, b':', v)
        return None
    return v if mode == M_OBJECTS else None


cdef inline object _reply_ok(int mode, WBuf *w):
    if mode == M_WIRE:
        _put(w, b"+OK\r\n", 5)
        return None
    return OK if mode == M_OBJECTS else None


cdef inline object _reply_err(int mode, WBuf *w, int err):
    if mode == M_WIRE:
        _put(w, _ERR_WIRE[err], strlen(_ERR_WIRE[err]))
        return None
    return _ERR_OBJ[err] if mode == M_OBJECTS else None


cdef object _reply_error_text(int mode, WBuf *w, str text):
    """An error worded at run time (Redis's addReplyErrorFormat: CR and LF
    become spaces)."""
    text = text.replace("\r", " ").replace("\n", " ")
    cdef bytes b
    if mode == M_WIRE:
        b = ("-" + text + "\r\n").encode("utf-8", "surrogateescape")
        _put(w, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
        return None
    return ErrorReply(text) if mode == M_OBJECTS else None


cdef inline object _reply_value(int mode, WBuf *w, PyObject *v, bint resp3):
    """A stored value (or NULL: none) as the reply."""
    if mode == M_WIRE:
        _put_value(w, v, resp3)
        return None
    if mode == M_OBJECTS and v != NULL:
        return <object>v
    return None


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


cdef inline const unsigned char *_arg(const uint8_t **cur, size_t *n) noexcept:
    """The argument at *cur, in place: its bytes and (in *n) length; *cur
    moves past it."""
    cdef const unsigned char *p = <const unsigned char *>cur[0] + 4
    n[0] = ld32(cur[0])
    cur[0] += 4 + n[0]
    return p


cdef inline bint _is(const unsigned char *p, size_t n, const char *lower) noexcept:
    """Is the argument the (lowercase, ASCII) word `lower`, in any case?"""
    cdef size_t i
    if n != strlen(lower):
        return False
    for i in range(n):
        # c | 0x20 equals a lowercase letter only for that letter in either case.
        if (p[i] | 0x20) != <unsigned char>lower[i]:
            return False
    return True


cdef inline str _text(const unsigned char *p, size_t n):
    """An argument for an error message (as Redis's %s: up to a NUL)."""
    cdef bytes b = PyBytes_FromStringAndSize(<const char *>p, n)
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


def encode_commands(list commands, bint resp3=False, object append_limit=None):
    """One entry block (term 0, ENTRY_NORMAL) holding a payload per
    (opcode, args) command, args being a list or tuple of bytes (a
    client's arguments, or the server's own for OP_SESSION_OPEN and
    OP_EXPIRE_DEL); with resp3, every opcode carries OP_RESP3 (their
    replies are RESP3); with append_limit, every APPEND entry carries it
    (the largest value it may make; without, it has no limit); a RAFT.EXEC
    entry always carries one (2^64 - 1 without append_limit)."""
    cdef Py_ssize_t total = 0, size, n
    cdef uint32_t op
    cdef uint8_t *p
    cdef uint8_t *end
    cdef uint8_t flag = _OP_RESP3 if resp3 else 0
    cdef bint limited = append_limit is not None, extra
    cdef uint64_t limit = append_limit if limited else 0xFFFFFFFFFFFFFFFFULL
    cdef bytes out
    # Pass 1: validate and size, so the block is written into one buffer.
    for cmd in commands:
        opcode, args = cmd
        if type(opcode) is not int or not OP_SET <= opcode <= OP_MAX:
            raise ValueError(f"unknown opcode {opcode!r}")
        if not isinstance(args, (list, tuple)):
            raise TypeError("command arguments must be a list or tuple of bytes")
        # Refused here, before it is replicated, rather than at apply time.
        if not (_entry_arity_ok(opcode, len(args)) if opcode >= OP_SESSION_OPEN
                else _arity_ok(opcode, len(args))):
            raise ValueError(f"wrong number of arguments ({len(args)}) for opcode {opcode}")
        size = CMD_HEADER
        for a in args:
            if type(a) is not bytes:
                raise TypeError(f"command argument must be bytes, not {type(a).__name__}")
            size += 4 + PyBytes_GET_SIZE(a)
        if (limited and opcode == OP_APPEND) or opcode == OP_EXEC:
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
        extra = (limited and opcode == OP_APPEND) or opcode == OP_EXEC
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
# A deadline: an int object and a slot in _expires.
DEF EXPIRE_COST = 80
# A session: its object, its id and a dict slot (its reply counts apart).
DEF SESSION_COST = 200
# Sessions looked at, for expiry, per session command.
DEF SESSION_PURGE = 2


cdef class Session:
    """One client session: the last sequence number it ran, that command's
    reply (RESP2 bytes; None before the first), and when (cluster time) it
    was last used."""
    cdef public long long last_seq
    cdef public object reply
    cdef public long long used


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
    overlay entries of (entry is a value) - (key in _data).

    _expires holds the deadline (ms) of every live key that has one, and
    nothing else; it is never frozen (a snapshot copies it)."""
    cdef dict _data
    cdef dict _overlay
    cdef bint _frozen
    cdef Py_ssize_t _delta
    # What the live state costs in memory, estimated (KEY_COST per key plus
    # its bytes), and the longest value and key ever stored (reply bounds').
    cdef Py_ssize_t _bytes
    cdef Py_ssize_t _largest
    cdef Py_ssize_t _largest_key
    # The current KVSnapshot's token: the store holds no reference to the
    # snapshot itself, so a snapshot dropped by its owner is freed, and its
    # __dealloc__ releases the store.
    cdef object _snap_token
    cdef dict _expires
    # _now: the cluster time of the last ENTRY_TIME applied; _tnow: the time
    # the running call evaluates expiry at (_now, or a read's later T).
    cdef long long _now
    cdef long long _tnow
    cdef bint _reading          # read_replies: a write here is a bug, refused
    cdef dict _sessions         # id -> Session
    cdef long long _next_session
    cdef ScanIndex _scan        # local, built by the first SCAN
    cdef Py_ssize_t _expire_pos  # where expired_keys() goes on
    cdef Py_ssize_t _purge_pos   # where _purge_sessions() goes on
    cdef WBuf _scratch          # a follower's RAFT.EXEC replies, reused

    def __cinit__(self):
        self._data = {}
        self._expires = {}
        self._sessions = {}
        self._scratch.data = NULL
        self._scratch.len = self._scratch.cap = 0

    def __dealloc__(self):
        PyMem_Free(self._scratch.data)

    @staticmethod
    def from_dict(dict data not None):
        """A store holding `data` (bytes -> bytes), which it takes over: the
        caller must not use the dict afterwards (the snapshot loader)."""
        return KVStore.from_parts(data, {}, [], 0, 0)

    @staticmethod
    def from_parts(dict data not None, dict expires not None, list sessions not None,
                   long long now, long long next_session):
        """A store from a snapshot's parts, which it takes over: data (bytes
        -> bytes), expires (key -> deadline ms, keys of data only), sessions
        ([(id, last_seq, used, reply bytes or None)]), the cluster time and the last session id given out."""
        cdef KVStore kv = KVStore()
        cdef PyObject *k
        cdef PyObject *v
        cdef Py_ssize_t pos = 0, vl, kl
        cdef Session sess
        kv._data = data
        while PyDict_Next(data, &pos, &k, &v):
            vl = PyBytes_GET_SIZE(<object>v)
            kl = PyBytes_GET_SIZE(<object>k)
            kv._bytes += KEY_COST + kl + vl
            if vl > kv._largest:
                kv._largest = vl
            if kl > kv._largest_key:
                kv._largest_key = kl
        for key in expires:
            if key not in data:
                raise ValueError("a deadline for a key the snapshot does not hold")
        kv._expires = expires
        kv._bytes += EXPIRE_COST * len(expires)
        for sid, last_seq, used, reply in sessions:
            sess = Session()
            sess.last_seq, sess.used, sess.reply = last_seq, used, reply
            kv._sessions[sid] = sess
            kv._bytes += SESSION_COST + (len(reply) if reply is not None else 0)
        kv._now = kv._tnow = now
        kv._next_session = next_session
        return kv

    def __len__(self):
        return PyDict_Size(self._data) + (self._delta if self._overlay is not None else 0)

    @property
    def memory(self):
        """Bytes the live keys and values cost, estimated: their lengths
        plus KEY_COST per key (two bytes objects and a dict slot), and the
        deadlines and sessions."""
        return self._bytes

    @property
    def largest_value(self):
        """The longest value stored since the store began (never lowered:
        a bound, not a census)."""
        return self._largest

    @property
    def largest_key(self):
        """The longest key stored since the store began (a bound)."""
        return self._largest_key

    @property
    def time(self):
        """The cluster time (ms) of the last ENTRY_TIME applied."""
        return self._now

    @property
    def expires(self):
        """How many live keys have a deadline."""
        return PyDict_Size(self._expires)

    @property
    def sessions(self):
        """How many sessions are held (expired ones not dropped yet included)."""
        return PyDict_Size(self._sessions)

    def deadline(self, bytes key):
        """The key's deadline (ms), or None (for tests and tools)."""
        return self._expires.get(key)

    def session(self, long long sid):
        """(last_seq, reply, used) of a session held, or None (tests)."""
        sess = self._sessions.get(sid)
        if sess is None:
            return None
        return (<Session>sess).last_seq, (<Session>sess).reply, (<Session>sess).used

    def get(self, bytes key):
        """The value stored at key, or None (for tests and INFO; clients
        read through the log)."""
        return self._lookup(key)

    cdef inline object _lookup(self, bytes key):
        cdef PyObject *v = self._getp(key)
        return <object>v if v != NULL else None

    def items(self):
        """An iterator over a point-in-time copy of the (key, value) pairs."""
        return iter(self._live_items())

    cdef list _live_items(self):
        cdef dict d
        if self._overlay is None:
            return list(self._data.items())
        d = dict(self._data)
        for k, v in self._overlay.items():
            if v is None:
                d.pop(k, None)
            else:
                d[k] = v
        return list(d.items())

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
        self._expires = {}
        self._sessions = {}
        self._scan = None

    # ---- the copy-on-write primitives: every read and write goes here ----

    cdef inline PyObject *_getp(self, object key):
        """The live value at key (borrowed), or NULL; expired or not."""
        cdef PyObject *v
        if self._overlay is not None:
            v = PyDict_GetItem(self._overlay, key)
            if v != NULL:
                return NULL if v == <PyObject *>None else v
        return PyDict_GetItem(self._data, key)

    cdef inline bint _expired(self, object key):
        """Has key a deadline before the time this call runs at?"""
        cdef PyObject *d
        if PyDict_Size(self._expires) == 0:
            return False
        d = PyDict_GetItem(self._expires, key)
        return d != NULL and PyLong_AsLongLong(<object>d) < self._tnow

    cdef inline PyObject *_getv(self, object key):
        """For reads: the live value, NULL when missing or expired."""
        cdef PyObject *v = self._getp(key)
        if v != NULL and self._expired(key):
            return NULL
        return v

    cdef inline PyObject *_getw(self, object key) except? NULL:
        """For writes: the live value, NULL when missing; an expired key is
        removed first (every replica applies the same writes at the same
        time, so they all remove it at the same entry)."""
        cdef PyObject *v = self._getp(key)
        if v != NULL and self._expired(key):
            self._del(key)
            return NULL
        return v

    cdef inline long long _deadline(self, object key):
        cdef PyObject *d
        if PyDict_Size(self._expires) == 0:
            return -1
        d = PyDict_GetItem(self._expires, key)
        return PyLong_AsLongLong(<object>d) if d != NULL else -1

    cdef int _set_expire(self, object key, long long when) except -1:
        if not PyDict_Contains(self._expires, key):
            self._bytes += EXPIRE_COST
        PyDict_SetItem(self._expires, key, when)
        return 0

    cdef inline int _persist(self, object key) except -1:
        """Remove key's deadline; 1 when it had one."""
        if PyDict_Size(self._expires) == 0 or not PyDict_Contains(self._expires, key):
            return 0
        PyDict_DelItem(self._expires, key)
        self._bytes -= EXPIRE_COST
        return 1

    cdef inline int _set(self, object key, object value) except -1:
        """Store value at key; the key's deadline, if any, stays."""
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
                self._new_key(key)
                self._bytes += vl
                return 0
            self._bytes += vl - PyBytes_GET_SIZE(<object>old)
            return PyDict_SetItem(self._data, key, value)
        old = self._getp(key)
        if old == NULL:
            self._new_key(key)
            self._bytes += vl
        else:
            self._bytes += vl - PyBytes_GET_SIZE(<object>old)
        if self._frozen:
            if old == NULL:
                self._delta += 1
            return PyDict_SetItem(self._overlay, key, value)
        self._merge_key(key)
        return PyDict_SetItem(self._data, key, value)

    cdef inline int _new_key(self, object key) except -1:
        cdef Py_ssize_t kl = PyBytes_GET_SIZE(key)
        self._bytes += KEY_COST + kl
        if kl > self._largest_key:
            self._largest_key = kl
        if self._scan is not None:
            self._scan.add(key)
        return 0

    cdef inline int _set_plain(self, object key, object value) except -1:
        """SET's store: the value, and no deadline."""
        self._set(key, value)
        if PyDict_Size(self._expires):
            self._persist(key)
        return 0

    cdef int _del(self, object key) except -1:
        """Delete key (expired or not) with its deadline; 1 when it was there."""
        cdef PyObject *old = self._getp(key)
        if old == NULL:
            return 0
        self._bytes -= KEY_COST + PyBytes_GET_SIZE(key) + PyBytes_GET_SIZE(<object>old)
        if PyDict_Size(self._expires):
            self._persist(key)
        if self._scan is not None:
            self._scan.remove(key)
        if self._overlay is not None:
            if self._frozen:
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
        cdef Session sess
        snap._store = self
        snap._base = self._data
        snap._nkeys = PyDict_Size(self._data)
        snap._expires = dict(self._expires)
        snap._sessions = []
        for sid, sess in self._sessions.items():
            snap._sessions.append((sid, sess.last_seq, sess.used, sess.reply))
        snap._count = snap._nkeys + len(snap._sessions)
        snap.time = self._now
        snap.next_session = self._next_session
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

    # ---- applying and serving blocks ----

    def apply(self, block, bint want_results):
        """Apply a block of committed entries.  With want_results (the
        leader, whose clients wait) returns one reply per entry (None for
        no-op, configuration and time entries); otherwise None, and reads
        are skipped as they change nothing.  A malformed command yields
        `ERR corrupt command in log` for its entry; a block whose framing is
        broken raises ValueError before anything is applied."""
        cdef Py_buffer view
        cdef list results = [] if want_results else None
        PyObject_GetBuffer(block, &view, PyBUF_SIMPLE)
        try:
            _count_entries(<const uint8_t *>view.buf, view.len)
            self._tnow = self._now
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
        buffer; no-op, configuration and time entries have an empty reply.
        Returns (replies, offsets): offsets is a memoryview of count + 1
        native uint64 ('Q'), entry i's reply being
        replies[offsets[i]:offsets[i + 1]].  The bytes are those of
        encode_replies over apply()'s results, entry by entry."""
        self._tnow = self._now
        replies, offsets = self._wire(block)
        if self._overlay is not None and not self._frozen:
            self._merge(MERGE_PER_APPLY)
        return replies, offsets

    def read_replies(self, block, long long now_ms=0):
        """Serve a block of reads (apply_replies' format) at cluster time
        max(now_ms, the store's): a key whose deadline is before it is
        missing; nothing changes.  A write in the block is answered as a
        corrupt command, not applied."""
        self._tnow = now_ms if now_ms > self._now else self._now
        self._reading = True
        try:
            return self._wire(block)
        finally:
            self._reading = False
            self._tnow = self._now

    cdef tuple _wire(self, block):
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

    def reply_bound(self, block):
        """A bound on the bytes of the replies to a block of reads, from
        the entries' opcodes and the longest value and key ever stored: no
        lookup, nothing built.  The output limit's quick check (reply_sizes
        is the exact one)."""
        cdef Py_buffer view
        cdef Py_ssize_t off = 0, total = 0
        cdef const uint8_t *p
        cdef const uint8_t *d
        cdef uint32_t dlen, op
        cdef Py_ssize_t per_value = self._largest + 24
        PyObject_GetBuffer(block, &view, PyBUF_SIMPLE)
        try:
            p = <const uint8_t *>view.buf
            _count_entries(p, view.len)
            while off < view.len:
                dlen = ld32(p + off)
                d = p + off + ENTRY_HEADER
                total += 64
                if dlen < CMD_HEADER or p[off + ENTRY_TYPE_AT] != ENTRY_NORMAL:
                    off += ENTRY_HEADER + dlen
                    continue
                off += ENTRY_HEADER + dlen
                op = d[0] & _OP_MASK
                if op == _OP_GET:
                    total += per_value
                elif op == _OP_MGET:
                    total += <Py_ssize_t>ld32(d + 1) * per_value
                elif op == _OP_SCAN:
                    total += SCAN_COUNT_MAX * (self._largest_key + 24)
        finally:
            PyBuffer_Release(&view)
        return total

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
            self._tnow = self._now
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
                if op == _OP_SCAN:
                    total += 64 + self._scan_size(d, dlen)
                    continue
                total += 32  # an array header, an integer, or a null
                if op != _OP_GET and op != _OP_MGET:
                    if not _is_read(op):
                        total += 32     # a write's: an error or a number
                    continue
                at = CMD_HEADER
                for i in range(argc):
                    if dlen - at < 4 or dlen - at - 4 < ld32(d + at):
                        break  # malformed: apply answers it with an error
                    alen = ld32(d + at)
                    v = self._getv(PyBytes_FromStringAndSize(<const char *>d + at + 4, alen))
                    total += 24 + (PyBytes_GET_SIZE(<object>v) if v != NULL else 0)
                    at += 4 + alen
            out[pos] = <uint64_t>total
        finally:
            PyBuffer_Release(&view)
        return memoryview(sizes).cast("Q")

    cdef Py_ssize_t _scan_size(self, const uint8_t *d, uint32_t n) except -1:
        """The bytes of the keys a SCAN entry would return (0 if malformed)."""
        if not _valid_payload(d, n):
            return 0
        r = self._scan_cmd(ld32(d + 1), d + CMD_HEADER, M_OBJECTS, NULL, False)
        if not isinstance(r, list):
            return 0
        return sum(24 + len(k) for k in r[1])

    # ---- the leader's active expiry ----

    def expired_keys(self, long long now_ms, Py_ssize_t budget):
        """Keys whose deadline is before now_ms, found among the next
        `budget` deadlines (walked round-robin from where the last call
        stopped): what the leader proposes to delete (OP_EXPIRE_DEL)."""
        cdef PyObject *k
        cdef PyObject *v
        cdef list out = []
        cdef Py_ssize_t looked = 0, n = PyDict_Size(self._expires)
        if budget > n:
            budget = n
        while looked < budget:
            if not PyDict_Next(self._expires, &self._expire_pos, &k, &v):
                self._expire_pos = 0
                if not PyDict_Next(self._expires, &self._expire_pos, &k, &v):
                    break
            looked += 1
            if PyLong_AsLongLong(<object>v) < now_ms:
                out.append(<object>k)
        return out

    # ---- the apply loop ----

    cdef int _apply(self, const uint8_t *p, Py_ssize_t n, int mode, list results, WBuf *w,
                    uint64_t *offsets) except -1:
        """The apply loop over a block whose framing _count_entries
        checked; replies as `mode` says (offsets: where each starts in w)."""
        cdef Py_ssize_t off = 0, pos = 0
        cdef uint32_t dlen
        cdef uint8_t etype
        cdef long long t
        while off < n:
            dlen = ld32(p + off)
            etype = p[off + ENTRY_TYPE_AT]
            if offsets != NULL:
                offsets[pos] = <uint64_t>w.len
            if etype == ENTRY_NORMAL:
                r = self._execute(p + off + ENTRY_HEADER, dlen, mode, w, pos)
            elif etype == ENTRY_TIME:
                r = None
                if dlen != 8:
                    r = self._corrupt(pos, f"a time entry of {dlen} bytes", mode, w)
                elif not self._reading:
                    t = <long long>ld64(p + off + ENTRY_HEADER)
                    if t > self._now:
                        self._now = self._tnow = t
            elif etype == ENTRY_NOOP or etype == ENTRY_CONFIG:
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
        cdef Py_ssize_t off = CMD_HEADER
        cdef const uint8_t *cur
        cdef bytes key
        cdef uint64_t limit = 0xFFFFFFFFFFFFFFFFULL
        if n < CMD_HEADER:
            return self._corrupt(pos, f"payload of {n} bytes is shorter than its header", mode, w)
        op = d[0] & _OP_MASK
        argc = ld32(d + 1)
        if op < _OP_SET or op > _OP_MAX:
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
        if (op == _OP_APPEND and argc == 3) or op == _OP_EXEC:
            if ld32(d + n - APPEND_LIMIT_ARG) != 8:
                return self._corrupt(pos, "the limit argument is not 8 bytes", mode, w)
            limit = ld64(d + n - 8)
            argc -= 1
        if self._reading and not _is_read(op):
            return self._corrupt(pos, f"a write (opcode {op}) among reads", mode, w)
        # The hot path first, with no call and few locals: a plain SET, a GET.
        cur = d + CMD_HEADER
        if op == _OP_SET and argc == 2:
            key = _next_arg(&cur)
            self._set_plain(key, _next_arg(&cur))
            return _reply_ok(mode, w)
        if op == _OP_GET and mode == M_WIRE:
            _put_value(w, self._getv(_next_arg(&cur)), (d[0] & _OP_RESP3) != 0)
            return None
        if op == _OP_EXEC:
            return self._exec(argc, d + CMD_HEADER, (d[0] & _OP_RESP3) != 0, mode, w, limit)
        return self._run(op, argc, d + CMD_HEADER, (d[0] & _OP_RESP3) != 0, mode, w, limit)

    cdef object _run(self, uint32_t op, uint32_t argc, const uint8_t *cur, bint resp3,
                     int mode, WBuf *w, uint64_t limit):
        """One command whose payload checked out (argc: its arguments, the
        limit one aside)."""
        cdef uint32_t i
        cdef Py_ssize_t count
        cdef PyObject *v
        if op == _OP_SET:
            if argc == 2:   # the hot path: no options
                key = _next_arg(&cur)
                self._set_plain(key, _next_arg(&cur))
                return _reply_ok(mode, w)
            return self._set_options(argc, cur, resp3, mode, w)
        if op == _OP_DEL or op == _OP_EXPIRE_DEL:
            count = 0
            for i in range(argc):
                key = _next_arg(&cur)
                if op == _OP_DEL:
                    if self._getw(key) != NULL:
                        count += self._del(key)
                elif self._getp(key) != NULL and self._expired(key):
                    count += self._del(key)
            return _reply_int(mode, w, count)
        if op == _OP_APPEND:
            return self._append(cur, mode, w, limit)
        if op == _OP_INCR or op == _OP_DECR or op == _OP_INCRBY or op == _OP_DECRBY:
            return self._incr(op, cur, mode, w)
        if op == _OP_SETNX:
            key = _next_arg(&cur)
            if self._getw(key) != NULL:
                return _reply_int(mode, w, 0)
            self._set_plain(key, _next_arg(&cur))
            return _reply_int(mode, w, 1)
        if op == _OP_GETDEL:
            key = _next_arg(&cur)
            v = self._getw(key)
            if v == NULL:
                return _reply_value(mode, w, NULL, resp3)
            value = <object>v   # held: the delete drops the store's reference
            self._del(key)
            return _reply_value(mode, w, <PyObject *>value, resp3)
        if op == _OP_MSET:
            for i in range(argc // 2):
                key = _next_arg(&cur)
                self._set_plain(key, _next_arg(&cur))
            return _reply_ok(mode, w)
        if op == _OP_EXPIRE or op == _OP_PEXPIRE:
            return self._expire(op == _OP_EXPIRE, argc, cur, mode, w)
        if op == _OP_PERSIST:
            key = _next_arg(&cur)
            if self._getw(key) == NULL:
                return _reply_int(mode, w, 0)
            return _reply_int(mode, w, self._persist(key))
        if op == _OP_SESSION_OPEN:
            return self._session_open(mode, w)
        if mode == M_NONE:
            return None     # a read nobody waits for changes nothing
        if op == _OP_GET:
            return _reply_value(mode, w, self._getv(_next_arg(&cur)), resp3)
        if op == _OP_MGET:
            if mode == M_WIRE:
                _put_int_line(w, b'*', argc)
                for i in range(argc):
                    _put_value(w, self._getv(_next_arg(&cur)), resp3)
                return None
            out = []
            for i in range(argc):
                v = self._getv(_next_arg(&cur))
                out.append(<object>v if v != NULL else None)
            return out
        if op == _OP_EXISTS:
            # Redis counts a key named twice twice.
            count = 0
            for i in range(argc):
                count += self._getv(_next_arg(&cur)) != NULL
            return _reply_int(mode, w, count)
        if op == _OP_STRLEN:
            v = self._getv(_next_arg(&cur))
            return _reply_int(mode, w, PyBytes_GET_SIZE(<object>v) if v != NULL else 0)
        if op == _OP_TTL or op == _OP_PTTL:
            return self._ttl(op == _OP_PTTL, cur, mode, w)
        if op == _OP_DBSIZE:
            return _reply_int(mode, w, len(self))
        # OP_SCAN
        return self._scan_cmd(argc, cur, mode, w, resp3)

    # ---- string commands ----

    cdef object _set_options(self, uint32_t argc, const uint8_t *cur, bint resp3, int mode,
                             WBuf *w):
        """SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]:
        Redis 7.2's parseExtendedStringArgumentsOrReply and setGenericCommand."""
        cdef bytes key = _next_arg(&cur)
        cdef bytes value = _next_arg(&cur)
        cdef uint32_t j
        cdef size_t n, en = 0
        cdef const unsigned char *opt
        cdef const unsigned char *ex = NULL
        cdef bint nx = False, xx = False, get = False, keepttl = False, has_next
        cdef int unit = 0       # 0 none, 1 EX, 2 PX, 3 EXAT, 4 PXAT
        cdef long long ms
        cdef PyObject *old
        j = 2
        while j < argc:
            opt = _arg(&cur, &n)
            has_next = j + 1 < argc
            if _is(opt, n, "nx") and not xx:
                nx = True
            elif _is(opt, n, "xx") and not nx:
                xx = True
            elif _is(opt, n, "get"):
                get = True
            elif _is(opt, n, "keepttl") and unit == 0:
                keepttl = True
            elif has_next and not keepttl and (
                    (_is(opt, n, "ex") and (unit == 0 or unit == 1))
                    or (_is(opt, n, "px") and (unit == 0 or unit == 2))
                    or (_is(opt, n, "exat") and (unit == 0 or unit == 3))
                    or (_is(opt, n, "pxat") and (unit == 0 or unit == 4))):
                unit = (1 if _is(opt, n, "ex") else 2 if _is(opt, n, "px")
                        else 3 if _is(opt, n, "exat") else 4)
                ex = _arg(&cur, &en)
                j += 1
            else:
                return _reply_err(mode, w, E_SYNTAX)
            j += 1
        if unit:
            if not _string2ll(ex, en, &ms):
                return _reply_err(mode, w, E_NOT_INTEGER)
            if ms <= 0 or ((unit == 1 or unit == 3) and ms > LLONG_MAX // 1000):
                return _reply_error_text(mode, w, "ERR invalid expire time in 'set' command")
            if unit == 1 or unit == 3:
                ms *= 1000
            if unit <= 2:
                if ms > LLONG_MAX - self._tnow:
                    return _reply_error_text(mode, w,
                                             "ERR invalid expire time in 'set' command")
                ms += self._tnow
        old = self._getw(key)
        reply = None
        if get:
            reply = _reply_value(mode, w, old, resp3)
        if (nx and old != NULL) or (xx and old == NULL):
            return reply if get else _reply_value(mode, w, NULL, resp3)
        self._set(key, value)
        if unit:
            self._set_expire(key, ms)
        elif not keepttl:
            self._persist(key)
        return reply if get else _reply_ok(mode, w)

    cdef object _append(self, const uint8_t *cur, int mode, WBuf *w, uint64_t limit):
        cdef bytes key = _next_arg(&cur)
        cdef uint32_t n = ld32(cur)
        cdef PyObject *old = self._getw(key)
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

    cdef object _incr(self, uint32_t op, const uint8_t *cur, int mode, WBuf *w):
        """INCR, DECR, INCRBY, DECRBY (Redis's incrDecrCommand: the
        increment is checked first, then the value; the deadline stays)."""
        cdef bytes key = _next_arg(&cur)
        cdef PyObject *old
        cdef long long v = 0, incr = 1
        cdef size_t n
        cdef const unsigned char *a
        cdef char digits[24]
        if op == _OP_DECR:
            incr = -1
        elif op == _OP_INCRBY or op == _OP_DECRBY:
            a = _arg(&cur, &n)
            if not _string2ll(a, n, &incr):
                return _reply_err(mode, w, E_NOT_INTEGER)
            if op == _OP_DECRBY:
                if incr == LLONG_MIN:
                    return _reply_error_text(mode, w, "ERR decrement would overflow")
                incr = -incr
        old = self._getw(key)
        if old != NULL:
            if not _string2ll(<const unsigned char *>PyBytes_AS_STRING(<object>old),
                              PyBytes_GET_SIZE(<object>old), &v):
                return _reply_err(mode, w, E_NOT_INTEGER)
        if (incr < 0 and v < 0 and incr < LLONG_MIN - v) or \
                (incr > 0 and v > 0 and incr > LLONG_MAX - v):
            return _reply_err(mode, w, E_OVERFLOW)
        v += incr
        self._set(key, PyBytes_FromStringAndSize(
            digits, snprintf(digits, sizeof(digits), "%lld", v)))
        return _reply_int(mode, w, v)

    # ---- expiry commands ----

    cdef object _expire(self, bint seconds, uint32_t argc, const uint8_t *cur, int mode,
                        WBuf *w):
        """EXPIRE / PEXPIRE key time [NX|XX|GT|LT]: Redis 7.2's
        expireGenericCommand, at the entry's cluster time."""
        cdef bytes key = _next_arg(&cur)
        cdef size_t tn, n
        cdef const unsigned char *tp = _arg(&cur, &tn)
        cdef const unsigned char *opt
        cdef bint nx = False, xx = False, gt = False, lt = False
        cdef uint32_t j
        cdef long long when, current
        cdef str name = "expire" if seconds else "pexpire"
        for j in range(2, argc):
            opt = _arg(&cur, &n)
            if _is(opt, n, "nx"):
                nx = True
            elif _is(opt, n, "xx"):
                xx = True
            elif _is(opt, n, "gt"):
                gt = True
            elif _is(opt, n, "lt"):
                lt = True
            else:
                return _reply_error_text(mode, w, f"ERR Unsupported option {_text(opt, n)}")
        if nx and (xx or gt or lt):
            return _reply_error_text(
                mode, w, "ERR NX and XX, GT or LT options at the same time are not compatible")
        if gt and lt:
            return _reply_error_text(
                mode, w, "ERR GT and LT options at the same time are not compatible")
        if not _string2ll(tp, tn, &when):
            return _reply_err(mode, w, E_NOT_INTEGER)
        if seconds:
            if when > LLONG_MAX // 1000 or when < LLONG_MIN // 1000:
                return _reply_error_text(mode, w, f"ERR invalid expire time in '{name}' command")
            when *= 1000
        if when > LLONG_MAX - self._tnow:
            return _reply_error_text(mode, w, f"ERR invalid expire time in '{name}' command")
        when += self._tnow
        if self._getw(key) == NULL:
            return _reply_int(mode, w, 0)
        current = self._deadline(key)
        if (nx and current != -1) or (xx and current == -1) \
                or (gt and (when <= current or current == -1)) \
                or (lt and current != -1 and when >= current):
            return _reply_int(mode, w, 0)
        if when <= self._tnow:
            self._del(key)
        else:
            self._set_expire(key, when)
        return _reply_int(mode, w, 1)

    cdef object _ttl(self, bint ms, const uint8_t *cur, int mode, WBuf *w):
        cdef bytes key = _next_arg(&cur)
        cdef long long when, left
        if self._getv(key) == NULL:
            return _reply_int(mode, w, -2)
        when = self._deadline(key)
        if when == -1:
            return _reply_int(mode, w, -1)
        left = when - self._tnow
        if left < 0:
            left = 0
        return _reply_int(mode, w, left if ms else (left + 500) // 1000)

    # ---- sessions ----

    cdef object _session_open(self, int mode, WBuf *w):
        cdef Session sess = Session()
        self._purge_sessions()
        self._next_session += 1
        sess.used = self._now
        self._sessions[self._next_session] = sess
        self._bytes += SESSION_COST
        return _reply_int(mode, w, self._next_session)

    cdef int _purge_sessions(self) except -1:
        """Look at the next few sessions (round robin) and drop the expired
        ones: bounded work per command.  Only memory depends on it (every
        lookup checks expiry itself)."""
        cdef PyObject *k
        cdef PyObject *v
        cdef Py_ssize_t budget = SESSION_PURGE
        cdef list gone = None
        while budget > 0:
            if not PyDict_Next(self._sessions, &self._purge_pos, &k, &v):
                self._purge_pos = 0
                break
            if self._now - (<Session>v).used >= SESSION_TIMEOUT_MS:
                if gone is None:
                    gone = []
                gone.append(<object>k)
            budget -= 1
        if gone is not None:
            for sid in gone:
                self._drop_session(sid)
        return 0

    cdef int _drop_session(self, object sid) except -1:
        cdef Session sess = self._sessions.pop(sid)
        self._bytes -= SESSION_COST + (len(sess.reply) if sess.reply is not None else 0)
        return 0

    cdef object _exec(self, uint32_t argc, const uint8_t *cur, bint resp3, int mode, WBuf *w,
                      uint64_t limit):
        """RAFT.EXEC session seq command args...: the command runs once per
        (session, seq); the same seq again answers the stored reply."""
        cdef size_t sn, qn, nn
        cdef const unsigned char *sp = _arg(&cur, &sn)
        cdef const unsigned char *qp = _arg(&cur, &qn)
        cdef const unsigned char *np = _arg(&cur, &nn)
        cdef long long sid, seq
        cdef Session sess
        cdef int op
        cdef Py_ssize_t start, old
        cdef bytes stored
        cdef PyObject *o
        self._purge_sessions()
        if not _string2ll(sp, sn, &sid):
            return _reply_err(mode, w, E_UNKNOWN_SESSION)
        key = sid
        o = PyDict_GetItem(self._sessions, key)
        if o == NULL:
            return _reply_err(mode, w, E_UNKNOWN_SESSION)
        sess = <Session>o
        if self._now - sess.used >= SESSION_TIMEOUT_MS:
            self._drop_session(key)
            return _reply_err(mode, w, E_UNKNOWN_SESSION)
        sess.used = self._now
        if not _string2ll(qp, qn, &seq) or seq < 1:
            return _reply_error_text(mode, w, "ERR sequence number must be a positive integer")
        if seq == sess.last_seq:
            return self._replay(sess.reply, resp3, mode, w)
        if seq < sess.last_seq:
            return _reply_error_text(
                mode, w, f"ERR stale sequence number {seq}: the session already ran "
                         f"{sess.last_seq}, and only the last reply is kept")
        op = _kv_opcode(np, nn)
        if mode == M_OBJECTS:
            r = self._exec_inner(op, np, nn, argc - 3, cur, False, M_OBJECTS, NULL, limit)
            stored = encode_replies([r], False)
        elif mode == M_WIRE:
            start = w.len
            r = self._exec_inner(op, np, nn, argc - 3, cur, resp3, M_WIRE, w, limit)
            stored = PyBytes_FromStringAndSize(w.data + start, w.len - start)
            if resp3 and stored == b"_\r\n":
                stored = b"$-1\r\n"
        else:
            # A follower: the reply is kept, never sent.
            self._scratch.len = 0
            r = self._exec_inner(op, np, nn, argc - 3, cur, False, M_WIRE, &self._scratch, limit)
            stored = PyBytes_FromStringAndSize(self._scratch.data, self._scratch.len)
            if self._scratch.cap > 1 << 16:     # one large reply: do not keep its buffer
                PyMem_Free(self._scratch.data)
                self._scratch.data = NULL
                self._scratch.cap = 0
        old = PyBytes_GET_SIZE(sess.reply) if sess.reply is not None else 0
        self._bytes += PyBytes_GET_SIZE(stored) - old
        sess.last_seq = seq
        sess.reply = stored
        return r

    cdef object _exec_inner(self, int op, const unsigned char *np, size_t nn, uint32_t argc,
                            const uint8_t *cur, bint resp3, int mode, WBuf *w, uint64_t limit):
        if op == 0 or _is_read(op) or op == _OP_EXEC:
            return _reply_error_text(mode, w, f"ERR RAFT.EXEC runs write commands only, "
                                              f"not '{_text(np, nn)}'")
        if not _arity_ok(op, argc):
            return _reply_error_text(mode, w, f"ERR wrong number of arguments for "
                                              f"'{_text(np, nn).lower()}' command")
        return self._run(op, argc, cur, resp3, mode, w, limit)

    cdef object _replay(self, object stored, bint resp3, int mode, WBuf *w):
        """The reply a session stored, again (in the protocol asked now)."""
        if stored is None:   # seq 0 never runs: a positive seq equal to last_seq has a reply
            return _reply_err(mode, w, E_CORRUPT)
        if mode == M_WIRE:
            if resp3 and stored == b"$-1\r\n":
                _put(w, b"_\r\n", 3)
            else:
                _put(w, PyBytes_AS_STRING(stored), PyBytes_GET_SIZE(stored))
            return None
        if mode == M_OBJECTS:
            return _decode_reply(stored)
        return None

    # ---- SCAN ----

    cdef object _scan_cmd(self, uint32_t argc, const uint8_t *cur, int mode, WBuf *w,
                          bint resp3):
        """SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]: the keys
        whose scan hash lies in [cursor, next) (next: the cursor returned,
        0 at the end), at least COUNT of them (capped at SCAN_COUNT_MAX)
        when that many are left, keys of one hash never split; then
        filtered by expiry, MATCH and TYPE (only strings here)."""
        cdef size_t n, cn, pn = 0
        cdef const unsigned char *cp = _arg(&cur, &cn)
        cdef const unsigned char *opt
        cdef const unsigned char *pat = NULL
        cdef uint64_t cursor, nxt
        cdef long long count = 10
        cdef bint use_pattern = False, none = False
        cdef uint32_t i = 1
        cdef list keys, out
        if not _scan_cursor(cp, cn, &cursor):
            return _reply_error_text(mode, w, "ERR invalid cursor")
        while i < argc:
            opt = _arg(&cur, &n)
            if argc - i >= 2 and _is(opt, n, "count"):
                opt = _arg(&cur, &n)
                if not _string2ll(opt, n, &count):
                    return _reply_err(mode, w, E_NOT_INTEGER)
                if count < 1:
                    return _reply_err(mode, w, E_SYNTAX)
            elif argc - i >= 2 and _is(opt, n, "match"):
                pat = _arg(&cur, &pn)
                use_pattern = not (pn == 1 and pat[0] == b'*')
            elif argc - i >= 2 and _is(opt, n, "type"):
                opt = _arg(&cur, &n)
                none = not _is(opt, n, "string")
            else:
                return _reply_err(mode, w, E_SYNTAX)
            i += 2
        if count > SCAN_COUNT_MAX:
            count = SCAN_COUNT_MAX
        if self._scan is None:
            self._scan = ScanIndex.__new__(ScanIndex)
            self._scan.build([k for k, v in self._live_items()])
        nxt, keys = self._scan.scan(cursor, count)
        out = []
        if not none:
            for key in keys:
                if use_pattern and not _glob_match(pat, pn,
                                                   <const unsigned char *>PyBytes_AS_STRING(key),
                                                   PyBytes_GET_SIZE(key)):
                    continue
                if self._expired(key):
                    continue
                out.append(key)
        if mode == M_WIRE:
            _put(w, b"*2\r\n", 4)
            cursor_text = str(nxt).encode()
            _put_bulk(w, PyBytes_AS_STRING(cursor_text), PyBytes_GET_SIZE(cursor_text))
            _put_int_line(w, b'*', len(out))
            for key in out:
                _put_bulk(w, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
            return None
        return [str(nxt).encode(), out] if mode == M_OBJECTS else None


def _decode_reply(bytes b):
    """A stored RESP2 reply (a write's: simple string, error, integer,
    bulk or null) as the value apply() returns."""
    cdef Py_ssize_t end = len(b) - 2
    if b.startswith(b"$-1\r\n"):
        return None
    if b[:1] == b"+":
        return OK if b == b"+OK\r\n" else SimpleString(b[1:end].decode())
    if b[:1] == b"-":
        return ErrorReply(b[1:end].decode("utf-8", "surrogateescape"))
    if b[:1] == b":":
        return int(b[1:end])
    if b[:1] == b"$":
        return b[b.index(b"\r\n") + 2:end]
    raise ValueError(f"not a stored reply: {b[:32]!r}")


cdef bint _valid_payload(const uint8_t *d, Py_ssize_t n) noexcept:
    """Do the payload's arguments fill it exactly?"""
    cdef Py_ssize_t off = CMD_HEADER
    cdef uint32_t i, argc
    if n < CMD_HEADER:
        return False
    argc = ld32(d + 1)
    for i in range(argc):
        if n - off < 4 or n - off - 4 < ld32(d + off):
            return False
        off += 4 + ld32(d + off)
    return off == n


cdef inline uint64_t _hash_of(bytes key) noexcept:
    return _scan_hash(<const unsigned char *>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))


cdef class ScanIndex:
    """The live keys by scan hash, local to this process (never in a
    snapshot): 2^bits buckets, bucket i holding the keys whose hash has i
    as its top bits, so a cursor (a hash) names where to resume whatever
    the number of buckets.  About two keys per bucket: a key added or
    removed costs a hash and a short list operation."""
    cdef list _buckets
    cdef int _bits
    cdef Py_ssize_t _count

    cdef int build(self, list keys) except -1:
        self._bits = 4
        while (<Py_ssize_t>2 << self._bits) < len(keys):
            self._bits += 1
        self._buckets = [None] * (1 << self._bits)
        self._count = 0
        for key in keys:
            self._put(key)
        return 0

    cdef inline int _put(self, bytes key) except -1:
        cdef Py_ssize_t b = <Py_ssize_t>(_hash_of(key) >> (64 - self._bits))
        bucket = self._buckets[b]
        if bucket is None:
            self._buckets[b] = [key]
        else:
            (<list>bucket).append(key)
        self._count += 1
        return 0

    cdef int add(self, bytes key) except -1:
        self._put(key)
        if self._count > (<Py_ssize_t>2 << self._bits) and self._bits < 40:
            keys = [k for bucket in self._buckets if bucket is not None for k in bucket]
            self._bits += 1
            self._buckets = [None] * (1 << self._bits)
            self._count = 0
            for k in keys:
                self._put(k)
        return 0

    cdef int remove(self, bytes key) except -1:
        cdef Py_ssize_t b = <Py_ssize_t>(_hash_of(key) >> (64 - self._bits))
        bucket = self._buckets[b]
        if bucket is not None and key in bucket:
            (<list>bucket).remove(key)
            self._count -= 1
        return 0

    cdef tuple scan(self, uint64_t cursor, Py_ssize_t count):
        """(next cursor, keys): keys in hash order from `cursor`, at least
        `count` unless fewer are left, never splitting a hash; next is the
        hash of the first key not returned, 0 when none is left."""
        cdef Py_ssize_t b = <Py_ssize_t>(cursor >> (64 - self._bits))
        cdef Py_ssize_t nb = 1 << self._bits
        cdef list out = [], pairs
        cdef uint64_t h, last = 0
        while b < nb:
            bucket = self._buckets[b]
            b += 1
            if not bucket:
                continue
            pairs = []
            for key in <list>bucket:
                h = _hash_of(key)
                if h >= cursor:
                    pairs.append((h, key))
            pairs.sort()
            for h, key in pairs:
                if len(out) >= count and h != last:
                    return h, out
                out.append(key)
                last = h
        return 0, out


cdef Py_ssize_t _count_entries(const uint8_t *p, Py_ssize_t n) except -1:
    """The number of entries in a block; ValueError when its framing is
    broken (checked before applying anything: a block is applied whole or,
    broken, not at all)."""
    cdef size_t count, at
    # Every type passes here: apply answers an unknown one as a corrupt command.
    if block_walk(p, <size_t>n, 255, &count, &at) != BLOCK_OK:
        raise ValueError(f"malformed entry block: entry {count} runs past the end")
    return count


# Snapshot record kinds (version 2; docs/snapshots.md).
DEF REC_KEY = 0           # u32 klen, u32 vlen, key, value
DEF REC_KEY_TTL = 1       # u32 klen, u32 vlen, i64 deadline, key, value
DEF REC_SESSION = 2       # u64 id, u64 last seq, i64 last used, u32 reply len, reply


cdef class KVSnapshot:
    """A frozen point in time of a KVStore (KVStore.begin_snapshot), walked
    in bounded chunks of records (version 2, each starting with its kind):

        0  u32 LE key length, u32 LE value length, key, value
        1  the same with an i64 LE deadline (ms) before the key
        2  a session: u64 id, u64 last seq, i64 last used (ms), u32 reply
           length, reply (RESP2; length 0: none yet)

    keys first, then the sessions.  With records_v1 set (a cluster whose
    members may run raftfast 0.1.0: runtime/cluster_version.py) the records
    are version 1's instead: u32 key length, u32 value length, key, value,
    which holds no deadline and no session (v1_possible says there are
    none).  The base
    dict is never changed while the snapshot is frozen (the store writes to
    its overlay), so a saved PyDict_Next position stays valid between
    chunks; the deadlines and sessions were copied at the freeze.
    release() ends the freeze (the store then merges its overlay back); a
    snapshot dropped without release is released then."""
    cdef KVStore _store
    cdef dict _base
    cdef dict _expires
    cdef list _sessions
    cdef object _token
    cdef Py_ssize_t _pos, _count, _nkeys, _written, _sess_pos
    cdef readonly long long time, next_session
    cdef public bint records_v1

    @property
    def v1_possible(self):
        """Can this point in time be written as version 1 records?"""
        return not self._expires and not self._sessions

    def __dealloc__(self):
        if self._store is not None and self._token is not None \
                and self._store._snap_token is self._token:
            self._store._end_freeze()

    @property
    def count(self):
        """Records in the snapshot: keys and sessions."""
        return self._count

    @property
    def keys(self):
        """Keys in the snapshot."""
        return self._nkeys

    @property
    def written(self):
        """Records returned by next_chunk so far."""
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
        cdef PyObject *d
        cdef Py_ssize_t pos, n = 0, size = 0, rec, kl, vl, i, kind_bytes
        cdef bytes out
        cdef uint8_t *p
        if self._base is None:
            raise RuntimeError("the snapshot was released")
        if PyDict_Size(self._base) != self._nkeys:
            raise RuntimeError("the frozen key-value base changed under its snapshot")
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        if self.records_v1 and not self.v1_possible:
            raise ValueError("deadlines or sessions do not fit version 1 records")
        kind_bytes = 0 if self.records_v1 else 1
        # Pass 1: how many records fit.
        pos = self._pos
        while n < max_keys and PyDict_Next(self._base, &pos, &k, &v):
            rec = 8 + kind_bytes + PyBytes_GET_SIZE(<object>k) + PyBytes_GET_SIZE(<object>v)
            if PyDict_GetItem(self._expires, <object>k) != NULL:
                rec += 8
            if n > 0 and size + rec > max_bytes:
                break
            if PyBytes_GET_SIZE(<object>k) > 0xFFFFFFFF or PyBytes_GET_SIZE(<object>v) > 0xFFFFFFFF:
                raise ValueError("a key or value over 4 GiB does not fit a snapshot record")
            size += rec
            n += 1
        if n == 0:
            return self._session_chunk(max_keys, max_bytes)
        # Pass 2: write them (nothing ran in between: same n records).
        out = PyBytes_FromStringAndSize(NULL, size)
        p = <uint8_t *>PyBytes_AS_STRING(out)
        for i in range(n):
            PyDict_Next(self._base, &self._pos, &k, &v)
            kl = PyBytes_GET_SIZE(<object>k)
            vl = PyBytes_GET_SIZE(<object>v)
            d = PyDict_GetItem(self._expires, <object>k)
            if kind_bytes:
                p[0] = REC_KEY if d == NULL else REC_KEY_TTL
            st32(p + kind_bytes, <uint32_t>kl)
            st32(p + kind_bytes + 4, <uint32_t>vl)
            p += 8 + kind_bytes
            if d != NULL:
                st64(p, <uint64_t>PyLong_AsLongLong(<object>d))
                p += 8
            memcpy(p, PyBytes_AS_STRING(<object>k), kl)
            memcpy(p + kl, PyBytes_AS_STRING(<object>v), vl)
            p += kl + vl
        self._written += n
        return out, n

    cdef object _session_chunk(self, Py_ssize_t max_keys, Py_ssize_t max_bytes):
        cdef list parts = []
        cdef Py_ssize_t n = 0, size = 0
        cdef bytes rec
        while self._sess_pos < len(self._sessions) and n < max_keys:
            sid, last_seq, used, reply = self._sessions[self._sess_pos]
            reply = reply if reply is not None else b""
            rec = bytes([REC_SESSION]) + _SESSION_HEAD.pack(sid, last_seq, used, len(reply)) + reply
            if n > 0 and size + len(rec) > max_bytes:
                break
            parts.append(rec)
            size += len(rec)
            n += 1
            self._sess_pos += 1
        if n == 0:
            return None
        self._written += n
        return b"".join(parts), n


_SESSION_HEAD = struct.Struct("<QQqI")   # id, last seq, last used, reply length


def decode_records(const uint8_t[::1] payload not None, Py_ssize_t nrecords, dict into not None):
    """Add the nrecords records of a version 1 snapshot chunk (u32 key
    length, u32 value length, key, value) to `into`.  ValueError (saying
    which record and what) when the records do not fill the payload
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


def decode_records_v2(const uint8_t[::1] payload not None, Py_ssize_t nrecords,
                      dict data not None, dict expires not None, list sessions not None):
    """Add the nrecords records of a version 2 chunk (KVSnapshot's format):
    keys to data (and their deadlines to expires), sessions to sessions as
    (id, last_seq, used, reply or None) in order.  ValueError (which record,
    what) when the records do not fill the payload exactly, a key repeats,
    or a kind is unknown."""
    cdef Py_ssize_t n = payload.shape[0], off = 0, i, keys = 0, before = PyDict_Size(data)
    cdef uint32_t kl, vl, head
    cdef uint8_t kind
    cdef const uint8_t *p = &payload[0] if n else NULL
    for i in range(nrecords):
        if n - off < 1:
            raise ValueError(f"record {i} of {nrecords}: runs past the chunk")
        kind = p[off]
        if kind == REC_SESSION:
            if n - off - 1 < _SESSION_HEAD.size:
                raise ValueError(f"record {i} of {nrecords}: session header runs past the chunk")
            sid = ld64(p + off + 1)
            last_seq = ld64(p + off + 9)
            used = <long long>ld64(p + off + 17)
            rl = ld32(p + off + 25)
            off += 1 + _SESSION_HEAD.size
            if rl > n - off:
                raise ValueError(f"record {i} of {nrecords}: a session reply of {rl} bytes "
                                 "runs past the chunk")
            sessions.append((sid, last_seq, used,
                             PyBytes_FromStringAndSize(<const char *>p + off, rl) if rl else None))
            off += rl
            continue
        if kind != REC_KEY and kind != REC_KEY_TTL:
            raise ValueError(f"record {i} of {nrecords}: unknown kind {kind}")
        head = 9 + (8 if kind == REC_KEY_TTL else 0)
        if n - off < head:
            raise ValueError(f"record {i} of {nrecords}: header runs past the chunk")
        kl = ld32(p + off + 1)
        vl = ld32(p + off + 5)
        if <Py_ssize_t>kl > n - off - head or <Py_ssize_t>vl > n - off - head - kl:
            raise ValueError(f"record {i} of {nrecords}: {kl}+{vl} bytes run past the chunk")
        key = PyBytes_FromStringAndSize(<const char *>p + off + head, kl)
        PyDict_SetItem(data, key, PyBytes_FromStringAndSize(<const char *>p + off + head + kl, vl))
        if kind == REC_KEY_TTL:
            PyDict_SetItem(expires, key, <long long>ld64(p + off + 9))
        off += head + kl + vl
        keys += 1
    if off != n:
        raise ValueError(f"{n - off} bytes after the last of {nrecords} records")
    if PyDict_Size(data) != before + keys:
        raise ValueError(f"{before + keys - PyDict_Size(data)} duplicate keys")
    return None
