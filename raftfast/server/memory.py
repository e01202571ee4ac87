"""--maxmemory and --maxmemory-clients: what a node uses, what the voters
report, and whether the leader may take writes that grow the data set.

On every tick of the node's clock (a tenth of a second by default, on the
wakeup the tick has anyway; the server's tick calls check) the node adds up what it holds (the data set as
the store estimates it, the log in memory, every client's buffers), closes
the client holding the most while all clients' buffers pass
--maxmemory-clients, and decides whether writes are refused: the leader
refuses Redis's denyoom commands while its own usage, or the last usage a
voter reported within one election timeout, is over that node's limit.
Followers report through their heartbeat answers (the driver stamps them),
so a replica with less memory than the leader is protected too; a voter
that has not reported lately does not block writes.  Overshoot is bounded
by what was admitted in one report's time.

A node over its own limit snapshots at once, so the log it applied stops
counting against it.
"""
import logging
import os

import struct

from raftfast._kv import (OP_APPEND, OP_DECR, OP_DECRBY, OP_EXEC, OP_INCR, OP_INCRBY, OP_MSET,
                          OP_SESSION_OPEN, OP_SET, OP_SETNX, OPCODES)
from raftfast.core.messages import ENTRY_HEADER_SIZE
from raftfast.runtime.memory_reports import OOM_ERROR, a_voter_is_over

__all__ = ["DENYOOM_OPCODES", "MemoryGuard", "OOM_ERROR", "entry_grows"]

log = logging.getLogger("raftfast.memory")

# The KV commands that can grow the data set (Redis's denyoom flag; a new
# session grows the sessions kept).
DENYOOM_OPCODES = frozenset({OP_SET, OP_APPEND, OP_INCR, OP_SETNX, OP_MSET, OP_INCRBY, OP_DECR,
                             OP_DECRBY, OP_SESSION_OPEN})


def entry_grows(block, at):
    """Can the entry at `at` grow the data set (Redis's denyoom)?  Its
    command's opcode follows the entry header, the RESP3 bit aside; a
    RAFT.EXEC grows it when the command it runs does (its third argument
    names that command)."""
    op = block[at + ENTRY_HEADER_SIZE] & 0x7F
    if op != OP_EXEC:
        return op in DENYOOM_OPCODES
    p = at + ENTRY_HEADER_SIZE + 5
    for _ in range(2):   # the session and the sequence number
        p += 4 + struct.unpack_from("<I", block, p)[0]
    (n,) = struct.unpack_from("<I", block, p)
    return OPCODES.get(bytes(block[p + 4:p + 4 + n]).lower()) in DENYOOM_OPCODES


class MemoryGuard:
    """The server's accounting; `refusing` is what the write path checks."""

    def __init__(self, server, maxmemory, maxmemory_clients):
        self.server = server
        self.maxmemory = maxmemory
        self.maxmemory_clients = maxmemory_clients
        self.used = 0              # bytes, as of the last check
        self.clients = 0           # of which client buffers
        self.refusing = False      # writes that grow the data set get OOM
        self.clients_evicted = 0   # INFO stats: closed by --maxmemory-clients
        self.writes_refused = 0    # INFO stats: commands answered OOM

    def check(self):
        """Count, evict, decide (on every tick, and from tests)."""
        held = [(conn.parser.pending_bytes + conn.unsent_bytes(), conn)
                for conn in self.server.connections]
        self.clients = sum(size for size, conn in held)
        if self.maxmemory_clients and self.clients > self.maxmemory_clients:
            self._evict_clients(held)
        driver = self.server.driver
        self.used = driver.state_machine.memory + driver.core.log.entries.nbytes + self.clients
        driver.memory_report = (self.used, self.maxmemory)
        self.refusing = self._over()
        if self.maxmemory and self.used > self.maxmemory:
            driver.snapshots.compact_now()

    def _evict_clients(self, held):
        """Close the clients holding the most until all of them together
        are within --maxmemory-clients (Redis's client eviction).  held:
        (bytes, connection) of each."""
        for size, conn in sorted(held, key=lambda h: (h[0], h[1].id), reverse=True):
            if self.clients <= self.maxmemory_clients or size == 0:
                break
            log.warning("closing client %d: it holds %d bytes and all clients %d, past "
                        "--maxmemory-clients %d", conn.id, size, self.clients,
                        self.maxmemory_clients)
            conn.close_now()
            self.clients_evicted += 1
            self.clients -= size

    def _over(self):
        """Is this node, or a voter that reported within an election
        timeout, over its limit?  (The reports' times are the driver's
        clock's.)"""
        if self.maxmemory and self.used > self.maxmemory:
            return True
        return a_voter_is_over(self.server.driver)

    def info(self):
        """INFO memory's fields."""
        return {"used_memory": self.used, "used_memory_rss": _rss(),
                "maxmemory": self.maxmemory, "maxmemory_clients": self.maxmemory_clients,
                "mem_clients_normal": self.clients,
                "raftfast_log_bytes": self.server.driver.core.log.entries.nbytes,
                "maxmemory_reached": int(self.refusing)}


def _rss():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0
