"""`python -m raftfast.cluster`: a local cluster of node processes, its
layout on disk, their supervisor and the control socket for growing and
shrinking it."""
