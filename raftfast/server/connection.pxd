# The compiled layout of connection.py (Cython's augmenting .pxd): the
# per-request state of a connection is C fields, and the batcher is called
# through C.
cimport cython
from raftfast.server.batcher cimport Batcher
from raftfast.server.replies cimport Slot

cdef class ClientProtocol:
    cdef public object server, transport, parser, replies, name, id, stream
    cdef public bint resp3, closing, parsing_reads, held, paused_by_client, throttled
    cdef public bint authenticated, read_since_sweep
    cdef public long long idle_sweeps
    cdef public long long last_write
    cdef public Py_ssize_t reads_in_flight

    @cython.locals(batcher=Batcher)
    cpdef _parse_buffered(self)
    cpdef _received(self, data)
    cpdef unthrottle(self)
    cpdef _resume_reading(self)
    cpdef pending(self)
    @cython.locals(slot=Slot)
    cpdef flush(self)
