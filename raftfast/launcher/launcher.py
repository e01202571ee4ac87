"""The running `python -m raftfast.cluster`: start every planned node,
wait for a leader, print the table, then serve (a status line on a
terminal, `add` and `remove` through the control socket) or run the
built-in load, until told to stop; then stop every node in order.

A node that exits while the cluster serves is reported with its last
lines, and the rest keep serving.  Each node's output goes to
DIR/node<i>.log.
"""
import asyncio
import os
import signal
import sys
import time

from raftfast import resp_client
from raftfast.address import parse_address
from raftfast.bench import loadgen
from raftfast.launcher.control import ControlError, ControlServer
from raftfast.launcher.layout import Layout, log_path, node_flags, tls_files
from raftfast.launcher.membership import READY_WAIT, Membership
from raftfast.launcher.roll import Roller, RollFailed
from raftfast.launcher.status import StatusLine, format_table, leader_infos, poll_all
from raftfast.launcher.supervisor import LEADER_WAIT, STOPPED, TIMEOUT, spawn, stop_all, until
from raftfast.server.auth import PasswordError, load_password
from raftfast.tls import dial_context

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Launcher:
    def __init__(self, ns, specs, data_dir, layout=None):
        self.ns = ns
        self.password_file = getattr(ns, "requirepass_file", None)
        self.specs = specs
        self.data_dir = data_dir
        self.layout = layout or Layout.from_ns(ns)
        self.nodes = []
        self.stop = asyncio.Event()
        self.tty = sys.stdout.isatty()
        self.status_shown = False
        self.serving = False      # control requests are taken once the cluster is up
        self.watchers = []
        self.control = ControlServer(data_dir, self._on_control, self.say)
        self.membership = Membership(
            self.layout, data_dir, node_flags(ns, self.layout.founders), nodes=lambda: self.nodes,
            start_node=self._start_node, stop_node=self._stop_node, say=self.say,
            stop=self.stop)
        self.roller = Roller(nodes=lambda: self.nodes, restart=self._restart_node,
                             say=self.say, stop=self.stop)

    def say(self, text, err=False):
        if self.status_shown:  # end the status line first
            sys.stdout.write("\r\x1b[K")
            self.status_shown = False
        print(text, file=sys.stderr if err else sys.stdout, flush=True)

    async def run(self):
        loop = asyncio.get_running_loop()
        if self.password_file:
            # The launcher asks every node as an authenticated client.
            try:
                resp_client.use_password(load_password(self.password_file))
            except PasswordError as e:
                self.say(f"error: {e}", err=True)
                return 1
        if self.layout.tls:
            # The launcher asks every node over TLS, as a client the CA signed.
            resp_client.use_tls(dial_context(tls_files(self.data_dir, "ca")[0],
                                             *tls_files(self.data_dir, "client")))
        try:
            await self.control.open()
        except ControlError as e:
            self.say(f"error: {e}", err=True)
            return 1
        self.layout.save(self.data_dir)
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self.stop.set)
        try:
            return await self._run()
        finally:
            self.control.close()
            await stop_all(self.nodes)
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)

    async def _run(self):
        deadline = time.monotonic() + LEADER_WAIT
        for spec in self.specs:
            self.nodes.append(await spawn(spec, log_path(self.data_dir, spec.id)))
        started = await until(self.nodes, self._all_ready, deadline, self.stop)
        if started is not True:
            return self._startup_failed(started, "to be ready")
        infos = await until(self.nodes, lambda: leader_infos(self.nodes), deadline, self.stop)
        if not isinstance(infos, dict):
            return self._startup_failed(infos, "to elect a leader")
        self.say(format_table(self.nodes, infos))
        if self.layout.tls:
            ca = tls_files(self.data_dir, "ca")[0]
            cert, key = tls_files(self.data_dir, "client")
            leader = resp_client.leader_of(infos)
            port = next(n.spec.client for n in self.nodes if n.id == leader).rsplit(":", 1)[1]
            self.say(f"connect: redis-cli --tls --cacert {ca} --cert {cert} --key {key} "
                     f"-p {port}" + (" --askpass" if self.password_file else ""))
        elif self.password_file:
            self.say("connect: redis-cli --askpass -p PORT (the password is in "
                     f"{os.path.abspath(self.password_file)})")
        self.watchers = [asyncio.create_task(self._watch(n)) for n in self.nodes]
        try:
            if self.ns.bench:
                return await self._bench(infos)
            self.serving = True
            await self._serve()
            return 0
        finally:
            self.serving = False
            for w in self.watchers:
                w.cancel()

    async def _all_ready(self):
        return True if all(n.ready.done() for n in self.nodes) else None

    def _startup_failed(self, what, waiting_for):
        if what == STOPPED:
            return 0
        if what == TIMEOUT:
            self.say(f"error: gave up after {LEADER_WAIT:g} s waiting for the nodes "
                     f"{waiting_for}", err=True)
            shown = self.nodes
        else:
            for n in what:
                self.say(f"error: node {n.id} (pid {n.proc.pid}) exited with code "
                         f"{n.proc.returncode} while waiting for the nodes {waiting_for}",
                         err=True)
            shown = what
        for n in shown:
            self.say(f"last lines of node {n.id} (full log: "
                     f"{log_path(self.data_dir, n.id)}):", err=True)
            self.say(n.last_lines(), err=True)
        return 1

    async def _watch(self, node):
        # Shielded: cancelling this watcher must not cancel the node's own wait.
        await asyncio.shield(node.exited)
        if not self.stop.is_set() and not node.stopping:
            self.say(f"node {node.id} (pid {node.proc.pid}) exited unexpectedly with code "
                     f"{node.proc.returncode}; serving with the rest. Its last lines:",
                     err=True)
            self.say(node.last_lines(), err=True)

    async def _start_node(self, spec):
        """A node added while serving: started, tracked and watched."""
        node = await spawn(spec, log_path(self.data_dir, spec.id))
        self.nodes.append(node)
        self.watchers.append(asyncio.create_task(self._watch(node)))
        return node

    async def _stop_node(self, node):
        """A node stopped on purpose (removed, or added but never a member)."""
        node.stopping = True
        await stop_all([node])
        self.nodes.remove(node)

    async def _restart_node(self, node):
        """Stop a node on purpose and start its command line again (a roll);
        the new Node once it is ready.  RollFailed as soon as it exits
        instead (a node that refuses to start says why at once), or when
        it is not ready in READY_WAIT."""
        await self._stop_node(node)
        new = await self._start_node(node.spec)
        # asyncio.wait cancels neither: the launcher's watcher awaits `exited` too.
        await asyncio.wait((new.ready, new.exited), timeout=READY_WAIT,
                           return_when=asyncio.FIRST_COMPLETED)
        if new.ready.done():
            return new
        if new.alive:
            why = f"is not ready after {READY_WAIT:g} s"
        else:
            await asyncio.wait(new.readers, timeout=2.0)  # its last words
            why = f"exited with code {new.proc.returncode} as it started"
        raise RollFailed(f"node {node.id} did not come back: it {why}\nits last lines (full "
                         f"log: {log_path(self.data_dir, node.id)}):\n{new.last_lines()}")

    async def _on_control(self, op, req, progress):
        if not self.serving:
            return {"error": "the cluster is not serving (still starting, or stopping); "
                             "try again"}
        if op == "roll":
            async with self.membership.changing:   # no add or remove meanwhile
                try:
                    return {"ok": await self.roller.roll(progress)}
                except RollFailed as e:
                    return {"error": str(e)}
        return await self.membership.answer(op, req)

    async def _serve(self):
        self.say("serving; Ctrl-C stops every node")
        status = StatusLine()
        while not self.stop.is_set():
            if self.tty:
                infos = await poll_all(self.nodes)
                leader = resp_client.leader_of(infos)
                line = status.render(leader, infos.get(leader), time.monotonic())
                sys.stdout.write("\r\x1b[K" + line)
                sys.stdout.flush()
                self.status_shown = True
            try:
                await asyncio.wait_for(self.stop.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
        self.say("stopping")

    async def _bench(self, infos):
        leader = resp_client.leader_of(infos)
        url = parse_address(next(n.spec.client for n in self.nodes if n.id == leader))
        ns = self.ns
        self.say(f"bench: {ns.bench:g} s against node {leader} ({url})")
        task = asyncio.create_task(loadgen.run_async(
            f"{url.host}:{url.port}", ns.bench, ns.bench_clients, ns.bench_pipeline,
            ns.bench_value_size))
        stopper = asyncio.create_task(self.stop.wait())
        await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self.say("bench interrupted")
            return 0
        try:
            result = task.result()
        except (OSError, asyncio.TimeoutError, ValueError) as e:
            self.say(f"error: bench failed: {e}", err=True)
            return 1
        self.say(result.format())
        return 0
