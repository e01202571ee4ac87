"""The log record format in plain Python: the readable spec that
ext/logstore.pyx is tested against (see that module's docstring).

    u32 crc32c | u8 version | u8 type | u16 reserved | u32 payload_len
    | u64 first_index | u32 count | payload

little-endian; the CRC32C covers everything after itself.
"""
import os
import struct

from raftfast._crc import crc32c

VERSION = 1
ENTRIES = 1
HARD_STATE = 2

_HEAD = struct.Struct("<BBHIQI")  # the header after the crc
_HS = struct.Struct("<QQQ")
HEADER_SIZE = 4 + _HEAD.size  # 24


class RecordError(ValueError):
    """Bytes at an offset are not a whole, valid record."""


def encode(rtype, first_index, count, payload, version=VERSION):
    rest = _HEAD.pack(version, rtype, 0, len(payload), first_index, count) + bytes(payload)
    return struct.pack("<I", crc32c(rest)) + rest


def encode_entries(first_index, block, count):
    return encode(ENTRIES, first_index, count, block)


def encode_hard_state(term, vote, commit):
    return encode(HARD_STATE, 0, 0, _HS.pack(term, vote, commit))


def decode(buf, offset=0):
    """The record at offset as (kind, fields, next_offset): kind "entries"
    with fields (first_index, block, count), or "hard_state" with
    (term, vote, commit).  RecordError if it is incomplete, fails its CRC
    or is not a version-1 record of a known type."""
    buf = bytes(buf)
    if len(buf) - offset < HEADER_SIZE:
        raise RecordError(f"incomplete header at {offset}")
    (crc,) = struct.unpack_from("<I", buf, offset)
    version, rtype, reserved, plen, first, count = _HEAD.unpack_from(buf, offset + 4)
    end = offset + HEADER_SIZE + plen
    if end > len(buf):
        raise RecordError(f"incomplete payload at {offset}")
    if crc32c(buf[offset + 4:end]) != crc:
        raise RecordError(f"checksum mismatch at {offset}")
    if version != VERSION or reserved != 0:
        raise RecordError(f"unknown version {version} at {offset}")
    payload = buf[offset + HEADER_SIZE:end]
    if rtype == ENTRIES and count >= 1 and first >= 1:
        return "entries", (first, payload, count), end
    if rtype == HARD_STATE and plen == _HS.size and first == 0 and count == 0:
        return "hard_state", _HS.unpack(payload), end
    raise RecordError(f"bad record type {rtype} at {offset}")


def decode_all(buf):
    """Every record of a segment's bytes, in order; RecordError at the first bad one."""
    out, off = [], 0
    while off < len(buf):
        kind, fields, off = decode(buf, off)
        out.append((kind, fields))
    return out


def segment_name(seq):
    return "%016d.wal" % seq


def write_segment(dirpath, seq, records):
    """Write encoded records as segment `seq` of a log directory."""
    os.makedirs(dirpath, exist_ok=True)
    with open(os.path.join(dirpath, segment_name(seq)), "wb") as f:
        f.write(b"".join(records))
