"""--metrics: a node's counters in the Prometheus text format.

collectors: what a scrape reads (RaftCollector for every node,
ServerCollector for the RESP server's own); endpoint: the HTTP endpoint on
the node's event loop.  docs/operations.md, "Metrics", lists the names.
"""
from raftfast.metrics.collectors import library_registry, server_registry
from raftfast.metrics.endpoint import MetricsEndpoint, serve_metrics

__all__ = ["serve_metrics", "MetricsEndpoint", "server_registry", "library_registry"]
