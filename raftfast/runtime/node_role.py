"""The role a node shows an operator (INFO's raft_role, the metrics'
raftfast_role): the core's role, except that a follower outside the
voters says why it is not one."""
from raftfast.core import CANDIDATE, FOLLOWER, LEADER, PRECANDIDATE

__all__ = ["ROLES", "role_of"]

# Every role role_of can name.
ROLES = (LEADER, FOLLOWER, CANDIDATE, PRECANDIDATE, "learner", "joining")


def role_of(core):
    role = core.role
    if core.id not in core.voters and role == FOLLOWER:
        # A node removed and left running is a follower of nobody, not
        # one waiting to join (raft_voters shows it is out).
        if core.id in core.learners:
            return "learner"
        if not core.in_a_configuration:
            return "joining"
    return role
