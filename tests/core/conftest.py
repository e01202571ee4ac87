"""The core's tests as plain Python.

Under RAFTFAST_PURE_PYTHON=1 (.ci/run, on a copy of the tree with nothing
compiled) the core's tests take the Python twins of the extensions
(tests/support/entrylog.py) and the simulation runs fewer seeds.
test_hotpath.py drives the runtime and the server (the driver encodes an
append once for every follower, the server keeps proposals within the
batch limits), which need the compiled extensions, so that run leaves it
out; the default run keeps it.
"""
import os

PURE_PYTHON = os.environ.get("RAFTFAST_PURE_PYTHON") == "1"

collect_ignore = ["test_hotpath.py"] if PURE_PYTHON else []
