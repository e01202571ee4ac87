# The compiled layout of driver.py (Cython's augmenting .pxd): the Ready
# pass reaches the core, the group commit and the waiters through C fields.
from raftfast.core.raft cimport Raft
from raftfast.runtime.group_commit cimport GroupCommit
from raftfast.runtime.waiters cimport ReadWaiters, WriteWaiters

cdef class RaftDriver:
    cdef public object loop, clock, cfg, storage, state_machine, transport, on_fatal
    cdef public object tick_s, request_timeout, transfer_timeout, election_timeout_s
    cdef public object memory_report, voter_memory  # --maxmemory (server.memory)
    cdef public object on_tick  # called on every tick (the server's memory check)
    cdef public Raft core
    cdef public WriteWaiters writes
    cdef public ReadWaiters reads
    cdef public GroupCommit group_commit
    cdef public object transfers, peer_addresses, snapshots
    cdef public object cluster_clock, forwarding, versions, story
    cdef public object _scheduled, _tick_handle, _ticks_due_from
    cdef public bint _stopped, _was_leader
    # Counters for INFO stats and the benchmarks.
    cdef public long long applied_entries, appends_sent, entries_sent, append_frames_encoded
    cdef public long long entries_written, read_batches, ready_passes

    # The methods a batch goes through, called from C.
    cpdef schedule(self)
    cpdef process_now(self)
    cpdef _process_instead_of_scheduled(self)
    cpdef step_read(self, msgs)
    cpdef propose(self, block, count, callback)
    cpdef _process(self)
    cpdef _send(self, msgs)
    cpdef _release(self, msgs)
    cpdef _apply(self, first, block, count)
