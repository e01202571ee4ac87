# cython: language_level=3
"""The in-memory Raft log: one contiguous entry block plus C arrays of
per-entry byte offsets and terms (etcd's MemoryStorage and unstable in one).

Entries never become Python objects: blocks are copied in with one memcpy
and handed out with one, and the block handed out last is handed out again
while it is asked for again (see `sliced` in _entrylog.pxd).  The block format is described in
raftfast/core/messages.py; tests/reference/entrylog_py.py is the readable spec
this module is tested against.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memmove

from raftfast._wire cimport (BLOCK_OK, BLOCK_SHORT_HEADER, BLOCK_DATA_PAST_END, ENTRY_CONFIG, ENTRY_TIME,
                             ENTRY_HEADER, ENTRY_NOOP, ENTRY_NORMAL, ENTRY_TERM_AT, ENTRY_TYPE_AT,
                             ENTRY_TYPE_MAX, BlockStatus, block_walk, ld32, ld64, st32, st64)

cdef enum:
    MIN_BUF = 4096
    MIN_ENTRIES = 64


# The entry format as compiled in (rfwire.h); tests check these against
# raftfast.core.messages, the Python side's definition.
ENTRY_HEADER_SIZE = ENTRY_HEADER
ENTRY_TYPES = (ENTRY_NORMAL, ENTRY_NOOP, ENTRY_CONFIG, ENTRY_TIME)


class BlockError(ValueError):
    """A malformed entry block.  Raised before anything is changed."""


cdef inline const uint8_t *_ptr(const uint8_t[::1] block) noexcept:
    # &block[0] is not valid on an empty view.
    return &block[0] if block.shape[0] > 0 else NULL


cdef Py_ssize_t _check_block(const uint8_t *p, size_t n) except -1:
    """Count a block's entries, raising BlockError at the first bad one."""
    cdef size_t count, pos, room
    cdef BlockStatus st = block_walk(p, n, ENTRY_TYPE_MAX, &count, &pos)
    if st == BLOCK_OK:
        return count
    room = n - pos
    if st == BLOCK_SHORT_HEADER:
        raise BlockError(f"entry {count} at offset {pos}: truncated header "
                         f"({room} of {ENTRY_HEADER} bytes)")
    if st == BLOCK_DATA_PAST_END:
        raise BlockError(f"entry {count} at offset {pos}: data_len {ld32(p + pos)} runs past "
                         f"the end of the block ({room - ENTRY_HEADER} bytes left)")
    raise BlockError(f"entry {count} at offset {pos}: unknown entry type {p[pos + ENTRY_TYPE_AT]}")


cdef Py_ssize_t _check_nonempty(const uint8_t *p, size_t n) except -1:
    cdef Py_ssize_t k = _check_block(p, n)
    if k == 0:
        raise BlockError("empty block: no entries")
    return k


cdef class EntryLog:
    """Raft log entries [first_index, last_index] held in memory.

    Indexes below first_index are covered by a snapshot the caller keeps.
    """

    def __cinit__(self, uint64_t first_index=1):
        if first_index < 1:
            raise ValueError("first_index must be >= 1")
        self.first = first_index
        self.offs = <uint64_t *>malloc((MIN_ENTRIES + 1) * sizeof(uint64_t))
        self.terms = <uint64_t *>malloc(MIN_ENTRIES * sizeof(uint64_t))
        if self.offs == NULL or self.terms == NULL:
            raise MemoryError()
        self.idx_cap = MIN_ENTRIES
        self.offs[0] = 0
        # buf stays NULL until the first append: realloc(NULL, n) allocates.

    def __dealloc__(self):
        free(self.buf)
        free(self.offs)
        free(self.terms)

    cdef int _reserve(self, size_t nbytes, size_t nents) except -1:
        """Grow (geometrically) to hold nbytes of block and nents entries.
        On failure nothing changes, so callers reserve before they modify."""
        cdef size_t cap
        cdef void *p
        if nbytes > self.buf_cap:
            cap = max(nbytes, self.buf_cap * 2, <size_t>MIN_BUF)
            p = realloc(self.buf, cap)
            if p == NULL:
                raise MemoryError()
            self.buf = <uint8_t *>p
            self.buf_cap = cap
        if nents > self.idx_cap:
            cap = max(nents, self.idx_cap * 2)
            p = realloc(self.offs, (cap + 1) * sizeof(uint64_t))
            if p == NULL:
                raise MemoryError()
            self.offs = <uint64_t *>p
            p = realloc(self.terms, cap * sizeof(uint64_t))
            if p == NULL:
                raise MemoryError()
            self.terms = <uint64_t *>p
            # Only now: both arrays are at least cap long.
            self.idx_cap = cap
        return 0

    cdef void _index_from(self, size_t slot, size_t k, bint stamp, uint64_t term) noexcept:
        """Index k already-validated entries copied to buf at offs[slot],
        making them entries slot .. slot + k - 1 (and the last ones)."""
        cdef size_t i
        cdef uint64_t pos = self.offs[slot]
        for i in range(slot, slot + k):
            self.offs[i] = pos
            if stamp:
                st64(self.buf + pos + ENTRY_TERM_AT, term)
            self.terms[i] = ld64(self.buf + pos + ENTRY_TERM_AT)
            pos += ENTRY_HEADER + ld32(self.buf + pos)
        self.offs[slot + k] = pos
        self.n = slot + k
        self.buf_len = pos

    cdef void _shrink(self) noexcept:
        # Give memory back after a compaction left the buffers mostly empty
        # (a slow follower can balloon the log); a failed shrink is harmless.
        cdef size_t cap
        cdef void *p
        if self.buf_cap > MIN_BUF and self.buf_len * 4 < self.buf_cap:
            cap = max(self.buf_len * 2, <size_t>MIN_BUF)
            p = realloc(self.buf, cap)
            if p != NULL:
                self.buf = <uint8_t *>p
                self.buf_cap = cap
        if self.idx_cap > MIN_ENTRIES and self.n * 4 < self.idx_cap:
            cap = max(self.n * 2, <size_t>MIN_ENTRIES)
            p = realloc(self.offs, (cap + 1) * sizeof(uint64_t))
            if p == NULL:
                return
            self.offs = <uint64_t *>p
            p = realloc(self.terms, cap * sizeof(uint64_t))
            if p == NULL:
                # offs is already smaller, so idx_cap must follow it down;
                # terms keeps its larger block, which is fine.
                self.idx_cap = cap
                return
            self.terms = <uint64_t *>p
            self.idx_cap = cap

    cdef int _check_range(self, uint64_t lo, uint64_t hi) except -1:
        if lo > hi or lo < self.first or hi - self.first > self.n:
            raise IndexError(f"range [{lo}, {hi}) outside the log "
                             f"[{self.first}, {self.first + self.n})")
        return 0

    @property
    def first_index(self):
        return self.first

    @property
    def last_index(self):
        return self.first + self.n - 1

    @property
    def count(self):
        return self.n

    @property
    def nbytes(self):
        """Bytes of entry block held (headers included): what slice() of
        the whole log would return."""
        return self.buf_len

    def nbytes_from(self, uint64_t index):
        """Bytes of entry block held from entry index on (headers
        included); 0 past the end.  IndexError below first_index."""
        if index < self.first:
            raise IndexError(f"index {index} is before the log's first entry {self.first}")
        if index - self.first >= self.n:
            return 0
        return self.offs[self.n] - self.offs[index - self.first]

    def __len__(self):
        return self.n

    def __repr__(self):
        return (f"<EntryLog [{self.first}, {self.first + self.n - 1}] "
                f"{self.n} entries, {self.buf_len} bytes>")

    def term(self, uint64_t index):
        """The term of entry index; IndexError outside [first_index, last_index]."""
        if index < self.first or index - self.first >= self.n:
            raise IndexError(f"index {index} outside the log [{self.first}, "
                             f"{self.first + self.n - 1}]")
        return self.terms[index - self.first]

    def last_term(self):
        """The last entry's term, 0 when the log is empty."""
        return self.terms[self.n - 1] if self.n else 0

    def append(self, uint64_t index, block_obj not None):
        """Put block's entries at index, index + 1, ..., dropping every
        entry >= index first.  Returns the number appended."""
        cdef const uint8_t[::1] block = block_obj
        cdef size_t blen = block.shape[0]
        cdef const uint8_t *src = _ptr(block)
        cdef size_t k = _check_nonempty(src, blen)
        cdef size_t keep
        if index < self.first or index - self.first > self.n:
            raise ValueError(f"append at {index} outside [{self.first}, {self.first + self.n}]")
        keep = index - self.first
        self._reserve(self.offs[keep] + blen, keep + k)
        if keep < self.n:
            self._forget_slice()  # entries from index on are replaced
        memcpy(self.buf + self.offs[keep], src, blen)
        self._index_from(keep, k, False, 0)
        if type(block_obj) is bytes:
            # Immutable and now equal to these entries: what a follower
            # writes next is this very block.
            self.sliced, self.sliced_lo, self.sliced_hi = block_obj, index, index + k
        return k

    def append_stamped(self, const uint8_t[::1] block not None, uint64_t term):
        """Append block after the last entry, writing term into every entry
        header.  Returns (first, last) index of the appended entries."""
        cdef size_t blen = block.shape[0]
        cdef const uint8_t *src = _ptr(block)
        cdef size_t k = _check_nonempty(src, blen)
        cdef size_t at = self.n
        self._reserve(self.buf_len + blen, at + k)
        memcpy(self.buf + self.buf_len, src, blen)
        self._index_from(at, k, True, term)
        return (self.first + at, self.first + at + k - 1)

    def find_conflict(self, uint64_t index, const uint8_t[::1] block not None):
        """(conflict_index, byte_offset) of the first of block's entries (at
        index, index + 1, ...) that is past the log's end or has another
        term; (0, len(block)) if all are present.  Entries below
        first_index are covered by the snapshot and count as matching.
        An empty block gives (0, 0)."""
        cdef size_t blen = block.shape[0]
        cdef const uint8_t *src = _ptr(block)
        cdef size_t k = _check_block(src, blen)
        cdef size_t i, pos = 0
        cdef uint64_t idx = index
        if index < 1:
            raise ValueError("entry indexes start at 1")
        for i in range(k):
            if idx >= self.first:
                if (idx - self.first >= self.n
                        or self.terms[idx - self.first] != ld64(src + pos + ENTRY_TERM_AT)):
                    return (idx, pos)
            pos += ENTRY_HEADER + ld32(src + pos)
            idx += 1
        return (0, blen)

    def slice(self, uint64_t lo, uint64_t hi, uint64_t max_bytes=0):
        """(block, count): entries [lo, hi) as one block, cut before it
        would exceed max_bytes (0: no limit) but never empty if lo < hi."""
        self._check_range(lo, hi)
        if lo == hi:
            return (b"", 0)
        cdef size_t a = lo - self.first
        cdef size_t b = hi - self.first
        cdef size_t j_lo, j_hi, mid
        cdef uint64_t base = self.offs[a]
        if max_bytes and self.offs[b] - base > max_bytes:
            # Offsets increase, so binary-search the largest end j with
            # offs[j] - base <= max_bytes; j = a + 1 if even one entry is larger.
            j_lo = a + 1
            j_hi = b - 1
            while j_lo < j_hi:
                mid = j_lo + (j_hi - j_lo + 1) // 2
                if self.offs[mid] - base <= max_bytes:
                    j_lo = mid
                else:
                    j_hi = mid - 1
            b = j_lo
        if self.sliced is not None and self.sliced_lo == lo and self.sliced_hi == self.first + b:
            return (self.sliced, b - a)
        block = PyBytes_FromStringAndSize(<char *>self.buf + base, self.offs[b] - base)
        self.sliced, self.sliced_lo, self.sliced_hi = block, lo, self.first + b
        return (block, b - a)

    cdef void _forget_slice(self) noexcept:
        self.sliced = None

    def compact(self, uint64_t index):
        """Drop entries <= index; first_index becomes index + 1.  With index
        >= last_index the log empties (restoring a snapshot at index).
        Indexes below first_index are already gone: a no-op."""
        cdef size_t drop, i
        cdef uint64_t base
        if index < self.first:
            return
        self._forget_slice()  # the indexes it names may be reused after a reset
        if index - self.first >= self.n:
            self.n = 0
            self.buf_len = 0
            self.offs[0] = 0
        else:
            drop = index + 1 - self.first
            base = self.offs[drop]
            memmove(self.buf, self.buf + base, self.buf_len - base)
            for i in range(self.n - drop + 1):
                self.offs[i] = self.offs[i + drop] - base
            memmove(self.terms, self.terms + drop, (self.n - drop) * sizeof(uint64_t))
            self.n -= drop
            self.buf_len -= base
        self.first = index + 1
        self._shrink()

    def find_type(self, uint64_t lo, uint64_t hi, uint8_t etype):
        """[(index, data), ...] of the entries in [lo, hi) whose type is
        etype.  The walk over headers stays in C: only matches (membership
        changes, which are rare) become Python objects."""
        self._check_range(lo, hi)
        cdef list found = []
        cdef size_t i
        cdef const uint8_t *p
        for i in range(lo - self.first, hi - self.first):
            p = self.buf + self.offs[i]
            if p[ENTRY_TYPE_AT] == etype:
                found.append((self.first + i,
                              PyBytes_FromStringAndSize(<char *>p + ENTRY_HEADER, ld32(p))))
        return found

    def scan_terms(self, uint64_t lo, uint64_t hi):
        """[(start_index, term), ...]: one pair per run of equal terms in [lo, hi)."""
        self._check_range(lo, hi)
        cdef list runs = []
        cdef size_t i
        cdef uint64_t t
        for i in range(lo - self.first, hi - self.first):
            t = self.terms[i]
            if i == lo - self.first or t != self.terms[i - 1]:
                runs.append((self.first + i, t))
        return runs

    def term_search(self, uint64_t hint_index, uint64_t hint_term):
        """The largest index <= hint_index whose term <= hint_term (etcd's
        findConflictByTerm).  Indexes past last_index are not candidates;
        indexes below first_index have unknown terms (snapshot) and count as
        possible matches, so the answer is at least min(hint_index,
        first_index - 1), which is 0 for a log that starts at 1."""
        cdef uint64_t i = min(hint_index, self.first + self.n - 1)
        while i >= self.first:
            if self.terms[i - self.first] <= hint_term:
                return i
            i -= 1
        return i


# Module helpers: for tests and paths off the hot loop.

def block_count(const uint8_t[::1] block not None):
    """The number of entries in block (0 for b""); BlockError if malformed."""
    return _check_block(_ptr(block), block.shape[0])


def encode_entries(entries):
    """Build a block from (term, type, data) triples."""
    cdef size_t total = 0, pos = 0
    cdef const uint8_t[::1] data
    cdef uint64_t term
    cdef size_t dlen
    cdef uint8_t *out
    items = list(entries)
    for _, typ, d in items:
        if not 0 <= typ <= ENTRY_TYPE_MAX:
            raise ValueError(f"unknown entry type {typ}")
        dlen = len(d)
        if dlen > 0xFFFFFFFF:
            raise ValueError("entry data longer than 4 GiB - 1")
        total += ENTRY_HEADER + dlen
    res = PyBytes_FromStringAndSize(NULL, total)
    out = <uint8_t *>PyBytes_AS_STRING(res)
    for term, typ, d in items:
        data = d
        dlen = data.shape[0]
        st32(out + pos, <uint32_t>dlen)
        st64(out + pos + ENTRY_TERM_AT, term)
        out[pos + ENTRY_TYPE_AT] = <uint8_t>(<int>typ)
        if dlen:
            memcpy(out + pos + ENTRY_HEADER, &data[0], dlen)
        pos += ENTRY_HEADER + dlen
    return res


def decode_entries(const uint8_t[::1] block not None):
    """[(term, type, data bytes), ...] of a block; BlockError if malformed."""
    cdef const uint8_t *p = _ptr(block)
    cdef Py_ssize_t k = _check_block(p, block.shape[0])
    cdef Py_ssize_t i
    cdef size_t pos = 0
    cdef uint32_t dlen
    cdef list out = []
    for i in range(k):
        dlen = ld32(p + pos)
        out.append((ld64(p + pos + ENTRY_TERM_AT), p[pos + ENTRY_TYPE_AT],
                    PyBytes_FromStringAndSize(<const char *>p + pos + ENTRY_HEADER, dlen)))
        pos += ENTRY_HEADER + dlen
    return out


def block_terms(const uint8_t[::1] block not None):
    """[(entry_number, term), ...]: one pair per run of equal terms, entry
    numbers counted from 0 within the block; BlockError if malformed."""
    cdef const uint8_t *p = _ptr(block)
    cdef Py_ssize_t k = _check_block(p, block.shape[0])
    cdef Py_ssize_t i
    cdef size_t pos = 0
    cdef uint64_t t, prev = 0
    cdef list runs = []
    for i in range(k):
        t = ld64(p + pos + ENTRY_TERM_AT)
        if i == 0 or t != prev:
            runs.append((i, t))
        prev = t
        pos += ENTRY_HEADER + ld32(p + pos)
    return runs
