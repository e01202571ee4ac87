"""The entry log and block helpers the core's tests run on: the compiled
ones, or with RAFTFAST_PURE_PYTHON=1 their Python twins (the core itself
never imports either: the runtime hands it an entry log)."""
import os

if os.environ.get("RAFTFAST_PURE_PYTHON") == "1":
    from tests.reference.entrylog_py import BlockError
    from tests.reference.entrylog_py import EntryLogPy as EntryLog
    from tests.reference.entrylog_py import block_count_py as block_count
    from tests.reference.entrylog_py import decode_entries_py as decode_entries
    from tests.reference.entrylog_py import encode_entries_py as encode_entries
else:
    from raftfast._entrylog import (BlockError, EntryLog, block_count, decode_entries,
                                    encode_entries)

__all__ = ["BlockError", "EntryLog", "block_count", "decode_entries", "encode_entries"]
