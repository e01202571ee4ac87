"""raftfast.build_check: a tree without its extensions still imports the
core, refuses what needs an extension with a clear message, and refuses a
compiled module older than its source (in a source tree only)."""
import importlib.machinery
import os
import pathlib
import shutil
import subprocess
import sys

import raftfast._crc

PACKAGE = pathlib.Path(raftfast.__file__).parent
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def plain_tree(dest, source_tree=True):
    """A copy of the package's .py files (nothing compiled) under dest."""
    for src in PACKAGE.rglob("*.py"):
        target = dest / "raftfast" / src.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    if source_tree:
        (dest / "setup.py").write_text("# marks a source tree\n")
    return dest


def run(tree, code):
    return subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True)


def test_a_tree_without_extensions_imports_the_core_but_refuses_the_runtime(tmp_path):
    tree = plain_tree(tmp_path)
    core = run(tree, "import raftfast.core, raftfast; print(raftfast.__file__)")
    assert core.returncode == 0, core.stderr
    assert core.stdout.strip() == str(tree / "raftfast" / "__init__.py")
    runtime = run(tree, "import raftfast.runtime.storage")
    assert runtime.returncode == 1
    last = runtime.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError: raftfast's compiled extension raftfast._"), last
    assert "pip install -e ." in last


def stale_crc(tree, py_newer):
    """raftfast/_crc compiled, with a _crc.py beside it that is newer or older."""
    compiled = tree / "raftfast" / ("_crc" + SUFFIX)
    shutil.copyfile(raftfast._crc.__file__, compiled)
    source = tree / "raftfast" / "_crc.py"
    source.write_text("raise AssertionError('the source ran instead of the compiled module')\n")
    mtime = compiled.stat().st_mtime
    os.utime(source, (mtime + 10, mtime + 10) if py_newer else (mtime - 10, mtime - 10))


def test_a_compiled_module_older_than_its_source_is_refused(tmp_path):
    tree = plain_tree(tmp_path)
    stale_crc(tree, py_newer=True)
    got = run(tree, "import raftfast._crc")
    assert got.returncode == 1
    assert "_crc.py is newer than its compiled module _crc" in got.stderr
    stale_crc(tree, py_newer=False)
    got = run(tree, "import raftfast._crc; print(raftfast._crc.crc32c(b'123456789'))")
    assert (got.returncode, got.stdout) == (0, f"{0xE3069283}\n"), got.stderr


def test_a_compiled_module_older_than_its_pxd_is_refused(tmp_path):
    """A .pxd is the layout other modules were compiled against: edited and
    not rebuilt, the module would disagree with them."""
    tree = plain_tree(tmp_path)
    stale_crc(tree, py_newer=False)
    layout = tree / "raftfast" / "_crc.pxd"
    layout.write_text("# the layout\n")
    mtime = (tree / "raftfast" / ("_crc" + SUFFIX)).stat().st_mtime
    os.utime(layout, (mtime + 10, mtime + 10))
    got = run(tree, "import raftfast._crc")
    assert got.returncode == 1
    assert "_crc.pxd is newer than its compiled module _crc" in got.stderr


def test_an_installed_package_is_not_checked_for_freshness(tmp_path):
    tree = plain_tree(tmp_path, source_tree=False)
    stale_crc(tree, py_newer=True)
    got = run(tree, "import raftfast._crc; print(raftfast._crc.crc32c(b'123456789'))")
    assert (got.returncode, got.stdout) == (0, f"{0xE3069283}\n"), got.stderr
