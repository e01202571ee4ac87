"""What a node reports beyond INFO raft's fields as strings: its counters
(INFO stats) and its member lists as sets of ids."""


def info_stats(node):
    """INFO stats of a harness node as a dict of strings."""
    text = node.raw_bulk("INFO", "stats")
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def counter(node, name):
    """One INFO stats counter of `node`, as an int; a counter the node does
    not report is a KeyError, never a silent 0."""
    return int(info_stats(node)[name])


def member_ids(field):
    """A `raft_voters` or `raft_learners` value ("1,2,3", or "" for none) as a set."""
    return {int(x) for x in field.split(",") if x}
