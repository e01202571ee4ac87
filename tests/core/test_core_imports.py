"""The core is plain Python: importing it loads none of the C extensions,
so it runs, and is tested, where nothing is compiled."""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_importing_the_core_loads_no_extension():
    probe = ("import raftfast.core, sys; print(raftfast.__file__); "
             "print(sorted(m for m in sys.modules if m.startswith('raftfast._')))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out == [str(ROOT / "raftfast" / "__init__.py"), "[]"]
