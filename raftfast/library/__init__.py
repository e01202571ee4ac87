"""raftfast as a Python library: the node runtime around a state machine
of the program's own (docs/library.md).

    state_machine  StateMachine (what a program implements), the seam to
                   the runtime's blocks
    node           Node: the runtime on the caller's event loop
    threaded       ThreadedNode: the same on a thread of its own
    replicated     Replicated objects, ReplDict, ReplCounter, ReplLock
"""
