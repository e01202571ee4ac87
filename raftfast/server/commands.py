"""The command table: every command a node answers itself, and the KV
commands the compiled fast path passed over.

A handler is handler(server, conn, cmd): `cmd` is the command's arguments
(name first) as parsed; it answers with conn.reply(value) at once, or takes
conn.pending() and fills that slot later.  Errors a client sees are worded
here and in the server, never in the runtime.
"""
import fnmatch
import logging
import time

from raftfast._kv import OPCODES, OP_SESSION_OPEN, OP_SET, arity_ok, encode_commands
from raftfast._resp import OK, PONG, ErrorReply
from raftfast.address import AddressError, is_local_peer, parse_address
from raftfast.core import (ConfChangeBusy, ConfChangeInvalid, NotLeader, ProposalDropped,
                           TransferInProgress)
from raftfast.runtime.waiters import RequestFailed
from raftfast.server import auth
from raftfast.server.memory import DENYOOM_OPCODES, OOM_ERROR
from raftfast.server.version_gate import VERSION_ERROR, legacy_entry, writes_gated

__all__ = ["COMMANDS", "dispatch", "dispatch_unauthenticated"]

log = logging.getLogger("raftfast.client")

# Redis's refusal of a debug command its enable-debug-command does not allow.
DEBUG_REFUSED = ("ERR {command} command not allowed. If the enable-debug-command option is set "
                 "to \"local\", you can run it from a local connection, otherwise you need to set "
                 "this option in the configuration file, and then restart the server.")


def dispatch(server, conn, cmd):
    """Answer one command the fast path did not take."""
    name = bytes(cmd[0]).lower()
    op = OPCODES.get(name)
    if op is not None:
        _kv_command(server, conn, name, op, cmd)
        return
    handler = COMMANDS.get(name)
    if handler is None:
        conn.reply(ErrorReply(f"ERR unknown command '{_printable(cmd[0])}'"))
        return
    handler(server, conn, cmd)


NOAUTH = ErrorReply("NOAUTH Authentication required.")
WRONGPASS = ErrorReply("WRONGPASS invalid username-password pair or user is disabled.")
HELLO_NOAUTH = ErrorReply(
    "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO "
    "<proto> AUTH <user> <pass> option can be used to authenticate the client and select the "
    "RESP protocol version at the same time")


def dispatch_unauthenticated(server, conn, cmd):
    """One command of a connection that has not authenticated: only AUTH,
    HELLO and QUIT are answered; everything else, before any redirect,
    gets NOAUTH."""
    handler = _NO_AUTH_COMMANDS.get(bytes(cmd[0]).lower())
    if handler is None:
        conn.reply(NOAUTH)
    else:
        handler(server, conn, cmd)


def _authenticate(server, conn, user, password):
    """Check a password; on success the connection leaves the pre-auth
    limits.  False (and WRONGPASS answered by the caller) otherwise."""
    if not auth.check(server.password, user, password):
        return False
    conn.authenticated = True
    conn.parser.unauthenticated = False
    return True


def _auth(server, conn, cmd):
    if len(cmd) == 2:
        if server.password is None:
            conn.reply(ErrorReply(
                "ERR AUTH <password> called without any password configured for the default "
                "user. Are you sure your configuration is correct?"))
            return
        user, password = auth.DEFAULT_USER, cmd[1]
    elif len(cmd) == 3:
        user, password = cmd[1], cmd[2]
    else:
        _wrong_args(conn, "auth")
        return
    conn.reply(OK if _authenticate(server, conn, user, password) else WRONGPASS)


def _kv_command(server, conn, name, op, cmd):
    """A KV command the compiled fast path did not take: wrong arity (as
    Redis 7.2 counts it), too large, or this node does not lead.  Answer
    why.  (Options are the store's to check: they travel in the entry.)"""
    args = cmd[1:]
    if not arity_ok(op, len(args)):
        conn.reply(ErrorReply(f"ERR wrong number of arguments for '{name.decode()}' command"))
    elif sum(map(len, args)) + 8 * len(args) > server.max_command_bytes:
        conn.reply(ErrorReply("ERR string exceeds maximum allowed size (proto-max-bulk-len)"))
    elif not server.driver.is_leader:
        conn.reply(server.redirect_error())
    elif server.memory.refusing and op in DENYOOM_OPCODES:
        conn.reply(ErrorReply(OOM_ERROR))
        server.memory.writes_refused += 1
    else:
        # parse_kv takes every well-formed KV command, so this is not
        # expected; still, take it the slow way rather than refuse it.
        log.warning("fast path passed over a %r command; encoding it separately", name)
        # A read taken this way goes through the log: in its place among
        # the connection's writes, evaluated at its entry's cluster time.
        block = encode_commands([(op, [bytes(a) for a in args])], conn.resp3,
                                server.cfg.proto_max_bulk_len)
        if writes_gated(server.driver):
            block = legacy_entry(block, 0, len(block))
            if block is None:
                conn.reply(ErrorReply(VERSION_ERROR))
                return
        server.batcher.buf += block
        server.batcher.added(conn, 1)


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
        name = credentials = None
        while rest:
            opt = rest[0].lower()
            if opt == b"setname" and len(rest) >= 2:
                name = rest[1]
                rest = rest[2:]
            elif opt == b"auth" and len(rest) >= 3:
                credentials = rest[1], rest[2]
                rest = rest[3:]
            else:
                conn.reply(ErrorReply(f"ERR Syntax error in HELLO option '{_printable(rest[0])}'"))
                return
        if credentials is not None and not _authenticate(server, conn, *credentials):
            conn.reply(WRONGPASS)
            return
        if name is not None:
            conn.name = name
    if not conn.authenticated:
        conn.reply(HELLO_NOAUTH)
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
            # Glob patterns over the parameter names, as Redis matches them
            # (case-insensitively); a name matched twice is answered once.
            found = {}
            parameters = server.config_parameters()
            for pattern in cmd[2:]:
                pat = bytes(pattern).lower().decode("latin-1")
                for name, value in parameters.items():
                    if fnmatch.fnmatchcase(name, pat):
                        found[name.encode()] = value.encode()
            conn.reply(found)
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


def _debug_allowed(server, conn):
    mode = server.cfg.enable_debug_command
    return mode == "yes" or (mode == "local" and is_local_peer(conn.transport))


def _bench(server, conn, cmd):
    """RAFTFAST.BENCH seconds batch_entries value_size window: the leader
    proposes blocks of SET entries itself (no client parsing), keeping
    `window` blocks uncommitted, and answers [entries committed,
    elapsed microseconds, fsyncs] - the replication core's own speed.
    A debug command: refused unless --enable-debug-command allows it."""
    if not _debug_allowed(server, conn):
        conn.reply(ErrorReply(DEBUG_REFUSED.format(command="RAFTFAST.BENCH")))
        return
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
    group = driver.group_commit
    state = {"committed": 0, "inflight": 0, "failed": None, "fsyncs": group.fsyncs}
    start = time.monotonic()
    deadline = start + seconds

    def finish():
        if state["failed"]:
            slot.value = ErrorReply(state["failed"])
        else:
            slot.value = [state["committed"], int((time.monotonic() - start) * 1e6),
                          group.fsyncs - state["fsyncs"]]
        conn.flush()

    def done(result):
        state["inflight"] -= 1
        if isinstance(result, RequestFailed):
            state["failed"] = state["failed"] or str(server.failure_reply(result))
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
    done(error) callback that puts +OK (error None) or the error (text, an
    ErrorReply, or the runtime's RequestFailed) in this request's place
    among the connection's replies."""
    if not server.driver.is_leader:
        conn.reply(server.redirect_error())
        return None
    slot = conn.pending()

    def done(error):
        if error is None:
            slot.value = OK
        elif isinstance(error, RequestFailed):
            slot.value = server.failure_reply(error)
        elif isinstance(error, ErrorReply):
            slot.value = error
        else:
            slot.value = ErrorReply(error)
        conn.flush()
    return done


def _raft_session(server, conn, cmd):
    """RAFT.SESSION OPEN: a new client session's id (an integer), once
    the entry that opens it is committed and applied (ids count up in the
    state machine, the same on every replica)."""
    if len(cmd) < 2:
        _wrong_args(conn, "raft.session")
        return
    if bytes(cmd[1]).lower() != b"open":
        conn.reply(ErrorReply(f"ERR unknown subcommand '{_printable(cmd[1])}'. "
                              "Try RAFT.SESSION OPEN."))
        return
    if len(cmd) != 2:
        _wrong_args(conn, "raft.session|open")
        return
    if not server.driver.is_leader:
        conn.reply(server.redirect_error())
        return
    if server.memory.refusing:
        conn.reply(ErrorReply(OOM_ERROR))
        server.memory.writes_refused += 1
        return
    if writes_gated(server.driver):
        conn.reply(ErrorReply(VERSION_ERROR))
        return
    server.batcher.buf += encode_commands([(OP_SESSION_OPEN, [])], conn.resp3)
    server.batcher.added(conn, 1)


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


def _raft_backup(server, conn, cmd):
    """RAFT.BACKUP: the leader's snapshot of the data set as of now, as one
    bulk string streamed from its file (server/backup.py)."""
    if len(cmd) != 1:
        _wrong_args(conn, "raft.backup")
        return
    server.backups.start(conn)


COMMANDS = {
    b"auth": _auth, b"ping": _ping, b"echo": _echo, b"hello": _hello, b"client": _client,
    b"command": _command, b"config": _config, b"select": _select, b"quit": _quit,
    b"info": _info, b"raftfast.bench": _bench, b"raft.transfer_leader": _transfer_leader,
    b"raft.node": _raft_node, b"raft.session": _raft_session, b"raft.backup": _raft_backup,
}

# What a connection that has not authenticated may run (Redis's no-auth commands).
_NO_AUTH_COMMANDS = {b"auth": _auth, b"hello": _hello, b"quit": _quit}
