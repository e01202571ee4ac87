"""What the tests share: real node processes (harness), the simulated
network (simnet), waiting for conditions (wait; cluster_waits for a running
cluster), what a node reports (node_info), adding a node (members), the
fault proxy and the chaos run with its linearizability checker.  Fixtures
used by more than one test file are in tests/conftest.py."""
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
