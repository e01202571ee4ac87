"""The interaction driver: runs the commands of a script (see datadriven.py)
against real sans-IO cores and prints what they do.

Each node is a `Raft` over an entry log with a simulated disk
(tests/support/simnet.py's SimStorage: records are written, then made
durable by a sync, and a crash keeps only what was durable).  The network
is a queue of messages in the order they were sent; nothing moves unless a
command says so, and nothing is random but the cores' own seeded
generators, so every run prints the same lines.

The runtime's duties are split into commands so a script can stop between
them: `process-ready` (take each Ready: write, send, hold what waits for
the sync, apply, advance), `sync` (make the writes durable and release
what waited), `deliver-msgs`.  `stabilize` repeats all three until nothing
moves.  Every change of a node's role or term is printed where it happens.

Commands (node ids are numbers; [..] is optional):
  add-nodes N [voters=(..)] [learners=(..)] [election=10] [heartbeat=1]
      [inflight=64] [inflight-bytes=0] [max-msg-bytes=1048576]
      [max-uncommitted=] [prevote=true] [checkquorum=true] [read-mode=readindex]
      [log=(terms..)] [term=] [vote=] [commit=] [seed=]
                          N new nodes (ids follow the highest so far); log= gives
                          them a durable log with entries of those terms
  campaign ID             the election timeout fires (PreVote first when on)
  tick ID [N]             N ticks of one node's clock, nothing processed
  run [ticks=1] [show=(types)|all]
                          each tick: every node ticks, then stabilize; prints
                          only role/term changes and messages of the shown types
  propose ID DATA.. [times=N]
                          one proposal of one entry per DATA ({i} in DATA is the
                          repetition number, c*N is N times c), N times over
  read-index ID CTX       ask for a linearizable read
  transfer ID TARGET      leadership transfer
  add-learner ID NODE [URL] / promote ID NODE / remove-node ID NODE
                          a membership change proposed at node ID
  snapshot ID [trailing=0]  snapshot the applied state, compact the log
  compact ID [trailing=0]   compact as far as the core allows
  report-snapshot ID PEER ok|fail / report-unreachable ID PEER / flow ID PEER paused|resumed
                          what the runtime tells a leader about a peer
  step ID type=T [from=] [term=] [prev=I@T|last=I@T|at=I@T] [commit=]
      [hint=I@T] [round=] [ents=(term/data,..)] [reject] [transfer]
                          hand one message to a node
  process-ready [ID..]    / sync [ID..]
  deliver-msgs [from=] [to=] [type=] [drop=(ids)]
                          deliver what is queued (those matching), in order;
                          drop= loses the matching messages to those nodes
  drop-msgs [from=] [to=] [type=]   lose matching queued messages
  stabilize [ID..] [quiet]          until nothing moves; quiet prints only changes
  partition ID.. / cut FROM TO / heal
                          a partition isolates the ids from the rest; messages
                          across it are lost when delivered, and the sender is
                          told (as a transport notices a dead connection)
  crash ID                lose what was not durable, restart from the disk
  status [ID..] / log ID / raft-state
"""
import contextlib

from raftfast.core import (ConfChangeBusy, ConfChangeInvalid, CoreConfig, LogPanic, NotLeader,
                           ProposalDropped, Raft, TransferInProgress)
from raftfast.core.messages import (ENTRY_NORMAL, MSG_NAMES, MSG_SNAPSHOT, HardState, Message,
                                    decode_config)
from tests.core import interaction_format as fmt
from tests.core.datadriven import Args, ScriptError
from tests.support.entrylog import EntryLog, encode_entries
from tests.support.simnet import SimStorage, make_block

MSG_TYPES = {name: t for t, name in MSG_NAMES.items()}
# Errors the core raises by design: printed, not raised.
CORE_ERRORS = (NotLeader, ProposalDropped, TransferInProgress, ConfChangeBusy,
               ConfChangeInvalid, LogPanic, ValueError)
_KNOBS = (("election", "election_ticks"), ("heartbeat", "heartbeat_ticks"),
          ("inflight", "max_inflight"), ("inflight-bytes", "max_inflight_bytes"),
          ("max-msg-bytes", "max_msg_bytes"), ("max-uncommitted", "max_uncommitted_entries"))


class Node:
    """One core as the runtime drives it, over a simulated disk."""

    def __init__(self, node_id, voters, learners, knobs, storage):
        self.id = node_id
        self.voters, self.learners = voters, learners  # the configuration it boots with
        self.knobs = knobs
        self.storage = storage
        self.start()

    def start(self):
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


class Env:
    def __init__(self):
        self.nodes = {}
        self.queue = []   # messages sent and not yet delivered, in order
        self.cut = set()  # (from, to) links that lose everything
        self.out = []
        self.depth = 0
        self.quiet = False
        self.shown = frozenset()  # message types printed while quiet
        self.prefix = ""

    # ------------------------------------------------------------ output

    def run(self, text):
        """Run one command line; returns its output lines."""
        args = Args(text)
        handler = getattr(self, "cmd_" + args.name.replace("-", "_"), None)
        if handler is None:
            raise ScriptError(f"unknown command {args.name!r}")
        self.out = []
        handler(args)
        args.done()
        return self.out or ["ok"]

    def emit(self, line, m=None):
        """A line of output; while quiet, only a delivered or lost message
        (m) of a shown type."""
        if self.quiet and (m is None or m.type not in self.shown):
            return
        self.out.append(self.indent() + line)

    def indent(self):
        # Quiet output is a flat list of what changed.
        return self.prefix if self.quiet else self.prefix + "  " * self.depth

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

    def note(self, node):
        """Print a change of role or term, where it happens."""
        now = (node.raft.role, node.raft.term)
        if now != node.seen:
            node.seen = now
            self.out.append(f"{self.indent()}{node.id} is {now[0]} at term {now[1]}")

    def node(self, node_id):
        try:
            return self.nodes[int(node_id)]
        except KeyError:
            raise ScriptError(f"no node {node_id}") from None

    def ids_or_all(self, args):
        return [int(i) for i in args.pos] if args.pos else sorted(self.nodes)

    def attempt(self, node, call, *a):
        """Call into the core; an error it raises by design is printed."""
        try:
            result = call(*a)
        except CORE_ERRORS as e:
            self.emit(f"error: {type(e).__name__}: {e}")
            result = None
        self.note(node)
        return result

    # -------------------------------------------------- runtime duties

    def send(self, m):
        self.queue.append(m)

    def process(self, node):
        raft = node.raft
        for _ in range(1000):
            if not raft.has_ready():
                return True
            rd = raft.ready()
            with self.header(f"> {node.id} ready"):
                self.note(node)
                if rd.snapshot is not None:
                    index, term = rd.snapshot
                    node.storage.install(index, term, raft.config_at(index))
                    self.emit(f"install snapshot {index}@{term}")
                if rd.hard_state is not None:
                    hs = rd.hard_state
                    self.emit(f"hard-state term={hs.term} vote={hs.vote} commit={hs.commit}")
                for first, block, _ in rd.entries:
                    self.emit(f"write {fmt.entries(first, block)}")
                records = node.storage.write(rd)
                for m in rd.messages:
                    self.emit(f"send {fmt.message(m)}")
                    self.send(m)
                for m in rd.persist_messages:
                    self.emit(f"on-sync {fmt.message(m)}")
                if rd.persist_messages:
                    node.pending.append((records, rd.persist_messages))
                if rd.committed is not None:
                    first, block, _ = rd.committed
                    self.emit(f"apply {fmt.entries(first, block)}")
                raft.advance(rd)
                for ctx, index in rd.read_states:
                    self.out.append(f"{self.indent()}read-state {ctx} index={index}")
        raise ScriptError(f"node {node.id} keeps having a Ready")

    def sync(self, node):
        storage = node.storage
        with self.header(f"> {node.id} sync"):
            storage.sync()
            now = [msgs for n, msgs in node.pending if n <= storage.durable]
            node.pending = [p for p in node.pending if p[0] > storage.durable]
            for msgs in now:
                for m in msgs:
                    if m.to == node.id:
                        self.emit(f"step {fmt.message(m)}")
                        node.raft.step(m)
                        self.note(node)
                    else:
                        self.emit(f"send {fmt.message(m)}")
                        self.send(m)

    def deliver(self, m):
        if (m.frm, m.to) in self.cut or m.to not in self.nodes:
            self.emit(f"lost {fmt.message(m)}", m)
            self.lost(m)
            return
        if m.type == MSG_SNAPSHOT:
            # The runtime streams the snapshot file; here the stream is one
            # message carrying the snapshot's configuration.
            sender = self.nodes[m.frm].storage.snaps
            m.entries = [meta for index, _, meta in sender if index == m.index].pop()
        self.emit(fmt.message(m), m)
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
        taken = [m for m in self.queue if match(m)]
        self.queue = [m for m in self.queue if not match(m)]
        return taken

    def stabilize(self, ids):
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
                    with self.header(f"> {i} receive"):
                        for m in msgs:
                            self.deliver(m)
            if not moved:
                return
        raise ScriptError("stabilize: the nodes keep talking")

    # --------------------------------------------------------- commands

    def cmd_add_nodes(self, args):
        count = args.pos_int(0, "how many nodes")
        first = max(self.nodes, default=0) + 1
        new = list(range(first, first + count))
        voters = args.take_ids("voters", new)
        learners = args.take_ids("learners", [])
        knobs = {key: args.take_int(opt) for opt, key in _KNOBS if args.has(opt)}
        knobs["pre_vote"] = args.take_bool("prevote", True)
        knobs["check_quorum"] = args.take_bool("checkquorum", True)
        knobs["read_mode"] = args.take("read-mode", "readindex")
        seed = args.take_int("seed")
        terms = args.take_ids("log", [])
        hs = HardState(args.take_int("term", max(terms, default=0)), args.take_int("vote", 0),
                       args.take_int("commit", 0))
        for node_id in new:
            storage = SimStorage()
            if terms:
                block = encode_entries([(t, ENTRY_NORMAL, b"e%d" % i)
                                        for i, t in enumerate(terms, 1)])
                storage.records.append(("entries", 1, block, len(terms)))
            storage.records.append(("hs", hs))
            storage.sync()
            node_knobs = dict(knobs, seed=node_id if seed is None else seed)
            self.nodes[node_id] = Node(node_id, voters, learners, node_knobs, storage)
            self.emit(fmt.node_line(self.nodes[node_id].raft))

    def cmd_campaign(self, args):
        node = self.node(args.pos[0])
        raft = node.raft
        self.attempt(node, raft.pre_campaign if raft.cfg.pre_vote else raft.campaign)

    def cmd_tick(self, args):
        node = self.node(args.pos[0])
        for _ in range(args.pos_int(1, "ticks") if len(args.pos) > 1 else 1):
            node.raft.tick()
            self.note(node)

    def cmd_run(self, args):
        ticks = args.take_int("ticks", 1)
        show = args.take("show", [])
        show = [show] if isinstance(show, str) else show
        self.shown = frozenset(MSG_TYPES.values()) if show == ["all"] else \
            frozenset(MSG_TYPES[s] for s in show)
        self.quiet = True
        try:
            for t in range(1, ticks + 1):
                self.prefix = f"tick {t}: "
                for node in self.nodes.values():
                    node.raft.tick()
                    self.note(node)
                self.stabilize(sorted(self.nodes))
        finally:
            self.quiet, self.prefix, self.shown = False, "", frozenset()

    def cmd_propose(self, args):
        node = self.node(args.pos[0])
        times = args.take_int("times", 1)
        spans = []
        for k in range(times):
            data = []
            for word in args.pos[1:]:
                word = word.replace("{i}", str(k))
                if "*" in word:
                    char, n = word.split("*")
                    word = char * int(n)
                data.append(word.encode())
            span = self.attempt(node, node.raft.propose, make_block(data))
            if span is not None:
                spans.append(span)
        if len(spans) == 1:
            self.emit(f"{node.id}: proposed [{spans[0][0]},{spans[0][1]}]")
        elif spans:
            self.emit(f"{node.id}: proposed [{spans[0][0]},{spans[-1][1]}] "
                      f"in {len(spans)} proposals")

    def cmd_read_index(self, args):
        node = self.node(args.pos[0])
        self.attempt(node, node.raft.read_index, args.pos[1])

    def cmd_transfer(self, args):
        node = self.node(args.pos[0])
        self.attempt(node, node.raft.transfer_leadership, args.pos_int(1, "target"))

    def _conf_change(self, args, op):
        node = self.node(args.pos[0])
        url = args.pos[2] if len(args.pos) > 2 else ""
        index = self.attempt(node, node.raft.propose_conf_change, op,
                             args.pos_int(1, "node"), url)
        if index is not None:
            self.emit(f"{node.id}: proposed {op} {args.pos[1]} at {index}")

    def cmd_add_learner(self, args):
        self._conf_change(args, "add")

    def cmd_promote(self, args):
        self._conf_change(args, "promote")

    def cmd_remove_node(self, args):
        self._conf_change(args, "remove")

    def cmd_snapshot(self, args):
        node = self.node(args.pos[0])
        raft = node.raft
        index = raft.log.applied
        if index > raft.snapshot_index:
            term = raft.log.term(index)
            node.storage.snaps.append((index, term, raft.config_at(index)))
            raft.snapshot_taken(index, term)
            self.emit(f"{node.id}: snapshot at {index}@{term}")
        self.cmd_compact(args)

    def cmd_compact(self, args):
        node = self.node(args.pos[0])
        raft = node.raft
        self.attempt(node, raft.compact, raft.compactable(args.take_int("trailing", 0)))
        self.emit(f"{node.id}: log from {raft.log.snap_index + 1}")

    def cmd_report_snapshot(self, args):
        node = self.node(args.pos[0])
        node.raft.report_snapshot(args.pos_int(1, "peer"), args.pos[2] == "ok")

    def cmd_report_unreachable(self, args):
        self.node(args.pos[0]).raft.report_unreachable(args.pos_int(1, "peer"))

    def cmd_flow(self, args):
        node = self.node(args.pos[0])
        node.raft.set_flow_paused(args.pos_int(1, "peer"), args.pos[2] == "paused")

    def cmd_step(self, args):
        node = self.node(args.pos[0])
        m = Message(MSG_TYPES[args.take("type")], to=node.id, frm=args.take_int("from", 0),
                    term=args.take_int("term", 0), commit=args.take_int("commit", 0),
                    context=args.take_int("round", 0), reject="reject" in args.pos,
                    index=args.take_int("index", 0), log_term=args.take_int("log-term", 0))
        for key in ("prev", "last", "at"):
            if args.has(key):
                m.index, m.log_term = map(int, args.take(key).split("@"))
        if args.has("hint"):
            m.hint, m.log_term = map(int, args.take("hint").split("@"))
        if "transfer" in args.pos:
            m.context = 1
        ents = args.take("ents")
        if ents is not None:
            ents = [e.split("/", 1) for e in ([ents] if isinstance(ents, str) else ents)]
            m.entries = encode_entries([(int(t), ENTRY_NORMAL, d.encode()) for t, d in ents])
            m.count = len(ents)
        self.emit(fmt.message(m))
        with self.nested():
            self.attempt(node, node.raft.step, m)

    def cmd_process_ready(self, args):
        for i in self.ids_or_all(args):
            self.process(self.nodes[i])

    def cmd_sync(self, args):
        for i in self.ids_or_all(args):
            self.sync(self.nodes[i])

    def _matcher(self, args):
        frm, to, kind = args.take_int("from"), args.take_int("to"), args.take("type")
        kind = MSG_TYPES[kind] if kind is not None else None
        return lambda m: ((frm is None or m.frm == frm) and (to is None or m.to == to)
                          and (kind is None or m.type == kind))

    def cmd_deliver_msgs(self, args):
        drop = set(args.take_ids("drop", []))
        for m in self.take(self._matcher(args)):
            if m.to in drop:
                self.emit(f"dropped {fmt.message(m)}")
            else:
                self.deliver(m)

    def cmd_drop_msgs(self, args):
        for m in self.take(self._matcher(args)):
            self.emit(f"dropped {fmt.message(m)}")

    def cmd_stabilize(self, args):
        quiet = "quiet" in args.pos
        ids = [int(i) for i in args.pos if i != "quiet"] or sorted(self.nodes)
        self.quiet = quiet
        try:
            self.stabilize(ids)
        finally:
            self.quiet = False

    def cmd_partition(self, args):
        inside = {int(i) for i in args.pos}
        for a in inside:
            for b in self.nodes:
                if b not in inside:
                    self.cut.update(((a, b), (b, a)))

    def cmd_cut(self, args):
        self.cut.add((args.pos_int(0, "from"), args.pos_int(1, "to")))

    def cmd_heal(self, args):
        self.cut.clear()

    def cmd_crash(self, args):
        node = self.node(args.pos[0])
        # Its connections break: what was in flight to or from it is gone,
        # and every peer's transport notices.
        for m in self.take(lambda m: node.id in (m.to, m.frm)):
            self.emit(f"lost {fmt.message(m)}")
            if m.frm != node.id:
                self.lost(m)
        for other in self.nodes.values():
            if other is not node:
                other.raft.report_unreachable(node.id)
        node.storage.crash()
        node.start()
        self.emit(fmt.node_line(node.raft))

    def cmd_status(self, args):
        for i in self.ids_or_all(args):
            raft = self.nodes[i].raft
            self.emit(fmt.node_line(raft))
            for peer, pr in sorted(raft.progress.items()):
                self.emit(f"  {peer}: {fmt.progress(pr)}")

    def cmd_raft_state(self, args):
        for i in sorted(self.nodes):
            raft = self.nodes[i].raft
            self.emit(f"{i}: {raft.role} term={raft.term} lead={raft.leader_id} "
                      f"commit={raft.log.committed}")

    def cmd_log(self, args):
        raft = self.node(args.pos[0]).raft
        log = raft.log
        self.emit(fmt.log_header(raft))
        if log.last_index > log.snap_index:
            block, _ = log.entries.slice(log.snap_index + 1, log.last_index + 1)
            for line in fmt.entry_lines(log.snap_index + 1, block):
                self.emit("  " + line)
