"""The examples in examples/ run as their docstrings say: three processes
each, in a fresh directory; each process's output is checked, then every
process is stopped by its PID."""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading

from raftfast.launcher.supervisor import stop_processes

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")


def run_example(name, until_line, timeout=60, path=None):
    """Start examples/<name>.py (or `path`) 1, 2 and 3; return each one's
    output lines up to and including the first that matches until_line."""
    root = tempfile.mkdtemp(prefix="rfex")
    env = dict(os.environ, RAFTFAST_EXAMPLE_DIR=root)
    path = path or os.path.join(EXAMPLES, f"{name}.py")
    procs = [subprocess.Popen([sys.executable, path, str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
             for i in (1, 2, 3)]
    outputs = [[] for _ in procs]

    def read(p, out):
        for raw in p.stdout:
            line = raw.decode().rstrip("\n")
            out.append(line)
            if re.search(until_line, line):
                return

    readers = [threading.Thread(target=read, args=(p, out)) for p, out in zip(procs, outputs)]
    try:
        for t in readers:
            t.start()
        for t in readers:
            t.join(timeout)
        finished = [bool(out) and re.search(until_line, out[-1]) for out in outputs]
        assert all(finished), "\n---\n".join("\n".join(out) for out in outputs)
    finally:
        stop_processes(procs)
        for p in procs:
            p.stdout.close()
        shutil.rmtree(root, ignore_errors=True)
    return outputs


def test_counter_example_counts_every_process_once():
    outputs = run_example("counter", r"the counter is")
    for i, out in enumerate(outputs, 1):
        assert out[-1] == f"node {i}: the counter is 30"


def test_job_queue_example_runs_every_job_exactly_once():
    outputs = run_example("job_queue", r"^done$")
    done = []
    for out in outputs:
        line = next(l for l in out if l.startswith("node "))
        jobs = line.split(" did: ", 1)[1]
        done += [] if jobs == "nothing" else jobs.split(", ")
    assert sorted(done) == sorted(f"job {i}.{k}" for i in (1, 2, 3) for k in range(5))


def test_lock_service_example_hands_out_growing_tokens_and_fences_writes():
    outputs = run_example("lock_service", r"^done$")
    grants = []
    for out in outputs:
        for line in out:
            m = re.match(r"node (\d): token (\d+), write (accepted|refused)", line)
            if m:
                grants.append((int(m.group(2)), m.group(3)))
    assert len(grants) == 15
    tokens = [t for t, _ in grants]
    assert len(set(tokens)) == 15  # every acquisition its own token
    # Nobody's lease ran out while it held the lock, so every write went in.
    assert all(result == "accepted" for _, result in grants)


def test_the_class_in_docs_library_md_replicates_across_three_processes(tmp_path):
    """The first example of docs/library.md, as written there (its
    directory aside), is under twenty lines and runs."""
    with open(os.path.join(EXAMPLES, "..", "docs", "library.md")) as f:
        text = f.read()
    code = re.search(r"Save this as `inventory.py`.*?```python\n(.*?)```", text, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) < 20
    root = tempfile.mkdtemp(prefix="rfdoc")
    script = tmp_path / "inventory.py"
    script.write_text(code.replace("/tmp/inv", root))
    try:
        outputs = run_example("inventory", r"^\{", path=str(script))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    counts = sorted(int(out[-2]) for out in outputs)
    assert counts[-1] == 6  # apples 1 + 2 + 3, whoever went last
    for out in outputs:
        assert out[-1].startswith("{'apples': ")
