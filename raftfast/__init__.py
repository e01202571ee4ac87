"""raftfast: Raft consensus with a compiled replication path, and a
replicated key-value service spoken over RESP."""
from raftfast.build_check import install_guard

__version__ = "0.1.0"

# Importing the package loads no extension: a missing or stale compiled
# module is refused when something imports it (see build_check).
install_guard(__path__[0])
