"""Reading a file that holds a secret (the cluster secret, the client
password): its bytes, errors that name the file and never its content, and
a warning when other users may read it."""
import os
import stat

__all__ = ["read_private_file"]


def read_private_file(path, what, error, warn=None):
    """The bytes of the file at path.  `what` names it in messages ("cluster
    secret", "password"); error(text) is raised when it cannot be read;
    warn(text) is told when other users may read it."""
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read()
    except OSError as e:
        raise error(f"cannot read the {what} file {path}: {e.strerror}") from None
    if warn is not None and mode & (stat.S_IRWXG | stat.S_IRWXO):
        warn(f"the {what} file {path} is readable by other users "
             f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it")
    return data
