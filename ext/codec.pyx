# cython: language_level=3
"""Peer frame codec, protocol versions 1 to 3 (docs/protocol.md is the spec;
tests/reference/codec_py.py is the same codec in plain Python).

Encoding builds a whole frame in one bytes object: fixed fields, then the
entry block copied in once.  Decoding keeps the received chunks in a list
with a read cursor and copies out only what a frame needs: its fixed
fields, its entry block (into the bytes object the Message keeps) and its
cluster id and client url.  The checksum is computed over the chunks in place.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from raftfast._wire cimport (BLOCK_OK, BLOCK_SHORT_HEADER, BLOCK_DATA_PAST_END, ENTRY_TYPE_MAX,
                             BlockStatus, block_walk, ld16, ld32, ld64, st16, st32, st64)

from raftfast.core.messages import Message as _Message

cdef extern from "crc32c.h":
    uint32_t rf_crc32c(uint32_t crc, const uint8_t *p, size_t n) nogil

cdef enum:
    _PROTOCOL_MIN = 1
    _PROTOCOL_MAX = 3
    _V1 = 1               # the frame version of message types 1..10
    _V2 = 2               # the frame version of the snapshot transfer types
    _V3 = 3               # the frame version of the forwarding types
    _HDR = 12             # frame header
    _MSG_FIXED = 68       # MESSAGE body before the entry block
    _HS_FIXED = 14        # HANDSHAKE body before the cluster id
    _HS_URL_LEN = 2       # the u16 client_url_len after the cluster id
    _MSG_TYPE_MAX_V1 = 10  # v1 message types are 1..10; a new type needs a new version
    _MSG_TYPE_MAX_V2 = 12  # v2 adds 11 SNAPSHOT_CHUNK and 12 SNAPSHOT_ACK
    _MSG_TYPE_MAX = 16    # v3 adds 13 FORWARD, 14 FORWARD_RESP, 15 READ_INDEX, 16 READ_INDEX_RESP
    _MSG_CHUNK = 11
    _MSG_ACK = 12
    _F_HANDSHAKE = 1
    _F_HANDSHAKE_ACK = 2
    _F_MESSAGE = 3
    _F_AUTH = 4
    _AUTH_SECRET = 1      # the auth tail's kind: HMAC-SHA256 over a cluster secret
    _NONCE = 32
    _PROOF = 32
    _HS_TAIL = 1 + _NONCE                    # HANDSHAKE: kind, the dialer's nonce
    _ACK_TAIL = 1 + 4 + _NONCE + _PROOF      # ACK: kind, the acceptor's range, nonce, proof

cdef uint64_t _ID_MAX = 0x7FFFFFFFFFFFFFFFULL
# MESSAGE fields a receiver refuses at 2**63 and above, in wire order.
cdef tuple _BOUNDED_FIELDS = ("term", "index", "log_term", "commit", "hint")
cdef uint64_t _U32_MAX = 0xFFFFFFFFULL

PROTOCOL_MIN = _PROTOCOL_MIN
PROTOCOL_MAX = _PROTOCOL_MAX
FRAME_HANDSHAKE = _F_HANDSHAKE
FRAME_HANDSHAKE_ACK = _F_HANDSHAKE_ACK
FRAME_MESSAGE = _F_MESSAGE
FRAME_AUTH = _F_AUTH
NONCE_SIZE = _NONCE
PROOF_SIZE = _PROOF
HEADER_SIZE = _HDR
MSG_TYPE_MAX_V1 = _MSG_TYPE_MAX_V1
MSG_TYPE_MAX_V2 = _MSG_TYPE_MAX_V2
DEFAULT_MAX_FRAME = 64 << 20

# Message.__new__ skips Message.__init__: the decoder sets every field itself.
# (The class's own __new__: compiled, Message is a C type object.__new__
# refuses to make.)
cdef object _new_message = _Message.__new__


class FrameError(ValueError):
    """The peer sent something that is not a well-formed frame."""


class FrameTooLarge(FrameError):
    """The header announces a body larger than the decoder accepts."""


class FrameChecksumError(FrameError):
    """The body does not match the header's CRC32C."""


class FrameVersionError(FrameError):
    """The header's version is outside [PROTOCOL_MIN, PROTOCOL_MAX]."""


class FrameMalformed(FrameError):
    """Unknown types, reserved bits set, or lengths that do not add up."""


class Handshake:
    """The opening frame of a connection (HANDSHAKE), or its answer
    (HANDSHAKE_ACK, where min_version == max_version == the chosen one).
    client_url is the sender's advertised client address ("" if none), the
    one a follower names in MOVED when the sender leads.

    With a cluster secret (docs/protocol.md, "Authentication") a HANDSHAKE
    carries the dialer's nonce, and an ACK the acceptor's own version range
    (`offered`, a (min, max) pair), its nonce and its proof; without one
    they are None."""

    __slots__ = ("cluster_id", "node_id", "min_version", "max_version", "client_url",
                 "nonce", "offered", "proof")

    def __init__(self, cluster_id, node_id, min_version, max_version, client_url="",
                 nonce=None, offered=None, proof=None):
        self.cluster_id = cluster_id
        self.node_id = node_id
        self.min_version = min_version
        self.max_version = max_version
        self.client_url = client_url
        self.nonce = nonce
        self.offered = offered
        self.proof = proof

    def __eq__(self, other):
        if not isinstance(other, Handshake):
            return NotImplemented
        return (self.cluster_id == other.cluster_id and self.node_id == other.node_id
                and self.min_version == other.min_version
                and self.max_version == other.max_version
                and self.client_url == other.client_url and self.nonce == other.nonce
                and self.offered == other.offered and self.proof == other.proof)

    def __repr__(self):
        auth = "" if self.nonce is None else ", authenticated"
        return (f"Handshake(cluster_id={self.cluster_id!r}, node_id={self.node_id}, "
                f"versions={self.min_version}..{self.max_version}, "
                f"client_url={self.client_url!r}{auth})")


def message_version(mtype):
    """The protocol version a message type first appears in, which is the
    version its frames carry: 1 for types 1..10, 2 for the snapshot
    transfer types, 3 for forwarding.  A v1 message is written as a v1
    frame on every connection, so one encoding serves peers of any version."""
    return _frame_version(mtype)


cdef inline uint8_t _frame_version(uint64_t mtype):
    if mtype <= _MSG_TYPE_MAX_V1:
        return _V1
    return _V2 if mtype <= _MSG_TYPE_MAX_V2 else _V3


cdef inline uint64_t _type_max(int version):
    if version >= _V3:
        return _MSG_TYPE_MAX
    return _MSG_TYPE_MAX_V2 if version == _V2 else _MSG_TYPE_MAX_V1


def choose_version(int peer_min, int peer_max):
    """The highest version both this node and a peer speaking
    [peer_min, peer_max] understand, or None when the ranges do not overlap."""
    cdef int hi = min(peer_max, _PROTOCOL_MAX)
    if hi < max(peer_min, _PROTOCOL_MIN):
        return None
    return hi


cdef str _block_problem(BlockStatus st):
    if st == BLOCK_SHORT_HEADER:
        return "entry header cut off at the end of the block"
    if st == BLOCK_DATA_PAST_END:
        return "entry data runs past the end of the block"
    return "unknown entry type"


cdef inline void _put_header(uint8_t *p, uint8_t version, uint8_t ftype,
                             uint32_t body_len) noexcept nogil:
    st32(p, body_len)
    p[4] = version
    p[5] = ftype
    st16(p + 6, 0)
    st32(p + 8, rf_crc32c(0, p + _HDR, body_len))


cdef object _chunk_problem(uint64_t mtype, uint64_t count, uint64_t elen, uint64_t offset,
                          uint64_t total, uint64_t last):
    """What is wrong with a SNAPSHOT_CHUNK or SNAPSHOT_ACK's fields, or
    None.  A chunk's data is raw snapshot file bytes (never walked as an
    entry block): commit is its byte offset, hint the file's total size,
    context 1 on the last chunk, which ends exactly at the total.  An ack
    carries no data.  Written so that no sum can overflow (an encoder's
    fields may be any u64)."""
    if mtype == _MSG_ACK:
        if elen != 0:
            return f"snapshot ack with {elen} bytes of data"
        return None
    if count != 0:
        return f"snapshot chunk with count={count} (its data is raw bytes, not entries)"
    if last > 1:
        return f"snapshot chunk last flag (context) is {last}, not 0 or 1"
    if offset > total or elen > total - offset:
        return (f"snapshot chunk of {elen} bytes at offset {offset} runs past its total "
                f"size {total}")
    if (last == 1) != (offset + elen == total):
        return (f"snapshot chunk last flag is {last} but it ends at {offset + elen} "
                f"of {total} bytes")
    return None


_MSG_U64_FIELDS = ("frm", "term", "index", "log_term", "commit", "hint", "context")

cdef object _field_range_error(msg):
    # Slow path only: find which field did not fit, for a useful message.
    for name in _MSG_U64_FIELDS:
        v = getattr(msg, name)
        if not 0 <= v < 1 << 64:
            return ValueError(f"Message.{name}={v!r} does not fit in u64")
    v = msg.type
    if not 0 <= v < 1 << 64:
        return ValueError(f"Message.type={v!r} is not a message type")
    return ValueError(f"Message.count={msg.count!r} does not fit in u32")


def encode_message(msg):
    """The whole MESSAGE frame for msg (msg.to is not sent)."""
    cdef uint64_t mtype, frm, term, index, log_term, commit, hint, context, count
    cdef size_t walked = 0, bad_at = 0
    cdef bint reject
    cdef Py_buffer view
    cdef bint have_view = False
    cdef size_t elen = 0
    cdef BlockStatus st
    cdef uint8_t *p
    cdef uint8_t *b
    try:
        mtype = msg.type
        frm = msg.frm
        term = msg.term
        index = msg.index
        log_term = msg.log_term
        commit = msg.commit
        hint = msg.hint
        context = msg.context
        count = msg.count
    except OverflowError:
        raise _field_range_error(msg) from None
    reject = msg.reject
    if mtype < 1 or mtype > _MSG_TYPE_MAX:
        raise ValueError(f"Message.type={mtype} is not a message type (1..{_MSG_TYPE_MAX})")
    if frm == 0 or frm > _ID_MAX:
        raise ValueError(f"Message.frm={frm} is not a node id (1..2**63-1)")
    if count > _U32_MAX:
        raise ValueError(f"Message.count={count} does not fit in u32")
    entries = msg.entries
    if entries is not None:
        PyObject_GetBuffer(entries, &view, PyBUF_SIMPLE)
        have_view = True
        elen = <size_t>view.len
    try:
        if elen > _U32_MAX - _MSG_FIXED:
            raise ValueError(f"entry block of {elen} bytes does not fit in one frame")
        if mtype == _MSG_CHUNK or mtype == _MSG_ACK:
            problem = _chunk_problem(mtype, count, elen, commit, hint, context)
            if problem is not None:
                raise ValueError(problem)
        elif elen == 0:
            if count != 0:
                raise ValueError(f"Message.count={count} but there is no entry block")
        else:
            # A bad block would make every follower drop the connection; catch
            # the bug here, at the sender.  Only the headers are visited.
            st = block_walk(<const uint8_t *>view.buf, elen, ENTRY_TYPE_MAX, &walked, &bad_at)
            if st != BLOCK_OK:
                raise ValueError("bad entry block: " + _block_problem(st))
            if walked != count:
                raise ValueError(f"Message.count={count} but the block holds {walked} entries")
        out = PyBytes_FromStringAndSize(NULL, _HDR + _MSG_FIXED + elen)
        p = <uint8_t *>PyBytes_AS_STRING(out)
        b = p + _HDR
        b[0] = <uint8_t>mtype
        b[1] = 1 if reject else 0
        st16(b + 2, 0)
        st64(b + 4, frm)
        st64(b + 12, term)
        st64(b + 20, index)
        st64(b + 28, log_term)
        st64(b + 36, commit)
        st64(b + 44, hint)
        st64(b + 52, context)
        st32(b + 60, <uint32_t>count)
        st32(b + 64, <uint32_t>elen)
        if elen:
            memcpy(b + _MSG_FIXED, view.buf, elen)
        _put_header(p, _frame_version(mtype), _F_MESSAGE,
                    <uint32_t>(_MSG_FIXED + elen))
    finally:
        if have_view:
            PyBuffer_Release(&view)
    return out


cdef bytes _encode_hs(uint8_t ftype, str cluster_id, node_id, min_version, max_version,
                      str client_url, bytes tail=b""):
    if not 1 <= node_id <= _ID_MAX:
        raise ValueError(f"node_id={node_id} is not a node id (1..2**63-1)")
    # The header's version byte is a u8, so no version above 255 can be used.
    if not 1 <= min_version <= max_version <= 255:
        raise ValueError(f"bad version range {min_version}..{max_version}")
    cdef bytes cid = cluster_id.encode("utf-8")
    cdef size_t n = len(cid)
    if n > 0xFFFF:
        raise ValueError(f"cluster id of {n} bytes is longer than 65535")
    cdef bytes url = client_url.encode("utf-8")
    cdef size_t u = len(url)
    if u > 0xFFFF:
        raise ValueError(f"client url of {u} bytes is longer than 65535")
    cdef size_t t = len(tail)
    cdef size_t blen = _HS_FIXED + n + _HS_URL_LEN + u + t
    out = PyBytes_FromStringAndSize(NULL, _HDR + blen)
    cdef uint8_t *p = <uint8_t *>PyBytes_AS_STRING(out)
    cdef uint8_t *b = p + _HDR
    st16(b, <uint16_t>min_version)
    st16(b + 2, <uint16_t>max_version)
    st64(b + 4, <uint64_t>node_id)
    st16(b + 12, <uint16_t>n)
    memcpy(b + _HS_FIXED, PyBytes_AS_STRING(cid), n)
    b += _HS_FIXED + n
    st16(b, <uint16_t>u)
    memcpy(b + _HS_URL_LEN, PyBytes_AS_STRING(url), u)
    if t:
        memcpy(b + _HS_URL_LEN + u, PyBytes_AS_STRING(tail), t)
    # The header names min_version: for a HANDSHAKE the version the peer is
    # most likely to read, for an ACK the chosen one.
    _put_header(p, <uint8_t>min_version, ftype, <uint32_t>blen)
    return out


cdef bytes _sized(object value, Py_ssize_t size, str what):
    if not isinstance(value, bytes) or len(value) != size:
        raise ValueError(f"{what} must be {size} bytes")
    return <bytes>value


def encode_handshake(str cluster_id not None, node_id, min_version=PROTOCOL_MIN,
                     max_version=PROTOCOL_MAX, str client_url not None="", nonce=None):
    """The HANDSHAKE frame a dialer opens a connection with; client_url is
    the dialer's advertised client address ("" for none).  nonce: its
    fresh 32 bytes when it has a cluster secret, else None."""
    tail = b""
    if nonce is not None:
        tail = bytes((_AUTH_SECRET,)) + _sized(nonce, _NONCE, "nonce")
    return _encode_hs(_F_HANDSHAKE, cluster_id, node_id, min_version, max_version,
                      client_url, tail)


def encode_handshake_ack(str cluster_id not None, node_id, version,
                         str client_url not None="", offered=None, nonce=None, proof=None):
    """The HANDSHAKE_ACK an acceptor answers with: its own identity, the
    chosen version (see choose_version) and its advertised client address;
    with a cluster secret also its own version range (offered, a (min, max)
    pair), its fresh nonce and its proof."""
    tail = b""
    if nonce is not None or proof is not None or offered is not None:
        vmin, vmax = offered
        if not 1 <= vmin <= vmax <= 255:
            raise ValueError(f"bad version range {vmin}..{vmax}")
        tail = (bytes((_AUTH_SECRET, vmin & 0xFF, vmin >> 8, vmax & 0xFF, vmax >> 8))
                + _sized(nonce, _NONCE, "nonce") + _sized(proof, _PROOF, "proof"))
    return _encode_hs(_F_HANDSHAKE_ACK, cluster_id, node_id, version, version, client_url,
                      tail)


def encode_auth(int version, proof):
    """The AUTH frame a dialer sends after checking an authenticated ACK:
    its proof, in the chosen version."""
    if not 1 <= version <= 255:
        raise ValueError(f"bad version {version}")
    body = _sized(proof, _PROOF, "proof")
    out = PyBytes_FromStringAndSize(NULL, _HDR + _PROOF)
    cdef uint8_t *p = <uint8_t *>PyBytes_AS_STRING(out)
    memcpy(p + _HDR, PyBytes_AS_STRING(body), _PROOF)
    _put_header(p, <uint8_t>version, _F_AUTH, _PROOF)
    return out


cdef class FrameDecoder:
    """Incremental frame decoder: feed() bytes as they arrive, then call
    next() until it returns None.  After a FrameError the decoder is
    poisoned: it drops what it buffered and every later next() raises the
    same error (the connection must be closed)."""

    cdef list _chunks          # received bytes objects, oldest first
    cdef Py_ssize_t _head      # index in _chunks of the first unread chunk
    cdef Py_ssize_t _pos       # read offset inside _chunks[_head]
    cdef Py_ssize_t _pending   # unread bytes over all chunks
    cdef readonly uint64_t max_frame_size
    cdef object _error
    # The header of the frame whose body is awaited, validated once.
    cdef bint _have_header
    cdef uint8_t _ftype
    cdef uint8_t _version
    cdef uint32_t _body_len
    cdef uint32_t _crc

    def __cinit__(self):
        self._chunks = []
        self.max_frame_size = DEFAULT_MAX_FRAME

    def set_max_frame_size(self, max_frame_size):
        """Change the limit for frames not yet started (a connection admits
        large frames only once its handshake has been accepted)."""
        if max_frame_size < 1:
            raise ValueError(f"max_frame_size={max_frame_size} must be positive")
        self.max_frame_size = min(max_frame_size, _U32_MAX)

    def __init__(self, max_frame_size=DEFAULT_MAX_FRAME):
        if max_frame_size < 1:
            raise ValueError(f"max_frame_size={max_frame_size} must be positive")
        # Above u32 max every body length is acceptable anyway.
        self.max_frame_size = min(max_frame_size, _U32_MAX)

    @property
    def pending_bytes(self):
        """Bytes received and not yet returned as frames."""
        return self._pending

    def feed(self, data):
        """Buffer data (any bytes-like object).  Only bytes is kept as it is:
        anything else may be reused by its owner, so it is copied."""
        if self._error is not None:
            return  # poisoned: nothing more will be decoded
        if not PyBytes_CheckExact(data):
            data = bytes(memoryview(data))
        cdef Py_ssize_t n = len(data)
        if n:
            self._chunks.append(data)
            self._pending += n

    def next(self):
        """(frame_type, Message or Handshake, or for FRAME_AUTH the proof
        bytes), or None until a whole frame is buffered.  Messages come with
        to=0: the caller knows the receiver."""
        if self._error is not None:
            raise self._error.with_traceback(None)
        return self._next()

    cdef object _fail(self, exc):
        self._error = exc
        self._chunks = []
        self._head = self._pos = self._pending = 0
        self._have_header = False
        return exc

    cdef object _next(self):
        cdef uint8_t h[_HDR]
        cdef uint8_t version
        cdef uint16_t reserved
        if not self._have_header:
            if self._pending < _HDR:
                return None
            self._gather(0, h, _HDR)
            version = h[4]
            reserved = ld16(h + 6)
            self._ftype = h[5]
            self._version = version
            self._body_len = ld32(h)
            self._crc = ld32(h + 8)
            if version < _PROTOCOL_MIN or version > _PROTOCOL_MAX:
                raise self._fail(FrameVersionError(
                    f"frame version {version} is outside "
                    f"{_PROTOCOL_MIN}..{_PROTOCOL_MAX}"))
            if self._ftype < _F_HANDSHAKE or self._ftype > _F_AUTH:
                raise self._fail(FrameMalformed(f"unknown frame type {self._ftype}"))
            if reserved != 0:
                raise self._fail(FrameMalformed("reserved header bits are set"))
            if self._body_len > self.max_frame_size:
                raise self._fail(FrameTooLarge(
                    f"frame body of {self._body_len} bytes exceeds the limit of "
                    f"{self.max_frame_size}"))
            self._have_header = True
        if self._pending - _HDR < <Py_ssize_t>self._body_len:
            return None
        if self._crc_range(_HDR, self._body_len) != self._crc:
            raise self._fail(FrameChecksumError("frame body does not match its CRC32C"))
        if self._ftype == _F_MESSAGE:
            obj = self._decode_message()
        elif self._ftype == _F_AUTH:
            if self._body_len != _PROOF:
                raise self._fail(FrameMalformed(
                    f"auth body of {self._body_len} bytes, not {_PROOF}"))
            obj = PyBytes_FromStringAndSize(NULL, _PROOF)
            self._gather(_HDR, <uint8_t *>PyBytes_AS_STRING(obj), _PROOF)
        else:
            obj = self._decode_handshake()
        self._consume(_HDR + self._body_len)
        self._have_header = False
        return (self._ftype, obj)

    cdef object _decode_message(self):
        cdef uint8_t f[_MSG_FIXED]
        cdef uint32_t blen = self._body_len
        cdef size_t walked = 0, bad_at = 0
        cdef BlockStatus st
        cdef int k
        if blen < _MSG_FIXED:
            raise self._fail(FrameMalformed(
                f"message body of {blen} bytes is shorter than its {_MSG_FIXED} fixed bytes"))
        self._gather(_HDR, f, _MSG_FIXED)
        cdef uint8_t mtype = f[0]
        cdef uint8_t flags = f[1]
        cdef uint64_t frm = ld64(f + 4)
        cdef uint32_t count = ld32(f + 60)
        cdef uint32_t elen = ld32(f + 64)
        if mtype < 1 or mtype > _type_max(self._version):
            raise self._fail(FrameMalformed(
                f"unknown message type {mtype} (protocol v{self._version})"))
        if flags & 0xFE:
            raise self._fail(FrameMalformed(f"reserved message flags set: {flags:#04x}"))
        if ld16(f + 2) != 0:
            raise self._fail(FrameMalformed("reserved message bits are set"))
        if frm == 0 or frm > _ID_MAX:
            raise self._fail(FrameMalformed(f"frm={frm} is not a node id"))
        # term, index, log_term, commit and hint (offsets 12..44): no node
        # reaches 2**63 of them, and one pushed that far could not take the
        # next term (term + 1 would not fit in u64).  context is opaque.
        for k in range(5):
            if ld64(f + 12 + 8 * k) > _ID_MAX:
                raise self._fail(FrameMalformed(
                    f"{_BOUNDED_FIELDS[k]}={ld64(f + 12 + 8 * k)} is not below 2**63"))
        if elen != blen - _MSG_FIXED:
            raise self._fail(FrameMalformed(
                f"entries_len={elen} but {blen - _MSG_FIXED} bytes follow"))
        if mtype == _MSG_CHUNK or mtype == _MSG_ACK:
            problem = _chunk_problem(mtype, count, elen, ld64(f + 36), ld64(f + 44),
                                     ld64(f + 52))
            if problem is not None:
                raise self._fail(FrameMalformed(problem))
            entries = None
            if elen:
                entries = PyBytes_FromStringAndSize(NULL, elen)
                self._gather(_HDR + _MSG_FIXED, <uint8_t *>PyBytes_AS_STRING(entries), elen)
        elif elen == 0:
            if count != 0:
                raise self._fail(FrameMalformed(f"count={count} without an entry block"))
            entries = None
        else:
            entries = PyBytes_FromStringAndSize(NULL, elen)
            self._gather(_HDR + _MSG_FIXED, <uint8_t *>PyBytes_AS_STRING(entries), elen)
            st = block_walk(<const uint8_t *>PyBytes_AS_STRING(entries), elen, ENTRY_TYPE_MAX,
                            &walked, &bad_at)
            if st != BLOCK_OK:
                raise self._fail(FrameMalformed("bad entry block: " + _block_problem(st)))
            if walked != count:
                raise self._fail(FrameMalformed(
                    f"count={count} but the entry block holds {walked} entries"))
        m = _new_message(_Message)
        m.type = mtype
        m.to = 0
        m.frm = frm
        m.term = ld64(f + 12)
        m.index = ld64(f + 20)
        m.log_term = ld64(f + 28)
        m.commit = ld64(f + 36)
        m.reject = (flags & 1) != 0
        m.hint = ld64(f + 44)
        m.context = ld64(f + 52)
        m.entries = entries
        m.count = count
        return m

    cdef object _decode_handshake(self):
        cdef uint8_t f[_HS_FIXED]
        cdef uint32_t blen = self._body_len
        if blen < _HS_FIXED:
            raise self._fail(FrameMalformed(
                f"handshake body of {blen} bytes is shorter than its {_HS_FIXED} fixed bytes"))
        self._gather(_HDR, f, _HS_FIXED)
        cdef uint16_t vmin = ld16(f)
        cdef uint16_t vmax = ld16(f + 2)
        cdef uint64_t node_id = ld64(f + 4)
        cdef uint16_t cid_len = ld16(f + 12)
        if vmin == 0 or vmin > vmax:
            raise self._fail(FrameMalformed(f"bad version range {vmin}..{vmax}"))
        if self._ftype == _F_HANDSHAKE_ACK and vmin != vmax:
            raise self._fail(FrameMalformed(
                f"handshake ack names a range {vmin}..{vmax}, not one version"))
        if node_id == 0 or node_id > _ID_MAX:
            raise self._fail(FrameMalformed(f"node_id={node_id} is not a node id"))
        # Field by field: the cluster id and the url length must fit, the
        # cluster id must be UTF-8, then the url must end the body exactly.
        cdef uint32_t rest = blen - _HS_FIXED
        if <uint32_t>cid_len + _HS_URL_LEN > rest:
            raise self._fail(FrameMalformed(
                f"cluster id of {cid_len} bytes and the client url length need "
                f"{cid_len + _HS_URL_LEN} bytes but {rest} bytes follow"))
        raw = PyBytes_FromStringAndSize(NULL, cid_len)
        self._gather(_HDR + _HS_FIXED, <uint8_t *>PyBytes_AS_STRING(raw), cid_len)
        try:
            cluster_id = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self._fail(FrameMalformed("cluster id is not valid UTF-8")) from None
        cdef uint8_t ul[_HS_URL_LEN]
        self._gather(_HDR + _HS_FIXED + cid_len, ul, _HS_URL_LEN)
        cdef uint16_t url_len = ld16(ul)
        rest -= cid_len + _HS_URL_LEN
        cdef uint32_t tail_len = _HS_TAIL if self._ftype == _F_HANDSHAKE else _ACK_TAIL
        if <uint32_t>url_len != rest and <uint32_t>url_len + tail_len != rest:
            raise self._fail(FrameMalformed(
                f"client url of {url_len} bytes but {rest} bytes follow"))
        raw = PyBytes_FromStringAndSize(NULL, url_len)
        self._gather(_HDR + _HS_FIXED + cid_len + _HS_URL_LEN,
                     <uint8_t *>PyBytes_AS_STRING(raw), url_len)
        try:
            client_url = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self._fail(FrameMalformed("client url is not valid UTF-8")) from None
        if <uint32_t>url_len == rest:
            return Handshake(cluster_id, node_id, vmin, vmax, client_url)
        cdef uint8_t t[_ACK_TAIL]
        self._gather(_HDR + _HS_FIXED + cid_len + _HS_URL_LEN + url_len, t, tail_len)
        if t[0] != _AUTH_SECRET:
            raise self._fail(FrameMalformed(f"unknown authentication kind {t[0]}"))
        if self._ftype == _F_HANDSHAKE:
            return Handshake(cluster_id, node_id, vmin, vmax, client_url,
                             nonce=PyBytes_FromStringAndSize(<char *>t + 1, _NONCE))
        cdef uint16_t omin = ld16(t + 1), omax = ld16(t + 3)
        if omin == 0 or omin > omax:
            raise self._fail(FrameMalformed(f"bad offered version range {omin}..{omax}"))
        return Handshake(cluster_id, node_id, vmin, vmax, client_url,
                         nonce=PyBytes_FromStringAndSize(<char *>t + 5, _NONCE),
                         offered=(omin, omax),
                         proof=PyBytes_FromStringAndSize(<char *>t + 5 + _NONCE, _PROOF))

    cdef inline const uint8_t *_piece(self, Py_ssize_t *i, Py_ssize_t *start,
                                      Py_ssize_t n, Py_ssize_t *take) except NULL:
        """One step of a walk over unread bytes that may span chunks: the
        walk stands `start[0]` bytes into chunk `i[0]` (start may reach past
        that chunk: whole chunks are skipped) and wants n more bytes.
        Returns where the next piece begins, with its length (at most n)
        in take[0], and moves the walk to the start of the next chunk.
        The chunk list keeps the piece alive."""
        cdef bytes chunk
        cdef Py_ssize_t clen
        cdef const uint8_t *p
        while True:
            chunk = <bytes>self._chunks[i[0]]
            clen = len(chunk)
            i[0] += 1
            if start[0] < clen:
                break
            start[0] -= clen
        take[0] = min(clen - start[0], n)
        p = <const uint8_t *>PyBytes_AS_STRING(chunk) + start[0]
        start[0] = 0
        return p

    cdef int _gather(self, Py_ssize_t off, uint8_t *dst, Py_ssize_t n) except -1:
        """Copy n unread bytes starting `off` bytes past the read cursor;
        the caller has checked that they are buffered."""
        cdef Py_ssize_t i = self._head, start = self._pos + off, take
        cdef const uint8_t *p
        while n > 0:
            p = self._piece(&i, &start, n, &take)
            memcpy(dst, p, take)
            dst += take
            n -= take
        return 0

    cdef uint32_t _crc_range(self, Py_ssize_t off, Py_ssize_t n) except? 0:
        """CRC32C of n unread bytes starting `off` past the cursor, computed
        in place across chunk boundaries."""
        cdef Py_ssize_t i = self._head, start = self._pos + off, take
        cdef const uint8_t *p
        cdef uint32_t crc = 0
        while n > 0:
            p = self._piece(&i, &start, n, &take)
            crc = rf_crc32c(crc, p, take)
            n -= take
        return crc

    cdef int _consume(self, Py_ssize_t n) except -1:
        cdef Py_ssize_t left
        self._pending -= n
        if self._pending == 0:
            self._chunks = []
            self._head = self._pos = 0
            return 0
        while n > 0:
            left = len(<bytes>self._chunks[self._head]) - self._pos
            if n < left:
                self._pos += n
                break
            n -= left
            self._chunks[self._head] = None  # free a consumed chunk at once
            self._head += 1
            self._pos = 0
        # Drop the consumed prefix of the list now and then, not per frame.
        if self._head >= 64 and self._head * 2 >= len(self._chunks):
            del self._chunks[:self._head]
            self._head = 0
        return 0
