"""Pure-Python twin of raftfast._entrylog: the readable specification of the
in-memory Raft log that the Cython module is tested against.

Entries are kept as a plain list of (term, type, data) tuples; blocks are
decoded on the way in and re-encoded on the way out.  The block format
(raftfast/core/messages.py) has exactly one encoding per entry list, so the bytes
this twin returns must equal the C module's bytes.
"""
import struct

HEADER = 13
TYPE_MAX = 3  # ENTRY_TIME
_HEAD = struct.Struct("<IQB")


class BlockError(ValueError):
    """A malformed entry block.  Raised before anything is changed."""


def decode_entries_py(block):
    """[(term, type, data bytes), ...]; BlockError at the first bad entry."""
    block = bytes(block)
    out = []
    pos = 0
    while pos < len(block):
        room = len(block) - pos
        if room < HEADER:
            raise BlockError(f"entry {len(out)} at offset {pos}: truncated header "
                             f"({room} of {HEADER} bytes)")
        dlen, term, typ = _HEAD.unpack_from(block, pos)
        if dlen > room - HEADER:
            raise BlockError(f"entry {len(out)} at offset {pos}: data_len {dlen} runs past "
                             f"the end of the block ({room - HEADER} bytes left)")
        if typ > TYPE_MAX:
            raise BlockError(f"entry {len(out)} at offset {pos}: unknown entry type {typ}")
        out.append((term, typ, block[pos + HEADER:pos + HEADER + dlen]))
        pos += HEADER + dlen
    return out


def encode_entries_py(entries):
    """A block from (term, type, data) triples."""
    parts = []
    for term, typ, data in entries:
        if not 0 <= typ <= TYPE_MAX:
            raise ValueError(f"unknown entry type {typ}")
        parts.append(_HEAD.pack(len(data), term, typ) + bytes(data))
    return b"".join(parts)


def block_count_py(block):
    return len(decode_entries_py(block))


def block_terms_py(block):
    """[(entry_number, term), ...], one pair per run of equal terms."""
    return _runs(0, [term for term, _, _ in decode_entries_py(block)])


def _runs(start, terms):
    runs = []
    for i, term in enumerate(terms):
        if i == 0 or term != terms[i - 1]:
            runs.append((start + i, term))
    return runs


def _nonempty(block):
    entries = decode_entries_py(block)
    if not entries:
        raise BlockError("empty block: no entries")
    return entries


def _size(entry):
    return HEADER + len(entry[2])


class EntryLogPy:
    """Entries [first_index, last_index]; indexes below first_index are
    covered by a snapshot the caller keeps."""

    def __init__(self, first_index=1):
        if first_index < 1:
            raise ValueError("first_index must be >= 1")
        self._first = first_index
        self._entries = []  # entry i has index first_index + i

    @property
    def first_index(self):
        return self._first

    @property
    def last_index(self):
        return self._first + len(self._entries) - 1

    @property
    def count(self):
        return len(self._entries)

    @property
    def nbytes(self):
        return sum(_size(e) for e in self._entries)

    def nbytes_from(self, index):
        if index < self._first:
            raise IndexError(f"index {index} is before the log's first entry {self._first}")
        return sum(_size(e) for e in self._entries[index - self._first:])

    def __len__(self):
        return len(self._entries)

    def __repr__(self):
        return (f"<EntryLog [{self._first}, {self.last_index}] "
                f"{len(self._entries)} entries, {self.nbytes} bytes>")

    def term(self, index):
        if not self._first <= index <= self.last_index:
            raise IndexError(f"index {index} outside the log")
        return self._entries[index - self._first][0]

    def last_term(self):
        return self._entries[-1][0] if self._entries else 0

    def append(self, index, block):
        entries = _nonempty(block)
        if not self._first <= index <= self.last_index + 1:
            raise ValueError(f"append at {index} outside [{self._first}, {self.last_index + 1}]")
        del self._entries[index - self._first:]
        self._entries.extend(entries)
        return len(entries)

    def append_stamped(self, block, term):
        entries = _nonempty(block)
        first = self.last_index + 1
        self._entries.extend((term, typ, data) for _, typ, data in entries)
        return (first, self.last_index)

    def find_conflict(self, index, block):
        entries = decode_entries_py(block)
        if index < 1:
            raise ValueError("entry indexes start at 1")
        pos = 0
        for i, entry in enumerate(entries):
            idx = index + i
            # Below first_index: covered by the snapshot, so it matches.
            if idx >= self._first and (idx > self.last_index or self.term(idx) != entry[0]):
                return (idx, pos)
            pos += _size(entry)
        return (0, pos)

    def _check_range(self, lo, hi):
        if not self._first <= lo <= hi <= self.last_index + 1:
            raise IndexError(f"range [{lo}, {hi}) outside the log")

    def slice(self, lo, hi, max_bytes=0):
        self._check_range(lo, hi)
        taken, total = [], 0
        for entry in self._entries[lo - self._first:hi - self._first]:
            if taken and max_bytes and total + _size(entry) > max_bytes:
                break
            taken.append(entry)
            total += _size(entry)
        return (encode_entries_py(taken), len(taken))

    def compact(self, index):
        if index < self._first:
            return  # already covered by the snapshot
        del self._entries[:index + 1 - self._first]
        self._first = index + 1

    def find_type(self, lo, hi, etype):
        """[(index, data), ...] of the entries in [lo, hi) of type etype."""
        self._check_range(lo, hi)
        return [(lo + i, data)
                for i, (_, typ, data) in enumerate(self._entries[lo - self._first:hi - self._first])
                if typ == etype]

    def scan_terms(self, lo, hi):
        self._check_range(lo, hi)
        return _runs(lo, [self.term(i) for i in range(lo, hi)])

    def term_search(self, hint_index, hint_term):
        # Past the end: no term, not a candidate.  Below first_index: the
        # term is unknown (snapshot), so it counts as a possible match.
        i = min(hint_index, self.last_index)
        while i >= self._first and self.term(i) > hint_term:
            i -= 1
        return i
