"""Options of the core tests, and the core's tests as plain Python.

Under RAFTFAST_PURE_PYTHON=1 (.ci/run, on a copy of the tree with nothing
compiled) the core's tests take the Python twins of the extensions
(tests/support/entrylog.py) and the simulation runs fewer seeds.
"""


def pytest_addoption(parser):
    parser.addoption("--rewrite", action="store_true", default=False,
                     help="rewrite tests/core/testdata/*.txt with the actual output "
                          "(same as RAFTFAST_REWRITE=1)")
