"""Pure-Python twin of the KV command payload (ext/kvcmd.h, ext/kv.pyx):
which client requests are fast-path KV commands, and their entry bytes.
The readable specification that RespParser.parse_kv is tested against.

Entry (messages.py):   u32 data_len | u64 term (0) | u8 type (ENTRY_NORMAL)
Payload (kv.pyx):      u8 opcode (| OP_RESP3 when the client reads RESP3)
                       u32 argc, then argc times u32 len + bytes
                       APPEND: a third argument, the u64 limit on the result
All integers little-endian.
"""
import struct

ENTRY_NORMAL = 0
OP_SET, OP_GET, OP_MGET, OP_EXISTS, OP_DEL, OP_APPEND, OP_INCR = range(1, 8)
OP_RESP3 = 0x80
# Commands that change nothing: a leader answers them without the log (ReadIndex).
READ_OPCODES = frozenset({OP_GET, OP_MGET, OP_EXISTS})
OPCODES = {b"set": OP_SET, b"get": OP_GET, b"mget": OP_MGET, b"exists": OP_EXISTS,
           b"del": OP_DEL, b"append": OP_APPEND, b"incr": OP_INCR}
# opcode -> (min args, max args or None), args excluding the command name
ARITY = {OP_GET: (1, 1), OP_INCR: (1, 1), OP_SET: (2, 2), OP_APPEND: (2, 2),
         OP_MGET: (1, None), OP_EXISTS: (1, None), OP_DEL: (1, None)}


def fast_opcode(request, max_command_bytes):
    """The opcode of a request (list of argument bytes) that the fast path
    encodes: a KV command name in any (ASCII) case, the right number of
    arguments, and arguments' bytes + 8 per argument within
    max_command_bytes.  None for anything else (SET k v EX 10 included):
    the server answers those itself."""
    op = OPCODES.get(request[0].lower())
    if op is None:
        return None
    args = request[1:]
    lo, hi = ARITY[op]
    if len(args) < lo or (hi is not None and len(args) > hi):
        return None
    if sum(map(len, args)) + 8 * len(args) > max_command_bytes:
        return None
    if 5 + sum(4 + len(a) for a in args) + (12 if op == OP_APPEND else 0) > 0xFFFFFFFF:
        return None
    return op


def encode_entry(op, args, resp3, append_limit=None):
    if op == OP_APPEND and append_limit is not None:
        args = [*args, struct.pack("<Q", append_limit)]
    data = struct.pack("<BI", op | (OP_RESP3 if resp3 else 0), len(args)) + b"".join(
        struct.pack("<I", len(a)) + a for a in args)
    return struct.pack("<IQB", len(data), 0, ENTRY_NORMAL) + data
