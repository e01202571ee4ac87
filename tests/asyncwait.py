"""Waiting, in asyncio tests, for something to become true: a liveness
bound that fails the test when it never happens, never a timing assertion."""
import asyncio


async def until(pred, what, deadline=10.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not pred():
        if loop.time() > end:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.005)
