"""A node's log output (--log-level, --log-format), and how a record
carries the structured fields of an event.

    text  one line per record for a terminal:
          `2026-12-03 09:30:01,123 node1 INFO raftfast.raft: election for term 2 won ...`
    json  one JSON object per line for log shippers:
          {"time": "2026-12-03T09:30:01.123Z", "level": "info", "node": 1,
           "logger": "raftfast.raft", "message": "...", "event": "election_won",
           "term": 2, "votes": [1, 3]}

A record tells an event when it is logged with `extra=event(kind, ...)`:
the JSON line then has "event": kind and each field as a key of its own
(the six keys above win over a field of the same name), so a shipper can
filter on them; the text line is the message alone.  docs/operations.md
("Logs") lists the events.
"""
import datetime
import json
import logging
import sys

__all__ = ["configure", "event", "JsonFormatter", "text_formatter"]

_BASE_KEYS = ("time", "level", "node", "logger", "message", "event")


def event(kind, node=None, **fields):
    """The `extra` of a record that tells event `kind` with `fields` (JSON
    values: numbers, strings, booleans, lists, dicts).  `node`: the node
    it happened on, where one process runs several (the library)."""
    extra = {"event": kind, "fields": fields}
    if node is not None:
        extra["node"] = node
    return extra


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (a newline inside a message
    or a traceback is escaped, so a line is always a whole record)."""

    def __init__(self, node_id=None):
        super().__init__()
        self.node_id = node_id

    def format(self, record):
        out = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
                    .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "node": getattr(record, "node", self.node_id),
            "logger": record.name,
            "message": record.getMessage(),
        }
        kind = getattr(record, "event", None)
        if kind is not None:
            out["event"] = kind
            for key, value in getattr(record, "fields", {}).items():
                if key not in _BASE_KEYS:
                    out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def text_formatter(node_id=None):
    who = f" node{node_id}" if node_id is not None else ""
    return logging.Formatter(f"%(asctime)s{who} %(levelname)s %(name)s: %(message)s")


def configure(level="info", fmt="text", node_id=None, stream=None):
    """Send every logger's records at `level` and above to `stream`
    (stderr) in format `fmt` ("text" or "json"), replacing any handler
    the root logger had."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(node_id))
    elif fmt == "text":
        handler.setFormatter(text_formatter(node_id))
    else:
        raise ValueError(f"log format {fmt!r} is not one of text, json")
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler], force=True)
    # Python's own warnings become records too, so a JSON log stays JSON.
    logging.captureWarnings(True)
