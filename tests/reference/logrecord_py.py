"""The log record format in plain Python: the readable spec that
ext/logstore.pyx is tested against (see that module's docstring).

    u32 crc32c | u8 version | u8 type | u16 reserved | u32 payload_len
    | u64 first_index | u32 count | payload

little-endian; the CRC32C covers everything after itself.

A segment's records end at the end of its file or at an end marker: a
24-byte header of zeros (no record has version 0), after which the file
holds only zeros -- the unused rest of a preallocated segment.  In the
log's last segment a torn tail is repaired rather than refused: see
last_segment_repair.
"""
import os
import struct

from raftfast._crc import crc32c

VERSION = 1
ENTRIES = 1
HARD_STATE = 2
LOG_RESET = 3   # "the log restarts after (index, term)": first_index = index, payload u64 term

_HEAD = struct.Struct("<BBHIQI")  # the header after the crc
_HS = struct.Struct("<QQQ")
_RESET = struct.Struct("<Q")
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


def encode_log_reset(index, term):
    return encode(LOG_RESET, index, 0, _RESET.pack(term))


def decode(buf, offset=0):
    """The record at offset as (kind, fields, next_offset): kind "entries"
    with fields (first_index, block, count), "hard_state" with
    (term, vote, commit), or "log_reset" with (index, term).  RecordError if it is incomplete, fails its CRC
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
    if rtype == LOG_RESET and plen == _RESET.size and first >= 1 and count == 0:
        (term,) = _RESET.unpack(payload)
        if term >= 1:
            return "log_reset", (first, term), end
    raise RecordError(f"bad record type {rtype} at {offset}")


def is_end_marker(buf, offset):
    """An all-zero header (or the file's last, fewer than 24, bytes all zero) at offset."""
    return not any(bytes(buf[offset:offset + HEADER_SIZE]))


def records_end(buf):
    """Where a segment's records end: the file's end or its end marker.
    RecordError at the first bad record or at a non-zero byte after the marker."""
    buf, off = bytes(buf), 0
    while off < len(buf):
        if is_end_marker(buf, off):
            rest = buf[off:]
            if any(rest):
                nz = len(rest) - len(rest.lstrip(b"\0"))
                raise RecordError(f"non-zero byte at {off + nz} after the end marker at {off}")
            return off
        off = decode(buf, off)[2]
    return off


def is_intact(buf, offset):
    """A whole record starts at offset and its CRC matches, whatever its
    version or type (so an unknown kind is refused by name, not repaired)."""
    if len(buf) - offset < HEADER_SIZE:
        return False
    (crc,) = struct.unpack_from("<I", buf, offset)
    (plen,) = struct.unpack_from("<I", buf, offset + 8)
    end = offset + HEADER_SIZE + plen
    return end <= len(buf) and crc32c(buf[offset + 4:end]) == crc


def last_segment_repair(buf):
    """What opening does with the log's LAST segment: (end, damaged_end).
    end is where its records end; damaged_end is None when nothing needs
    repair, else bytes [end, damaged_end) are a torn tail to zero.

    A torn tail starts at a record that is not intact, or at an end marker
    with non-zero bytes after it (the header's page of a last multi-page
    write lost, a later page kept); it runs to the last non-zero byte, and
    it is torn only if no intact record starts anywhere after its start.
    RecordError otherwise: an intact record after it, or an intact record
    of an unknown version or type on the way.  Segments that are not the
    last are never repaired: see records_end."""
    buf, off = bytes(buf), 0
    while off < len(buf):
        marker = is_end_marker(buf, off)
        if marker and not any(buf[off:]):
            return off, None
        if marker or not is_intact(buf, off):
            z = len(buf.rstrip(b"\0"))
            for y in range(off + 1, z):
                if is_intact(buf, y):
                    raise RecordError(f"intact record at {y} after the torn tail at {off}")
            return off, z
        off = decode(buf, off)[2]
    return off, None


def decode_all(buf):
    """Every record of a segment's bytes, in order, up to the end (see
    records_end); RecordError at the first bad one."""
    buf = bytes(buf)
    end, out, off = records_end(buf), [], 0
    while off < end:
        kind, fields, off = decode(buf, off)
        out.append((kind, fields))
    return out


def segment_name(seq):
    return "%016d.wal" % seq


def preallocated(data, size):
    """A segment's bytes zero-filled to `size`, as a preallocated segment is."""
    assert len(data) <= size
    return bytes(data) + bytes(size - len(data))


def write_segment(dirpath, seq, records, size=None):
    """Write encoded records as segment `seq` of a log directory, zero-filled
    to `size` bytes when given (a preallocated segment)."""
    os.makedirs(dirpath, exist_ok=True)
    data = b"".join(records)
    if size is not None:
        data = preallocated(data, size)
    with open(os.path.join(dirpath, segment_name(seq)), "wb") as f:
        f.write(data)
