# The compiled layout of batcher.py (Cython's augmenting .pxd): connections
# call into the batcher through C, once per request run.
from raftfast.server.replies cimport Slot

cdef class Batcher:
    cdef public object loop, server, driver, _handle
    cdef public list runs, read_runs
    cdef public bytearray buf, read_buf
    cdef public Py_ssize_t max_entries, max_bytes, count, read_count
    cdef public double linger
    cdef public long long proposals, entries_proposed, throttles
    cdef public Py_ssize_t window_bytes, unanswered_bytes
    cdef public list throttled
    cdef public object commit_times

    cpdef room(self)
    cpdef added(self, conn, Py_ssize_t n)
    cpdef added_reads(self, conn, Py_ssize_t n)
    cpdef _arm(self)
    cpdef flush(self)
    cpdef bint over_window(self)
    cpdef throttle(self, conn)
    cpdef _answered(self, Py_ssize_t nbytes)
    cpdef _resume_if_room(self)
