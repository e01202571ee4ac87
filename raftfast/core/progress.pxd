# The compiled layout of progress.py (Cython's augmenting .pxd).

cdef class Inflights:
    cdef public object max_count, max_bytes, _items, bytes

    cpdef add(self, last_index, nbytes)
    cpdef free_le(self, index)
    cpdef full(self)
    cpdef reset(self)


cdef class Progress:
    cdef public object match, next, state, acked_round, pending_snapshot, stalled_beats
    cdef public bint probe_sent, recent_active, flow_paused, snapshot_delivered
    cdef public Inflights inflights

    # Called from C by the core per append sent and per acknowledgement.
    cpdef become_probe(self)
    cpdef become_replicate(self)
    cpdef become_snapshot(self, index)
    cpdef maybe_update(self, index)
    cpdef maybe_decr_to(self, rejected, hint)
    cpdef sent_entries(self, last_index, nbytes)
    cpdef is_paused(self)
