"""The peer frame codec, protocol versions 1 and 2 (with the optional
authentication of the handshake), in plain Python: the readable
specification that raftfast._codec (ext/codec.pyx) is tested against.
docs/protocol.md describes the same format in prose.

Frame:  u32 body_len | u8 version | u8 frame_type | u16 reserved | u32 crc32c(body) | body
"""
import struct

from raftfast.core.messages import ENTRY_HEADER_SIZE, Message

PROTOCOL_MIN = 1
PROTOCOL_MAX = 3
FRAME_HANDSHAKE = 1
FRAME_HANDSHAKE_ACK = 2
FRAME_MESSAGE = 3
FRAME_AUTH = 4
AUTH_SECRET = 1   # the kind of an authentication tail: HMAC-SHA256 over a cluster secret
NONCE_SIZE = 32
PROOF_SIZE = 32
HEADER_SIZE = 12
DEFAULT_MAX_FRAME = 64 << 20

ID_MAX = (1 << 63) - 1
# Message fields no node can take to 2**63 (terms and indexes grow by one);
# a receiver refuses a frame with a larger one.  The encoder writes any u64.
BOUNDED_FIELDS = ("term", "index", "log_term", "commit", "hint")
MSG_TYPE_MAX_V1 = 10
MSG_TYPE_MAX_V2 = 12
# The message types of each frame version: v2 adds 11 SNAPSHOT_CHUNK and
# 12 SNAPSHOT_ACK, v3 13 FORWARD, 14 FORWARD_RESP, 15 READ_INDEX and
# 16 READ_INDEX_RESP; a type is written in the version it first appears in,
# on any connection.
MSG_TYPES = {1: range(1, 11), 2: range(1, 13), 3: range(1, 17)}
MSG_CHUNK = 11
MSG_ACK = 12
ENTRY_TYPES = range(0, 4)     # ENTRY_NORMAL, ENTRY_NOOP, ENTRY_CONFIG, ENTRY_TIME

HEADER = struct.Struct("<IBBHI")
MSG_FIXED = struct.Struct("<BBHQQQQQQQII")   # 68 bytes
HS_FIXED = struct.Struct("<HHQH")            # 14 bytes, then the cluster id
HS_URL_LEN = struct.Struct("<H")             # after the cluster id, then the client url
ACK_AUTH = struct.Struct("<BHH")             # kind, the acceptor's range; then nonce, proof
HS_TAIL = 1 + NONCE_SIZE                     # HANDSHAKE's tail: kind, nonce
ACK_TAIL = ACK_AUTH.size + NONCE_SIZE + PROOF_SIZE
ENTRY_HEADER = struct.Struct("<IQB")         # 13 bytes


def _crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data):
    """CRC32C (Castagnoli), bit-reflected, init and final xor 0xFFFFFFFF."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


class FrameError(ValueError):
    pass


class FrameTooLarge(FrameError):
    pass


class FrameChecksumError(FrameError):
    pass


class FrameVersionError(FrameError):
    pass


class FrameMalformed(FrameError):
    pass


class Handshake:
    __slots__ = ("cluster_id", "node_id", "min_version", "max_version", "client_url",
                 "nonce", "offered", "proof")

    def __init__(self, cluster_id, node_id, min_version, max_version, client_url="",
                 nonce=None, offered=None, proof=None):
        self.cluster_id = cluster_id
        self.node_id = node_id
        self.min_version = min_version
        self.max_version = max_version
        self.client_url = client_url
        self.nonce = nonce        # with a cluster secret: the sender's nonce
        self.offered = offered    # an authenticated ACK: the acceptor's (min, max) versions
        self.proof = proof        # an authenticated ACK: the acceptor's proof

    def __eq__(self, other):
        if not isinstance(other, Handshake):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self.__slots__)

    def __repr__(self):
        return (f"Handshake(cluster_id={self.cluster_id!r}, node_id={self.node_id}, "
                f"versions={self.min_version}..{self.max_version}, "
                f"client_url={self.client_url!r})")


def choose_version(peer_min, peer_max):
    hi = min(peer_max, PROTOCOL_MAX)
    return hi if hi >= max(peer_min, PROTOCOL_MIN) else None


def count_entries(block):
    """Walk an entry block header by header; the number of entries, or a
    string saying what is wrong with it."""
    off, n = 0, 0
    while off < len(block):
        if len(block) - off < ENTRY_HEADER_SIZE:
            return "entry header cut off at the end of the block"
        data_len, _term, etype = ENTRY_HEADER.unpack_from(block, off)
        off += ENTRY_HEADER_SIZE
        if data_len > len(block) - off:
            return "entry data runs past the end of the block"
        if etype not in ENTRY_TYPES:
            return "unknown entry type"
        off += data_len
        n += 1
    return n


def frame(frame_type, body, version=1):
    return HEADER.pack(len(body), version, frame_type, 0, crc32c(body)) + body


def message_version(mtype):
    if mtype <= MSG_TYPE_MAX_V1:
        return 1
    return 2 if mtype <= MSG_TYPE_MAX_V2 else 3


def chunk_problem(mtype, count, data_len, offset, total, last):
    """What is wrong with a SNAPSHOT_CHUNK's or SNAPSHOT_ACK's fields, or
    None.  A chunk's data is raw snapshot file bytes: commit = its offset,
    hint = the file's total size, context = 1 on the last chunk (which ends
    exactly at the total).  An ack carries no data."""
    if mtype == MSG_ACK:
        return f"snapshot ack with {data_len} bytes of data" if data_len else None
    if count:
        return f"snapshot chunk with count={count} (its data is raw bytes, not entries)"
    if last > 1:
        return f"snapshot chunk last flag (context) is {last}, not 0 or 1"
    if offset + data_len > total:
        return (f"snapshot chunk of {data_len} bytes at offset {offset} runs past its total "
                f"size {total}")
    if (last == 1) != (offset + data_len == total):
        return (f"snapshot chunk last flag is {last} but it ends at {offset + data_len} "
                f"of {total} bytes")
    return None


def encode_message(msg):
    if msg.type not in MSG_TYPES[PROTOCOL_MAX]:
        raise ValueError(f"Message.type={msg.type} is not a message type (1..16)")
    if not 1 <= msg.frm <= ID_MAX:
        raise ValueError(f"Message.frm={msg.frm} is not a node id")
    block = bytes(msg.entries) if msg.entries is not None else b""
    if msg.type in (MSG_CHUNK, MSG_ACK):
        if not 0 <= msg.count < 1 << 32:
            raise ValueError(f"Message.count={msg.count} does not fit in u32")
        problem = chunk_problem(msg.type, msg.count, len(block), msg.commit, msg.hint,
                                msg.context)
        if problem is not None:
            raise ValueError(problem)
    else:
        found = count_entries(block)
        if isinstance(found, str):
            raise ValueError("bad entry block: " + found)
        if found != msg.count:
            raise ValueError(f"Message.count={msg.count} but the block holds {found} entries")
    try:
        fixed = MSG_FIXED.pack(msg.type, 1 if msg.reject else 0, 0, msg.frm, msg.term,
                               msg.index, msg.log_term, msg.commit, msg.hint, msg.context,
                               msg.count, len(block))
    except struct.error as e:
        raise ValueError(f"a Message field does not fit: {e}") from None
    return frame(FRAME_MESSAGE, fixed + block, version=message_version(msg.type))


def _encode_hs(frame_type, cluster_id, node_id, min_version, max_version, client_url, tail=b""):
    if not 1 <= node_id <= ID_MAX:
        raise ValueError(f"node_id={node_id} is not a node id")
    if not 1 <= min_version <= max_version <= 255:
        raise ValueError(f"bad version range {min_version}..{max_version}")
    cid = cluster_id.encode("utf-8")
    if len(cid) > 0xFFFF:
        raise ValueError("cluster id longer than 65535 bytes")
    url = client_url.encode("utf-8")
    if len(url) > 0xFFFF:
        raise ValueError("client url longer than 65535 bytes")
    body = (HS_FIXED.pack(min_version, max_version, node_id, len(cid)) + cid
            + HS_URL_LEN.pack(len(url)) + url + tail)
    return frame(frame_type, body, version=min_version)


def _sized(value, size, what):
    if not isinstance(value, bytes) or len(value) != size:
        raise ValueError(f"{what} must be {size} bytes")
    return value


def encode_handshake(cluster_id, node_id, min_version=PROTOCOL_MIN, max_version=PROTOCOL_MAX,
                     client_url="", nonce=None):
    tail = b"" if nonce is None else bytes((AUTH_SECRET,)) + _sized(nonce, NONCE_SIZE, "nonce")
    return _encode_hs(FRAME_HANDSHAKE, cluster_id, node_id, min_version, max_version,
                      client_url, tail)


def encode_handshake_ack(cluster_id, node_id, version, client_url="", offered=None, nonce=None,
                         proof=None):
    tail = b""
    if nonce is not None or proof is not None or offered is not None:
        vmin, vmax = offered
        if not 1 <= vmin <= vmax <= 255:
            raise ValueError(f"bad version range {vmin}..{vmax}")
        tail = (ACK_AUTH.pack(AUTH_SECRET, vmin, vmax) + _sized(nonce, NONCE_SIZE, "nonce")
                + _sized(proof, PROOF_SIZE, "proof"))
    return _encode_hs(FRAME_HANDSHAKE_ACK, cluster_id, node_id, version, version, client_url,
                      tail)


def encode_auth(version, proof):
    if not 1 <= version <= 255:
        raise ValueError(f"bad version {version}")
    return frame(FRAME_AUTH, _sized(proof, PROOF_SIZE, "proof"), version=version)


def decode_message_body(body, version=1):
    if len(body) < MSG_FIXED.size:
        raise FrameMalformed(f"message body of {len(body)} bytes is shorter than its "
                             f"{MSG_FIXED.size} fixed bytes")
    (mtype, flags, reserved, frm, term, index, log_term, commit, hint, context,
     count, entries_len) = MSG_FIXED.unpack_from(body)
    if mtype not in MSG_TYPES[version]:
        raise FrameMalformed(f"unknown message type {mtype} (protocol v{version})")
    if flags & 0xFE:
        raise FrameMalformed(f"reserved message flags set: {flags:#04x}")
    if reserved:
        raise FrameMalformed("reserved message bits are set")
    if not 1 <= frm <= ID_MAX:
        raise FrameMalformed(f"frm={frm} is not a node id")
    for name, value in zip(BOUNDED_FIELDS, (term, index, log_term, commit, hint)):
        if value > ID_MAX:
            raise FrameMalformed(f"{name}={value} is not below 2**63")
    if entries_len != len(body) - MSG_FIXED.size:
        raise FrameMalformed(f"entries_len={entries_len} but {len(body) - MSG_FIXED.size} "
                             "bytes follow")
    entries = None
    if mtype in (MSG_CHUNK, MSG_ACK):
        problem = chunk_problem(mtype, count, entries_len, commit, hint, context)
        if problem is not None:
            raise FrameMalformed(problem)
        entries = body[MSG_FIXED.size:] or None
    elif entries_len == 0:
        if count != 0:
            raise FrameMalformed(f"count={count} without an entry block")
    else:
        entries = body[MSG_FIXED.size:]
        found = count_entries(entries)
        if isinstance(found, str):
            raise FrameMalformed("bad entry block: " + found)
        if found != count:
            raise FrameMalformed(f"count={count} but the entry block holds {found} entries")
    return Message(mtype, to=0, frm=frm, term=term, index=index, log_term=log_term,
                   commit=commit, reject=bool(flags & 1), hint=hint, context=context,
                   entries=entries, count=count)


def decode_handshake_body(frame_type, body):
    if len(body) < HS_FIXED.size:
        raise FrameMalformed(f"handshake body of {len(body)} bytes is shorter than its "
                             f"{HS_FIXED.size} fixed bytes")
    vmin, vmax, node_id, cid_len = HS_FIXED.unpack_from(body)
    if vmin == 0 or vmin > vmax:
        raise FrameMalformed(f"bad version range {vmin}..{vmax}")
    if frame_type == FRAME_HANDSHAKE_ACK and vmin != vmax:
        raise FrameMalformed(f"handshake ack names a range {vmin}..{vmax}, not one version")
    if not 1 <= node_id <= ID_MAX:
        raise FrameMalformed(f"node_id={node_id} is not a node id")
    rest = len(body) - HS_FIXED.size
    if cid_len + HS_URL_LEN.size > rest:
        raise FrameMalformed(f"cluster id of {cid_len} bytes and the client url length need "
                             f"{cid_len + HS_URL_LEN.size} bytes but {rest} bytes follow")
    cid_end = HS_FIXED.size + cid_len
    try:
        cluster_id = body[HS_FIXED.size:cid_end].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameMalformed("cluster id is not valid UTF-8") from None
    (url_len,) = HS_URL_LEN.unpack_from(body, cid_end)
    url_start = cid_end + HS_URL_LEN.size
    follow = len(body) - url_start
    tail_len = HS_TAIL if frame_type == FRAME_HANDSHAKE else ACK_TAIL
    if url_len not in (follow, follow - tail_len):
        raise FrameMalformed(f"client url of {url_len} bytes but {follow} bytes follow")
    url_end = url_start + url_len
    try:
        client_url = body[url_start:url_end].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameMalformed("client url is not valid UTF-8") from None
    if url_end == len(body):
        return Handshake(cluster_id, node_id, vmin, vmax, client_url)
    if body[url_end] != AUTH_SECRET:
        raise FrameMalformed(f"unknown authentication kind {body[url_end]}")
    if frame_type == FRAME_HANDSHAKE:
        return Handshake(cluster_id, node_id, vmin, vmax, client_url,
                         nonce=bytes(body[url_end + 1:]))
    _, omin, omax = ACK_AUTH.unpack_from(body, url_end)
    if omin == 0 or omin > omax:
        raise FrameMalformed(f"bad offered version range {omin}..{omax}")
    nonce_at = url_end + ACK_AUTH.size
    return Handshake(cluster_id, node_id, vmin, vmax, client_url,
                     nonce=bytes(body[nonce_at:nonce_at + NONCE_SIZE]), offered=(omin, omax),
                     proof=bytes(body[nonce_at + NONCE_SIZE:]))


class FrameDecoderPy:
    """Same contract as raftfast._codec.FrameDecoder."""

    def __init__(self, max_frame_size=DEFAULT_MAX_FRAME):
        if max_frame_size < 1:
            raise ValueError("max_frame_size must be positive")
        self.max_frame_size = min(max_frame_size, 0xFFFFFFFF)  # body_len is a u32
        self._chunks = []   # unread data, oldest first; _chunks[0][_pos:] is next
        self._pos = 0
        self._error = None

    @property
    def pending_bytes(self):
        return sum(len(c) for c in self._chunks) - self._pos

    def feed(self, data):
        if self._error is None and len(data):
            self._chunks.append(bytes(data))

    def _peek(self, n):
        """The next n unread bytes (the caller checked they are there)."""
        parts, need, pos = [], n, self._pos
        for c in self._chunks:
            if need == 0:
                break
            part = c[pos:pos + need]
            parts.append(part)
            need -= len(part)
            pos = 0
        return b"".join(parts)

    def _consume(self, n):
        n += self._pos
        while self._chunks and n >= len(self._chunks[0]):
            n -= len(self._chunks.pop(0))
        self._pos = n

    def _fail(self, exc):
        self._error = exc
        self._chunks, self._pos = [], 0
        return exc

    def next(self):
        if self._error is not None:
            raise self._error.with_traceback(None)
        try:
            return self._next()
        except FrameError as e:
            raise self._fail(e) from None

    def _next(self):
        if self.pending_bytes < HEADER_SIZE:
            return None
        body_len, version, frame_type, reserved, crc = HEADER.unpack(self._peek(HEADER_SIZE))
        if not PROTOCOL_MIN <= version <= PROTOCOL_MAX:
            raise FrameVersionError(f"frame version {version} is outside "
                                    f"{PROTOCOL_MIN}..{PROTOCOL_MAX}")
        if frame_type not in (FRAME_HANDSHAKE, FRAME_HANDSHAKE_ACK, FRAME_MESSAGE, FRAME_AUTH):
            raise FrameMalformed(f"unknown frame type {frame_type}")
        if reserved:
            raise FrameMalformed("reserved header bits are set")
        if body_len > self.max_frame_size:
            raise FrameTooLarge(f"frame body of {body_len} bytes exceeds the limit of "
                                f"{self.max_frame_size}")
        if self.pending_bytes < HEADER_SIZE + body_len:
            return None
        body = self._peek(HEADER_SIZE + body_len)[HEADER_SIZE:]
        if crc32c(body) != crc:
            raise FrameChecksumError("frame body does not match its CRC32C")
        if frame_type == FRAME_MESSAGE:
            obj = decode_message_body(body, version)
        elif frame_type == FRAME_AUTH:
            if len(body) != PROOF_SIZE:
                raise FrameMalformed(f"auth body of {len(body)} bytes, not {PROOF_SIZE}")
            obj = bytes(body)
        else:
            obj = decode_handshake_body(frame_type, body)
        self._consume(HEADER_SIZE + body_len)
        return (frame_type, obj)
