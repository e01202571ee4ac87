"""bench/perf_by_function.py: samples charged to the innermost raftfast
frame, user space or kernel below it."""
import importlib.util
import os

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "perf_by_function", os.path.join(HERE, "..", "..", "bench", "perf_by_function.py"))
pbf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pbf)

SCRIPT = """python
\t    10 _PyObject_GenericGetAttrWithDict
\t    20 __pyx_pw_8raftfast_7runtime_6driver_10RaftDriver_7schedule
\t    30 __pyx_pf_8raftfast_7runtime_6driver_10RaftDriver_30_process.constprop.0

python
\t    40 clear_page_erms
\t    50 entry_SYSCALL_64_after_hwframe
\t    60 __pyx_f_8raftfast_3_kv_7KVStore__set

python
\t    70 uv__io_poll
"""


def test_each_sample_goes_to_its_innermost_raftfast_frame():
    stacks = pbf.read_stacks(SCRIPT.splitlines(keepends=True))
    assert [pbf.charge(s) for s in stacks] == [
        ("__pyx_pw_8raftfast_7runtime_6driver_10RaftDriver_7schedule", False),
        ("__pyx_f_8raftfast_3_kv_7KVStore__set", True),
        ("<no raftfast frame>", False)]


def test_the_report_gives_shares_of_all_samples(capsys):
    pbf.main(SCRIPT.splitlines(keepends=True))
    out = capsys.readouterr().out
    assert out.startswith("3 samples")
    assert " 33.3%  __pyx_pw_8raftfast_7runtime_6driver_10RaftDriver_7schedule" in out
    kernel = out[out.index("kernel under"):]
    assert "33.3%  __pyx_f_8raftfast_3_kv_7KVStore__set" in kernel
