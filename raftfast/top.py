"""`python -m raftfast.top URL...`: a live view of a running cluster.

    python -m raftfast.top tcp://127.0.0.1:7001 tcp://127.0.0.1:7002 ...
        [--interval 1] [--once] [--requirepass-file FILE]
        [--tls-ca-cert-file FILE [--tls-cert-file FILE --tls-key-file FILE]]

One row per node, refreshed every --interval seconds: its id, role, term,
commit index, ops/s (its commit index's growth since the last refresh),
lag (entries of the leader's log it lacks) and memory used against
--maxmemory; a node without an answer shows why (down, needs auth, auth
refused).  When stdout is not a terminal, or with --once, it prints one
table, from two polls an interval apart (so ops/s has a value), and exits.

It takes the nodes' client URLs, the ones `raftfast.cluster` prints and
clients use, and asks each for INFO over RESP, with a client's password
and TLS flags: that works on every node, with or without --metrics, and
through the same door and credentials as any client.  Prometheus is for
history and alerts; this is for a look at a cluster now.

Exit codes: 0 (a terminal's Ctrl-C included), 1 when --once found no node
answering, 2 for bad usage.
"""
import argparse
import asyncio
import sys
import time

from raftfast import resp_client
from raftfast.address import AddressError
from raftfast.config import ArgumentParser

__all__ = ["main", "Sampler", "build_table"]

COLUMNS = ("node", "address", "role", "term", "commit", "ops/s", "lag", "memory")


def _int(info, key):
    try:
        return int(info.get(key, ""))
    except ValueError:
        return None


def _bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class Sampler:
    """Turns successive INFO polls of the same nodes into rows."""

    def __init__(self, addrs):
        self.addrs = addrs
        self.prev = {}  # address -> (time, commit index) of the last poll that answered

    def rows(self, infos, now):
        """infos: {address: INFO dict, or why there is none (str)}; a row
        (tuple of str) per address, in the order given."""
        by_id = {}
        for addr, info in infos.items():
            nid = _int(info, "raft_node_id") if isinstance(info, dict) else None
            if nid is not None:
                by_id[nid] = info
        lid = resp_client.leader_of(by_id)
        leader_last = _int(by_id[lid], "raft_last_log_index") if lid is not None else None
        rows = []
        for addr in self.addrs:
            info = infos.get(addr, "down")
            if not isinstance(info, dict):
                self.prev.pop(addr, None)
                rows.append(("?", addr, info, "", "", "", "", ""))
                continue
            commit = _int(info, "raft_commit_index") or 0
            rate = ""
            prev = self.prev.get(addr)
            if prev is not None and now > prev[0] and commit >= prev[1]:
                rate = f"{(commit - prev[1]) / (now - prev[0]):,.0f}"
            self.prev[addr] = (now, commit)
            last = _int(info, "raft_last_log_index")
            lag = "" if leader_last is None or last is None else str(max(0, leader_last - last))
            used, limit = _int(info, "used_memory"), _int(info, "maxmemory")
            memory = ""
            if used is not None:
                memory = _bytes(used) + (f" / {_bytes(limit)} ({100 * used / limit:.0f}%)"
                                         if limit else " / no limit")
            rows.append((info.get("raft_node_id", "?"), addr, info.get("raft_role", "?"),
                         info.get("raft_current_term", "?"), str(commit), rate, lag, memory))
        return rows


def build_table(rows):
    from rich.table import Table
    table = Table(title="raftfast", title_justify="left")
    for name in COLUMNS:
        table.add_column(name, justify="right" if name in ("term", "commit", "ops/s", "lag")
                         else "left", no_wrap=True)
    for row in rows:
        style = ("bold" if row[2] == "leader" else "red" if row[0] == "?" else None)
        table.add_row(*row, style=style)
    return table


async def ask(addr, timeout):
    """The node's INFO (all sections) as a dict, or why there is none."""
    try:
        reply = await resp_client.call(addr, "INFO", "all", timeout=timeout)
    except resp_client.AuthRefused:
        return "auth refused"
    except (OSError, asyncio.TimeoutError, ValueError):
        return "down"
    if isinstance(reply, resp_client.RespError):
        return "needs auth" if reply.kind == "NOAUTH" else "error"
    return resp_client.parse_info(reply) if isinstance(reply, bytes) else "error"


async def poll(addrs, timeout):
    """{address: INFO dict or why not} of every node, asked at once."""
    return dict(zip(addrs, await asyncio.gather(*(ask(a, timeout) for a in addrs))))


async def run(ns, addrs):
    from rich.console import Console
    console = Console()
    sampler = Sampler(addrs)
    once = ns.once or not console.is_terminal
    if once:
        if not console.is_terminal:
            console = Console(width=200)  # a file or a pipe: never wrap a row
        sampler.rows(await poll(addrs, ns.interval), time.monotonic())
        await asyncio.sleep(ns.interval)
        infos = await poll(addrs, ns.interval)
        console.print(build_table(sampler.rows(infos, time.monotonic())))
        return 0 if any(isinstance(i, dict) for i in infos.values()) else 1
    from rich.live import Live
    with Live(console=console, auto_refresh=False) as live:
        while True:
            started = time.monotonic()
            infos = await poll(addrs, ns.interval)
            live.update(build_table(sampler.rows(infos, time.monotonic())), refresh=True)
            await asyncio.sleep(max(0.0, ns.interval - (time.monotonic() - started)))


def positive_seconds(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not 0.1 <= v <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 0.1 and 3600 seconds, got {s}")
    return v


def build_parser():
    p = ArgumentParser(prog="python -m raftfast.top",
                       description="A live view of a running raftfast cluster: role, term, "
                                   "commit index, ops/s, lag and memory per node.")
    p.add_argument("urls", nargs="+", metavar="URL",
                   help="each node's client address (tcp://HOST:PORT, tls://HOST:PORT, "
                        "unix:///path or HOST:PORT)")
    p.add_argument("--interval", type=positive_seconds, default=1.0, metavar="SECONDS",
                   help="seconds between refreshes (default: 1)")
    p.add_argument("--once", action="store_true",
                   help="print one table and exit (what happens anyway when stdout is not a "
                        "terminal)")
    p.add_argument("--requirepass-file", metavar="FILE",
                   help="AUTH with the password in FILE (a cluster started with "
                        "--requirepass-file)")
    p.add_argument("--tls-ca-cert-file", metavar="FILE",
                   help="the CA that signs the nodes' certificates (tls:// addresses)")
    p.add_argument("--tls-cert-file", metavar="FILE",
                   help="a client certificate to present (nodes that require one)")
    p.add_argument("--tls-key-file", metavar="FILE", help="its private key")
    return p


def main(argv=None):
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        parsed = [resp_client.address(u) for u in ns.urls]
    except AddressError as e:
        parser.error(str(e))
    addrs = [str(a) for a in parsed]
    if (ns.tls_cert_file is None) != (ns.tls_key_file is None):
        parser.error("--tls-cert-file and --tls-key-file go together")
    if any(a.tls for a in parsed) and ns.tls_ca_cert_file is None:
        parser.error("tls:// addresses need --tls-ca-cert-file")
    try:
        if ns.tls_ca_cert_file is not None:
            from raftfast.tls import TLSSetupError, dial_context
            try:
                resp_client.use_tls(dial_context(ns.tls_ca_cert_file, ns.tls_cert_file,
                                                 ns.tls_key_file))
            except TLSSetupError as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
        if ns.requirepass_file is not None:
            from raftfast.server.auth import PasswordError, load_password
            try:
                resp_client.use_password(load_password(ns.requirepass_file))
            except PasswordError as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
        return asyncio.run(run(ns, addrs))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
