"""The voters' memory reports, as the leader holds them: the one rule both
the server's MemoryGuard and a library node's MemoryLimit apply."""

__all__ = ["OOM_ERROR", "a_voter_is_over"]

# Redis's wording for a write refused at the memory limit.
OOM_ERROR = "OOM command not allowed when used memory > 'maxmemory'."


def a_voter_is_over(driver):
    """Is a voter that reported within one election timeout over its limit?
    Only a leader holds reports; the times are the driver's clock's."""
    if not driver.is_leader:
        return False
    recent = driver.clock() - driver.election_timeout_s
    voters = driver.core.voters
    return any(limit and used > limit and at >= recent and peer in voters
               for peer, (used, limit, at) in driver.voter_memory.items())
