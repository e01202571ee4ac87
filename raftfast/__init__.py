"""raftfast: Raft consensus with a compiled replication path, a replicated
key-value service spoken over RESP, and a library to replicate a Python
program's own state (docs/library.md)."""
from raftfast.build_check import install_guard

# The one place the version is written: pyproject.toml reads it from here
# (a dynamic version), `--version` on every command prints it.
__version__ = "0.2.0"

# Importing the package loads no extension: a missing or stale compiled
# module is refused when something imports it (see build_check).
install_guard(__path__[0])

# The public API, imported on first use: `import raftfast` stays cheap and
# loads no extension.
_PUBLIC = {
    "Node": "raftfast.library.node",
    "ThreadedNode": "raftfast.library.threaded",
    "StateMachine": "raftfast.library.state_machine",
    "ApplyContext": "raftfast.library.state_machine",
    "Replicated": "raftfast.library.replicated",
    "replicated": "raftfast.library.replicated",
    "ReplDict": "raftfast.library.replicated",
    "ReplCounter": "raftfast.library.replicated",
    "ReplLock": "raftfast.library.replicated",
    "Client": "raftfast.client",
    "AsyncClient": "raftfast.client",
    "RaftError": "raftfast.errors",
    "NotLeader": "raftfast.errors",
    "OutcomeUnknown": "raftfast.errors",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'raftfast' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
