"""A deterministic simulated network for the sans-IO core.

Every node is a real `Raft` over a real entry log; what differs from the
runtime is that here a seeded scheduler decides, one event at a time, which
message is delivered (or dropped, duplicated, held back by a partition),
when each node's clock ticks, when its writes become durable, and when it
crashes (keeping only what was durable).  After every event the safety
properties of Raft are checked:

- election safety: at most one leader per term;
- log matching: two logs with an entry of the same index and term are
  identical up to it;
- leader completeness: a leader holds every entry committed in its term or
  before;
- state machine safety: every node applies the same entry at each index;
- linearizable reads: a read index handed out (ReadIndex) covers every
  entry any node knew committed when the read was asked for.

With `membership=True` spare nodes start outside the cluster and members
are added (as learners, promoted by the leader) and removed (the leader
too) at random; with `snapshots=True` nodes take snapshots and compact
their logs at random, and a follower behind a leader's log gets the
snapshot (the runtime's stream is one message here, which can be lost).
The properties above then hold across configurations, over whatever part
of each log is still held.

The run is reproducible from its seed alone.
"""
import random

from tests.support.entrylog import EntryLog
from raftfast.core import (LEADER, ConfChangeBusy, ConfChangeInvalid, CoreConfig, NotLeader, Raft,
                           TransferInProgress)
from raftfast.core.messages import MSG_SNAPSHOT, ENTRY_NORMAL, HardState, decode_config


class SafetyViolation(AssertionError):
    pass


class LivenessFailure(AssertionError):
    """The schedule stopped making progress (not a safety violation)."""


def make_block(payloads):
    out = bytearray()
    for p in payloads:
        out += len(p).to_bytes(4, "little") + (0).to_bytes(8, "little") + bytes([ENTRY_NORMAL]) + p
    return bytes(out)


class SimStorage:
    """The node's disk: records written, and how many of them are durable."""

    def __init__(self):
        self.records = []
        self.durable = 0
        self.snaps = []  # (index, term, meta): durable when taken, as the runtime's are

    def write(self, rd):
        for first, block, count in rd.entries:
            self.records.append(("entries", first, bytes(block), count))
        if rd.hard_state is not None:
            hs = rd.hard_state
            self.records.append(("hs", HardState(hs.term, hs.vote, hs.commit)))
        return len(self.records)

    def sync(self):
        self.durable = len(self.records)

    def crash(self):
        del self.records[self.durable:]

    def install(self, index, term, meta):
        """A snapshot from the leader: durable at once, with a record that
        voids the log before it (as Storage.install_snapshot does)."""
        self.snaps.append((index, term, meta))
        self.records.append(("reset", index, term))
        self.durable = len(self.records)

    def recover(self, entry_log_cls):
        """(hard state, entry log after the snapshot, snapshot or None),
        by the rules of Storage.open."""
        log = entry_log_cls(1)
        hs = HardState()
        snap = self.snaps[-1] if self.snaps else None
        for rec in self.records:
            if rec[0] == "entries":
                if rec[1] > log.last_index + 1:
                    # Entries applied and snapshotted here but never made
                    # durable: the snapshot covers the gap (Storage.open
                    # skips what it covers), or the log is broken.
                    if snap is None or rec[1] > snap[0] + 1:
                        raise SafetyViolation(f"gap in the log before {rec[1]}")
                    log = entry_log_cls(rec[1])
                log.append(rec[1], rec[2])
            elif rec[0] == "reset":
                log = entry_log_cls(rec[1] + 1)
            else:
                hs = rec[1]
        if snap is None:
            return hs, log, None
        index, term, _ = snap
        after = entry_log_cls(index + 1)
        if log.first_index > index + 1:
            raise SafetyViolation(f"log starts at {log.first_index}, snapshot ends at {index}")
        if log.last_index > index and (index < log.first_index or log.term(index) == term):
            block, _ = log.slice(index + 1, log.last_index + 1)
            after.append(index + 1, block)
        return hs, after, snap


class SimNode:
    def __init__(self, net, node_id, boot_voters):
        self.net = net
        self.id = node_id
        self.boot_voters = boot_voters  # empty: a spare that waits to be added (--join)
        self.storage = SimStorage()
        self.applied = 0
        self.start()

    def start(self):
        hs, log, snap = self.storage.recover(self.net.entry_log_cls)
        voters, learners, urls = self.boot_voters, (), {}
        snap_index = snap_term = 0
        if snap is not None:
            snap_index, snap_term, meta = snap
            voters, learners, urls = decode_config(meta)
        cfg = CoreConfig(self.id, voters, learners, election_ticks=10, heartbeat_ticks=1,
                         max_msg_bytes=self.net.max_msg_bytes, max_inflight=self.net.max_inflight,
                         read_mode=self.net.read_mode, urls=urls,
                         seed=self.net.rng.randrange(1 << 30))
        self.raft = Raft(cfg, log, hs, snap_index, snap_term)
        self.pending = []  # (records needed durable, messages)
        # The state machine is the snapshot's, then rebuilt from the log.
        self.applied = snap_index

    def take_snapshot(self, trailing):
        """Snapshot the applied state (durable at once) and compact the
        log, keeping `trailing` entries, as the runtime does."""
        raft = self.raft
        index = raft.log.applied
        if index <= raft.snapshot_index:
            return
        term = raft.log.term(index)
        self.storage.snaps.append((index, term, raft.config_at(index)))
        raft.snapshot_taken(index, term)
        raft.compact(raft.compactable(trailing))
        self.net.trace.append(f"snapshot {self.id} at {index} (log from {raft.log.snap_index + 1})")

    def process(self):
        """What the runtime does after every input: drain the Ready loop."""
        raft = self.raft
        while raft.has_ready():
            self.net.observe(self)  # record the commit index before applying
            rd = raft.ready()
            if rd.snapshot is not None:
                index, term = rd.snapshot
                self.storage.install(index, term, raft.config_at(index))
                self.net.check_install(self, index, term)
                self.applied = index
            n = self.storage.write(rd)
            for m in rd.messages:
                self.net.send(m)
            if rd.persist_messages:
                self.pending.append((n, rd.persist_messages))
            if rd.committed is not None:
                self.net.check_apply(self, *rd.committed)
            raft.advance(rd)
            for ctx, index in rd.read_states:
                self.net.check_read(self, ctx, index)
        self.net.observe(self)

    def sync(self):
        self.storage.sync()
        ready_now = [p for p in self.pending if p[0] <= self.storage.durable]
        self.pending = [p for p in self.pending if p[0] > self.storage.durable]
        for _, msgs in ready_now:
            for m in msgs:
                if m.to == self.id:
                    self.raft.step(m)
                else:
                    self.net.send(m)
        self.process()

    def crash_restart(self):
        self.storage.crash()
        self.start()
        self.process()


class SimNet:
    def __init__(self, n, seed, entry_log_cls, drop=0.05, dup=0.03, crash=0.01,
                 partition=0.02, pause=0.004, max_msg_bytes=256, max_inflight=4,
                 read_mode="readindex", membership=False, snapshots=False, spares=2):
        self.rng = random.Random(seed)
        self.seed = seed
        self.entry_log_cls = entry_log_cls
        self.membership = membership
        self.snapshots = snapshots
        founders = list(range(1, n + 1))
        self.ids = founders + (list(range(n + 1, n + 1 + spares)) if membership else [])
        self.max_msg_bytes = max_msg_bytes
        self.max_inflight = max_inflight
        self.read_mode = read_mode
        self.p_drop, self.p_dup, self.p_crash, self.p_partition = drop, dup, crash, partition
        self.p_pause = pause
        # node id -> steps it stays frozen (a stopped process or a long GC
        # pause): no ticks, no deliveries, no fsyncs; then it carries on
        # believing what it believed, e.g. that it still leads.
        self.paused = {}
        self.inflight = []
        self.cut = set()  # (from, to) pairs that drop everything
        self.leaders = {}  # term -> leader id, ever seen
        self.committed = entry_log_cls(1)  # every entry known committed, in order
        self.created = {}  # (term, index) -> payload proposed there
        self.commit_terms = []  # (index, term in which it was first seen committed)
        self.proposed = 0
        self.reads = {}  # read context -> (node asked, committed index when asked)
        self.reads_asked = 0
        self.reads_served = 0
        self.released = []  # (node, context, index) of every read released
        self.transfers = 0
        self.conf_changes = 0
        self.installs = 0
        self.trace = []
        self.nodes = {}
        for i in self.ids:
            self.nodes[i] = SimNode(self, i, founders if i in founders else [])

    # ------------------------------------------------------------ network

    def send(self, m):
        if m.type == MSG_SNAPSHOT:
            # The runtime streams the snapshot file; here the whole stream
            # is one message carrying the snapshot's meta, lost or not.
            metas = [meta for i, _, meta in self.nodes[m.frm].storage.snaps if i == m.index]
            if not metas:
                self.fail(f"node {m.frm} asked to send a snapshot at {m.index} it never took")
            m.entries = metas[-1]
        if (m.frm, m.to) in self.cut:
            self.lost(m)
            return
        self.inflight.append(m)

    def lost(self, m):
        # The runtime learns of a loss when the transport drops a message or
        # its connection breaks; tell the sender as the runtime would.
        raft = self.nodes[m.frm].raft
        raft.report_unreachable(m.to)
        if m.type == MSG_SNAPSHOT:
            raft.report_snapshot(m.to, False)

    def deliver_one(self):
        if not self.inflight:
            return
        i = self.rng.randrange(len(self.inflight))
        m = self.inflight[i]
        if m.to in self.paused:
            return  # it waits in the socket until the process runs again
        if self.rng.random() < self.p_dup:
            self.trace.append(f"dup {m!r}")
        else:
            self.inflight[i] = self.inflight[-1]
            self.inflight.pop()
        if (m.frm, m.to) in self.cut:
            self.lost(m)
            return
        if self.rng.random() < self.p_drop:
            self.trace.append(f"drop {m!r}")
            self.lost(m)
            return
        self.trace.append(f"deliver {m!r}")
        node = self.nodes[m.to]
        node.raft.step(m)
        node.process()
        if m.type == MSG_SNAPSHOT:
            sender = self.nodes[m.frm]
            sender.raft.report_snapshot(m.to, True)
            sender.process()

    def crash(self, node):
        # Its connections break: what was in flight to or from it is gone,
        # and every peer's transport notices.
        for m in self.inflight:
            if m.type == MSG_SNAPSHOT and m.to == node.id and m.frm != node.id:
                self.nodes[m.frm].raft.report_snapshot(m.to, False)  # the stream broke
        self.inflight = [m for m in self.inflight if node.id not in (m.to, m.frm)]
        for other in self.nodes.values():
            if other is not node:
                other.raft.report_unreachable(node.id)
        node.crash_restart()

    def isolate(self, node_id):
        for j in self.ids:
            if j != node_id:
                self.cut.add((node_id, j))
                self.cut.add((j, node_id))

    def heal(self):
        self.cut.clear()

    # ------------------------------------------------------------- events

    def tick_all(self):
        self.trace.append("tick")
        for node in self.nodes.values():
            if node.id not in self.paused:
                node.raft.tick()
                node.process()

    def propose(self, payloads):
        leaders = [n for n in self.nodes.values()
                   if n.raft.role == LEADER and n.id not in self.paused]
        if not leaders:
            return False
        node = self.rng.choice(leaders)
        try:
            first, last = node.raft.propose(make_block(payloads))
        except (NotLeader, TransferInProgress):
            return False
        self.trace.append(f"propose {node.id} [{first},{last}]")
        # Log matching at its root: (term, index) names one entry, ever.
        for i, p in enumerate(payloads):
            key = (node.raft.term, first + i)
            seen = self.created.setdefault(key, p)
            if seen != p:
                self.fail(f"two different entries created at term {key[0]} index {key[1]}")
        node.process()
        return True

    def read(self, node=None):
        """A client read at a node that believes it leads (a deposed leader
        too: ReadIndex must not let it answer)."""
        if node is None:
            leaders = [n for n in self.nodes.values()
                       if n.raft.role == LEADER and n.id not in self.paused]
            if not leaders:
                return
            node = self.rng.choice(leaders)
        self.reads_asked += 1
        ctx = self.reads_asked
        self.reads[ctx] = (node.id, self.committed.last_index)
        self.trace.append(f"read {node.id} ctx={ctx} known-committed={self.committed.last_index}")
        node.raft.read_index(ctx)
        node.process()

    def transfer(self):
        leaders = [n for n in self.nodes.values()
                   if n.raft.role == LEADER and n.id not in self.paused]
        if not leaders:
            return
        node = self.rng.choice(leaders)
        target = self.rng.choice(sorted(node.raft.voters))
        self.transfers += 1
        self.trace.append(f"transfer {node.id} -> {target}")
        node.raft.transfer_leadership(target)
        node.process()

    def step(self):
        for i in list(self.paused):
            self.paused[i] -= 1
            if self.paused[i] <= 0:
                del self.paused[i]
                self.trace.append(f"resume {i}")
                if self.nodes[i].raft.role == LEADER:
                    self.read(self.nodes[i])  # a client request that waited in its socket
        r = self.rng.random()
        if r < 0.12:
            self.tick_all()
        elif r < 0.15:
            self.read()
        elif r < 0.152:
            self.transfer()
        elif r < 0.62:
            self.deliver_one()
        elif r < 0.82:
            node = self.nodes[self.rng.choice(self.ids)]
            if node.id not in self.paused:
                self.trace.append(f"sync {node.id}")
                node.sync()
        elif r < 0.90:
            self.proposed += 1
            k = self.rng.randrange(1, 4)
            self.propose([f"{self.seed}:{self.proposed}:{j}".encode() for j in range(k)])
        elif r < 0.90 + self.p_crash:
            # Half the crashes hit the worst moment on purpose: a leader with
            # writes not yet durable (power lost before its fsync).
            exposed = [n for n in self.nodes.values()
                       if n.raft.role == LEADER and n.storage.durable < len(n.storage.records)
                       and n.id not in self.paused]
            if exposed and self.rng.random() < 0.5:
                node = self.rng.choice(exposed)
            else:
                node = self.nodes[self.rng.choice(self.ids)]
            self.trace.append(f"crash {node.id}")
            self.crash(node)
        elif r < 0.90 + self.p_crash + self.p_pause:
            # Pauses hit leaders more often: a leader that wakes up after a
            # new one was elected is where stale reads come from.
            leaders = [i for i in self.ids if self.nodes[i].raft.role == LEADER]
            victim = self.rng.choice(leaders if leaders and self.rng.random() < 0.9 else self.ids)
            if not self.paused:  # one at a time, so the others can elect meanwhile
                self.paused[victim] = self.rng.randrange(60, 400)
                self.trace.append(f"pause {victim} for {self.paused[victim]} steps")
        elif r < 0.90 + self.p_crash + self.p_pause + self.p_partition:
            what = self.rng.random()
            if what < 0.4:
                self.heal()
                self.trace.append("heal")
            elif what < 0.7:
                victim = self.rng.choice(self.ids)
                self.isolate(victim)
                self.trace.append(f"isolate {victim}")
            else:
                a, b = self.rng.sample(self.ids, 2)
                self.cut.add((a, b))
                self.trace.append(f"cut {a}->{b}")
        elif self.snapshots and self.rng.random() < 0.3:
            node = self.nodes[self.rng.choice(self.ids)]
            if node.id not in self.paused:
                node.take_snapshot(self.rng.choice((0, 2, 8)))
        elif self.membership and self.rng.random() < 0.3:
            self.change_membership()
        else:
            self.tick_all()
        self.check()

    def change_membership(self):
        """Add a node that is not a member, or remove a member (the leader
        included), through whichever node believes it leads."""
        leaders = [n for n in self.nodes.values()
                   if n.raft.role == LEADER and n.id not in self.paused]
        if not leaders:
            return
        node = self.rng.choice(leaders)
        raft = node.raft
        members = raft.voters | raft.learners
        outsiders = [i for i in self.ids if i not in members]
        if outsiders and (self.rng.random() < 0.5 or len(raft.voters) <= 2):
            op, target = "add", self.rng.choice(outsiders)
        else:
            op, target = "remove", self.rng.choice(sorted(members))
        try:
            index = raft.propose_conf_change(op, target, f"sim://{target}")
        except (ConfChangeBusy, ConfChangeInvalid, NotLeader, TransferInProgress) as e:
            self.trace.append(f"conf {op} {target} at {node.id} refused: {e}")
            return
        self.conf_changes += 1
        self.trace.append(f"conf {op} {target} at {node.id} -> index {index}")
        node.process()

    def members(self):
        """The members as the current leader sees them (all nodes if none)."""
        leaders = [n for n in self.nodes.values() if n.raft.role == LEADER]
        if not leaders:
            return list(self.nodes.values())
        raft = max(leaders, key=lambda n: n.raft.term).raft
        return [self.nodes[i] for i in sorted(raft.voters | raft.learners)]

    # ---------------------------------------------------------- checking

    def fail(self, what):
        tail = "\n  ".join(self.trace[-40:])
        raise SafetyViolation(f"seed {self.seed}: {what}\n  last events:\n  {tail}")

    def observe(self, node):
        raft = node.raft
        if raft.role == LEADER:
            seen = self.leaders.setdefault(raft.term, raft.id)
            if seen != raft.id:
                self.fail(f"election safety: nodes {seen} and {raft.id} both led term {raft.term}")
        # Record what this node knows to be committed.
        log = raft.log
        c = log.committed
        if c > self.committed.last_index:
            lo = self.committed.last_index + 1
            if lo <= log.snap_index:
                self.fail(f"node {node.id} holds a snapshot through {log.snap_index} "
                          f"of entries nobody was seen committing (from {lo})")
            block, _ = log.slice(lo, c + 1)
            self.committed.append(lo, block)
            self.commit_terms.append((c, raft.term))

    def check_read(self, node, ctx, index):
        asked_at, known = self.reads.pop(ctx, (None, None))
        if asked_at != node.id:
            self.fail(f"node {node.id} released read {ctx} it was not asked for")
        if index < known:
            self.fail(f"stale read: node {node.id} (term {node.raft.term}) released read {ctx} "
                      f"at index {index}, but {known} was already committed when it was asked")
        if index > node.raft.log.committed:
            self.fail(f"node {node.id} released read {ctx} at {index} beyond its commit index")
        self.reads_served += 1
        self.released.append((node.id, ctx, index))
        self.trace.append(f"read-ok {node.id} ctx={ctx} index={index}")

    def check_install(self, node, index, term):
        """A snapshot taken from the leader holds committed entries only."""
        reg = self.committed
        if index > reg.last_index or reg.term(index) != term:
            self.fail(f"node {node.id} installed a snapshot at ({index}, {term}) that is not "
                      f"a committed entry (committed through {reg.last_index})")
        self.installs += 1
        self.trace.append(f"install {node.id} at {index}")

    def check_apply(self, node, first, block, count):
        if first != node.applied + 1:
            self.fail(f"node {node.id} applied from {first} after {node.applied}")
        last = first + count - 1
        if last > self.committed.last_index:
            self.fail(f"node {node.id} applies {last} beyond anything committed")
        expect, _ = self.committed.slice(first, last + 1)
        if bytes(block) != bytes(expect):
            self.fail(f"state machine safety: node {node.id} applied different entries at [{first},{last}]")
        node.applied = last

    def check(self):
        nodes = list(self.nodes.values())
        reg = self.committed
        for node in nodes:
            log = node.raft.log
            lo = log.snap_index + 1  # what the log still holds (the rest is in a snapshot)
            # Committed prefix agrees with the registry.
            c = log.committed
            if c >= lo:
                mine, _ = log.slice(lo, c + 1)
                theirs, _ = reg.slice(lo, c + 1)
                if bytes(mine) != bytes(theirs):
                    self.fail(f"node {node.id}: committed prefix [1,{c}] differs from what was committed")
            # Leader completeness: a leader has every entry committed in its
            # term or before (a deposed leader that has not heard of a later
            # term may lack entries committed since).
            if node.raft.role == LEADER and reg.last_index:
                upto = 0
                for idx, term in self.commit_terms:
                    if term <= node.raft.term:
                        upto = idx
                if upto >= lo:
                    if log.last_index < upto:
                        self.fail(f"leader completeness: leader {node.id} (term {node.raft.term}) "
                                  f"lacks committed entries up to {upto}")
                    mine, _ = log.slice(lo, upto + 1)
                    theirs, _ = reg.slice(lo, upto + 1)
                    if bytes(mine) != bytes(theirs):
                        self.fail(f"leader completeness: leader {node.id} differs on committed [1,{upto}]")
        # Log matching: for each pair, the highest index with equal terms
        # must have identical prefixes.
        for i, a in enumerate(nodes):
            la = a.raft.log
            for b in nodes[i + 1:]:
                lb = b.raft.log
                top = min(la.last_index, lb.last_index)
                lo = max(la.snap_index, lb.snap_index) + 1
                for idx in range(top, lo - 1, -1):
                    if la.term(idx) == lb.term(idx):
                        pa, _ = la.slice(lo, idx + 1)
                        pb, _ = lb.slice(lo, idx + 1)
                        if bytes(pa) != bytes(pb):
                            self.fail(f"log matching: nodes {a.id},{b.id} agree on term at {idx} "
                                      f"but differ before it")
                        break

    # ----------------------------------------------------------- liveness

    def run_round(self, tick=True):
        """One round as a fault-free scheduler runs it: a tick (if asked),
        every message in flight delivered, every node's writes made durable.
        Safety is not checked here (the caller decides when)."""
        if tick:
            self.tick_all()
        delivered = 0
        while self.inflight:
            self.deliver_one()
            delivered += 1
            if delivered > 100000:
                raise LivenessFailure(f"seed {self.seed}: message storm: deliveries keep "
                                      f"producing messages without a tick")
        for node in self.nodes.values():
            node.sync()

    def settle(self, max_rounds=3000):
        """Heal everything and run without faults until a leader has
        committed a fresh entry and every node applied everything.
        Returns the number of rounds it took, or None."""
        self.heal()
        self.paused.clear()
        self.p_drop = self.p_dup = 0.0
        marker = None  # (term, index) of the entry we wait to see committed
        for n in range(max_rounds):
            self.run_round(tick=n % 3 == 0)
            self.check()
            reg = self.committed
            done = (marker is not None and reg.last_index >= marker[1]
                    and reg.term(marker[1]) == marker[0])
            if not done:
                leaders = [x for x in self.nodes.values() if x.raft.role == LEADER]
                if leaders and (marker is None or all(x.raft.term > marker[0] for x in leaders)):
                    x = leaders[0]
                    try:
                        first, last = x.raft.propose(make_block([b"settle-marker"]))
                    except TransferInProgress:
                        continue  # it gives up within an election timeout, or hands over
                    marker = (x.raft.term, last)
                    x.process()
                continue
            top = reg.last_index
            # Nodes removed (or never added) are not kept up to date.
            if all(x.applied == top for x in self.members()):
                return n
        return None


def run_until(net, cond, rounds=600):
    """Fault-free rounds, safety checked after each, until cond() holds
    (True) or `rounds` ran out (False)."""
    for _ in range(rounds):
        net.run_round()
        net.check()
        if cond():
            return True
    return False


def quiet_net(n=3, seed=0, **kw):
    """A network without faults, for targeted scenarios steered by hand."""
    return SimNet(n, seed, EntryLog, drop=0, dup=0, crash=0, partition=0, pause=0, **kw)


def describe(net):
    """Counts that show a schedule did exercise the protocol."""
    return {"terms": len(net.leaders), "committed": net.committed.last_index,
            "crashes": sum(1 for t in net.trace if t.startswith("crash")),
            "drops": sum(1 for t in net.trace if t.startswith("drop")),
            "proposals": sum(1 for t in net.trace if t.startswith("propose")),
            "reads": net.reads_served, "transfers": net.transfers,
            "conf_changes": net.conf_changes, "installs": net.installs,
            "snapshots": sum(1 for t in net.trace if t.startswith("snapshot"))}
