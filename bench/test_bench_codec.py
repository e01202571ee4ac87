"""Peer frame codec: encode_message and FrameDecoder on AppendEntries frames,
raftfast._codec (c) against its pure-Python twin tests/reference/codec_py.py
(py).

Each frame is one MSG_APPEND carrying N entries of 64 data bytes (77 bytes
each in the block with the 13-byte entry header) plus the 12-byte frame
header and 68 fixed message bytes.  entries/s = N / mean; MB/s = frame
bytes / mean (10**6 bytes).
"""
import pytest

from benchutil import VALUE_SIZE, report
from raftfast import _codec as codec_c
from raftfast._entrylog import encode_entries
from raftfast.core.messages import ENTRY_NORMAL, MSG_APPEND, Message
from tests.reference import codec_py

SIZES = [1, 64, 256, 1024]
CHUNK = 4096

IMPLS = {
    "c": (codec_c.encode_message, codec_c.FrameDecoder),
    "py": (codec_py.encode_message, codec_py.FrameDecoderPy),
}


def cases():
    return [pytest.param(impl, n, id=f"{impl}-{n}") for n in SIZES for impl in IMPLS]


def append_message(n):
    """An AppendEntries as the leader sends it: n entries of 64-byte values."""
    value = bytes(range(VALUE_SIZE))
    block = encode_entries([(7, ENTRY_NORMAL, value)] * n)
    return Message(MSG_APPEND, to=2, frm=1, term=7, index=100_000, log_term=7,
                   commit=99_990, entries=block, count=n)


def chunks_of(data, size):
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("impl,n", cases())
def test_codec_encode(benchmark, impl, n):
    encode, _ = IMPLS[impl]
    msg = append_message(n)
    frame = codec_c.encode_message(msg)
    assert encode(msg) == frame
    benchmark.group = f"codec encode, {n} entries"
    benchmark(encode, msg)
    report(benchmark, items=n, nbytes=len(frame), impl=impl, value_bytes=VALUE_SIZE)


def _decode_case(impl, n, chunk_size):
    """A decoder and the pre-cut input for one frame, checked once."""
    _, decoder_cls = IMPLS[impl]
    frame = codec_c.encode_message(append_message(n))
    pieces = chunks_of(frame, chunk_size) if chunk_size else [frame]
    decoder = decoder_cls()
    return decoder, frame, pieces


def _decode_one(decoder, pieces):
    # What a connection's data_received does per read: feed, then take every
    # frame that became complete.
    got = None
    for piece in pieces:
        decoder.feed(piece)
        while True:
            frame = decoder.next()
            if frame is None:
                break
            got = frame
    return got


@pytest.mark.parametrize("impl,n", cases())
def test_codec_decode(benchmark, impl, n):
    decoder, frame, pieces = _decode_case(impl, n, 0)
    _, msg = _decode_one(decoder, pieces)
    assert msg.count == n and decoder.pending_bytes == 0
    benchmark.group = f"codec decode, {n} entries"
    benchmark(_decode_one, decoder, pieces)
    report(benchmark, items=n, nbytes=len(frame), impl=impl, value_bytes=VALUE_SIZE,
           reads=len(pieces))


@pytest.mark.parametrize("impl,n", cases())
def test_codec_decode_chunked(benchmark, impl, n):
    """The same frame arriving in 4 KiB reads: 1 read for 1 entry (157
    bytes), 2 for 64 (5,008), 5 for 256, 20 for 1024."""
    decoder, frame, pieces = _decode_case(impl, n, CHUNK)
    _, msg = _decode_one(decoder, pieces)
    assert msg.count == n and decoder.pending_bytes == 0
    benchmark.group = f"codec decode 4 KiB reads, {n} entries"
    benchmark(_decode_one, decoder, pieces)
    report(benchmark, items=n, nbytes=len(frame), impl=impl, value_bytes=VALUE_SIZE,
           reads=len(pieces), read_bytes=CHUNK)
