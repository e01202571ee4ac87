# The compiled layout of log.py (Cython's augmenting .pxd).

cdef class RaftLog:
    cdef public object entries, snap_index, snap_term, committed, applied, written, persisted
    cdef public object _slice_key, _slice_val
