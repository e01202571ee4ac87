"""Refuse to run raftfast on a build that is missing or out of date.

raftfast/__init__.py installs CompiledModuleGuard; it loads nothing, so
`import raftfast.core` works in a tree where nothing is compiled, and each
check happens when a module is imported, where it is needed:

* raftfast's private top-level modules (raftfast._codec, ._kv, ...) are its
  C extensions.  One that is not built is a clear ImportError that says how
  to build it (a ModuleNotFoundError), never a silent fallback to slower
  code.
* The hot path's .py modules are also compiled (setup.py, COMPILED_PY), and
  Python prefers the compiled module to the source beside it.  In a source
  tree, a .py edited after its module was compiled would silently run the
  old code, so that import is refused too.  An installed package is not
  checked: an installer writes every file at install time, a compiled
  module and its source in whatever order, and nobody edits them there.
"""
import importlib.machinery
import os
import sys

BUILD_HINT = ("build them with `pip install -e .` in the source tree (a plain "
              "`pip install .` builds them into site-packages, which Python does not "
              "use while the current directory is the source tree)")


class CompiledModuleGuard:
    """A meta path finder in front of the usual one, for raftfast's
    submodules only: it finds them exactly as the path finder does, then
    refuses a missing extension or (with check_freshness) a stale compiled
    module."""

    def __init__(self, check_freshness):
        self.check_freshness = check_freshness

    def find_spec(self, fullname, path=None, target=None):
        if path is None or not fullname.startswith("raftfast."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None:
            package, _, name = fullname.rpartition(".")
            if package == "raftfast" and name.startswith("_"):
                raise ModuleNotFoundError(f"raftfast's compiled extension {fullname} is missing "
                                          f"from {os.pathsep.join(path)}: {BUILD_HINT}",
                                          name=fullname)
            return None
        if not self.check_freshness:
            return spec
        origin = spec.origin or ""
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            if origin.endswith(suffix):
                # The module's source, and its .pxd (the compiled layout
                # other modules were built against).
                stem = origin[:-len(suffix)]
                source = next((path for path in (stem + ".py", stem + ".pxd")
                               if os.path.exists(path)
                               and os.path.getmtime(path) > os.path.getmtime(origin)), None)
                if source is not None:
                    raise ImportError(
                        f"{source} is newer than its compiled module {os.path.basename(origin)}: "
                        f"rebuild with `pip install -e .` (or `python setup.py build_ext "
                        f"--inplace`)", name=fullname)
                break
        return spec


def install_guard(package_dir):
    """Put the guard first on sys.meta_path, once per interpreter.
    package_dir is raftfast's directory: beside a setup.py, it is a source
    tree, where compiled modules are checked against their sources."""
    if not any(isinstance(finder, CompiledModuleGuard) for finder in sys.meta_path):
        source_tree = os.path.exists(os.path.join(os.path.dirname(package_dir), "setup.py"))
        sys.meta_path.insert(0, CompiledModuleGuard(check_freshness=source_tree))
