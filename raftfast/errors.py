"""The errors the public API raises: one base, and the two outcomes a
caller of a replicated system must tell apart."""

__all__ = ["RaftError", "NotLeader", "OutcomeUnknown"]


class RaftError(Exception):
    """Base of every error raftfast's public API raises on purpose."""


class NotLeader(RaftError):
    """No leader could take the request within its timeout: nothing was
    done.  leader_id is the last leader this side knew of (0 if none);
    leader_url its address when known."""

    def __init__(self, message="no leader", leader_id=0, leader_url=None):
        super().__init__(message)
        self.leader_id = leader_id
        self.leader_url = leader_url


class OutcomeUnknown(RaftError):
    """The request was sent, but whether it took effect is not known (its
    leader lost leadership, no quorum answered in time, the connection
    dropped before the reply).  It may still take effect: do not assume
    either way."""
