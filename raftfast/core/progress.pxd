# The compiled layout of progress.py (Cython's augmenting .pxd).

cdef class Inflights:
    cdef public object max_count, max_bytes, _items, bytes


cdef class Progress:
    cdef public object match, next, state, acked_round, pending_snapshot, stalled_beats
    cdef public bint probe_sent, recent_active, flow_paused, snapshot_delivered
    cdef public Inflights inflights
