"""One client connection: parse what arrived, hand KV commands to the
batcher, answer the rest through the command table, and write replies in
the order the commands came.

Each connection parses whatever arrived into a batch of commands (the
parser is compiled).  Replies are slots in arrival order: a slot filled
early (a PING behind a pending SET) waits for the slots before it, so
replies leave in the order commands came, one write per connection per
flush.

A connection is not read while the node's writes in flight (proposed and
not yet answered, or gathered for the next proposal) pass the batcher's
window: a leader that read every client's pipeline at once would hold them
all in memory, and every client's first request would wait behind all of
them.

Order within a connection: a read waits for the connection's earlier writes
to be applied (its floor), and a write that follows reads waits, unparsed,
until those reads were served, so neither sees the other out of order.
"""
import collections
import itertools
import logging

from raftfast._resp import ErrorReply, RespParser, encode_replies
from raftfast.address import set_nodelay
from raftfast.server.batcher import entry_offsets
from raftfast.server.memory import OOM_ERROR, entry_grows
from raftfast.server.replies import PENDING, Slot, encoded_error
from raftfast.server.version_gate import VERSION_ERROR, legacy_entry, writes_gated

__all__ = ["ClientProtocol", "MAX_CLIENTS_ERROR"]

MAX_CLIENTS_ERROR = b"-ERR max number of clients reached\r\n"
_client_ids = itertools.count(1)
log = logging.getLogger("raftfast.client")


class ClientProtocol:
    __slots__ = ("server", "transport", "parser", "replies", "resp3", "name", "id",
                 "closing", "last_write", "reads_in_flight", "parsing_reads", "held",
                 "paused_by_client", "throttled", "authenticated", "read_since_sweep", "idle_sweeps",
                 "stream")

    def __init__(self, server):
        self.server = server
        self.transport = None
        self.parser = RespParser(max_bulk_len=server.cfg.proto_max_bulk_len)
        self.replies = collections.deque()
        self.resp3 = False
        self.name = None
        self.id = next(_client_ids)
        self.closing = False
        self.last_write = 0        # log index of this connection's last proposed write
        self.reads_in_flight = 0   # its reads batched or waiting for confirmation
        self.parsing_reads = False  # which kind the next parse_kv call takes
        self.held = False          # a write waits, unparsed, for earlier reads
        self.paused_by_client = False
        self.throttled = False     # not read until the batcher's window has room
        # With a password set, commands other than AUTH, HELLO and QUIT wait
        # for AUTH, one at a time and within the pre-auth limits.
        self.authenticated = server.password is None
        self.parser.unauthenticated = not self.authenticated
        self.read_since_sweep = False  # the idle sweep (--timeout) clears it
        self.idle_sweeps = 0  # sweeps in a row that found nothing read nor owed
        # A reply too large to build, written a piece at a time as the
        # client takes it (RAFT.BACKUP: server/backup.py), or None.
        self.stream = None

    def connection_made(self, transport):
        self.transport = transport
        server = self.server
        if len(server.connections) >= server.maxclients:
            transport.write(MAX_CLIENTS_ERROR)
            transport.close()
            self.closing = True
            server.rejected_connections += 1
            return
        set_nodelay(transport)
        server.connections.add(self)

    # A client that sends without reading must not grow our buffers without
    # bound: stop reading it while its replies cannot be written.
    def pause_writing(self):
        self.paused_by_client = True
        self.transport.pause_reading()

    def resume_writing(self):
        self.paused_by_client = False
        self._resume_reading()
        if self.stream is not None:
            self.stream.pump()

    def unthrottle(self):
        """The batcher's window has room again."""
        self.throttled = False
        self._resume_reading()

    def _resume_reading(self):
        """Read again, unless another of the three reasons to pause holds:
        a write held behind reads, a client not reading its replies, the
        batcher's window full."""
        if (not self.held and not self.paused_by_client and not self.throttled
                and self.transport is not None and not self.transport.is_closing()):
            self.transport.resume_reading()

    def reads_served(self, n):
        """n of this connection's reads were answered (or failed)."""
        self.reads_in_flight -= n
        if self.held and self.reads_in_flight == 0:
            self.held = False
            self._resume_reading()
            self._parse_buffered()  # the write that waited, and what follows it
        else:
            self.flush()

    def unsent_bytes(self):
        """Replies written and not yet taken by the client."""
        transport = self.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def close_now(self):
        """Close at once, dropping what is buffered either way (a limit was
        passed)."""
        self.closing = True
        self.parser = RespParser(max_bulk_len=1)  # what it held is freed
        if self.transport is not None:
            self.transport.abort()

    def eof_received(self):
        return None  # the transport closes itself (no asyncio.Protocol base to say so)

    def connection_lost(self, exc):
        self.server.connections.discard(self)
        self.closing = True
        if self.stream is not None:
            self.stream.abort()

    def data_received(self, data):
        if self.closing:
            return
        try:
            self._received(data)
        except MemoryError:
            # This client asked for more than the node has: it alone pays.
            log.error("closing client %d: out of memory while serving its requests", self.id)
            self.close_now()

    def _received(self, data):
        server = self.server
        server.client_reads += 1
        self.read_since_sweep = True
        parser = self.parser
        parser.feed(data)
        if not self.held:
            self._parse_buffered()
        if parser.pending_bytes > server.cfg.client_query_buffer_limit and not self.closing:
            log.warning("closing client %d: %d bytes of requests not complete yet pass "
                        "--client-query-buffer-limit %d", self.id, parser.pending_bytes,
                        server.cfg.client_query_buffer_limit)
            self.close_now()
            return
        batcher = self.server.batcher
        if batcher.over_window() and not self.throttled and not self.closing:
            batcher.throttle(self)

    def _parse_buffered(self):
        parser = self.parser
        server = self.server
        batcher = server.batcher
        max_cmd = server.max_command_bytes
        while not self.closing:
            if not self.authenticated:
                requests = parser.parse(1)
                if not requests:
                    break
                server.dispatch_unauthenticated(self, requests[0])
            elif server.driver.is_leader:
                # The fast path: KV commands go straight into a batch, reads
                # and writes into separate ones, switching as the stream does.
                if self.parsing_reads:
                    n, stop = parser.parse_kv(batcher.read_buf, self.resp3, 1 << 30, 1 << 62,
                                              max_cmd, True, True)
                    if n:
                        batcher.added_reads(self, n)
                elif server.memory.refusing or writes_gated(server.driver):
                    room_entries, room_bytes, empty = batcher.room()
                    block = bytearray()
                    n, stop = parser.parse_kv(block, self.resp3, room_entries, room_bytes,
                                              max_cmd, empty, False)
                    if n:
                        self._admit_checked(block)
                else:
                    room_entries, room_bytes, empty = batcher.room()
                    n, stop = parser.parse_kv(batcher.buf, self.resp3, room_entries,
                                              room_bytes, max_cmd, empty, False)
                    if n:
                        batcher.added(self, n)
                if stop is None:
                    if parser.stopped_at_kind:
                        self.parsing_reads = not self.parsing_reads
                        if not self.parsing_reads and self.reads_in_flight:
                            # A write after reads: it must not be applied
                            # before they are served.  Stop reading until then.
                            self.held = True
                            self.transport.pause_reading()
                            break
                        continue
                    if parser.stopped_at_limit:
                        batcher.flush()
                        continue
                    break
                server.dispatch(self, stop)
                if self.held:
                    break  # that command holds what follows (RAFT.BACKUP)
            else:
                # Not the leader: KV commands are counted, not kept, and
                # answered with the redirect.
                scratch = bytearray()
                n, stop = parser.parse_kv(scratch, self.resp3, 1 << 30, 1 << 62, max_cmd)
                if n:
                    err = server.redirect_error()
                    self.replies.append(Slot(self.resp3, encoded_error(err, n), True))
                if stop is None:
                    break
                server.dispatch(self, stop)
        if parser.error is not None and not self.closing:
            self.reply(ErrorReply(f"ERR {parser.error}"))
            self.closing = True
        self.flush()

    def _admit_checked(self, block):
        """The cluster is at its memory limit, or some member may run an
        older release (server/version_gate.py): each command that can grow
        the data set gets OOM, or one that member cannot apply an error
        saying so, in its place among the replies; the others (DEL: deleting
        is how memory recovers) go to the batch."""
        server = self.server
        batcher = server.batcher
        gated = writes_gated(server.driver)
        refusing = server.memory.refusing
        offsets = entry_offsets(block)
        # Each entry's verdict (the error, or the bytes to propose); a run of
        # refusals is one reply slot, a run of admitted entries one append.
        verdicts = []
        for i in range(len(offsets) - 1):
            start, end = offsets[i], offsets[i + 1]
            entry = legacy_entry(block, start, end) if gated else block[start:end]
            if entry is None:
                verdicts.append(VERSION_ERROR)
            elif refusing and entry_grows(block, start):
                verdicts.append(OOM_ERROR)
            else:
                verdicts.append(entry)
        for verdict, run in itertools.groupby(verdicts, lambda v: v if isinstance(v, str) else b""):
            run = list(run)
            if verdict:
                self.replies.append(Slot(self.resp3, encoded_error(verdict, len(run)), True))
                if verdict == OOM_ERROR:
                    server.memory.writes_refused += len(run)
            else:
                batcher.buf += b"".join(run)
                batcher.added(self, len(run))

    def reply(self, value):
        self.replies.append(Slot(self.resp3, value))

    def pending(self):
        slot = Slot(self.resp3)
        self.replies.append(slot)
        return slot

    def flush(self):
        replies = self.replies
        chunks = []
        while replies:
            slot = replies[0]
            if slot.value is PENDING:
                break
            if slot.raw:
                chunks.append(replies.popleft().value)
                continue
            # Consecutive replies of one protocol are encoded in one call.
            resp3 = slot.resp3
            run = []
            while replies:
                slot = replies[0]
                if slot.value is PENDING or slot.raw or slot.resp3 != resp3:
                    break
                run.append(replies.popleft().value)
            chunks.append(encode_replies(run, resp3))
        if not chunks:
            return
        if self.transport is not None and not self.transport.is_closing():
            if len(chunks) == 1:
                self.transport.write(chunks[0])
            else:
                self.transport.writelines(chunks)
            if self.closing and not replies:
                self.transport.close()
