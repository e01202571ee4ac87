import sys

from raftfast.bench.cli import main

sys.exit(main())
