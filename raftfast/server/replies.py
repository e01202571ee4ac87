"""Replies in the making: a connection's slots in arrival order, and the
encoded replies of applied entries handed over in pieces."""

__all__ = ["PENDING", "Slot", "encoded_error", "take_replies"]

PENDING = object()


class Slot:
    """One reply, or the replies of a run of commands, in arrival order.
    `value` is a reply value to encode, or with `raw` the encoded bytes.
    It keeps the protocol in force when its command ran: a HELLO later in
    the same pipeline must not change it."""

    __slots__ = ("value", "resp3", "raw")

    def __init__(self, resp3, value=PENDING, raw=False):
        self.value = value
        self.resp3 = resp3
        self.raw = raw


def encoded_error(text, n):
    """The error reply `text`, encoded, n times over (one per command)."""
    return ("-" + text.replace("\r", " ").replace("\n", " ") + "\r\n").encode() * n


def take_replies(parts, n):
    """The next n entries' encoded replies from `parts`, a list of
    [replies, offsets, lo, hi] pieces the runtime handed over (entries lo..hi
    of one applied block); consumes them as it goes."""
    out = []
    while n:
        replies, offsets, lo, hi = parts[0]
        k = min(n, hi - lo)
        out.append(replies[offsets[lo]:offsets[lo + k]])
        n -= k
        if lo + k == hi:
            parts.pop(0)
        else:
            parts[0][2] = lo + k
    return out[0] if len(out) == 1 else b"".join(out)
