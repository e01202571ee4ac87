"""Which PySyncObj settings give it its best throughput at 1x1, 8x1 and 50x16
(3 nodes on loopback TCP, 64-byte SETs, the built-in load generator, 2 s per
point): appendEntriesUseBatch off and on, appendEntriesPeriod 1-50 ms.  The
sweep behind raftfast/bench/pysyncobj_tuning.py's two profiles.

    pip install -e ".[bench]"
    python bench/pysyncobj_settings.py
"""
import asyncio

import uvloop

from raftfast.bench.compare import PySyncObjCluster
from raftfast.bench.measure import Target, measure
from raftfast.bench import pysyncobj_tuning as t


def argv(batch, period):
    p = dict(t.PROFILES["batched"], appendEntriesUseBatch=batch, appendEntriesPeriod=period,
             raftMinTimeout=max(0.4, 4 * period), raftMaxTimeout=max(1.4, 12 * period))
    out = []
    for name, value in p.items():
        out += [t.FLAGS[name], ("yes" if value else "no") if isinstance(value, bool) else repr(value)]
    return out


async def main():
    loads = [(1, 1), (8, 1), (50, 16)]
    for batch in (False, True):
        for period in (0.001, 0.005, 0.01, 0.05):
            async with PySyncObjCluster(3, 7500, settings=argv(batch, period)) as c:
                res = []
                for clients, pipeline in loads:
                    r, _ = await measure(Target.of_cluster(c), 2.0, clients, pipeline, 64)
                    lat = r.latency_ms()
                    res.append(f"{clients}x{pipeline}: {r.throughput:8.0f}/s p50 {lat['p50']:.2f} ms")
                print(f"batch={batch!s:5} period={period:<5}", " | ".join(res), flush=True)

if __name__ == "__main__":
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
