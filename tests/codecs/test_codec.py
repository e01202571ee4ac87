"""The peer frame codec: raftfast._codec against its Python twin
(tests/reference/codec_py.py), round trips, streaming, and every error."""
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftfast import _codec as codec_c
from raftfast._crc import crc32c as crc32c_c
from raftfast.core.messages import (MSG_APPEND, MSG_APPEND_RESP, MSG_HEARTBEAT, MSG_NAMES,
                                    MSG_SNAPSHOT_ACK, MSG_SNAPSHOT_CHUNK, Message)
from tests.reference import codec_py

ID_MAX = (1 << 63) - 1
U64_MAX = (1 << 64) - 1

settings.register_profile("codec", deadline=None, max_examples=80,
                          suppress_health_check=[HealthCheck.too_slow])
CODEC_SETTINGS = settings.get_profile("codec")

IMPLS = [pytest.param(codec_c, id="c"), pytest.param(codec_py, id="py")]


def new_decoder(mod, **kw):
    return mod.FrameDecoder(**kw) if mod is codec_c else mod.FrameDecoderPy(**kw)


# -- building inputs ----------------------------------------------------------

def make_block(entries):
    """An entry block (messages.py format) from (term, type, data) triples."""
    return b"".join(struct.pack("<IQB", len(data), term, etype) + data
                    for term, etype, data in entries)


def raw_frame(frame_type, body, version=1, reserved=0, crc=None):
    """A frame around any body, checksummed with the project's CRC32C."""
    if crc is None:
        crc = crc32c_c(body)
    return struct.pack("<IBBHI", len(body), version, frame_type, reserved, crc) + body


def msg_body(mtype=MSG_APPEND, flags=0, reserved=0, frm=1, count=None, entries_len=None,
             block=b"", trailing=b"", term=2, index=3, log_term=4, commit=5, hint=6):
    """A MESSAGE body with any field set, lengths derived unless overridden."""
    if count is None:
        count = codec_py.count_entries(block)
    if entries_len is None:
        entries_len = len(block)
    return struct.pack("<BBHQQQQQQQII", mtype, flags, reserved, frm, term, index, log_term,
                       commit, hint, 7, count, entries_len) + block + trailing


def hs_body(vmin=1, vmax=1, node_id=1, cid=b"raftfast", cid_len=None, url=b"", url_len=None,
            tail=None):
    """A HANDSHAKE body; tail, when given, replaces everything after the
    cluster id (the client url length and the url)."""
    if tail is None:
        tail = struct.pack("<H", len(url) if url_len is None else url_len) + url
    return struct.pack("<HHQH", vmin, vmax, node_id,
                       len(cid) if cid_len is None else cid_len) + cid + tail


def received(m):
    """What a decoder yields for m: the same message with to=0."""
    return Message(m.type, to=0, frm=m.frm, term=m.term, index=m.index, log_term=m.log_term,
                   commit=m.commit, reject=bool(m.reject), hint=m.hint, context=m.context,
                   entries=m.entries or None, count=m.count)


def drain(dec):
    out = []
    while (item := dec.next()) is not None:
        out.append(item)
    return out


u64 = st.integers(0, U64_MAX)
# term, index, log_term, commit, hint: a receiver refuses 2**63 and above.
below_2_63 = st.integers(0, ID_MAX)
node_ids = st.integers(1, ID_MAX)
entry_lists = st.lists(st.tuples(u64, st.integers(0, 2), st.binary(max_size=40)),
                       min_size=1, max_size=6)


@st.composite
def snapshot_messages(draw):
    """SNAPSHOT_CHUNK (raw bytes at an offset of a total size, last flag in
    context) and SNAPSHOT_ACK (no data) with well-formed fields."""
    common = dict(to=draw(st.integers(0, ID_MAX)), frm=draw(node_ids), term=draw(below_2_63),
                  index=draw(below_2_63), log_term=draw(below_2_63))
    if draw(st.booleans()):
        return Message(MSG_SNAPSHOT_ACK, commit=draw(below_2_63), reject=draw(st.booleans()),
                       hint=draw(below_2_63), context=draw(u64), **common)
    data = draw(st.binary(max_size=60))
    offset = draw(st.integers(0, ID_MAX - len(data) - 1000))
    total = offset + len(data) + draw(st.sampled_from([0, 0, 1, 999]))
    return Message(MSG_SNAPSHOT_CHUNK, commit=offset, hint=total,
                   context=int(offset + len(data) == total), entries=data or None,
                   reject=draw(st.booleans()), **common)


@st.composite
def messages(draw):
    if draw(st.integers(0, 5)) == 0:
        return draw(snapshot_messages())
    ents = draw(st.none() | entry_lists)
    block = make_block(ents) if ents else None
    return Message(draw(st.integers(1, 10)), to=draw(st.integers(0, ID_MAX)),
                   frm=draw(node_ids), term=draw(below_2_63), index=draw(below_2_63),
                   log_term=draw(below_2_63), commit=draw(below_2_63),
                   reject=draw(st.booleans()), hint=draw(below_2_63),
                   context=draw(u64), entries=block, count=len(ents) if ents else 0)


# Client URLs: empty, realistic, non-ASCII (up to 4-byte UTF-8) and arbitrary text.
client_urls = st.one_of(
    st.just(""),
    st.builds(lambda host, port: f"tcp://{host}:{port}",
              st.sampled_from(["127.0.0.1", "[::1]", "node-1.example", "bücher.de", "节点"]),
              st.integers(0, 65535)),
    st.builds(lambda path: f"unix:///{path}.sock", st.text(min_size=1, max_size=30)),
    st.text(max_size=40),
)

# (cluster_id, node_id, min_version, max_version, client_url): the
# positional arguments of encode_handshake.
handshakes = st.tuples(st.text(max_size=20), node_ids, st.integers(1, 255),
                       st.integers(0, 254), client_urls).map(
    lambda t: (t[0], t[1], t[2], min(255, t[2] + t[3]), t[4]))

SAMPLE_BLOCK = make_block([(4, 0, b"set k v"), (4, 1, b""), (5, 2, b"\x01\x02\x03")])
SAMPLE = Message(MSG_APPEND, to=2, frm=1, term=5, index=10, log_term=4, commit=9,
                 entries=SAMPLE_BLOCK, count=3)


# -- the twin ----------------------------------------------------------------

@given(st.binary(max_size=200))
def test_twin_crc32c_matches_the_extension(data):
    assert codec_py.crc32c(data) == crc32c_c(data)


def test_twin_crc32c_known_vector():
    assert codec_py.crc32c(b"123456789") == 0xE3069283


def test_constants_match_the_twin():
    for name in ("PROTOCOL_MIN", "PROTOCOL_MAX", "FRAME_HANDSHAKE", "FRAME_HANDSHAKE_ACK",
                 "FRAME_MESSAGE", "FRAME_AUTH", "NONCE_SIZE", "PROOF_SIZE", "HEADER_SIZE",
                 "DEFAULT_MAX_FRAME"):
        assert getattr(codec_c, name) == getattr(codec_py, name), name
    assert (codec_c.PROTOCOL_MIN, codec_c.PROTOCOL_MAX, codec_c.HEADER_SIZE) == (1, 3, 12)
    assert codec_c.DEFAULT_MAX_FRAME == 64 << 20


def test_message_types_are_pinned_to_protocol_versions():
    # A new message type changes the wire format: it needs a protocol version.
    assert set(MSG_NAMES) == set(range(1, 17))
    assert (codec_c.MSG_TYPE_MAX_V1, codec_c.MSG_TYPE_MAX_V2) == (10, 12)
    versions = [1] * 10 + [2, 2] + [3] * 4
    assert [codec_c.message_version(t) for t in range(1, 17)] == versions
    assert [codec_py.message_version(t) for t in range(1, 17)] == versions


@CODEC_SETTINGS
@given(messages())
def test_encode_message_matches_twin_byte_for_byte(m):
    assert codec_c.encode_message(m) == codec_py.encode_message(m)


@CODEC_SETTINGS
@given(handshakes)
def test_encode_handshakes_match_twin_byte_for_byte(hs):
    cid, node_id, vmin, vmax, url = hs
    assert (codec_c.encode_handshake(cid, node_id, vmin, vmax, url)
            == codec_py.encode_handshake(cid, node_id, vmin, vmax, client_url=url))
    assert (codec_c.encode_handshake_ack(cid, node_id, vmax, url)
            == codec_py.encode_handshake_ack(cid, node_id, vmax, client_url=url))
    if url == "":
        # The default is the empty url.
        assert codec_c.encode_handshake(cid, node_id, vmin, vmax) == \
            codec_c.encode_handshake(cid, node_id, vmin, vmax, "")
        assert codec_c.encode_handshake_ack(cid, node_id, vmax) == \
            codec_py.encode_handshake_ack(cid, node_id, vmax)


def test_frame_layout_is_as_documented():
    f = codec_c.encode_message(SAMPLE)
    body_len, version, ftype, reserved, crc = struct.unpack_from("<IBBHI", f)
    assert (body_len, version, ftype, reserved) == (68 + len(SAMPLE_BLOCK), 1, 3, 0)
    assert len(f) == 12 + body_len and crc == crc32c_c(f[12:])
    assert f[12:12 + 68] == struct.pack("<BBHQQQQQQQII", MSG_APPEND, 0, 0, 1, 5, 10, 4, 9, 0, 0,
                                        3, len(SAMPLE_BLOCK))
    assert f[12 + 68:] == SAMPLE_BLOCK
    h = codec_c.encode_handshake("c1", 7)
    assert h == raw_frame(1, struct.pack("<HHQH", 1, 3, 7, 2) + b"c1" + b"\x00\x00")
    assert codec_c.encode_handshake_ack("c1", 7, 1) == raw_frame(
        2, struct.pack("<HHQH", 1, 1, 7, 2) + b"c1" + b"\x00\x00")
    url = "tcp://hôst:7001"
    h = codec_c.encode_handshake("c1", 7, client_url=url)
    assert h == raw_frame(1, struct.pack("<HHQH", 1, 3, 7, 2) + b"c1"
                          + struct.pack("<H", len(url.encode())) + url.encode())
    assert len(url.encode()) == len(url) + 1  # the length counts bytes, not characters
    assert codec_c.encode_handshake_ack("c1", 7, 1, client_url=url) == raw_frame(
        2, struct.pack("<HHQH", 1, 1, 7, 2) + h[12 + 14:])


def test_reject_is_flag_bit_zero():
    m = Message(MSG_APPEND_RESP, frm=3, term=2, index=5, reject=True, hint=4)
    f = codec_c.encode_message(m)
    assert f[13] == 1
    dec = codec_c.FrameDecoder()
    dec.feed(f)
    assert dec.next()[1].reject is True


# -- round trips and streaming -----------------------------------------------

@pytest.mark.parametrize("mod", IMPLS)
@CODEC_SETTINGS
@given(m=messages())
def test_decode_of_encode_is_the_message(mod, m):
    dec = new_decoder(mod)
    dec.feed(mod.encode_message(m))
    ftype, got = dec.next()
    assert ftype == mod.FRAME_MESSAGE
    assert type(got) is Message and got.to == 0
    assert got == received(m)
    assert dec.next() is None and dec.pending_bytes == 0


@pytest.mark.parametrize("mod", IMPLS)
@CODEC_SETTINGS
@given(hs=handshakes)
def test_decode_of_encoded_handshakes(mod, hs):
    # A HANDSHAKE's header carries its min_version and an ACK's header the
    # chosen one, so only version 1 is readable here; the offered max is free.
    cid, node_id, _, vmax, url = hs
    dec = new_decoder(mod)
    dec.feed(mod.encode_handshake(cid, node_id, 1, vmax, client_url=url))
    dec.feed(mod.encode_handshake_ack(cid, node_id, 1, client_url=url))
    dec.feed(mod.encode_handshake(cid, node_id, 1, vmax))
    got = drain(dec)
    assert got == [(mod.FRAME_HANDSHAKE, mod.Handshake(cid, node_id, 1, vmax, url)),
                   (mod.FRAME_HANDSHAKE_ACK, mod.Handshake(cid, node_id, 1, 1, url)),
                   (mod.FRAME_HANDSHAKE, mod.Handshake(cid, node_id, 1, vmax))]
    assert got[0][1].client_url == url and got[2][1].client_url == ""
    assert all(type(h.client_url) is str for _, h in got)
    assert dec.pending_bytes == 0


@pytest.mark.parametrize("mod", IMPLS)
def test_longest_client_url_round_trips(mod):
    url = "ü" * 32767 + "x"   # 65535 bytes
    dec = new_decoder(mod)
    dec.feed(mod.encode_handshake("c", 1, client_url=url))
    assert dec.next()[1].client_url == url


@pytest.mark.parametrize("mod", IMPLS)
def test_handshake_class(mod):
    h = mod.Handshake("c", 2, 1, 3)
    assert h.client_url == ""
    assert h == mod.Handshake("c", 2, 1, 3, "")
    assert h != mod.Handshake("c", 2, 1, 3, "tcp://a:1")
    u = mod.Handshake("c", 2, 1, 3, client_url="tcp://a:1")
    assert u == mod.Handshake("c", 2, 1, 3, "tcp://a:1")
    assert "client_url='tcp://a:1'" in repr(u)
    assert repr(u) == repr(codec_py.Handshake("c", 2, 1, 3, "tcp://a:1"))
    assert repr(h) == repr(codec_py.Handshake("c", 2, 1, 3))
    with pytest.raises(AttributeError):
        h.other = 1


@pytest.mark.parametrize("mod", IMPLS)
@CODEC_SETTINGS
@given(msgs=st.lists(messages(), min_size=1, max_size=5), url=client_urls, data=st.data())
def test_split_at_random_points_yields_the_same_frames(mod, msgs, url, data):
    frames = ([mod.encode_handshake("raftfast", 9, client_url=url)]
              + [mod.encode_message(m) for m in msgs])
    wire = b"".join(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    dec = new_decoder(mod)
    got, fed, start = [], 0, 0
    for end in cuts + [len(wire)]:
        dec.feed(wire[start:end])
        fed += end - start
        start = end
        got += drain(dec)
        assert dec.pending_bytes == fed - sum(map(len, frames[:len(got)]))
    assert got[0] == (mod.FRAME_HANDSHAKE, mod.Handshake("raftfast", 9, 1, 3, url))
    assert got[1:] == [(mod.FRAME_MESSAGE, received(m)) for m in msgs]
    assert dec.pending_bytes == 0


@pytest.mark.parametrize("mod", IMPLS)
def test_many_frames_in_one_feed(mod):
    rng = random.Random(5)
    msgs = [Message(rng.randint(1, 10), frm=rng.randint(1, ID_MAX),
                    term=rng.randint(0, ID_MAX), index=i, commit=rng.randint(0, 99),
                    entries=SAMPLE_BLOCK if i % 3 == 0 else None, count=3 if i % 3 == 0 else 0)
            for i in range(200)]
    dec = new_decoder(mod)
    dec.feed(b"".join(mod.encode_message(m) for m in msgs))
    assert drain(dec) == [(mod.FRAME_MESSAGE, received(m)) for m in msgs]
    assert dec.pending_bytes == 0


@pytest.mark.parametrize("mod", IMPLS)
def test_small_chunks_over_a_long_stream(mod):
    # Chunk edges never line up with frame edges, so the decoder always holds
    # a partial frame and must drop consumed chunks as it goes.
    msgs = [Message(MSG_HEARTBEAT, frm=2, term=7, commit=i, context=i) for i in range(300)]
    wire = b"".join(mod.encode_message(m) for m in msgs)
    dec = new_decoder(mod)
    got = []
    for i in range(0, len(wire), 7):
        dec.feed(wire[i:i + 7])
        got += drain(dec)
    assert got == [(mod.FRAME_MESSAGE, received(m)) for m in msgs]
    assert dec.pending_bytes == 0


def test_large_block_across_many_chunks():
    block = make_block([(9, 0, bytes([i % 251]) * 1000) for i in range(1000)])
    m = Message(MSG_APPEND, frm=1, term=9, index=1, entries=block, count=1000)
    wire = codec_c.encode_message(m)
    dec = codec_c.FrameDecoder()
    for i in range(0, len(wire), 4096):
        assert dec.next() is None
        dec.feed(wire[i:i + 4096])
    assert dec.next() == (codec_c.FRAME_MESSAGE, received(m))


@pytest.mark.parametrize("mod", IMPLS)
@pytest.mark.parametrize("kind", ["message", "handshake", "handshake with url", "ack"])
def test_every_truncation_is_incomplete_not_an_error(mod, kind):
    f = {"message": lambda: mod.encode_message(SAMPLE),
         "handshake": lambda: mod.encode_handshake("clü", 3),
         "handshake with url": lambda: mod.encode_handshake("clü", 3, client_url="tcp://hôst:1"),
         "ack": lambda: mod.encode_handshake_ack("clü", 3, 1, client_url="unix:///€.sock"),
         }[kind]()
    for k in range(len(f)):
        dec = new_decoder(mod)
        dec.feed(f[:k])
        assert dec.next() is None
        assert dec.pending_bytes == k
        dec.feed(f[k:])
        assert dec.next() is not None


@pytest.mark.parametrize("mod", IMPLS)
def test_feed_copies_buffers_the_caller_may_reuse(mod):
    f = mod.encode_message(SAMPLE)
    dec = new_decoder(mod)
    buf = bytearray(f)
    dec.feed(memoryview(buf)[:40])
    dec.feed(buf[40:])
    buf[:] = bytes(len(buf))
    assert dec.next() == (mod.FRAME_MESSAGE, received(SAMPLE))


@pytest.mark.parametrize("mod", IMPLS)
def test_empty_entry_block_encodes_as_no_entries(mod):
    m = Message(MSG_APPEND, frm=1, term=1, entries=b"", count=0)
    dec = new_decoder(mod)
    dec.feed(mod.encode_message(m))
    assert dec.next()[1].entries is None


# -- errors ------------------------------------------------------------------

def expect_error(mod, data, cls, **kw):
    dec = new_decoder(mod, **kw)
    dec.feed(data)
    with pytest.raises(getattr(mod, cls)) as info:
        dec.next()
    assert type(info.value) is getattr(mod, cls)
    return dec, info.value


@pytest.mark.parametrize("mod", IMPLS)
def test_error_classes_are_value_errors(mod):
    for name in ("FrameTooLarge", "FrameChecksumError", "FrameVersionError", "FrameMalformed"):
        assert issubclass(getattr(mod, name), mod.FrameError)
    assert issubclass(mod.FrameError, ValueError)


@pytest.mark.parametrize("mod", IMPLS)
def test_oversized_frame_fails_on_its_header_alone(mod):
    f = mod.encode_message(SAMPLE)
    limit = len(f) - 12 - 1
    dec, _ = expect_error(mod, f[:12], "FrameTooLarge", max_frame_size=limit)
    assert dec.pending_bytes == 0
    ok = new_decoder(mod, max_frame_size=limit + 1)
    ok.feed(f)
    assert ok.next()[1] == received(SAMPLE)


@pytest.mark.parametrize("mod", IMPLS)
def test_huge_announced_length_fails_without_waiting(mod):
    expect_error(mod, struct.pack("<IBBHI", 0xFFFFFFFF, 1, 3, 0, 0), "FrameTooLarge")


@pytest.mark.parametrize("mod", IMPLS)
def test_any_flipped_body_bit_is_a_checksum_error(mod):
    f = mod.encode_message(SAMPLE)
    for pos in range(12, len(f)):
        bad = bytearray(f)
        bad[pos] ^= 1 << (pos % 8)
        expect_error(mod, bytes(bad), "FrameChecksumError")
    bad = bytearray(f)
    bad[9] ^= 0x40  # the checksum itself
    expect_error(mod, bytes(bad), "FrameChecksumError")


@pytest.mark.parametrize("mod", IMPLS)
@pytest.mark.parametrize("version", [0, 4, 255])
def test_unknown_header_version(mod, version):
    expect_error(mod, raw_frame(3, msg_body(), version=version), "FrameVersionError")


@pytest.mark.parametrize("mod", IMPLS)
@pytest.mark.parametrize("ftype", [0, 4, 255])
def test_unknown_frame_type(mod, ftype):
    expect_error(mod, raw_frame(ftype, msg_body()), "FrameMalformed")


@pytest.mark.parametrize("mod", IMPLS)
@pytest.mark.parametrize("reserved", [1, 0x8000])
def test_reserved_header_bits(mod, reserved):
    expect_error(mod, raw_frame(3, msg_body(), reserved=reserved), "FrameMalformed")


ONE = make_block([(1, 0, b"x")])
TWO = make_block([(1, 0, b"x"), (1, 1, b"")])

# Each case names the one defect it carries and a phrase of the error that
# must report it (C and twin word their errors alike).
BAD_MESSAGE_BODIES = {
    "msg type 0": (msg_body(mtype=0), "unknown message type 0"),
    "msg type 11": (msg_body(mtype=11), "unknown message type 11"),
    "msg type 255": (msg_body(mtype=255), "unknown message type 255"),
    "flag bit 1": (msg_body(flags=0x02), "reserved message flags set: 0x02"),
    "flag bit 7 with reject": (msg_body(flags=0x81), "reserved message flags set: 0x81"),
    "reserved msg bits": (msg_body(reserved=1), "reserved message bits"),
    "frm 0": (msg_body(frm=0), "frm=0 is not a node id"),
    "frm 2**63": (msg_body(frm=1 << 63), f"frm={1 << 63} is not a node id"),
    # No node reaches a term or an index of 2**63; one pushed that far by a
    # forged frame could not take term + 1 (it would not fit in u64).
    "term 2**63": (msg_body(term=1 << 63), f"term={1 << 63} is not below 2**63"),
    "term 2**64-1": (msg_body(term=U64_MAX), f"term={U64_MAX} is not below 2**63"),
    "index 2**64-1": (msg_body(index=U64_MAX), f"index={U64_MAX} is not below 2**63"),
    "log_term 2**63": (msg_body(log_term=1 << 63), f"log_term={1 << 63} is not below 2**63"),
    "commit 2**63": (msg_body(commit=1 << 63), f"commit={1 << 63} is not below 2**63"),
    "hint 2**63": (msg_body(hint=1 << 63), f"hint={1 << 63} is not below 2**63"),
    "index and term": (msg_body(term=U64_MAX, index=U64_MAX), f"term={U64_MAX} is not"),
    "shorter than fixed part": (msg_body()[:67], "67 bytes is shorter"),
    "count 2, block of 1": (msg_body(block=ONE, count=2), "count=2 but the entry block holds 1"),
    "count 1, block of 2": (msg_body(block=TWO, count=1), "count=1 but the entry block holds 2"),
    "count 1, no block": (msg_body(count=1), "count=1 without an entry block"),
    "count 0 with a block": (msg_body(block=ONE, count=0), "count=0 but the entry block holds 1"),
    "entries_len too large": (msg_body(block=ONE, entries_len=len(ONE) + 1),
                              f"entries_len={len(ONE) + 1} but {len(ONE)} bytes follow"),
    "entries_len too small": (msg_body(block=ONE, entries_len=len(ONE) - 1),
                              f"entries_len={len(ONE) - 1} but {len(ONE)} bytes follow"),
    "trailing bytes": (msg_body(block=ONE, trailing=b"\x00"),
                       f"entries_len={len(ONE)} but {len(ONE) + 1} bytes follow"),
    "entry type 4": (msg_body(block=make_block([(1, 4, b"x")]), count=1), "unknown entry type"),
    "entry data past end": (msg_body(block=ONE[:-1], count=1), "entry data runs past the end"),
    "entry header cut off": (msg_body(block=ONE + b"\x00" * 5, count=2), "entry header cut off"),
    # Framing first: the length is judged before the type byte.
    "entry type 4, data past end": (msg_body(block=make_block([(1, 4, b"x")])[:-1], count=1),
                                    "entry data runs past the end"),
}


@pytest.mark.parametrize("mod", IMPLS)
@pytest.mark.parametrize("case", sorted(BAD_MESSAGE_BODIES))
def test_malformed_message_bodies(mod, case):
    body, phrase = BAD_MESSAGE_BODIES[case]
    _, err = expect_error(mod, raw_frame(3, body), "FrameMalformed")
    assert phrase in str(err)


def chunk_body(data=b"xyz", offset=0, total=None, last=None, count=0, entries_len=None,
               mtype=MSG_SNAPSHOT_CHUNK, frm=1, term=2):
    """A SNAPSHOT_CHUNK (or, with mtype, SNAPSHOT_ACK) body with any field."""
    if total is None:
        total = offset + len(data)
    if last is None:
        last = int(offset + len(data) == total)
    return struct.pack("<BBHQQQQQQQII", mtype, 0, 0, frm, term, 9, 3, offset, total, last,
                       count, len(data) if entries_len is None else entries_len) + data


# Protocol v2 frames (the snapshot transfer types), one defect each.
BAD_V2_BODIES = {
    "msg type 13": (msg_body(mtype=13), "unknown message type 13 (protocol v2)"),
    "chunk with a count": (chunk_body(count=1), "snapshot chunk with count=1"),
    "chunk past its total": (chunk_body(offset=5, total=6),
                             "snapshot chunk of 3 bytes at offset 5 runs past its total size 6"),
    "last chunk short of its total": (chunk_body(total=4, last=1),
                                      "last flag is 1 but it ends at 3 of 4 bytes"),
    "chunk at its total not last": (chunk_body(last=0), "last flag is 0 but it ends at 3 of 3"),
    "last flag 2": (chunk_body(last=2), "last flag (context) is 2, not 0 or 1"),
    "chunk offset 2**63": (chunk_body(offset=1 << 63, total=(1 << 63) + 3),
                           f"commit={1 << 63} is not below 2**63"),
    "chunk entries_len short": (chunk_body(entries_len=2), "entries_len=2 but 3 bytes follow"),
    "ack with data": (chunk_body(mtype=MSG_SNAPSHOT_ACK, total=3, last=0),
                      "snapshot ack with 3 bytes of data"),
}


@pytest.mark.parametrize("mod", IMPLS)
@pytest.mark.parametrize("case", sorted(BAD_V2_BODIES))
def test_malformed_v2_message_bodies(mod, case):
    body, phrase = BAD_V2_BODIES[case]
    _, err = expect_error(mod, raw_frame(3, body, version=2), "FrameMalformed")
    assert phrase in str(err)


@pytest.mark.parametrize("mod", IMPLS)
@pytest.mark.parametrize("mtype", [MSG_SNAPSHOT_CHUNK, MSG_SNAPSHOT_ACK])
def test_snapshot_types_need_a_v2_frame(mod, mtype):
    # A v1 peer never receives them; one arriving in a v1 frame is malformed.
    body = chunk_body(mtype=mtype, data=b"" if mtype == MSG_SNAPSHOT_ACK else b"xyz")
    _, err = expect_error(mod, raw_frame(3, body, version=1), "FrameMalformed")
    assert f"unknown message type {mtype} (protocol v1)" in str(err)
    dec = new_decoder(mod)
    dec.feed(raw_frame(3, body, version=2))
    assert dec.next()[1].type == mtype


def test_v1_messages_keep_v1_frames_and_chunks_are_v2():
    # One encoding of an append serves v1 and v2 peers alike.
    assert codec_c.encode_message(SAMPLE)[4] == 1
    chunk = Message(MSG_SNAPSHOT_CHUNK, frm=1, term=2, index=9, log_term=3, commit=4, hint=7,
                    context=1, entries=b"abc")
    f = codec_c.encode_message(chunk)
    assert f[4] == 2 and f == codec_py.encode_message(chunk)
    assert f[12:12 + 68] == struct.pack("<BBHQQQQQQQII", MSG_SNAPSHOT_CHUNK, 0, 0, 1, 2, 9, 3,
                                        4, 7, 1, 0, 3)
    assert f[12 + 68:] == b"abc"
    ack = Message(MSG_SNAPSHOT_ACK, frm=2, term=2, index=9, log_term=3, commit=7, reject=True)
    f = codec_c.encode_message(ack)
    assert f[4] == 2 and f[13] == 1 and len(f) == 12 + 68


@pytest.mark.parametrize("mod", IMPLS)
def test_chunk_data_is_not_read_as_an_entry_block(mod):
    # Raw file bytes: a header announcing more data than follows, an entry
    # type of 255 - nonsense as entries, fine as a piece of a file.
    data = struct.pack("<IQB", 1 << 20, 5, 255) + b"\xff" * 40
    m = Message(MSG_SNAPSHOT_CHUNK, frm=3, term=1, index=2, log_term=1, commit=100,
                hint=100 + len(data) + 1, entries=data)
    dec = new_decoder(mod)
    dec.feed(mod.encode_message(m))
    got = dec.next()[1]
    assert got == received(m) and got.entries == data and got.count == 0


BAD_HANDSHAKE_BODIES = {
    "cluster id not utf-8": (1, hs_body(cid=b"\xff\xfeab"), "not valid UTF-8"),
    "cluster id cut utf-8": (2, hs_body(cid="clü".encode()[:-1]), "not valid UTF-8"),
    "node id 0": (1, hs_body(node_id=0), "node_id=0 is not a node id"),
    "node id 2**63": (2, hs_body(node_id=1 << 63), f"node_id={1 << 63} is not a node id"),
    "min version 0": (1, hs_body(vmin=0), "bad version range 0..1"),
    "min above max": (1, hs_body(vmin=3, vmax=2), "bad version range 3..2"),
    "ack with a range": (2, hs_body(vmin=1, vmax=2), "ack names a range 1..2"),
    # The cluster id swallows the url length's first byte, so the url length
    # read is b"c\x00" = 99.
    "cluster id longer than announced": (1, hs_body(cid=b"abc", cid_len=2),
                                         "client url of 99 bytes but 1 bytes follow"),
    "cluster id shorter than announced": (1, hs_body(cid=b"abc", cid_len=4),
                                          "cluster id of 4 bytes and the client url length "
                                          "need 6 bytes but 5 bytes follow"),
    "cluster id past the end": (1, hs_body(cid=b"abc", cid_len=9, tail=b""),
                                "need 11 bytes but 3 bytes follow"),
    "no client url length (old layout)": (1, hs_body(cid=b"raftfast", tail=b""),
                                          "cluster id of 8 bytes and the client url length "
                                          "need 10 bytes but 8 bytes follow"),
    "client url length cut in half": (2, hs_body(cid=b"raftfast", tail=b"\x00"),
                                      "need 10 bytes but 9 bytes follow"),
    "client url longer than announced": (1, hs_body(url=b"tcp://a:1", url_len=8),
                                         "client url of 8 bytes but 9 bytes follow"),
    "client url shorter than announced": (2, hs_body(url=b"tcp://a:1", url_len=10),
                                          "client url of 10 bytes but 9 bytes follow"),
    "client url length without a url": (1, hs_body(url=b"", url_len=0xFFFF),
                                        "client url of 65535 bytes but 0 bytes follow"),
    "trailing byte after empty url": (1, hs_body(tail=b"\x00\x00\x00"),
                                      "client url of 0 bytes but 1 bytes follow"),
    "client url not utf-8": (1, hs_body(url=b"tcp://\xff:1"), "client url is not valid UTF-8"),
    "client url cut utf-8": (2, hs_body(url="tcp://hü".encode()[:-1]),
                             "client url is not valid UTF-8"),
    "client url surrogate": (1, hs_body(url=b"\xed\xa0\x80"), "client url is not valid UTF-8"),
    # Field order: the cluster id is checked before the url length.
    "bad cluster id and bad url length": (1, hs_body(cid=b"\xff", url=b"ab", url_len=3),
                                          "cluster id is not valid UTF-8"),
    "shorter than fixed part": (1, hs_body()[:13], "13 bytes is shorter"),
}


@pytest.mark.parametrize("mod", IMPLS)
@pytest.mark.parametrize("case", sorted(BAD_HANDSHAKE_BODIES))
def test_malformed_handshake_bodies(mod, case):
    ftype, body, phrase = BAD_HANDSHAKE_BODIES[case]
    _, err = expect_error(mod, raw_frame(ftype, body), "FrameMalformed")
    assert phrase in str(err)


@pytest.mark.parametrize("mod", IMPLS)
@CODEC_SETTINGS
@given(hs=handshakes, data=st.data())
def test_handshake_body_cut_or_padded_is_malformed(mod, hs, data):
    # A body that is a strict prefix of a valid one, or one with bytes added,
    # under a header that announces its true length: the lengths cannot add up.
    cid, node_id, vmin, vmax, url = hs
    body = codec_py.encode_handshake(cid, node_id, 1, vmax, client_url=url)[12:]
    cut = data.draw(st.integers(0, len(body) - 1))
    for bad in (body[:cut], body + data.draw(st.binary(min_size=1, max_size=4))):
        _, err = expect_error(mod, raw_frame(1, bad), "FrameMalformed")
        assert any(p in str(err) for p in ("is shorter than", "need", "client url of")), err


@pytest.mark.parametrize("mod", IMPLS)
@CODEC_SETTINGS
@given(cid=st.text(max_size=10), url=client_urls, wrong=st.integers(0, 0xFFFF))
def test_client_url_length_mismatch_is_malformed(mod, cid, url, wrong):
    raw_url = url.encode()
    while wrong in (len(raw_url), len(raw_url) - 69):  # 69: an authenticated ACK's tail
        wrong = (wrong + 1) & 0xFFFF
    body = hs_body(cid=cid.encode(), url=raw_url, url_len=wrong)
    _, err = expect_error(mod, raw_frame(2, body), "FrameMalformed")
    assert f"client url of {wrong} bytes but {len(raw_url)} bytes follow" in str(err)


@pytest.mark.parametrize("mod", IMPLS)
def test_handshake_may_offer_versions_this_node_lacks(mod):
    # Negotiation is the transport's job: the decoder reports the offer as is.
    dec = new_decoder(mod)
    dec.feed(raw_frame(1, hs_body(vmin=1, vmax=7, node_id=4, cid=b"c")))
    assert dec.next() == (1, mod.Handshake("c", 4, 1, 7))
    dec.feed(raw_frame(1, hs_body(vmin=2, vmax=9, node_id=4, cid=b"c", url=b"tcp://x:1")))
    assert dec.next() == (1, mod.Handshake("c", 4, 2, 9, "tcp://x:1"))


@pytest.mark.parametrize("mod", IMPLS)
def test_an_error_poisons_the_decoder(mod):
    good = mod.encode_message(SAMPLE)
    bad = bytearray(good)
    bad[-1] ^= 1
    dec = new_decoder(mod)
    dec.feed(good + bytes(bad) + good)
    assert dec.next()[1] == received(SAMPLE)
    with pytest.raises(mod.FrameChecksumError) as first:
        dec.next()
    dec.feed(good)
    for _ in range(3):
        with pytest.raises(mod.FrameChecksumError) as again:
            dec.next()
        assert again.value is first.value
    assert dec.pending_bytes == 0


# -- garbage -----------------------------------------------------------------

def mutated_frames(recompute_crc):
    """Valid frames with one byte overwritten; re-checksummed, the body
    checks (not the CRC) are what the mutation meets."""
    def mutate(args):
        f, pos, val = args
        if not recompute_crc:
            return f[:pos % len(f)] + bytes([val]) + f[pos % len(f) + 1:]
        body = bytearray(f[12:])
        body[pos % len(body)] = val
        return raw_frame(f[5], bytes(body), version=f[4])
    base = st.one_of(messages().map(codec_py.encode_message),
                     handshakes.map(lambda h: codec_py.encode_handshake(*h)))
    return st.tuples(base, st.integers(0, 10_000), st.integers(0, 255)).map(mutate)


garbage = st.one_of(
    st.binary(max_size=300),
    st.tuples(st.integers(0, 255), st.binary(max_size=120)).map(lambda t: raw_frame(*t)),
    st.tuples(st.integers(1, 3), st.binary(max_size=120)).map(lambda t: raw_frame(*t)),
    mutated_frames(recompute_crc=True),
    mutated_frames(recompute_crc=False),
    # v2 snapshot chunks and acks with any offsets, sizes and flags
    st.tuples(st.binary(max_size=40), u64, u64, st.integers(0, 3),
              st.sampled_from([MSG_SNAPSHOT_CHUNK, MSG_SNAPSHOT_ACK]), st.integers(1, 2)).map(
        lambda t: raw_frame(3, chunk_body(data=t[0], offset=t[1], total=t[2], last=t[3],
                                          mtype=t[4]), version=t[5])),
)


def outcome(dec, chunks):
    """What a decoder makes of the chunks: frames, then None or an error."""
    seen = []
    for chunk in chunks:
        dec.feed(chunk)
        while True:
            try:
                item = dec.next()
            except (codec_c.FrameError, codec_py.FrameError) as e:
                return seen + [(type(e).__name__, str(e))]
            if item is None:
                break
            ftype, obj = item
            seen.append((ftype, repr(obj)))
    return seen + [None]


@settings(CODEC_SETTINGS, max_examples=300)
@given(st.lists(garbage, min_size=1, max_size=3), st.data())
def test_garbage_never_crashes_and_both_decoders_agree(parts, data):
    wire = b"".join(parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    chunks = [wire[a:b] for a, b in zip([0] + cuts, cuts + [len(wire)])]
    dec_c = codec_c.FrameDecoder(max_frame_size=4096)
    dec_py = codec_py.FrameDecoderPy(max_frame_size=4096)
    result = outcome(dec_c, chunks)
    assert result == outcome(dec_py, chunks)
    if result[-1] is not None:
        with pytest.raises(codec_c.FrameError):
            dec_c.next()


# -- encoder input checks ----------------------------------------------------

BAD_MESSAGES = {
    "frm 0": Message(MSG_APPEND, frm=0),
    "frm 2**63": Message(MSG_APPEND, frm=1 << 63),
    "type 0": Message(0, frm=1),
    "type 17": Message(17, frm=1),
    "chunk with an entry count": Message(MSG_SNAPSHOT_CHUNK, frm=1, hint=1, context=1,
                                         entries=b"x", count=1),
    "chunk past its total": Message(MSG_SNAPSHOT_CHUNK, frm=1, commit=5, hint=6, context=1,
                                    entries=b"xy"),
    "chunk offset 2**64-1": Message(MSG_SNAPSHOT_CHUNK, frm=1, commit=U64_MAX, hint=6,
                                    entries=b"xy"),
    "last chunk short of its total": Message(MSG_SNAPSHOT_CHUNK, frm=1, hint=3, context=1,
                                             entries=b"xy"),
    "chunk at the total not last": Message(MSG_SNAPSHOT_CHUNK, frm=1, hint=2, entries=b"xy"),
    "chunk last flag 2": Message(MSG_SNAPSHOT_CHUNK, frm=1, hint=2, context=2, entries=b"xy"),
    "ack with data": Message(MSG_SNAPSHOT_ACK, frm=1, entries=ONE, count=1),
    "negative term": Message(MSG_APPEND, frm=1, term=-1),
    "commit 2**64": Message(MSG_APPEND, frm=1, commit=1 << 64),
    "count without a block": Message(MSG_APPEND, frm=1, count=2),
    "count not matching the block": Message(MSG_APPEND, frm=1, entries=TWO, count=1),
    "count 2**32": Message(MSG_APPEND, frm=1, entries=TWO, count=1 << 32),
    "bad block": Message(MSG_APPEND, frm=1, entries=ONE[:-1], count=1),
}


@pytest.mark.parametrize("mod", IMPLS)
@pytest.mark.parametrize("case", sorted(BAD_MESSAGES))
def test_encoder_refuses_what_no_peer_would_accept(mod, case):
    with pytest.raises(ValueError):
        mod.encode_message(BAD_MESSAGES[case])


@pytest.mark.parametrize("mod", IMPLS)
def test_encoder_takes_any_buffer_as_the_block(mod):
    m = Message(MSG_APPEND, frm=1, entries=memoryview(bytearray(TWO)), count=2)
    assert mod.encode_message(m) == codec_c.encode_message(
        Message(MSG_APPEND, frm=1, entries=TWO, count=2))


@pytest.mark.parametrize("mod", IMPLS)
@pytest.mark.parametrize("args", [("c", 0, 1, 1), ("c", 1 << 63, 1, 1), ("c", 1, 0, 1),
                                  ("c", 1, 2, 1), ("c", 1, 1, 256), ("x" * 65536, 1, 1, 1),
                                  ("c", 1, 1, 1, "x" * 65536), ("c", 1, 1, 1, "ü" * 32768)])
def test_handshake_encoder_refuses_bad_input(mod, args):
    with pytest.raises(ValueError):
        mod.encode_handshake(*args)


@pytest.mark.parametrize("mod", IMPLS)
@pytest.mark.parametrize("args", [("c", 0, 1), ("c", 1 << 63, 1), ("c", 1, 0), ("c", 1, 256),
                                  ("x" * 65536, 1, 1), ("c", 1, 1, "x" * 65536),
                                  ("c", 1, 1, "€" * 21846)])
def test_handshake_ack_encoder_refuses_bad_input(mod, args):
    with pytest.raises(ValueError):
        mod.encode_handshake_ack(*args)


@pytest.mark.parametrize("mod", IMPLS)
def test_client_url_of_65535_bytes_is_accepted(mod):
    url = "x" * 65535
    assert len(mod.encode_handshake("c", 1, client_url=url)) == 12 + 14 + 1 + 2 + 65535
    assert len(mod.encode_handshake_ack("c", 1, 1, client_url=url)) == 12 + 14 + 1 + 2 + 65535


@pytest.mark.parametrize("mod", IMPLS)
def test_choose_version_takes_the_highest_common(mod):
    assert mod.choose_version(1, 1) == 1   # a v1-only peer gets v1: no snapshot types
    assert mod.choose_version(1, 2) == 2
    assert mod.choose_version(1, 9) == 3
    assert mod.choose_version(2, 9) == 3
    assert mod.choose_version(3, 9) == 3
    assert mod.choose_version(4, 9) is None


def test_decoder_rejects_a_non_positive_limit():
    with pytest.raises(ValueError):
        codec_c.FrameDecoder(max_frame_size=0)
    assert codec_c.FrameDecoder(max_frame_size=1 << 40).max_frame_size == 0xFFFFFFFF


# -- the authenticated handshake (a cluster secret) -------------------------------

NONCE_D, NONCE_A, PROOF = bytes(range(32)), bytes(range(32, 64)), bytes(range(64, 96))


@CODEC_SETTINGS
@given(hs=handshakes, nonce=st.binary(min_size=32, max_size=32),
       proof=st.binary(min_size=32, max_size=32))
def test_authenticated_handshakes_match_twin_byte_for_byte(hs, nonce, proof):
    cid, node_id, vmin, vmax, url = hs
    assert (codec_c.encode_handshake(cid, node_id, vmin, vmax, url, nonce=nonce)
            == codec_py.encode_handshake(cid, node_id, vmin, vmax, client_url=url, nonce=nonce))
    assert (codec_c.encode_handshake_ack(cid, node_id, vmax, url, offered=(vmin, vmax),
                                         nonce=nonce, proof=proof)
            == codec_py.encode_handshake_ack(cid, node_id, vmax, client_url=url,
                                             offered=(vmin, vmax), nonce=nonce, proof=proof))
    assert codec_c.encode_auth(vmax, proof) == codec_py.encode_auth(vmax, proof)


def test_authenticated_handshake_layout_is_as_documented():
    plain = codec_c.encode_handshake("c1", 7)
    h = codec_c.encode_handshake("c1", 7, nonce=NONCE_D)
    assert h == raw_frame(1, plain[12:] + b"\x01" + NONCE_D)
    plain_ack = codec_c.encode_handshake_ack("c1", 7, 2)
    a = codec_c.encode_handshake_ack("c1", 7, 2, offered=(1, 2), nonce=NONCE_A, proof=PROOF)
    assert a == raw_frame(2, plain_ack[12:] + struct.pack("<BHH", 1, 1, 2) + NONCE_A + PROOF,
                          version=2)
    assert codec_c.encode_auth(2, PROOF) == raw_frame(4, PROOF, version=2)


@pytest.mark.parametrize("mod", IMPLS)
def test_decode_of_authenticated_handshakes(mod):
    dec = new_decoder(mod)
    dec.feed(mod.encode_handshake("c", 3, 1, 2, client_url="tcp://a:1", nonce=NONCE_D))
    dec.feed(mod.encode_handshake_ack("c", 4, 1, offered=(1, 5), nonce=NONCE_A, proof=PROOF))
    dec.feed(mod.encode_auth(1, PROOF))
    got = drain(dec)
    assert got == [
        (mod.FRAME_HANDSHAKE, mod.Handshake("c", 3, 1, 2, "tcp://a:1", nonce=NONCE_D)),
        (mod.FRAME_HANDSHAKE_ACK, mod.Handshake("c", 4, 1, 1, "", nonce=NONCE_A,
                                                offered=(1, 5), proof=PROOF)),
        (mod.FRAME_AUTH, PROOF)]
    assert got[0][1].offered is None and got[0][1].proof is None
    assert mod.Handshake("c", 3, 1, 2) != got[0][1]  # the nonce counts
    assert dec.pending_bytes == 0


BAD_AUTH_FRAMES = {
    "unknown kind": (raw_frame(1, hs_body() + b"\x02" + NONCE_D),
                     "unknown authentication kind 2"),
    "bad offered range": (raw_frame(2, hs_body() + struct.pack("<BHH", 1, 3, 2) + NONCE_A + PROOF),
                          "bad offered version range 3..2"),
    "zero offered range": (raw_frame(2, hs_body() + struct.pack("<BHH", 1, 0, 2) + NONCE_A
                                     + PROOF), "bad offered version range 0..2"),
    "a HANDSHAKE with an ACK's tail": (raw_frame(1, hs_body() + struct.pack("<BHH", 1, 1, 2)
                                                 + NONCE_A + PROOF), "client url of 0 bytes"),
    "an ACK with a HANDSHAKE's tail": (raw_frame(2, hs_body() + b"\x01" + NONCE_D),
                                       "client url of 0 bytes"),
    "short auth": (raw_frame(4, PROOF[:31]), "auth body of 31 bytes, not 32"),
    "long auth": (raw_frame(4, PROOF + b"x"), "auth body of 33 bytes, not 32"),
}


@pytest.mark.parametrize("mod", IMPLS)
@pytest.mark.parametrize("case", sorted(BAD_AUTH_FRAMES))
def test_malformed_authentication_is_refused(mod, case):
    data, phrase = BAD_AUTH_FRAMES[case]
    _, err = expect_error(mod, data, "FrameMalformed")
    assert phrase in str(err)


@pytest.mark.parametrize("mod", IMPLS)
def test_authentication_encoders_refuse_bad_input(mod):
    for bad in (b"", NONCE_D[:31], NONCE_D + b"x", "x" * 32):
        with pytest.raises(ValueError):
            mod.encode_handshake("c", 1, nonce=bad)
        with pytest.raises(ValueError):
            mod.encode_handshake_ack("c", 1, 1, offered=(1, 2), nonce=bad, proof=PROOF)
        with pytest.raises(ValueError):
            mod.encode_handshake_ack("c", 1, 1, offered=(1, 2), nonce=NONCE_A, proof=bad)
        with pytest.raises(ValueError):
            mod.encode_auth(1, bad)
    with pytest.raises(ValueError):
        mod.encode_handshake_ack("c", 1, 1, offered=(2, 1), nonce=NONCE_A, proof=PROOF)
    with pytest.raises(ValueError):
        mod.encode_auth(0, PROOF)
