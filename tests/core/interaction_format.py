"""How the interaction driver prints what the core does: messages, entries,
progress and node state, one short line each, the same on every run."""
from raftfast.core.messages import (ENTRY_CONFIG, ENTRY_NOOP, MSG_APPEND, MSG_APPEND_RESP,
                                    MSG_HEARTBEAT, MSG_HEARTBEAT_RESP, MSG_NAMES, MSG_PREVOTE,
                                    MSG_PREVOTE_RESP, MSG_SNAPSHOT, MSG_TIMEOUT_NOW, MSG_VOTE,
                                    MSG_VOTE_RESP, VOTE_TRANSFER, ConfigFormatError, decode_config)
from raftfast.core.progress import SNAPSHOT, STATE_NAMES
from tests.support.entrylog import decode_entries

# Longer entry lists show their first and last entries only.
_SHOWN_ENTRIES = 4
# Longer data shows its beginning and its size.
_SHOWN_BYTES = 12


def ids(values):
    return "(" + ",".join(str(v) for v in sorted(values)) + ")"


def event(kind, fields):
    """A core event (Raft.events) as `kind key=value ..`, keys in order."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (list, tuple, set, frozenset)):
            return ids(v)
        return str(v)
    return " ".join([kind] + [f"{k}={value(v)}" for k, v in sorted(fields.items())])


def entry_data(etype, data):
    data = bytes(data)
    if etype == ENTRY_NOOP:
        return "noop"
    if etype == ENTRY_CONFIG:
        try:
            voters, learners, _ = decode_config(data)
        except ConfigFormatError:
            return "conf(undecodable)"
        return (f"conf(v={','.join(map(str, sorted(voters)))};"
                f"l={','.join(map(str, sorted(learners)))})")
    if len(data) > _SHOWN_BYTES:
        return f"{entry_data(etype, data[:_SHOWN_BYTES - 4])}..({len(data)}B)"
    if data and all(33 <= b < 127 and b != 44 for b in data):  # printable, no comma
        return data.decode("ascii")
    return "0x" + data.hex() if data else '""'


def entry_lines(first, block):
    """One `index@term data` per entry of the block starting at `first`."""
    return [f"{first + i}@{term} {entry_data(etype, data)}"
            for i, (term, etype, data) in enumerate(decode_entries(block))]


def entries(first, block):
    shown = entry_lines(first, block)
    if len(shown) > _SHOWN_ENTRIES:
        shown = shown[:2] + [f"...({len(shown) - 3} more)"] + shown[len(shown) - 1:]
    return "[" + ", ".join(shown) + "]"


def message(m):
    """`from->to type tTERM details`."""
    head = f"{m.frm}->{m.to} {MSG_NAMES.get(m.type, m.type)} t{m.term}"
    t = m.type
    if t == MSG_APPEND:
        text = f"{head} prev={m.index}@{m.log_term} commit={m.commit}"
        if m.count:
            text += " " + entries(m.index + 1, m.entries)
        return text
    if t == MSG_APPEND_RESP:
        if m.reject:
            return f"{head} reject index={m.index} hint={m.hint}@{m.log_term}"
        if m.frm == m.to:
            return f"{head} durable={m.index}@{m.log_term}"
        return f"{head} index={m.index}"
    if t in (MSG_VOTE, MSG_PREVOTE):
        transfer = " transfer" if m.context == VOTE_TRANSFER else ""
        return f"{head} last={m.index}@{m.log_term}{transfer}"
    if t in (MSG_VOTE_RESP, MSG_PREVOTE_RESP):
        return f"{head} {'rejected' if m.reject else 'granted'}"
    if t == MSG_HEARTBEAT:
        return f"{head} commit={m.commit} round={m.context}"
    if t == MSG_HEARTBEAT_RESP:
        return f"{head} round={m.context}"
    if t == MSG_SNAPSHOT:
        return f"{head} at={m.index}@{m.log_term}"
    if t == MSG_TIMEOUT_NOW:
        return head
    return f"{head} index={m.index}@{m.log_term} commit={m.commit}"


def progress(pr):
    text = f"{STATE_NAMES[pr.state]} match={pr.match} next={pr.next} inflight={len(pr.inflights)}"
    if pr.inflights.full():
        text += "[full]"
    if pr.state == SNAPSHOT:
        text += f" snapshot={pr.pending_snapshot}"
        if pr.snapshot_delivered:
            text += " delivered"
    if pr.flow_paused:
        text += " flow-paused"
    elif pr.is_paused():
        text += " paused"
    return text


def node_line(raft):
    st = raft.status()
    return (f"{st['id']}: {st['role']} term={st['term']} vote={st['vote']} "
            f"lead={st['leader_id']} commit={st['commit_index']} applied={st['last_applied']} "
            f"last={st['last_log_index']} voters={ids(st['voters'])} "
            f"learners={ids(st['learners'])}")


def log_header(raft):
    log = raft.log
    return (f"{raft.id}: snap={log.snap_index}@{log.snap_term} first={log.snap_index + 1} "
            f"last={log.last_index} commit={log.committed} applied={log.applied} "
            f"persisted={log.persisted} snapshot={raft.snapshot_index}@{raft.snapshot_term}")
