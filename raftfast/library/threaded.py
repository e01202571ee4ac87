"""raftfast.ThreadedNode: the asyncio Node for programs that are not asyncio.

The node runs on an event loop of its own, in a thread of its own (uvloop);
every method here hands its call to that loop and blocks until it is done.
Replicated methods of a Replicated given to a ThreadedNode block the same
way and return their result.
"""
import asyncio
import threading

import uvloop

from raftfast.errors import RaftError
from raftfast.library.node import Node

__all__ = ["ThreadedNode"]


class ThreadedNode:
    """The same arguments as raftfast.Node; start() and stop() block, and
    so do propose(), read() and the membership calls."""

    def __init__(self, state_machine, **kwargs):
        self.node = Node(state_machine, **kwargs)
        if hasattr(state_machine, "_bind_node"):
            state_machine._raft_node = self  # replicated calls block on this thread
        self._loop = None
        self._thread = None

    def start(self, timeout=30.0):
        if self._thread is not None:
            raise RaftError("node already started")
        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name=f"raftfast-node-{self.node.id}", daemon=True)
        self._thread.start()
        try:
            self._run(self.node.start(), timeout)
        except BaseException:
            self._end_loop()
            raise

    def stop(self, timeout=30.0):
        if self._thread is None:
            return
        try:
            self._run(self.node.stop(), timeout)
        finally:
            self._end_loop()

    def _end_loop(self):
        loop, thread = self._loop, self._thread
        self._thread = None
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def _run(self, coro, timeout):
        if self._thread is None:
            coro.close()
            raise RaftError("node not started")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a blocking ThreadedNode call from the node's own thread "
                               "(inside apply or a read function) would wait forever")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def propose(self, command, timeout=5.0):
        """apply()'s result for `command` once committed and applied here."""
        return self._run(self._await(self.node.propose, command, timeout), timeout + 1)

    def read(self, fn, timeout=5.0):
        """fn(state_machine) after a linearizable barrier (fn runs on the
        node's thread, between two applies)."""
        return self._run(self._await(self.node.read, fn, timeout), timeout + 1)

    @staticmethod
    async def _await(call, arg, timeout):
        return await call(arg, timeout)

    def add_member(self, node_id, url, timeout=10.0):
        self._run(self.node.add_member(node_id, url, timeout), timeout + 1)

    def remove_member(self, node_id, timeout=10.0):
        self._run(self.node.remove_member(node_id, timeout), timeout + 1)

    def transfer_leadership(self, node_id, timeout=10.0):
        self._run(self.node.transfer_leadership(node_id, timeout), timeout + 1)

    @property
    def is_leader(self):
        return self.node.is_leader

    @property
    def leader_id(self):
        return self.node.leader_id

    @property
    def term(self):
        return self.node.term

    @property
    def id(self):
        return self.node.id

    def status(self):
        return self._run(self._status(), 5.0)

    async def _status(self):
        return self.node.status()
