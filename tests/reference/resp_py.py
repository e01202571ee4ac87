"""Pure-Python twin of raftfast._resp: the readable specification of the RESP
request parser and reply encoder that the Cython module is tested against.

Parsing follows Redis's networking.c (processMultibulkBuffer,
processInlineBuffer, sdssplitargs, string2ll) with two deliberate
differences, both so that the outcome never depends on how the stream was
cut into reads:

- a line (inline request, `*N` or `$N` header) is too big when its
  terminator lies more than max_inline_len bytes past its start, whether the
  whole line arrived in one read or not (Redis only checks a buffer that has
  no terminator yet);
- a header line must end in CRLF and bulk data must be followed by CRLF
  (Redis skips two bytes unchecked, so a wrong length silently desyncs).
  A bulk not followed by CRLF is `invalid bulk length`.

NUL bytes in an inline line are ordinary characters (Redis's C-string scan
would stall on them).

parse_kv is the client fast path: KV commands go straight into an entry
block (tests/reference/kv_py.py), the first other request stops it.
"""
from . import kv_py

PROTO_MAX_BULK_LEN = 512 * 1024 * 1024
PROTO_INLINE_MAX_SIZE = 64 * 1024
PROTO_MAX_MULTIBULK_LEN = 1024 * 1024
MAX_REPLY_DEPTH = 64

_SPACE = frozenset(b" \t\n\r\v\f")          # C isspace()
_TOKEN_END = frozenset(b" \t\n\r")           # what ends an unquoted inline token
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}


class SimpleString(str):
    """A RESP simple string reply (`+OK`)."""
    __slots__ = ()


class ErrorReply(str):
    """A RESP error reply; the text starts with its code (`ERR ...`, `MOVED ...`)."""
    __slots__ = ()


OK = SimpleString("OK")
PONG = SimpleString("PONG")


def string2ll(s):
    """Redis's strict integer syntax: optional '-', no '+', no spaces, no
    leading zeros (so no "-0"), fits a signed 64-bit integer.  None if not."""
    if not s or len(s) >= 21:
        return None
    if s == b"0":
        return 0
    negative = s[0] == ord("-")
    digits = s[1:] if negative else s
    if not digits or not 0x31 <= digits[0] <= 0x39 or any(not 0x30 <= c <= 0x39 for c in digits):
        return None
    v = -int(digits) if negative else int(digits)
    return v if -(1 << 63) <= v < (1 << 63) else None


def split_inline(line):
    """sdssplitargs over one inline line: list of arguments, or None when
    quotes are unbalanced (or a closing quote is not followed by a space)."""
    args, i, n = [], 0, len(line)
    while True:
        while i < n and line[i] in _SPACE:
            i += 1
        if i >= n:
            return args
        tok = bytearray()
        inq = insq = done = False
        while not done:
            c = line[i] if i < n else None
            if inq:
                if (c == 0x5C and i + 3 < n and line[i + 1] == ord("x")
                        and line[i + 2] in _HEX and line[i + 3] in _HEX):
                    tok.append(int(line[i + 2:i + 4], 16))
                    i += 3
                elif c == 0x5C and i + 1 < n:
                    i += 1
                    tok.append(_ESCAPES.get(line[i], line[i]))
                elif c == ord('"'):
                    if i + 1 < n and line[i + 1] not in _SPACE:
                        return None
                    done = True
                elif c is None:
                    return None
                else:
                    tok.append(c)
            elif insq:
                if c == 0x5C and i + 1 < n and line[i + 1] == ord("'"):
                    i += 1
                    tok.append(ord("'"))
                elif c == ord("'"):
                    if i + 1 < n and line[i + 1] not in _SPACE:
                        return None
                    done = True
                elif c is None:
                    return None
                else:
                    tok.append(c)
            elif c is None or c in _TOKEN_END:
                done = True
            elif c == ord('"'):
                inq = True
            elif c == ord("'"):
                insq = True
            else:
                tok.append(c)
            if i < n:
                i += 1
        args.append(bytes(tok))


class RespParserPy:
    """Incremental RESP request parser: feed() bytes, parse() every complete
    request buffered so far.  After a protocol error, `error` holds Redis's
    reply text and the parser accepts nothing more."""

    def __init__(self, max_bulk_len=PROTO_MAX_BULK_LEN, max_inline_len=PROTO_INLINE_MAX_SIZE,
                 max_multibulk_len=PROTO_MAX_MULTIBULK_LEN):
        self.max_bulk_len = max_bulk_len
        self.max_inline_len = max_inline_len
        self.max_multibulk_len = max_multibulk_len
        self._buf = bytearray()
        self._pos = 0
        self._mb_left = 0       # arguments still due in the multibulk request being read
        self._bulk_len = -1     # length of the bulk being read, -1 while its $ line is due
        self._args = []
        self._pending = None    # a KV request parse_kv left for the next call
        self.error = None
        self.stopped_at_limit = False

    def feed(self, data):
        if self.error is None:
            self._buf += data

    def parse(self):
        out = []
        if self.error is not None:
            return out
        if self._pending is not None:
            out.append(self._pending)
            self._pending = None
        while True:
            if self._mb_left:
                progressed = self._bulk(out)
            elif self._pos >= len(self._buf):
                break
            elif self._buf[self._pos] == ord("*"):
                progressed = self._multibulk_header()
            else:
                progressed = self._inline(out)
            if not progressed:
                break
        del self._buf[:self._pos]
        self._pos = 0
        return out

    def parse_kv(self, out, resp3, max_entries=1 << 30, max_bytes=1 << 62,
                 max_command_bytes=32 << 20, force_first=True, reads=None):
        """Append the entries of the complete KV requests buffered, in
        order, onto the bytearray out; stop at the first other request and
        return it: (entries appended, request or None).  None: nothing
        complete is buffered, a protocol error (`error` set), or the next KV
        command would pass max_entries or max_bytes appended bytes (it stays
        for the next call; stopped_at_limit).  The first entry of a call is
        accepted whatever its size.  reads=True takes only GET/MGET/EXISTS,
        reads=False only the other KV commands; a KV command of the other
        kind stays for the next call (stopped_at_kind)."""
        self.stopped_at_limit = False
        self.stopped_at_kind = False
        if self.error is not None:
            return 0, None
        n = added = 0
        while True:
            if self._pending is not None:
                req, self._pending = self._pending, None
            else:
                req = self._next_request()
            if req is None:
                return n, None
            op = kv_py.fast_opcode(req, max_command_bytes)
            if op is None:
                return n, req
            if reads is not None and (op in kv_py.READ_OPCODES) != reads:
                self._pending = req
                self.stopped_at_kind = True
                return n, None
            entry = kv_py.encode_entry(op, req[1:], resp3, self.max_bulk_len)
            if n >= max_entries or (n >= (1 if force_first else 0) and added + len(entry) > max_bytes):
                self._pending = req
                self.stopped_at_limit = True
                return n, None
            out += entry
            n += 1
            added += len(entry)

    def _next_request(self):
        """parse(), up to one complete request."""
        out = []
        while not out:
            if self._mb_left:
                progressed = self._bulk(out)
            elif self._pos >= len(self._buf):
                break
            elif self._buf[self._pos] == ord("*"):
                progressed = self._multibulk_header()
            else:
                progressed = self._inline(out)
            if not progressed:
                break
        del self._buf[:self._pos]
        self._pos = 0
        return out[0] if out else None

    def _fail(self, what):
        self.error = "Protocol error: " + what
        self._buf = bytearray()
        self._pos = 0
        return False

    def _find(self, ch):
        """Offset of ch from the cursor within the line-length limit, or -1."""
        limit = self._pos + self.max_inline_len + 1
        i = self._buf.find(ch, self._pos, limit)
        return -1 if i < 0 else i - self._pos

    def _header(self, too_big):
        """Offset of the CR ending a header line once the whole line and
        its LF are buffered; -1 to wait for more; -2 after an error."""
        o = self._find(b"\r")
        if o < 0:
            if len(self._buf) - self._pos > self.max_inline_len:
                self._fail(too_big)
                return -2
            return -1
        return o if self._pos + o + 2 <= len(self._buf) else -1

    def _multibulk_header(self):
        o = self._header("too big mbulk count string")
        if o < 0:
            return False
        p = self._pos
        n = string2ll(bytes(self._buf[p + 1:p + o])) if self._buf[p + o + 1] == 10 else None
        if n is None or n > self.max_multibulk_len:
            return self._fail("invalid multibulk length")
        self._pos += o + 2
        if n > 0:   # *0 and negative counts are skipped, as Redis does
            self._mb_left, self._bulk_len, self._args = n, -1, []
        return True

    def _bulk(self, out):
        buf = self._buf
        if self._bulk_len < 0:
            o = self._header("too big bulk count string")
            if o < 0:
                return False
            p = self._pos
            if buf[p] != ord("$"):
                return self._fail(f"expected '$', got '{chr(buf[p])}'")
            n = string2ll(bytes(buf[p + 1:p + o])) if buf[p + o + 1] == 10 else None
            if n is None or n < 0 or n > self.max_bulk_len:
                return self._fail("invalid bulk length")
            self._pos += o + 2
            self._bulk_len = n
        p, n = self._pos, self._bulk_len
        if len(buf) - p < n + 2:
            return False
        if buf[p + n:p + n + 2] != b"\r\n":
            return self._fail("invalid bulk length")
        self._args.append(bytes(buf[p:p + n]))
        self._pos += n + 2
        self._bulk_len = -1
        self._mb_left -= 1
        if not self._mb_left:
            out.append(self._args)
            self._args = []
        return True

    def _inline(self, out):
        o = self._find(b"\n")
        if o < 0:
            if len(self._buf) - self._pos > self.max_inline_len:
                return self._fail("too big inline request")
            return False
        p = self._pos
        end = p + o
        if o > 0 and self._buf[end - 1] == 13:
            end -= 1
        args = split_inline(bytes(self._buf[p:end]))
        if args is None:
            return self._fail("unbalanced quotes in request")
        self._pos += o + 1
        if args:    # blank lines are skipped
            out.append(args)
        return True


def _simple(prefix, text):
    # CR or LF inside a status or error line would break the reply framing.
    return prefix + text.encode().replace(b"\r", b" ").replace(b"\n", b" ") + b"\r\n"


def _bulk_bytes(data):
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _encode(out, v, resp3, depth):
    if depth > MAX_REPLY_DEPTH:
        raise ValueError("reply nested too deeply")
    if isinstance(v, (bytes, bytearray)):
        out.append(_bulk_bytes(bytes(v)))
    elif isinstance(v, SimpleString):
        out.append(_simple(b"+", v))
    elif isinstance(v, ErrorReply):
        out.append(_simple(b"-", v))
    elif isinstance(v, str):
        out.append(_bulk_bytes(v.encode()))
    elif v is None:
        out.append(b"_\r\n" if resp3 else b"$-1\r\n")
    elif isinstance(v, bool):
        out.append((b"#t\r\n" if v else b"#f\r\n") if resp3 else (b":1\r\n" if v else b":0\r\n"))
    elif isinstance(v, int):
        if -(1 << 63) <= v < (1 << 63):
            out.append(b":%d\r\n" % v)
        else:   # beyond a RESP integer: RESP3 big number, RESP2 its digits as a bulk
            digits = str(int(v)).encode()
            out.append(b"(" + digits + b"\r\n" if resp3 else _bulk_bytes(digits))
    elif isinstance(v, float):
        text = float.__repr__(v).encode()
        out.append(b"," + text + b"\r\n" if resp3 else _bulk_bytes(text))
    elif isinstance(v, (list, tuple)):
        out.append(b"*%d\r\n" % len(v))
        for item in v:
            _encode(out, item, resp3, depth + 1)
    elif isinstance(v, dict):
        out.append(b"%%%d\r\n" % len(v) if resp3 else b"*%d\r\n" % (2 * len(v)))
        for key, item in v.items():
            _encode(out, key, resp3, depth + 1)
            _encode(out, item, resp3, depth + 1)
    else:
        raise TypeError(f"cannot encode {type(v).__name__} as a RESP reply")


def encode_replies_py(values, resp3):
    out = []
    for v in values:
        _encode(out, v, resp3, 0)
    return b"".join(out)


def encode_reply_py(value, resp3):
    return encode_replies_py([value], resp3)
