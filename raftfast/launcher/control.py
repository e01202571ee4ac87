"""The control socket of a running launcher: DIR/launcher.sock, through
which `python -m raftfast.cluster add|remove --data-dir DIR` reach it.

One request per connection: a JSON line in ({"op": "add"} or
{"op": "remove", "id": N}), a JSON line out ({"ok": text} or
{"error": text}).  The socket is the operator's (mode 0600), like the
nodes' data.  What a request does is the launcher's business: the server
is handed that as a callback.
"""
import asyncio
import json
import os
import socket

from raftfast.address import UNIX_PATH_MAX

CONTROL_SOCKET = "launcher.sock"


class ControlError(Exception):
    """The control socket cannot be used; the message says why, for the operator."""


def socket_path(data_dir):
    return os.path.join(data_dir, CONTROL_SOCKET)


class ControlServer:
    """Listens on DIR/launcher.sock and answers each request with what
    `handle(op, request)` (a coroutine function) returns.  `say(text, err)`
    prints for the operator."""

    def __init__(self, data_dir, handle, say):
        self.data_dir = data_dir
        self.path = socket_path(data_dir)
        self.handle = handle
        self.say = say
        self.server = None

    async def open(self):
        """Listen.  A socket file that refuses connections is a dead
        launcher's: removed.  One that answers means another launcher runs
        on this data dir: ControlError.  When the socket cannot be had at
        all the cluster is served without it, with a warning."""
        path = self.path
        if len(os.fsencode(path)) > UNIX_PATH_MAX:
            self.say(f"warning: {path} is too long for a Unix socket: `add` and `remove` "
                     "will not reach this launcher (use a shorter --data-dir)", err=True)
            return
        if os.path.exists(path):
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.connect(path)
            except (ConnectionRefusedError, FileNotFoundError):
                os.unlink(path)
            except OSError:
                pass
            else:
                raise ControlError(f"another launcher is running on {self.data_dir} "
                                   f"(it answers on {path})")
        try:
            self.server = await asyncio.start_unix_server(self._on_connection, path)
            os.chmod(path, 0o600)
        except OSError as e:
            # The cluster itself does not need it: serve without add/remove.
            self.say(f"warning: cannot listen on {path} ({e}): `add` and `remove` will not "
                     "reach this launcher", err=True)
            self.server = None

    def close(self):
        if self.server is not None:
            self.server.close()
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.server = None

    async def _on_connection(self, reader, writer):
        try:
            try:
                req = json.loads(await reader.readline())
                op = req["op"]
            except (ValueError, KeyError, TypeError):
                answer = {"error": "malformed request"}
            else:
                answer = await self.handle(op, req)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass  # the asking command went away; the change itself stands
        finally:
            writer.close()


def request(data_dir, req):
    """Send one request to the launcher running on data_dir; its answer (a
    dict).  ControlError when no launcher answers."""
    path = socket_path(data_dir)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(f"no launcher is running on {data_dir} (start one with "
                               f"`python -m raftfast.cluster --data-dir {data_dir}`)") from None
        except OSError as e:
            raise ControlError(f"cannot reach the launcher at {path}: {e}") from None
        s.sendall(json.dumps(req).encode() + b"\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    finally:
        s.close()
    try:
        return json.loads(data)
    except ValueError:
        raise ControlError("the launcher closed the connection without an answer "
                           "(stopped?)") from None
