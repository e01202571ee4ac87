"""Where a node's CPU goes, by raftfast function: reads `perf script` output
(samples with call chains) and charges each sample to the innermost frame
that is raftfast's compiled code, split into the time spent in user space
under it (its own code, libpython, uvloop, libc) and in the kernel under it
(its system calls, page faults).  A plain `perf report` charges most samples
to libpython's generic helpers, which says that attribute lookups cost but
not whose.

The compiled modules are stripped by default; build them with symbols first
(`RF_SYMBOLS=1 python setup.py build_ext --inplace`).
Then, against a running node:

    perf record -F 1000 --call-graph dwarf,16384 -o perf.data -p PID -- sleep 5
    perf script -i perf.data -F ip,sym | python bench/perf_by_function.py
"""
import collections
import re
import sys

KERNEL_ENTRY = ("entry_SYSCALL", "asm_exc", "asm_sysvec", "asm_common_interrupt")
# A Cython function's symbol: __pyx_pw_/__pyx_pf_/__pyx_f_, then the mangled
# module path, which for raftfast's modules starts with 8raftfast.
RAFTFAST_FRAME = re.compile(r"__pyx_(?:pw|pf|f|getprop)_\d*8raftfast_\S+")


def read_stacks(lines):
    """[[symbol, ...] innermost first] from `perf script -F ip,sym` output."""
    stacks, cur = [], []
    for line in lines:
        parts = line.split(None, 1)
        if not parts:
            if cur:
                stacks.append(cur)
                cur = []
        elif len(parts) == 2:
            cur.append(parts[1].strip())
    if cur:
        stacks.append(cur)
    return stacks


def charge(stack):
    """(function, in_kernel): the innermost raftfast frame of a sample, and
    whether the sample was in the kernel below it."""
    kernel = False
    for frame in stack:
        if frame.startswith(KERNEL_ENTRY):
            kernel = True
        m = RAFTFAST_FRAME.match(frame)
        if m:
            return m.group(0), kernel
    return "<no raftfast frame>", kernel


def main(lines, top=30):
    stacks = read_stacks(lines)
    user, kernel = collections.Counter(), collections.Counter()
    for s in stacks:
        fn, in_kernel = charge(s)
        (kernel if in_kernel else user)[fn] += 1
    n = len(stacks) or 1
    print(f"{len(stacks)} samples")
    for title, counts in (("user space under", user), ("kernel under", kernel)):
        print(f"{title} the innermost raftfast function, % of all samples:")
        for fn, c in counts.most_common(top):
            print(f"  {100 * c / n:5.1f}%  {fn}")


if __name__ == "__main__":
    main(sys.stdin)
