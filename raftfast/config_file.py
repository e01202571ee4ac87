"""`--config FILE`: a command's flags from a TOML file.

Keys are the long flag names without the leading `--`
(`heartbeat-interval = 100`); a flag given more than once is a table
(`[peer]` with `2 = "tcp://10.0.0.2:7100"`); a flag without a value is a
boolean (`join = true`; false leaves it out).  The file becomes command
line arguments placed before the real ones, so argparse checks them the
way it checks the command line, and a flag on the command line wins (for a
repeated flag, per key: `--peer 2=URL` replaces the file's peer 2 and keeps
the others).  The known keys are the parser's own flags: a new flag needs
nothing here.
"""
import argparse
import tomllib
from collections.abc import Sequence

__all__ = ["ConfigFileError", "expand_config", "config_file_of"]

_NOT_KEYS = ("config", "version", "help")


class ConfigFileError(ValueError):
    """A config file that cannot be used; one line naming the file and key."""


def config_file_of(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """(the --config FILE given, argv without it).  The last one wins, as
    for any flag; `--config` without a file is left for argparse to refuse."""
    path, rest, i = None, [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
            i += 2
            continue
        if a.startswith("--config="):
            path = a[len("--config="):]
        else:
            rest.append(a)
        i += 1
    return path, rest


def expand_config(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """argv with the flags of its --config file in front, or argv as it is
    without one.  Raises ConfigFileError."""
    path, rest = config_file_of(argv)
    if path is None:
        return list(argv)
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ConfigFileError(f"--config {path}: cannot read it: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigFileError(f"--config {path}: not TOML: {e}") from None
    actions = {opt[2:]: a for a in parser._actions for opt in a.option_strings
               if opt.startswith("--")}
    out: list[str] = []
    for key, value in doc.items():
        action = actions.get(key)
        if key == "config":
            raise ConfigFileError(f"--config {path}: 'config': a config file cannot name "
                                  "another")
        if action is None or key in _NOT_KEYS:
            raise ConfigFileError(f"--config {path}: {key!r} is not a flag of this command")
        out += _flag_args(path, key, action, value, rest)
    return out + rest


def _check(where, action, text):
    """Convert and check one value as argparse will, so that a bad one is
    reported with the file and key that hold it."""
    try:
        v = action.type(text) if action.type is not None else text
    except (argparse.ArgumentTypeError, ValueError) as e:
        raise ConfigFileError(f"{where} = {text!r}: {e}") from None
    if action.choices is not None and v not in action.choices:
        raise ConfigFileError(f"{where} = {text!r}: not one of "
                              f"{', '.join(map(str, action.choices))}")


def _flag_args(path, key, action, value, rest):
    flag = "--" + key
    where = f"--config {path}: {key}"
    if action.nargs == 0:                       # store_true and the like
        if not isinstance(value, bool):
            raise ConfigFileError(f"{where} takes true or false, got {value!r}")
        return [flag] if value else []
    if isinstance(action, argparse._AppendAction):
        if not isinstance(value, dict):
            raise ConfigFileError(f"{where} is given as a table ([{key}] with one line "
                                  "per entry)")
        overridden = _keys_given(flag, rest)
        args = []
        for k, v in value.items():
            if not isinstance(v, (str, int)) or isinstance(v, bool):
                raise ConfigFileError(f"{where}.{k}: a string or a number, got {v!r}")
            _check(f"{where}.{k}", action, f"{k}={v}")
            if k not in overridden:
                args += [flag, f"{k}={v}"]
        return args
    if isinstance(value, (dict, list)) or isinstance(value, bool):
        raise ConfigFileError(f"{where} takes one value, got {value!r}")
    _check(where, action, str(value))
    return [flag, str(value)]


def _keys_given(flag, rest):
    """The KEY of each `flag KEY=VALUE` on the command line."""
    keys = set()
    for i, a in enumerate(rest):
        if a == flag and i + 1 < len(rest):
            keys.add(rest[i + 1].partition("=")[0].strip())
        elif a.startswith(flag + "="):
            keys.add(a[len(flag) + 1:].partition("=")[0].strip())
    return keys
