"""What the leader knows about each follower: how far its log matches
(`match`), what to send next (`next`), and how many appends may be in
flight before it must wait for acknowledgements.

States, as in etcd's tracker:
- PROBE: the leader does not know where the follower's log diverges; it
  sends one append at a time and waits for the answer.
- REPLICATE: the follower is known to match; appends are pipelined up to
  the inflight window.
- SNAPSHOT: the entries the follower needs were compacted away; the
  runtime is streaming it the snapshot at `pending_snapshot`.  Nothing
  else is sent meanwhile but heartbeats; the follower's acknowledgement
  of the installed snapshot (or the runtime's report) ends the state.
"""
from collections import deque

PROBE = 0
REPLICATE = 1
SNAPSHOT = 2
STATE_NAMES = ("probe", "replicate", "snapshot")


class Inflights:
    """Appends sent but not yet acknowledged, capped by count and by bytes.
    One entry per message (a batch), never per log entry."""

    __slots__ = ("max_count", "max_bytes", "_items", "bytes")

    def __init__(self, max_count, max_bytes=0):
        self.max_count = max_count
        self.max_bytes = max_bytes  # 0 = no byte limit
        self._items = deque()       # (last index in the message, its bytes)
        self.bytes = 0

    def add(self, last_index, nbytes):
        self._items.append((last_index, nbytes))
        self.bytes += nbytes

    def free_le(self, index):
        """Forget every message whose entries all lie at or below index."""
        items = self._items
        while items and items[0][0] <= index:
            self.bytes -= items.popleft()[1]

    def full(self):
        return len(self._items) >= self.max_count or (
            self.max_bytes > 0 and self.bytes >= self.max_bytes)

    def reset(self):
        self._items.clear()
        self.bytes = 0

    def __len__(self):
        return len(self._items)


class Progress:
    __slots__ = ("match", "next", "state", "probe_sent", "inflights", "recent_active",
                 "stalled_beats", "flow_paused", "acked_round", "pending_snapshot",
                 "snapshot_delivered")

    def __init__(self, next_index, max_inflight, max_inflight_bytes):
        self.match = 0
        self.next = next_index
        self.state = PROBE
        self.probe_sent = False
        self.inflights = Inflights(max_inflight, max_inflight_bytes)
        self.recent_active = False
        # Heartbeat answers that arrived while appends were outstanding and
        # nothing was acknowledged: enough of them means appends were lost.
        self.stalled_beats = 0
        # The runtime's socket to this follower is full or down: send
        # nothing until it says otherwise (back-pressure, not dropping).
        self.flow_paused = False
        # The newest heartbeat round this follower answered in this term:
        # a read queued before that round was sent is confirmed by it.
        self.acked_round = 0
        self.pending_snapshot = 0
        # The runtime delivered the whole snapshot file; the follower has
        # yet to load and install it and say so (an append acknowledgement).
        self.snapshot_delivered = False

    def become_probe(self):
        self.state = PROBE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflights.reset()

    def become_replicate(self):
        self.state = REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflights.reset()

    def become_snapshot(self, index):
        self.state = SNAPSHOT
        self.pending_snapshot = index
        self.snapshot_delivered = False
        self.stalled_beats = 0
        self.probe_sent = False
        self.inflights.reset()

    def maybe_update(self, index):
        """An acknowledgement up to index arrived; False if it tells nothing new."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
            self.stalled_beats = 0
        if index + 1 > self.next:
            self.next = index + 1
        return updated

    def maybe_decr_to(self, rejected, hint):
        """The follower rejected an append whose previous index was `rejected`
        and suggested probing at `hint`.  Returns False for a stale rejection."""
        if self.state == REPLICATE:
            if rejected <= self.match:
                return False  # an answer to an append sent before a later success
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False  # an answer to an earlier probe
        self.next = max(min(rejected, hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def sent_entries(self, last_index, nbytes):
        """An append carrying entries up to last_index went out."""
        if self.state == REPLICATE:
            if last_index >= self.next:
                self.next = last_index + 1
                self.inflights.add(last_index, nbytes)
        else:
            self.probe_sent = True

    def is_paused(self):
        if self.flow_paused:
            return True
        if self.state == PROBE:
            return self.probe_sent
        if self.state == REPLICATE:
            return self.inflights.full()
        return True

    def __repr__(self):
        snap = f" snapshot={self.pending_snapshot}" if self.state == SNAPSHOT else ""
        return (f"{STATE_NAMES[self.state]}{snap} match={self.match} next={self.next}"
                f" inflight={len(self.inflights)}{'[full]' if self.inflights.full() else ''}"
                f"{' paused' if self.is_paused() else ''}")
