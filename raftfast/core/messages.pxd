# The compiled layout of messages.py (Cython's augmenting .pxd): a message is
# a C struct, read and written without attribute lookups.  Fields stay Python
# objects: most readers are untyped code, which would otherwise build a new
# int on every read.

cdef class Message:
    cdef public object type, to, frm, term, index, log_term, commit, hint, context
    cdef public object entries, count
    cdef public bint reject


cdef class HardState:
    cdef public object term, vote, commit
