"""The client front door: RESP2/RESP3 over TCP or Unix sockets.

Each connection parses whatever arrived into a batch of commands (the
parser is compiled), answers the ones any node can answer at once, and
hands KV commands to the Batcher: writes gathered in one loop iteration go
into one entry block proposed to the log; reads (GET, MGET, EXISTS) go into
a block of their own that is served from the state machine once a
ReadIndex confirmation says it may be, never through the log.  Replies are
slots in arrival order: a slot filled early (a PING behind a pending SET)
waits for the slots before it, so replies leave in the order commands came,
one write per connection per flush.

Order within a connection: a read waits for the connection's earlier writes
to be applied (its floor), and a write that follows reads waits, unparsed,
until those reads were served, so neither sees the other out of order.
"""
import asyncio
import collections
import itertools
import logging
import os
import resource
import time

from raftfast import __version__
from raftfast._kv import (OPCODES, OP_APPEND, OP_DEL, OP_EXISTS, OP_GET, OP_INCR, OP_MGET, OP_SET,
                          encode_commands)
from raftfast._resp import OK, PONG, ErrorReply, RespParser, encode_replies
from raftfast.address import AddressError, create_server, parse_address, set_nodelay
from raftfast.core import (ConfChangeBusy, ConfChangeInvalid, NotLeader, ProposalDropped,
                           TransferInProgress)
from raftfast.runtime.driver import NOT_LEADER

log = logging.getLogger("raftfast.client")

PENDING = object()
MAX_VALUE_BYTES = 32 << 20  # one entry must fit in one peer frame
_client_ids = itertools.count(1)

# opcode -> (name, min args, max args or None) ; args exclude the command name
_ARITY = {
    OP_GET: (1, 1), OP_SET: (2, 2), OP_APPEND: (2, 2), OP_INCR: (1, 1),
    OP_MGET: (1, None), OP_EXISTS: (1, None), OP_DEL: (1, None),
}


class Slot:
    """One reply, or the replies of a run of commands, in arrival order.
    `value` is a reply value to encode, or with `raw` the encoded bytes.
    It keeps the protocol in force when its command ran: a HELLO later in
    the same pipeline must not change it."""

    __slots__ = ("value", "resp3", "raw")

    def __init__(self, resp3, value=PENDING, raw=False):
        self.value = value
        self.resp3 = resp3
        self.raw = raw


def _encoded_error(text, n):
    return ("-" + text.replace("\r", " ").replace("\n", " ") + "\r\n").encode() * n


def take_replies(parts, n):
    """The next n entries' encoded replies from `parts`, a list of
    [replies, offsets, lo, hi] pieces the driver handed over (entries lo..hi
    of one applied block); consumes them as it goes."""
    out = []
    while n:
        replies, offsets, lo, hi = parts[0]
        k = min(n, hi - lo)
        out.append(replies[offsets[lo]:offsets[lo + k]])
        n -= k
        if lo + k == hi:
            parts.pop(0)
        else:
            parts[0][2] = lo + k
    return out[0] if len(out) == 1 else b"".join(out)


class Batcher:
    """Coalesces the commands of one loop iteration, from every connection,
    into one entry block (the compiled parser writes each command straight
    into `buf`), proposed at most max_entries entries / max_bytes bytes at a
    time.  `runs` remembers which connection's slot gets which replies."""

    def __init__(self, loop, server, driver, max_entries, max_bytes, linger_us):
        self.loop = loop
        self.server = server
        self.driver = driver
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.linger = linger_us / 1e6
        self.buf = bytearray()
        self.count = 0
        self.runs = []  # (conn, slot, number of entries)
        # Reads of this iteration: the same block format, never proposed.
        self.read_buf = bytearray()
        self.read_count = 0
        self.read_runs = []
        self._handle = None
        self.proposals = 0
        self.entries_proposed = 0

    def room(self):
        """(entries, bytes) that still fit, and whether the next command
        must be taken whatever its size (only into an empty batch: a
        command larger than the byte limit then goes alone)."""
        return (self.max_entries - self.count, max(0, self.max_bytes - len(self.buf)),
                self.count == 0)

    def added(self, conn, n):
        self.count += n
        self.runs.append((conn, conn.pending(), n))
        if self.count >= self.max_entries or len(self.buf) >= self.max_bytes:
            self.flush()
        else:
            self._arm()

    def added_reads(self, conn, n):
        self.read_count += n
        conn.reads_in_flight += n
        self.read_runs.append((conn, conn.pending(), n))
        if self.read_count >= self.max_entries or len(self.read_buf) >= self.max_bytes:
            self.flush()
        else:
            self._arm()

    def _arm(self):
        if self._handle is None:
            if self.linger > 0:
                self._handle = self.loop.call_later(self.linger, self.flush)
            else:
                self._handle = self.loop.call_soon(self.flush)

    def flush(self):
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        # Writes first: reads of the same connections must see them.
        if self.count:
            self._flush_writes()
        if self.read_count:
            self._flush_reads()

    def _flush_reads(self):
        block, runs = self.read_buf, self.read_runs
        self.read_buf, self.read_runs, self.read_count = bytearray(), [], 0
        server = self.server

        def served(result):
            if result is None:
                # Confirmed: answer from the state machine as it stands.
                replies, offsets = server.driver.kv.apply_replies(block)
                parts = [[replies, offsets, 0, len(offsets) - 1]]
                for conn, slot, n in runs:
                    slot.value, slot.raw = take_replies(parts, n), True
            else:
                err = server.redirect_error() if result == NOT_LEADER else ErrorReply(result)
                for conn, slot, n in runs:
                    slot.value, slot.raw = _encoded_error(str(err), n), True
            for conn, slot, n in runs:
                conn.reads_served(n)

        floor = 0
        for conn, slot, n in runs:
            if conn.last_write > floor:
                floor = conn.last_write
        try:
            self.driver.read(floor, served)
        except NotLeader:
            served(NOT_LEADER)

    def _flush_writes(self):
        block, runs, count = self.buf, self.runs, self.count
        self.buf, self.runs, self.count = bytearray(), [], 0

        def done(result):
            if isinstance(result, str):
                for conn, slot, n in runs:
                    slot.value, slot.raw = _encoded_error(result, n), True
            else:
                for conn, slot, n in runs:
                    slot.value, slot.raw = take_replies(result, n), True
            for conn, slot, n in runs:
                conn.flush()

        try:
            last = self.driver.propose(block, count, done)
            self.proposals += 1
            self.entries_proposed += count
            for conn, slot, n in runs:
                conn.last_write = last
        except NotLeader:
            # Leadership moved between the check and the flush: nothing was
            # proposed, so the redirect is the honest answer.
            done(str(self.server.redirect_error()))
        except TransferInProgress:
            done("TRYAGAIN leadership transfer in progress")
        except ProposalDropped:
            done("TRYAGAIN too many uncommitted commands; the leader may have lost its quorum")

    def cancel(self):
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.buf, self.runs, self.count = bytearray(), [], 0
        self.read_buf, self.read_runs, self.read_count = bytearray(), [], 0


class ClientProtocol(asyncio.Protocol):
    __slots__ = ("server", "transport", "parser", "replies", "resp3", "name", "id",
                 "closing", "last_write", "reads_in_flight", "parsing_reads", "held",
                 "paused_by_client")

    def __init__(self, server):
        self.server = server
        self.transport = None
        self.parser = RespParser(max_bulk_len=MAX_VALUE_BYTES + 1024)
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

    def connection_made(self, transport):
        self.transport = transport
        set_nodelay(transport)
        self.server.connections.add(self)

    # A client that sends without reading must not grow our buffers without
    # bound: stop reading it while its replies cannot be written.
    def pause_writing(self):
        self.paused_by_client = True
        self.transport.pause_reading()

    def resume_writing(self):
        self.paused_by_client = False
        if not self.held:
            self.transport.resume_reading()

    def reads_served(self, n):
        """n of this connection's reads were answered (or failed)."""
        self.reads_in_flight -= n
        if self.held and self.reads_in_flight == 0:
            self.held = False
            if (not self.paused_by_client and self.transport is not None
                    and not self.transport.is_closing()):
                self.transport.resume_reading()
            self._parse_buffered()  # the write that waited, and what follows it
        else:
            self.flush()

    def connection_lost(self, exc):
        self.server.connections.discard(self)
        self.closing = True

    def data_received(self, data):
        if self.closing:
            return
        self.parser.feed(data)
        if not self.held:
            self._parse_buffered()

    def _parse_buffered(self):
        parser = self.parser
        server = self.server
        batcher = server.batcher
        max_cmd = server.max_command_bytes
        while not self.closing:
            if server.driver.is_leader:
                # The fast path: KV commands go straight into a batch, reads
                # and writes into separate ones, switching as the stream does.
                if self.parsing_reads:
                    n, stop = parser.parse_kv(batcher.read_buf, self.resp3, 1 << 30, 1 << 62,
                                              max_cmd, True, True)
                    if n:
                        batcher.added_reads(self, n)
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
            else:
                # Not the leader: KV commands are counted, not kept, and
                # answered with the redirect.
                scratch = bytearray()
                n, stop = parser.parse_kv(scratch, self.resp3, 1 << 30, 1 << 62, max_cmd)
                if n:
                    err = server.redirect_error()
                    self.replies.append(Slot(self.resp3, _encoded_error(err, n), True))
                if stop is None:
                    break
                server.dispatch(self, stop)
        if parser.error is not None and not self.closing:
            self.reply(ErrorReply(f"ERR {parser.error}"))
            self.closing = True
        self.flush()

    def reply(self, value):
        self.replies.append(Slot(self.resp3, value))

    def pending(self):
        slot = Slot(self.resp3)
        self.replies.append(slot)
        return slot

    def flush(self):
        replies = self.replies
        if not replies or replies[0].value is PENDING:
            return
        chunks = []
        while replies and replies[0].value is not PENDING:
            if replies[0].raw:
                chunks.append(replies.popleft().value)
                continue
            # Consecutive replies of one protocol are encoded in one call.
            resp3 = replies[0].resp3
            run = []
            while (replies and replies[0].value is not PENDING and not replies[0].raw
                   and replies[0].resp3 == resp3):
                run.append(replies.popleft().value)
            chunks.append(encode_replies(run, resp3))
        if self.transport is not None and not self.transport.is_closing():
            if len(chunks) == 1:
                self.transport.write(chunks[0])
            else:
                self.transport.writelines(chunks)
            if self.closing and not replies:
                self.transport.close()


class RespServer:
    def __init__(self, loop, cfg, driver, node_info):
        self.loop = loop
        self.cfg = cfg
        self.driver = driver
        self.node_info = node_info  # callable -> dict of INFO raft fields
        self.connections = set()
        self.batcher = Batcher(loop, self, driver, cfg.max_batch_entries, cfg.max_batch_bytes,
                               cfg.batch_linger_us)
        self.leader_client_url = None  # callable(leader_id) -> advertised URL or None
        # Room for the frame and message headers around one entry.
        self.max_command_bytes = min(MAX_VALUE_BYTES, cfg.max_frame_bytes - (64 << 10))
        self._server = None
        self._unix_path = None
        self.extra_stats = dict  # node-level additions to INFO stats

    async def start(self, url):
        """Listen for clients; returns the URL actually bound (port 0 resolved)."""
        addr = parse_address(url)
        self._server = await create_server(self.loop, addr, lambda: ClientProtocol(self))
        if addr.scheme == "unix":
            self._unix_path = (addr.path, os.stat(addr.path).st_ino)
            return str(addr)
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"tcp://{addr.host if ':' not in addr.host else '[' + addr.host + ']'}:{port}"

    async def close(self):
        self.batcher.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        if self._server is not None:
            await self._server.wait_closed()
        if self._unix_path is not None:
            # Remove our own socket file (not one another process put there since).
            path, ino = self._unix_path
            try:
                if os.stat(path).st_ino == ino:
                    os.unlink(path)
            except OSError:
                pass
            self._unix_path = None

    # ------------------------------------------------------------ routing

    def redirect_error(self):
        """The error a non-leader gives for a command that needs the leader."""
        leader = self.driver.core.leader_id
        url = self.leader_client_url(leader) if leader else None
        if not leader or url is None:
            return ErrorReply("CLUSTERDOWN No raft leader")
        addr = parse_address(url)
        if addr.scheme == "unix":
            return ErrorReply(f"NOTLEADER {url}")
        host = f"[{addr.host}]" if ":" in addr.host else addr.host
        return ErrorReply(f"MOVED 0 {host}:{addr.port}")

    def dispatch(self, conn, cmd):
        name = bytes(cmd[0]).lower()
        op = OPCODES.get(name)
        if op is not None:
            self._kv_command(conn, name, op, cmd)
            return
        handler = _LOCAL.get(name)
        if handler is None:
            conn.reply(ErrorReply(f"ERR unknown command '{_printable(cmd[0])}'"))
            return
        handler(self, conn, cmd)

    def _kv_command(self, conn, name, op, cmd):
        """A KV command the compiled fast path did not take: wrong arity,
        too large, or an option it does not know.  Answer why."""
        args = cmd[1:]
        lo, hi = _ARITY[op]
        if op == OP_SET and len(args) > 2:
            conn.reply(ErrorReply("ERR syntax error"))
        elif len(args) < lo or (hi is not None and len(args) > hi):
            conn.reply(ErrorReply(f"ERR wrong number of arguments for '{name.decode()}' command"))
        elif sum(map(len, args)) + 8 * len(args) > self.max_command_bytes:
            conn.reply(ErrorReply("ERR string exceeds maximum allowed size (proto-max-bulk-len)"))
        elif not self.driver.is_leader:
            conn.reply(self.redirect_error())
        else:
            # parse_kv takes every well-formed KV command, so this is not
            # expected; still, take it the slow way rather than refuse it.
            log.warning("fast path passed over a %r command; encoding it separately", name)
            self.batcher.buf += encode_commands([(op, [bytes(a) for a in args])], conn.resp3)
            self.batcher.added(conn, 1)

    # ------------------------------------------------------------- INFO

    def stats(self):
        """Counters for benchmarks: how well batching and encode-once work."""
        d = self.driver
        return {
            "raftfast_appends_sent": d.appends_sent,
            "raftfast_entries_sent": d.entries_sent,
            "raftfast_append_frames_encoded": d.append_frames_encoded,
            "raftfast_fsyncs": d.fsyncs,
            "raftfast_entries_written": d.entries_written,
            "raftfast_entries_applied": d.applied_entries,
            "raftfast_proposals": self.batcher.proposals,
            "raftfast_entries_proposed": self.batcher.entries_proposed,
            "raftfast_reads_served": d.reads_served,
            "raftfast_read_batches": d.read_batches,
            "raftfast_read_rounds": d.core.read_round,
            "raftfast_cpu_seconds": f"{_cpu_seconds():.3f}",
            **d.snapshot_stats(),
            **self.extra_stats(),
        }

    def info_text(self, section):
        fields = self.node_info()
        raft = "# Raft\r\n" + "".join(f"{k}:{v}\r\n" for k, v in fields.items())
        if section == "raft":
            return raft
        server = ("# Server\r\n"
                  f"redis_version:7.2.0\r\nraftfast_version:{__version__}\r\n"
                  f"redis_mode:standalone\r\nprocess_id:{os.getpid()}\r\n"
                  f"run_id:{self.cfg.cluster_id}-{self.cfg.node_id}\r\n")
        clients = f"# Clients\r\nconnected_clients:{len(self.connections)}\r\n"
        repl = ("# Replication\r\nrole:"
                + ("master" if self.driver.is_leader else "slave") + "\r\n")
        keyspace = f"# Keyspace\r\ndb0:keys={len(self.driver.kv)},expires=0,avg_ttl=0\r\n"
        stats = "# Stats\r\n" + "".join(f"{k}:{v}\r\n" for k, v in self.stats().items())
        if section in ("", "all", "default", "everything"):
            return "\r\n".join((server, clients, repl, keyspace, stats, raft))
        if section == "keyspace":
            return keyspace
        if section == "stats":
            return stats
        if section == "server":
            return server
        if section == "clients":
            return clients
        if section == "replication":
            return repl
        return ""


def _cpu_seconds():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _printable(b):
    return bytes(b).decode("utf-8", "replace")[:128]


def _wrong_args(conn, name):
    conn.reply(ErrorReply(f"ERR wrong number of arguments for '{name}' command"))


def _ping(server, conn, cmd):
    if len(cmd) == 1:
        conn.reply(PONG)
    elif len(cmd) == 2:
        conn.reply(bytes(cmd[1]))
    else:
        _wrong_args(conn, "ping")


def _echo(server, conn, cmd):
    if len(cmd) != 2:
        _wrong_args(conn, "echo")
    else:
        conn.reply(bytes(cmd[1]))


def _hello(server, conn, cmd):
    args = [bytes(a) for a in cmd[1:]]
    proto = None
    if args:
        try:
            proto = int(args[0])
        except ValueError:
            conn.reply(ErrorReply("ERR Protocol version is not an integer or out of range"))
            return
        if proto not in (2, 3):
            conn.reply(ErrorReply("NOPROTO unsupported protocol version"))
            return
        rest = args[1:]
        while rest:
            opt = rest[0].lower()
            if opt == b"setname" and len(rest) >= 2:
                conn.name = rest[1]
                rest = rest[2:]
            elif opt == b"auth" and len(rest) >= 3:
                conn.reply(ErrorReply("ERR AUTH is not supported by raftfast"))
                return
            else:
                conn.reply(ErrorReply(f"ERR Syntax error in HELLO option '{_printable(rest[0])}'"))
                return
    if proto is not None:
        conn.resp3 = proto == 3  # the HELLO reply itself is in the new protocol
    conn.reply({
        "server": "redis", "version": "7.2.0", "proto": 3 if conn.resp3 else 2,
        "id": conn.id, "mode": "standalone",
        "role": "master" if server.driver.is_leader else "replica", "modules": [],
    })


def _client(server, conn, cmd):
    if len(cmd) < 2:
        _wrong_args(conn, "client")
        return
    sub = bytes(cmd[1]).lower()
    if sub == b"setinfo":
        conn.reply(OK if len(cmd) == 4 else ErrorReply(
            "ERR wrong number of arguments for 'client|setinfo' command"))
    elif sub == b"setname":
        if len(cmd) != 3:
            _wrong_args(conn, "client|setname")
        elif b" " in bytes(cmd[2]):
            conn.reply(ErrorReply("ERR Client names cannot contain spaces, newlines or special characters."))
        else:
            conn.name = bytes(cmd[2]) or None
            conn.reply(OK)
    elif sub == b"getname":
        conn.reply(conn.name)
    elif sub == b"id":
        conn.reply(conn.id)
    else:
        conn.reply(ErrorReply(f"ERR unknown subcommand '{_printable(cmd[1])}'. Try CLIENT HELP."))


def _command(server, conn, cmd):
    conn.reply([])


def _config(server, conn, cmd):
    if len(cmd) >= 2 and bytes(cmd[1]).lower() == b"get":
        if len(cmd) < 3:
            _wrong_args(conn, "config|get")
        else:
            conn.reply({})
    elif len(cmd) >= 2:
        conn.reply(ErrorReply(f"ERR unknown subcommand '{_printable(cmd[1])}'. Try CONFIG HELP."))
    else:
        _wrong_args(conn, "config")


def _select(server, conn, cmd):
    if len(cmd) != 2:
        _wrong_args(conn, "select")
        return
    try:
        db = int(bytes(cmd[1]))
    except ValueError:
        conn.reply(ErrorReply("ERR value is not an integer or out of range"))
        return
    conn.reply(OK if db == 0 else ErrorReply("ERR DB index is out of range"))


def _quit(server, conn, cmd):
    conn.reply(OK)
    conn.closing = True


def _info(server, conn, cmd):
    section = bytes(cmd[1]).lower().decode("latin-1") if len(cmd) > 1 else ""
    conn.reply(server.info_text(section).encode())


def _bench(server, conn, cmd):
    """RAFTFAST.BENCH seconds batch_entries value_size window: the leader
    proposes blocks of SET entries itself (no client parsing), keeping
    `window` blocks uncommitted, and answers [entries committed,
    elapsed microseconds, fsyncs] - the replication core's own speed."""
    try:
        seconds, batch, size, window = (float(cmd[1]), int(cmd[2]), int(cmd[3]), int(cmd[4]))
        if len(cmd) != 5 or not (0 < seconds <= 3600 and 0 < batch <= 1 << 16
                                 and 0 <= size <= 1 << 20 and 0 < window <= 1024):
            raise ValueError
    except (ValueError, IndexError):
        conn.reply(ErrorReply("ERR usage: RAFTFAST.BENCH seconds batch_entries value_size window"))
        return
    if not server.driver.is_leader:
        conn.reply(server.redirect_error())
        return
    value = b"v" * size
    block = encode_commands([(OP_SET, [b"bench:%d" % (i % 1024), value]) for i in range(batch)])
    slot = conn.pending()
    driver, loop = server.driver, server.loop
    state = {"committed": 0, "inflight": 0, "failed": None, "fsyncs": driver.fsyncs}
    start = time.monotonic()
    deadline = start + seconds

    def finish():
        if state["failed"]:
            slot.value = ErrorReply(state["failed"])
        else:
            slot.value = [state["committed"], int((time.monotonic() - start) * 1e6),
                          driver.fsyncs - state["fsyncs"]]
        conn.flush()

    def done(result):
        state["inflight"] -= 1
        if isinstance(result, str):
            state["failed"] = state["failed"] or result
        else:
            state["committed"] += batch
        if state["failed"] is None and time.monotonic() < deadline:
            loop.call_soon(top_up)
        elif state["inflight"] == 0:
            finish()

    def top_up():
        while state["inflight"] < window and state["failed"] is None:
            try:
                driver.propose(block, batch, done)
            except (NotLeader, ProposalDropped, TransferInProgress) as e:
                state["failed"] = f"TIMEOUT bench stopped: {e}"
                break
            state["inflight"] += 1
        if state["inflight"] == 0:
            finish()

    top_up()


def _answer_later(server, conn):
    """For a request only the leader takes, answered once it completes:
    None after answering with a redirect (this node does not lead), else a
    done(error) callback that puts +OK (error None) or the error (text or an
    ErrorReply) in this request's place among the connection's replies."""
    if not server.driver.is_leader:
        conn.reply(server.redirect_error())
        return None
    slot = conn.pending()

    def done(error):
        slot.value = OK if error is None else (
            error if isinstance(error, ErrorReply) else ErrorReply(error))
        conn.flush()
    return done


def _transfer_leader(server, conn, cmd):
    """RAFT.TRANSFER_LEADER id: +OK once that node leads."""
    if len(cmd) != 2:
        _wrong_args(conn, "raft.transfer_leader")
        return
    target = _node_id_arg(conn, cmd[1])
    if target is None:
        return
    done = _answer_later(server, conn)
    if done is None:
        return
    try:
        server.driver.transfer_leadership(target, done)
    except NotLeader:
        done(server.redirect_error())
    except ValueError as e:
        done(f"ERR {e}")


def _node_id_arg(conn, raw):
    """A node id argument, or None after answering the client why not."""
    try:
        node_id = int(bytes(raw))
        if not 0 < node_id < 1 << 63:
            raise ValueError
    except ValueError:
        conn.reply(ErrorReply("ERR node id must be an integer from 1 to 2^63-1"))
        return None
    return node_id


def _raft_node(server, conn, cmd):
    """RAFT.NODE ADD id url | RAFT.NODE REMOVE id: +OK once the change is
    committed and applied (an added node is a learner; the leader promotes
    it once it has caught up)."""
    if len(cmd) < 2:
        _wrong_args(conn, "raft.node")
        return
    sub = bytes(cmd[1]).lower()
    if sub == b"add":
        if len(cmd) != 4:
            _wrong_args(conn, "raft.node|add")
            return
        node_id = _node_id_arg(conn, cmd[2])
        if node_id is None:
            return
        url = bytes(cmd[3]).decode("utf-8", "replace")
        try:
            parse_address(url)
        except AddressError as e:
            conn.reply(ErrorReply(f"ERR {e}"))
            return
    elif sub == b"remove":
        if len(cmd) != 3:
            _wrong_args(conn, "raft.node|remove")
            return
        node_id = _node_id_arg(conn, cmd[2])
        if node_id is None:
            return
        url = ""
    else:
        conn.reply(ErrorReply(f"ERR unknown subcommand '{_printable(cmd[1])}'. "
                              "Try RAFT.NODE ADD id url or RAFT.NODE REMOVE id."))
        return
    done = _answer_later(server, conn)
    if done is None:
        return
    try:
        server.driver.change_membership(sub.decode(), node_id, url, done)
    except NotLeader:
        done(server.redirect_error())
    except TransferInProgress:
        done("TRYAGAIN leadership transfer in progress")
    except ConfChangeBusy as e:
        done(f"TRYAGAIN {e}")  # nothing was proposed: the client may simply retry
    except ConfChangeInvalid as e:
        done(f"ERR {e}")


_LOCAL = {
    b"ping": _ping, b"echo": _echo, b"hello": _hello, b"client": _client,
    b"command": _command, b"config": _config, b"select": _select, b"quit": _quit,
    b"info": _info, b"raftfast.bench": _bench, b"raft.transfer_leader": _transfer_leader,
    b"raft.node": _raft_node,
}
