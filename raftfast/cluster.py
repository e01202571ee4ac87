"""`python -m raftfast.cluster`: see raftfast.launcher."""
import sys

from raftfast.launcher.cli import main

if __name__ == "__main__":
    sys.exit(main())
