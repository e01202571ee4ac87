"""The Raft protocol as a deterministic, sans-IO state machine.

Inputs: tick(), step(message), propose(block).  Output: a Ready (see
ready()), which the runtime carries out (persist, send, apply) before it
calls advance(ready).  No clocks, sockets or files here; randomness comes
from a seeded generator, so a schedule replays exactly.

Shape borrowed from etcd-io/raft: roles are swapped methods (self._step,
self._tick), time is counted in ticks, and a message that may only be sent
once this node's own state is durable (a vote, an append acknowledgement)
goes into `persist_messages` rather than `messages`.  Durability of this
node's own writes comes back as an MSG_APPEND_RESP addressed to itself,
which the runtime delivers after its fsync; that is how a leader counts
itself toward a commit only once its own log is on disk (Raft thesis
§10.2.1) while its appends to followers go out in parallel.

Entries are never Python objects here: the log is an EntryLog (a C index
over one buffer); messages carry entry blocks and counts.

Why it is long: the protocol's rules depend on one another (a vote on the
log's last term, a commit on the quorum and the leader's own term, a
transfer on the target's match, a configuration change on what is
committed), and they read best side by side; what stands on its own
already lives beside it (log.py, progress.py, quorum.py, messages.py).
"""
import collections
import random

from raftfast.core.messages import (ENTRY_CONFIG, ENTRY_HEADER_SIZE, ENTRY_NOOP, MSG_APPEND,
                                    MSG_APPEND_RESP, MSG_HEARTBEAT, MSG_HEARTBEAT_RESP, MSG_PREVOTE,
                                    MSG_PREVOTE_RESP, MSG_SNAPSHOT, MSG_TIMEOUT_NOW, MSG_VOTE,
                                    MSG_VOTE_RESP, VOTE_TRANSFER, ConfigFormatError, HardState,
                                    Message, config_cluster_version, decode_config, encode_config)

from raftfast.core.log import LogPanic, RaftLog
from raftfast.core.progress import PROBE, REPLICATE, SNAPSHOT, Progress
from raftfast.core.quorum import VOTE_LOST, VOTE_WON, committed_index, vote_result

FOLLOWER = "follower"
PRECANDIDATE = "precandidate"
CANDIDATE = "candidate"
LEADER = "leader"

NOOP_BLOCK = (0).to_bytes(4, "little") + (0).to_bytes(8, "little") + bytes([ENTRY_NOOP])
assert len(NOOP_BLOCK) == ENTRY_HEADER_SIZE


class NotLeader(Exception):
    """A proposal reached a node that is not the leader."""

    def __init__(self, leader_id):
        super().__init__(f"not the leader (leader is {leader_id or 'unknown'})")
        self.leader_id = leader_id


class ProposalDropped(Exception):
    """The leader holds too many uncommitted entries to take more (it may
    have lost its quorum); nothing was proposed."""


class TransferInProgress(Exception):
    """The leader is handing leadership over and takes no proposals until
    that completes or is abandoned; nothing was proposed."""

    def __init__(self, target):
        super().__init__(f"leadership transfer to node {target} in progress")
        self.target = target


class ConfChangeBusy(Exception):
    """A membership change cannot start now (one is still uncommitted, or
    the leader has not yet committed an entry of its own term); nothing
    was proposed.  Retrying later is right."""


class ConfChangeInvalid(ValueError):
    """A membership change that makes no sense (adding a member, removing
    a stranger, removing the only voter); nothing was proposed."""


# Messages a node accepts from ids in none of the configurations it holds:
# what a leader sends (a node being added does not know its leader's
# configuration yet, nor does a member whose log lags a leader added later),
# unless this node hears another leader (a stranger cannot take over a
# healthy cluster); and a vote request whose log is ahead of ours (it may
# come from a voter added in entries we lack; dropping it could leave no
# electable majority).  The rest is dropped.  Not what keeps a removed node from disrupting: it
# never campaigns once it has its removal in its log, and before that its
# log lacks a committed entry, so PreVote fails it (and CheckQuorum makes
# members that hear their leader ignore it).
_FROM_ANY_LEADER = frozenset({MSG_APPEND, MSG_HEARTBEAT, MSG_SNAPSHOT})


class CoreConfig:
    """The knobs the protocol itself needs (the runtime's Config maps onto it)."""

    __slots__ = ("id", "voters", "learners", "election_ticks", "heartbeat_ticks",
                 "max_msg_bytes", "max_inflight", "max_inflight_bytes",
                 "max_apply_bytes", "max_uncommitted_entries", "max_uncommitted_bytes",
                 "pre_vote", "check_quorum",
                 "read_mode", "seed", "urls", "cluster_version")

    def __init__(self, id, voters, learners=(), election_ticks=10, heartbeat_ticks=1,
                 max_msg_bytes=1 << 20, max_inflight=64, max_inflight_bytes=0,
                 max_apply_bytes=64 << 20, max_uncommitted_entries=1 << 20,
                 max_uncommitted_bytes=64 << 20, pre_vote=True,
                 check_quorum=True, read_mode="readindex", seed=None, urls=None,
                 cluster_version=1):
        if heartbeat_ticks <= 0 or election_ticks <= heartbeat_ticks:
            raise ValueError("need 0 < heartbeat_ticks < election_ticks")
        if read_mode not in ("readindex", "lease"):
            raise ValueError(f"unknown read mode {read_mode!r}")
        if read_mode == "lease" and not check_quorum:
            raise ValueError("lease reads need check_quorum: the lease is the time in which "
                             "followers refuse to vote for anyone else")
        self.id = id
        self.voters = frozenset(voters)
        self.learners = frozenset(learners)
        self.election_ticks = election_ticks
        self.heartbeat_ticks = heartbeat_ticks
        self.max_msg_bytes = max_msg_bytes
        self.max_inflight = max_inflight
        self.max_inflight_bytes = max_inflight_bytes
        self.max_apply_bytes = max_apply_bytes
        # Bound a leader's memory when commits stop (etcd's
        # MaxUncommittedEntriesSize, in entries and in bytes; 0 = no bound).
        self.max_uncommitted_entries = max_uncommitted_entries
        self.max_uncommitted_bytes = max_uncommitted_bytes
        # PreVote (thesis 9.6): a node asks whether it could win before it
        # bumps its term, so a node cut off and back cannot depose a healthy
        # leader.  CheckQuorum: a leader that has not heard from a majority
        # for an election timeout steps down, and a follower that hears
        # from its leader ignores vote requests meanwhile (leader lease).
        self.pre_vote = pre_vote
        self.check_quorum = check_quorum
        # "readindex": a read is served once a heartbeat round sent after it
        # arrived is answered by a majority.  "lease": served at once while
        # the lease holds (see Raft._lease_valid for its clock assumption).
        self.read_mode = read_mode
        self.seed = seed
        # Default dial addresses of members (id -> url) as the configuration
        # the node starts from knows them; --peer flags win in the runtime.
        self.urls = dict(urls or {})
        # The cluster version of the configuration the node starts from
        # (messages.encode_config): which formats every member reads.
        self.cluster_version = cluster_version


class Ready:
    """What the runtime must do, in this order:

    1. send `messages` now (nothing in them depends on this node's own
       writes: they may go before step 2, and the runtime sends them first
       so that a leader's followers start writing sooner);
    2. write `entries` (each (first_index, block, count); a first_index at or
       below the stored last index replaces the stored suffix) and
       `hard_state` (when not None) to storage;
    3. send `persist_messages` once everything written so far is durable
       (after the fsync that covers step 1); messages addressed to this
       node itself are stepped back into it at that moment;
    4. apply `committed` ((first_index, block, count) or None) to the
       state machine;
    5. call advance(ready);
    6. serve each of `read_states` ((context, index): a read confirmed
       linearizable at that commit index) once the state machine has
       applied through its index.

    Before all of that, when `snapshot` is (index, term): this node took
    the leader's snapshot at that point (the one the runtime stepped in
    with MSG_SNAPSHOT).  Make it the node's durable snapshot, restart the
    stored log after (index, term), and replace the state machine with it.
    """

    __slots__ = ("hard_state", "entries", "messages", "persist_messages", "committed",
                 "read_states", "snapshot", "_written_to", "_applied_to")

    def __init__(self):
        self.snapshot = None
        self.hard_state = None
        self.entries = []
        self.messages = []
        self.persist_messages = []
        self.committed = None
        self.read_states = []
        self._written_to = 0
        self._applied_to = 0

    def must_sync(self):
        return bool(self.entries) or self.hard_state is not None

    def __repr__(self):
        return (f"Ready(hs={self.hard_state}, entries={[(e[0], e[2]) for e in self.entries]}, "
                f"msgs={self.messages}, persist={self.persist_messages}, "
                f"committed={self.committed and (self.committed[0], self.committed[2])})")


def _conf_change(old, new):
    """What one configuration changed from the one before it: (change,
    node ids), change one of learner_added, voter_added, promoted,
    removed, cluster_version; or learned: the first one a node waiting to
    be added knows (it knows none before)."""
    _, _, voters0, learners0, _, version0 = old
    _, _, voters, learners, _, version = new
    before = voters0 | learners0
    if not before:
        return "learned", []
    removed = sorted(before - (voters | learners))
    if removed:
        return "removed", removed
    promoted = sorted((voters - voters0) & learners0)
    if promoted:
        return "promoted", promoted
    added = sorted(voters - before)
    if added:
        return "voter_added", added
    added = sorted(learners - before)
    if added:
        return "learner_added", added
    if version != version0:
        return "cluster_version", []
    return "unchanged", []


def _coalesce_acks(msgs, me):
    """Followers ack a batch at once: of several append acknowledgements to
    one leader in one term, only the highest index needs to go (within a
    term a leader's entries never change under it); of this node's own
    durability notes, the last one."""
    best = {}
    for i, m in enumerate(msgs):
        if m.type == MSG_APPEND_RESP and not m.reject:
            key = (m.to, m.term)
            j = best.get(key)
            if j is None or m.to == me or m.index >= msgs[j].index:
                best[key] = i
    keep = set(best.values())
    return [m for i, m in enumerate(msgs)
            if i in keep or m.type != MSG_APPEND_RESP or m.reject]


class Raft:
    def __init__(self, cfg, entry_log, hard_state=None, snap_index=0, snap_term=0):
        hs = hard_state or HardState()
        self.id = cfg.id
        self.cfg = cfg
        self.log = RaftLog(entry_log, snap_index, snap_term, hs.commit)
        # The newest durable snapshot (the log may keep a margin before it).
        self.snapshot_index = snap_index
        self.snapshot_term = snap_term
        self._restored = None  # (index, term) of a snapshot taken from the leader, for ready()
        # Membership (thesis ch. 4, single-server changes): a configuration
        # is in effect from the moment its entry is in the log, committed or
        # not, and falls back when that entry is truncated away.  History:
        # (index, term, voters, learners, urls, cluster version) of the
        # configuration the log starts with, then of each ENTRY_CONFIG entry
        # still in the log.
        self.voters = set()
        self.learners = set()
        self.urls = {}
        self._known_ids = set()  # members of any configuration in the history
        self.conf_version = 0
        self.cluster_version = cfg.cluster_version
        self._conf_hist = [(snap_index, snap_term, frozenset(cfg.voters),
                            frozenset(cfg.learners), dict(cfg.urls), cfg.cluster_version)]
        self.term = hs.term
        self.vote = hs.vote
        self.leader_id = 0
        self.role = FOLLOWER
        # For the operator's metrics; both change on rare events only.
        self.elections_started = 0  # campaigns for a new term (pre-votes not counted)
        self.leader_changes = 0     # leader_changed events (below)
        # What an operator reads in the log (elections and their outcome,
        # leader changes, step-downs and why, membership changes committed):
        # (kind, fields) noted where they happen, drained by the runtime
        # after a Ready.  Only rare transitions are noted, never a message
        # or an entry, so the list is empty on the hot path.
        self.events = []
        self._last_leader = 0         # the last leader known, and its term
        self._last_leader_term = 0
        # Configuration entries at or below this index were committed before
        # start or are reported already; _conf_watch: one above it exists.
        self._conf_reported = self.log.committed
        self._conf_watch = False
        self.rng = random.Random(cfg.seed)
        self.progress = {}
        self.votes = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = cfg.election_ticks
        self._msgs = []
        self._persist_msgs = []
        self._prev_hs = HardState(hs.term, hs.vote, self.log.committed)
        self.tick_count = 0
        # Linearizable reads (leader only; thesis 6.4).  A read waits for an
        # entry of the leader's own term to commit, then for a heartbeat
        # round sent after it arrived to be answered by a majority.  Rounds
        # are numbered; heartbeats carry the number as their context.
        self.read_round = 0
        self._committed_in_term = False
        self._reads_before_commit = []                # contexts
        self._read_queue = collections.deque()        # (round, context, read index)
        self._reads_ready = []                        # (context, read index)
        self._read_round_wanted = False
        self._round_ticks = {}                        # round -> tick sent (lease mode)
        self._lease_until = 0
        self._lease_blocked_until = 0
        # A node that just recovered may have answered a leader's heartbeat
        # before it stopped, and that leader may still serve reads from a
        # lease counting on this node's vote: for an election timeout after
        # start it helps elect no one (a transfer its leader asked for
        # aside), as if it had heard from that leader just now.
        self._votes_held_until = cfg.election_ticks if cfg.read_mode == "lease" else 0
        # Leadership transfer (thesis 3.10).
        self.lead_transferee = 0
        self._transfer_elapsed = 0
        self._timeout_now_sent = False
        self.role = FOLLOWER
        if self.log.last_index > snap_index:
            self._scan_configs(snap_index + 1, self.log.last_index)
        self._use_conf(self._conf_hist[len(self._conf_hist) - 1])
        self.become_follower(self.term, 0)

    # ----------------------------------------------------------- roles

    def _reset(self, term):
        if term != self.term:
            self.term = term
            self.vote = 0
        self.leader_id = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = self.cfg.election_ticks + self.rng.randrange(self.cfg.election_ticks)
        self.votes = {}
        self.progress = {}
        # Reads a former leader had queued die with its leadership (the
        # runtime tells their clients); a new leader starts clean.
        self._committed_in_term = False
        self._reads_before_commit = []
        self._read_queue.clear()
        self._reads_ready = []
        self._read_round_wanted = False
        self._round_ticks = {}
        self._lease_until = 0
        self.lead_transferee = 0
        self._transfer_elapsed = 0
        self._timeout_now_sent = False

    def become_follower(self, term, leader_id):
        self._reset(term)
        self.role = FOLLOWER
        self.leader_id = leader_id
        if leader_id:
            self._leader_is(leader_id)
            self._step = self._step_follower
        else:
            # The first message of a leader names it (then the plain step:
            # learning the leader costs no check per message).
            self._step = self._step_leaderless
        self._tick = self._tick_election

    def become_pre_candidate(self):
        # Neither term nor vote changes: nothing to persist, nobody disturbed.
        if self.role == LEADER:
            raise LogPanic("a leader cannot become a pre-candidate directly")
        self.role = PRECANDIDATE
        self.leader_id = 0
        self.votes = {}
        self._step = self._step_candidate
        self._tick = self._tick_election

    def become_candidate(self):
        if self.role == LEADER:
            raise LogPanic("a leader cannot become a candidate directly")
        self._reset(self.term + 1)
        self.role = CANDIDATE
        self.elections_started += 1
        self.vote = self.id
        self._step = self._step_candidate
        self._tick = self._tick_election

    def become_leader(self):
        if self.role != CANDIDATE:
            raise LogPanic("only a candidate can become leader")
        self._note("election_won", term=self.term, pre_vote=False, votes=self._granted())
        self._reset(self.term)
        self.role = LEADER
        self.leader_id = self.id
        self._leader_is(self.id)
        self._step = self._step_leader
        self._tick = self._tick_heartbeat
        nxt = self.log.last_index + 1
        for peer in self.voters | self.learners:
            pr = Progress(nxt, self.cfg.max_inflight, self.cfg.max_inflight_bytes)
            if peer == self.id:
                pr.match = self.log.persisted
                pr.become_replicate()
                pr.next = nxt
            self.progress[peer] = pr
        # An empty entry of the new term: once it commits, so does every
        # entry before it (a leader never counts replicas of older terms).
        self.log.append_proposal(NOOP_BLOCK, self.term)
        self._broadcast_append()

    # ------------------------------------------------------------ inputs

    def tick(self):
        self.tick_count += 1
        self._tick()

    def _tick_election(self):
        self.election_elapsed += 1
        if self.election_elapsed >= self.randomized_timeout and self.id in self.voters:
            self.election_elapsed = 0
            if self.role != FOLLOWER:
                self._leave_role("timed_out")
            if self.cfg.pre_vote:
                self.pre_campaign()
            else:
                self.campaign()

    def _tick_heartbeat(self):
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.lead_transferee:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= self.cfg.election_ticks:
                self.abort_transfer()
        if self.election_elapsed >= self.cfg.election_ticks:
            self.election_elapsed = 0
            if self.cfg.check_quorum and not self._quorum_recently_active():
                # Cut off from a majority: stop serving as leader (clients
                # waiting on it hear that the outcome is unknown).
                self._leave_role("check_quorum")
                self.become_follower(self.term, 0)
                return
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    def _quorum_recently_active(self):
        """Did a majority of voters answer since the last check?  Resets
        the marks for the next election timeout."""
        active = 0
        for peer, pr in self.progress.items():
            if peer == self.id or pr.recent_active:
                if peer in self.voters:
                    active += 1
            if peer != self.id:
                pr.recent_active = False
        return active >= len(self.voters) // 2 + 1

    def pre_campaign(self):
        """Ask the voters whether they would elect us in term+1, without
        changing anything; campaign for real only with a majority's yes."""
        self.become_pre_candidate()
        self.votes[self.id] = True
        last_index, last_term = self.log.last_index, self.log.last_term()
        self._note("election_started", term=self.term + 1, pre_vote=True, transfer=False,
                   last_index=last_index, last_term=last_term)
        if vote_result(self.voters, self.votes) == VOTE_WON:
            self._note("election_won", term=self.term + 1, pre_vote=True, votes=[self.id])
            self.campaign()
            return
        for peer in self.voters:
            if peer != self.id:
                self._send(Message(MSG_PREVOTE, to=peer, term=self.term + 1,
                                   index=last_index, log_term=last_term))

    def campaign(self, transfer=False):
        """Stand for election in term+1.  transfer: a leader handed over
        leadership (TimeoutNow), so voters that still hear from it vote."""
        self.become_candidate()
        last_index, last_term = self.log.last_index, self.log.last_term()
        self._note("election_started", term=self.term, pre_vote=False, transfer=transfer,
                   last_index=last_index, last_term=last_term)
        # The new term and our vote for ourselves must be durable before
        # anyone can grant us this term: a candidate that won, lost power
        # and came back one term lower could otherwise win the same term a
        # second time with a different log.  So the requests, like our own
        # vote, leave only after the fsync.
        self._send_after_persist(Message(MSG_VOTE_RESP, to=self.id, frm=self.id, term=self.term))
        for peer in self.voters:
            if peer != self.id:
                self._send_after_persist(Message(MSG_VOTE, to=peer, term=self.term,
                                                 index=last_index, log_term=last_term,
                                                 context=VOTE_TRANSFER if transfer else 0))

    def propose(self, block):
        """Append a block of entries (built with term 0) to the leader's log.
        Returns (first_index, last_index).  Raises NotLeader elsewhere."""
        if self.role != LEADER:
            raise NotLeader(self.leader_id)
        if self.lead_transferee:
            raise TransferInProgress(self.lead_transferee)
        log = self.log
        if log.last_index - log.committed >= self.cfg.max_uncommitted_entries:
            raise ProposalDropped(f"{log.last_index - log.committed} entries "
                                  f"are not yet committed")
        if self.cfg.max_uncommitted_bytes and log.last_index > log.committed:
            # As etcd does, a proposal is taken whatever its size when
            # nothing is uncommitted, so a large one is not refused forever.
            held = log.entries.nbytes_from(log.committed + 1)
            if held + len(block) > self.cfg.max_uncommitted_bytes:
                raise ProposalDropped(f"{held} bytes are not yet committed")
        first, last = log.append_proposal(block, self.term)
        self._broadcast_append()
        return first, last

    def read_index(self, ctx):
        """Ask for a linearizable read; ctx is the runtime's token for it.
        It comes back in a later Ready's read_states as (ctx, index): the
        read may be served once the state machine has applied through
        index.  A read that cannot be confirmed (leadership lost) never
        comes back.  Raises NotLeader elsewhere."""
        if self.role != LEADER:
            raise NotLeader(self.leader_id)
        if not self._committed_in_term:
            # Our commit index may lag what earlier leaders committed until
            # an entry of our own term commits (thesis 6.4, step 1).
            self._reads_before_commit.append(ctx)
        elif self.cfg.read_mode == "lease" and self._lease_valid():
            self._reads_ready.append((ctx, self.log.committed))
        else:
            self._queue_read(ctx)

    def _queue_read(self, ctx):
        # Confirmed by the next round to be sent, never by one already under
        # way: a majority's answer to an earlier round could predate a newer
        # leader's election.
        self._read_queue.append((self.read_round + 1, ctx, self.log.committed))
        self._read_round_wanted = True

    def _confirm_reads(self):
        """Release the reads whose round a majority of voters answered
        (answering round r also answers every round before it)."""
        rnd = self.read_round
        progress = self.progress
        me = self.id

        rounds = []
        for v in self.voters:
            if v == me:
                rounds.append(rnd)
            else:
                pr = progress.get(v)
                rounds.append(pr.acked_round if pr is not None else 0)
        confirmed = committed_index(rounds)
        if self.cfg.read_mode == "lease" and self._round_ticks:
            sent = self._round_ticks.get(confirmed)
            if sent is not None:
                self._lease_until = max(self._lease_until, sent + self._lease_ticks())
            for r in list(self._round_ticks):
                if r > confirmed:
                    break
                del self._round_ticks[r]
        queue = self._read_queue
        while queue and queue[0][0] <= confirmed:
            r, ctx, index = queue.popleft()
            self._reads_ready.append((ctx, index))

    def _lease_ticks(self):
        """How long a round answered by a majority lets this leader serve
        reads alone, counted from when the round was SENT.  Each voter that
        answered got it after that and refuses other candidates for an
        election timeout after (CheckQuorum's rule in step()).  The clock
        assumption: nodes' ticks run at the same rate within 10%; two ticks
        go to their granularity.  Never longer than election_ticks - 2."""
        e = self.cfg.election_ticks
        return max(0, e - 2 - e // 10)

    def _lease_valid(self):
        return (self.lead_transferee == 0 and self.tick_count < self._lease_until
                and self.tick_count >= self._lease_blocked_until)

    def transfer_leadership(self, target):
        """Hand leadership to voter `target` (thesis 3.10): stop taking
        proposals, bring it up to date, then tell it to campaign at once.
        Abandoned after an election timeout (proposals resume).  Raises
        NotLeader elsewhere, ValueError for a target that is not a voter."""
        if self.role != LEADER:
            raise NotLeader(self.leader_id)
        if target == self.id:
            return
        if target not in self.voters or target not in self.progress:
            raise ValueError(f"node {target} is not a voter")
        if self.lead_transferee == target:
            return
        self._note("transfer_started", term=self.term, target=target,
                   match=self.progress[target].match, last_index=self.log.last_index)
        self.lead_transferee = target
        self._transfer_elapsed = 0
        self._timeout_now_sent = False
        # Lease reads stop now, and stay off for an election timeout after
        # an abandoned transfer: a TimeoutNow still in flight can elect the
        # target past every voter's lease.
        self._lease_blocked_until = self.tick_count + 2 * self.cfg.election_ticks + 1
        self._maybe_send_timeout_now()

    def _maybe_send_timeout_now(self):
        target = self.lead_transferee
        pr = self.progress[target]
        if pr.match == self.log.last_index:
            if not self._timeout_now_sent:
                self._timeout_now_sent = True
                self._send(Message(MSG_TIMEOUT_NOW, to=target, term=self.term))
        else:
            self._send_appends_to(target)

    def abort_transfer(self, reason="timed_out"):
        if self.lead_transferee:
            self._note("transfer_abandoned", term=self.term, target=self.lead_transferee,
                       reason=reason)
            self.lead_transferee = 0
            self._transfer_elapsed = 0
            self._timeout_now_sent = False

    # ------------------------------------------------------ membership

    @property
    def conf_index(self):
        """Log index of the configuration in effect (the snapshot's or the
        starting one's index when no config entry follows it)."""
        return self._conf_hist[len(self._conf_hist) - 1][0]

    @property
    def in_a_configuration(self):
        """Is this node a member of any configuration it holds (the current
        one, or one its log or snapshot starts with)?  False for a node
        waiting to be added; True for one removed since."""
        return self.id in self._known_ids

    def _log_behind(self, m):
        """Is the sender's last entry (m.index, m.log_term) ahead of ours?"""
        last_term = self.log.last_term()
        return m.log_term > last_term or (m.log_term == last_term
                                          and m.index > self.log.last_index)

    def _use_conf(self, item):
        _, _, voters, learners, urls, self.cluster_version = item
        known = set()
        for h in self._conf_hist:
            known.update(h[2])
            known.update(h[3])
        self._known_ids = known
        self.voters = set(voters)
        self.learners = set(learners)
        self.urls = dict(urls)
        self.conf_version += 1
        self._conf_watch = item[0] > self._conf_reported
        if self.role != LEADER:
            return
        members = self.voters | self.learners
        for peer in list(self.progress):
            if peer != self.id and peer not in members:
                del self.progress[peer]
        nxt = self.log.last_index + 1
        for peer in members:
            if peer not in self.progress:
                self.progress[peer] = Progress(nxt, self.cfg.max_inflight,
                                               self.cfg.max_inflight_bytes)
        if self.lead_transferee and self.lead_transferee not in self.voters:
            self.abort_transfer("target_removed")
        # A lease was earned from the old voters; let it lapse rather than
        # reason about which majority promised what across the change.
        self._lease_until = 0
        self._lease_blocked_until = self.tick_count + 2 * self.cfg.election_ticks + 1

    def _scan_configs(self, lo, hi):
        """Add the ENTRY_CONFIG entries in [lo, hi] to the history.  One
        that does not decode, or names no voter, came from a forged or
        broken leader: every node skips it alike, so they still agree."""
        hist = self._conf_hist
        for index, data in self.log.entries.find_type(lo, hi + 1, ENTRY_CONFIG):
            if index <= hist[len(hist) - 1][0]:
                continue
            try:
                voters, learners, urls = decode_config(data)
            except ConfigFormatError:
                continue
            if voters:
                hist.append((index, self.log.term(index), voters, learners, urls,
                             config_cluster_version(data)))

    def _conf_after_write(self, lo, hi):
        """Entries [lo, hi] were just written to the log (a follower's
        append, which may have truncated a suffix first): drop the
        configurations whose entries are gone, pick up new ones, and switch
        if the one in effect changed.  Entries are identified by (index,
        term): by Log Matching an entry still holding its term is the same."""
        hist = self._conf_hist
        before = hist[len(hist) - 1]
        log = self.log
        while len(hist) > 1:
            index, term = hist[len(hist) - 1][0], hist[len(hist) - 1][1]
            if index <= log.last_index and log.term(index) == term:
                break
            hist.pop()
        self._scan_configs(lo, hi)
        if hist[len(hist) - 1] is not before:
            self._use_conf(hist[len(hist) - 1])

    def config_at(self, index):
        """The configuration in effect once the log through `index` is
        applied, as encode_config bytes: the meta of a snapshot at index."""
        hist = self._conf_hist
        if index < hist[0][0]:
            raise ValueError(f"no configuration known at {index} (the log starts after "
                             f"{hist[0][0]})")
        for i in range(len(hist) - 1, -1, -1):
            if hist[i][0] <= index:
                _, _, voters, learners, urls, version = hist[i]
                return encode_config(voters, learners, urls, version)
        raise AssertionError("unreachable")

    def propose_conf_change(self, op, node_id, url="", cluster_version=0):
        """Change the membership by one server (thesis 4.1): op "add" makes
        node_id a learner dialed at url, "promote" makes a learner a voter,
        "remove" removes any member, this leader included; op "version"
        keeps the members and raises the cluster version to cluster_version
        (the runtime asks once every member speaks its formats).  Appends one
        ENTRY_CONFIG entry holding the whole new configuration, in effect at
        once; returns its index (the change is done once that commits).
        Raises NotLeader, TransferInProgress, ConfChangeBusy or
        ConfChangeInvalid."""
        if self.role != LEADER:
            raise NotLeader(self.leader_id)
        if self.lead_transferee:
            raise TransferInProgress(self.lead_transferee)
        if not self._committed_in_term:
            # Ongaro's fix for single-server changes: until an entry of this
            # term commits, a change from a previous term may be pending in
            # a log we have not seen, and two changes could overlap.
            raise ConfChangeBusy("the leader has not yet committed an entry of its term")
        if self._conf_change_pending():
            raise ConfChangeBusy("a membership change is in progress")
        voters, learners, urls = set(self.voters), set(self.learners), dict(self.urls)
        version = self.cluster_version
        if op == "version":
            if cluster_version <= version:
                raise ConfChangeInvalid(f"the cluster version is {version} already")
            version = cluster_version
        elif op == "add":
            if node_id in voters or node_id in learners:
                raise ConfChangeInvalid(f"node {node_id} is already a member")
            learners.add(node_id)
            if url:
                urls[node_id] = url
        elif op == "promote":
            if node_id not in learners:
                raise ConfChangeInvalid(f"node {node_id} is not a learner")
            learners.discard(node_id)
            voters.add(node_id)
        elif op == "remove":
            if node_id not in voters and node_id not in learners:
                raise ConfChangeInvalid(f"node {node_id} is not a member")
            if voters == {node_id}:
                raise ConfChangeInvalid(f"node {node_id} is the only voter; it cannot be removed")
            voters.discard(node_id)
            learners.discard(node_id)
            urls.pop(node_id, None)
        else:
            raise ValueError(f"unknown membership change {op!r}")
        data = encode_config(voters, learners, urls, version)
        block = (len(data).to_bytes(4, "little") + bytes(8) + bytes([ENTRY_CONFIG]) + data)
        _, last = self.log.append_proposal(block, self.term)
        item = (last, self.term, frozenset(voters), frozenset(learners), urls, version)
        self._conf_hist.append(item)
        self._use_conf(item)
        self._broadcast_append()
        return last

    def _conf_change_pending(self):
        """One change at a time: the last one must commit before the next
        (two uncommitted single-server changes could make disjoint majorities)."""
        return self.conf_index > self.log.committed

    def _maybe_promote(self, peer, pr):
        """A learner whose log reached our commit index is caught up: make
        it a voter (any leader does this, so it survives a change of leader)."""
        if (pr.match >= self.log.committed and self._committed_in_term
                and not self.lead_transferee and not self._conf_change_pending()):
            self.propose_conf_change("promote", peer)

    def _step_down_if_removed(self):
        """A leader that removed itself leads until that change commits,
        then hands over: TimeoutNow to the most up-to-date voter (if it has
        everything), so the cluster need not wait out an election timeout."""
        if self.role != LEADER or self.id in self.voters or self.log.committed < self.conf_index:
            return
        best, best_match = 0, -1
        for peer in sorted(self.voters):
            pr = self.progress.get(peer)
            if pr is not None and pr.match > best_match:
                best, best_match = peer, pr.match
        if best and best_match == self.log.last_index:
            self._send(Message(MSG_TIMEOUT_NOW, to=best, term=self.term))
        self._leave_role("removed", successor=best if best_match == self.log.last_index else 0)
        self.become_follower(self.term, 0)

    def _note_conf_commits(self):
        """Note each configuration entry committed since the last note, with
        what it changed (a member that falls behind and catches up notes
        every one it missed)."""
        hist = self._conf_hist
        committed = self.log.committed
        reported = max(self._conf_reported, hist[0][0])
        for i in range(1, len(hist)):
            index = hist[i][0]
            if reported < index <= committed:
                _, term, voters, learners, _, version = hist[i]
                change, nodes = _conf_change(hist[i - 1], hist[i])
                self._note("membership_changed", index=index, term=term, change=change,
                           nodes=nodes, voters=sorted(voters), learners=sorted(learners),
                           cluster_version=version)
                reported = index
        self._conf_reported = reported
        self._conf_watch = self.conf_index > reported

    # ---------------------------------------------------------- events

    def _note(self, kind, **fields):
        self.events.append((kind, fields))

    def _granted(self):
        return sorted(p for p, yes in self.votes.items() if yes)

    def _leader_is(self, leader):
        if leader != self._last_leader or self.term != self._last_leader_term:
            self._note("leader_changed", term=self.term, leader=leader,
                       previous=self._last_leader, previous_term=self._last_leader_term)
            self.leader_changes += 1
            self._last_leader = leader
            self._last_leader_term = self.term

    def _leave_role(self, reason, **fields):
        """Note why this leader steps down, or why this candidate's
        election is lost; called just before it becomes a follower."""
        role = self.role
        if role == LEADER:
            self._note("stepped_down", term=self.term, reason=reason, **fields)
        elif role == CANDIDATE or role == PRECANDIDATE:
            pre = role == PRECANDIDATE
            self._note("election_lost", term=self.term + 1 if pre else self.term,
                       pre_vote=pre, reason=reason, granted=self._granted(),
                       rejected=sorted(p for p, yes in self.votes.items() if not yes),
                       **fields)

    def _leave_higher_term(self, m):
        if self.role == LEADER and self.lead_transferee and m.frm == self.lead_transferee:
            self._leave_role("transferred", successor=m.frm, seen_term=m.term)
        else:
            self._leave_role("higher_term", seen_term=m.term, frm=m.frm)

    # ------------------------------------------------------- snapshots

    def snapshot_taken(self, index, term):
        """The runtime's snapshot through `index` is durable: it is what a
        follower behind the log gets from now on."""
        if index > self.snapshot_index:
            if index > self.log.applied:
                raise LogPanic(f"snapshot at {index}, but only {self.log.applied} is applied")
            self.snapshot_index = index
            self.snapshot_term = term

    def compactable(self, trailing=0):
        """How far the log may be compacted now: `trailing` entries behind
        the newest snapshot, never past what is applied and durable, and
        never past the snapshot a follower is being sent (it continues from
        the log after it: without this it could need a newer snapshot each
        time it finished one, and never catch up)."""
        log = self.log
        upto = self.snapshot_index - trailing if self.snapshot_index > trailing else 0
        upto = min(upto, log.applied, log.persisted)
        if self.role == LEADER:
            for pr in self.progress.values():
                if pr.state == SNAPSHOT and pr.pending_snapshot < upto:
                    upto = pr.pending_snapshot
        return max(upto, log.snap_index)

    def compact(self, index):
        """A snapshot of the state machine covers the log through `index`:
        drop those entries from memory (see RaftLog.compact).  A follower
        that still needs them gets the snapshot instead."""
        if index > self.snapshot_index:
            raise LogPanic(f"compacting through {index}, past the newest snapshot "
                           f"({self.snapshot_index})")
        self.log.compact(index)
        hist = self._conf_hist
        keep = 0
        while keep + 1 < len(hist) and hist[keep + 1][0] <= index:
            keep += 1
        if keep:
            del hist[:keep]

    def report_snapshot(self, peer, ok):
        """The runtime's stream of a snapshot to peer ended: every byte was
        acknowledged (ok), or it failed or was given up.  A failure: probe,
        and the next heartbeat answer asks for a snapshot again.  A success
        only means the file arrived: the follower still loads and installs
        it (seconds, for a big state), and its append acknowledgement ends
        the SNAPSHOT state.  Until then nothing is sent and the log after the
        snapshot is kept (compactable); probing at once would ask for the
        same snapshot again and again meanwhile, and release that log."""
        pr = self.progress.get(peer)
        if self.role != LEADER or pr is None or pr.state != SNAPSHOT:
            return
        if ok:
            pr.snapshot_delivered = True
            pr.stalled_beats = 0
            return
        pr.become_probe()
        pr.pending_snapshot = 0

    def report_unreachable(self, peer):
        """The runtime could not deliver a message to peer (connection down,
        or dropped under back-pressure).  Appends sent optimistically in the
        pipeline may be lost, so fall back to probing."""
        pr = self.progress.get(peer)
        if self.role == LEADER and pr is not None and pr.state == REPLICATE:
            pr.become_probe()

    def set_flow_paused(self, peer, paused):
        """The runtime's connection to peer cannot take more (paused=True)
        or can again.  Appends wait rather than being sent into a full
        socket; heartbeats still go (the runtime may drop them)."""
        pr = self.progress.get(peer)
        if pr is None or pr.flow_paused == paused:
            return
        pr.flow_paused = paused
        if not paused and self.role == LEADER:
            self._send_appends_to(peer)

    def step(self, m):
        if m.frm == self.id:
            self._step_self(m)
            return
        t = m.type
        if m.frm not in self._known_ids:
            if t in _FROM_ANY_LEADER:
                if m.frm != self.leader_id and self.leader_id != 0 and \
                        self.election_elapsed < self.cfg.election_ticks:
                    return
            elif not ((t == MSG_VOTE or t == MSG_PREVOTE) and self._log_behind(m)):
                return
        if m.term > self.term:
            if (t == MSG_VOTE or t == MSG_PREVOTE) \
                    and not (t == MSG_VOTE and m.context == VOTE_TRANSFER) \
                    and ((self.cfg.check_quorum and self.leader_id != 0
                          and self.election_elapsed < self.cfg.election_ticks)
                         or self.tick_count < self._votes_held_until):
                # We heard from a leader within the timeout, or just started
                # and may have: it stands (a transfer it asked for aside).
                # Lease reads rely on this.
                return
            if t == MSG_PREVOTE or (t == MSG_PREVOTE_RESP and not m.reject):
                pass  # a pre-vote speaks of a term nobody has entered yet
            else:
                if self.role != FOLLOWER:
                    self._leave_higher_term(m)
                if t == MSG_APPEND or t == MSG_HEARTBEAT or t == MSG_SNAPSHOT:
                    self.become_follower(m.term, m.frm)
                else:
                    self.become_follower(m.term, 0)
        elif m.term < self.term:
            if t == MSG_APPEND or t == MSG_HEARTBEAT or t == MSG_SNAPSHOT:
                # Tell a deposed leader about the newer term so it steps down.
                self._send(Message(MSG_APPEND_RESP, to=m.frm, term=self.term))
            elif t == MSG_PREVOTE:
                # So a node asking with a stale term learns the current one.
                self._send(Message(MSG_PREVOTE_RESP, to=m.frm, term=self.term, reject=True))
            return
        if t == MSG_VOTE or t == MSG_PREVOTE:
            self._handle_vote(m)
        else:
            self._step(m)

    def _step_self(self, m):
        """Messages this node addressed to itself, released by the runtime
        once its own writes were durable."""
        if m.type == MSG_APPEND_RESP:
            # Not subject to the term check: entries written in an earlier
            # term are just as durable now.
            self._on_persisted(m.index, m.log_term)
            if self.role == LEADER:
                pr = self.progress.get(self.id)
                if pr is not None and pr.maybe_update(self.log.persisted):
                    self._maybe_commit()
        elif m.type == MSG_VOTE_RESP and m.term == self.term and self.role == CANDIDATE:
            self._step_candidate(m)

    def _handle_vote(self, m):
        pre = m.type == MSG_PREVOTE
        can_vote = (self.vote == m.frm or (self.vote == 0 and self.leader_id == 0)
                    or (pre and m.term > self.term))
        grant = can_vote and self.log.is_up_to_date(m.index, m.log_term)
        if pre:
            # Nothing changes here, so nothing to persist before answering.
            self._send(Message(MSG_PREVOTE_RESP, to=m.frm, term=m.term if grant else self.term,
                               reject=not grant))
            return
        if grant:
            if self.vote != m.frm:
                self._note("vote_granted", term=self.term, candidate=m.frm,
                           transfer=m.context == VOTE_TRANSFER)
            self.vote = m.frm
            self.election_elapsed = 0
        # Sent only after the vote (and term) are durable.
        self._send_after_persist(Message(MSG_VOTE_RESP, to=m.frm, term=self.term,
                                          reject=not grant))

    # ------------------------------------------------------ role steps

    def _step_follower(self, m):
        t = m.type
        if t == MSG_APPEND:
            self.election_elapsed = 0
            self.leader_id = m.frm
            self._handle_append(m)
        elif t == MSG_HEARTBEAT:
            self.election_elapsed = 0
            self.leader_id = m.frm
            self._handle_heartbeat(m)
        elif t == MSG_SNAPSHOT:
            self.election_elapsed = 0
            self.leader_id = m.frm
            self._handle_snapshot(m)
        elif t == MSG_TIMEOUT_NOW:
            if self.id in self.voters:
                self.campaign(transfer=True)  # no PreVote: our leader asked for it

    def _step_leaderless(self, m):
        """A follower that knows no leader in its term yet: the first
        append, heartbeat or snapshot names it, and the plain follower's
        step takes over."""
        t = m.type
        if t == MSG_APPEND or t == MSG_HEARTBEAT or t == MSG_SNAPSHOT:
            self._step = self._step_follower
            self._leader_is(m.frm)
        self._step_follower(m)

    def _step_candidate(self, m):
        t = m.type
        if t == MSG_APPEND or t == MSG_HEARTBEAT or t == MSG_SNAPSHOT:
            self._leave_role("leader_elected", leader=m.frm)
            self.become_follower(m.term, m.frm)
            self._step_follower(m)
        elif (t == MSG_VOTE_RESP and self.role == CANDIDATE) or \
                (t == MSG_PREVOTE_RESP and self.role == PRECANDIDATE):
            self.votes[m.frm] = not m.reject
            res = vote_result(self.voters, self.votes)
            if res == VOTE_WON:
                if self.role == PRECANDIDATE:
                    self._note("election_won", term=self.term + 1, pre_vote=True,
                               votes=self._granted())
                    self.campaign()
                else:
                    self.become_leader()
            elif res == VOTE_LOST:
                self._leave_role("rejected")
                self.become_follower(self.term, 0)

    def _step_leader(self, m):
        t = m.type
        if t == MSG_APPEND_RESP:
            pr = self.progress.get(m.frm)
            if pr is None:
                return
            pr.recent_active = True
            if m.reject:
                hint = m.hint
                if m.log_term > 0:
                    hint = self.log.conflict_hint(m.hint, m.log_term)
                if pr.maybe_decr_to(m.index, hint):
                    if pr.state == REPLICATE:
                        pr.become_probe()
                    self._send_append(m.frm)
                return
            if m.index > self.log.last_index:
                # Acknowledges entries we never sent (a forged or corrupt
                # message): counting it could commit what no majority holds.
                return
            if pr.maybe_update(m.index):
                if pr.state == PROBE:
                    pr.become_replicate()
                elif pr.state == SNAPSHOT:
                    if pr.match >= pr.pending_snapshot:
                        pr.become_replicate()  # the snapshot is in: back to the log
                else:
                    pr.inflights.free_le(m.index)
                if not self._maybe_commit():
                    self._send_appends_to(m.frm)
                if m.frm == self.lead_transferee:
                    self._maybe_send_timeout_now()
                if m.frm in self.learners:
                    self._maybe_promote(m.frm, pr)
            elif pr.state == REPLICATE:
                pr.inflights.free_le(m.index)
                self._send_appends_to(m.frm)
        elif t == MSG_HEARTBEAT_RESP:
            pr = self.progress.get(m.frm)
            if pr is None:
                return
            pr.recent_active = True
            if pr.acked_round < m.context <= self.read_round:
                pr.acked_round = m.context
                if self._read_queue or self._round_ticks:
                    self._confirm_reads()
            if pr.state == PROBE:
                pr.probe_sent = False
            elif pr.state == SNAPSHOT and pr.snapshot_delivered:
                # Delivered, but no acknowledgement of the install for ten
                # election timeouts: it was lost, or the follower dropped
                # the file.  Probe right after the snapshot; a follower
                # without it refuses, and gets a snapshot again.
                pr.stalled_beats += 1
                if pr.stalled_beats * self.cfg.heartbeat_ticks >= 10 * self.cfg.election_ticks:
                    pending = pr.pending_snapshot
                    pr.become_probe()
                    pr.next = max(pr.next, pending + 1)
                    pr.pending_snapshot = 0
            elif pr.state == REPLICATE and len(pr.inflights):
                # The follower answers heartbeats but acknowledges none of the
                # appends in flight for a whole election timeout: they were
                # lost (a connection broke after they were written).  Probe.
                pr.stalled_beats += 1
                if pr.stalled_beats * self.cfg.heartbeat_ticks >= self.cfg.election_ticks:
                    pr.become_probe()
            if pr.match < self.log.last_index:
                # A probe may have been lost with nothing new to send since
                # (a node just added, before its connection was up): probe
                # again even if empty, or an idle leader never would.
                self._send_appends_to(m.frm, send_empty=pr.state == PROBE)
            if m.frm in self.learners:
                self._maybe_promote(m.frm, pr)

    # ------------------------------------------------- follower helpers

    def _handle_append(self, m):
        log = self.log
        if m.index < log.committed:
            # Entries up to our commit index are already known to match.
            self._send_after_persist(Message(MSG_APPEND_RESP, to=m.frm, term=self.term,
                                              index=log.committed))
            return
        last_new = log.maybe_append(m.index, m.log_term, m.commit, m.entries, m.count)
        if last_new is not None:
            if m.count:
                self._conf_after_write(m.index + 1, last_new)
            # Acknowledged only once the entries are durable here.
            self._send_after_persist(Message(MSG_APPEND_RESP, to=m.frm, term=self.term,
                                              index=last_new))
            return
        hint = log.conflict_hint(m.index, m.log_term)
        self._send(Message(MSG_APPEND_RESP, to=m.frm, term=self.term, index=m.index,
                           reject=True, hint=hint, log_term=log.term(hint) or 0))

    def _handle_snapshot(self, m):
        """The runtime received, checked and loaded the leader's snapshot at
        (m.index, m.log_term); m.entries is its configuration."""
        log = self.log
        index, term = m.index, m.log_term
        if index <= log.committed:
            # Nothing new in it (a duplicate, or we caught up meanwhile).
            self._send_after_persist(Message(MSG_APPEND_RESP, to=m.frm, term=self.term,
                                              index=log.committed))
            return
        if log.match_term(index, term):
            # Our log holds its last entry: keep the log (the entries after
            # it too, thesis 5.3) and apply up to it from there.
            log.commit_to(index)
            self._send_after_persist(Message(MSG_APPEND_RESP, to=m.frm, term=self.term,
                                              index=index))
            return
        try:
            voters, learners, urls = decode_config(m.entries or b"")
        except ConfigFormatError:
            return  # the runtime checked the file; a bad meta is a forged message
        if not voters:
            return
        log.restore(index, term)
        self.snapshot_index, self.snapshot_term = index, term
        self._conf_hist = [(index, term, voters, learners, urls,
                            config_cluster_version(m.entries))]
        self._use_conf(self._conf_hist[0])
        self._restored = (index, term)
        self._send_after_persist(Message(MSG_APPEND_RESP, to=m.frm, term=self.term, index=index))

    def _handle_heartbeat(self, m):
        # The leader caps the commit index it sends at what it knows we have.
        self.log.commit_to(min(m.commit, self.log.last_index))
        self._send(Message(MSG_HEARTBEAT_RESP, to=m.frm, term=self.term, context=m.context))

    def _on_persisted(self, index, term):
        """Entries up to index (whose term was `term`) are durable, unless
        they were replaced since they were written."""
        if index > self.log.persisted and self.log.term(index) == term:
            self.log.persisted = index

    # --------------------------------------------------- leader helpers

    def _maybe_commit(self):
        """Advance the commit index to what a majority has stored, but only
        through an entry of the current term (Raft §5.4.2)."""
        progress = self.progress
        matches = []
        for v in self.voters:
            pr = progress.get(v)
            matches.append(pr.match if pr is not None else 0)
        idx = committed_index(matches)
        if idx > self.log.committed and self.log.term(idx) == self.term:
            self.log.commit_to(idx)
            if not self._committed_in_term:
                self._committed_in_term = True
                waiting, self._reads_before_commit = self._reads_before_commit, []
                for ctx in waiting:
                    self._queue_read(ctx)
            # Entries still unsent go out now; the new commit index alone
            # goes only to followers being probed (a member just added, one
            # that fell behind), so they hear from the leader at once.  One
            # that replicates learns it from the next append or heartbeat:
            # an empty append to every follower on every commit would
            # double the peer messages when clients wait for each reply (a
            # write, a read and a wake-up at both ends), and nothing a
            # follower does waits on its commit index.
            for peer, pr in self.progress.items():
                if peer != self.id:
                    self._send_appends_to(peer, send_empty=pr.state == PROBE)
            return True
        return False

    def _broadcast_append(self, send_empty=False):
        for peer in self.progress:
            if peer != self.id:
                self._send_appends_to(peer, send_empty)

    def _send_appends_to(self, peer, send_empty=False):
        """Send as many appends as the follower's window allows (at least
        one when send_empty, to carry a new commit index)."""
        sent = False
        while self._send_append(peer, send_empty and not sent):
            sent = True
            if self.progress[peer].state != REPLICATE:
                break

    def _send_append(self, peer, send_empty=True):
        pr = self.progress[peer]
        if pr.is_paused():
            return False
        log = self.log
        last = log.last_index
        if pr.next > last and not send_empty:
            return False
        prev = pr.next - 1
        prev_term = log.term(prev)
        if prev_term is None:
            # The entries this follower needs were compacted away: the
            # runtime streams it the newest snapshot instead.
            if self.snapshot_index >= pr.next:
                pr.become_snapshot(self.snapshot_index)
                self._send(Message(MSG_SNAPSHOT, to=peer, term=self.term,
                                   index=self.snapshot_index, log_term=self.snapshot_term))
            return False
        if pr.next <= last:
            block, count = log.slice(pr.next, last + 1, self.cfg.max_msg_bytes)
        else:
            block, count = None, 0
        self._send(Message(MSG_APPEND, to=peer, term=self.term, index=prev, log_term=prev_term,
                           commit=log.committed, entries=block, count=count))
        if count:
            pr.sent_entries(prev + count, len(block))
        elif pr.state == PROBE:
            pr.probe_sent = True
        return count > 0

    def _broadcast_heartbeat(self):
        """One heartbeat round: every read queued so far is confirmed once a
        majority answers it."""
        self.read_round += 1
        rnd = self.read_round
        self._read_round_wanted = False
        if self.cfg.read_mode == "lease":
            self._round_ticks[rnd] = self.tick_count
        for peer, pr in self.progress.items():
            if peer != self.id:
                self._send(Message(MSG_HEARTBEAT, to=peer, term=self.term,
                                   commit=min(pr.match, self.log.committed), context=rnd))
        if self._read_queue or self.cfg.read_mode == "lease":
            self._confirm_reads()  # a single voter confirms its own rounds

    def _send(self, m):
        m.frm = self.id
        self._msgs.append(m)

    def _send_after_persist(self, m):
        m.frm = self.id
        self._persist_msgs.append(m)

    # ----------------------------------------------------- ready cycle

    def has_ready(self):
        log = self.log
        return bool(self._msgs or self._persist_msgs or log.written < log.last_index
                    or self._restored is not None
                    or self._reads_ready or self._read_round_wanted
                    or self._hard_state_changed()
                    or min(log.committed, log.last_index) > log.applied)

    def _hard_state_changed(self):
        prev = self._prev_hs
        return prev.term != self.term or prev.vote != self.vote

    def ready(self):
        rd = Ready()
        log = self.log
        if self._restored is not None:
            rd.snapshot, self._restored = self._restored, None
        if self._conf_watch:
            self._note_conf_commits()
        if self.role == LEADER and self.id not in self.voters:
            self._step_down_if_removed()
        if self._read_round_wanted and self.role == LEADER:
            # Reads arrived since the last round: one round for all of them.
            self._broadcast_heartbeat()
        if self._reads_ready:
            rd.read_states, self._reads_ready = self._reads_ready, []
        unwritten = log.unwritten()
        written_to = log.written
        if unwritten is not None:
            rd.entries.append(unwritten)
            written_to = unwritten[0] + unwritten[2] - 1
            # Ask to hear when these are durable: for a leader that is its
            # own vote toward committing them.
            self._send_after_persist(Message(MSG_APPEND_RESP, to=self.id, frm=self.id,
                                              term=self.term, index=written_to,
                                              log_term=log.term(written_to)))
        if self._hard_state_changed():
            rd.hard_state = HardState(self.term, self.vote, log.committed)
        rd.messages, self._msgs = self._msgs, []
        persist, self._persist_msgs = self._persist_msgs, []
        # A follower's usual pair (its ack to the leader, its own note) goes
        # to two nodes: nothing to coalesce.
        if len(persist) > 2 or (len(persist) == 2 and persist[0].to == persist[1].to):
            persist = _coalesce_acks(persist, self.id)
        rd.persist_messages = persist
        hi = min(log.committed, written_to) + 1
        if log.applied + 1 < hi:
            block, count = log.slice(log.applied + 1, hi, self.cfg.max_apply_bytes)
            rd.committed = (log.applied + 1, block, count)
            rd._applied_to = log.applied + count
        else:
            rd._applied_to = log.applied
        rd._written_to = written_to
        return rd

    def advance(self, rd):
        if rd.hard_state is not None:
            self._prev_hs = rd.hard_state
        if rd._written_to > self.log.written:
            self.log.written = rd._written_to
        if rd._applied_to > self.log.applied:
            self.log.applied = rd._applied_to

    # ----------------------------------------------------------- status

    def status(self):
        log = self.log
        st = {
            "id": self.id, "role": self.role, "term": self.term, "vote": self.vote,
            "leader_id": self.leader_id, "commit_index": log.committed,
            "last_applied": log.applied, "first_log_index": log.snap_index + 1,
            "last_log_index": log.last_index, "snapshot_index": self.snapshot_index,
            "persisted_index": log.persisted,
            "voters": sorted(self.voters), "learners": sorted(self.learners),
        }
        if self.role == LEADER:
            st["progress"] = {p: repr(pr) for p, pr in sorted(self.progress.items())}
        return st
