"""The cluster under an interaction script: nodes, each a real `Raft` over
an entry log with a simulated disk (tests/support/simnet.py's SimStorage:
records are written, then made durable by a sync, and a crash keeps only
what was durable), and a network that is a queue of messages in the order
they were sent.  Nothing moves unless the script says so, and nothing is
random but the cores' own seeded generators.

The runtime's duties are separate steps so a script can stop between
them: process (take each Ready: write, send, hold what waits for the sync,
apply, advance), sync (make the writes durable, release what waited),
deliver.  Everything done is printed through a Printer.
"""
import contextlib

from raftfast.core import CoreConfig, Raft
from raftfast.core.messages import MSG_SNAPSHOT, decode_config
from tests.core import interaction_format as fmt
from tests.core.datadriven import ScriptError
from tests.support.entrylog import EntryLog


class Printer:
    """One command's output lines.  Nested lines are indented under their
    header (`> 2 receive`).  While quiet only changes of role or term, read
    states, and delivered or lost messages of the shown types are printed,
    flat and after `prefix`."""

    def __init__(self):
        self.lines = []
        self.depth = 0
        self.quiet = False
        self.shown = frozenset()  # message types printed while quiet
        self.prefix = ""

    def indent(self):
        return self.prefix if self.quiet else self.prefix + "  " * self.depth

    def emit(self, line, m=None):
        if self.quiet and (m is None or m.type not in self.shown):
            return
        self.lines.append(self.indent() + line)

    def always(self, line):
        self.lines.append(self.indent() + line)

    def header(self, line):
        self.emit(line)
        return self.nested()

    @contextlib.contextmanager
    def nested(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    @contextlib.contextmanager
    def quietly(self, shown=(), prefix=""):
        self.quiet, self.shown, self.prefix = True, frozenset(shown), prefix
        try:
            yield
        finally:
            self.quiet, self.shown, self.prefix = False, frozenset(), ""


class Node:
    """One core as the runtime drives it, over a simulated disk."""

    def __init__(self, node_id, voters, learners, knobs, storage):
        self.id = node_id
        self.voters, self.learners = voters, learners  # the configuration it boots with
        self.knobs = knobs
        self.storage = storage
        self.start()

    def start(self):
        """(Re)start from what the disk holds."""
        hs, log, snap = self.storage.recover(EntryLog)
        voters, learners, urls = self.voters, self.learners, {}
        snap_index = snap_term = 0
        if snap is not None:
            snap_index, snap_term, meta = snap
            voters, learners, urls = decode_config(meta)
        cfg = CoreConfig(self.id, voters, learners, urls=urls, **self.knobs)
        self.raft = Raft(cfg, log, hs, snap_index, snap_term)
        self.pending = []  # (records that must be durable, messages they hold back)
        self.seen = (self.raft.role, self.raft.term)

    def needs_sync(self):
        return bool(self.pending) or self.storage.durable < len(self.storage.records)


class Cluster:
    """The nodes and the network between them, driven one duty at a time."""

    def __init__(self, printer):
        self.out = printer
        self.nodes = {}
        self.queue = []   # messages sent and not yet delivered, in order
        self.cut = set()  # (from, to) links that lose everything

    def note(self, node):
        """Print a change of role or term, where it happens."""
        now = (node.raft.role, node.raft.term)
        if now != node.seen:
            node.seen = now
            self.out.always(f"{node.id} is {now[0]} at term {now[1]}")

    def send(self, m):
        self.queue.append(m)

    def process(self, node):
        """Carry out every Ready the node has, as the runtime does."""
        raft = node.raft
        for _ in range(1000):
            if not raft.has_ready():
                return
            rd = raft.ready()
            with self.out.header(f"> {node.id} ready"):
                self.note(node)
                if rd.snapshot is not None:
                    index, term = rd.snapshot
                    node.storage.install(index, term, raft.config_at(index))
                    self.out.emit(f"install snapshot {index}@{term}")
                if rd.hard_state is not None:
                    hs = rd.hard_state
                    self.out.emit(f"hard-state term={hs.term} vote={hs.vote} commit={hs.commit}")
                for first, block, _ in rd.entries:
                    self.out.emit(f"write {fmt.entries(first, block)}")
                records = node.storage.write(rd)
                for m in rd.messages:
                    self.out.emit(f"send {fmt.message(m)}")
                    self.send(m)
                for m in rd.persist_messages:
                    self.out.emit(f"on-sync {fmt.message(m)}")
                if rd.persist_messages:
                    node.pending.append((records, rd.persist_messages))
                if rd.committed is not None:
                    first, block, _ = rd.committed
                    self.out.emit(f"apply {fmt.entries(first, block)}")
                raft.advance(rd)
                for ctx, index in rd.read_states:
                    self.out.always(f"read-state {ctx} index={index}")
        raise ScriptError(f"node {node.id} keeps having a Ready")

    def sync(self, node):
        """The node's fsync: its writes are durable; what waited for them
        goes out (to itself: stepped in now)."""
        storage = node.storage
        with self.out.header(f"> {node.id} sync"):
            storage.sync()
            now = [msgs for n, msgs in node.pending if n <= storage.durable]
            node.pending = [p for p in node.pending if p[0] > storage.durable]
            for msgs in now:
                for m in msgs:
                    if m.to == node.id:
                        self.out.emit(f"step {fmt.message(m)}")
                        node.raft.step(m)
                        self.note(node)
                    else:
                        self.out.emit(f"send {fmt.message(m)}")
                        self.send(m)

    def deliver(self, m):
        """Step m into its receiver, unless a cut loses it."""
        if (m.frm, m.to) in self.cut or m.to not in self.nodes:
            self.out.emit(f"lost {fmt.message(m)}", m)
            self.lost(m)
            return
        if m.type == MSG_SNAPSHOT:
            # The runtime streams the snapshot file; here the stream is one
            # message carrying the snapshot's configuration.
            metas = [meta for index, _, meta in self.nodes[m.frm].storage.snaps
                     if index == m.index]
            if not metas:
                raise ScriptError(f"node {m.frm} sends a snapshot at {m.index} it never took")
            m.entries = metas[len(metas) - 1]
        self.out.emit(fmt.message(m), m)
        node = self.nodes[m.to]
        node.raft.step(m)
        self.note(node)
        if m.type == MSG_SNAPSHOT:
            self.nodes[m.frm].raft.report_snapshot(m.to, True)

    def lost(self, m):
        """The sender's transport notices what a dead link lost."""
        sender = self.nodes.get(m.frm)
        if sender is not None:
            sender.raft.report_unreachable(m.to)
            if m.type == MSG_SNAPSHOT:
                sender.raft.report_snapshot(m.to, False)

    def take(self, match):
        """Remove from the queue, and return in order, the messages matching."""
        taken = [m for m in self.queue if match(m)]
        self.queue = [m for m in self.queue if not match(m)]
        return taken

    def stabilize(self, ids):
        """Process, sync and deliver among `ids` until nothing moves."""
        for _ in range(1000):
            moved = False
            for i in ids:
                if self.nodes[i].raft.has_ready():
                    self.process(self.nodes[i])
                    moved = True
            for i in ids:
                if self.nodes[i].needs_sync():
                    self.sync(self.nodes[i])
                    moved = True
            for i in ids:
                msgs = self.take(lambda m: m.to == i)
                if msgs:
                    moved = True
                    with self.out.header(f"> {i} receive"):
                        for m in msgs:
                            self.deliver(m)
            if not moved:
                return
        raise ScriptError("stabilize: the nodes keep talking")

    def crash(self, node):
        """Its connections break: what was in flight to or from it is gone,
        and every peer's transport notices.  It restarts from its disk."""
        for m in self.take(lambda m: node.id in (m.to, m.frm)):
            self.out.emit(f"lost {fmt.message(m)}")
            if m.frm != node.id:
                self.lost(m)
        for other in self.nodes.values():
            if other is not node:
                other.raft.report_unreachable(node.id)
        node.storage.crash()
        node.start()
