"""Replicated objects: a class whose marked methods run on every node.

    class Inventory(raftfast.Replicated):
        def __init__(self):
            super().__init__()
            self.items = {}

        @raftfast.replicated
        def put(self, name, count):
            self.items[name] = count
            return len(self.items)

Calling `inv.put("apple", 3)` proposes the call (its name and arguments,
pickled) through the node the object was given to; once committed, every
replica runs the method in log order and the caller gets its return value
(an awaitable on an asyncio Node, the value itself on a ThreadedNode).  A
method that raises raises to its caller, and every replica saw the same
exception at the same index.  Methods must be deterministic: the same
state and arguments give the same result everywhere (for time, use
self.raft_ctx.time, the cluster time, never the local clock).

The state (the instance's attributes) is snapshotted and restored with
pickle, taken as one copy when the snapshot starts.  Arguments and
results go through pickle too: it is fast, in C, and takes any Python
value; commands only ever come from the cluster's own members, which
authenticate each other, never from outside.
"""
import functools
import pickle

from raftfast.library.state_machine import ApplyContext, Raised, StateMachine

__all__ = ["Replicated", "replicated", "ReplDict", "ReplCounter", "ReplLock"]

_PROTOCOL = pickle.HIGHEST_PROTOCOL
# Attributes of the object that are the machinery, never its state.
_MACHINERY = ("_raft_node", "_raft_methods", "raft_ctx")


def replicated(method):
    """Mark a method of a Replicated subclass as a replicated command."""
    name = method.__name__

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        node = self._raft_node
        if node is None:
            raise RuntimeError(f"{type(self).__name__}.{name}: the object is not given to a "
                               "raftfast.Node yet")
        command = pickle.dumps((name, args, kwargs) if kwargs else (name, args), _PROTOCOL)
        return node.propose(command)

    call._raft_method = method
    return call


class Replicated(StateMachine):
    """Base of replicated objects; subclasses mark commands with
    @raftfast.replicated and call super().__init__()."""

    _raft_node = None
    raft_ctx = None

    def __init__(self):
        self._raft_node = None
        self.raft_ctx = None  # during a replicated method: .index of its entry, .time

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        methods = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                method = getattr(value, "_raft_method", None)
                if method is not None:
                    methods[attr] = method
        cls._raft_methods = methods

    def _bind_node(self, node):
        if self.__dict__.get("_raft_node") is not None:
            raise RuntimeError(f"this {type(self).__name__} already belongs to a node")
        self._raft_node = node

    def apply(self, commands, ctx):
        methods = self._raft_methods
        results = []
        append = results.append
        loads = pickle.loads
        # One context for the batch, its index moved along: a method sees
        # the index of its own entry.
        here = self.raft_ctx = ApplyContext(ctx.index, ctx.time)
        for command in commands:
            call = loads(command)
            method = methods.get(call[0])
            try:
                if method is None:
                    # Written by a node with another version of the class:
                    # refusing here would stop every replica at this index.
                    raise AttributeError(f"{type(self).__name__} has no replicated method "
                                         f"{call[0]!r}")
                append(method(self, *call[1]) if len(call) == 2
                       else method(self, *call[1], **call[2]))
            except Exception as e:
                append(Raised(e))
            here.index += 1
        self.raft_ctx = None
        return results

    def _state(self):
        return {k: v for k, v in self.__dict__.items() if k not in _MACHINERY}

    def snapshot(self):
        return pickle.dumps(self._state(), _PROTOCOL)

    def restore(self, chunks):
        state = pickle.loads(b"".join(chunks))
        for k in list(self._state()):
            del self.__dict__[k]
        self.__dict__.update(state)


class ReplDict(Replicated):
    """A replicated dict.  Writes are commands; reads (d[k], get, len, in,
    items) are local and may be stale: wrap them in node.read() for a
    linearizable one."""

    def __init__(self, initial=None):
        super().__init__()
        self.data = dict(initial or {})

    @replicated
    def set(self, key, value):
        self.data[key] = value

    @replicated
    def pop(self, key, *default):
        return self.data.pop(key, *default)

    @replicated
    def update(self, other):
        self.data.update(other)

    @replicated
    def setdefault(self, key, value):
        return self.data.setdefault(key, value)

    @replicated
    def clear(self):
        self.data.clear()

    def get(self, key, default=None):
        return self.data.get(key, default)

    def __getitem__(self, key):
        return self.data[key]

    def __contains__(self, key):
        return key in self.data

    def __len__(self):
        return len(self.data)

    def items(self):
        return self.data.items()


class ReplCounter(Replicated):
    """A replicated integer.  add() returns the new value; `value` is the
    local (maybe stale) one."""

    def __init__(self, value=0):
        super().__init__()
        self.value = value

    @replicated
    def add(self, n=1):
        self.value += n
        return self.value

    @replicated
    def set(self, value):
        old, self.value = self.value, value
        return old

    def get(self):
        return self.value


class ReplLock(Replicated):
    """A lock with a lease and fencing tokens.

    acquire(holder, lease_ms) takes the lock if it is free, or if its lease
    has ended, or if `holder` has it already (then the lease is extended),
    and returns the fencing token: the log index of the entry that took it
    (it only grows, so a resource can refuse a writer whose token is older
    than one it has seen); None when another holder has it.  A lease ends
    by cluster time: the lock is free for the first command whose cluster
    time reaches the deadline, on every replica alike."""

    def __init__(self):
        super().__init__()
        self.holder = None
        self.token = None
        self.expires = 0  # cluster time (ms) the lease ends at

    def _held(self):
        return self.holder is not None and self.raft_ctx.time < self.expires

    @replicated
    def acquire(self, holder, lease_ms):
        if lease_ms <= 0:
            raise ValueError(f"lease_ms must be positive, not {lease_ms}")
        now = self.raft_ctx.time
        if self._held():
            if self.holder != holder:
                return None
        else:
            self.holder, self.token = holder, self.raft_ctx.index
        self.expires = now + lease_ms
        return self.token

    @replicated
    def renew(self, holder, lease_ms):
        """Extend the lease of `holder`; True if it still held the lock."""
        if not self._held() or self.holder != holder:
            return False
        self.expires = self.raft_ctx.time + lease_ms
        return True

    @replicated
    def release(self, holder):
        """Free the lock if `holder` has it; True if it did."""
        if not self._held() or self.holder != holder:
            return False
        self.holder = self.token = None
        self.expires = 0
        return True

    @replicated
    def owner(self):
        """(holder, token) at this command's cluster time, or None: a
        linearizable look at the lock, through the log."""
        return (self.holder, self.token) if self._held() else None
