"""EntryLog (raftfast._entrylog) against its pure-Python twin
(tests/reference/entrylog_py.py), plus the behaviours each method names."""
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from raftfast import _entrylog as c
from raftfast.core.messages import ENTRY_CONFIG, ENTRY_NOOP, ENTRY_NORMAL, ENTRY_HEADER_SIZE, ENTRY_TIME
from tests.reference import entrylog_py as py

IMPLS = {
    "c": (c.EntryLog, c.BlockError, c.block_count),
    "py": (py.EntryLogPy, py.BlockError, py.block_count_py),
}


@pytest.fixture(params=sorted(IMPLS))
def impl(request):
    return IMPLS[request.param]


def blk(*terms, start=0):
    """A block with one small entry per term; data names the entry."""
    return py.encode_entries_py(
        [(t, ENTRY_NORMAL, b"e%d" % (start + i)) for i, t in enumerate(terms)])


def state(log):
    """Everything observable about a log, to check that it did not change."""
    whole = log.slice(log.first_index, log.last_index + 1)
    return (log.first_index, log.last_index, log.count, log.nbytes, log.last_term(), whole)


# ---- construction and plain reads -------------------------------------------

def test_empty_log_starts_after_its_snapshot(impl):
    Log, _, _ = impl
    log = Log(5)
    assert (log.first_index, log.last_index, log.count, log.nbytes) == (5, 4, 0, 0)
    assert log.last_term() == 0
    assert Log().first_index == 1
    with pytest.raises(ValueError):
        Log(0)


def test_term_outside_the_log_raises_index_error(impl):
    Log, _, _ = impl
    log = Log(3)
    log.append(3, blk(1, 2, 2))
    assert [log.term(i) for i in (3, 4, 5)] == [1, 2, 2]
    for bad in (0, 2, 6, 100):
        with pytest.raises(IndexError):
            log.term(bad)


def test_nbytes_counts_the_block_bytes_held(impl):
    Log, _, _ = impl
    log = Log()
    block = py.encode_entries_py([(1, ENTRY_NORMAL, b"abc"), (1, ENTRY_NOOP, b"")])
    log.append(1, block)
    assert log.nbytes == len(block) == 2 * ENTRY_HEADER_SIZE + 3


def test_nbytes_from_counts_the_entries_from_an_index_on(impl):
    Log, _, _ = impl
    log = Log(3)
    log.append(3, py.encode_entries_py([(1, ENTRY_NORMAL, b"abc"), (1, ENTRY_NORMAL, b"de"),
                                        (2, ENTRY_NOOP, b"")]))
    assert [log.nbytes_from(i) for i in (3, 4, 5, 6, 99)] == [
        3 * ENTRY_HEADER_SIZE + 5, 2 * ENTRY_HEADER_SIZE + 2, ENTRY_HEADER_SIZE, 0, 0]
    log.compact(3)
    assert log.nbytes_from(4) == log.nbytes == 2 * ENTRY_HEADER_SIZE + 2
    with pytest.raises(IndexError):
        log.nbytes_from(3)


# ---- append -------------------------------------------------------------------

def test_append_drops_the_suffix_and_returns_the_count(impl):
    Log, _, _ = impl
    log = Log()
    assert log.append(1, blk(1, 1, 1, 1)) == 4
    assert log.append(3, blk(2, 2, 2, start=10)) == 3
    assert (log.last_index, [log.term(i) for i in range(1, 6)]) == (5, [1, 1, 2, 2, 2])
    assert log.slice(1, 6)[0] == blk(1, 1, start=0) + blk(2, 2, 2, start=10)
    assert log.append(6, blk(3)) == 1  # right after the end
    assert log.last_index == 6


def test_append_outside_the_log_raises_value_error_and_changes_nothing(impl):
    Log, _, _ = impl
    log = Log(10)
    log.append(10, blk(1, 1))
    before = state(log)
    for bad in (0, 9, 13, 50):
        with pytest.raises(ValueError):
            log.append(bad, blk(2))
        assert state(log) == before


def test_append_stamped_writes_the_term_into_every_header(impl):
    Log, _, _ = impl
    log = Log(7)
    log.append(7, blk(2))
    proposal = py.encode_entries_py([(0, ENTRY_NORMAL, b"set"), (0, ENTRY_CONFIG, b"cfg")])
    assert log.append_stamped(proposal, 5) == (8, 9)
    assert log.slice(8, 10) == (
        py.encode_entries_py([(5, ENTRY_NORMAL, b"set"), (5, ENTRY_CONFIG, b"cfg")]), 2)
    assert log.last_term() == 5


def test_appended_bytes_are_copied_not_referenced(impl):
    Log, _, _ = impl
    log = Log()
    buf = bytearray(blk(4, 4))
    log.append(1, buf)
    log.append_stamped(buf, 6)
    expect = state(log)
    buf[:] = b"\xff" * len(buf)
    assert state(log) == expect


def test_the_same_slice_asked_again_is_the_same_object_until_its_entries_change():
    # The compiled log only (the twin copies every time): one bytes object
    # serves a leader's appends to every follower and its own write.
    log = c.EntryLog()
    given = blk(1, 1, 1)
    log.append(1, given)
    assert log.slice(1, 4)[0] is given  # what a follower appended, as given
    log.append_stamped(blk(0), 2)
    first, n = log.slice(1, 5)
    assert n == 4 and log.slice(1, 5)[0] is first
    assert log.slice(1, 5, max_bytes=1)[0] is not first  # another range
    log.append(3, blk(3))  # overwrites entry 3, drops 4
    assert log.slice(1, 4) == (blk(1, 1) + blk(3), 3)
    again = log.slice(1, 4)[0]
    log.compact(3)  # empties the log: index 4 on will be new entries
    log.append(4, blk(4))
    assert log.slice(4, 5) == (blk(4), 1) and log.slice(4, 5)[0] is not again
    mutable = bytearray(blk(4, 4))
    log.append(5, mutable)  # a mutable block is copied, never handed out again
    block, _ = log.slice(5, 7)
    assert block == bytes(mutable) and block is not mutable


# ---- find_conflict --------------------------------------------------------------

def test_find_conflict_reports_index_and_offset(impl):
    Log, _, _ = impl
    log = Log()
    log.append(1, blk(1, 1, 2, 2))
    same = blk(1, 2, 2, start=1)
    assert log.find_conflict(2, same) == (0, len(same))
    differs = blk(1, 3, 3)
    assert log.find_conflict(2, differs) == (3, len(blk(1)))
    longer = blk(2, 2, 2)
    assert log.find_conflict(3, longer) == (5, len(blk(2, 2)))
    assert log.find_conflict(5, blk(9)) == (5, 0)
    assert log.find_conflict(2, b"") == (0, 0)


def test_find_conflict_treats_entries_under_the_snapshot_as_matching(impl):
    Log, _, _ = impl
    log = Log(5)
    log.append(5, blk(3, 3))
    # Entries 2..4 are covered by the snapshot whatever their terms.
    block = blk(9, 9, 9, 3, 3, 4)
    assert log.find_conflict(2, block) == (7, len(blk(9, 9, 9, 3, 3)))
    assert log.find_conflict(2, blk(9, 9)) == (0, len(blk(9, 9)))


def test_find_conflict_then_append_is_the_follower_path(impl):
    Log, _, _ = impl
    log = Log()
    log.append(1, blk(1, 1, 2, 2, 2))
    incoming = blk(1, 2, 3, 3, start=20)  # at 2..5: 2 and 3 match, 4 conflicts
    ci, off = log.find_conflict(2, incoming)
    assert (ci, off) == (4, len(blk(1, 2, start=20)))
    log.append(ci, memoryview(incoming)[off:])
    assert [log.term(i) for i in range(1, 6)] == [1, 1, 2, 3, 3]


# ---- slice ----------------------------------------------------------------------

def test_slice_honours_max_bytes_but_returns_at_least_one_entry(impl):
    Log, _, _ = impl
    log = Log()
    log.append(1, py.encode_entries_py([(1, ENTRY_NORMAL, b"x" * n) for n in (10, 0, 5, 7)]))
    sizes = [23, 13, 18, 20]
    whole = log.slice(1, 5)
    assert whole[1] == 4 and len(whole[0]) == sum(sizes)
    assert log.slice(1, 5, 1) == (whole[0][:23], 1)       # first entry alone is too big
    assert log.slice(1, 5, 36) == (whole[0][:36], 2)      # exactly fits two
    assert log.slice(1, 5, 53) == (whole[0][:36], 2)      # one byte short of three
    assert log.slice(1, 5, 54) == (whole[0][:54], 3)
    assert log.slice(1, 5, 10**9) == whole
    assert log.slice(2, 4) == (whole[0][23:54], 2)
    assert log.slice(3, 3) == (b"", 0)


def test_slice_outside_the_log_raises_index_error(impl):
    Log, _, _ = impl
    log = Log(4)
    log.append(4, blk(1, 1))
    for lo, hi in ((3, 5), (4, 7), (5, 4), (1, 1), (7, 7)):
        with pytest.raises(IndexError):
            log.slice(lo, hi)
    assert log.slice(6, 6) == (b"", 0)


# ---- compact --------------------------------------------------------------------

def test_compact_drops_the_prefix(impl):
    Log, _, _ = impl
    log = Log()
    log.append(1, blk(1, 1, 2, 3, 3))
    log.compact(2)
    assert (log.first_index, log.last_index) == (3, 5)
    assert log.slice(3, 6)[0] == blk(2, 3, 3, start=2)
    with pytest.raises(IndexError):
        log.term(2)
    log.compact(1)  # already compacted: nothing happens
    assert (log.first_index, log.last_index) == (3, 5)
    log.append(6, blk(4))
    assert log.scan_terms(3, 7) == [(3, 2), (4, 3), (6, 4)]


def test_compact_past_the_end_restores_a_snapshot(impl):
    Log, _, _ = impl
    log = Log()
    log.append(1, blk(1, 1))
    log.compact(2)
    assert (log.first_index, log.last_index, log.nbytes) == (3, 2, 0)
    log.compact(40)
    assert (log.first_index, log.last_index, log.count) == (41, 40, 0)
    with pytest.raises(ValueError):
        log.append(3, blk(5))
    log.append(41, blk(5))
    assert log.term(41) == 5


# ---- term runs and term search -------------------------------------------------

def test_scan_terms_gives_one_pair_per_term_change(impl):
    Log, _, _ = impl
    log = Log(10)
    log.append(10, blk(1, 1, 1, 4, 4, 5, 1))
    assert log.scan_terms(10, 17) == [(10, 1), (13, 4), (15, 5), (16, 1)]
    assert log.scan_terms(11, 14) == [(11, 1), (13, 4)]
    assert log.scan_terms(12, 12) == []
    with pytest.raises(IndexError):
        log.scan_terms(9, 12)
    with pytest.raises(IndexError):
        log.scan_terms(10, 18)


def test_term_search_finds_the_last_index_with_a_term_not_above_the_hint(impl):
    Log, _, _ = impl
    log = Log()
    log.append(1, blk(1, 1, 2, 2, 5, 5))
    assert log.term_search(6, 5) == 6
    assert log.term_search(6, 4) == 4
    assert log.term_search(3, 4) == 3
    assert log.term_search(6, 1) == 2
    assert log.term_search(6, 0) == 0
    assert log.term_search(100, 3) == 4  # indexes past the end are not candidates


def test_term_search_counts_compacted_indexes_as_possible_matches(impl):
    Log, _, _ = impl
    log = Log(11)
    log.append(11, blk(3, 3, 4))
    assert log.term_search(13, 3) == 12
    assert log.term_search(13, 2) == 10  # nothing in the log: the snapshot index
    assert log.term_search(5, 0) == 5


# ---- entries of one type -------------------------------------------------------

def test_find_type_returns_index_and_data_of_matching_entries_only(impl):
    Log, _, _ = impl
    log = Log(7)
    log.append(7, py.encode_entries_py([
        (1, ENTRY_NOOP, b""), (1, ENTRY_CONFIG, b"conf-a"), (1, ENTRY_NORMAL, b"set"),
        (2, ENTRY_CONFIG, b"conf-b"), (2, ENTRY_CONFIG, b"")]))
    assert log.find_type(7, 12, ENTRY_CONFIG) == [(8, b"conf-a"), (10, b"conf-b"), (11, b"")]
    assert log.find_type(9, 11, ENTRY_CONFIG) == [(10, b"conf-b")]
    assert log.find_type(7, 12, ENTRY_NOOP) == [(7, b"")]
    assert log.find_type(9, 9, ENTRY_CONFIG) == []
    with pytest.raises(IndexError):
        log.find_type(6, 9, ENTRY_CONFIG)
    with pytest.raises(IndexError):
        log.find_type(7, 13, ENTRY_CONFIG)
    log.compact(8)
    assert log.find_type(9, 12, ENTRY_CONFIG) == [(10, b"conf-b"), (11, b"")]


def test_repr_names_the_range_and_size():
    entries = [(1, ENTRY_NORMAL, b"abc"), (2, ENTRY_NOOP, b"")]
    log, twin = c.EntryLog(3), py.EntryLogPy(3)
    log.append(3, c.encode_entries(entries))
    twin.append(3, c.encode_entries(entries))
    assert repr(log) == repr(twin) == "<EntryLog [3, 4] 2 entries, 29 bytes>"


# ---- malformed blocks ------------------------------------------------------------

VALID = py.encode_entries_py([
    (3, ENTRY_NORMAL, b"hello"), (3, ENTRY_NOOP, b""), (4, ENTRY_CONFIG, b"\x00" * 20),
    (4, ENTRY_NORMAL, b"x")])
BOUNDARIES = {0: 0, 18: 1, 31: 2, 64: 3, 78: 4}


def test_every_truncation_point_raises_block_error_and_changes_nothing(impl):
    Log, BlockError, block_count = impl
    assert len(VALID) == 78
    log = Log(5)
    log.append(5, blk(1, 2, 3))
    before = state(log)
    for cut in range(1, len(VALID)):
        part = VALID[:cut]
        if cut in BOUNDARIES:
            assert block_count(part) == BOUNDARIES[cut]
            continue
        for call in (lambda: log.append(6, part), lambda: log.append_stamped(part, 9),
                     lambda: log.find_conflict(5, part), lambda: block_count(part)):
            with pytest.raises(BlockError):
                call()
            assert state(log) == before


@pytest.mark.parametrize("typ", [4, 7, 255])
def test_unknown_entry_type_is_rejected(impl, typ):
    Log, BlockError, block_count = impl
    bad = bytearray(VALID)
    bad[31 + 12] = typ  # the third entry's type byte
    log = Log()
    with pytest.raises(BlockError, match="unknown entry type"):
        log.append(1, bad)
    with pytest.raises(BlockError, match="unknown entry type"):
        block_count(bad)
    assert log.count == 0


def test_data_len_past_the_end_is_rejected_without_overflow(impl):
    Log, BlockError, _ = impl
    bad = struct.pack("<IQB", 0xFFFFFFFF, 1, 0) + b"abc"
    log = Log()
    with pytest.raises(BlockError, match="runs past the end"):
        log.append(1, bad)
    with pytest.raises(BlockError, match="runs past the end"):
        log.append_stamped(VALID + bad, 2)
    assert log.count == 0


def test_empty_block_is_rejected_by_appends_only(impl):
    Log, BlockError, block_count = impl
    log = Log()
    with pytest.raises(BlockError, match="empty block"):
        log.append(1, b"")
    with pytest.raises(BlockError, match="empty block"):
        log.append_stamped(bytearray(), 1)
    assert block_count(b"") == 0
    assert log.find_conflict(1, b"") == (0, 0)


def test_the_compiled_entry_format_is_the_one_messages_defines():
    assert c.ENTRY_HEADER_SIZE == py.HEADER == ENTRY_HEADER_SIZE == 13
    assert c.ENTRY_TYPES == (ENTRY_NORMAL, ENTRY_NOOP, ENTRY_CONFIG, ENTRY_TIME) == (0, 1, 2, 3)
    assert py.TYPE_MAX == ENTRY_TIME


def test_an_entry_both_past_the_end_and_of_unknown_type_is_reported_past_the_end(impl):
    Log, BlockError, block_count = impl
    bad = struct.pack("<IQB", 5, 1, 9) + b"abc"
    with pytest.raises(BlockError, match="entry 0 at offset 0: data_len 5 runs past"):
        block_count(bad)


def test_block_error_is_a_value_error():
    assert issubclass(c.BlockError, ValueError)
    assert issubclass(py.BlockError, ValueError)


def test_c_and_py_block_errors_say_the_same():
    bad_blocks = [VALID[:cut] for cut in range(1, len(VALID)) if cut not in BOUNDARIES]
    bad_blocks.append(VALID[:31] + bytes([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]))
    for bad in bad_blocks:
        with pytest.raises(c.BlockError) as ce:
            c.decode_entries(bad)
        with pytest.raises(py.BlockError) as pe:
            py.decode_entries_py(bad)
        assert str(ce.value) == str(pe.value)


# ---- buffer inputs ----------------------------------------------------------------

def test_any_contiguous_buffer_is_accepted():
    block = blk(2, 2, 3)
    padded = b"junk" + block + b"tail"
    for buf in (block, bytearray(block), memoryview(block),
                memoryview(padded)[4:4 + len(block)], memoryview(bytearray(padded))[4:-4]):
        log = c.EntryLog()
        assert log.append(1, buf) == 3
        assert log.slice(1, 4) == (block, 3)
        assert log.find_conflict(1, buf) == (0, len(block))
        assert c.block_count(buf) == 3
        assert c.decode_entries(buf) == py.decode_entries_py(block)


def test_non_contiguous_or_missing_buffers_are_refused():
    log = c.EntryLog()
    with pytest.raises(BufferError):
        log.append(1, memoryview(blk(1, 1) * 2)[::2])
    with pytest.raises(TypeError):
        log.append(1, None)
    with pytest.raises(TypeError):
        log.append_stamped("text", 1)
    assert log.count == 0


# ---- module helpers ---------------------------------------------------------------

entry_st = st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2), st.binary(max_size=40))


@settings(max_examples=200, deadline=None)
@given(st.lists(entry_st, max_size=12))
def test_helpers_match_the_twin(entries):
    block = c.encode_entries(entries)
    assert block == py.encode_entries_py(entries)
    assert c.decode_entries(block) == entries
    assert c.block_count(block) == len(entries)
    assert c.block_terms(block) == py.block_terms_py(block)


def test_encode_refuses_unknown_types():
    for enc in (c.encode_entries, py.encode_entries_py):
        with pytest.raises(ValueError):
            enc([(1, 4, b"")])
        with pytest.raises(ValueError):
            enc([(1, -1, b"")])


def test_block_terms_counts_from_zero_within_the_block():
    block = blk(7, 7, 8, 7)
    assert c.block_terms(block) == [(0, 7), (2, 8), (3, 7)]
    assert c.block_terms(b"") == []


# ---- large logs (realloc, compaction memmove, shrinking) ---------------------------

def big_entries(n, start=0):
    return [(1 + (start + i) // 1000, ENTRY_NORMAL, b"%d" % (start + i)) for i in range(n)]


def test_one_large_append_matches_the_twin():
    block = c.encode_entries(big_entries(100_000))
    log, twin = c.EntryLog(), py.EntryLogPy()
    assert log.append(1, block) == twin.append(1, block) == 100_000
    assert state(log) == state(twin)
    assert log.slice(1, 100_001) == (block, 100_000)
    for i in (1, 999, 1000, 54_321, 100_000):
        assert log.term(i) == twin.term(i)
    assert log.scan_terms(1, 100_001) == twin.scan_terms(1, 100_001)
    assert log.term_search(100_000, 50) == twin.term_search(100_000, 50) == 50_000
    assert log.slice(500, 100_001, 4096) == twin.slice(500, 100_001, 4096)
    log.compact(99_000)
    twin.compact(99_000)
    assert state(log) == state(twin)
    log.append_stamped(c.encode_entries(big_entries(50)), 200)
    twin.append_stamped(c.encode_entries(big_entries(50)), 200)
    assert state(log) == state(twin)


def test_many_small_appends_grow_the_buffers_without_losing_entries():
    log = c.EntryLog(7)
    expect = []
    for batch in range(1000):
        ents = big_entries(100, start=batch * 100)
        first, last = log.append_stamped(c.encode_entries(ents), 1 + batch // 10)
        assert (first, last) == (7 + batch * 100, 6 + (batch + 1) * 100)
        expect.extend((1 + batch // 10, typ, data) for _, typ, data in ents)
    assert log.count == 100_000
    assert c.decode_entries(log.slice(7, 100_007)[0]) == expect
    # Truncate most of it away, compact nearly all that is left, and grow
    # again: the contents must survive every shrink and regrowth.
    log.append(1007, c.encode_entries(big_entries(5)))
    log.compact(1009)
    assert (log.first_index, log.last_index) == (1010, 1011)
    log.append(1012, c.encode_entries(big_entries(30_000)))
    assert c.decode_entries(log.slice(1010, 31_012)[0]) == (
        big_entries(5)[3:] + big_entries(30_000))


# ---- differential: random operation sequences, C against the twin ------------------

small_entry = st.tuples(st.integers(0, 5), st.integers(0, 2), st.binary(max_size=6))


class Outcome:
    """A call's result or the kind of exception it raised, comparable across
    implementations (BlockError messages must agree too)."""

    def __init__(self, fn, *args):
        try:
            self.value, self.error = fn(*args), None
        except (ValueError, IndexError) as e:
            self.value = None
            self.error = (type(e).__name__, str(e) if type(e).__name__ == "BlockError" else "")

    def __eq__(self, other):
        return (self.value, self.error) == (other.value, other.error)

    def __repr__(self):
        return f"Outcome({self.value!r}, {self.error!r})"


class LogMachine(RuleBasedStateMachine):
    @initialize(first=st.integers(1, 4))
    def start(self, first):
        self.c, self.py = c.EntryLog(first), py.EntryLogPy(first)

    def both(self, method, *args):
        got = Outcome(getattr(self.c, method), *args)
        want = Outcome(getattr(self.py, method), *args)
        assert got == want, (method, args)
        return got.value

    def near(self, data, below=2, above=2):
        """An index around the log's range, sometimes just outside it."""
        return data.draw(st.integers(max(0, self.py.first_index - below),
                                     self.py.last_index + above))

    @rule(data=st.data(), entries=st.lists(small_entry, max_size=5))
    def append(self, data, entries):
        self.both("append", self.near(data), py.encode_entries_py(entries))

    @rule(entries=st.lists(small_entry, max_size=5), term=st.integers(0, 6))
    def append_stamped(self, entries, term):
        self.both("append_stamped", bytearray(py.encode_entries_py(entries)), term)

    @rule(data=st.data())
    def compact(self, data):
        self.both("compact", self.near(data, 3, 3))

    def mostly_matching(self, data, index):
        # Mostly copies of the log's own terms, so matches and conflicts both happen.
        n = data.draw(st.integers(0, 6))
        entries = []
        for idx in range(index, index + n):
            inside = self.py.first_index <= idx <= self.py.last_index
            if inside and data.draw(st.integers(0, 3)):
                term = self.py.term(idx)
            else:
                term = data.draw(st.integers(0, 5))
            entries.append((term, ENTRY_NORMAL, data.draw(st.binary(max_size=4))))
        return py.encode_entries_py(entries)

    @rule(data=st.data())
    def find_conflict(self, data):
        index = self.near(data, 3, 2)
        self.both("find_conflict", index, self.mostly_matching(data, index))

    @rule(data=st.data())
    def follower_append(self, data):
        # What a follower does with an AppendEntries: skip what it has,
        # append from the first conflict.
        index = data.draw(st.integers(max(1, self.py.first_index - 2), self.py.last_index + 1))
        block = self.mostly_matching(data, index)
        ci, off = self.both("find_conflict", index, block)
        if ci:
            self.both("append", ci, memoryview(block)[off:])

    @rule(data=st.data(), max_bytes=st.one_of(st.just(0), st.integers(1, 80)))
    def slice(self, data, max_bytes):
        lo = self.near(data, 1, 2)
        self.both("slice", lo, data.draw(st.integers(max(0, lo - 1), self.py.last_index + 2)),
                  max_bytes)

    @rule(data=st.data())
    def term(self, data):
        self.both("term", self.near(data))

    @rule(data=st.data(), etype=st.integers(0, 3))
    def find_type(self, data, etype):
        lo = self.near(data, 1, 1)
        self.both("find_type", lo, data.draw(st.integers(max(0, lo - 1), self.py.last_index + 2)),
                  etype)

    @rule(data=st.data(), hint_term=st.integers(0, 7))
    def term_search(self, data, hint_term):
        self.both("term_search", self.near(data, 5, 3), hint_term)

    @rule(data=st.data())
    def scan_terms(self, data):
        lo = self.near(data, 1, 1)
        self.both("scan_terms", lo, data.draw(st.integers(max(0, lo - 1), self.py.last_index + 2)))

    @invariant()
    def same_state(self):
        if hasattr(self, "c"):
            assert state(self.c) == state(self.py)
            assert len(self.c) == len(self.py)


LogMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_log_matches_twin = LogMachine.TestCase
