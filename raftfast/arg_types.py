"""argparse value types shared by the node's and the launcher's command
lines: integers with a floor, byte counts with Redis's units, octal file
modes; and the machine's memory, which --maxmemory defaults from."""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable

__all__ = ["half_of_ram", "int_at_least", "memory_at_least", "octal_mode"]


def octal_mode(s: str) -> int:
    try:
        v = int(s, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an octal file mode") from None
    if not 0 <= v <= 0o777:
        raise argparse.ArgumentTypeError(f"{s!r} is not a file mode (0 to 777)")
    return v


def int_at_least(lo: int) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than `lo`, worded alike for every
    command that takes one."""
    def conv(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v
    conv.__name__ = "integer"
    return conv


_UNITS = {"": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2,
          "g": 1000**3, "gb": 1024**3}


def memory_at_least(lo: int) -> Callable[[str], int]:
    """An argparse type: bytes, with Redis's units (1k = 1000, 1kb = 1024,
    m, mb, g, gb; any case), no fewer than `lo`."""
    def conv(s: str) -> int:
        text = s.strip().lower()
        digits = text.rstrip("kmgb")
        unit = _UNITS.get(text[len(digits):])
        if unit is None or not digits.isdigit():
            raise argparse.ArgumentTypeError(
                f"{s!r} is not a number of bytes (units: k, kb, m, mb, g, gb)")
        v = int(digits) * unit
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v
    conv.__name__ = "bytes"
    return conv


def half_of_ram() -> int:
    """Half of the machine's physical memory, in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
