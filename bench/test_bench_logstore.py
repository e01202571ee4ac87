"""The durable log and the in-memory log: raftfast._logstore.LogStore
(append + group-commit fsync, replay at start-up) and
raftfast._entrylog.EntryLog.slice (what the leader reads to build an
AppendEntries).

Entries carry 64 data bytes (77 bytes in a block).  The log store writes
into $RAFTFAST_BENCH_DIR when set, else pytest's tmp dir; extra_info
records the filesystem, since fsync costs nothing on tmpfs.
"""
import os
import shutil
import time

import pytest

from benchutil import VALUE_SIZE, filesystem_of, planned_rounds, report
from raftfast._entrylog import EntryLog, encode_entries
from raftfast._logstore import LogStore
from raftfast.core.messages import ENTRY_NORMAL

BATCH = 256
REPLAY_ENTRIES = 100_000
ROTATE_BYTES = 32 << 20   # a fresh store after this much, below one 64 MiB segment


def entry_block(n, term=3):
    return encode_entries([(term, ENTRY_NORMAL, bytes(range(VALUE_SIZE)))] * n)


class Appender:
    """Appends BATCH-entry records at consecutive indexes, each followed by
    sync() as the runtime does per batch (sync() is a no-op under
    fsync=False).  Between timed calls (pedantic's setup) it swaps in a
    fresh store once ROTATE_BYTES are written, so a long run neither fills
    the disk nor times a segment roll-over."""

    def __init__(self, base, fsync):
        self.base = base
        self.fsync = fsync
        self.block = entry_block(BATCH)
        self.generation = 0
        self.store = None
        self._open()

    def _open(self):
        self.generation += 1
        self.path = os.path.join(self.base, f"wal-{'always' if self.fsync else 'never'}-{self.generation}")
        self.store = LogStore(self.path, fsync=self.fsync)
        self.store.save_hard_state(3, 1, 0)
        self.store.sync()
        self.next_index = 1
        self.written = 0

    def close(self):
        if self.store is not None:
            self.store.close()
            shutil.rmtree(self.path, ignore_errors=True)
            self.store = None

    def setup(self):
        if self.written >= ROTATE_BYTES:
            self.close()
            self._open()

    def append_batch(self):
        self.store.append_entries(self.next_index, self.block, BATCH)
        self.store.sync()
        self.next_index += BATCH
        self.written += len(self.block)


@pytest.mark.parametrize("fsync", [True, False], ids=["fsync-always", "fsync-never"])
def test_logstore_append(benchmark, bench_dir, fsync):
    app = Appender(bench_dir, fsync)
    try:
        # Estimate one call (also the warm-up) to size the run like
        # benchmark(...) does from --benchmark-max-time / --benchmark-min-rounds.
        t0, calls = time.perf_counter(), 0
        while calls < 5 or (calls < 200 and time.perf_counter() - t0 < 0.05):
            app.setup()
            app.append_batch()
            calls += 1
        per_call = (time.perf_counter() - t0) / calls
        benchmark.group = f"logstore append {BATCH}-entry batches"
        benchmark.pedantic(app.append_batch, setup=app.setup,
                           rounds=planned_rounds(benchmark, per_call), iterations=1)
        mount, fstype = filesystem_of(bench_dir)
        report(benchmark, items=BATCH, nbytes=len(app.block),
               fsync="always" if fsync else "never", batch_entries=BATCH,
               value_bytes=VALUE_SIZE, filesystem=fstype, mount=mount)
    finally:
        app.close()


@pytest.fixture(scope="module")
def replay_log(bench_dir):
    """A log of REPLAY_ENTRIES entries in BATCH-entry records, written once."""
    path = os.path.join(bench_dir, "wal-replay")
    block = entry_block(BATCH)
    with LogStore(path, fsync=False) as store:
        store.save_hard_state(3, 1, REPLAY_ENTRIES)
        index = 1
        while index <= REPLAY_ENTRIES:
            n = min(BATCH, REPLAY_ENTRIES - index + 1)
            store.append_entries(index, block if n == BATCH else entry_block(n), n)
            index += n
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    yield path, size
    shutil.rmtree(path, ignore_errors=True)


def _startup(path):
    """What a node does at start: open (verifies every record's CRC), then
    replay every record into the in-memory EntryLog."""
    log = EntryLog(1)

    def on_entries(first, block, count):
        log.append(first, block)

    def on_hard_state(term, vote, commit):
        pass

    with LogStore(path, fsync=False) as store:
        store.replay(on_entries, on_hard_state)
    return log


def test_logstore_replay_startup(benchmark, replay_log):
    path, size = replay_log
    assert _startup(path).last_index == REPLAY_ENTRIES
    benchmark.group = f"logstore replay {REPLAY_ENTRIES} entries"
    benchmark(_startup, path)
    report(benchmark, items=REPLAY_ENTRIES, nbytes=size, value_bytes=VALUE_SIZE,
           records=-(-REPLAY_ENTRIES // BATCH), page_cache="warm")


def test_logstore_replay_scan(benchmark, replay_log):
    """replay() alone on an open store, callbacks only counting: the read
    and CRC pass without building the in-memory log."""
    path, size = replay_log
    seen = [0]

    def on_entries(first, block, count):
        seen[0] += count

    def on_hard_state(term, vote, commit):
        pass

    with LogStore(path, fsync=False) as store:
        store.replay(on_entries, on_hard_state)
        assert seen[0] == REPLAY_ENTRIES
        benchmark.group = f"logstore replay {REPLAY_ENTRIES} entries"
        benchmark(store.replay, on_entries, on_hard_state)
    report(benchmark, items=REPLAY_ENTRIES, nbytes=size, value_bytes=VALUE_SIZE,
           records=-(-REPLAY_ENTRIES // BATCH), page_cache="warm")


@pytest.fixture(scope="module")
def entry_log():
    log = EntryLog(1)
    block = entry_block(BATCH)
    while log.last_index < REPLAY_ENTRIES:
        log.append_stamped(block, 3)
    return log


SLICES = [
    pytest.param(1, 0, id="1"),
    pytest.param(64, 0, id="64"),
    pytest.param(256, 0, id="256"),
    pytest.param(1024, 0, id="1024"),
    # The leader's byte limit per AppendEntries cuts a long range short.
    pytest.param(4096, 64 << 10, id="4096-max64KiB"),
]


@pytest.mark.parametrize("span,max_bytes", SLICES)
def test_entrylog_slice(benchmark, entry_log, span, max_bytes):
    lo = entry_log.last_index // 2
    block, count = entry_log.slice(lo, lo + span, max_bytes)
    assert count == (span if not max_bytes else max_bytes // (13 + VALUE_SIZE))
    benchmark.group = "entrylog slice"
    benchmark(entry_log.slice, lo, lo + span, max_bytes)
    report(benchmark, items=count, nbytes=len(block), value_bytes=VALUE_SIZE,
           requested=span, max_bytes=max_bytes, log_entries=len(entry_log))
