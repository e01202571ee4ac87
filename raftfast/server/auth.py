"""Client passwords (--requirepass-file), as Redis 7.2's requirepass.

The node holds one password for the `default` user.  A connection starts
unauthenticated when a password is set: every command but AUTH, HELLO
(with its AUTH option) and QUIT gets NOAUTH, and its requests are held to
the pre-auth limits (the parser's `unauthenticated`).  The password is
compared in constant time and never logged nor shown.
"""
import hmac

from raftfast.private_file import read_private_file

__all__ = ["DEFAULT_USER", "PasswordError", "load_password", "check"]

DEFAULT_USER = b"default"


class PasswordError(ValueError):
    """The password file cannot be used."""


def load_password(path, warn=None):
    """The password in the file at path: its bytes without the trailing
    line end.  warn(text) is told when other users may read the file.
    Raises PasswordError with a line that names the file, never the
    password."""
    password = read_private_file(path, "password", PasswordError, warn).rstrip(b"\r\n")
    if not password:
        raise PasswordError(f"the password file {path} is empty")
    return password


def check(password, user, given):
    """Whether (user, given) opens the default user: the configured
    password (None: none, and any password does, as Redis's nopass)."""
    if bytes(user) != DEFAULT_USER:
        return False
    if password is None:
        return True
    return hmac.compare_digest(password, bytes(given))
