# The compiled layout of log.py (Cython's augmenting .pxd).

cdef class RaftLog:
    cdef public object entries, snap_index, snap_term, committed, applied, written, persisted
    cdef public object _slice_key, _slice_val

    # Called from C by the core, once or more per message.
    cpdef last_term(self)
    cpdef term(self, index)
    cpdef match_term(self, index, term)
    cpdef is_up_to_date(self, last_index, last_term)
    cpdef append_proposal(self, block, term)
    cpdef maybe_append(self, prev_index, prev_term, commit, block, count)
    cpdef commit_to(self, index)
    cpdef conflict_hint(self, index, term)
    cpdef unwritten(self, max_bytes=*)
    cpdef unapplied(self, max_bytes=*)
    cpdef slice(self, lo, hi, max_bytes=*)
