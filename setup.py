"""Build the Cython extensions in ext/ as raftfast._<name>.

RAFTFAST_ONLY=codec,resp limits a development build to some extensions
(every extension is always built by ``pip install``; "py" names the
compiled pure-Python modules).
RF_DEBUG=1 compiles with assertions and bounds checks on.
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

EXTENSIONS = ["crc", "entrylog", "logstore", "codec", "resp", "kv"]

only = [n for n in os.environ.get("RAFTFAST_ONLY", "").split(",") if n]
debug = os.environ.get("RF_DEBUG") == "1"
names = [n for n in EXTENSIONS if not only or n in only]

extensions = [
    Extension(
        f"raftfast._{name}",
        [f"ext/{name}.pyx"],
        include_dirs=["ext"],
        extra_compile_args=["-O2"] + ([] if debug else ["-DNDEBUG"]),
    )
    for name in names
]

# The per-batch Python of the hot path, compiled as it stands (Cython's
# pure-Python mode): the same .py files stay readable and importable as plain
# Python (RAFTFAST_PURE_PYTHON=1 builds without them, for debugging), but
# compiled, a batch costs no interpreted function calls.
COMPILED_PY = [
    "raftfast/core/messages.py",
    "raftfast/runtime/storage.py",
    "raftfast/core/quorum.py",
    "raftfast/core/progress.py",
    "raftfast/core/log.py",
    "raftfast/core/raft.py",
    "raftfast/runtime/driver.py",
    "raftfast/runtime/group_commit.py",
    "raftfast/runtime/waiters.py",
    "raftfast/runtime/members.py",
    "raftfast/runtime/snapshots.py",
    "raftfast/runtime/kv_state_machine.py",
    "raftfast/runtime/transport.py",
    "raftfast/server/replies.py",
    "raftfast/server/batcher.py",
    "raftfast/server/connection.py",
    "raftfast/server/commands.py",
    "raftfast/server/server.py",
]
if os.environ.get("RAFTFAST_PURE_PYTHON") != "1" and (not only or "py" in only):
    extensions += [
        Extension(path[:-3].replace("/", "."), [path], extra_compile_args=["-O2"])
        for path in COMPILED_PY
    ]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": debug,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    ),
)
