"""Majority arithmetic over a set of voters."""

VOTE_PENDING = 0
VOTE_WON = 1
VOTE_LOST = 2


def committed_index(matches):
    """The highest index that a majority of voters have durably stored,
    given each voter's (any order); 0 without voters."""
    n = len(matches)
    if not n:
        return 0
    # The (n // 2)-th highest: a majority have at least it.
    return sorted(matches)[n - 1 - n // 2]


def vote_result(voters, votes):
    """votes maps id -> True (granted) / False (refused)."""
    granted = refused = 0
    for v in voters:
        got = votes.get(v)
        if got is True:
            granted += 1
        elif got is False:
            refused += 1
    need = len(voters) // 2 + 1
    if granted >= need:
        return VOTE_WON
    if len(voters) - refused < need:
        return VOTE_LOST
    return VOTE_PENDING
