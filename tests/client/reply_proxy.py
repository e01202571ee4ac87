"""A TCP proxy in front of one node's client port that loses one chosen
request or its reply, the way a network does: the client's connection
closes and the client cannot tell whether the node ran the command.

tests/support/faultproxy.py faults whole peer links, both directions at
once; the client tests need one fault in one direction, chosen by what the
client sent, so this proxy is its own small thing.

    proxy = ReplyProxy(node.client_port)
    proxy.arm(b"INCR", lose="reply")    # the next request naming INCR is
                                        # forwarded; its reply is swallowed
    client.incr("n")                    # the client sees the connection close
    proxy.lost.wait()

With hold=True the proxy then closes every new connection at once until
release(): the client's retries fail to reach the node meanwhile.  With
lose="silence" the reply is swallowed and the connection left open: the
client hears nothing until its own socket timeout.
"""
import socket
import threading

__all__ = ["ReplyProxy"]


class ReplyProxy:
    def __init__(self, target_port, host="127.0.0.1"):
        self.target = (host, target_port)
        self.listener = socket.create_server((host, 0))
        self.port = self.listener.getsockname()[1]
        self.addr = f"{host}:{self.port}"
        self.lost = threading.Event()       # set once the armed fault happened
        self._lock = threading.Lock()
        self._marker = None
        self._lose = None
        self._hold = False
        self._holding = threading.Event()
        self._socks = set()
        self._threads = []
        self._spawn(self._accept)

    # ---- control, from the test's thread ------------------------------------

    def arm(self, marker, lose="reply", hold=False):
        """The next request chunk containing `marker`: lose="request" drops
        it, lose="reply" forwards it and drops its reply; either way both
        connections close.  lose="silence" drops the reply and closes
        nothing.  hold: then refuse new connections until release()."""
        assert lose in ("request", "reply", "silence")
        with self._lock:
            self._marker, self._lose, self._hold = marker, lose, hold
        self.lost.clear()

    def release(self):
        self._holding.clear()

    def close(self):
        _close(self.listener)   # shutdown() wakes the accept() that close() alone would not
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            _close(s)
        for t in self._threads:
            t.join(5)

    # ---- the relay ------------------------------------------------------------

    def _spawn(self, fn, *args):
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self):
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return      # closed
            if self._holding.is_set():
                _close(down)
                continue
            try:
                up = socket.create_connection(self.target, timeout=5)
                up.settimeout(None)
            except OSError:
                _close(down)
                continue
            with self._lock:
                self._socks.update((down, up))
            pair = {"drop_reply": False}
            self._spawn(self._pump, down, up, pair, True)
            self._spawn(self._pump, up, down, pair, False)

    def _pump(self, src, dst, pair, is_request):
        try:
            while data := src.recv(65536):
                if is_request:
                    fault = self._take_fault(data)
                    if fault == "request":
                        return self._lose_now()
                    if fault in ("reply", "silence"):
                        pair["drop_reply"] = fault
                elif pair["drop_reply"] == "silence":
                    pair["drop_reply"] = False
                    self._lose_now()
                    continue
                elif pair["drop_reply"]:
                    return self._lose_now()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src)
            _close(dst)

    def _take_fault(self, data):
        with self._lock:
            if self._marker is None or self._marker not in data:
                return None
            lose, self._marker = self._lose, None
            if self._hold:
                self._holding.set()
            return lose

    def _lose_now(self):
        self.lost.set()


def _close(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
