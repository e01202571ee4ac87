# The compiled layout of replies.py (Cython's augmenting .pxd): a slot is a
# C struct, so filling and testing one costs no attribute lookups.

cdef class Slot:
    cdef public object value
    cdef public bint resp3
    cdef public bint raw
