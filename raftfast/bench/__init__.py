"""`python -m raftfast.bench`: the load generator, the server-side figures,
comparisons with other systems, and their tables and plots."""
