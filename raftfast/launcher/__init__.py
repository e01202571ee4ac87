"""`python -m raftfast.cluster`: a local cluster of node processes.

    cli          the command: its parsers, `main`, and `add`/`remove`
    layout       which nodes exist, their addresses and command lines (cluster.json)
    supervisor   node processes: start (sync or asyncio), ready line, logs, stop
    launcher     the running command: start, wait for a leader, serve, stop
    membership   growing and shrinking a running cluster (RAFT.NODE ADD/REMOVE)
    control      the control socket `add` and `remove` reach the launcher through
    status       the nodes' INFO, the table and the status line
    local_cluster  LocalCluster, the same without the command, for benchmarks and tests
"""
