# cython: language_level=3
"""RESP for the client front door: an incremental request parser and a
batch reply encoder.

The parser follows Redis's networking.c (multibulk and inline requests,
sdssplitargs quoting, strict string2ll lengths, Redis's error wording).
It differs on purpose in two places, so that the outcome never depends on
how the stream was cut into reads: a header or inline line is too big when
its terminator lies more than max_inline_len bytes past its start, whether
or not it has arrived yet; and header lines must end in CRLF and bulk data
must be followed by CRLF (`invalid bulk length` otherwise) where Redis
skips two bytes unchecked.  NUL bytes are ordinary characters in inline
lines.  tests/reference/resp_py.py is the readable twin of this module.

RespParser.parse_kv is the client fast path: KV commands go from the
received chunks straight into an entry block (ext/kvcmd.h), with no Python
object per command; the first other request is handed back to Python.
"""
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport PyUnicode_AsUTF8String
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memchr, memcpy

from raftfast._wire cimport ENTRY_HEADER, st32

cdef extern from "Python.h":
    ctypedef struct PyObject
    # Borrowed-pointer forms of the list and bytes accessors, so chunk
    # access in the scanning loops costs no reference counting.
    PyObject *PyList_GET_ITEM(object lst, Py_ssize_t i)
    char *_bytes_ptr "PyBytes_AS_STRING" (PyObject *b)
    Py_ssize_t _bytes_size "PyBytes_GET_SIZE" (PyObject *b)
    char *PyOS_double_to_string(double val, char format_code, int precision,
                                int flags, int *ptype) except NULL
    int Py_DTSF_ADD_DOT_0

cdef extern from "rfstr.h":
    # Redis's strict string2ll, shared with kv.pyx; MAX_NUMBER_LEN is the
    # longest text it accepts.
    enum: MAX_NUMBER_LEN "RF_MAX_NUMBER_LEN"
    bint _string2ll "rf_string2ll" (const unsigned char *s, size_t n, long long *out) noexcept nogil

cdef extern from "kvcmd.h":
    # The KV command payload (format in kv.pyx), for parse_kv.
    enum:
        CMD_HEADER "RF_CMD_HEADER"
        OP_RESP3 "RF_OP_RESP3"
        OP_GET "RF_OP_GET"
        OP_MGET "RF_OP_MGET"
        OP_EXISTS "RF_OP_EXISTS"
        OP_APPEND "RF_OP_APPEND"
        APPEND_LIMIT_ARG "RF_APPEND_LIMIT_ARG"
    int _kv_opcode "rf_kv_opcode" (const unsigned char *s, size_t n) noexcept nogil
    bint _kv_arity_ok "rf_kv_arity_ok" (unsigned op, uint64_t argc) noexcept nogil
    bint _kv_is_read "rf_kv_is_read" (unsigned op) noexcept nogil
    bint _has_limit "rf_kv_has_limit" (unsigned op) noexcept nogil
    void _put_command_header "rf_put_command_header" (uint8_t *p, uint32_t data_len,
                                                      uint8_t opcode, uint32_t argc) noexcept nogil
    void _put_append_limit "rf_put_append_limit" (uint8_t *p, uint64_t limit) noexcept nogil

DEF CR = 13
DEF LF = 10
# Redis's limits for a connection that has not authenticated yet.
DEF PREAUTH_MAX_ARGS = 10
DEF PREAUTH_MAX_BULK = 16384
# Replies are built by the server, never by clients; the cap only turns a
# self-referencing value into an error instead of a C stack overflow.
DEF MAX_DEPTH = 64
MAX_REPLY_DEPTH = MAX_DEPTH


class SimpleString(str):
    """A RESP simple string reply (`+OK`)."""
    __slots__ = ()


class ErrorReply(str):
    """A RESP error reply; the text starts with its code (`ERR ...`, `MOVED ...`)."""
    __slots__ = ()


OK = SimpleString("OK")
PONG = SimpleString("PONG")


cdef inline bint _isspace(unsigned char c) noexcept nogil:
    return c == 32 or 9 <= c <= 13


cdef inline int _hexval(unsigned char c) noexcept nogil:
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


cdef object _split_inline(const unsigned char *s, Py_ssize_t n):
    """sdssplitargs over one inline line: list of arguments, or None when
    quotes are unbalanced (or a closing quote is not followed by a space)."""
    cdef list args = []
    cdef Py_ssize_t i = 0, k
    cdef unsigned char c
    cdef bint inq, insq, done
    # A token never outgrows its line: each input byte yields at most one.
    cdef unsigned char *tok = <unsigned char *>PyMem_Malloc(n + 1)
    if tok == NULL:
        raise MemoryError()
    try:
        while True:
            while i < n and _isspace(s[i]):
                i += 1
            if i >= n:
                return args
            k = 0
            inq = insq = done = False
            while not done:
                if inq:
                    if (i + 3 < n and s[i] == b'\\' and s[i + 1] == b'x'
                            and _hexval(s[i + 2]) >= 0 and _hexval(s[i + 3]) >= 0):
                        tok[k] = _hexval(s[i + 2]) * 16 + _hexval(s[i + 3])
                        k += 1
                        i += 3
                    elif i + 1 < n and s[i] == b'\\':
                        i += 1
                        c = s[i]
                        if c == b'n':
                            c = LF
                        elif c == b'r':
                            c = CR
                        elif c == b't':
                            c = 9
                        elif c == b'b':
                            c = 8
                        elif c == b'a':
                            c = 7
                        tok[k] = c
                        k += 1
                    elif i < n and s[i] == b'"':
                        if i + 1 < n and not _isspace(s[i + 1]):
                            return None
                        done = True
                    elif i >= n:
                        return None
                    else:
                        tok[k] = s[i]
                        k += 1
                elif insq:
                    if i + 1 < n and s[i] == b'\\' and s[i + 1] == b"'":
                        i += 1
                        tok[k] = b"'"
                        k += 1
                    elif i < n and s[i] == b"'":
                        if i + 1 < n and not _isspace(s[i + 1]):
                            return None
                        done = True
                    elif i >= n:
                        return None
                    else:
                        tok[k] = s[i]
                        k += 1
                elif i >= n or s[i] == b' ' or s[i] == LF or s[i] == CR or s[i] == 9:
                    done = True
                elif s[i] == b'"':
                    inq = True
                elif s[i] == b"'":
                    insq = True
                else:
                    tok[k] = s[i]
                    k += 1
                if i < n:
                    i += 1
            args.append(PyBytes_FromStringAndSize(<char *>tok, k))
    finally:
        PyMem_Free(tok)


# ---- parse_kv's output ----------------------------------------------------

cdef struct KvOut:
    PyObject *ba            # the caller's bytearray
    Py_ssize_t used         # its bytes that are whole entries
    Py_ssize_t cap          # its current length (>= used; trimmed at the end)
    Py_ssize_t n            # entries appended by this call
    Py_ssize_t added        # bytes appended by this call
    Py_ssize_t max_entries, max_bytes, max_cmd
    Py_ssize_t forced       # entries that fit whatever their size (1, or 0 with force_first=False)
    uint8_t flag            # OP_RESP3 or 0
    uint64_t append_limit   # the limit APPEND's entry carries (max_bulk_len)
    int kind                # KIND_ANY, or only KIND_READS / KIND_WRITES


# parse_kv's `reads` argument: which KV commands one call takes.
cdef enum:
    KIND_ANY = 0
    KIND_READS = 1
    KIND_WRITES = 2


cdef inline int _kind_of(int op) noexcept:
    """Reads (GET, MGET, EXISTS, STRLEN, TTL, PTTL, DBSIZE, SCAN) change
    nothing: a leader serves them without the log (ReadIndex); the rest are
    writes."""
    if _kv_is_read(op):
        return KIND_READS
    return KIND_WRITES


cdef class RespParser:
    """Incremental RESP request parser: feed() bytes as they arrive, parse()
    every complete request buffered so far.  After a protocol error, `error`
    holds Redis's reply text and the parser accepts nothing more.

    Received chunks are kept as they came, with a cursor into the first
    (never concatenated); an argument is copied out of its chunk once, and
    an argument spanning chunks is assembled with one copy.  parse_kv
    copies KV commands' arguments from the chunk straight into an entry.
    """
    cdef list _chunks           # received bytes objects; [_head:] are not consumed yet
    cdef Py_ssize_t _head       # the chunk holding the cursor
    cdef Py_ssize_t _pos        # the cursor's offset inside it
    cdef Py_ssize_t _avail      # unconsumed bytes over all chunks
    # A terminator search that failed resumes where it stopped (chunk index,
    # that chunk's offset from the cursor, bytes searched), so a line that
    # trickles in is scanned once.  Reset whenever the cursor moves.
    cdef Py_ssize_t _scan_idx, _scan_base, _scanned
    cdef Py_ssize_t _mb_left    # arguments still due in the multibulk request being read
    cdef Py_ssize_t _bulk_len   # length of the bulk being read, -1 while its $ line is due
    cdef list _args
    cdef Py_ssize_t _args_bytes  # bytes of _args: a request not complete yet holds them
    # A complete KV request parse_kv took out of the chunks but left for the
    # next call (it did not fit that call's limits); delivered first.
    cdef list _pending
    cdef readonly object error
    # Whether the last parse_kv stopped because the next KV command would
    # have gone past max_entries / max_bytes (it stays buffered).
    cdef readonly bint stopped_at_limit
    cdef readonly bint stopped_at_kind
    cdef readonly Py_ssize_t max_bulk_len, max_inline_len, max_multibulk_len
    # A connection that has not authenticated yet is held to Redis's
    # pre-auth limits: at most 10 arguments, none over 16 KiB.
    cdef public bint unauthenticated

    def __cinit__(self, Py_ssize_t max_bulk_len=512 * 1024 * 1024,
                  Py_ssize_t max_inline_len=64 * 1024,
                  Py_ssize_t max_multibulk_len=1024 * 1024):
        self.max_bulk_len = max_bulk_len
        self.max_inline_len = max_inline_len
        self.max_multibulk_len = max_multibulk_len
        self._chunks = []
        self._bulk_len = -1
        self._args = []
        self.error = None

    @property
    def pending_bytes(self):
        """Bytes held for requests not complete yet: what is buffered, and
        the arguments already taken of a request still arriving."""
        return self._avail + self._args_bytes

    def feed(self, data):
        """Buffer received bytes (after an error they are dropped)."""
        if self.error is not None:
            return
        if type(data) is not bytes:
            data = bytes(data)   # the caller may reuse a bytearray or memoryview
        if PyBytes_GET_SIZE(data):
            self._chunks.append(data)
            self._avail += PyBytes_GET_SIZE(data)

    def parse(self, Py_ssize_t max_requests=-1):
        """Every complete request buffered (at most max_requests of them
        when that is not negative), in order, each a list of argument
        bytes; on a protocol error, the requests before it."""
        cdef list out = []
        cdef int r
        if self.error is not None:
            return out
        if self._pending is not None:
            out.append(self._pending)
            self._pending = None
        while max_requests < 0 or len(out) < max_requests:
            if self._mb_left:
                r = self._bulk(out)
            elif self._avail == 0:
                break
            elif self._byte_at(0) == b'*':
                r = self._multibulk_header()
            else:
                r = self._inline(out)
            if r <= 0:
                break
        self._drop_consumed()
        return out

    cdef void _drop_consumed(self) noexcept:
        if self._head:
            del self._chunks[:self._head]
            self._scan_idx -= self._head
            self._head = 0

    # ---- the KV fast path ----------------------------------------------

    def parse_kv(self, bytearray out, bint resp3, Py_ssize_t max_entries=1 << 30,
                 Py_ssize_t max_bytes=1 << 62, Py_ssize_t max_command_bytes=32 << 20,
                 bint force_first=True, reads=None):
        """Consume, in order, the complete buffered requests that are
        well-formed KV commands (ext/kvcmd.h's rf_kv_opcode: GET, SET, DEL,
        RAFT.EXEC ..., any case, Redis's arity, arguments' bytes + 8 per argument within
        max_command_bytes) and append each onto `out` as one entry of the
        block format (term 0, ENTRY_NORMAL, the opcode's RESP3 bit set when
        resp3), exactly as kv.encode_commands would (an APPEND's and a
        RAFT.EXEC's entry also carry max_bulk_len as their limit:
        encode_commands' append_limit).  Returns
        (entries appended, stop): stop is the first request that is not such
        a command, as a list of argument bytes (consumed; the caller answers
        it, then calls again), or None when no complete request is buffered,
        after a protocol error (`error` is set; the requests before it are
        encoded), or when the next KV command would take this call past
        max_entries entries or max_bytes appended bytes (it stays buffered
        and `stopped_at_limit` is True).  Like etcd's limitSize, the first
        entry of a call is accepted whatever its size, so a call with
        max_entries >= 1 always makes progress; force_first=False lifts that
        exception (a batcher adding to a batch that already holds entries).
        reads=True takes only reads (rf_kv_is_read), reads=False only
        writes: the call stops before a KV command of the other kind, leaving
        it buffered, with `stopped_at_kind` True (so reads and writes can
        go to different batches without losing their order).

        Requests wholly inside the first buffered chunk are encoded
        straight from it, with no Python object; the rest (inline requests,
        a request cut by a read, anything that is not a KV command) go
        through parse()'s state machine, so outcomes are the same."""
        cdef KvOut o
        cdef object stop = None
        cdef list req
        cdef Py_ssize_t size
        cdef int op
        self.stopped_at_limit = False
        self.stopped_at_kind = False
        if self.error is not None:
            return 0, None
        o.ba = <PyObject *>out
        o.used = o.cap = PyByteArray_GET_SIZE(out)
        o.n = o.added = 0
        o.max_entries = max_entries
        o.max_bytes = max_bytes
        o.max_cmd = max_command_bytes
        o.forced = 1 if force_first else 0
        o.flag = OP_RESP3 if resp3 else 0
        o.append_limit = <uint64_t>self.max_bulk_len
        o.kind = KIND_ANY if reads is None else (KIND_READS if reads else KIND_WRITES)
        cdef int fast
        try:
            while True:
                if self._pending is not None:
                    req = self._pending
                    self._pending = None
                else:
                    if self._mb_left == 0 and self._avail:
                        fast = self._kv_fast(&o)
                        if fast == 1:
                            self.stopped_at_limit = True
                            break
                        if fast == 2:
                            self.stopped_at_kind = True
                            break
                    req = self._next_request()
                if req is None:
                    break
                op = _kv_command(req, max_command_bytes, &size)
                if op == 0:
                    stop = req
                    break
                if o.kind != KIND_ANY and _kind_of(op) != o.kind:
                    self._pending = req
                    self.stopped_at_kind = True
                    break
                if o.n >= max_entries or (o.n >= o.forced and o.added + size > max_bytes):
                    self._pending = req
                    self.stopped_at_limit = True
                    break
                _kv_put_list(&o, op, req, size)
        finally:
            if o.cap != o.used:
                PyByteArray_Resize(out, o.used)
            self._drop_consumed()
        return o.n, stop

    cdef list _next_request(self):
        """parse()'s state machine, up to one complete request (None when
        none is buffered or on a protocol error)."""
        cdef list out = []
        cdef int r
        while not out:
            if self._mb_left:
                r = self._bulk(out)
            elif self._avail == 0:
                break
            elif self._byte_at(0) == b'*':
                r = self._multibulk_header()
            else:
                r = self._inline(out)
            if r <= 0:
                break
        return out[0] if out else None

    cdef int _kv_fast(self, KvOut *o) except -1:
        """Encode the KV requests that lie wholly inside the head chunk,
        straight from it; stop at the first that does not (0), that would
        pass the limits (1) or that is of the other kind (2).  Only called
        between requests.

        A request is taken here only when parse() would return it with no
        error (same limits, same strict header syntax); everything else is
        left to parse()'s code.  Arguments are copied into `out` as they are
        checked, past o.used: a request that turns out not to qualify leaves
        only bytes that the next entry overwrites or the final trim drops."""
        cdef const unsigned char *p
        cdef Py_ssize_t size, q, d, w, cmd, i, argc
        cdef long long count, blen
        cdef int op
        cdef uint8_t *dst
        while self._avail:
            p = self._chunk(self._head, &size)
            if p[0] != b'*':
                return 0
            q = self._kv_line(p, 0, size, &count)
            if q < 0 or count < 2 or count > self.max_multibulk_len:
                return 0
            d = self._kv_bulk(p, q, size, &blen)
            if d < 0:
                return 0
            op = _kv_opcode(p + d, <size_t>blen)
            argc = <Py_ssize_t>count - 1
            if op == 0 or not _kv_arity_ok(op, argc):
                return 0
            q = d + blen + 2
            w = ENTRY_HEADER + CMD_HEADER        # write offset inside the entry
            cmd = 0
            for i in range(argc):
                d = self._kv_bulk(p, q, size, &blen)
                if d < 0:
                    return 0
                cmd += blen + 8
                if cmd > o.max_cmd or w - ENTRY_HEADER + 4 + blen > 0xFFFFFFFF:
                    return 0
                _kv_reserve(o, w + 4 + blen)
                dst = <uint8_t *>PyByteArray_AS_STRING(<object>o.ba) + o.used + w
                st32(dst, <uint32_t>blen)
                memcpy(dst + 4, p + d, <size_t>blen)
                w += 4 + blen
                q = d + blen + 2
            if _has_limit(op):
                _kv_reserve(o, w + APPEND_LIMIT_ARG)
                _put_append_limit(<uint8_t *>PyByteArray_AS_STRING(<object>o.ba) + o.used + w,
                                  o.append_limit)
                w += APPEND_LIMIT_ARG
                if w - ENTRY_HEADER > 0xFFFFFFFF:
                    return 0
            if o.kind != KIND_ANY and _kind_of(op) != o.kind:
                return 2    # checked last: parse_kv decides the same on the parsed request
            if o.n >= o.max_entries or (o.n >= o.forced and o.added + w > o.max_bytes):
                return 1
            _put_command_header(<uint8_t *>PyByteArray_AS_STRING(<object>o.ba) + o.used,
                                <uint32_t>(w - ENTRY_HEADER), <uint8_t>(op | o.flag),
                                <uint32_t>(argc + (_has_limit(op))))
            o.used += w
            o.added += w
            o.n += 1
            # Consume the request: it ends inside the head chunk.
            self._avail -= q
            if q == size:
                self._head += 1
                self._pos = 0
            else:
                self._pos += q
            self._scan_idx = self._head
            self._scan_base = self._scanned = 0
        return 0

    cdef inline Py_ssize_t _kv_line(self, const unsigned char *p, Py_ssize_t start,
                                    Py_ssize_t size, long long *v) noexcept:
        """The number of the `*` or `$` header line at p[start] when the
        whole line is in p[:size] and parse() would accept it: its first CR
        within max_inline_len and MAX_NUMBER_LEN + 1 bytes of the line's
        start, then LF, the digits strict.  The offset past the line, or -1."""
        cdef Py_ssize_t i = start + 1
        cdef Py_ssize_t last = start + MAX_NUMBER_LEN + 1
        if last > start + self.max_inline_len:
            last = start + self.max_inline_len
        if last > size - 2:                 # the LF must be in p too
            last = size - 2
        while i <= last and p[i] != CR:
            i += 1
        if i > last or p[i + 1] != LF:
            return -1
        if not _string2ll(p + start + 1, <size_t>(i - start - 1), v):
            return -1
        return i + 2

    cdef inline Py_ssize_t _kv_bulk(self, const unsigned char *p, Py_ssize_t q,
                                    Py_ssize_t size, long long *blen) noexcept:
        """The offset of the data of the bulk whose `$` line is at p[q], when
        the whole bulk and its CRLF are in p[:size] and valid; else -1."""
        cdef Py_ssize_t d
        if q >= size or p[q] != b'$':
            return -1
        d = self._kv_line(p, q, size, blen)
        if (d < 0 or blen[0] < 0 or blen[0] > self.max_bulk_len
                or blen[0] + 2 > size - d
                or p[d + blen[0]] != CR or p[d + blen[0] + 1] != LF):
            return -1
        return d


    cdef int _fail(self, str what) except -2:
        self.error = "Protocol error: " + what
        self._chunks = []
        self._head = self._pos = self._avail = 0
        self._scan_idx = self._scan_base = self._scanned = 0
        self._mb_left = 0
        self._args_bytes = 0
        self._args = []
        return -1

    cdef inline const unsigned char *_chunk(self, Py_ssize_t i, Py_ssize_t *size) noexcept:
        """Unconsumed bytes of chunk i (the list keeps it alive)."""
        cdef PyObject *c = PyList_GET_ITEM(self._chunks, i)
        cdef const unsigned char *p = <const unsigned char *>_bytes_ptr(c)
        size[0] = _bytes_size(c)
        if i == self._head:
            size[0] -= self._pos
            return p + self._pos
        return p

    cdef void _advance(self, Py_ssize_t n) noexcept:
        cdef Py_ssize_t size
        self._avail -= n
        while n > 0:
            self._chunk(self._head, &size)
            if n < size:
                self._pos += n
                break
            n -= size
            self._head += 1
            self._pos = 0
        self._scan_idx = self._head
        self._scan_base = 0
        self._scanned = 0

    cdef int _byte_at(self, Py_ssize_t off) noexcept:
        """The byte `off` past the cursor; off < _avail."""
        cdef Py_ssize_t i = self._head, base = 0, size
        cdef const unsigned char *p
        if off >= self._scan_base:   # usually just past a terminator found by _find
            i = self._scan_idx
            base = self._scan_base
        while True:
            p = self._chunk(i, &size)
            if off - base < size:
                return p[off - base]
            base += size
            i += 1

    cdef Py_ssize_t _find(self, unsigned char ch) noexcept:
        """Offset from the cursor of the first ch within max_inline_len + 1
        bytes, or -1 when it is not buffered there."""
        cdef Py_ssize_t end = self._avail, size, start, stop
        cdef const unsigned char *p
        cdef const unsigned char *hit
        if end > self.max_inline_len + 1:
            end = self.max_inline_len + 1
        while self._scanned < end:
            p = self._chunk(self._scan_idx, &size)
            start = self._scanned - self._scan_base
            stop = end - self._scan_base
            if stop > size:
                stop = size
            hit = <const unsigned char *>memchr(p + start, ch, stop - start)
            if hit != NULL:
                self._scanned = self._scan_base + (hit - p)
                return self._scanned
            self._scanned = self._scan_base + stop
            if stop < size:
                break
            self._scan_base += size
            self._scan_idx += 1
        return -1

    cdef void _copy_out(self, unsigned char *dst, Py_ssize_t n) noexcept:
        """Copy the first n bytes past the cursor (n <= _avail)."""
        cdef Py_ssize_t i = self._head, size
        cdef const unsigned char *p
        while n > 0:
            p = self._chunk(i, &size)
            if size > n:
                size = n
            memcpy(dst, p, size)
            dst += size
            n -= size
            i += 1

    cdef bytes _take(self, Py_ssize_t n):
        """The next n bytes as a bytes object; the cursor moves past them."""
        cdef Py_ssize_t size
        cdef const unsigned char *p = self._chunk(self._head, &size)
        cdef bytes b
        if n == size and self._pos == 0:
            b = self._chunks[self._head]     # a whole chunk: no copy at all
        elif n <= size:
            b = PyBytes_FromStringAndSize(<const char *>p, n)
        else:
            b = PyBytes_FromStringAndSize(NULL, n)
            self._copy_out(<unsigned char *>PyBytes_AS_STRING(b), n)
        self._advance(n)
        return b

    cdef bint _number(self, Py_ssize_t end, long long *out) noexcept:
        """string2ll of the header bytes between the type byte and offset
        end, where a CR was found; False unless followed by LF and valid."""
        cdef unsigned char buf[MAX_NUMBER_LEN + 2]
        if end > MAX_NUMBER_LEN + 1 or self._byte_at(end + 1) != LF:
            return False
        self._copy_out(buf, end)
        return _string2ll(buf + 1, end - 1, out)

    cdef Py_ssize_t _header(self, str too_big) except -3:
        """Offset of the CR ending a header line once the line and its LF
        are buffered; -1 to wait for more."""
        cdef Py_ssize_t o = self._find(CR)
        if o < 0:
            if self._avail > self.max_inline_len:
                self._fail(too_big)
                return -2
            return -1
        return o if o + 2 <= self._avail else -1

    cdef int _multibulk_header(self) except -2:
        cdef long long n
        cdef Py_ssize_t o = self._header("too big mbulk count string")
        if o < 0:
            return 0
        if not self._number(o, &n) or n > self.max_multibulk_len:
            return self._fail("invalid multibulk length")
        if self.unauthenticated and n > PREAUTH_MAX_ARGS:
            return self._fail("unauthenticated multibulk length")
        self._advance(o + 2)
        if n > 0:   # *0 and negative counts are skipped, as Redis does
            self._mb_left = n
            self._bulk_len = -1
            self._args = []
            self._args_bytes = 0
        return 1

    cdef int _bulk(self, list out) except -2:
        cdef long long n
        cdef Py_ssize_t o
        cdef int first
        if self._bulk_len < 0:
            o = self._header("too big bulk count string")
            if o < 0:
                return 0
            first = self._byte_at(0)
            if first != b'$':
                return self._fail("expected '$', got '%s'" % chr(first))
            if not self._number(o, &n) or n < 0 or n > self.max_bulk_len:
                return self._fail("invalid bulk length")
            if self.unauthenticated and n > PREAUTH_MAX_BULK:
                return self._fail("unauthenticated bulk length")
            self._advance(o + 2)
            self._bulk_len = n
        if self._avail < self._bulk_len + 2:
            return 0
        if self._byte_at(self._bulk_len) != CR or self._byte_at(self._bulk_len + 1) != LF:
            return self._fail("invalid bulk length")
        self._args.append(self._take(self._bulk_len))
        self._args_bytes += self._bulk_len
        self._advance(2)
        self._bulk_len = -1
        self._mb_left -= 1
        if self._mb_left == 0:
            out.append(self._args)
            self._args = []
            self._args_bytes = 0
        return 1

    cdef int _inline(self, list out) except -2:
        cdef Py_ssize_t o = self._find(LF), n
        cdef bytes line
        if o < 0:
            if self._avail > self.max_inline_len:
                return self._fail("too big inline request")
            return 0
        n = o
        if n > 0 and self._byte_at(n - 1) == CR:
            n -= 1
        line = self._take(n)
        self._advance(o + 1 - n)
        args = _split_inline(<const unsigned char *>PyBytes_AS_STRING(line), n)
        if args is None:
            return self._fail("unbalanced quotes in request")
        if args:    # blank lines are skipped
            out.append(args)
        return 1


cdef int _kv_reserve(KvOut *o, Py_ssize_t need) except -1:
    """Room for `need` bytes past o.used (the bytearray may move)."""
    cdef Py_ssize_t cap
    if need <= o.cap - o.used:
        return 0
    cap = o.cap * 2
    if cap < o.used + need:
        cap = o.used + need
    if cap < 4096:
        cap = 4096
    PyByteArray_Resize(<object>o.ba, cap)
    o.cap = cap
    return 0


cdef int _kv_command(list req, Py_ssize_t max_cmd, Py_ssize_t *entry_size) except -1:
    """The opcode of a parsed request when it is a fast-path KV command,
    with the size of its entry; else 0."""
    cdef bytes name = req[0]
    cdef Py_ssize_t argc = len(req) - 1, i, n, cmd = 0
    cdef Py_ssize_t data = CMD_HEADER
    cdef int op = _kv_opcode(<const unsigned char *>PyBytes_AS_STRING(name),
                             <size_t>PyBytes_GET_SIZE(name))
    if op == 0 or not _kv_arity_ok(op, argc):
        return 0
    for i in range(argc):
        n = PyBytes_GET_SIZE(<bytes>req[i + 1])
        cmd += n + 8
        data += n + 4
    if _has_limit(op):
        data += APPEND_LIMIT_ARG
    if cmd > max_cmd or data > 0xFFFFFFFF:
        return 0
    entry_size[0] = ENTRY_HEADER + data
    return op


cdef int _kv_put_list(KvOut *o, int op, list req, Py_ssize_t size) except -1:
    """Append the entry of a parsed request (_kv_command said yes)."""
    cdef Py_ssize_t argc = len(req) - 1, i, n
    cdef uint8_t *dst
    cdef bytes a
    _kv_reserve(o, size)
    dst = <uint8_t *>PyByteArray_AS_STRING(<object>o.ba) + o.used
    _put_command_header(dst, <uint32_t>(size - ENTRY_HEADER), <uint8_t>(op | o.flag),
                        <uint32_t>(argc + (_has_limit(op))))
    dst += ENTRY_HEADER + CMD_HEADER
    for i in range(argc):
        a = req[i + 1]
        n = PyBytes_GET_SIZE(a)
        st32(dst, <uint32_t>n)
        memcpy(dst + 4, PyBytes_AS_STRING(a), <size_t>n)
        dst += 4 + n
    if _has_limit(op):
        _put_append_limit(dst, o.append_limit)
    o.used += size
    o.added += size
    o.n += 1
    return 0



# ---- replies ---------------------------------------------------------------

cdef extern from "rfbuf.h":
    # The reply buffer, shared with kv.pyx (KVStore.apply_replies).
    ctypedef struct WBuf "rf_wbuf":
        char *data
        Py_ssize_t len
        Py_ssize_t cap
    int _reserve "rf_wbuf_reserve" (WBuf *w, Py_ssize_t extra) except -1
    int _put "rf_wbuf_put" (WBuf *w, const char *p, Py_ssize_t n) except -1
    int _put_int_line "rf_wbuf_put_int_line" (WBuf *w, char prefix, long long v) except -1
    int _put_bulk "rf_wbuf_put_bulk" (WBuf *w, const char *p, Py_ssize_t n) except -1


cdef int _put_line(WBuf *w, char prefix, object text) except -1:
    """A status or error line; CR and LF become spaces so the text can
    never break the reply framing."""
    cdef bytes b = PyUnicode_AsUTF8String(text)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b), i
    cdef char *dst
    _reserve(w, n + 3)
    w.data[w.len] = prefix
    dst = w.data + w.len + 1
    memcpy(dst, PyBytes_AS_STRING(b), n)
    for i in range(n):
        if dst[i] == CR or dst[i] == LF:
            dst[i] = b' '
    w.len += n + 1
    w.data[w.len] = CR
    w.data[w.len + 1] = LF
    w.len += 2
    return 0


cdef int _encode(WBuf *w, object v, bint resp3, int depth) except -1:
    cdef int overflow
    cdef long long n
    cdef bytes b
    cdef char *text
    if depth > MAX_DEPTH:
        raise ValueError("reply nested too deeply")
    # Exact types first (the common replies), then subclasses in the same
    # precedence: SimpleString/ErrorReply before str, bool before int.
    if type(v) is bytes:
        return _put_bulk(w, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v))
    if v is None:
        return _put(w, b"_\r\n", 3) if resp3 else _put(w, b"$-1\r\n", 5)
    if type(v) is int:
        n = PyLong_AsLongLongAndOverflow(v, &overflow)
        if not overflow:
            return _put_int_line(w, b':', n)
    if isinstance(v, (bytes, bytearray)):
        b = bytes(v)
        return _put_bulk(w, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
    if isinstance(v, SimpleString):
        return _put_line(w, b'+', v)
    if isinstance(v, ErrorReply):
        return _put_line(w, b'-', v)
    if isinstance(v, str):
        b = PyUnicode_AsUTF8String(v)
        return _put_bulk(w, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
    if isinstance(v, bool):
        if resp3:
            return _put(w, b"#t\r\n" if v else b"#f\r\n", 4)
        return _put(w, b":1\r\n" if v else b":0\r\n", 4)
    if isinstance(v, int):
        n = PyLong_AsLongLongAndOverflow(v, &overflow)
        if not overflow:
            return _put_int_line(w, b':', n)
        # Beyond a RESP integer: RESP3 big number, RESP2 its digits as a bulk.
        b = str(int(v)).encode()
        if resp3:
            _put(w, b"(", 1)
            _put(w, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
            return _put(w, b"\r\n", 2)
        return _put_bulk(w, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
    if isinstance(v, float):
        # Shortest round-trip text, as repr(): "1.5", "1e+100", "inf", "nan".
        text = PyOS_double_to_string(v, b'r', 0, Py_DTSF_ADD_DOT_0, NULL)
        try:
            b = text
        finally:
            PyMem_Free(text)
        if resp3:
            _put(w, b",", 1)
            _put(w, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
            return _put(w, b"\r\n", 2)
        return _put_bulk(w, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
    if isinstance(v, (list, tuple)):
        _put_int_line(w, b'*', len(v))
        for item in v:
            _encode(w, item, resp3, depth + 1)
        return 0
    if isinstance(v, dict):
        if resp3:
            _put_int_line(w, b'%', len(v))
        else:
            _put_int_line(w, b'*', 2 * len(v))
        for key, item in v.items():
            _encode(w, key, resp3, depth + 1)
            _encode(w, item, resp3, depth + 1)
        return 0
    raise TypeError(f"cannot encode {type(v).__name__} as a RESP reply")


def encode_replies(values, bint resp3):
    """One buffer holding the replies for a batch of requests, in order.
    bytes/str: bulk; None: null; int: integer; bool: #t/#f (RESP2 :1/:0);
    float: double (RESP2 bulk); list/tuple: array; dict: map (RESP2 flat
    array); SimpleString: +line; ErrorReply: -line."""
    cdef WBuf w
    w.data = NULL
    w.len = w.cap = 0
    try:
        for v in values:
            _encode(&w, v, resp3, 0)
        return PyBytes_FromStringAndSize(w.data, w.len)
    finally:
        PyMem_Free(w.data)


def encode_reply(value, bint resp3):
    """The encoding of a single reply."""
    return encode_replies((value,), resp3)
