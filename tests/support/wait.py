"""Waiting for a condition in a test: the one polling helper.

A wait is a liveness bound that fails the test when the condition never
holds; it is never the evidence that something happened in time, and a
test never sleeps to let something happen.  `what` names the condition in
the failure message; when it is callable it is called then, so the message
can show the state that was seen last."""
import asyncio
import time


def _message(what, timeout):
    text = what() if callable(what) else what
    return f"gave up after {timeout:g} s waiting for {text}"


def until(pred, what, timeout=30.0, interval=0.02):
    """Poll pred() until it returns something true, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(_message(what, timeout))
        time.sleep(interval)


async def until_async(pred, what, timeout=10.0, interval=0.005):
    """until() inside an event loop: the loop keeps running between polls."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = pred()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(_message(what, timeout))
        await asyncio.sleep(interval)
