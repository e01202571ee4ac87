# The compiled layout of peer_connections.py (Cython's augmenting .pxd).

cdef class DialedConnection:
    cdef public object owner, peer, transport, decoder, timer, failure, nonce
    cdef public bint acked, paused


cdef class AcceptedConnection:
    cdef public object owner, transport, decoder, peer_id, timer, who, proving
