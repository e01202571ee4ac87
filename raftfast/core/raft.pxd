# The compiled layout of raft.py (Cython's augmenting .pxd): the core's
# state is C fields, the log and the Ready its passes fill are typed, so a
# batch's bookkeeping reads them without lookups.
from raftfast.core.log cimport RaftLog
from raftfast.core.messages cimport HardState, Message
from raftfast.core.progress cimport Progress


cdef class Ready:
    cdef public object hard_state, committed, snapshot, _written_to, _applied_to
    cdef public list entries, messages, persist_messages, read_states


cdef class Raft:
    cdef public object id, cfg, snapshot_index, snapshot_term, _restored
    cdef public object voters, learners, urls, _known_ids, conf_version, _conf_hist
    cdef public object cluster_version
    cdef public object term, vote, leader_id, role, rng
    cdef public long long elections_started, leader_changes
    cdef public dict progress, votes
    cdef public object election_elapsed, heartbeat_elapsed, randomized_timeout
    cdef public list _msgs, _persist_msgs
    cdef public HardState _prev_hs
    cdef public object tick_count, read_round, _reads_before_commit, _read_queue
    cdef public object _reads_ready, _round_ticks, _lease_until, _lease_blocked_until
    cdef public object _votes_held_until
    cdef public bint _committed_in_term, _read_round_wanted, _timeout_now_sent
    cdef public object lead_transferee, _transfer_elapsed, _step, _tick
    # Rare transitions for the operator's log, drained by the runtime.
    cdef public list events
    cdef public object _last_leader, _last_leader_term, _conf_reported
    cdef public bint _conf_watch
    cdef public RaftLog log

    # The methods a batch goes through, called from C (a subclass's
    # override still wins: the mutation tests rely on that).
    cpdef propose(self, block)
    cpdef _conf_after_write(self, lo, hi)
    cpdef step(self, m)
    cpdef _step_self(self, m)
    cpdef _step_follower(self, m)
    cpdef _step_leader(self, m)
    cpdef _handle_append(self, m)
    cpdef _on_persisted(self, index, term)
    cpdef _maybe_commit(self)
    cpdef _broadcast_append(self, send_empty=*)
    cpdef _send_appends_to(self, peer, send_empty=*)
    cpdef _send_append(self, peer, send_empty=*)
    cpdef _send(self, m)
    cpdef _send_after_persist(self, m)
    cpdef has_ready(self)
    cpdef _hard_state_changed(self)
    cpdef ready(self)
    cpdef advance(self, rd)
