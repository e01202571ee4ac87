"""raftfast: Raft consensus with a compiled replication path, and a
replicated key-value service spoken over RESP."""

__version__ = "0.1.0"

try:
    from raftfast import _crc  # noqa: F401  (the smallest extension: are they built?)
except ImportError as e:  # pragma: no cover - depends on how it was installed
    raise ImportError(
        "raftfast's compiled extensions are missing from " + __path__[0] + ": "
        "build them with `pip install -e .` in the source tree (a plain "
        "`pip install .` builds them into site-packages, which Python does not "
        "use while the current directory is the source tree)") from e


def _check_compiled_modules_are_fresh():
    """The hot-path .py files are also compiled (setup.py); an edited .py
    next to an older .so would silently run the old code, so refuse."""
    import glob
    import os
    import sysconfig

    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    here = __path__[0]
    for so in glob.glob(os.path.join(here, "**", "*" + suffix), recursive=True):
        py = so[: -len(suffix)] + ".py"
        if os.path.exists(py) and os.path.getmtime(py) > os.path.getmtime(so):
            raise ImportError(f"{py} is newer than its compiled module {os.path.basename(so)}: "
                              f"rebuild with `pip install -e .` (or `python setup.py build_ext "
                              f"--inplace`)")


_check_compiled_modules_are_fresh()
