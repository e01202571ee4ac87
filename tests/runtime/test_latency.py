"""The fixed-bucket histograms behind --metrics, and how a scrape shows
them (Prometheus's cumulative `le` buckets)."""
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from raftfast.runtime.latency import COMMIT_BUCKETS, FSYNC_BUCKETS, LatencyHistogram
from raftfast.metrics.endpoint import MetricsEndpoint


def test_an_observation_on_a_bound_counts_in_that_bucket():
    h = LatencyHistogram((0.001, 0.01, 0.1))
    for v in (0.0005, 0.001, 0.002, 0.01, 0.05, 0.1, 3.0):
        h.observe(v)
    assert h.counts == [2, 2, 2, 1]
    assert abs(h.total - 3.1635) < 1e-9


def test_bounds_increase():
    for bounds in (FSYNC_BUCKETS, COMMIT_BUCKETS):
        assert list(bounds) == sorted(set(bounds))


class _OneHistogram:
    def __init__(self, hist):
        self.hist = hist

    def collect(self):
        from raftfast.metrics.collectors import histogram_family
        yield histogram_family("x_seconds", "test", self.hist)


def test_a_scrape_shows_cumulative_buckets_count_and_sum():
    h = LatencyHistogram((0.001, 0.01))
    for v in (0.0001, 0.005, 0.005, 7.0):
        h.observe(v)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_OneHistogram(h))
    text = generate_latest(registry).decode()
    (fam,) = text_string_to_metric_families(text)
    assert fam.type == "histogram"
    got = {(s.name, s.labels.get("le")): s.value for s in fam.samples}
    assert got[("x_seconds_bucket", "0.001")] == 1
    assert got[("x_seconds_bucket", "0.01")] == 3
    assert got[("x_seconds_bucket", "+Inf")] == 4
    assert got[("x_seconds_count", None)] == 4
    assert abs(got[("x_seconds_sum", None)] - 7.0101) < 1e-9


def test_the_endpoint_answers_only_get_and_head_of_metrics():
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_OneHistogram(LatencyHistogram((1.0,))))
    ep = MetricsEndpoint(None, registry)
    status, body, length = ep.response(b"GET /metrics HTTP/1.1")
    assert status == 200 and b"x_seconds_count 0.0" in body and length == len(body)
    assert ep.response(b"GET /metrics?x=1 HTTP/1.0")[0] == 200
    status, body, length = ep.response(b"HEAD /metrics HTTP/1.1")
    assert status == 200 and body == b"" and length > 0
    assert ep.response(b"GET / HTTP/1.1")[0] == 404
    assert ep.response(b"PUT /metrics HTTP/1.1")[0] == 405
    for bad in (b"", b"GET", b"GET /metrics", b"GET /metrics SPDY/3", b"\xff\xfe \x00 x"):
        assert ep.response(bad)[0] == 400
    assert ep.scrapes == 3
