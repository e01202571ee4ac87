"""The nemesis of a chaos run: a thread that injects faults into a proxied
cluster, holds them, undoes them, and lets the cluster recover.

The schedule is drawn from a seeded generator: which fault, which nodes,
how long.  Faults aimed at "the leader" ask the nodes at that moment, so a
replay with the same seed makes the same choices only as far as the
cluster elects the same leaders; the log says what was actually done.

The schedule goes in rounds of one network fault and one process fault,
each kind dealt from its own shuffled deck (every kind comes up once before
any comes up twice) by a generator of its own, so the sequence of kinds
depends on the seed alone and even a short run injects most kinds.  In half
the rounds the two faults follow each other; in the other half they
overlap (a node killed inside a partition, a leader paused while its links
are slow...), and are undone in a random order: a node may come back to a
network that is still split, or a network heal while a node is still down.
"""
import random
import signal
import socket
import threading
import time
import traceback
from collections import Counter

# Network faults go through the proxy.
NETWORK_FAULTS = (
    "partition",        # the nodes split in two random groups, both directions cut
    "isolate_leader",   # the leader cut off from everyone, both directions
    "isolate_node",     # a random node cut off
    "one_way",          # a node (the leader half the time) loses its outgoing or incoming links
    "blackhole",        # a node's links swallow everything, both ways
    "delay",            # a node's links, or every link, delayed 20-300 ms each way
)
# Process faults are signals.
PROCESS_FAULTS = (
    "kill",             # SIGKILL a random node, restart it when the fault ends
    "kill_leader",
    "pause",            # SIGSTOP a random node, SIGCONT when the fault ends
    "pause_leader",
    "kill_all",         # SIGKILL every node at once (fsync always: nothing acknowledged may go)
    "transfer",         # RAFT.TRANSFER_LEADER to a random other node (it may be cut off or stopped)
)
FAULT_KINDS = NETWORK_FAULTS + PROCESS_FAULTS


class Nemesis(threading.Thread):
    def __init__(self, cluster, seed, stop, hold=(0.6, 2.5), recover=(0.4, 1.5)):
        super().__init__(name="chaos-nemesis", daemon=True)
        self.cluster, self.proxy = cluster, cluster.proxy
        self.rng = random.Random(seed)                    # targets and durations
        self.rounds = self._deal(random.Random(f"{seed}-kinds"))
        self.stop, self.hold, self.recover = stop, hold, recover
        self.started = time.monotonic()
        self.log = []                 # (seconds since start, kind, what was done)
        self.counts = Counter()       # faults injected, by kind
        self.overlaps = 0             # rounds whose two faults overlapped
        self.errors = []
        self.paused = set()
        self.killed = set()

    def run(self):
        try:
            while not self.stop.is_set():
                self._one_round()
        except Exception:  # noqa: BLE001 - reported by the run, not lost in a thread
            self.errors.append(traceback.format_exc())

    @staticmethod
    def _deal(rng):
        """Rounds forever: (network kind, process kind, overlap or not)."""
        network, process = [], []
        while True:
            for deck, kinds in ((network, NETWORK_FAULTS), (process, PROCESS_FAULTS)):
                if not deck:
                    deck.extend(kinds)
                    rng.shuffle(deck)
            yield network.pop(), process.pop(), rng.random() < 0.5

    def _one_round(self):
        net_kind, proc_kind, overlap = next(self.rounds)
        if not overlap:
            self._hold(self._inject(net_kind))
            if not self.stop.is_set():
                self._hold(self._inject(proc_kind))
            return
        self.overlaps += 1
        undos = [self._inject(net_kind)]
        try:
            self.stop.wait(self.rng.uniform(0.1, 0.6))  # the second fault comes later
            undos.append(self._inject(proc_kind))
        finally:
            self.rng.shuffle(undos)
            self._hold(*undos)

    def _inject(self, kind):
        undo = getattr(self, "_" + kind)()
        self.counts[kind] += 1
        return undo

    def _hold(self, *undos):
        """Keep the faults for a while, undo them in order, then let the
        cluster recover.  These waits are the schedule itself (how long a
        fault lasts, how long the cluster runs between faults), drawn from
        the seeded generator; nothing waits on them for an event."""
        try:
            self.stop.wait(self.rng.uniform(*self.hold))
        finally:
            for undo in undos:
                undo()
        self.stop.wait(self.rng.uniform(*self.recover))

    def _note(self, kind, what):
        self.log.append((round(time.monotonic() - self.started, 2), kind, what))

    # -- choosing targets --------------------------------------------------

    def _live_ids(self):
        return [i for i in self.cluster.ids if i not in self.killed]

    def _leader(self):
        """The node that says it leads (highest term), or None.  Paused nodes
        are not asked: they would not answer."""
        best = None
        for i in self._live_ids():
            if i in self.paused:
                continue
            info = self.cluster.nodes[i].info()
            if info and info.get("raft_role") == "leader":
                term = int(info["raft_current_term"])
                if best is None or term > best[0]:
                    best = (term, i)
        return None if best is None else best[1]

    def _leader_or_random(self):
        leader = self._leader()
        return leader if leader is not None else self.rng.choice(self._live_ids())

    # -- network faults ----------------------------------------------------

    def _heal_network(self, kind):
        def undo():
            self.proxy.heal_all()
            self._note(kind, "healed")
        return undo

    def _partition(self):
        ids = list(self.cluster.ids)
        self.rng.shuffle(ids)
        cut = self.rng.randint(1, len(ids) // 2)
        self.proxy.partition(ids[:cut], ids[cut:])
        self._note("partition", f"{sorted(ids[:cut])} | {sorted(ids[cut:])}")
        return self._heal_network("partition")

    def _isolate_leader(self):
        node = self._leader_or_random()
        self.proxy.isolate(node)
        self._note("isolate_leader", f"node {node}")
        return self._heal_network("isolate_leader")

    def _isolate_node(self):
        node = self.rng.choice(self.cluster.ids)
        self.proxy.isolate(node)
        self._note("isolate_node", f"node {node}")
        return self._heal_network("isolate_node")

    def _one_way(self):
        node = self._leader_or_random() if self.rng.random() < 0.5 else \
            self.rng.choice(self.cluster.ids)
        others = [i for i in self.cluster.ids if i != node]
        if self.rng.random() < 0.5:
            self.proxy.cut_one_way([node], others)
            self._note("one_way", f"node {node} cannot send")
        else:
            self.proxy.cut_one_way(others, [node])
            self._note("one_way", f"node {node} cannot receive")
        return self._heal_network("one_way")

    def _blackhole(self):
        node = self.rng.choice(self.cluster.ids)
        for src, dst in self.proxy.links_of(node):
            self.proxy.blackhole(src, dst)
        self._note("blackhole", f"node {node}")
        return self._heal_network("blackhole")

    def _delay(self):
        ms = self.rng.choice((20, 50, 100, 200, 300))
        if self.rng.random() < 0.3:
            links, where = self.proxy.links(), "every link"
        else:
            node = self.rng.choice(self.cluster.ids)
            links, where = self.proxy.links_of(node), f"node {node}'s links"
        for src, dst in links:
            self.proxy.delay(src, dst, ms)
        self._note("delay", f"{where} by {ms} ms")
        return self._heal_network("delay")

    # -- process faults ----------------------------------------------------

    def _kill_one(self, kind, node):
        self.cluster.nodes[node].kill(signal.SIGKILL)
        self.killed.add(node)
        self._note(kind, f"node {node} SIGKILL")

        def undo():
            self.restart(node)
            self._note(kind, f"node {node} restarted")
        return undo

    def _kill(self):
        return self._kill_one("kill", self.rng.choice(self._live_ids()))

    def _kill_leader(self):
        return self._kill_one("kill_leader", self._leader_or_random())

    def _kill_all(self):
        nodes = self._live_ids()
        for node in nodes:
            self.cluster.nodes[node].kill(signal.SIGKILL)
            self.killed.add(node)
        self._note("kill_all", f"nodes {nodes} SIGKILL")

        def undo():
            for node in nodes:
                self.restart(node)
            self._note("kill_all", f"nodes {nodes} restarted")
        return undo

    def _pause_one(self, kind, node):
        self.cluster.nodes[node].proc.send_signal(signal.SIGSTOP)
        self.paused.add(node)
        self._note(kind, f"node {node} SIGSTOP")

        def undo():
            self.resume(node)
            self._note(kind, f"node {node} SIGCONT")
        return undo

    def _pause(self):
        return self._pause_one("pause", self.rng.choice(self._live_ids()))

    def _pause_leader(self):
        return self._pause_one("pause_leader", self._leader_or_random())

    def _transfer(self):
        """Ask the leader to hand over to a random other node, without
        waiting for the answer (it comes when the target leads, or after an
        election timeout): writes meet -TRYAGAIN meanwhile."""
        leader = self._leader()
        others = [i for i in self._live_ids() if i != leader]
        if leader is None or not others:
            self._note("transfer", "no leader to ask")
            return lambda: None
        target = self.rng.choice(others)
        port = self.cluster.nodes[leader].client_port
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            s.sendall(b"*2\r\n$20\r\nRAFT.TRANSFER_LEADER\r\n$%d\r\n%d\r\n"
                      % (len(str(target)), target))
        except OSError as e:
            self._note("transfer", f"leader {leader} unreachable: {e}")
            return lambda: None
        self._note("transfer", f"leader {leader} -> node {target}")

        def undo():
            try:
                s.settimeout(0.2)
                reply = s.recv(256).split(b"\r\n")[0].decode(errors="replace")
            except OSError:
                reply = "no answer yet"
            finally:
                s.close()
            self._note("transfer", f"to node {target}: {reply}")
        return undo

    # -- undoing -------------------------------------------------------------

    def restart(self, node):
        self.cluster.nodes[node].start()
        self.killed.discard(node)

    def resume(self, node):
        self.cluster.nodes[node].proc.send_signal(signal.SIGCONT)
        self.paused.discard(node)

    def heal_everything(self):
        """After the run: every link healed, every node running."""
        self.proxy.heal_all()
        for node in sorted(self.paused):
            self.resume(node)
        for node in sorted(self.killed):
            self.restart(node)
