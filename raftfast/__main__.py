import sys

from raftfast import __version__

if sys.argv[1:] == ["--version"]:
    print(f"raftfast {__version__}")
    sys.exit(0)
print("usage: python -m raftfast.node ... | python -m raftfast.cluster ... | python -m raftfast.bench ...",
      file=sys.stderr)
sys.exit(2)
