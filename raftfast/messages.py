"""The values that cross the sans-IO boundary: Raft messages, hard state,
and the entry block format.

A message is one object per batch, never per entry: an AppendEntries
carries its entries as one contiguous block (format below) plus a count.

Entry block format, version 1 (the same bytes in memory, on the wire and
inside log records): entries back to back, each

    u32 LE  data_len
    u64 LE  term
    u8      type        (ENTRY_NORMAL, ENTRY_NOOP, ENTRY_CONFIG)
    data_len bytes of data

The C index over a block lives in ext/entrylog.pyx.
"""

ENTRY_HEADER_SIZE = 13

# Entry types.
ENTRY_NORMAL = 0  # a state machine command
ENTRY_NOOP = 1    # a new leader's empty entry, to commit its predecessors' entries
ENTRY_CONFIG = 2  # a membership change (data is the new configuration)

# Message types.  The numbers are part of the wire format: never reuse one.
MSG_APPEND = 1           # leader -> follower: index=prev index, log_term=prev term, commit, entries
MSG_APPEND_RESP = 2      # index=last index now known to match (or, with reject, the rejected prev index);
                         # hint=follower's suggested next probe index, log_term=term at hint
MSG_VOTE = 3             # candidate: index=last log index, log_term=its term;
                         # context=VOTE_TRANSFER when a leadership transfer asked for it
MSG_VOTE_RESP = 4        # reject=True when the vote is refused
MSG_PREVOTE = 5          # reserved for PreVote
MSG_PREVOTE_RESP = 6
MSG_HEARTBEAT = 7        # leader: commit (capped at what the follower is known to have),
                         # context=the heartbeat round (confirms ReadIndex reads)
MSG_HEARTBEAT_RESP = 8   # context echoed
MSG_TIMEOUT_NOW = 9      # leader -> the transfer target: campaign now (no PreVote)
MSG_SNAPSHOT = 10        # reserved for InstallSnapshot

# MSG_VOTE's context when a leadership transfer started the election: voters
# grant it even while they still hear from the current leader (which asked
# for it), where they would otherwise ignore a vote request.
VOTE_TRANSFER = 1

MSG_NAMES = {
    MSG_APPEND: "append", MSG_APPEND_RESP: "append_resp", MSG_VOTE: "vote",
    MSG_VOTE_RESP: "vote_resp", MSG_PREVOTE: "prevote", MSG_PREVOTE_RESP: "prevote_resp",
    MSG_HEARTBEAT: "heartbeat", MSG_HEARTBEAT_RESP: "heartbeat_resp",
    MSG_TIMEOUT_NOW: "timeout_now", MSG_SNAPSHOT: "snapshot",
}
RESPONSE_TYPES = frozenset({MSG_APPEND_RESP, MSG_VOTE_RESP, MSG_PREVOTE_RESP, MSG_HEARTBEAT_RESP})


class Message:
    """One Raft message.  `to` is not sent on the wire: the connection names
    the receiver, so one encoded AppendEntries serves every follower."""

    __slots__ = ("type", "to", "frm", "term", "index", "log_term", "commit",
                 "reject", "hint", "context", "entries", "count")

    def __init__(self, type, to=0, frm=0, term=0, index=0, log_term=0, commit=0,
                 reject=False, hint=0, context=0, entries=None, count=0):
        self.type = type
        self.to = to
        self.frm = frm
        self.term = term
        self.index = index
        self.log_term = log_term
        self.commit = commit
        self.reject = reject
        self.hint = hint
        self.context = context
        self.entries = entries  # bytes of an entry block, or None
        self.count = count      # number of entries in `entries`

    def __eq__(self, other):
        if not isinstance(other, Message):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self.__slots__)

    def __repr__(self):
        name = MSG_NAMES.get(self.type, str(self.type))
        extra = f" entries={self.count}/{len(self.entries)}B" if self.entries else ""
        rej = " reject" if self.reject else ""
        return (f"<{name} {self.frm}->{self.to} t{self.term} i{self.index} lt{self.log_term} "
                f"c{self.commit} h{self.hint} x{self.context}{rej}{extra}>")


class HardState:
    """What must be durable before a node answers: term, vote, and the
    commit index (kept so a restart can apply without waiting for a leader)."""

    __slots__ = ("term", "vote", "commit")

    def __init__(self, term=0, vote=0, commit=0):
        self.term = term
        self.vote = vote
        self.commit = commit

    def __eq__(self, other):
        return (isinstance(other, HardState) and self.term == other.term
                and self.vote == other.vote and self.commit == other.commit)

    def __repr__(self):
        return f"HardState(term={self.term}, vote={self.vote}, commit={self.commit})"
