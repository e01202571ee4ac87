"""Client passwords (--requirepass-file), as Redis 7.2's requirepass.

The node holds the passwords of the `default` user (one, or during a
rotation two: any of them opens it).  A connection starts
unauthenticated when a password is set: every command but AUTH, HELLO
(with its AUTH option) and QUIT gets NOAUTH, and its requests are held to
the pre-auth limits (the parser's `unauthenticated`).  The password is
compared in constant time and never logged nor shown.
"""
import hmac

from raftfast.private_file import read_private_file

__all__ = ["DEFAULT_USER", "PasswordError", "load_password", "load_passwords", "check"]

DEFAULT_USER = b"default"


class PasswordError(ValueError):
    """The password file cannot be used."""


def load_passwords(path, warn=None):
    """The passwords in the file at path, one per line (without its line
    end; empty lines skipped): the node accepts any of them, which is how a
    password is rotated without a moment clients are refused (old and new
    both, then the new alone).  warn(text) is told when other users may
    read the file.  Raises PasswordError with a line that names the file,
    never a password."""
    data = read_private_file(path, "password", PasswordError, warn)
    passwords = tuple(line for line in data.splitlines() if line)
    if not passwords:
        raise PasswordError(f"the password file {path} is empty")
    return passwords


def load_password(path, warn=None):
    """The password a client sends: the first line of the file."""
    return load_passwords(path, warn)[0]


def check(passwords, user, given):
    """Whether (user, given) opens the default user: one of the configured
    passwords (None: none, and any password does, as Redis's nopass)."""
    if bytes(user) != DEFAULT_USER:
        return False
    if passwords is None:
        return True
    given = bytes(given)
    ok = False
    for password in passwords:   # every one, so the time tells nothing
        ok |= hmac.compare_digest(password, given)
    return ok
