"""The byte side of the snapshot policy: what a snapshot lets go of the log
in memory, when the log is too large, and how far to compact."""
from types import SimpleNamespace

from raftfast._entrylog import EntryLog
from raftfast.runtime.log_bytes import applied_bytes, log_too_large, trim_trailing
from tests.reference.entrylog_py import encode_entries_py

ENTRY = 13 + 100  # header + data of each entry below


def log_of(n, applied):
    entries = EntryLog(1)
    entries.append(1, encode_entries_py([(1, 0, b"x" * 100)] * n))
    return SimpleNamespace(entries=entries, applied=applied)


def test_applied_bytes_counts_the_entries_a_snapshot_covers():
    assert applied_bytes(log_of(10, 4)) == 4 * ENTRY
    assert applied_bytes(log_of(10, 0)) == 0
    assert applied_bytes(log_of(10, 10)) == 10 * ENTRY


def test_a_log_is_too_large_past_the_limit_with_half_of_it_applied():
    assert log_too_large(log_of(10, 5), 10 * ENTRY)
    assert not log_too_large(log_of(10, 5), 10 * ENTRY + 1)   # under the limit
    assert not log_too_large(log_of(10, 4), 10 * ENTRY)       # a snapshot would free too little


def test_trim_trailing_compacts_until_what_stays_fits():
    entries = log_of(10, 10).entries
    # Keeping 3 entries' bytes: compact through 7, whatever the trailing margin said.
    assert trim_trailing(entries, 2, 10, 3 * ENTRY) == 7
    assert trim_trailing(entries, 2, 5, 3 * ENTRY) == 5       # never past `most`
    assert trim_trailing(entries, 8, 10, 3 * ENTRY) == 8      # already fits
    assert trim_trailing(entries, 0, 10, 3 * ENTRY + 50) == 7
