"""Instructions per SET through three Raft drivers: a count that a busy host
does not disturb.

Three runtime.driver.RaftDrivers on a simulated loop and network
(tests/support/simdriver.py: real storage in a temporary directory, the
log store without fsync calls, KV state machines) take N one-entry SETs at
the leader, one at a time, each run until it is answered: the leader's
proposal, both followers' append and acknowledgement, the commit, every
apply and the reply, with the group commit's passes.  Valgrind's callgrind
counts the instructions the interpreter executes for the whole run, once
with N SETs and once with none; the difference over N is the count per
SET.  Wall-clock figures on a shared 2-core machine swing 30-40% between
identical builds; this count moves by well under 1%, so a change of a few
per cent in the per-message Python shows.  It includes the simulated
loop's and network's own Python (the same in both builds of an A/B), and
no system call's kernel work.

    python -m bench.instructions_per_set [--sets N]       # needs valgrind

For a before/after, run it in each checkout (each built in place).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WARM_UP = 50


def run_sets(n):
    """Elect a leader among three simulated drivers, then answer n SETs
    (after WARM_UP more); the answers, in order."""
    import pathlib

    from raftfast._kv import OP_SET, encode_commands
    from tests.support.simdriver import SimDrivers

    with tempfile.TemporaryDirectory() as d:
        with SimDrivers(pathlib.Path(d), voters=(1, 2, 3)) as sim:
            leader = sim.wait_leader()
            answers = []
            for i in range(WARM_UP + n):
                block = encode_commands([(OP_SET, [b"k%d" % i, b"v" * 64])])
                leader.propose(block, 1, answers.append)
                sim.loop.run_until(lambda: len(answers) == i + 1, 5.0, "the SET's answer")
            return answers


def count_instructions(n):
    """Instructions callgrind counts for a whole run of `run_sets(n)`."""
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={d}/callgrind.out",
             sys.executable, "-m", "bench.instructions_per_set", "--run", str(n)],
            cwd=ROOT, capture_output=True, text=True, check=True)
    m = re.search(r"Collected : (\d+)", out.stderr)
    if m is None:
        raise RuntimeError(f"no instruction count from callgrind:\n{out.stderr[-2000:]}")
    return int(m.group(1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", type=int, default=300, help="SETs counted (default 300)")
    ap.add_argument("--run", type=int, help=argparse.SUPPRESS)  # the run callgrind watches
    ns = ap.parse_args(argv)
    if ns.run is not None:
        run_sets(ns.run)
        return 0
    if not shutil.which("valgrind"):
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 1
    base = count_instructions(0)
    total = count_instructions(ns.sets)
    print(f"{(total - base) / ns.sets:,.0f} instructions per SET through three simulated "
          f"drivers ({ns.sets} SETs; {ROOT})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
