"""Benchmark results as rows, and the rows as a table, CSV, JSON and plots.

A row is a flat dict with the keys of COLUMNS (None where a figure does not
apply or was not reported), so every writer takes the same list.  The
table needs rich and the plots matplotlib (the `bench` extra); both are
imported only when used.
"""
import csv
import json

from raftfast.bench.stats import fmt

__all__ = ["COLUMNS", "make_row", "config_label", "load_label", "make_table", "write_csv",
           "write_json", "plot_throughput_vs_batch", "plot_latency_vs_throughput",
           "plot_ratio_to_redis", "comparison_lines", "size_label", "FIGURES"]

SETTINGS = ("nodes", "transport", "fsync", "max_batch_entries", "batch_linger_us",
            "max_inflight")
COLUMNS = ("system",) + SETTINGS + (
    "loadgen", "rounds", "clients", "pipeline", "rate", "value_size", "seconds", "ops",
    "throughput", "mb_per_s", "avg_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "p999_ms",
    "max_ms", "entries_per_append", "entries_per_fsync", "cpu_s_per_m_entries",
    "cpu_us_per_op", "sys_us_per_op", "server_cpu_s", "entries", "client_cpu_frac",
    "ratio_to_redis",
    "p50_ratio_to_redis", "p99_ratio_to_redis", "cpu_ratio_to_redis", "over_floor_ms",
    "errors", "note")
# Measured figures: a row of several rounds holds the median of each.
FIGURES = ("seconds", "ops", "throughput", "mb_per_s", "avg_ms", "p50_ms", "p90_ms", "p95_ms",
           "p99_ms", "p999_ms", "max_ms", "entries_per_append", "entries_per_fsync",
           "cpu_s_per_m_entries", "cpu_us_per_op", "sys_us_per_op", "server_cpu_s", "entries",
           "client_cpu_frac")


def make_row(system, settings, result, figs, note="", loadgen="python"):
    """One row from a cluster's settings, a measured result (loadgen.Result
    or redis_benchmark.RedisBenchmarkResult) and bench_stats figures.  CPU
    per op is the servers' CPU (every node's) over the SETs answered, and
    sys_us_per_op the kernel's part of it."""
    lat = result.latency_ms()
    cpu = figs.get("server_cpu_s")
    sys_s = figs.get("server_sys_s")
    row = dict.fromkeys(COLUMNS)
    row.update({k: settings.get(k) for k in SETTINGS})
    row.update(
        system=system, loadgen=loadgen, rounds=1, clients=result.clients,
        pipeline=None if result.rate is not None else result.pipeline,
        rate=result.rate, value_size=result.value_size, seconds=round(result.seconds, 3),
        ops=result.ops, throughput=round(result.throughput, 1),
        mb_per_s=round(result.throughput * result.value_size / 1e6, 3),
        avg_ms=lat.get("avg"), p50_ms=lat["p50"], p90_ms=lat["p90"], p95_ms=lat.get("p95"),
        p99_ms=lat["p99"], p999_ms=lat["p99.9"], max_ms=lat["max"],
        cpu_us_per_op=round(cpu * 1e6 / result.ops, 2) if cpu is not None and result.ops
        else None,
        sys_us_per_op=round(sys_s * 1e6 / result.ops, 2) if sys_s is not None and result.ops
        else None,
        client_cpu_frac=round(result.client_cpu / result.seconds, 3) if result.seconds else None,
        errors=";".join(f"{k}={v}" for k, v in sorted(result.errors.items())),
        note=note)
    for k in ("entries_per_append", "entries_per_fsync", "cpu_s_per_m_entries",
              "server_cpu_s", "entries"):
        row[k] = figs.get(k)
    return row


def config_label(row):
    """The cluster configuration of a row, short: one curve per label."""
    if row["system"] == "redis":
        return "1 process, appendfsync always"
    if row["system"] != "raftfast":
        return f"{row['nodes']}n {row['transport']} no fsync"
    return (f"{row['nodes']}n {row['transport']} {row['fsync']} b{row['max_batch_entries']} "
            f"l{row['batch_linger_us']} i{row['max_inflight']}")


def load_label(row):
    if row["rate"]:
        return f"{row['rate']:,.0f}/s x{row['clients']}"
    return f"{row['clients']}x{row['pipeline']}"


def size_label(nbytes):
    """64 B, 4 KiB, 64 KiB, 1.5 KiB."""
    if nbytes is None:
        return ""
    if nbytes < 1024:
        return f"{nbytes} B"
    kib = nbytes / 1024
    return f"{kib:g} KiB" if nbytes < 1 << 20 else f"{kib / 1024:g} MiB"


def _remarks(r):
    parts = [r["errors"]] if r.get("errors") else []
    if r.get("over_floor_ms") is not None:
        x = r["over_floor_ms"]
        parts.append(f"p50 = floor {'-' if x < 0 else '+'} {abs(x):.2f} ms")
    if r.get("note") and r["system"] != "redis":  # the label says what Redis runs with
        parts.append(r["note"])
    return "; ".join(parts)


TABLE_COLUMNS = (("system", "left"), ("configuration", "left"), ("load", "right"),
                 ("value", "right"), ("ops/s", "right"), ("MB/s", "right"),
                 ("p50 ms", "right"), ("p99 ms", "right"), ("CPU us/op", "right"),
                 ("kernel us/op", "right"),
                 ("ent/fsync", "right"), ("x redis", "right"), ("p50 x", "right"),
                 ("p99 x", "right"), ("CPU x", "right"), ("errors, notes", "left"))


def make_table(rows, title=None):
    """A rich Table of the rows.  The "x" columns are a raftfast row's ratios
    to the Redis row at the same load and value size: throughput, p50, p99
    and server CPU per op."""
    from rich.table import Table
    t = Table(title=title, show_lines=False)
    for name, justify in TABLE_COLUMNS:
        t.add_column(name, justify=justify)
    blank = [""] * (len(TABLE_COLUMNS) - 5)
    for r in rows:
        if r.get("note") and r["throughput"] is None:
            t.add_row(r["system"], config_label(r), load_label(r) if r.get("clients") else "",
                      size_label(r.get("value_size")), *blank, r["note"])
            continue
        t.add_row(r["system"], config_label(r), load_label(r), size_label(r.get("value_size")),
                  fmt(r["throughput"], ",.0f"), fmt(r.get("mb_per_s"), ",.2f"),
                  fmt(r["p50_ms"], ".3f"), fmt(r["p99_ms"], ".3f"),
                  fmt(r.get("cpu_us_per_op"), ",.1f"), fmt(r.get("sys_us_per_op"), ",.1f"),
                  fmt(r["entries_per_fsync"]),
                  fmt(r.get("ratio_to_redis"), ".2f"), fmt(r.get("p50_ratio_to_redis"), ".2f"),
                  fmt(r.get("p99_ratio_to_redis"), ".2f"),
                  fmt(r.get("cpu_ratio_to_redis"), ".2f"), _remarks(r))
    return t


def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r.get(k) is None else r[k] for k in COLUMNS})
    return path


def write_json(rows, meta, path):
    with open(path, "w") as f:
        json.dump({"meta": meta, "columns": list(COLUMNS), "rows": rows}, f, indent=2)
        f.write("\n")
    return path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _measured(rows):
    return [r for r in rows if r.get("throughput") is not None]


def plot_throughput_vs_batch(rows, path):
    """Throughput against max batch entries, one line per other setting; at
    each point the load that gave the most throughput."""
    plt = _pyplot()
    lines = {}
    for r in _measured(rows):
        if r["system"] != "raftfast":
            continue
        key = (r["nodes"], r["transport"], r["fsync"], r["batch_linger_us"], r["max_inflight"])
        best = lines.setdefault(key, {})
        b = r["max_batch_entries"]
        if b not in best or r["throughput"] > best[b]:
            best[b] = r["throughput"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for (n, tr, fs, linger, inflight), pts in sorted(lines.items()):
        xs = sorted(pts)
        ax.plot(xs, [pts[x] for x in xs], marker="o",
                label=f"{n}n {tr} {fs} linger {linger}us inflight {inflight}")
    ax.set_xscale("log", base=2)
    batches = sorted({b for pts in lines.values() for b in pts})
    if batches:
        ax.set_xticks(batches, [str(b) for b in batches])
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:,.0f}")
    ax.set_xlabel("max batch entries")
    ax.set_ylabel("throughput (SET/s)")
    ax.set_title("raftfast throughput against batch size")
    ax.grid(True, which="both", alpha=0.3)
    if lines:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_latency_vs_throughput(rows, path):
    """p99 latency against throughput, one curve per configuration, traced
    by the loads it ran at."""
    plt = _pyplot()
    curves = {}
    for r in _measured(rows):
        curves.setdefault((r["system"], config_label(r)), []).append(r)
    fig, ax = plt.subplots(figsize=(8, 5))
    for (system, label), rs in sorted(curves.items()):
        if len(rs) < 2:
            continue
        rs.sort(key=lambda r: r["throughput"])
        ax.plot([r["throughput"] for r in rs], [max(r["p99_ms"], 1e-3) for r in rs],
                marker="o", label=label if system == "raftfast" else f"{system} {label}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("throughput (SET/s)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title("p99 latency against throughput")
    ax.grid(True, which="both", alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_ratio_to_redis(rows, path):
    """Per load (x), every raftfast row's throughput over Redis's at the same
    load and value size: one series of points per node count, fsync mode and
    value size, with a line at 1.0 (as fast as Redis)."""
    plt = _pyplot()
    series = {}
    for r in _measured(rows):
        if r["system"] == "raftfast" and r.get("ratio_to_redis") is not None:
            key = (r["nodes"], r["fsync"], r["value_size"])
            series.setdefault(key, []).append((load_label(r), r["ratio_to_redis"]))
    loads = []
    for r in sorted(_measured(rows), key=lambda r: (-(r["clients"] * (r["pipeline"] or 1)),
                                                     -r["clients"])):
        if r["system"] == "raftfast" and r.get("ratio_to_redis") is not None \
                and load_label(r) not in loads:
            loads.append(load_label(r))
    fig, ax = plt.subplots(figsize=(8, 5))
    width = 0.8 / max(1, len(series))
    for j, ((nodes, fsync, size), pts) in enumerate(sorted(series.items())):
        offset = (j - (len(series) - 1) / 2) * width
        ax.plot([loads.index(x) + offset for x, _ in pts], [y for _, y in pts],
                linestyle="none", marker="o",
                label=f"{nodes} nodes, fsync {fsync}, {size_label(size)}")
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--", label="Redis (1.0)")
    ax.set_xticks(range(len(loads)), [f"-c {x.replace('x', ' -P ')}" if "/s" not in x else x
                                      for x in loads])
    ax.set_xlim(-0.6, max(len(loads), 1) - 0.4)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("load (clients x pipeline)")
    ax.set_ylabel("throughput, raftfast / Redis")
    ax.set_title("raftfast throughput relative to Redis (appendfsync always)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def comparison_lines(rows):
    """raftfast against the other systems at the same load and node count:
    fsync never (what the others do) and fsync always beside it, both with
    the default batching and peers over unix sockets."""
    from raftfast.config import Config
    defaults = {k: Config.__dataclass_fields__[k].default
                for k in ("max_batch_entries", "batch_linger_us", "max_inflight")}
    out = []
    by_key = {}
    for r in _measured(rows):
        if (r["system"] == "raftfast" and r["transport"] == "unix"
                and all(r[k] == v for k, v in defaults.items())):
            k = (r["nodes"], r["fsync"], r["clients"], r["pipeline"], r["rate"])
            by_key[k] = max(by_key.get(k, 0), r["throughput"])
    for r in _measured(rows):
        if r["system"] == "raftfast" or not r["throughput"]:
            continue
        k = (r["nodes"], r["clients"], r["pipeline"], r["rate"])
        never = by_key.get((k[0], "never") + k[1:])
        always = by_key.get((k[0], "always") + k[1:])
        if never is None and always is None:
            continue
        parts = [f"fsync never {never / r['throughput']:.1f}x" if never else None,
                 f"fsync always {always / r['throughput']:.1f}x" if always else None]
        out.append(f"raftfast / {r['system']}, {r['nodes']} nodes at {load_label(r)}: "
                   + ", ".join(p for p in parts if p))
    return out
