import sys

print("usage: python -m raftfast.node ... | python -m raftfast.cluster ... | python -m raftfast.bench ...",
      file=sys.stderr)
sys.exit(2)
