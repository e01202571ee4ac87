# cython: language_level=3
"""The durable Raft log: a segmented write-ahead log (etcd's WAL shape).

Written on the hot path, read only at start-up.  The Raft core keeps its
entries in memory; this store only persists what the core hands it:

* an *entries* record per appended batch: (first_index, count, the entry
  block exactly as raftfast.core.messages describes it), and
* a *hard-state* record per change of (term, vote, commit), and
* a *log reset* record when a snapshot from the leader replaces the log
  (InstallSnapshot): "the log restarts after (index, term)".

Replay semantics: records are replayed in file order.  An entries record
whose first_index <= the current last index means "truncate from
first_index, then append" -- that is how a conflicting suffix is cut
durably without an ftruncate on the hot path.  The last hard-state record
wins.  A log reset voids every entry before it, whatever they were (a
longer log, a shorter one, other terms): the log continues after its
index.  The entries records after it never go at or below it, and the
first starts at index + 1 (append_entries refuses anything else; replay
calls it damage, except that a newer snapshot may move the start up to
just after the snapshot).  Only the newest reset matters; replay starts
there.

Files
-----
``<dir>/<seq>.wal`` where <seq> is a 16-digit zero-padded decimal sequence
number (``0000000000000001.wal``, ...).  Sequence numbers are contiguous;
the first may be above 1 once compaction deletes old segments.  A segment
rolls over to the next sequence number when the next record would take it
past ``segment_bytes``; every segment begins with a hard-state record
carrying the state current at its creation, so older segments can be
deleted without losing term and vote.

Compaction (``compact(upto_index)``) deletes the oldest segments while
every entry they hold is at or below ``upto_index``, never the current
one; a crash part-way leaves a contiguous suffix.  A reset record counts
as its index; the segments before a durable reset hold only void entries
and count at most its index (see compact()).  Opening and replaying with
``snap_index`` (what a snapshot covers) skips entries records wholly below
it and refuses a log whose first kept record (after the newest reset)
starts after ``snap_index + 1``, or whose newest reset is above
``snap_index``: the entries between would be missing.

Segments are preallocated: with fsync on, a segment is a file of
``segment_bytes`` bytes that read as zeros (reserved with fallocate, or
written as zeros where the filesystem cannot reserve; fsynced) before its
first record goes in, and records overwrite those zeros from the start.
Appending to a growing file instead would commit its new size through the
filesystem journal on every sync, which costs several times more with a
few processes on one disk.
The records end where the file ends or at an *end marker*: a 24-byte
header that is all zero (impossible for a record, whose version is never
0), and from there to the end of the file every byte is zero.  A segment
that rolled before it filled up, and a segment written with fsync off or
by an older raftfast (not preallocated), read the same way.  Opening with
fsync on preallocates the rest of a last segment that is short of
``segment_bytes``.  Where the disk has no room (ENOSPC, EDQUOT, EFBIG) a
segment is left plain, with a warning: appends still work until they too
run out of room.

``<dir>/<seq>.tmp`` is the next segment being preallocated ahead of time
by a background thread (etcd's file pipeline): a roll renames it to the
new segment's name, so the hot path never waits for preallocation.  When
the writer outruns the preparer (the next segment is not ready yet), the
roll creates a plain, not preallocated file instead of waiting, and the
prepared one serves the roll after.  Stray .tmp files are deleted at
open.

Record format, version 1 (all integers little-endian)
-----------------------------------------------------
::

    offset size field
    0      4    crc32c       CRC32C (Castagnoli) of bytes [4, 24 + payload_len)
    4      1    version      1
    5      1    type         1 = entries, 2 = hard state, 3 = log reset
    6      2    reserved     0
    8      4    payload_len  bytes of payload after the header
    12     8    first_index  entries: index of the first entry; hard state: 0;
                             log reset: the index the log restarts after (>= 1)
    20     4    count        entries: number of entries (>= 1); others: 0
    24     ...  payload      entries: the entry block as-is
                             hard state: u64 term, u64 vote, u64 commit (24 bytes)
                             log reset: u64 term at that index (>= 1; 8 bytes)

The 24-byte header size and the CRC coverage are fixed for every version,
so a record of an unknown version is still recognised as a whole, intact
record and refused by name rather than mistaken for damage; likewise a
record of an unknown type (builds before the log reset refuse a log
holding one: "unknown record type 3").  Per-entry
terms live in the block; the record adds no per-entry data.

Opening verifies every record in order.  Only a torn tail is repaired.
In the last segment, that is a record (not an end marker) that is
incomplete or fails its CRC, or an end marker followed by non-zero bytes
(a last write spanning pages, of which a later page reached the disk and
the one holding its header did not), in either case with no intact
record (whole, CRC matching) anywhere after it.  It is overwritten with
zeros from the bad record or the end marker to the last non-zero byte of
the file, keeping the file's size, fsynced (with fsync on) and logged as
a warning.  Any other damage raises LogCorruptError naming the file and
byte offset: an intact record after the bad one or after the end marker
(zeroing it could withdraw an acknowledged entry), and any damage,
non-zero bytes after an end marker among it, in a segment that is not
the last.

Durability: append_entries / save_hard_state write(2) into the page cache
on the caller's thread; sync() fdatasyncs every segment written since the
previous sync (oldest first), then the directory if a segment was created
(renamed into place or created plain), all with the GIL released, so it
can run on a worker thread while the event loop keeps appending.  A
prepared segment's zeros and size are fsynced before the rename, so once
its name is durable its preallocation is too.  A failed write or fsync
is never retried (the kernel may already have dropped the dirty pages):
the store is marked failed and every later call raises.  With fsync off
nothing is preallocated: there is no fdatasync for it to make cheaper.
"""
import logging
import os
import re
import threading

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.errno cimport errno, EINTR
from libc.stdio cimport snprintf
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset
from posix.fcntl cimport openat, O_WRONLY, O_CREAT, O_TRUNC, O_CLOEXEC
from posix.signal cimport sigset_t, sigfillset, SIG_SETMASK
from posix.types cimport off_t
from posix.uio cimport iovec, pwritev
from posix.unistd cimport close as c_close, fdatasync, fsync, pwrite
from cpython.pythread cimport (PyThread_type_lock, PyThread_allocate_lock, PyThread_free_lock,
                               PyThread_acquire_lock, PyThread_release_lock, WAIT_LOCK, NOWAIT_LOCK)

from raftfast._wire cimport ld32, ld64, st32, st64

cdef extern from "crc32c.h":
    uint32_t rf_crc32c(uint32_t crc, const uint8_t *p, size_t n) nogil

cdef extern from "<errno.h>":
    enum: ECANCELED
    enum: EOPNOTSUPP
    enum: ENOSYS
    enum: EINVAL
    enum: ENOSPC
    enum: EDQUOT
    enum: EFBIG

cdef extern from *:
    """
    #include <errno.h>
    #include <fcntl.h>
    #include <stdio.h>
    #include <sys/stat.h>
    /* rename within dirfd, never replacing an existing file (as O_EXCL would
       refuse to create one): atomic where renameat2 exists, else checked first. */
    static int rf_rename_noreplace(int dirfd, const char *from, const char *to) {
    #ifdef RENAME_NOREPLACE
        int rc = renameat2(dirfd, from, dirfd, to, RENAME_NOREPLACE);
        if (rc == 0 || errno != EINVAL)
            return rc;  /* EINVAL: the filesystem does not support the flag */
    #endif
        struct stat st;
        if (fstatat(dirfd, to, &st, AT_SYMLINK_NOFOLLOW) == 0) {
            errno = EEXIST;
            return -1;
        }
        return renameat(dirfd, from, dirfd, to);
    }
    """
    int rf_rename_noreplace(int dirfd, const char *src, const char *dst) nogil

cdef extern from *:
    """
    #include <fcntl.h>
    #include <errno.h>
    /* Reserve [off, off + len) of fd as blocks that read as zeros, without
       writing them: 0, or -1 with errno (EOPNOTSUPP where the filesystem
       cannot, and where there is no fallocate at all). */
    static int rf_reserve(int fd, off_t off, off_t len) {
    #ifdef __linux__
        return fallocate(fd, 0, off, len);
    #else
        errno = EOPNOTSUPP;
        return -1;
    #endif
    }
    """
    int rf_reserve(int fd, off_t off, off_t length) nogil

cdef extern from "<unistd.h>" nogil:
    int unlinkat(int dirfd, const char *pathname, int flags)

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    ctypedef unsigned long pthread_t
    int pthread_create(pthread_t *thread, const void *attr, void *(*start)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t thread, void **retval)
    int pthread_mutex_init(pthread_mutex_t *m, const void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_cond_init(pthread_cond_t *c, const void *attr)
    int pthread_cond_destroy(pthread_cond_t *c)
    int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m)
    int pthread_cond_broadcast(pthread_cond_t *c)

cdef extern from "<signal.h>" nogil:
    int pthread_sigmask(int how, const sigset_t *set, sigset_t *old)

cdef enum:
    HDR = 24                      # record header size, every version
    HS_PAYLOAD = 24               # term, vote, commit
    HS_RECORD = HDR + HS_PAYLOAD
    RESET_PAYLOAD = 8             # the term at the reset's index
    ZCHUNK = 1 << 20              # zero-filling writes this much per call
    TMP_NAME = 32                 # "<16 digits>.tmp" and its NUL, with room

RECORD_VERSION = 1
REC_ENTRIES = 1
REC_HARD_STATE = 2
REC_LOG_RESET = 3
HEADER_SIZE = HDR
DEFAULT_SEGMENT_BYTES = 64 << 20

_log = logging.getLogger("raftfast.storage")
_SEG_RE = re.compile(r"^(\d{16})\.wal$")
_TMP_RE = re.compile(r"^\d{16}\.tmp$")

cdef uint8_t _ZEROS[ZCHUNK]       # static storage: all zero, never written


class LogStoreError(OSError):
    """A write or fsync of the log failed; the store is unusable from now on."""


class LogCorruptError(Exception):
    """The log on disk is damaged beyond a torn last record."""

    def __init__(self, path, offset, reason):
        super().__init__(f"{path}: corrupt log at byte offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


def segment_name(uint64_t seq):
    return "%016d.wal" % seq


cdef void _fill_header(uint8_t *h, uint8_t rtype, uint32_t plen, uint64_t first,
                       uint32_t count, const uint8_t *payload) noexcept nogil:
    cdef uint32_t crc
    h[4] = 1
    h[5] = rtype
    h[6] = 0
    h[7] = 0
    st32(h + 8, plen)
    st64(h + 12, first)
    st32(h + 20, count)
    crc = rf_crc32c(0, h + 4, HDR - 4)
    if plen:
        crc = rf_crc32c(crc, payload, plen)
    st32(h, crc)


cdef inline bint _intact_at(const uint8_t *p, size_t avail) noexcept nogil:
    """A whole record starts at p and its CRC matches (whatever its version)."""
    cdef uint32_t plen
    if avail < HDR:
        return False
    plen = ld32(p + 8)
    if plen > avail - HDR:
        return False
    return ld32(p) == rf_crc32c(0, p + 4, HDR - 4 + <size_t>plen)


cdef size_t _first_nonzero(const uint8_t *b, size_t i, size_t n) noexcept nogil:
    """The offset of the first non-zero byte in b[i:n], or n."""
    cdef uint64_t w
    while i < n and (i & 7):
        if b[i]:
            return i
        i += 1
    while i + 8 <= n:
        memcpy(&w, b + i, 8)
        if w:
            break
        i += 8
    while i < n:
        if b[i]:
            return i
        i += 1
    return n


cdef size_t _nonzero_end(const uint8_t *b, size_t lo, size_t n) noexcept nogil:
    """The offset just past the last non-zero byte in b[lo:n], or lo."""
    cdef uint64_t w
    while n > lo and (n & 7):
        if b[n - 1]:
            return n
        n -= 1
    while n >= lo + 8:
        memcpy(&w, b + n - 8, 8)
        if w:
            break
        n -= 8
    while n > lo:
        if b[n - 1]:
            return n
        n -= 1
    return lo


cdef size_t _intact_after(const uint8_t *base, size_t lo, size_t z, size_t n) noexcept nogil:
    """The offset of the first intact record starting in (lo, z), or n if
    none (z: just past the last non-zero byte of base[lo:n]; a record that
    starts at or after z would be all zeros, so never intact).  A window of
    HDR zero bytes holds no record's start: zero runs are skipped."""
    cdef size_t y = lo + 1, k
    while y < z:
        k = _first_nonzero(base, y, z)
        if k >= z:
            break
        if k >= y + HDR:
            y = k - HDR + 1
        if _intact_at(base + y, n - y):
            return y
        y += 1
    return n


cdef struct Cover:
    # What the records scanned so far (in log order, across segments) say
    # about entry indexes.  The caller sets seg (the segment's ordinal) and
    # resets top before each segment.
    Py_ssize_t seg
    uint64_t top        # the highest index in the segment: of an entry, or of a log reset
    bint check          # a snapshot covers up to skip_upto: skip what it covers, check the rest
    uint64_t skip_upto
    bint kept           # since the start or the newest reset: an entries record reaching
                        # past skip_upto - 1 was handed over (its suffix is the log)
    bint defer          # a gap may still be voided by a later reset: report it at the end
    bint gap            # deferred: the first kept record started past skip_upto + 1
    uint64_t gap_first
    Py_ssize_t gap_seg, gap_off
    bint has_reset      # a log reset record was seen (not voided)
    uint64_t floor      # the newest reset's index: no entries record at or below it may follow
    uint64_t reset_term
    Py_ssize_t reset_seg, reset_off
    bint fresh          # no entries record since the newest reset
    Py_ssize_t void_seg, void_off  # replay: records before this place are voided by a reset


cdef Py_ssize_t _scan(object data, str path, bint last, object on_entries,
                      object on_hard_state, object on_reset, list hs,
                      Py_ssize_t *damaged_end, Cover *cover) except -2:
    """Verify (and with callbacks, replay) one segment's bytes.

    `cover` carries what the segments scanned so far said about entry
    indexes: cover.top is raised to the last index of every entries record
    and to the index of every reset record (of this segment: the caller
    resets it).  Records before (cover.void_seg, cover.void_off) -- the
    newest reset, when replaying -- are verified but not handed over (a
    hard state still is).  A reset record restarts the log: entries records
    after it never go at or below its index, and the first one starts right
    after it -- or, with cover.check, anywhere the snapshot reaches (an
    install cut short after its rename leaves a newer snapshot than the
    reset, and recovery continues the log after that).

    When cover.check is set (a snapshot covers up to S = cover.skip_upto),
    entries records wholly below S are not handed to on_entries unless they
    cut a suffix already handed over (a truncation below S); a record
    holding S is handed over, so the caller sees the log's term at S; and
    the first record kept (since the start or the newest reset) must start
    at or below S + 1, else the entries between are missing: raised at
    once, or with cover.defer noted for _cover_done (a later reset may
    void it).

    Returns where the segment's records end (the file's end, an end marker,
    or -- only possible when `last` -- a torn tail: a bad record, or an end
    marker with non-zero bytes after it, in which case *damaged_end is set
    to the end of the torn extent; else it is -1).
    `hs` receives the last hard state.
    """
    cdef const uint8_t[::1] buf = data
    cdef size_t n = buf.shape[0]
    cdef size_t off = 0, y, z, k
    cdef const uint8_t *base = &buf[0] if n else NULL
    cdef const uint8_t *p
    cdef uint32_t plen, count
    cdef uint64_t first, top_i, rterm
    cdef uint8_t version, rtype
    cdef bint void
    cdef object view = memoryview(data) if on_entries is not None else None
    damaged_end[0] = -1
    while off < n:
        p = base + off
        k = n - off if n - off < HDR else HDR
        if _first_nonzero(base, off, off + k) == off + k:
            # The end marker: the rest of a preallocated segment, zeros to
            # the end of the file.
            y = _first_nonzero(base, off + k, n)
            if y == n:
                return <Py_ssize_t>off
            if not last:
                raise LogCorruptError(path, y, f"non-zero byte after the end of the log at {off}"
                                               " in a segment that is not the last")
            # In the last segment: a multi-page write whose later pages
            # reached the disk but whose first page (the header) did not.
            # Torn like any other last write -- unless an intact record
            # lies behind it, which would be an acknowledged entry.
            z = _nonzero_end(base, off, n)
            k = _intact_after(base, off, z, n)
            if k < n:
                raise LogCorruptError(path, off, f"non-zero bytes after the end of the log at {off}"
                                                 f" (from {y}; an intact record follows at {k})")
            damaged_end[0] = <Py_ssize_t>z
            return <Py_ssize_t>off
        if not _intact_at(p, n - off):
            reason = "incomplete record" if (n - off < HDR or ld32(p + 8) > n - off - HDR) \
                else "checksum mismatch"
            if not last:
                raise LogCorruptError(path, off, reason + " in a segment that is not the last")
            # A torn write leaves nothing intact behind it; an intact record
            # after a bad one means damage inside the log, not a torn tail.
            z = _nonzero_end(base, off, n)
            y = _intact_after(base, off, z, n)
            if y < n:
                raise LogCorruptError(path, off, reason + f" (an intact record follows at {y})")
            damaged_end[0] = <Py_ssize_t>z
            return <Py_ssize_t>off
        version = p[4]
        rtype = p[5]
        plen = ld32(p + 8)
        first = ld64(p + 12)
        count = ld32(p + 20)
        if version != 1:
            raise LogCorruptError(path, off, f"unknown record version {version}")
        if p[6] != 0 or p[7] != 0:
            raise LogCorruptError(path, off, "reserved header bytes are not zero")
        void = cover.seg < cover.void_seg or (cover.seg == cover.void_seg
                                              and <Py_ssize_t>off < cover.void_off)
        if rtype == 1:
            if count == 0 or first == 0 or first + count - 1 < first:
                raise LogCorruptError(path, off, f"entries record with first_index={first} count={count}")
            top_i = first + count - 1
            if top_i > cover.top:
                cover.top = top_i
            if void:
                off += HDR + plen
                continue
            if cover.has_reset and first <= cover.floor:
                raise LogCorruptError(path, off, f"entries record at index {first}, at or below "
                                      f"{cover.floor}, where the log was reset")
            if cover.fresh:
                # Right after a reset the log continues at floor + 1 -- or,
                # seen with a newer snapshot (an install cut short after its
                # rename), anywhere up to just after it: the gap check below.
                if not cover.check and first != cover.floor + 1:
                    raise LogCorruptError(path, off, f"entries record at index {first} right after "
                                          f"the log was reset to continue after {cover.floor}")
                cover.fresh = False
            if cover.check:
                if top_i < cover.skip_upto:
                    if not cover.kept:
                        off += HDR + plen
                        continue  # wholly covered by the snapshot
                    # Cuts what was kept back below the snapshot's index:
                    # the caller drops it; what comes next is checked anew.
                    cover.kept = False
                elif first <= cover.skip_upto + 1:
                    cover.kept = True
                elif not cover.kept:
                    if not cover.defer:
                        _raise_gap(path, <Py_ssize_t>off, first, cover.skip_upto)
                    if not cover.gap:
                        cover.gap = True
                        cover.gap_first = first
                        cover.gap_seg = cover.seg
                        cover.gap_off = <Py_ssize_t>off
                    cover.kept = True
            if on_entries is not None:
                on_entries(first, view[off + HDR:off + HDR + plen], count)
        elif rtype == 2:
            if plen != HS_PAYLOAD or first != 0 or count != 0:
                raise LogCorruptError(path, off, "malformed hard state record")
            hs[0] = ld64(p + HDR)
            hs[1] = ld64(p + HDR + 8)
            hs[2] = ld64(p + HDR + 16)
            if on_hard_state is not None:
                on_hard_state(hs[0], hs[1], hs[2])
        elif rtype == 3:
            rterm = ld64(p + HDR) if plen == RESET_PAYLOAD else 0
            if plen != RESET_PAYLOAD or first == 0 or count != 0 or rterm == 0:
                raise LogCorruptError(path, off, "malformed log reset record")
            if first > cover.top:
                cover.top = first
            if not void:
                # Everything before is void: the log continues after (first, rterm).
                cover.has_reset = True
                cover.floor = first
                cover.reset_term = rterm
                cover.reset_seg = cover.seg
                cover.reset_off = <Py_ssize_t>off
                cover.fresh = True
                cover.kept = False
                cover.gap = False
                if on_reset is not None:
                    on_reset(first, rterm)
        else:
            raise LogCorruptError(path, off, f"unknown record type {rtype}")
        off += HDR + plen
    return <Py_ssize_t>off


cdef _raise_gap(str path, Py_ssize_t off, uint64_t first, uint64_t covered):
    raise LogCorruptError(
        path, off, f"the log resumes at index {first}, but only indexes up to {covered} are "
        f"covered (by a snapshot, or none when 0): entries {covered + 1}..{first - 1} are missing")


cdef _cover_done(Cover *cover, list names):
    """The checks that wait for the end of the log: the newest reset must
    not leave entries the snapshot does not cover, and a gap not voided by
    a later reset is one."""
    if not cover.check:
        return
    if cover.has_reset and cover.floor > cover.skip_upto:
        raise LogCorruptError(
            names[cover.reset_seg], cover.reset_off,
            f"the log restarts after index {cover.floor} (a snapshot was installed there), but "
            f"only indexes up to {cover.skip_upto} are covered (by a snapshot, or none when 0): "
            f"entries {cover.skip_upto + 1}..{cover.floor} are missing")
    if cover.gap:
        _raise_gap(names[cover.gap_seg], cover.gap_off, cover.gap_first, cover.skip_upto)


def _read_file(str path):
    with open(path, "rb") as f:
        return f.read()


def _fsync_dir(str path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def segment_numbers(str path):
    """Sequence numbers of the segment files in `path`, sorted (unchecked)."""
    return sorted(int(m.group(1)) for m in map(_SEG_RE.match, os.listdir(path)) if m)


def _list_segments(str path):
    """Sequence numbers of the segments in `path`, checked to be contiguous."""
    seqs = segment_numbers(path)
    for a, b in zip(seqs, seqs[1:]):
        if b != a + 1:
            raise LogCorruptError(os.path.join(path, segment_name(b)), 0,
                                  f"segment {a + 1} is missing before it")
    return seqs


cdef inline int _fdatasync_nogil(int fd, int *err) noexcept:
    cdef int rc
    with nogil:
        rc = fdatasync(fd)
        err[0] = errno
    return rc


cdef inline void _lock(PyThread_type_lock mu) noexcept:
    # Uncontended (the usual case) costs no GIL release; otherwise wait
    # without the GIL so the holder can finish.
    if not PyThread_acquire_lock(mu, NOWAIT_LOCK):
        with nogil:
            PyThread_acquire_lock(mu, WAIT_LOCK)


# ---------------------------------------------------------------------------
# Zero-filling, and the preparer thread (plain C: it never takes the GIL)

cdef int _zero_fill(int fd, uint64_t start, uint64_t end, Prep *stop_on) noexcept nogil:
    """Write zeros over [start, end) of fd: 0 or an errno (ECANCELED when
    `stop_on` is being shut down).

    (Writing each step back with sync_file_range before the next, so the
    final fsync is not one 64 MiB flush, was measured: no better p99 for
    concurrent appenders, slightly worse on one.)"""
    cdef ssize_t n
    cdef uint64_t want
    cdef bint stop
    while start < end:
        if stop_on != NULL:
            pthread_mutex_lock(&stop_on.mu)
            stop = stop_on.stop
            pthread_mutex_unlock(&stop_on.mu)
            if stop:
                return ECANCELED
        want = end - start if end - start < ZCHUNK else ZCHUNK
        n = pwrite(fd, _ZEROS, <size_t>want, <off_t>start)
        if n < 0:
            if errno == EINTR:
                continue
            return errno
        start += <uint64_t>n
    return 0


cdef int _preallocate(int fd, uint64_t start, uint64_t end, Prep *stop_on) noexcept nogil:
    """Make [start, end) of fd, past its end, blocks that read as zeros:
    reserved with fallocate where the filesystem can, written as zeros
    where it cannot.  0 or an errno.

    Reserving writes no data.  Writing 64 MiB of zeros per segment doubled
    what the disk wrote under large values, and its final fsync, stuck in
    the same journal commit as the appenders' fdatasyncs, made them wait
    for all of it: with three appenders of 1 MiB batches on one disk, their
    fdatasync p99 went from 10 ms to 230 ms (max 500 ms) while a segment
    was being zero-filled.  The cost is small: an fdatasync after writing
    into reserved blocks also commits their change to written, which the
    same test measured at -15% to +20% per fdatasync depending on the
    write's size, with no such stalls."""
    if rf_reserve(fd, <off_t>start, <off_t>(end - start)) == 0:
        return 0
    if errno not in (EOPNOTSUPP, ENOSYS, EINVAL):
        return errno
    return _zero_fill(fd, start, end, stop_on)


cdef int _prepare_file(int dirfd, const char *name, uint64_t size, int *out,
                       Prep *stop_on) noexcept nogil:
    """Create dirfd/name as `size` bytes that read as zeros, fsynced;
    *out = its fd, open for writing.  0 or an errno (the file is removed
    then)."""
    cdef int fd, err
    fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    if fd < 0:
        return errno
    err = _preallocate(fd, 0, size, stop_on)
    if err == 0 and fsync(fd) != 0:
        err = errno
    if err != 0:
        c_close(fd)
        unlinkat(dirfd, name, 0)
        return err
    out[0] = fd
    return 0


cdef enum PrepState:
    PREP_IDLE       # nothing asked
    PREP_QUEUED     # asked, not started
    PREP_BUSY       # zero-filling
    PREP_READY      # done: fd and name hold the prepared file
    PREP_FAILED     # done: err says why


cdef struct Prep:
    pthread_mutex_t mu
    pthread_cond_t cv
    pthread_t thread
    bint started
    bint stop
    bint hold          # tests: do not start the next request yet
    PrepState state
    int dirfd          # the log's directory (owned by the LogStore, closed after the join)
    uint64_t size
    char name[TMP_NAME]
    int fd
    int err


cdef void *_preparer_main(void *arg) noexcept nogil:
    cdef Prep *p = <Prep *>arg
    cdef char name[TMP_NAME]
    cdef uint64_t size
    cdef int fd = -1, err
    pthread_mutex_lock(&p.mu)
    while True:
        while not p.stop and (p.state != PREP_QUEUED or p.hold):
            pthread_cond_wait(&p.cv, &p.mu)
        if p.stop:
            break
        p.state = PREP_BUSY
        memcpy(name, p.name, TMP_NAME)
        size = p.size
        pthread_mutex_unlock(&p.mu)
        err = _prepare_file(p.dirfd, name, size, &fd, p)
        pthread_mutex_lock(&p.mu)
        if err == 0:
            p.fd = fd
            p.state = PREP_READY
        else:
            p.err = err
            p.state = PREP_FAILED
        pthread_cond_broadcast(&p.cv)
    pthread_mutex_unlock(&p.mu)
    return NULL


cdef Prep *_prep_new(int dirfd, uint64_t size) except NULL:
    cdef Prep *p = <Prep *>malloc(sizeof(Prep))
    if p == NULL:
        raise MemoryError()
    memset(p, 0, sizeof(Prep))
    pthread_mutex_init(&p.mu, NULL)
    pthread_cond_init(&p.cv, NULL)
    p.state = PREP_IDLE
    p.dirfd = dirfd
    p.size = size
    p.fd = -1
    return p


cdef int _prep_start(Prep *p) except -1:
    cdef sigset_t all_signals, old
    cdef int rc
    # Signals are for the interpreter's threads; the preparer blocks them all.
    sigfillset(&all_signals)
    pthread_sigmask(SIG_SETMASK, &all_signals, &old)
    rc = pthread_create(&p.thread, NULL, _preparer_main, p)
    pthread_sigmask(SIG_SETMASK, &old, NULL)
    if rc != 0:
        raise OSError(rc, f"cannot start the log's segment preparer: {os.strerror(rc)}")
    p.started = True
    return 0


cdef void _prep_free(Prep *p) noexcept nogil:
    """Stop and join the thread, drop a prepared file, free p."""
    pthread_mutex_lock(&p.mu)
    p.stop = True
    pthread_cond_broadcast(&p.cv)
    pthread_mutex_unlock(&p.mu)
    if p.started:
        pthread_join(p.thread, NULL)  # a zero-fill in progress stops at its next chunk
    if p.state == PREP_READY:
        c_close(p.fd)
        unlinkat(p.dirfd, p.name, 0)
    pthread_cond_destroy(&p.cv)
    pthread_mutex_destroy(&p.mu)
    free(p)


cdef class LogStore:
    """A segmented write-ahead log in directory `path` (created if missing).

    LogStore(path, fsync=True, segment_bytes=64 MiB)

    append_entries/save_hard_state come from one thread (the event loop);
    sync() may run concurrently on another.
    """

    cdef readonly str path
    cdef readonly bint fsync
    cdef readonly Py_ssize_t segment_bytes
    # Guards every field below against a concurrent sync()/close().  Python
    # code run inside a method (even os.path.join) can switch threads, so
    # the GIL alone does not make a method atomic.
    cdef PyThread_type_lock _mu
    cdef PyThread_type_lock _sync_mu  # one sync at a time: a later sync must not return before an earlier one
    cdef int _fd            # current segment, open for writing at _seg_size
    cdef int _dirfd         # the directory, for fsync after a new segment
    cdef bint _dirty        # current segment written since the last sync
    cdef bint _dir_dirty    # a segment was created since the last sync
    cdef bint _closed
    cdef uint64_t _seq      # current segment's sequence number
    cdef str _name          # and its path
    cdef Py_ssize_t _seg_size  # where the current segment's records end
    cdef uint64_t _term, _vote, _commit
    cdef list _seqs         # every segment's sequence number, oldest first
    cdef list _tops         # for each of _seqs, the highest entry index it holds (0: none)
    cdef object _compact_lock  # one compact() at a time
    cdef list _retired      # (fd, path) of rolled-over segments not yet synced
    cdef object _failure    # the LogStoreError that made the store unusable
    cdef Prep *_prep        # the next segment's preparer (fsync on only)
    # Log resets (reset_log).  The newest reset's index is the floor: every
    # later batch goes above it, the first one at exactly floor + 1.
    cdef uint64_t _floor        # 0: no reset known
    cdef uint64_t _expect       # floor + 1 until a batch follows the reset; else 0
    cdef uint64_t _reset_seq    # the segment holding the newest reset record (0: none left)
    cdef Py_ssize_t _reset_off  # and where in it
    cdef uint64_t _reset_index, _reset_term
    # Compaction deletes a segment only once its successor's leading hard
    # state is durable, and lowers voided segments' tops only once the reset
    # record that voids them is durable (see compact()).
    cdef uint64_t _synced_seq   # the current segment when the last sync began
    cdef list _lower_pending    # [(reset index, its segment)] written, not yet synced

    def __cinit__(self):
        self._fd = -1
        self._dirfd = -1
        self._closed = True
        self._prep = NULL
        self._mu = PyThread_allocate_lock()
        self._sync_mu = PyThread_allocate_lock()
        if self._mu == NULL or self._sync_mu == NULL:
            raise MemoryError()

    def __init__(self, path, bint fsync=True, Py_ssize_t segment_bytes=DEFAULT_SEGMENT_BYTES,
                 snap_index=None):
        cdef Py_ssize_t end = 0, file_size = 0, damaged = -1
        cdef Cover cover
        if segment_bytes < HS_RECORD + HDR:
            raise ValueError(f"segment_bytes must be at least {HS_RECORD + HDR}")
        self.path = os.fspath(path)
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self._retired = []
        self._lower_pending = []
        self._failure = None
        self._compact_lock = threading.Lock()
        if not os.path.isdir(self.path):
            os.makedirs(self.path, 0o700)
            if fsync:
                _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        for name in os.listdir(self.path):
            if _TMP_RE.match(name):  # a segment being prepared when the last run ended
                os.unlink(os.path.join(self.path, name))
        self._seqs = _list_segments(self.path)
        self._tops = []
        hs = [0, 0, 0]
        last_seq = self._seqs[len(self._seqs) - 1] if self._seqs else None
        memset(&cover, 0, sizeof(Cover))
        if snap_index is not None:
            cover.check = True
            cover.skip_upto = snap_index
        # A gap may be voided by a reset further on: judged at the end.
        cover.defer = True
        cover.void_seg = -1
        names = [self._file(seq) for seq in self._seqs]
        for i, seq in enumerate(self._seqs):
            name = names[i]
            data = _read_file(name)
            cover.seg = i
            cover.top = 0
            end = _scan(data, name, seq == last_seq, None, None, None, hs, &damaged, &cover)
            self._tops.append(cover.top)
            file_size = len(data)
            del data
        _cover_done(&cover, names)
        if cover.has_reset:
            # Appends go above the reset; where exactly the log continues
            # (after it, or after a newer snapshot) is the caller's to say.
            self._floor = cover.floor
            self._reset_seq = self._seqs[cover.reset_seg]
            self._reset_off = cover.reset_off
            self._reset_index = cover.floor
            self._reset_term = cover.reset_term
            if fsync:
                # Read from the page cache, maybe written just before a
                # process crash: made durable before it lets compaction
                # delete what it voids.
                fd = os.open(names[cover.reset_seg], os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
            self._lower_tops(cover.floor, self._reset_seq)
        self._synced_seq = last_seq if last_seq is not None else 0
        if damaged >= 0:
            # Only the last segment can be torn; repaired once every segment
            # checked out, so a refusal leaves the files as they were.
            self._repair(self._file(last_seq), end, damaged)
        self._term, self._vote, self._commit = hs
        self._dirfd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._closed = False
        try:
            if fsync:
                self._prep = _prep_new(self._dirfd, segment_bytes)
            if not self._seqs:
                self._create_segment(1, self._prepare_now(1) if fsync else -1)
            else:
                self._seq = last_seq
                self._name = self._file(last_seq)
                self._fd = os.open(self._name, os.O_WRONLY | os.O_CLOEXEC)
                self._seg_size = end
                if fsync and file_size < segment_bytes:
                    # Written by an older raftfast, with fsync off, or created
                    # plain by a roll that outran the preparer: preallocate
                    # the rest now (zeros after the records are the format).
                    self._extend(file_size)
                if end == 0:
                    # Created just before a crash, or emptied by a repair: keep
                    # the rule that every segment starts with the hard state.
                    self._write_hard_state()
            if fsync:
                _prep_start(self._prep)
                self._kick()
        except BaseException:
            self.close()
            raise

    cdef str _file(self, uint64_t seq):
        return os.path.join(self.path, segment_name(seq))

    cdef _lower_tops(self, uint64_t index, uint64_t seq):
        """A durable reset at `index` in segment `seq` voids every entry in
        the segments before it: what matters in them is covered once a
        snapshot covers `index` (caller holds _mu, or is __init__)."""
        for i, s in enumerate(self._seqs):
            if s >= seq:
                break
            if self._tops[i] > index:
                self._tops[i] = index

    cdef _repair(self, str name, Py_ssize_t torn, Py_ssize_t damaged_end):
        cdef int fd, err = 0
        _log.warning("%s: torn last record at byte offset %d (%d bytes) zeroed",
                     name, torn, damaged_end - torn)
        fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC)
        try:
            with nogil:
                err = _zero_fill(fd, <uint64_t>torn, <uint64_t>damaged_end, NULL)
            if err:
                raise OSError(err, os.strerror(err), name)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    cdef _extend(self, Py_ssize_t file_size):
        """Preallocate the current segment from file_size to segment_bytes, fsynced."""
        cdef int fd = self._fd, err = 0
        cdef bint synced = False
        with nogil:
            err = _preallocate(fd, <uint64_t>file_size, <uint64_t>self.segment_bytes, NULL)
            if err == 0:
                synced = True
                if fsync(fd) != 0:
                    err = errno
        if err in (ENOSPC, EDQUOT, EFBIG) and not synced:
            # Zeros past the records are harmless however far they got.
            _log.warning("%s: cannot preallocate the last log segment (%s); appending to it as it is",
                         self._name, os.strerror(err))
        elif err:
            # The fsync also covered the records read at open: never go on after it failed.
            raise OSError(err, f"preallocating the log segment failed: {os.strerror(err)}", self._name)

    cdef int _prepare_now(self, uint64_t seq) except -2:
        """A preallocated segment `seq`, made on this thread (at open), or -1
        when there is no room for one: a plain segment will do."""
        cdef bytes tmp = b"%016d.tmp" % seq
        cdef const char *c_tmp = tmp
        cdef int fd = -1, err, dirfd = self._dirfd
        cdef uint64_t size = self.segment_bytes
        with nogil:
            err = _prepare_file(dirfd, c_tmp, size, &fd, NULL)
        if err in (ENOSPC, EDQUOT, EFBIG):
            _log.warning("%s: cannot preallocate log segment %d (%s); it is not preallocated",
                         self.path, seq, os.strerror(err))
            return -1
        if err:
            raise OSError(err, f"preallocating a log segment failed: {os.strerror(err)}",
                          os.path.join(self.path, tmp.decode()))
        self._rename_into_place(fd, tmp, seq)
        return fd

    cdef _rename_into_place(self, int fd, bytes tmp, uint64_t seq):
        cdef bytes dst = segment_name(seq).encode()
        if rf_rename_noreplace(self._dirfd, tmp, dst) != 0:
            err = errno
            c_close(fd)
            unlinkat(self._dirfd, tmp, 0)
            self._fail(err, "segment create", self._file(seq))

    cdef int _take_prepared(self, uint64_t seq) except -2:
        """The prepared segment renamed to `seq`'s name, or -1 when none is
        ready (the preparer is behind, or failed)."""
        cdef Prep *p = self._prep
        cdef PrepState state
        cdef int fd = -1, err = 0
        cdef bytes tmp = None
        pthread_mutex_lock(&p.mu)
        state = p.state
        if state == PREP_READY:
            fd = p.fd
            tmp = p.name
            p.fd = -1
            p.state = PREP_IDLE
        elif state == PREP_FAILED:
            err = p.err
            p.state = PREP_IDLE
        pthread_mutex_unlock(&p.mu)
        if state == PREP_FAILED:
            _log.warning("%s: preparing the next log segment failed (%s); "
                         "segment %d is not preallocated", self.path, os.strerror(err), seq)
        if fd < 0:
            return -1
        self._rename_into_place(fd, tmp, seq)
        return fd

    cdef _kick(self):
        """Ask the preparer for the segment after the current one, unless it
        is still busy with (or holds) an earlier request."""
        cdef Prep *p = self._prep
        pthread_mutex_lock(&p.mu)
        if p.state == PREP_IDLE:
            snprintf(p.name, TMP_NAME, "%016llu.tmp", <unsigned long long>(self._seq + 1))
            p.state = PREP_QUEUED
            pthread_cond_broadcast(&p.cv)
        pthread_mutex_unlock(&p.mu)

    cdef _fail(self, int err, str what, str name):
        """Mark the store failed (caller holds _mu) and raise."""
        self._failure = LogStoreError(err, f"log {what} failed: {os.strerror(err)}", name)
        raise self._failure

    cdef _check(self):
        f = self._failure
        if f is not None:
            raise LogStoreError(f.errno, f"log store unusable after an earlier failure: {f.strerror}",
                                f.filename)
        if self._closed:
            raise ValueError("log store is closed")

    cdef _create_segment(self, uint64_t seq, int fd):
        """Make `seq` the current segment: fd is a preallocated file already
        renamed into place, or -1 for a plain new file."""
        name = self._file(seq)
        if fd < 0:
            try:
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except OSError as e:
                self._fail(e.errno, "segment create", name)
        self._fd = fd
        self._seq = seq
        self._name = name
        self._seg_size = 0
        self._seqs.append(seq)
        self._tops.append(0)
        self._dir_dirty = True
        self._write_hard_state()

    cdef _roll(self):
        if self.fsync:
            # A running sync may still be fsyncing this fd; the next sync
            # fsyncs it once more and only then closes it.
            self._retired.append((self._fd, self._name))
        else:
            os.close(self._fd)
        self._fd = -1
        if self._prep != NULL:
            self._create_segment(self._seq + 1, self._take_prepared(self._seq + 1))
            self._kick()
        else:
            self._create_segment(self._seq + 1, -1)

    cdef int _write(self, const uint8_t *hdr, const uint8_t *payload, size_t plen) except -1:
        cdef iovec iov[2]
        cdef iovec *v = iov
        cdef int niov = 2 if plen else 1
        cdef ssize_t n
        cdef off_t at = self._seg_size
        iov[0].iov_base = <void *>hdr
        iov[0].iov_len = HDR
        iov[1].iov_base = <void *>payload
        iov[1].iov_len = plen
        while niov:
            n = pwritev(self._fd, v, niov, at)
            if n < 0:
                if errno == EINTR:
                    continue
                self._fail(errno, "write", self._name)
            # A short write (e.g. the disk filling up) is followed by another
            # call that either finishes the record or reports the error.
            at += n
            while niov and <size_t>n >= v[0].iov_len:
                n -= v[0].iov_len
                v += 1
                niov -= 1
            if niov:
                v[0].iov_base = <void *>(<uint8_t *>v[0].iov_base + n)
                v[0].iov_len -= n
        self._seg_size += HDR + plen
        self._dirty = True
        return 0

    cdef int _write_hard_state(self) except -1:
        cdef uint8_t rec[HS_RECORD]
        st64(rec + HDR, self._term)
        st64(rec + HDR + 8, self._vote)
        st64(rec + HDR + 16, self._commit)
        _fill_header(rec, 2, HS_PAYLOAD, 0, 0, rec + HDR)
        return self._write(rec, rec + HDR, HS_PAYLOAD)

    cdef bint _full(self, size_t reclen):
        # Roll only a segment holding more than its leading hard state, so a
        # record larger than segment_bytes still lands somewhere.
        return self._seg_size + <Py_ssize_t>reclen > self.segment_bytes and self._seg_size > HS_RECORD

    def append_entries(self, uint64_t first_index, const uint8_t[::1] block not None, uint32_t count):
        """Write one entries record (into the page cache; durable after sync())."""
        cdef uint8_t hdr[HDR]
        cdef size_t n = block.shape[0]
        if first_index == 0 or count == 0 or n == 0:
            raise ValueError(f"empty or misplaced batch: first_index={first_index} count={count} bytes={n}")
        if n > 0xFFFFFFFF:
            raise ValueError(f"entry block of {n} bytes exceeds a record's 4 GiB limit")
        _lock(self._mu)
        try:
            self._check()
            if self._expect:
                if first_index != self._expect:
                    raise ValueError(f"the log was reset to continue after index {self._floor}: "
                                     f"the next batch must start at {self._expect}, not {first_index}")
            elif first_index <= self._floor:
                raise ValueError(f"batch at index {first_index}: the log was reset to continue "
                                 f"after index {self._floor}")
            if self._full(HDR + n):
                self._roll()
            _fill_header(hdr, 1, <uint32_t>n, first_index, count, &block[0])
            self._write(hdr, &block[0], n)
            self._expect = 0
            last = len(self._tops) - 1
            if first_index + count - 1 > <uint64_t>self._tops[last]:
                self._tops[last] = first_index + count - 1
        finally:
            PyThread_release_lock(self._mu)

    def reset_log(self, uint64_t index, uint64_t term):
        """Write a log reset record: the log restarts after (index, term),
        every entry written before it is void, whatever the store held (a
        longer log, a shorter one, another term at `index`).  The next
        append_entries must start at index + 1.  Page cache; durable after
        sync().

        The record starts a segment of its own (after the leading hard
        state), so every earlier segment holds only voided entries: once
        the record is durable, their compaction tops drop to `index`, and
        they go as soon as a snapshot covers it.  For InstallSnapshot: the
        snapshot at (index, term) is durable before this is called."""
        cdef uint8_t rec[HDR + RESET_PAYLOAD]
        cdef Py_ssize_t at
        if index == 0 or term == 0:
            raise ValueError(f"log reset to index {index}, term {term}: both must be at least 1")
        _lock(self._mu)
        try:
            self._check()
            if self._seg_size > HS_RECORD:
                self._roll()
            at = self._seg_size
            st64(rec + HDR, term)
            _fill_header(rec, 3, RESET_PAYLOAD, index, 0, rec + HDR)
            self._write(rec, rec + HDR, RESET_PAYLOAD)
            last = len(self._tops) - 1
            if index > <uint64_t>self._tops[last]:
                self._tops[last] = index
            self._floor = index
            self._expect = index + 1
            self._reset_seq = self._seq
            self._reset_off = at
            self._reset_index = index
            self._reset_term = term
            if self.fsync:
                self._lower_pending.append((index, self._seq))
            else:
                # Nothing is ever durable beyond the page cache, which keeps
                # the record as surely as the unlinks.
                self._lower_tops(index, self._seq)
        finally:
            PyThread_release_lock(self._mu)

    @property
    def log_reset(self):
        """(index, term) of the newest log reset record still in the log
        (replay starts there), or None."""
        _lock(self._mu)
        try:
            if self._reset_seq and self._reset_seq in self._seqs:
                return (self._reset_index, self._reset_term)
            return None
        finally:
            PyThread_release_lock(self._mu)

    def save_hard_state(self, uint64_t term, uint64_t vote, uint64_t commit):
        """Write one hard-state record (durable after sync())."""
        _lock(self._mu)
        try:
            self._check()
            self._term = term
            self._vote = vote
            self._commit = commit
            if self._full(HS_RECORD):
                self._roll()  # the new segment starts with exactly this record
            else:
                self._write_hard_state()
        finally:
            PyThread_release_lock(self._mu)

    def sync(self):
        """Make every record written before this call durable.

        Releases the GIL while fsyncing; safe to call from a worker thread
        while another thread appends.  Does nothing when fsync=False.
        """
        cdef int fd = -1, rc = 0, err = 0
        cdef bint dir_dirty
        cdef uint64_t cur_seq
        cdef list retired = None, lower = None
        self._check()
        if not self.fsync:
            return
        _lock(self._sync_mu)
        try:
            _lock(self._mu)
            try:
                self._check()
                # Whatever was written before this point is in this set.
                # Usually it is the current segment alone: no list is made.
                if self._retired:
                    retired = self._retired
                    self._retired = []
                if self._dirty:
                    fd = self._fd
                    self._dirty = False
                dir_dirty = self._dir_dirty
                self._dir_dirty = False
                cur_seq = self._seq
                if self._lower_pending:
                    lower = self._lower_pending
                    self._lower_pending = []
            finally:
                PyThread_release_lock(self._mu)
            # Oldest segment first, so a durable segment implies durable
            # predecessors even if this sync is cut short by a crash.
            name = None
            if retired is not None:
                for old_fd, name in retired:
                    rc = _fdatasync_nogil(old_fd, &err)
                    if rc != 0:
                        break
            if rc == 0 and fd >= 0:
                name = self._name
                rc = _fdatasync_nogil(fd, &err)
            if rc == 0 and dir_dirty:
                name = self.path
                with nogil:
                    rc = fsync(self._dirfd)
                    err = errno
            if rc != 0:
                _lock(self._mu)
                try:
                    if retired is not None:
                        self._retired = retired + self._retired  # still open: close() closes them
                    if self._failure is None:
                        self._fail(err, "fsync", name)
                    self._check()
                finally:
                    PyThread_release_lock(self._mu)
            if retired is not None:
                for old_fd, _ in retired:
                    os.close(old_fd)
            _lock(self._mu)
            try:
                # Every segment up to cur_seq is now durable from its start
                # (its leading hard state included), and so is every reset
                # record written before this sync began.
                self._synced_seq = cur_seq
                if lower is not None:
                    for index, seq in lower:
                        self._lower_tops(index, seq)
            finally:
                PyThread_release_lock(self._mu)
        finally:
            PyThread_release_lock(self._sync_mu)

    def replay(self, on_entries, on_hard_state, snap_index=None, on_reset=None):
        """Read the log back in order: on_entries(first_index, block, count)
        once per entries record (block is a read-only memoryview),
        on_hard_state(term, vote, commit) once per hard-state record.

        The log starts at its newest reset record, if one is left: what
        comes before is void and not handed over (hard states still are),
        and on_reset(index, term) is called once, before the entries after
        it (which start at index + 1).

        With snap_index (the index a snapshot covers; 0 for none), entries
        records wholly below it are skipped unless they cut back a suffix
        already handed over (the caller then drops the entries it kept
        above the snapshot); a record holding snap_index is handed over, so
        the caller learns the log's term there; the first record kept must
        start at or below snap_index + 1, and a reset must not be above
        snap_index, else LogCorruptError (the entries between are missing).
        A kept record may begin at or below snap_index: the caller drops
        those entries."""
        cdef Py_ssize_t damaged
        cdef Cover cover
        memset(&cover, 0, sizeof(Cover))
        if snap_index is not None:
            cover.check = True
            cover.skip_upto = snap_index
        cover.void_seg = -1
        _lock(self._mu)
        try:
            self._check()
            names = [self._file(s) for s in self._seqs]
            if self._reset_seq and self._reset_seq in self._seqs:
                cover.void_seg = self._seqs.index(self._reset_seq)
                cover.void_off = self._reset_off
        finally:
            PyThread_release_lock(self._mu)
        hs = [0, 0, 0]
        for i, name in enumerate(names):
            cover.seg = i
            # Repaired at open, so any damage now is damage, even at the tail.
            _scan(_read_file(name), name, False, on_entries, on_hard_state, on_reset, hs,
                  &damaged, &cover)
        _cover_done(&cover, names)

    def compact(self, uint64_t upto_index):
        """Delete the oldest segments while every entry they hold is at or
        below upto_index (a snapshot covers them); returns their paths.

        Never the segment being written: it holds the latest hard state
        (every segment starts with the hard state current at its creation,
        and every later change is written to the current one), so the
        segments kept always recover term, vote and commit.  Segments go
        oldest first, each unlink before the next, then the directory is
        fsynced (with fsync on): a crash at any point leaves a contiguous
        suffix of the log, and a segment whose unlink was lost comes back
        only as entries the snapshot covers, which recovery skips.  A
        segment's highest index is what was ever written to it (a later
        truncation does not lower it), so this errs on keeping.

        Log resets: a reset record counts as its index in its segment's
        top, and once it is durable the segments before it (all void) count
        at most its index.  So they go once a snapshot covers the reset,
        and the segment holding the newest reset goes only when its top
        (the reset and the entries after it there) is covered too; the log
        left then starts after the reset, within what the snapshot covers,
        and needs no record to say what went before.

        A segment is deleted only when the segments after it are durable
        from their start (this syncs first): the kept log must begin with a
        durable hard state, and a reset that voids a deleted segment must
        not be lost with the page cache.

        Safe to call from a worker thread while the event loop appends (the
        unlinks and the fsync run without the store's lock and without the
        GIL).  A failed unlink raises OSError and changes nothing more: the
        segment stays part of the log (no data is at risk, so the store is
        not marked failed)."""
        cdef uint64_t top
        dropped = []
        with self._compact_lock:
            self.sync()
            while True:
                _lock(self._mu)
                try:
                    self._check()
                    # Never the last (current) segment, nor one whose
                    # successor is not durable yet (with fsync off nothing
                    # is, beyond the page cache).
                    if len(self._seqs) < 2:
                        break
                    if self.fsync and self._seqs[0] >= self._synced_seq:
                        break
                    top = self._tops[0]
                    if top > upto_index:
                        break
                    name = self._file(self._seqs[0])
                finally:
                    PyThread_release_lock(self._mu)
                try:
                    os.unlink(name)
                except FileNotFoundError:
                    pass
                _lock(self._mu)
                try:
                    del self._seqs[0]
                    del self._tops[0]
                finally:
                    PyThread_release_lock(self._mu)
                dropped.append(name)
            if dropped and self.fsync:
                _fsync_dir(self.path)
        if dropped:
            _log.info("%s: compacted: %d segment(s) up to index %d deleted, the log starts at "
                      "segment %s", self.path, len(dropped), upto_index,
                      os.path.basename(self.segments[0]))
        return dropped

    @property
    def segment_tops(self):
        """(segment path, its compaction top), oldest first: the highest
        entry index ever written to it, or a reset's index (0 for none);
        at most the newest durable reset's index for the segments before it."""
        _lock(self._mu)
        try:
            return [(self._file(s), t) for s, t in zip(self._seqs, self._tops)]
        finally:
            PyThread_release_lock(self._mu)

    @property
    def hard_state(self):
        """The last saved (term, vote, commit)."""
        _lock(self._mu)
        try:
            return (self._term, self._vote, self._commit)
        finally:
            PyThread_release_lock(self._mu)

    @property
    def failed(self):
        return self._failure is not None

    @property
    def closed(self):
        return self._closed

    @property
    def segments(self):
        """Paths of the segments, oldest first."""
        _lock(self._mu)
        try:
            return [self._file(s) for s in self._seqs]
        finally:
            PyThread_release_lock(self._mu)

    def _wait_prepared(self):
        """For tests, from the appending thread: wait until the preparer has
        finished what it was asked (if it is not held); True when a prepared
        segment is ready."""
        cdef Prep *p = self._prep
        cdef bint ready
        if p == NULL or self._closed:
            return False
        with nogil:
            pthread_mutex_lock(&p.mu)
            while (p.state == PREP_BUSY or (p.state == PREP_QUEUED and not p.hold)) and not p.stop:
                pthread_cond_wait(&p.cv, &p.mu)
            ready = p.state == PREP_READY
            pthread_mutex_unlock(&p.mu)
        return ready

    def _hold_preparer(self, bint hold):
        """For tests, from the appending thread: keep the preparer from
        starting its next request (as if the disk were slow), or let it go."""
        cdef Prep *p = self._prep
        if p == NULL or self._closed:
            return
        pthread_mutex_lock(&p.mu)
        p.hold = hold
        pthread_cond_broadcast(&p.cv)
        pthread_mutex_unlock(&p.mu)

    def close(self):
        """Close every file; records not yet synced stay in the page cache.
        A segment prepared ahead of time is deleted."""
        cdef Prep *prep = NULL
        if self._closed:
            return
        _lock(self._sync_mu)  # never close an fd under a running fsync
        try:
            _lock(self._mu)
            try:
                if self._closed:
                    return
                self._closed = True
                fds = [fd for fd, _ in self._retired] + [self._fd, self._dirfd]
                self._retired = []
                self._fd = self._dirfd = -1
                prep = self._prep
                self._prep = NULL
            finally:
                PyThread_release_lock(self._mu)
        finally:
            PyThread_release_lock(self._sync_mu)
        if prep != NULL:
            with nogil:
                _prep_free(prep)  # before the directory fd it uses is closed
        for fd in fds:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __dealloc__(self):
        # Python attributes may already be cleared here; C fields are not.
        if self._prep != NULL:
            _prep_free(self._prep)
            self._prep = NULL
        if not self._closed:
            if self._fd >= 0:
                c_close(self._fd)
            if self._dirfd >= 0:
                c_close(self._dirfd)
            if self._retired:
                for fd, _ in self._retired:
                    c_close(fd)
        if self._mu != NULL:
            PyThread_free_lock(self._mu)
        if self._sync_mu != NULL:
            PyThread_free_lock(self._sync_mu)
