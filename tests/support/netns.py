"""Separate hosts on one Linux machine: a network namespace per host, each
with one address on a shared switch, for tests that run every node as if
on a host of its own.

    net = HostNetwork.create(3)  # namespaces rf-<tag>-1..3 and rf-<tag>-sw
    net.addr(1)                  # "10.77.N.1": host 1's address
    net.exec_prefix(1)           # ["ip", "netns", "exec", "rf-<tag>-1"]
    net.cut(2); net.heal(2)      # unplug host 2's cable at the switch; plug it back
    net.on_host(2, fn, *args)    # fn(*args) run on host 2 (sockets it opens are host 2's)
    net.close()                  # every namespace and link it made, gone

The switch is a bridge in a namespace of its own (rf-<tag>-sw); host i's
eth0 is one end of a veth pair whose other end, h<i>, is a port of that
bridge.  The test's own namespace has an uplink to the switch (the veth
rf<tag>, address 10.77.N.254), so the test reaches every host as a client
on the same network would.  N is picked at random among the 10.77.x.0/24
nets this machine does not route yet, so runs side by side do not meet.

A cut takes the host's switch port down: every packet to and from the
host is dropped without a word, as with a pulled cable or a dead port;
nothing is refused, connections hang until their own timeouts.  The host
itself keeps its address, so on_host still reaches its own services.

Everything made is torn down by close(), which tries every step even when
one fails and then raises: a leaked namespace or link is a bug.  Stop the
processes running in the namespaces first (a namespace lives on, unnamed,
as long as a process is in it).
"""
import ctypes
import os
import random
import secrets
import shutil
import subprocess
import sys
import threading

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"    # where `ip netns add` names a namespace
UPLINK_HOST = 254           # the test's own address on the switch: 10.77.N.254


class Unavailable(Exception):
    """This machine cannot make network namespaces or links (the reason)."""


def unavailable_reason():
    """Why this machine cannot run HostNetwork, or None if it may (create()
    finds out for sure)."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux's"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    return None


def ip(*args):
    """Run `ip args...`; its stdout, or CalledProcessError with its stderr."""
    r = subprocess.run(["ip", *args], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=30)
    if r.returncode != 0:
        raise subprocess.CalledProcessError(r.returncode, ["ip", *args], r.stdout, r.stderr)
    return r.stdout


def free_net():
    """A 10.77.x.0/24 net this machine has no address or route in."""
    used = ip("-4", "-o", "addr", "show") + ip("-4", "route", "show", "table", "all")
    free = [x for x in range(1, 254) if f"10.77.{x}." not in used]
    if not free:
        raise RuntimeError("every 10.77.x.0/24 net is in use on this machine")
    return random.choice(free)


class HostNetwork:
    def __init__(self, n, tag, net):
        self.n = n
        self.tag = tag
        self.net = net
        self.switch = f"rf-{tag}-sw"
        self.uplink = f"rf{tag}"
        self.made_ns = []       # namespaces made, in order
        self.made_uplink = False

    @classmethod
    def create(cls, n):
        """n hosts on one switch.  Unavailable (with `ip`'s own words) when
        the machine refuses the first namespace or the switch's links."""
        reason = unavailable_reason()
        if reason:
            raise Unavailable(reason)
        self = cls(n, secrets.token_hex(3), free_net())
        try:
            try:
                self._make_switch()
            except subprocess.CalledProcessError as e:
                raise Unavailable(f"`{' '.join(e.cmd)}` failed: {e.stderr.strip()}") from None
            for i in range(1, n + 1):
                self._make_host(i)
        except BaseException:
            self.close()
            raise
        return self

    # ---- names and addresses -------------------------------------------------

    def ns(self, i):
        return f"rf-{self.tag}-{i}"

    def addr(self, i):
        return f"10.77.{self.net}.{i}"

    @property
    def uplink_addr(self):
        return self.addr(UPLINK_HOST)

    def exec_prefix(self, i):
        """The command prefix that runs a command on host i."""
        return ["ip", "netns", "exec", self.ns(i)]

    # ---- building and tearing down ---------------------------------------

    def _add_ns(self, name):
        ip("netns", "add", name)
        self.made_ns.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def _make_switch(self):
        self._add_ns(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        ip("link", "add", self.uplink, "type", "veth", "peer", "name", "uplink",
           "netns", self.switch)
        self.made_uplink = True
        ip("-n", self.switch, "link", "set", "uplink", "master", "br0")
        ip("-n", self.switch, "link", "set", "uplink", "up")
        ip("addr", "add", f"{self.uplink_addr}/24", "dev", self.uplink)
        ip("link", "set", self.uplink, "up")

    def _make_host(self, i):
        host, port = self.ns(i), f"h{i}"
        self._add_ns(host)
        ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0",
           "netns", host)
        ip("-n", self.switch, "link", "set", port, "master", "br0")
        ip("-n", self.switch, "link", "set", port, "up")
        ip("-n", host, "addr", "add", f"{self.addr(i)}/24", "dev", "eth0")
        ip("-n", host, "link", "set", "eth0", "up")

    def close(self):
        """Delete the uplink and every namespace made (with them go the
        bridge and the hosts' links); raise after trying them all if any
        deletion failed."""
        errors = []
        if self.made_uplink:
            try:
                ip("link", "del", self.uplink)   # both ends: the switch's goes with it
                self.made_uplink = False
            except subprocess.CalledProcessError as e:
                errors.append(f"{' '.join(e.cmd)}: {e.stderr.strip()}")
        for name in reversed(self.made_ns):
            try:
                ip("netns", "del", name)
            except subprocess.CalledProcessError as e:
                errors.append(f"{' '.join(e.cmd)}: {e.stderr.strip()}")
        self.made_ns = [name for name in self.made_ns if os.path.exists(_ns_path(name))]
        if errors:
            raise RuntimeError("tearing down the hosts' network: " + "; ".join(errors))

    def leftovers(self):
        """What of this network still exists: namespace names and the uplink."""
        left = [name for name in (self.switch, *map(self.ns, range(1, self.n + 1)))
                if os.path.exists(_ns_path(name))]
        links = ip("-o", "link", "show")
        if f" {self.uplink}@" in links or f" {self.uplink}:" in links:
            left.append(self.uplink)
        return left

    # ---- faults ------------------------------------------------------------

    def cut(self, i):
        """Host i off the network: its switch port down."""
        ip("-n", self.switch, "link", "set", f"h{i}", "down")

    def heal(self, i):
        ip("-n", self.switch, "link", "set", f"h{i}", "up")

    # ---- acting from a host --------------------------------------------------

    def on_host(self, i, fn, *args, **kwargs):
        """fn(*args, **kwargs) on a thread inside host i's namespace (a
        socket belongs to the namespace it was opened in); its result, or
        its exception re-raised here."""
        out = {}

        def run():
            try:
                _enter_netns(self.ns(i))
                out["value"] = fn(*args, **kwargs)
            except BaseException as e:  # handed to the caller's thread
                out["error"] = e

        t = threading.Thread(target=run, name=f"on-host-{i}", daemon=True)
        t.start()
        t.join()
        if "error" in out:
            raise out["error"]
        return out["value"]


def _ns_path(name):
    return os.path.join(NETNS_DIR, name)


def _enter_netns(name):
    """Move the calling thread (only it) into the named network namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(_ns_path(name), os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)
