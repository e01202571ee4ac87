"""The interaction driver: runs the commands of a script (see datadriven.py)
against real sans-IO cores and prints what they do.

The nodes and the network are interaction_cluster.py's: nothing moves
unless a command says so, and nothing is random but the cores' own seeded
generators, so every run prints the same lines.

The runtime's duties are commands of their own so a script can stop
between them: `process-ready`, `sync`, `deliver-msgs`; `stabilize` repeats
all three until nothing moves.  Every change of a node's role or term is
printed where it happens.

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
  events [ID..]           the operator's events each node noted since the last
                          `events` (what the runtime logs), then forgotten
"""
from raftfast.core import (ConfChangeBusy, ConfChangeInvalid, LogPanic, NotLeader,
                           ProposalDropped, TransferInProgress)
from raftfast.core.messages import ENTRY_NORMAL, MSG_NAMES, VOTE_TRANSFER, HardState, Message
from tests.core import interaction_format as fmt
from tests.core.datadriven import Args, ScriptError
from tests.core.interaction_cluster import Cluster, Node, Printer
from tests.support.entrylog import encode_entries
from tests.support.simnet import SimStorage, make_block

MSG_TYPES = {name: t for t, name in MSG_NAMES.items()}
# Errors the core raises by design: printed, not raised.
CORE_ERRORS = (NotLeader, ProposalDropped, TransferInProgress, ConfChangeBusy,
               ConfChangeInvalid, LogPanic, ValueError)
_KNOBS = (("election", "election_ticks"), ("heartbeat", "heartbeat_ticks"),
          ("inflight", "max_inflight"), ("inflight-bytes", "max_inflight_bytes"),
          ("max-msg-bytes", "max_msg_bytes"), ("max-uncommitted", "max_uncommitted_entries"),
          ("max-uncommitted-bytes", "max_uncommitted_bytes"))


class Env:
    """Runs script commands (`cmd_<name>`) against a Cluster."""

    def __init__(self):
        self.out = Printer()
        self.cluster = Cluster(self.out)
        self.nodes = self.cluster.nodes

    def run(self, text):
        """Run one command line; returns its output lines."""
        args = Args(text)
        handler = getattr(self, "cmd_" + args.name.replace("-", "_"), None)
        if handler is None:
            raise ScriptError(f"unknown command {args.name!r}")
        self.out.lines = []
        handler(args)
        args.done()
        return self.out.lines or ["ok"]

    def emit(self, line):
        self.out.emit(line)

    def node(self, args, i=0):
        """The node whose id is the i-th positional argument."""
        try:
            return self.nodes[args.pos_int(i, "node id")]
        except (KeyError, ValueError):
            raise ScriptError(f"{args.name}: no node {args.pos[i]}") from None

    def ids_or_all(self, args):
        return [int(i) for i in args.pos] if args.pos else sorted(self.nodes)

    def attempt(self, node, call, *a):
        """Call into the core; an error it raises by design is printed."""
        try:
            result = call(*a)
        except CORE_ERRORS as e:
            self.emit(f"error: {type(e).__name__}: {e}")
            result = None
        self.cluster.note(node)
        return result

    def word(self, args, i, choices):
        if i >= len(args.pos) or args.pos[i] not in choices:
            raise ScriptError(f"{args.name}: expected one of {', '.join(choices)}")
        return args.pos[i]

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
        node = self.node(args)
        raft = node.raft
        self.attempt(node, raft.pre_campaign if raft.cfg.pre_vote else raft.campaign)

    def cmd_tick(self, args):
        node = self.node(args)
        for _ in range(args.pos_int(1, "ticks") if len(args.pos) > 1 else 1):
            node.raft.tick()
            self.cluster.note(node)

    def cmd_run(self, args):
        ticks = args.take_int("ticks", 1)
        show = args.take("show", [])
        show = [show] if isinstance(show, str) else show
        shown = MSG_TYPES.values() if show == ["all"] else [MSG_TYPES[s] for s in show]
        for t in range(1, ticks + 1):
            with self.out.quietly(shown, prefix=f"tick {t}: "):
                for node in self.nodes.values():
                    node.raft.tick()
                    self.cluster.note(node)
                self.cluster.stabilize(sorted(self.nodes))

    def cmd_propose(self, args):
        node = self.node(args)
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
        node = self.node(args)
        if len(args.pos) < 2:
            raise ScriptError("read-index: missing the read's context")
        self.attempt(node, node.raft.read_index, args.pos[1])

    def cmd_transfer(self, args):
        node = self.node(args)
        self.attempt(node, node.raft.transfer_leadership, args.pos_int(1, "target"))

    def _conf_change(self, args, op):
        node = self.node(args)
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
        node = self.node(args)
        raft = node.raft
        index = raft.log.applied
        if index > raft.snapshot_index:
            term = raft.log.term(index)
            node.storage.snaps.append((index, term, raft.config_at(index)))
            raft.snapshot_taken(index, term)
            self.emit(f"{node.id}: snapshot at {index}@{term}")
        self.cmd_compact(args)

    def cmd_compact(self, args):
        node = self.node(args)
        raft = node.raft
        self.attempt(node, raft.compact, raft.compactable(args.take_int("trailing", 0)))
        self.emit(f"{node.id}: log from {raft.log.snap_index + 1}")

    def cmd_report_snapshot(self, args):
        node = self.node(args)
        ok = self.word(args, 2, ("ok", "fail")) == "ok"
        node.raft.report_snapshot(args.pos_int(1, "peer"), ok)

    def cmd_report_unreachable(self, args):
        self.node(args).raft.report_unreachable(args.pos_int(1, "peer"))

    def cmd_flow(self, args):
        node = self.node(args)
        paused = self.word(args, 2, ("paused", "resumed")) == "paused"
        node.raft.set_flow_paused(args.pos_int(1, "peer"), paused)

    def cmd_step(self, args):
        node = self.node(args)
        kind = args.take("type")
        if kind not in MSG_TYPES:
            raise ScriptError(f"step: type= one of {', '.join(sorted(MSG_TYPES))}")
        m = Message(MSG_TYPES[kind], to=node.id, frm=args.take_int("from", 0),
                    term=args.take_int("term", 0), commit=args.take_int("commit", 0),
                    context=args.take_int("round", 0), reject="reject" in args.pos,
                    index=args.take_int("index", 0), log_term=args.take_int("log-term", 0))
        for key in ("prev", "last", "at"):
            if args.has(key):
                m.index, m.log_term = map(int, args.take(key).split("@"))
        if args.has("hint"):
            m.hint, m.log_term = map(int, args.take("hint").split("@"))
        if "transfer" in args.pos:
            m.context = VOTE_TRANSFER
        ents = args.take("ents")
        if ents is not None:
            ents = [e.split("/", 1) for e in ([ents] if isinstance(ents, str) else ents)]
            m.entries = encode_entries([(int(t), ENTRY_NORMAL, d.encode()) for t, d in ents])
            m.count = len(ents)
        self.emit(fmt.message(m))
        with self.out.nested():
            self.attempt(node, node.raft.step, m)

    def cmd_process_ready(self, args):
        for i in self.ids_or_all(args):
            self.cluster.process(self.nodes[i])

    def cmd_sync(self, args):
        for i in self.ids_or_all(args):
            self.cluster.sync(self.nodes[i])

    def _matcher(self, args):
        frm, to, kind = args.take_int("from"), args.take_int("to"), args.take("type")
        kind = MSG_TYPES[kind] if kind is not None else None
        return lambda m: ((frm is None or m.frm == frm) and (to is None or m.to == to)
                          and (kind is None or m.type == kind))

    def cmd_deliver_msgs(self, args):
        drop = set(args.take_ids("drop", []))
        for m in self.cluster.take(self._matcher(args)):
            if m.to in drop:
                self.emit(f"dropped {fmt.message(m)}")
            else:
                self.cluster.deliver(m)

    def cmd_drop_msgs(self, args):
        for m in self.cluster.take(self._matcher(args)):
            self.emit(f"dropped {fmt.message(m)}")

    def cmd_stabilize(self, args):
        quiet = "quiet" in args.pos
        ids = [int(i) for i in args.pos if i != "quiet"] or sorted(self.nodes)
        if quiet:
            with self.out.quietly():
                self.cluster.stabilize(ids)
        else:
            self.cluster.stabilize(ids)

    def cmd_partition(self, args):
        inside = {int(i) for i in args.pos}
        for a in inside:
            for b in self.nodes:
                if b not in inside:
                    self.cluster.cut.update(((a, b), (b, a)))

    def cmd_cut(self, args):
        self.cluster.cut.add((args.pos_int(0, "from"), args.pos_int(1, "to")))

    def cmd_heal(self, args):
        self.cluster.cut.clear()

    def cmd_crash(self, args):
        node = self.node(args)
        self.cluster.crash(node)
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

    def cmd_events(self, args):
        for i in self.ids_or_all(args):
            raft = self.nodes[i].raft
            events, raft.events = raft.events, []
            for kind, fields in events:
                self.emit(f"{i}: {fmt.event(kind, fields)}")

    def cmd_log(self, args):
        raft = self.node(args).raft
        log = raft.log
        self.emit(fmt.log_header(raft))
        if log.last_index > log.snap_index:
            block, _ = log.entries.slice(log.snap_index + 1, log.last_index + 1)
            for line in fmt.entry_lines(log.snap_index + 1, block):
                self.emit("  " + line)
