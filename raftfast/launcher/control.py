"""The control socket of a running launcher: DIR/launcher.sock, through
which `python -m raftfast.cluster add|remove --data-dir DIR` reach it.

One request per connection: a JSON line in ({"op": "add"},
{"op": "remove", "id": N} or {"op": "roll"}), then any number of
{"progress": text} lines out while the request runs (a roll takes a while,
and its operator sees each step as it ends), then one last line,
{"ok": text} or {"error": text}.  The socket is the operator's (mode 0600), like the
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
    `handle(op, request, progress)` (a coroutine function) returns;
    `progress(text)` sends the asking command a line before the answer.
    `say(text, err)` prints for the operator."""

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
                answer = await self.handle(op, req, lambda text: _send(writer, {"progress": text}))
            _send(writer, answer)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass  # the asking command went away; the change itself stands
        finally:
            writer.close()


def _send(writer, message):
    if not writer.is_closing():  # the asking command may have gone; the request goes on
        writer.write(json.dumps(message).encode() + b"\n")


def request(data_dir, req, on_progress=None):
    """Send one request to the launcher running on data_dir; its answer (a
    dict).  Each progress line before it goes to on_progress(text) as it
    comes.  ControlError when no launcher answers."""
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
        with s.makefile("rb") as lines:
            for line in lines:
                try:
                    message = json.loads(line)
                except ValueError:
                    break
                if isinstance(message, dict) and "progress" in message:
                    if on_progress is not None:
                        on_progress(str(message["progress"]))
                    continue
                return message
    finally:
        s.close()
    raise ControlError("the launcher closed the connection without an answer (stopped?)")
