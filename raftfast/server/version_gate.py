"""Writes a leader admits while the cluster version is 1.

At cluster version 1 some members may still run raftfast 0.1.0
(runtime/cluster_version.py), whose key-value store applies only SET k v,
DEL, APPEND k v and INCR and stops on anything else: a replica that skipped
an entry would diverge.  So until every member runs this release, the
leader proposes only entries in that form and refuses the rest, with an
error naming the reason; once the cluster version rises, nothing here runs.
Outside the hot path: the connection takes this way only while the cluster
version is 1 (an upgrade in progress), as it does at the memory limit.
"""
import struct

from raftfast._kv import OP_APPEND, OP_INCR, OP_SET
from raftfast.core.messages import ENTRY_HEADER_SIZE

__all__ = ["VERSION_ERROR", "legacy_entry", "writes_gated"]

VERSION_ERROR = ("ERR this command needs every node on raftfast 0.2.0 or later "
                 "(cluster version 1: a rolling upgrade is not finished)")

_U32 = struct.Struct("<I")
_OPCODE_AT = ENTRY_HEADER_SIZE          # the command's opcode follows the entry header
_ARGC_AT = ENTRY_HEADER_SIZE + 1


def writes_gated(driver):
    """May some member be unable to read this release's write entries?"""
    return driver.core.cluster_version < 2


def legacy_entry(block, start, end):
    """The entry block[start:end] in the form raftfast 0.1.0 applies, or
    None when it has none.  APPEND's entry carries the leader's
    proto-max-bulk-len as a third argument, which 0.1.0 does not know: it
    goes, and that APPEND has no size limit on replicas that did not check
    it themselves (as before the limit existed)."""
    op = block[start + _OPCODE_AT] & 0x7F
    if op > OP_INCR:
        return None
    (argc,) = _U32.unpack_from(block, start + _ARGC_AT)
    if op == OP_SET and argc != 2:
        return None              # SET's options (NX, EX, GET ...) came later
    if op != OP_APPEND or argc != 3:
        return bytes(block[start:end])
    # Keep the key and value, drop the limit: walk the first two arguments.
    p = start + _ARGC_AT + 4
    for _ in range(2):
        p += 4 + _U32.unpack_from(block, p)[0]
    data = (bytes((block[start + _OPCODE_AT],)) + _U32.pack(2)
            + bytes(block[start + _ARGC_AT + 4:p]))
    return _U32.pack(len(data)) + bytes(block[start + 4:start + ENTRY_HEADER_SIZE]) + data
