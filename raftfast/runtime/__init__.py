"""One node's event-loop side: the Ready loop and ticks, group commit,
client waiters, snapshots, storage and the peer transport.  It carries out
what the core decides; it never parses client bytes or words replies."""
