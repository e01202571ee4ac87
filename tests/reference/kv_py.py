"""Pure-Python twin of the KV command payload (ext/kvcmd.h, ext/kv.pyx):
which client requests are fast-path KV commands, and their entry bytes.
The readable specification that RespParser.parse_kv is tested against.

Entry (messages.py):   u32 data_len | u64 term (0) | u8 type (ENTRY_NORMAL)
Payload (kv.pyx):      u8 opcode (| OP_RESP3 when the client reads RESP3)
                       u32 argc, then argc times u32 len + bytes
                       APPEND: a third argument, the u64 limit on the result;
                       RAFT.EXEC: always that limit as its last argument
All integers little-endian.  Options (SET's NX/EX..., EXPIRE's flags,
SCAN's cursor) travel as the client sent them and are read when applied.
"""
import struct

ENTRY_NORMAL = 0
(OP_SET, OP_GET, OP_MGET, OP_EXISTS, OP_DEL, OP_APPEND, OP_INCR, OP_SETNX, OP_GETDEL, OP_MSET,
 OP_INCRBY, OP_DECR, OP_DECRBY, OP_STRLEN, OP_EXPIRE, OP_PEXPIRE, OP_TTL, OP_PTTL, OP_PERSIST,
 OP_DBSIZE, OP_SCAN, OP_EXEC, OP_SESSION_OPEN, OP_EXPIRE_DEL) = range(1, 25)
OP_RESP3 = 0x80
# Commands that change nothing: a leader answers them without the log (ReadIndex).
READ_OPCODES = frozenset({OP_GET, OP_MGET, OP_EXISTS, OP_STRLEN, OP_TTL, OP_PTTL, OP_DBSIZE,
                          OP_SCAN})
OPCODES = {b"set": OP_SET, b"get": OP_GET, b"mget": OP_MGET, b"exists": OP_EXISTS,
           b"del": OP_DEL, b"append": OP_APPEND, b"incr": OP_INCR, b"setnx": OP_SETNX,
           b"getdel": OP_GETDEL, b"mset": OP_MSET, b"incrby": OP_INCRBY, b"decr": OP_DECR,
           b"decrby": OP_DECRBY, b"strlen": OP_STRLEN, b"expire": OP_EXPIRE,
           b"pexpire": OP_PEXPIRE, b"ttl": OP_TTL, b"pttl": OP_PTTL, b"persist": OP_PERSIST,
           b"dbsize": OP_DBSIZE, b"scan": OP_SCAN, b"raft.exec": OP_EXEC}
# opcode -> (min args, max args or None), args excluding the command name (Redis 7.2)
ARITY = {OP_GET: (1, 1), OP_INCR: (1, 1), OP_GETDEL: (1, 1), OP_DECR: (1, 1),
         OP_STRLEN: (1, 1), OP_TTL: (1, 1), OP_PTTL: (1, 1), OP_PERSIST: (1, 1),
         OP_APPEND: (2, 2), OP_SETNX: (2, 2), OP_INCRBY: (2, 2), OP_DECRBY: (2, 2),
         OP_SET: (2, None), OP_EXPIRE: (2, None), OP_PEXPIRE: (2, None),
         OP_MGET: (1, None), OP_EXISTS: (1, None), OP_DEL: (1, None), OP_SCAN: (1, None),
         OP_MSET: (2, None), OP_DBSIZE: (0, 0), OP_EXEC: (3, None)}
# Entries that end with the proposer's proto-max-bulk-len (a u64).
LIMITED = frozenset({OP_APPEND, OP_EXEC})


def arity_ok(op, argc):
    lo, hi = ARITY[op]
    if op == OP_MSET and argc % 2:
        return False    # key value pairs
    return argc >= lo and (hi is None or argc <= hi)


def fast_opcode(request, max_command_bytes):
    """The opcode of a request (list of argument bytes) that the fast path
    encodes: a KV command name in any (ASCII) case, Redis's number of
    arguments, and arguments' bytes + 8 per argument within
    max_command_bytes.  None for anything else: the server answers those
    itself."""
    op = OPCODES.get(request[0].lower())
    if op is None:
        return None
    if op == OP_EXEC and request[0][4:5] != b".":
        return None     # only a dot: b"." | 0x20 is also 0x0E | 0x20
    args = request[1:]
    if not arity_ok(op, len(args)):
        return None
    if sum(map(len, args)) + 8 * len(args) > max_command_bytes:
        return None
    if 5 + sum(4 + len(a) for a in args) + (12 if op in LIMITED else 0) > 0xFFFFFFFF:
        return None
    return op


def encode_entry(op, args, resp3, append_limit=None):
    if op == OP_EXEC:
        args = [*args, struct.pack("<Q", 2**64 - 1 if append_limit is None else append_limit)]
    elif op == OP_APPEND and append_limit is not None:
        args = [*args, struct.pack("<Q", append_limit)]
    data = struct.pack("<BI", op | (OP_RESP3 if resp3 else 0), len(args)) + b"".join(
        struct.pack("<I", len(a)) + a for a in args)
    return struct.pack("<IQB", len(data), 0, ENTRY_NORMAL) + data
