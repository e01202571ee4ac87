"""The script format of the interaction tests: commands, each followed by
the output it is expected to print.

    # a comment, kept as written
    propose 1 v1 v2
    ----
    1: proposed [3,4]

A command is one line; `----` follows it; its expected output runs to the
next blank line (or the end of the file), so output never holds a blank
line (a command that prints nothing prints "ok").  Blank lines and comment
lines between commands are kept verbatim when a file is rewritten with the
actual output.

Arguments are words: positional ones, and `key=value` where a value in
parentheses is a list, `voters=(1,2,3)`.
"""
import re

SEPARATOR = "----"
_TOKEN = re.compile(r"([A-Za-z][\w-]*)=(\([^)]*\)|\S+)|(\S+)")


class ScriptError(Exception):
    """A script that does not parse, or a command used wrongly."""


class Command:
    __slots__ = ("line_no", "text", "expected")

    def __init__(self, line_no, text, expected):
        self.line_no = line_no    # 1-based line of the command in its file
        self.text = text
        self.expected = expected  # the output lines as written in the file


def parse_script(text):
    """The file as a list of items: a Command, or a str (a comment or blank
    line, kept for rewriting)."""
    lines = text.split("\n")
    if lines and lines[len(lines) - 1] == "":
        lines.pop()
    items = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("#"):
            items.append(line)
            i += 1
            continue
        if i + 1 >= len(lines) or lines[i + 1] != SEPARATOR:
            raise ScriptError(f"line {i + 1}: command {line!r} is not followed by {SEPARATOR}")
        j = i + 2
        while j < len(lines) and lines[j].strip():
            j += 1
        items.append(Command(i + 1, line, lines[i + 2:j]))
        i = j
    return items


def render_script(items, outputs):
    """The file text with each Command's output replaced by outputs[k]
    (the k-th command's lines)."""
    out = []
    k = 0
    for item in items:
        if isinstance(item, str):
            out.append(item)
            continue
        out.append(item.text)
        out.append(SEPARATOR)
        out.extend(outputs[k])
        k += 1
    return "\n".join(out) + "\n"


class Args:
    """One command's words.  Every key=value must be taken by the command
    (done() says which were not), so a misspelt option is an error rather
    than silently ignored."""

    def __init__(self, text):
        self.name = None
        self.pos = []
        self._kw = {}
        for m in _TOKEN.finditer(text):
            key, value, word = m.group(1), m.group(2), m.group(3)
            if word is not None:
                if self.name is None:
                    self.name = word
                else:
                    self.pos.append(word)
            elif value.startswith("("):
                inner = value[1:len(value) - 1]
                self._kw[key] = [v.strip() for v in inner.split(",") if v.strip()]
            else:
                self._kw[key] = value
        if self.name is None:
            raise ScriptError("empty command")

    def has(self, key):
        return key in self._kw

    def take(self, key, default=None):
        return self._kw.pop(key, default)

    def take_int(self, key, default=None):
        value = self.take(key)
        return default if value is None else int(value)

    def take_bool(self, key, default):
        value = self.take(key)
        if value is None:
            return default
        if value not in ("true", "false"):
            raise ScriptError(f"{key}={value}: expected true or false")
        return value == "true"

    def take_ids(self, key, default=None):
        value = self.take(key)
        if value is None:
            return default
        if isinstance(value, str):
            value = [value]
        return [int(v) for v in value]

    def pos_int(self, i, what):
        if i >= len(self.pos):
            raise ScriptError(f"{self.name}: missing {what}")
        return int(self.pos[i])

    def done(self):
        if self._kw:
            raise ScriptError(f"{self.name}: unknown option(s) {', '.join(sorted(self._kw))}")
