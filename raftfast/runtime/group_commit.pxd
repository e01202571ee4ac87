# The compiled layout of group_commit.py (Cython's augmenting .pxd).  The
# fsync thread reads and writes some of these fields too, always holding
# the GIL (the log store lets go of it only inside the fsync itself).

cdef class GroupCommit:
    cdef public object loop, _sync, _release, _fatal, _wake, clock
    cdef public bint durable, sync_in_thread, inline, idle, syncing, stopped
    cdef public double inline_max_s, last_sync_s
    cdef public long long written, synced, _sync_upto
    cdef public object held, _wakeup, _thread
    cdef public long long fsyncs, thread_wakeups, inline_syncs
    cdef public object sync_times

    # Called from C once per batch (the loop's side only; the fsync
    # thread's loop stays a def).
    cpdef wrote(self)
    cpdef hold(self, msgs)
    cpdef settle(self)
    cpdef _release_durable(self)
    cpdef _start_sync(self)
    cpdef _timed_sync(self)
    cpdef _sync_on_loop(self, upto)
    cpdef _sync_done(self, upto, error)
