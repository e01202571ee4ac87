"""pytest configuration for the benchmark suites in bench/ (see README.md).

Run from the repository root:  python -m pytest bench/ --benchmark-only

The default `python -m pytest` does not collect this directory: pyproject's
testpaths is ["tests"].
"""
import os
import platform
import shutil
import sys
import tempfile

import pytest

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)

# benchutil (this directory), and the repository root for tests.support and
# the pure-Python twins in tests.reference.
for _path in (BENCH, ROOT):
    if _path not in sys.path:
        sys.path.insert(0, _path)
import benchutil  # noqa: E402


@pytest.fixture(scope="session")
def bench_dir(tmp_path_factory):
    """Where the log-store benchmarks write: a fresh directory under
    $RAFTFAST_BENCH_DIR when set (point it at the disk a node's data dir
    would use), else under pytest's tmp dir.  Removed afterwards."""
    base = os.environ.get("RAFTFAST_BENCH_DIR")
    if base:
        os.makedirs(base, exist_ok=True)
        path = tempfile.mkdtemp(prefix="raftfast-bench-", dir=base)
    else:
        path = str(tmp_path_factory.mktemp("logstore"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def pytest_benchmark_update_machine_info(config, machine_info):
    # The cores are shared: the load when the run started belongs with the result.
    try:
        machine_info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    machine_info["cpu_count"] = os.cpu_count()
    machine_info["kernel"] = platform.release()


def pytest_terminal_summary(terminalreporter):
    if not benchutil.rows:
        return
    tr = terminalreporter
    tr.write_sep("-", "raftfast throughput (from each benchmark's mean; also in extra_info)")
    width = max(len(name) for name, _ in benchutil.rows)
    for name, rates in benchutil.rows:
        tr.write_line(f"{name:<{width}}  {rates}")
