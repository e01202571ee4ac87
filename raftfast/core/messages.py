"""The values that cross the sans-IO boundary: Raft messages, hard state,
and the entry block format.

A message is one object per batch, never per entry: an AppendEntries
carries its entries as one contiguous block (format below) plus a count.

Entry block format, version 1 (the same bytes in memory, on the wire and
inside log records): entries back to back, each

    u32 LE  data_len
    u64 LE  term
    u8      type        (ENTRY_NORMAL, ENTRY_NOOP, ENTRY_CONFIG, ENTRY_TIME)
    data_len bytes of data

The C index over a block lives in ext/entrylog.pyx.
"""

ENTRY_HEADER_SIZE = 13

# Entry types.
ENTRY_NORMAL = 0  # a state machine command
ENTRY_NOOP = 1    # a new leader's empty entry, to commit its predecessors' entries
ENTRY_CONFIG = 2  # a membership change (data is the new configuration)
ENTRY_TIME = 3    # cluster time from here on in log order (data: u64 LE milliseconds);
                  # the leader's runtime writes one ahead of a batch when its clock moved

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
MSG_SNAPSHOT = 10        # InstallSnapshot between core and runtime, never on the wire as such:
                         # leader core -> runtime: "stream the snapshot at index (log_term) to `to`";
                         # runtime -> follower core: "the snapshot at index (log_term) from `frm`
                         # is received, checked and loaded"; entries = its meta (a configuration)
MSG_SNAPSHOT_CHUNK = 11  # leader -> follower, on the wire: a piece of the snapshot file
MSG_SNAPSHOT_ACK = 12    # follower -> leader: how far the snapshot file has arrived
# Forwarding (protocol v3), between runtimes, never stepped into the core:
MSG_FORWARD = 13         # follower -> leader: propose `entries` (count) for me; context=request id
MSG_FORWARD_RESP = 14    # leader -> follower: proposed as index..commit in term log_term, or
                         # reject (hint=the leader id it knows of, 0 if none); context echoed
MSG_READ_INDEX = 15      # follower -> leader: confirm a read for me; context=request id
MSG_READ_INDEX_RESP = 16  # leader -> follower: index=serve after applying this far, hint=the
                          # read's cluster time; or reject (not leader); context echoed

# MSG_VOTE's context when a leadership transfer started the election: voters
# grant it even while they still hear from the current leader (which asked
# for it), where they would otherwise ignore a vote request.
VOTE_TRANSFER = 1

MSG_NAMES = {
    MSG_APPEND: "append", MSG_APPEND_RESP: "append_resp", MSG_VOTE: "vote",
    MSG_VOTE_RESP: "vote_resp", MSG_PREVOTE: "prevote", MSG_PREVOTE_RESP: "prevote_resp",
    MSG_HEARTBEAT: "heartbeat", MSG_HEARTBEAT_RESP: "heartbeat_resp",
    MSG_TIMEOUT_NOW: "timeout_now", MSG_SNAPSHOT: "snapshot",
    MSG_SNAPSHOT_CHUNK: "snapshot_chunk", MSG_SNAPSHOT_ACK: "snapshot_ack",
    MSG_FORWARD: "forward", MSG_FORWARD_RESP: "forward_resp", MSG_READ_INDEX: "read_index",
    MSG_READ_INDEX_RESP: "read_index_resp",
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


# ------------------------------------------------------------ configuration
#
# A membership configuration: the data of an ENTRY_CONFIG entry, and the
# opaque `meta` of a snapshot (the configuration in effect at its index).
# Always the whole configuration, never a delta: applying one twice, or
# after a restart, gives the same result.  Version 1, little-endian:
#
#     u8 version (1) | u32 member count
#     member*: u64 id | u8 role (CONF_VOTER, CONF_LEARNER) | u16 url length | url (UTF-8)
#
# Version 2 is the same followed by a u16 cluster version (2 and up): the
# release whose formats every member reads (docs/operations.md, "Rolling
# upgrade").  A configuration at cluster version 1 is written as version 1,
# which raftfast 0.1.0 reads; the cluster version rises only by a
# configuration entry, once every member speaks the newer peer protocol.
#
# Members come sorted by id; `url` is the default address for dialing the
# member's --listen ("" when the configuration does not know it, e.g. the
# founding members, which every node dials by its --peer flags).

CONF_FORMAT = 1
CONF_FORMAT_VERSIONED = 2
CONF_VOTER = 1
CONF_LEARNER = 2
_ID_LIMIT = 1 << 63


class ConfigFormatError(ValueError):
    """Bytes that are not a well-formed configuration."""


def encode_config(voters, learners=(), urls=None, cluster_version=1):
    """The configuration as bytes (see above).  A node may not be a voter
    and a learner at once; ids are 1..2^63-1."""
    if not 1 <= cluster_version <= 0xFFFF:
        raise ValueError(f"cluster version {cluster_version} is out of range 1..65535")
    voters = frozenset(voters)
    learners = frozenset(learners)
    both = voters & learners
    if both:
        raise ValueError(f"node {min(both)} cannot be a voter and a learner at once")
    urls = urls or {}
    fmt = CONF_FORMAT if cluster_version == 1 else CONF_FORMAT_VERSIONED
    out = [fmt.to_bytes(1, "little"), (len(voters) + len(learners)).to_bytes(4, "little")]
    for nid in sorted(voters | learners):
        if not 0 < nid < _ID_LIMIT:
            raise ValueError(f"node id {nid} is out of range 1..2^63-1")
        url = urls.get(nid, "").encode("utf-8")
        if len(url) > 0xFFFF:
            raise ValueError(f"node {nid}: address is longer than 65535 bytes")
        out.append(nid.to_bytes(8, "little"))
        out.append((CONF_VOTER if nid in voters else CONF_LEARNER).to_bytes(1, "little"))
        out.append(len(url).to_bytes(2, "little"))
        out.append(url)
    if fmt == CONF_FORMAT_VERSIONED:
        out.append(cluster_version.to_bytes(2, "little"))
    return b"".join(out)


def decode_config(data):
    """(voters, learners, urls) from encode_config's bytes: two frozensets
    and a dict id -> url holding only the urls that were given.  Raises
    ConfigFormatError on anything else."""
    data = bytes(data)
    n = len(data)
    if n < 5:
        raise ConfigFormatError(f"configuration of {n} bytes is too short")
    if data[0] == CONF_FORMAT_VERSIONED:
        if n < 7 or int.from_bytes(data[n - 2:], "little") < 2:
            raise ConfigFormatError("configuration of format 2 without a cluster version "
                                    "of 2 or more")
        n -= 2   # the members end before the cluster version
    elif data[0] != CONF_FORMAT:
        raise ConfigFormatError(f"configuration format {data[0]} is not supported "
                                f"(this build reads {CONF_FORMAT} and {CONF_FORMAT_VERSIONED})")
    count = int.from_bytes(data[1:5], "little")
    voters, learners, urls = set(), set(), {}
    pos = 5
    prev = 0
    for _ in range(count):
        if pos + 11 > n:
            raise ConfigFormatError("configuration ends inside a member")
        nid = int.from_bytes(data[pos:pos + 8], "little")
        role = data[pos + 8]
        ulen = int.from_bytes(data[pos + 9:pos + 11], "little")
        pos += 11
        if not prev < nid < _ID_LIMIT:
            raise ConfigFormatError(f"member id {nid} is out of order or out of range")
        prev = nid
        if pos + ulen > n:
            raise ConfigFormatError("configuration ends inside an address")
        if ulen:
            try:
                urls[nid] = data[pos:pos + ulen].decode("utf-8")
            except UnicodeDecodeError:
                raise ConfigFormatError(f"member {nid}: address is not UTF-8") from None
        pos += ulen
        if role == CONF_VOTER:
            voters.add(nid)
        elif role == CONF_LEARNER:
            learners.add(nid)
        else:
            raise ConfigFormatError(f"member {nid}: unknown role {role}")
    if pos != n:
        raise ConfigFormatError(f"{n - pos} bytes after the last member")
    return frozenset(voters), frozenset(learners), urls


def config_cluster_version(data):
    """The cluster version of a configuration that decode_config accepted."""
    if len(data) > 2 and data[0] == CONF_FORMAT_VERSIONED:
        return int.from_bytes(data[len(data) - 2:], "little")
    return 1
