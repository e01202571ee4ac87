"""raftfast: Raft consensus with a compiled replication path, and a
replicated key-value service spoken over RESP."""

__version__ = "0.1.0"

try:
    from . import _crc  # noqa: F401  (the smallest extension: are they built?)
except ImportError as e:  # pragma: no cover - depends on how it was installed
    raise ImportError(
        "raftfast's compiled extensions are missing from " + __path__[0] + ": "
        "build them with `pip install -e .` in the source tree (a plain "
        "`pip install .` builds them into site-packages, which Python does not "
        "use while the current directory is the source tree)") from e
