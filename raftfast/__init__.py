"""raftfast: Raft consensus with a compiled replication path, and a
replicated key-value service spoken over RESP."""

__version__ = "0.1.0"
