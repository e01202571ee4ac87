"""Build the Cython extensions in ext/ as raftfast._<name>, and compile the
hot path's plain-Python modules (COMPILED_PY) with Cython's pure-Python mode.

Needs a C compiler.  Extensions are cythonized and compiled in parallel, one
job per CPU, without debug information and stripped.

RAFTFAST_ONLY=codec,resp limits a development build to some extensions
(every extension is always built by ``pip install``; "py" names the
compiled pure-Python modules).
RF_DEBUG=1 compiles with assertions, bounds checks and debug information.
RAFTFAST_PURE_PYTHON=1 skips COMPILED_PY at build time: the core, runtime and
server then run as plain Python (the extensions are still built).  At test
time the same variable makes the core's tests use the pure-Python twins of
the extensions (tests/support/entrylog.py) instead of the compiled ones;
.ci/run runs tests/core that way in a copy of the tree with nothing
compiled, so the core needs no C extension to import or to be tested.
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class ParallelBuildExt(build_ext):
    """build_ext compiling one extension per CPU unless -j says otherwise."""

    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1


EXTENSIONS = ["crc", "entrylog", "logstore", "codec", "resp", "kv"]

only = [n for n in os.environ.get("RAFTFAST_ONLY", "").split(",") if n]
debug = os.environ.get("RF_DEBUG") == "1"
# Symbols without the debug checks, for profiling with perf.
symbols = debug or os.environ.get("RF_SYMBOLS") == "1"
names = [n for n in EXTENSIONS if not only or n in only]

# The last -O/-g on the command line wins over Python's own CFLAGS.
compile_args = ["-O2"] + ([] if debug else ["-DNDEBUG", "-g0"])
link_args = [] if symbols else ["-s"]

extensions = [
    Extension(
        f"raftfast._{name}",
        [f"ext/{name}.pyx"],
        include_dirs=["ext"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
    for name in names
]

# The per-batch Python of the hot path, compiled as it stands (Cython's
# pure-Python mode): the same .py files stay readable and importable as plain
# Python (RAFTFAST_PURE_PYTHON=1 builds without them, for debugging), but
# compiled, a batch costs no interpreted function calls.
COMPILED_PY = [
    "raftfast/core/messages.py",
    "raftfast/core/quorum.py",
    "raftfast/core/progress.py",
    "raftfast/core/log.py",
    "raftfast/core/raft.py",
    "raftfast/runtime/storage.py",
    "raftfast/runtime/recovery.py",           # the log replay at start-up, per record
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
    "raftfast/runtime/peer_connections.py",   # every received frame
]
if os.environ.get("RAFTFAST_PURE_PYTHON") != "1" and (not only or "py" in only):
    extensions += [
        Extension(path[:-3].replace("/", "."), [path],
                  extra_compile_args=["-O2"] + ([] if debug else ["-g0"]),
                  extra_link_args=link_args)
        for path in COMPILED_PY
    ]

setup(
    cmdclass={"build_ext": ParallelBuildExt},
    ext_modules=cythonize(
        extensions,
        nthreads=os.cpu_count() or 1,
        include_path=["ext"],
        language_level=3,
        compiler_directives={
            "boundscheck": debug,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    ),
)
