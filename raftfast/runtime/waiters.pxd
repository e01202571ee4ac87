# The compiled layout of waiters.py (Cython's augmenting .pxd).

cdef class _WriteWaiter:
    cdef public object first, last, term, callback, deadline
    cdef public list results


cdef class WriteWaiters:
    cdef public object queue


cdef class _ReadWaiter:
    cdef public object floor, callback, deadline, index


cdef class ReadWaiters:
    cdef public object confirming, to_apply, tokens, served


cdef class _TransferWaiter:
    cdef public object target, callback, deadline


cdef class TransferWaiters:
    cdef public list pending
