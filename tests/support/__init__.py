"""What the tests share: real node processes (harness), the simulated
network (simnet), waiting for conditions (wait), the fault proxy and
the chaos run with its linearizability checker."""
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
