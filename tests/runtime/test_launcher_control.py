"""The launcher's control socket (raftfast/launcher/control.py) in-process:
progress lines reach the asking command as they are sent, before the
answer; a launcher that goes away without answering is a ControlError."""
import asyncio
import threading

import pytest

from raftfast.launcher import control


class Launcher(threading.Thread):
    """A ControlServer on its own event loop, answering with `handle`."""

    def __init__(self, data_dir, handle):
        super().__init__(daemon=True)
        self.data_dir, self.handle = data_dir, handle
        self.up = threading.Event()
        self.loop = asyncio.new_event_loop()

    def run(self):
        asyncio.set_event_loop(self.loop)
        self.server = control.ControlServer(self.data_dir, self.handle, say=print)
        self.loop.run_until_complete(self.server.open())
        self.up.set()
        self.loop.run_forever()

    def __enter__(self):
        self.start()
        assert self.up.wait(10)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.join(10)
        self.loop.close()


def test_progress_lines_come_before_the_answer_and_while_the_request_runs(root):
    seen_by_asker = []
    release = asyncio.Event()

    async def handle(op, req, progress):
        progress(f"{op} step 1")
        # The asker must have the first line by now (held back until the
        # answer, it never would: the request then ends unanswered).
        await asyncio.wait_for(release.wait(), 10)
        progress(f"{op} step 2")
        return {"ok": "done"}

    with Launcher(root, handle) as launcher:
        def on_progress(text):
            seen_by_asker.append(text)
            if text.endswith("step 1"):
                launcher.loop.call_soon_threadsafe(release.set)
        answer = control.request(root, {"op": "roll"}, on_progress=on_progress)
    assert answer == {"ok": "done"}
    assert seen_by_asker == ["roll step 1", "roll step 2"]


def test_an_answer_without_progress_and_a_malformed_request(root):
    async def handle(op, req, progress):
        return {"error": f"unknown request {op!r}"}

    with Launcher(root, handle):
        assert control.request(root, {"op": "bogus"}) == {"error": "unknown request 'bogus'"}
        assert control.request(root, {"no": "op"}) == {"error": "malformed request"}


def test_a_launcher_that_closes_without_an_answer(root):
    async def handle(op, req, progress):
        progress("started")
        raise ConnectionResetError   # the server drops the connection unanswered

    with Launcher(root, handle):
        got = []
        with pytest.raises(control.ControlError, match="without an answer"):
            control.request(root, {"op": "roll"}, on_progress=got.append)
    assert got == ["started"]
