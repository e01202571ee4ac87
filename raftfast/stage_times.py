"""RAFTFAST_STAGE_TIMES=1: the time a node spends in each stage of the
write path, for `python -m raftfast.bench run --breakdown-stages`.

StageTimer wraps the public entry points of each stage on the node's
objects (on the state machine's class, on a subclass the server makes its
client connections of, and on the driver's view of the transport) with a
function that adds the call's duration and count to that stage:

    client_read  a client connection's bytes: parse, batch, propose
    peer_step    a peer read's messages stepped into the Raft core (on a
                 follower, with the pass they start)
    wal_write    entries written to the log (page cache)
    fsync        the log made durable (on the loop or in the fsync thread)
    send         messages the driver hands to the peer transport
    apply        committed entries applied to the store (and replies built)

Stages nest (client_read and a follower's peer_step include the pass
they run at once), so their
sum is not the node's busy time.  The wrappers cost a Python call and two
clock reads per call: a node that times its stages runs slower, and only
the shares between stages mean anything.
"""
import time

__all__ = ["STAGES", "StageTimer", "format_stages", "parse_stages"]

STAGES = ("client_read", "peer_step", "wal_write", "fsync", "send", "apply")
FIELD = "raftfast_stage_times"


class StageTimer:
    def __init__(self):
        self.ns = dict.fromkeys(STAGES, 0)
        self.calls = dict.fromkeys(STAGES, 0)

    def timed(self, stage, fn):
        """fn, adding each call's duration to `stage`."""
        ns, calls, clock = self.ns, self.calls, time.perf_counter_ns

        def wrapper(*args):
            t0 = clock()
            try:
                return fn(*args)
            finally:
                ns[stage] += clock() - t0
                calls[stage] += 1
        return wrapper

    def install_storage(self, storage):
        """Before the driver exists: it takes storage.sync when built."""
        storage.append = self.timed("wal_write", storage.append)
        storage.sync = self.timed("fsync", storage.sync)

    def install_node(self, driver, transport, state_machine, server):
        """Once the node's objects exist, before it serves anyone."""
        transport.on_messages = self.timed("peer_step", driver.step_read)
        driver.transport = _TimedSends(transport, self.timed)
        machine = type(state_machine)  # its instances have slots: wrap on the class
        machine.apply = self.timed("apply", machine.apply)
        machine.apply_replies = self.timed("apply", machine.apply_replies)
        # Connections are compiled classes, closed to patching: the server
        # makes its connections of a subclass that times them.
        cls = server.protocol
        server.protocol = type("Timed" + cls.__name__, (cls,), {
            "__slots__": (), "data_received": self.timed("client_read", cls.data_received)})

    def stats(self):
        return {FIELD: format_stages(self.ns, self.calls)}


class _TimedSends:
    """The driver's view of the transport, its two sends timed (the
    transport is a compiled class, closed to patching)."""

    def __init__(self, transport, timed):
        self._transport = transport
        self.send = timed("send", transport.send)
        self.send_frame = timed("send", transport.send_frame)

    def __getattr__(self, name):
        return getattr(self._transport, name)


def format_stages(ns, calls):
    """`stage=ns:calls,...`, the INFO stats value."""
    return ",".join(f"{s}={ns[s]}:{calls[s]}" for s in ns)


def parse_stages(text):
    """format_stages' text as {stage: (ns, calls)}; bad items skipped."""
    out = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        ns, _, calls = value.partition(":")
        try:
            out[name] = (int(ns), int(calls))
        except ValueError:
            pass
    return out
