"""The sans-IO Raft core: no sockets, files or clocks; see raft.py."""
from raftfast.core.log import LogPanic, RaftLog
from raftfast.core.progress import PROBE, REPLICATE, SNAPSHOT, Inflights, Progress
from raftfast.core.raft import (CANDIDATE, FOLLOWER, LEADER, PRECANDIDATE, ConfChangeBusy,
                                ConfChangeInvalid, CoreConfig, NotLeader, ProposalDropped, Raft,
                                Ready, TransferInProgress)

__all__ = ["Raft", "Ready", "CoreConfig", "ConfChangeBusy", "ConfChangeInvalid", "NotLeader", "ProposalDropped", "TransferInProgress", "LogPanic", "RaftLog", "Progress",
           "Inflights", "FOLLOWER", "PRECANDIDATE", "CANDIDATE", "LEADER", "PROBE", "REPLICATE", "SNAPSHOT"]
