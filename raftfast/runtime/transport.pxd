# The compiled layout of transport.py (Cython's augmenting .pxd): every
# frame sent and received reads these fields.

cdef class _Peer:
    cdef public object id, addr, proto, task, timer, backoff, version, failure
    cdef public bint writable, dialed


cdef class PeerTransport:
    cdef public object loop, node_id, cluster_id, on_messages, max_frame_size, log
    cdef public object write_buffer_limit, _addresses, _inbound, _server, _unix_inode
    cdef public object listen_address, client_url, on_peer_state, _client_urls, hello, secret, tls
    cdef public dict _peers
    cdef public bint closed
    cdef public long long frames_sent, bytes_sent, frames_dropped, frames_received
    cdef public long long bytes_received, reads, dials, reconnects, accepted, refused
