from libc.stdint cimport uint8_t, uint64_t


cdef class EntryLog:
    # Invariants: entry i (0 <= i < n) has Raft index first + i, starts at
    # byte offs[i] of buf and has term terms[i]; offs holds n + 1 values,
    # increasing, with offs[0] == 0 and offs[n] == buf_len, so entry i spans
    # [offs[i], offs[i + 1]).  Capacities: buf_cap bytes, idx_cap entries.
    cdef uint8_t *buf
    cdef size_t buf_len
    cdef size_t buf_cap
    cdef uint64_t *offs
    cdef uint64_t *terms
    cdef size_t n
    cdef size_t idx_cap
    cdef uint64_t first
    # The last block slice() handed out (or append() was given), entries
    # [sliced_lo, sliced_hi): a leader asks for the same new entries once
    # per follower and once to write them, so one bytes object serves all
    # (and the driver encodes one frame for every follower).  Dropped when
    # entries in it may change (an overwriting append, compact).
    cdef object sliced
    cdef uint64_t sliced_lo
    cdef uint64_t sliced_hi

    cdef int _reserve(self, size_t nbytes, size_t nents) except -1
    cdef void _index_from(self, size_t slot, size_t k, bint stamp, uint64_t term) noexcept
    cdef void _shrink(self) noexcept
    cdef int _check_range(self, uint64_t lo, uint64_t hi) except -1
    cdef void _forget_slice(self) noexcept
